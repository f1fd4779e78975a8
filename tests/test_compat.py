"""stacchip 0.1's API runs unchanged: its documented examples, run verbatim (only the
placeholder paths and the catalog URL replaced) on local synthetic data, a real STAC API
(pgstac) and a real S3 endpoint (moto); and where 0.1 was wrong, the correct values.
Also the original's stacchip-prechip and stacchip-stats scripts."""

import json
import os
import textwrap
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyproj
import pystac
import pytest
import shapely
from conftest import S2_ITEM, per_chip_mean, run_script_named
from provision import ensure_postgis
from services import StacApi

from stacchip_core.demo import synthetic
from stacchip_core.demo.archive import NAIP_ORIGIN
from stacchip_core.io.store import open_store
from stacchip_core.pipeline.process import index_key, process_item
from stacchip_core.plugins import get_platform

LANDSAT_ID = "LC09_L2SR_086107_20240311_20240312_02_T2_SR"

# docs/src/indexer.md of stacchip 0.1 (and its README up to May 2024)
INDEXER_EXAMPLE = '''
from pystac import Item
from stacchip.indexer import LandsatIndexer

item = Item.from_file(
    "tests/data/landsat-c2l2-sr-LC09_L2SR_086107_20240311_20240312_02_T2_SR.json"
)
indexer = LandsatIndexer(item)
index = indexer.create_index()
'''

# the README's Chipper section, April-May 2024 (it never imported Chipper)
OLD_CHIPPER_EXAMPLE = '''
import geoarrow.pyarrow.dataset as gads

# Load a stacchip index table
dataset = gads.dataset("/path/to/parquet/index", format="parquet")
table = dataset.to_table()

# Get data for a single chip
row = 42
chipper = Chipper(
    bucket="clay-v1-data",
    platform=table.column("platform")[row],
    item_id = table.column("item")[row],
    chip_index_x = table.column("chip_index_x")[row].as_py(),
    chip_index_y = table.column("chip_index_y")[row].as_py()
)
data = chipper.chip
'''

# stacchip 0.1's merger (stacchip/merger.py, April 2024): the index tree as one dataset
MERGER = '''
from pyarrow import dataset as ds

part = ds.partitioning(field_names=["platform", "item"])
data = ds.dataset(
    "/path/to/stacchip/indices",
    format="parquet",
    partitioning=part,
)
ds.write_dataset(
    data,
    "/path/to/parquet/index",
    format="parquet",
)
'''

# docs/src/processors.md "Prechip" (and the NAIP tutorial), up to the plot
NAIP_TUTORIAL = '''
import random

import pystac_client
from stacchip.indexer import NoStatsChipIndexer
from stacchip.chipper import Chipper
import os

# Optimize GDAL settings for cloud optimized reading
os.environ["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
os.environ["AWS_REQUEST_PAYER"] = "requester"

# Query STAC catalog for NAIP data
catalog = pystac_client.Client.open("https://earth-search.aws.element84.com/v1")


items = catalog.search(
    collections=["naip"],
    max_items=100,
)

items = items.item_collection()

items_list = list(items)
random.shuffle(items_list)

chips = []
for item in items_list[:10]:
    print(f"Working on {item}")

    # Index the chips in the item
    indexer = NoStatsChipIndexer(item)

    # Instanciate the chipper
    chipper = Chipper(indexer, assets=["image"])

    # Get first chip for the "image" asset key
    for chip_id in random.sample(range(0, len(chipper)), 5):
        x_index, y_index, chip = chipper[chip_id]
        chips.append(chip["image"])
'''


def run(code: str, replacements: dict | None = None, namespace: dict | None = None) -> dict:
    for old, new in (replacements or {}).items():
        assert old in code, old
        code = code.replace(old, new)
    namespace = {} if namespace is None else namespace
    exec(compile(textwrap.dedent(code), "<0.1 example>", "exec"), namespace)  # noqa: S102 - the docs' code
    return namespace


def naip_pixels(rows, cols, x, y, cs=256):
    data = np.stack(
        [(synthetic.band_pattern(i, rows, cols) % 251).astype(np.uint8) for i in range(4)]
    )
    return data[:, y * cs:(y + 1) * cs, x * cs:(x + 1) * cs]


# --- the indexer --------------------------------------------------------------------------

