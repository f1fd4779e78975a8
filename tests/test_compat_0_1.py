"""The three behaviours of stacchip 0.1 that the compat distribution keeps (issue 19), each
tested the way 0.1's own suite tested it (stacchip 0.1.38, tests/test_indexer.py and
tests/test_chipper.py): ``mock.patch("stacchip.indexer.rasterio.open", ...)`` handing out an
in-memory quality layer, and a chipper over a raster written without a CRS. The core keeps
its own behaviour: each test shows the core's answer beside the compat one."""

import json
import logging
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import rasterio
from pystac import Item
from rasterio import Affine
from rasterio.io import MemoryFile

DATA = Path(__file__).parent / "data"
S2 = DATA / "sentinel-2-l2a-S2A_T20HNJ_20240311T140636_L2A.json"
LANDSAT = DATA / "landsat-c2l2-sr-LC09_L2SR_086107_20240311_20240312_02_T2_SR.json"
TEST_ITEM = DATA / "stacchip_test_item.json"
# what the 0.1 Chipper logs when it reads an asset the core refused through 0.1's windows
FELL_BACK = "reading the item's pixel windows as stacchip 0.1 did"


def memory_dataset(meta: dict, data: np.ndarray):
    memfile = MemoryFile()
    with memfile.open(**meta) as dst:
        dst.write(data)
    return memfile.open()


def sentinel_scl(href: str):
    """0.1's rasterio_open_sentinel_mock: a 20 m SCL of class 5 with a nodata corner (0) in
    the first chip and class 1 (saturated or defective) over half of the second chip."""
    meta = {
        "driver": "GTiff",
        "dtype": "uint8",
        "nodata": 0.0,
        "width": 5490,
        "height": 5490,
        "count": 1,
        "crs": "EPSG:32720",
        "transform": Affine(20.0, 0.0, 499980.0, 0.0, -20.0, 6400000.0),
    }
    data = 5 * np.ones((1, 5490, 5490), dtype="uint8")
    data[0, :100, :100] = 0
    data[0, :128, 128:192] = 1
    return memory_dataset(meta, data)


def landsat_qa(href: str):
    """0.1's rasterio_open_ls_nodata_mock (as uint16, in the file's own row/column order):
    QA_PIXEL 0 everywhere but bit 0 (fill) over the first 200 x 200 pixels."""
    meta = {
        "driver": "GTiff",
        "dtype": "uint16",
        "nodata": None,
        "width": 8331,
        "height": 8271,
        "count": 1,
        "crs": "EPSG:3031",
        "transform": Affine(30.0, 0.0, 1517085.0, 0.0, -30.0, -1811685.0),
    }
    data = np.zeros((1, 8271, 8331), np.uint16)
    data[0, :200, :200] = 1
    data[0, 300:400, 256:512] = 1 << 3  # cloud over 100 of chip (1, 1)'s rows
    return memory_dataset(meta, data)


# --- (a) and (b): stacchip.indexer.rasterio, and 0.1's SCL cloud classes ------------------

def test_the_indexer_module_has_rasterio():
    import stacchip.indexer

    assert stacchip.indexer.rasterio is rasterio


@mock.patch("stacchip.indexer.rasterio.open", side_effect=sentinel_scl)
def test_sentinel_2_indexer(opened):
    from stacchip.indexer import Sentinel2Indexer

    item = Item.from_file(str(S2))
    indexer = Sentinel2Indexer(item)
    assert indexer.shape == [10980, 10980]
    index = indexer.create_index()
    assert index.shape == (1763, 7)  # the first chip is 61 % nodata
    assert str(index.column("chipid")[0]) == "S2A_T20HNJ_20240311T140636_L2A-1-0"
    # class 1 over half the chip counts as cloud, as in 0.1
    assert index.column("cloud_cover_percentage")[0].as_py() == 0.5
    assert opened.call_count == 1 and opened.call_args.args[0] == item.assets["scl"].href
    # the core's table counts class 1 as nodata, not cloud (stacchip-sentinel2)
    from stacchip_sentinel2 import SCL_CLOUD_CLASSES, SCL_NODATA_CLASSES

    assert 1 not in SCL_CLOUD_CLASSES and 1 in SCL_NODATA_CLASSES
    assert Sentinel2Indexer.scl_filter == (1, 3, 8, 9, 10) and Sentinel2Indexer.nodata_value == 0


