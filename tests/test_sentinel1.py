"""The Sentinel-1 RTC plugin: statistics against hand-computed masks, selection against the
embedded catalog and a real STAC API (pgstac), jobs into local and S3 buckets with exact
pixels, GRD items, the original console script."""

import io
import json

import boto3
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
from archive_expectations import s1_expected
from conftest import per_chip_mean, run_script_named
from rasterio.enums import Compression

from stacchip_core import ChipGrid, Indexer, PlatformError, chip_from_row
from stacchip_core.demo import synthetic
from stacchip_core.demo.archive import S1_ORIGIN, s1_quarter
from stacchip_core.io.catalog import open_catalog
from stacchip_core.pipeline.process import load_sample, process
from stacchip_core.plugins import get_platform, get_plugin_manager

S1 = "sentinel-1-rtc"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return synthetic.sentinel1_scene(tmp_path_factory.mktemp("s1"), 600, 640)


def hand_nodata(rows, cols):
    """vv: the -32768 wedge; vh: the wedge and the NaN block (recomputed from the layout)."""
    r, c = np.mgrid[0:rows, 0:cols]
    wedge = c < cols // 5 - r // 6
    nan_block = (r < rows // 4) & (c >= cols - cols // 4)
    return wedge, wedge | nan_block


def test_stats_nodata_is_the_worse_polarisation_and_cloud_is_zero(scene):
    table = Indexer(str(scene), chip_max_nodata=1.0).create_index()
    assert len(table) == 4 and set(table["platform"].to_pylist()) == {S1}
    vv, vh = hand_nodata(600, 640)
    expected = np.maximum(per_chip_mean(vv, 256, 2, 2), per_chip_mean(vh, 256, 2, 2)).ravel()
    np.testing.assert_allclose(table["nodata_percentage"].to_numpy(), expected, atol=1e-6)
    # chip (1, 0) has no wedge: its nodata is the NaN block of vh alone (150 rows x 32 cols)
    assert table["nodata_percentage"][1].as_py() == pytest.approx(150 * 32 / 256**2)
    assert table["cloud_cover_percentage"].to_pylist() == [0.0] * 4


@pytest.mark.parametrize("declared, collection, expected", [
    ([{"nodata": -32768, "data_type": "float32"}], "sentinel-1-rtc", -32768.0),
    ([{"nodata": "nan"}], "sentinel-1-rtc", "nan"),
    (None, "sentinel-1-rtc", -32768.0),
    (None, "sentinel-1-grd", 0.0),
])
def test_nodata_value_as_declared_else_as_the_product_defines(declared, collection, expected):
    from stacchip_sentinel1 import nodata_mask, nodata_value

    asset = pystac.Asset("x.tif", extra_fields={"raster:bands": declared} if declared else {})
    item = pystac.Item(
        "i",
        None,
        None,
        synthetic.datetime(2020, 1, 1),
        {},
        collection=collection,
        assets={"vv": asset},
    )
    value = nodata_value(item, "vv")
    assert (np.isnan(value) if expected == "nan" else value == expected)
    data = np.array([0.0, -32768.0, np.nan, np.inf, 0.3], np.float32)
    got = nodata_mask(data, value).tolist()
    finite_extra = {-32768.0: [False, True], 0.0: [True, False]}.get(expected, [False, False])
    assert got == finite_extra + [True, True, False]
    assert nodata_mask(np.array([0, 5], np.uint16), 0.0).tolist() == [True, False]


# --- selection ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["item files", "item files on S3", "pgstac"])
def test_selection_on_each_catalog(archive, s3_archive, stac_api, where):
    location = {"item files": archive.items, "item files on S3": s3_archive, "pgstac": stac_api}[
        where
    ]
    hook = get_plugin_manager().hook.stacchip_select_items
    got = hook(
        platform=get_platform(S1),
        sample=load_sample(archive.mgrs, 0),
        catalog=open_catalog(location),
    )
    assert [i.id for i in got] == s1_expected(0)


def test_selection_is_the_item_over_the_tile_in_the_drawn_quarter(archive, stac_api):
    hook = get_plugin_manager().hook.stacchip_select_items
    sample = load_sample(archive.mgrs, 0)
    year, q = s1_quarter(0)
    assert (year, q) == (
        2021,
        3,
    )  # random.seed(0): the year, then the quarter, as stacchip 0.1 drew them
    # what stacchip 0.1 took (no intersects filter: the newest item of the quarter) is elsewhere
    api = open_catalog(stac_api)
    newest = next(
        api.search(collections=[S1], datetime=f"{year}-10-01/{year}-12-31", max_items=1).items()
    )
    assert newest.id != s1_expected(0)[0] and "polar" in newest.id
    assert not any(
        i.id.endswith("_elsewhere_rtc")
        for i in hook(platform=get_platform(S1), sample=sample, catalog=api)
    )


def test_selection_needs_tile_polygons_and_a_catalog(archive):
    from stacchip_core import StacchipError
    from stacchip_core.pipeline.process import Sample

    hook = get_plugin_manager().hook.stacchip_select_items
    with pytest.raises(StacchipError, match="MGRS tile polygons"):
        hook(platform=get_platform(S1), sample=Sample(0), catalog=open_catalog(archive.items))
    with pytest.raises(StacchipError, match="needs a STAC API"):
        hook(platform=get_platform(S1), sample=load_sample(archive.mgrs, 0), catalog=None)


# --- jobs --------------------------------------------------------------------------------

def test_local_job_writes_deflate_cogs_with_the_exact_pixels(archive, tmp_path):
    bucket = tmp_path / "bucket"
    results = process(S1, 0, bucket, archive.mgrs, str(archive.items))
    assert [(r.item_id, r.status, r.chips) for r in results] == [(s1_expected(0)[0], "done", 4)]
    item_id = results[0].item_id
    item = json.loads((bucket / S1 / item_id / "stac_item.json").read_text())
    assert sorted(item["assets"]) == ["vh", "vv"]
    source = json.loads(next(archive.items.rglob(f"{item_id}.json")).read_text())
    for i, key in enumerate(("vv", "vh")):
        href = item["assets"][key]["href"]
        assert href == str((bucket / S1 / item_id / f"{key}.tif").resolve())
        with rasterio.open(href) as ds, rasterio.open(source["assets"][key]["href"]) as src:
            assert ds.compression == Compression.deflate and ds.dtypes[0] == "float32"
            assert ds.nodata == -32768 and ds.crs == src.crs and ds.transform == src.transform
            np.testing.assert_array_equal(ds.read(1), src.read(1))  # NaN == NaN here
        # the pixel formula, outside the nodata masks
        vv_mask, vh_mask = hand_nodata(600, 640)
        data = rasterio.open(href).read(1)
        valid = ~(vh_mask if key == "vh" else vv_mask)
        np.testing.assert_array_equal(data[valid], synthetic.s1_backscatter(i, 600, 640)[valid])
    table = pq.read_table(bucket / "index" / S1 / item_id / f"index_{item_id}.parquet")
    vv, vh = hand_nodata(600, 640)
    np.testing.assert_allclose(
        table["nodata_percentage"].to_numpy(),
        np.maximum(per_chip_mean(vv, 256, 2, 2), per_chip_mean(vh, 256, 2, 2)).ravel(),
        atol=1e-6,
    )
    # a chip read back from the bucket through the index
    row = table.slice(3, 1).to_pylist()[0]
    assert (row["chip_index_x"], row["chip_index_y"]) == (1, 1)
    pixels = chip_from_row(row)
    assert list(pixels) == ["vv", "vh"]
    np.testing.assert_array_equal(
        pixels["vv"][0], synthetic.s1_backscatter(0, 600, 640)[256:512, 256:512]
    )
    # rerun: nothing redone
    assert [r.status for r in process(S1, 0, bucket, archive.mgrs, str(archive.items))] == [
        "skipped"
    ]


def test_s3_job_through_the_stac_api(archive, stac_api, s3_server, bucket):
    results = process(S1, 0, f"s3://{bucket}/v1", archive.mgrs, stac_api)
    assert [r.item_id for r in results] == s1_expected(0)
    item_id = results[0].item_id
    client = boto3.client("s3", endpoint_url=s3_server)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="v1/")["Contents"])
    assert keys == [
        f"v1/index/{S1}/{item_id}/index_{item_id}.parquet",
        f"v1/{S1}/{item_id}/stac_item.json",
        f"v1/{S1}/{item_id}/vh.tif",
        f"v1/{S1}/{item_id}/vv.tif",
    ]
    raw = client.get_object(Bucket=bucket, Key=f"v1/index/{S1}/{item_id}/index_{item_id}.parquet")[
        "Body"
    ].read()
    row = pq.read_table(io.BytesIO(raw)).slice(0, 1).to_pylist()[0]
    pixels = chip_from_row(row, assets=["vh"])
    expected = synthetic.s1_backscatter(1, 600, 640)[:256, :256]
    _, vh_mask = hand_nodata(600, 640)
    keep = ~vh_mask[:256, :256]
    np.testing.assert_array_equal(pixels["vh"][0][keep], expected[keep])
    assert (pixels["vh"][0][~keep] == -32768).all()


