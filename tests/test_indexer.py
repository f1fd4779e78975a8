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
    indexer = Indexer(item, chip_max_nodata=1.0, layouts=False)  # remote bands: unreachable
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
    # the item's bands are remote (unreachable here: 10 s per build to time out): no layouts
    assert len(Indexer(item, chip_max_nodata=0.0, layouts=False).create_index()) == 0
    for limit in (0.05, 0.1, 0.5):
        table = Indexer(item, chip_max_nodata=limit, layouts=False).create_index()
        assert len(table) == int((nodata <= limit + 1e-7).sum())
        assert pa.compute.max(table["nodata_percentage"]).as_py() <= limit + 1e-7
    assert (
        0
        < len(Indexer(item, chip_max_nodata=0.05, layouts=False).create_index())
        < len(Indexer(item, chip_max_nodata=0.5, layouts=False).create_index())
        < 1764
    )


def test_planetary_computer_asset_keys(pc_s2_fixture):
    item, scl = pc_s2_fixture
    table = Indexer(item, chip_max_nodata=1.0, layouts=False).create_index()
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


# --- the quality layer through the tile reader (issue 20) ------------------------------

@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32"])
@pytest.mark.parametrize(
    "classes",
    [(), (3,), (0, 1), (3, 8, 9, 10), (8, 9, 10, 11, 12, 13, 14, 15, 16), (-2, -1, 0, 5),
     (250, 251, 252, 253, 254, 255), (255, 256, 70000), (-32768, -32767, 32767)],
)
def test_class_mask_objects_equal_class_mask(dtype, classes):
    from stacchip_core.core.chipstats import ClassMask, Scratch

    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if dtype != "float32" else None
    lo, hi = (info.min, info.max) if info else (-40, 300)
    # every class and its neighbours, plus the dtype's extremes, plus random values
    valid = [c for c in classes if lo <= c <= hi]  # classes the dtype can hold
    # every class and its neighbours, the dtype's extremes and 0, then random values
    near = [c + d for c in valid for d in (-1, 0, 1) if lo <= c + d <= hi]
    values = np.concatenate([np.array([*near, lo, hi, 0], np.int64),
                             rng.integers(lo, hi, 5000, endpoint=True)])[:5000].astype(dtype)
    data = rng.permutation(values).reshape(50, 100)
    expected = np.isin(data, np.array(valid, dtype))
    assert 0 < expected.sum() if valid else expected.sum() == 0
    mask = ClassMask(classes)
    assert np.array_equal(mask(data), expected)
    assert np.array_equal(class_mask(data, valid), expected)
    scratch = Scratch()  # reused across shapes: a smaller array after a larger one, and back
    for rows in (slice(None), slice(0, 7), slice(10, 30), slice(None)):
        part = np.ascontiguousarray(data[rows])
        assert np.array_equal(mask.into(part, scratch), expected[rows])


@pytest.mark.parametrize("block", [1, 128, 255, 256, 300])
def test_row_counts_do_not_overflow_and_equal_a_loop(block):
    from stacchip_core.core.chipstats import row_counts

    nx = 3
    ones = np.ones((block, nx * block + 5), bool)  # every pixel set: the largest counts
    assert row_counts(ones, block, nx).tolist() == [block * block] * nx
    rng = np.random.default_rng(block)
    mask = rng.random((block, nx * block)) < 0.3
    loop = [int(mask[:, x * block:(x + 1) * block].sum()) for x in range(nx)]
    assert row_counts(mask, block, nx).tolist() == loop
    assert row_counts(mask.astype(np.uint16) * 7, block, nx).tolist() == loop  # nonzero is True


def _scl_variant(tmp_path, item: dict, layer: np.ndarray, options: dict) -> dict:
    """``item`` with its SCL rewritten as a GeoTIFF of the creation ``options``."""
    import json

    import rasterio

    src = item["assets"]["scl"]["href"]
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "tiled": False, "blockysize": 64}
        for k in ("blockxsize", "compress", "predictor", "interleave"):
            profile.pop(k, None)
    path = tmp_path / "scl.tif"
    with rasterio.open(path, "w", **{**profile, **options}) as out:
        out.write(layer, 1)
    d = json.loads(json.dumps(item))
    d["assets"]["scl"]["href"] = str(path)
    return d