@mock.patch("stacchip.indexer.rasterio.open", side_effect=landsat_qa)
def test_landsat_indexer_nodata(opened):
    from stacchip.indexer import LandsatIndexer

    item = Item.from_file(str(LANDSAT))
    indexer = LandsatIndexer(item)
    assert indexer.shape == [8271, 8331]
    index = indexer.create_index()
    assert index.shape == (1023, 7)
    assert str(index.column("chipid")[0]) == "LC09_L2SR_086107_20240311_20240312_02_T2_SR-1-0"
    # 0.1 read qa_pixel from its alternate s3 href
    assert (
        opened.call_args.args[0] == item.assets["qa_pixel"].extra_fields["alternate"]["s3"]["href"]
    )
    cloud = dict(zip(index["chipid"].to_pylist(), index["cloud_cover_percentage"].to_pylist()))
    assert cloud["LC09_L2SR_086107_20240311_20240312_02_T2_SR-1-1"] == pytest.approx(
        100 * 256 / 256**2
    )
    assert sum(v > 0 for v in cloud.values()) == 1
    index = LandsatIndexer(item, chip_max_nodata=0.95).create_index()
    assert index.shape == (1024, 7)


def test_modis_indexer_reads_through_the_same_name(tmp_path):
    """MODIS keeps stacchip-modis's corrected decoding, read through stacchip.indexer.rasterio."""
    from stacchip.indexer import ModisIndexer

    from stacchip_core import Indexer
    from stacchip_core.demo import synthetic

    item = Item.from_file(str(synthetic.modis_scene(tmp_path, 520)))
    with mock.patch("stacchip.indexer.rasterio.open", side_effect=rasterio.open) as opened:
        index = ModisIndexer(item, chip_max_nodata=1.0).create_index()
    assert sorted(Path(c.args[0]).name for c in opened.call_args_list) == ["sur_refl_b01.tif",
                                                                            "sur_refl_state_500m.tif"]
    core = Indexer(item, chip_max_nodata=1.0).create_index()
    for column in ("cloud_cover_percentage", "nodata_percentage"):
        assert index[column].to_pylist() == core[column].to_pylist()


def test_sentinel_2_compat_and_core_decode_scl_each_their_way(tmp_path):
    """On a synthetic scene with class 1 over part of chip (1, 0): the compat fractions are
    0.1's classes hand-decoded from the SCL, the core's are the core's table."""
    from conftest import per_chip_mean
    from stacchip.indexer import Sentinel2Indexer

    from stacchip_core import Indexer
    from stacchip_core.demo import synthetic

    path = synthetic.sentinel2_scene(tmp_path, 768)
    scl_path = json.loads(path.read_text())["assets"]["scl"]["href"]
    with rasterio.open(scl_path, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        scl = ds.read(1)
        scl[:32, 128:192] = 1  # 20 m pixels: rows 0-63, columns 256-383 of the 10 m grid
        ds.write(scl, 1)
    scl10 = scl.repeat(2, axis=0).repeat(2, axis=1)
    item = Item.from_file(str(path))
    compat = Sentinel2Indexer(item, chip_max_nodata=1.0).create_index()
    core = Indexer(item, chip_max_nodata=1.0).create_index()

    def fractions(mask):
        return per_chip_mean(mask, 256, 3, 3).ravel()

    np.testing.assert_allclose(compat["cloud_cover_percentage"].to_numpy(),
                               fractions(np.isin(scl10, [1, 3, 8, 9, 10])), atol=1e-6)
    np.testing.assert_allclose(
        compat["nodata_percentage"].to_numpy(), fractions(scl10 == 0), atol=1e-6
    )
    np.testing.assert_allclose(core["cloud_cover_percentage"].to_numpy(),
                               fractions(np.isin(scl10, [3, 8, 9, 10])), atol=1e-6)
    np.testing.assert_allclose(
        core["nodata_percentage"].to_numpy(), fractions(np.isin(scl10, [0, 1])), atol=1e-6
    )
    assert fractions(scl10 == 1)[1] >= 0.125  # the block is a real difference on chip (1, 0)


# --- (c): 0.1's chipper reads windows of the item's shape -----------------------------------

def write_asset(mountpath: Path, item: Item, **profile) -> np.ndarray:
    """0.1's test_chipper: a 2-band uint8 raster of the item's proj:shape, no CRS, its
    transform given as the GDAL-ordered list 0.1's test passed."""
    shape = item.properties["proj:shape"]
    trsf = item.properties["proj:transform"]
    (mountpath / "naip/item1").mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 255, (2, *shape), dtype="uint8")
    kwargs = {"transform": [trsf[2], trsf[0], trsf[1], trsf[5], trsf[4], trsf[3]], **profile}
    with rasterio.open(
        mountpath / "naip/item1/asset.tif",
        "w",
        driver="GTiff",
        width=shape[1],
        height=shape[0],
        count=2,
        dtype="uint8",
        **kwargs,
    ) as rst:
        rst.write(data)
    return data


