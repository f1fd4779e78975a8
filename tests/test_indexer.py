from datetime import date

import numpy as np
import pyarrow as pa
import pystac
import pytest
from conftest import NAIP_ITEM, TEST_ITEM, load, per_chip_mean

from stacchip_core import Indexer, PlatformError, bit_mask, class_mask

per_chip = per_chip_mean


def test_s2_index_of_the_real_item(s2_fixture):
    item, scl = s2_fixture
    indexer = Indexer(item, chip_max_nodata=1.0)
    assert indexer.platform.name == "sentinel-2-l2a"
    table = indexer.create_index()
    assert len(table) == 1764 == 42 * 42
    # ESA SCL: 3, 8, 9, 10 cloud; 0 no data and 1
    # saturated/defective are nodata (test_catalogs_classes.py)
    cloud = per_chip(np.isin(scl, [3, 8, 9, 10]), 128, 42, 42).ravel()
    nodata = per_chip(np.isin(scl, [0, 1]), 128, 42, 42).ravel()
    np.testing.assert_allclose(table["cloud_cover_percentage"].to_numpy(), cloud, atol=1e-6)
    np.testing.assert_allclose(table["nodata_percentage"].to_numpy(), nodata, atol=1e-6)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["chipid"] == "S2A_T20HNJ_20240311T140636_L2A-0-0"
    assert first["date"] == date(2024, 3, 11)
    assert first["platform"] == "sentinel-2-l2a"


def test_s2_nodata_filter_counts(s2_fixture):
    item, scl = s2_fixture
    nodata = per_chip(np.isin(scl, [0, 1]), 128, 42, 42)
    # every chip holds some class 1 (saturated/defective, nodata): no chip passes a limit of 0
    assert len(Indexer(item, chip_max_nodata=0.0).create_index()) == 0
    for limit in (0.05, 0.1, 0.5):
        table = Indexer(item, chip_max_nodata=limit).create_index()
        assert len(table) == int((nodata <= limit + 1e-7).sum())
        assert pa.compute.max(table["nodata_percentage"]).as_py() <= limit + 1e-7
    assert (
        0
        < len(Indexer(item, chip_max_nodata=0.05).create_index())
        < len(Indexer(item, chip_max_nodata=0.5).create_index())
        < 1764
    )


def test_planetary_computer_asset_keys(pc_s2_fixture):
    item, scl = pc_s2_fixture
    table = Indexer(item, chip_max_nodata=1.0).create_index()
    assert len(table) == 1764
    cloud = per_chip(class_mask(scl, [3, 8, 9, 10]), 128, 42, 42).ravel()
    np.testing.assert_allclose(table["cloud_cover_percentage"].to_numpy(), cloud, atol=1e-6)


def test_landsat_index_of_the_real_item(landsat_fixture):
    item, qa = landsat_fixture
    table = Indexer(item, chip_max_nodata=1.0).create_index()
    assert len(table) == 1024 == 32 * 32
    assert set(table["platform"].to_pylist()) == {"landsat-c2l2-sr"}
    fill = (qa & 1) == 1
    # dilated cloud, cirrus (bit 2, Landsat 8/9), cloud, cloud shadow
    cloud = ((qa & 0b10) | (qa & 0b100) | (qa & 0b1000) | (qa & 0b10000)) != 0
    np.testing.assert_allclose(
        table["nodata_percentage"].to_numpy(), per_chip(fill, 256, 32, 32).ravel(), atol=1e-6
    )
    np.testing.assert_allclose(
        table["cloud_cover_percentage"].to_numpy(), per_chip(cloud, 256, 32, 32).ravel(), atol=1e-6
    )
    # bit 5 (snow) is not cloud; bit 2 (cirrus) is
    assert bit_mask(np.array([1 << 2, 1 << 5], np.uint16), (1, 2, 3, 4)).tolist() == [True, False]


def test_naip_index_of_the_real_item():
    table = Indexer(str(NAIP_ITEM), platform="naip").create_index()
    assert len(table) == 1813 == 37 * 49
    assert pa.compute.sum(table["cloud_cover_percentage"]).as_py() == 0
    assert table["item_href"][0].as_py() == str(NAIP_ITEM)


def test_chip_ids_and_order(synthetic_scenes):
    table = Indexer(str(synthetic_scenes["s2"]), chip_max_nodata=1.0).create_index()
    assert table["chip_index_x"].to_pylist()[:4] == [0, 1, 2, 0]
    assert table["chip_index_y"].to_pylist()[:4] == [0, 0, 0, 1]
    assert table["chipid"][5].as_py().endswith("-2-1")
    assert set(table["chip_size"].to_pylist()) == {256}


def test_item_without_platform_needs_a_name_or_no_stats():
    with pytest.raises(PlatformError, match="installed platforms: .*sentinel-2-l2a"):
        Indexer(str(TEST_ITEM))
    table = Indexer(str(TEST_ITEM), stats=False, chip_size=100).create_index()
    assert len(table) == 80
    assert table["platform"][0].as_py() == "unknown"