# --- GRD -----------------------------------------------------------------------------------

def test_grd_in_radar_geometry_is_a_clear_error(scene, tmp_path):
    from stacchip_core.io.store import open_store

    d = json.loads(scene.read_text())
    d["collection"] = "sentinel-1-grd"
    for key in ("proj:code", "proj:shape", "proj:transform"):
        d["properties"].pop(key)
    item = pystac.Item.from_dict(d)
    with pytest.raises(
        PlatformError, match=r"has no map grid .*radar geometry must be terrain corrected"
    ):
        get_plugin_manager().hook.stacchip_normalize_item(platform=get_platform(S1), item=item,
                                                          store=open_store(tmp_path), prefix="p")
    assert not list(tmp_path.iterdir())  # nothing written


def test_grd_with_a_grid_is_accepted_with_zero_as_nodata(tmp_path):
    """A GRD scene that was projected (uint16 amplitudes, 0 = no data, no raster:bands)."""
    rows, cols = 512, 512
    t = synthetic.Affine(10, 0, S1_ORIGIN[0], 0, -10, S1_ORIGIN[1])
    amplitude = (synthetic.band_pattern(0, rows, cols) % 500 + 1).astype(np.uint16)
    amplitude[:100, :] = 0
    path = synthetic.write_cog(tmp_path / "vv.tif", amplitude, t, "EPSG:32720", nodata=0)
    item = pystac.Item(
        "grd",
        {"type": "Point", "coordinates": [-63, -33]},
        None,
        synthetic.datetime(2020, 1, 1),
        {"proj:code": "EPSG:32720", "proj:shape": [rows, cols], "proj:transform": list(t)[:6]},
        collection="sentinel-1-grd",
        assets={"vv": pystac.Asset(str(path))},
    )
    table = Indexer(item, chip_max_nodata=1.0).create_index()
    np.testing.assert_allclose(
        table["nodata_percentage"].to_numpy(), [100 / 256, 100 / 256, 0, 0], atol=1e-6
    )
    assert ChipGrid.from_item(item).shape == (512, 512)