def test_indexer_example_verbatim_with_landsat_qa_from_the_alternate_href(tmp_path, monkeypatch):
    path = synthetic.landsat_scene(tmp_path / "scenes", 560, 600, item_id=LANDSAT_ID)
    d = json.loads(path.read_text())
    qa_path = d["assets"]["qa_pixel"]["href"]
    d["assets"]["qa_pixel"]["alternate"] = {"s3": {"href": qa_path}}  # 0.1 read qa_pixel from here
    d["assets"]["qa_pixel"]["href"] = "https://landsatlook.invalid/qa_pixel.TIF"
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / f"landsat-c2l2-sr-{LANDSAT_ID}.json").write_text(json.dumps(d))
    monkeypatch.chdir(tmp_path)
    ns = run(INDEXER_EXAMPLE)
    index, indexer = ns["index"], ns["indexer"]
    assert index.column_names == [
        "chipid",
        "date",
        "chip_index_x",
        "chip_index_y",
        "cloud_cover_percentage",
        "nodata_percentage",
        "geometry",
    ]
    assert (indexer.x_size, indexer.y_size, indexer.shape) == (2, 2, [560, 600])
    import rasterio

    with rasterio.open(qa_path) as ds:
        qa = ds.read(1)
    nodata = per_chip_mean((qa & 1) == 1, 256, 2, 2).ravel()
    cloud = per_chip_mean((qa & 0b11010) != 0, 256, 2, 2).ravel()
    keep = nodata <= 0.5
    np.testing.assert_allclose(index["nodata_percentage"].to_numpy(), nodata[keep], atol=1e-6)
    np.testing.assert_allclose(index["cloud_cover_percentage"].to_numpy(), cloud[keep], atol=1e-6)
    assert (
        index["chip_index_x"].type == pa.uint16()
        and index["date"][0].as_py().isoformat() == "2024-03-11"
    )


def test_footprints_from_the_finest_grid_where_0_1_mixed_10_m_and_60_m():
    """0.1 took the Earth Search item's shape from the 10 m bands and its transform from
    the 60 m ones: footprints six times too large. The shim's are the 10 m chips."""
    from stacchip.indexer import NoStatsChipIndexer

    indexer = NoStatsChipIndexer(pystac.Item.from_file(str(S2_ITEM)))
    assert indexer.shape == [10980, 10980] and indexer.transform[0] == 10.0
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32720", always_xy=True)
    ring = np.array(shapely.get_coordinates(indexer.get_chip_bbox(1, 2)))
    x, y = to_utm.transform(ring[:, 0], ring[:, 1])
    np.testing.assert_allclose(
        [min(x), max(y), max(x), min(y)],
        [499980 + 2560, 6400000 - 5120, 499980 + 5120, 6400000 - 7680],
        atol=1e-3,
    )
    geometry = (
        indexer.create_index().column("geometry")[42 + 1].as_py()[0]
    )  # chip (1, 1) of 42 x 42
    assert [round(p["x"], 9) for p in geometry] == [
        round(v, 9) for v in shapely.get_coordinates(indexer.get_chip_bbox(1, 1))[:, 0]
    ]


def test_manual_shape_and_the_base_class():
    from stacchip.indexer import ChipIndexer, NoStatsChipIndexer

    item = pystac.Item.from_file(str(S2_ITEM))
    indexer = NoStatsChipIndexer(item, shape=[230, 420], chip_size=100)
    assert (indexer.shape, indexer.y_size, indexer.x_size) == ([230, 420], 2, 4)
    with pytest.raises(NotImplementedError):
        ChipIndexer(item).create_index()

    class HalfCloudy(ChipIndexer):  # a user's 0.1 subclass: called chip by chip
        def get_stats(self, x, y):
            return 0.5, 0.9 if (x, y) == (1, 0) else 0.0

    index = HalfCloudy(item, chip_size=1000).create_index()
    assert index.num_rows == 10 * 10 - 1 and set(index["cloud_cover_percentage"].to_pylist()) == {
        0.5
    }
    assert "S2A_T20HNJ_20240311T140636_L2A-1-0" not in index["chipid"].to_pylist()


def test_source_indexers_take_their_statistics_from_the_plugins(tmp_path):
    from stacchip.indexer import ModisIndexer, NoDataMaskChipIndexer, Sentinel2Indexer

    from stacchip_core import Indexer

    s2 = pystac.Item.from_file(str(synthetic.sentinel2_scene(tmp_path, 768)))
    modis = pystac.Item.from_file(str(synthetic.modis_scene(tmp_path, 520)))
    for cls, item in ((Sentinel2Indexer, s2), (ModisIndexer, modis)):
        shim = cls(item, chip_max_nodata=1.0)
        core = Indexer(item, chip_max_nodata=1.0).create_index()
        index = shim.create_index()
        for column in ("cloud_cover_percentage", "nodata_percentage"):
            assert index[column].to_pylist() == core[column].to_pylist()
        i = 1 * shim.x_size + 1  # chip (1, 1), row-major
        assert shim.get_stats(1, 1) == (
            index["cloud_cover_percentage"][i].as_py(),
            index["nodata_percentage"][i].as_py(),
        )
    mask = np.zeros((768, 768), bool)
    mask[:128, :256] = True
    index = NoDataMaskChipIndexer(s2, nodata_mask=mask, chip_max_nodata=1.0).create_index()
    assert index["nodata_percentage"].to_pylist()[:3] == [0.5, 0.0, 0.0] and set(
        index["cloud_cover_percentage"].to_pylist()
    ) == {0.0}