@pytest.mark.parametrize(
    "profile",
    [
        {},  # no CRS: 0.1's own test
        {
            "crs": "EPSG:26919",
            "transform": Affine(1, 0, 0, 0, -1, 800),
        },  # a transform the item does not state
    ],
    ids=["no-crs", "other-transform"],
)
def test_chipper_reads_the_items_pixel_windows(tmp_path, caplog, profile):
    from stacchip.chipper import Chipper
    from stacchip.indexer import NoStatsChipIndexer

    from stacchip_core import AssetError, Indexer
    from stacchip_core import Chipper as CoreChipper

    item = Item.from_file(str(TEST_ITEM))
    raster_data = write_asset(tmp_path, item, **profile)
    item.assets["asset"].href = "s3://example-bucket/naip/item1/asset.tif"
    indexer = NoStatsChipIndexer(item)
    index = indexer.create_index()
    chipper = Chipper(indexer, mountpath=tmp_path)
    x = index.column("chip_index_x")[1].as_py()
    y = index.column("chip_index_y")[2].as_py()
    with caplog.at_level(logging.INFO, logger="stacchip.chipper"):
        chip = chipper.chip(x, y)
    told = [r.getMessage() for r in caplog.records if FELL_BACK in r.getMessage()]
    assert [line.split(":")[0] for line in told] == ["asset 'asset'"]  # once, for that asset
    assert chip["asset"].shape[0] == raster_data.shape[0]
    np.testing.assert_array_equal(
        chip["asset"], raster_data[:, y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256]
    )
    # the magic functions of 0.1's test
    assert len(chipper) == indexer.size == 9
    x_index, y_index, chip_1 = chipper[1]
    assert (x_index, y_index) == (1, 0)
    np.testing.assert_array_equal(chip_1["asset"], raster_data[:, :256, 256:512])
    assert sum(1 for _ in chipper) == len(chipper)
    np.testing.assert_array_equal(
        chipper.get_pixels_for_asset("asset", 2, 2), raster_data[:, 512:768, 512:768]
    )
    # the core refuses the file: its georeferencing is not the item's
    with (
        pytest.raises(AssetError, match="asset 'asset'"),
        CoreChipper(Indexer(item, stats=False), mountpath=tmp_path) as core,
    ):
        core.chip(x, y)


def test_chipper_still_reports_a_missing_file(tmp_path):
    from stacchip.chipper import Chipper
    from stacchip.indexer import NoStatsChipIndexer

    from stacchip_core import AssetError

    item = Item.from_file(str(TEST_ITEM))
    item.assets["asset"].href = "s3://example-bucket/naip/item1/asset.tif"
    chipper = Chipper(NoStatsChipIndexer(item), mountpath=tmp_path)
    with pytest.raises(AssetError):
        chipper.chip(0, 0)


def test_chipper_keeps_the_cores_reads_for_files_it_accepts(tmp_path, caplog):
    """A file georeferenced as the item says goes through the core (its index types stay)."""
    from stacchip.chipper import Chipper
    from stacchip.indexer import NoStatsChipIndexer

    item = Item.from_file(str(TEST_ITEM))
    t = item.properties["proj:transform"]
    data = write_asset(tmp_path, item, crs="EPSG:26919", transform=Affine(*t[:6]))
    item.assets["asset"].href = "s3://example-bucket/naip/item1/asset.tif"
    chipper = Chipper(NoStatsChipIndexer(item), mountpath=tmp_path)
    with caplog.at_level(logging.INFO, logger="stacchip.chipper"):
        chip = chipper.chip(2, 1)
    np.testing.assert_array_equal(chip["asset"], data[:, 256:512, 512:768])
    # no asset fell back to 0.1's windows (test_chipper_reads_the_items_pixel_windows sees the
    # line that says so when one does)
    assert not [r for r in caplog.records if FELL_BACK in r.getMessage()]