# --- the original console script ----------------------------------------------------------

@pytest.mark.slow  # over 5 s on two shared cores (console scripts start a process each)
def test_console_script_reads_the_original_environment(archive, tmp_path):
    env = {
        "AWS_BATCH_JOB_ARRAY_INDEX": "0",
        "STACCHIP_MGRS_SOURCE": str(archive.mgrs),
        "STACCHIP_SAMPLE_SOURCE": "",
        "STACCHIP_BUCKET": str(tmp_path / "b"),
        "STACCHIP_STAC_API": str(archive.items),
    }
    r = run_script_named("stacchip-sentinel-1", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{s1_expected(0)[0]}: done, 4 chips"]
    r = run_script_named("stacchip-sentinel-1", env={**env, "STACCHIP_BUCKET": ""})
    assert r.returncode == 1 and r.stderr.strip() == "Error: STACCHIP_BUCKET env var not set"


def test_png_preview_of_a_chip_with_nan_leaves_those_pixels_black(scene, tmp_path):
    """stretch_rgb (core.output) skips non-finite pixels: before, one NaN made every
    percentile NaN and the preview black, with a cast warning."""
    import warnings

    from stacchip_core.core.output import stretch_rgb

    vv = synthetic.s1_backscatter(0, 600, 640)[:256, 384:640]
    vh = synthetic.s1_backscatter(1, 600, 640)[:256, 384:640]
    vh[:150, 96:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = stretch_rgb(np.stack([vv, vh]), ["vv", "vh"], -32768.0)
    assert (rgb[:, :150, 96:] == 0).all()
    finite = rgb[:, 150:, :]
    assert finite.min() == 0 and finite.max() == 255 and 100 < finite.mean() < 160