TILED = {"tiled": True, "blockxsize": 512, "blockysize": 512}


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({**TILED, "compress": "deflate"}, "tiles"),  # libdeflate
        ({**TILED, "compress": "deflate", "predictor": 2, "blockxsize": 256, "blockysize": 256},
         "tiles"),
        ({**TILED, "compress": "lzw"}, "tiles"),  # async-tiff decodes
        ({**TILED, "compress": "zstd"}, "tiles"),
        ({**TILED, "compress": "none"}, "tiles"),
        ({"compress": "deflate"}, "gdal"),  # striped, not tiled: no layout
        ({**TILED, "compress": "packbits"}, "gdal"),  # a codec the tile reader does not read
        ({**TILED, "compress": "deflate", "endianness": "big"}, "gdal"),
    ],
    ids=["deflate", "deflate-pred2-256", "lzw", "zstd", "uncompressed", "striped", "packbits",
         "big-endian"],
)
def test_tile_reader_fractions_equal_gdal_fractions(s2_fixture, tmp_path, options, path):
    """The quality layer read through the tile reader gives exactly GDAL's per-chip fractions;
    layouts it cannot read fall back to GDAL. Both equal hand-computed fractions."""
    from stacchip_core.core.chipstats import ClassMask
    from stacchip_core.core.grid import ChipGrid
    from stacchip_core.core.raster import AssetReader
    from stacchip_core.core.tilestats import TileAssetReader
    from stacchip_core.plugins import get_platform

    item, scl = s2_fixture
    it = pystac.Item.from_dict(_scl_variant(tmp_path, item, scl, options))
    platform = get_platform("sentinel-2-l2a")
    masks = {"cloud": ClassMask([3, 8, 9, 10]), "nodata": ClassMask([0, 1]),
             "lambda": lambda a: a == 4}
    for chip_size, threads in ((256, 1), (256, 3), (640, 2)):
        grid = ChipGrid.from_item(it, chip_size)
        reader = TileAssetReader(it, grid, platform, threads=threads)
        tiled = reader.chip_fractions("scl", masks)
        assert reader.paths == {"scl": path}
        gdal = AssetReader(it, grid, platform).chip_fractions("scl", masks)
        for name in masks:
            assert tiled[name].dtype == np.float32
            np.testing.assert_array_equal(tiled[name], gdal[name])
    block, n = 128, 42
    np.testing.assert_array_equal(
        TileAssetReader(it, ChipGrid.from_item(it, 256), platform).chip_fractions(
            "scl", masks)["cloud"],
        per_chip(np.isin(scl, [3, 8, 9, 10]), block, n, n).astype(np.float32))


def test_chips_that_cut_native_pixels_and_changed_objects_go_to_gdal(s2_fixture, tmp_path):
    """255 px chips on the 20 m SCL cut native pixels (GDAL's path weighs them); a layout read
    before its object was rewritten is stale: the fractions are those of the new file."""
    from stacchip_core.core.chipstats import ClassMask
    from stacchip_core.core.grid import ChipGrid
    from stacchip_core.core.raster import AssetReader
    from stacchip_core.core.tilestats import TileAssetReader
    from stacchip_core.plugins import get_platform

    item, scl = s2_fixture
    platform = get_platform("sentinel-2-l2a")
    masks = {"cloud": ClassMask([3, 8, 9, 10])}
    d = _scl_variant(tmp_path, item, scl, {**TILED, "compress": "deflate"})
    it = pystac.Item.from_dict(d)
    grid = ChipGrid.from_item(it, 255)
    reader = TileAssetReader(it, grid, platform)
    np.testing.assert_array_equal(reader.chip_fractions("scl", masks)["cloud"],
                                  AssetReader(it, grid, platform).chip_fractions("scl", masks)[
                                      "cloud"])
    assert reader.paths == {"scl": "gdal"}

    grid = ChipGrid.from_item(it, 256)
    first = TileAssetReader(it, grid, platform)
    before = first.chip_fractions("scl", masks)["cloud"]
    assert first.paths == {"scl": "tiles"}
    cloudy = np.where(scl == 0, 0, 9).astype(np.uint8)  # every valid pixel cloud now
    _scl_variant(tmp_path, item, cloudy, {**TILED, "compress": "deflate"})
    again = TileAssetReader(it, grid, platform, layouts=first.layouts)
    after = again.chip_fractions("scl", masks)["cloud"]
    assert again.paths == {"scl": "gdal"}
    np.testing.assert_array_equal(after, per_chip(cloudy == 9, 128, 42, 42).astype(np.float32))
    assert after.sum() > before.sum()