# --- the chipper ----------------------------------------------------------------------------

def test_chipper_0_1_32_api_with_a_mountpath(tmp_path):
    from stacchip.chipper import Chipper
    from stacchip.indexer import NoStatsChipIndexer

    path = synthetic.naip_scene(tmp_path / "mount" / "naip", 600, 530, item_id="item1")
    d = json.loads(path.read_text())
    d["assets"]["image"]["href"] = "s3://example-bucket/naip/item1/image.tif"
    item = pystac.Item.from_dict(d)
    indexer = NoStatsChipIndexer(item)
    chipper = Chipper(indexer, mountpath=tmp_path / "mount")
    chip = chipper.chip(1, 1)
    np.testing.assert_array_equal(chip["image"], naip_pixels(600, 530, 1, 1))
    assert len(chipper) == indexer.size == 4
    x, y, again = chipper[1]
    assert (x, y) == (1, 0)
    np.testing.assert_array_equal(again["image"], naip_pixels(600, 530, 1, 0))
    assert [(x, y) for x, y, _ in chipper] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    np.testing.assert_array_equal(
        chipper.get_pixels_for_asset("image", 0, 1), naip_pixels(600, 530, 0, 1)
    )
    # the first releases' form, reading the item from the mount
    (tmp_path / "mount" / "naip" / "item1" / "stac_item.json").write_text(json.dumps(d))
    for kwargs in ({}, {"bucket": "example-bucket"}):
        old = Chipper(
            platform="naip",
            item_id="item1",
            chip_index_x=1,
            chip_index_y=0,
            mountpath=tmp_path / "mount",
            **kwargs,
        )
        np.testing.assert_array_equal(old.chip["image"], naip_pixels(600, 530, 1, 0))
    from stacchip_core import StacchipError

    with pytest.raises(StacchipError, match="give a bucket or a mountpath"):
        Chipper(platform="naip", item_id="item1")
    with pytest.raises(TypeError, match="names no chip"):
        dict(Chipper(indexer).chip)


def test_old_readme_chipper_example_verbatim_over_s3(s3_server, tmp_path):
    """The item is processed into a bucket named as in the README, its index tree merged
    as 0.1's merger did, then the README's code reads chip 42 through S3."""
    from stacchip.chipper import Chipper

    rows = cols = 1800  # 7 x 7 chips
    client = boto3.client("s3", endpoint_url=s3_server)
    try:
        client.create_bucket(Bucket="clay-v1-data")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    path = synthetic.naip_scene(
        tmp_path / "items", rows, cols, item_id="m_readme_0001", origin=NAIP_ORIGIN
    )
    item = pystac.Item.from_file(str(path))
    store = open_store("s3://clay-v1-data")
    assert process_item(get_platform("naip"), item, store).chips == 49
    indices = tmp_path / "indices"
    key = index_key("naip", item.id)
    (indices / Path(key).parent.relative_to("index")).mkdir(parents=True)
    (indices / key.removeprefix("index/")).write_bytes(store.read_bytes(key))
    merged = tmp_path / "merged"
    run(MERGER, {"/path/to/stacchip/indices": str(indices), "/path/to/parquet/index": str(merged)})
    ns = run(OLD_CHIPPER_EXAMPLE, {"/path/to/parquet/index": str(merged)}, {"Chipper": Chipper})
    x, y = (
        ns["table"].column("chip_index_x")[42].as_py(),
        ns["table"].column("chip_index_y")[42].as_py(),
    )
    assert (x, y) == (0, 6)  # row-major: row 42 of 7 x 7
    data = ns["data"]
    assert list(data) == ["image"]
    np.testing.assert_array_equal(data["image"], naip_pixels(rows, cols, x, y))
    np.testing.assert_array_equal(
        ns["chipper"].chip(6, 0)["image"], naip_pixels(rows, cols, 6, 0)
    )  # and callable


@pytest.fixture(scope="module")
def naip_api(tmp_path_factory):
    """A STAC API (pgstac) with three NAIP items of 5 x 5 chips."""
    ensure_postgis()
    d = tmp_path_factory.mktemp("naip-api")
    items = [
        json.loads(
            synthetic.naip_scene(
                d, 1300, 1300, item_id=f"m_tutorial_{i}", origin=NAIP_ORIGIN
            ).read_text()
        )
        for i in range(3)
    ]
    collection = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": "naip",
        "description": "synthetic",
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[None, None]]},
        },
    }
    api = StacApi()
    try:
        api.start()
        api.load([collection], items)
        yield api.url
    finally:
        api.stop()