def test_unknown_platform_names_the_installed_ones():
    with pytest.raises(
        PlatformError,
        match=(
            "unknown platform 'sentinel-3'; installed platforms: landsat-c2l1, landsat-c2l2-sr, "
            "linz, modis, modis-09q1, naip, sentinel-1-rtc, sentinel-2-l2a"
        ),
    ):
        Indexer(str(NAIP_ITEM), platform="sentinel-3")


def test_linz_nodata_from_band_one(tmp_path):
    # a LINZ item as the processor writes it (rio-stac adds projection fields)
    from affine import Affine

    from stacchip_core.core.output import write_cog

    rgb = np.full((3, 600, 900), 120, np.uint8)
    rgb[0, :, :150] = 0  # nodata strip in band 1 only counts
    rgb[1, 500:, :] = 0  # zeros in band 2 do not
    t = Affine(0.3, 0, 1570000, 0, -0.3, 5180000)
    path = write_cog(tmp_path / "visual.tif", rgb, t, "EPSG:2193")
    d = load(NAIP_ITEM)
    d["id"] = "linz-test"
    d["properties"] = {
        "datetime": "2023-01-01T00:00:00Z",
        "proj:code": "EPSG:2193",
        "proj:shape": [600, 900],
        "proj:transform": list(t)[:6],
    }
    d["assets"] = {"visual": {"href": str(path), "type": "image/tiff"}}
    table = Indexer(d, platform="linz", chip_max_nodata=1.0, chip_size=100).create_index()
    assert len(table) == 54
    nodata = table["nodata_percentage"].to_numpy().reshape(6, 9)
    np.testing.assert_allclose(nodata[:, 0], 1.0)
    np.testing.assert_allclose(nodata[:, 1], 0.5)
    np.testing.assert_allclose(nodata[:, 2:], 0.0)


def test_read_asset_reads_the_declared_band_of_a_multiband_asset(tmp_path):
    """The stats hook's read_asset('nir') on NAIP reads band 4 of the image asset."""
    from affine import Affine

    from stacchip_core.core.grid import ChipGrid
    from stacchip_core.core.output import write_cog
    from stacchip_core.core.raster import AssetReader
    from stacchip_core.plugins import get_platform

    data = np.stack([np.full((200, 200), v, np.uint8) for v in (11, 22, 33, 44)])
    t = Affine(0.6, 0, 341338.2, 0, -0.6, 4749053.4)
    path = write_cog(tmp_path / "image.tif", data, t, "EPSG:26919")
    d = load(NAIP_ITEM)
    d["assets"] = {"image": {"href": str(path), "type": "image/tiff"}}
    d["properties"]["proj:shape"], d["properties"]["proj:transform"] = [200, 200], list(t)[:6]
    item = pystac.Item.from_dict(d)
    reader = AssetReader(item, ChipGrid.from_item(item, 100), get_platform("naip"))
    assert reader("nir").data[0, 0] == 44 and reader("green").data[0, 0] == 22
    assert reader("image", band=3).data[0, 0] == 33


def test_stats_read_from_a_real_s3_endpoint(synthetic_scenes, bucket, s3_server):
    import boto3

    d = load(synthetic_scenes["s2"])
    local = Indexer(d, chip_max_nodata=1.0).create_index()
    boto3.client("s3", endpoint_url=s3_server).upload_file(
        d["assets"]["scl"]["href"], bucket, "s2/scl.tif"
    )
    d["assets"]["scl"]["href"] = f"s3://{bucket}/s2/scl.tif"
    remote = Indexer(d, chip_max_nodata=1.0).create_index()
    assert (
        remote["cloud_cover_percentage"].to_pylist() == local["cloud_cover_percentage"].to_pylist()
    )
    assert remote["nodata_percentage"].to_pylist() == local["nodata_percentage"].to_pylist()
    assert 0 < sum(local["cloud_cover_percentage"].to_pylist()) < 9


@pytest.mark.parametrize("threads", [1, 2])
# 42, 21, 17 chip rows: strips of 4, 2 and 1 chip rows (512 px tiles)
@pytest.mark.parametrize(("chip_size", "rows"), [(256, 42), (512, 21), (640, 17)])
def test_strip_fractions_equal_whole_band_fractions(s2_fixture, threads, chip_size, rows):
    """read_asset.chip_fractions (strips, threads) == grid.chip_fractions on the whole band."""
    from stacchip_core.core.grid import ChipGrid
    from stacchip_core.core.raster import AssetReader
    from stacchip_core.plugins import get_platform

    item, _ = s2_fixture
    it = pystac.Item.from_dict(item)
    grid = ChipGrid.from_item(it, chip_size)
    reader = AssetReader(it, grid, get_platform("sentinel-2-l2a"), threads=threads)
    masks = {"cloud": lambda a: class_mask(a, [1, 3, 8, 9, 10]), "zero": lambda a: a == 0}
    strips = reader.chip_fractions("scl", masks)
    whole = reader("scl")
    for name, fn in masks.items():
        np.testing.assert_array_equal(
            strips[name], grid.chip_fractions(fn(whole.data), whole.factor)
        )
    assert strips["cloud"].shape == (grid.y_size, grid.x_size) == (rows, rows)