def test_naip_tutorial_verbatim_against_a_stac_api(naip_api, monkeypatch):
    monkeypatch.setenv(
        "GDAL_DISABLE_READDIR_ON_OPEN", os.environ.get("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    )
    monkeypatch.setenv(
        "AWS_REQUEST_PAYER", os.environ.get("AWS_REQUEST_PAYER", "")
    )  # restored afterwards
    ns = run(NAIP_TUTORIAL, {"https://earth-search.aws.element84.com/v1": naip_api})
    assert len(ns["chips"]) == 15 and all(
        c.shape == (4, 256, 256) and c.dtype == np.uint8 for c in ns["chips"]
    )
    x, y = ns["x_index"], ns["y_index"]
    np.testing.assert_array_equal(ns["chip"]["image"], naip_pixels(1300, 1300, x, y))


# --- the original's prechip and stats scripts ------------------------------------------------

@pytest.mark.slow
def test_prechip_and_stats_scripts_read_the_original_environment(tmp_path):
    from stacchip_core import merge

    bucket = tmp_path / "bucket"
    path = synthetic.naip_scene(tmp_path / "items", 1300, 1300, item_id="m_cubes")
    process_item(
        get_platform("naip"), pystac.Item.from_file(str(path)), open_store(bucket), chip_size=64
    )
    merge(bucket / "index", bucket / "merged.parquet")  # 20 x 20 = 400 chips of 64 px
    env = {
        "AWS_BATCH_JOB_ARRAY_INDEX": "1",
        "STACCHIP_INDEXPATH": str(bucket / "merged.parquet"),
        "STACCHIP_CHIP_BUCKET": str(tmp_path / "cubes"),
        "STACCHIP_PLATFORM": "naip",
        "STACCHIP_CUBES_PER_JOB": "1",
        "STACCHIP_POOL_SIZE": "2",
    }
    r = run_script_named("stacchip-prechip", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "1 cubes written, 0 skipped, 0 failed (400 chips, 2 cubes in all)"
    ]
    cubes = sorted((tmp_path / "cubes" / "mode_v1_chipper_v2" / "naip").glob("cube_*.npz"))
    assert [c.name for c in cubes] == ["cube_000001.npz"]
    pixels = np.load(cubes[0])["pixels"]
    assert pixels.shape == (128, 4, 64, 64)
    r = run_script_named(
        "stacchip-stats",
        env={"STACCHIP_PLATFORM": "naip", "STACCHIP_CHIP_BUCKET": str(tmp_path / "cubes")},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # the expected statistics from the raster itself, not from the cube or the code under test:
    # the windows of the cube's 128 chips, read with rasterio; the NAIP image declares no
    # nodata value, so every pixel counts
    import pyarrow.parquet as pq
    import rasterio
    from rasterio.windows import Window

    where = {
        r["chipid"]: (r["chip_index_x"], r["chip_index_y"])
        for r in pq.read_table(
            bucket / "merged.parquet", columns=["chipid", "chip_index_x", "chip_index_y"]
        ).to_pylist()
    }
    with rasterio.open(path.parent / "image.tif") as ds:
        assert ds.nodata is None and ds.count == 4
        windows = np.stack([ds.read(window=Window(x * 64, y * 64, 64, 64))
                            for x, y in (where[str(c)] for c in np.load(cubes[0])["chipids"])])
    np.testing.assert_array_equal(pixels, windows)  # the cube holds exactly those windows
    values = windows.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1)
    assert lines[0] == "-- Mean by band" and lines[5] == "-- Std by band"
    for b, name in enumerate(["red", "green", "blue", "nir"]):
        band, mean = lines[1 + b].split(": ")
        assert band == name and float(mean) == pytest.approx(values[b].mean(), rel=1e-12)
        band, std = lines[6 + b].split(": ")
        assert band == name and float(std) == pytest.approx(values[b].std(), rel=1e-9)
    r = run_script_named("stacchip-prechip", env={**env, "STACCHIP_INDEXPATH": ""})
    assert (
        r.returncode == 1
        and r.stderr.strip().splitlines()[-1] == "Error: STACCHIP_INDEXPATH env var not set"
    )
    r = run_script_named("stacchip-stats", env={"STACCHIP_PLATFORM": ""})
    assert (
        r.returncode == 1
        and r.stderr.strip().splitlines()[-1] == "Error: STACCHIP_PLATFORM env var not set"
    )
