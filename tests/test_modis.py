"""The MODIS plugin: the sinusoidal grid and footprints (vs pyproj), statistics from the
state bits and the fill value against hand-decoded masks, selection on the embedded catalog
and a real STAC API (pgstac), jobs with exact pixels, the original console script."""

import io
import json
import random
from datetime import datetime

import boto3
import numpy as np
import pyarrow.parquet as pq
import pyproj
import pytest
import rasterio
import shapely
from archive_expectations import modis_expected
from conftest import per_chip_mean, run_script_named

from stacchip_core import Indexer, StacchipError, chip_from_row
from stacchip_core.demo import synthetic
from stacchip_core.demo.archive import MODIS_TILE, modis_months
from stacchip_core.io.catalog import open_catalog
from stacchip_core.pipeline.process import Sample, process
from stacchip_core.plugins import get_platform, get_plugin_manager

MODIS = "modis"
SIZE = 520


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return synthetic.modis_scene(tmp_path_factory.mktemp("modis"), SIZE, h=12, v=4, seed=3)


def decode(state: np.ndarray):
    """The state bits decoded by integer arithmetic (the product's bit table)."""
    s = state.astype(np.int64)
    cloud_state, shadow, internal = s % 4, (s // 4) % 2, (s // 1024) % 2
    return ((cloud_state == 1) | (cloud_state == 2) | (shadow == 1) | (internal == 1)) & (
        s != 65535
    )


def test_sinusoidal_grid_from_proj_wkt2_and_footprints_match_pyproj(scene):
    d = json.loads(scene.read_text())
    assert "proj:code" not in d["properties"] and "proj:epsg" not in d["properties"]
    indexer = Indexer(str(scene), chip_max_nodata=1.0)
    assert indexer.platform.name == MODIS and (indexer.x_size, indexer.y_size) == (2, 2)
    assert indexer.crs.coordinate_operation.method_name == "Sinusoidal"
    table = indexer.create_index()
    to_lonlat = pyproj.Transformer.from_crs(
        pyproj.CRS(synthetic.MODIS_SINUSOIDAL), "OGC:CRS84", always_xy=True
    )
    x0, y0 = synthetic.modis_tile_origin(12, 4)
    px = synthetic.MODIS_PIXEL
    for row in table.to_pylist():
        x, y = row["chip_index_x"], row["chip_index_y"]
        xs = [x0 + (x + i) * 256 * px for i in (0, 0, 1, 1)]
        ys = [y0 - (y + j) * 256 * px for j in (0, 1, 1, 0)]
        lon, lat = to_lonlat.transform(xs, ys)
        ring = np.array(shapely.from_wkb(row["geometry"]).exterior.coords)[:4]
        np.testing.assert_allclose(ring, np.column_stack([lon, lat]), atol=1e-9)
    # tile h12v04 starts at 90 - 4*10 = 50 N; its left edge is 60 W (-180 + 12*10) at the equator,
    # so at 50 N it is 60 / cos(50) degrees west
    first = np.array(shapely.from_wkb(table["geometry"][0].as_py()).exterior.coords)
    assert first[0][1] == pytest.approx(50.0, abs=1e-9)
    assert first[0][0] == pytest.approx(-60.0 / np.cos(np.radians(50.0)), abs=1e-6)


@pytest.mark.parametrize("field", ["wkt1", "projjson"])
def test_the_sinusoidal_crs_as_gdal_wkt1_or_projjson_is_accepted_too(scene, tmp_path, field):
    d = json.loads(scene.read_text())
    crs = pyproj.CRS(synthetic.MODIS_SINUSOIDAL)
    if field == "wkt1":
        d["properties"]["proj:wkt2"] = crs.to_wkt("WKT1_GDAL")
    else:
        del d["properties"]["proj:wkt2"]
        d["properties"]["proj:projjson"] = crs.to_json_dict()
    path = tmp_path / "wkt1.json"
    path.write_text(json.dumps(d))
    assert Indexer(str(path)).grid.crs.equals(pyproj.CRS(synthetic.MODIS_SINUSOIDAL))


def test_stats_from_the_state_bits_and_the_fill_value(scene):
    table = Indexer(str(scene), chip_max_nodata=1.0).create_index()
    d = json.loads(scene.read_text())
    with rasterio.open(d["assets"]["sur_refl_state_500m"]["href"]) as ds:
        state = ds.read(1)
    with rasterio.open(d["assets"]["sur_refl_b01"]["href"]) as ds:
        b01 = ds.read(1)
    cloud = decode(state)
    assert 0.05 < cloud.mean() < 0.6 and (state == 65535).any()
    np.testing.assert_allclose(
        table["cloud_cover_percentage"].to_numpy(),
        per_chip_mean(cloud, 256, 2, 2).ravel(),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        table["nodata_percentage"].to_numpy(),
        per_chip_mean(b01 == -28672, 256, 2, 2).ravel(),
        atol=1e-6,
    )
    assert (
        table["nodata_percentage"].to_pylist()[:2] == [0.0, 0.0]
        and table["nodata_percentage"][3].as_py() > 0
    )


@pytest.mark.parametrize("value, cloud", [
    (0b001000, False),           # land, clear
    (0b001001, True),            # cloudy
    (0b001010, True),            # mixed
    (0b001011, False),           # not set, assumed clear
    (0b001100, True),            # cloud shadow
    (1 << 10 | 0b001000, True),  # internal cloud algorithm
    (3 << 8 | 0b001000, False),  # high cirrus alone is not cloud
    (1 << 13 | 0b001000, False),  # adjacent to cloud is not cloud
    (65535, False),              # fill
])
def test_state_bit_table(value, cloud):
    from stacchip_modis import state_cloud

    assert state_cloud(np.array([value], np.uint16))[0] == cloud == decode(np.array([value]))[0]


def test_items_without_state_take_cloud_from_the_qc_modland_bits(scene, tmp_path):
    """As the items stacchip 0.1 wrote (QC band only): MODLAND 10 is cloud, 01 is not."""
    from stacchip_modis import qc_cloud

    d = json.loads(scene.read_text())
    del d["assets"]["sur_refl_state_500m"]
    path = tmp_path / "qc-only.json"
    path.write_text(json.dumps(d))
    with rasterio.open(d["assets"]["sur_refl_qc_500m"]["href"]) as ds:
        qc = ds.read(1)
    table = Indexer(str(path), chip_max_nodata=1.0).create_index()
    np.testing.assert_allclose(table["cloud_cover_percentage"].to_numpy(),
                               per_chip_mean((qc % 4) == 2, 256, 2, 2).ravel(), atol=1e-6)
    assert qc_cloud(np.array([0b10, 0b01, 0b11, 0], np.uint32)).tolist() == [
        True,
        False,
        False,
        False,
    ]


# --- selection -----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["item files", "item files on S3", "pgstac"])
def test_selection_on_each_catalog(archive, s3_archive, stac_api, where):
    location = {"item files": archive.items, "item files on S3": s3_archive, "pgstac": stac_api}[
        where
    ]
    hook = get_plugin_manager().hook.stacchip_select_items
    got = hook(platform=get_platform(MODIS), sample=Sample(0), catalog=open_catalog(location))
    assert [i.id for i in got] == modis_expected()


def test_month_draws_tiles_and_sample_columns(archive, stac_api):
    from stacchip_modis import TILES

    assert len(TILES) == 233 and TILES[0] == MODIS_TILE and TILES[-1] == (22, 14)
    h, v = MODIS_TILE
    assert modis_months(h, v, 2018) == random.Random(h * v * 2018).sample(range(1, 13), 4)
    # every item of each drawn month, not only the first: the composite that starts in the month
    # before and ends inside one is found by both catalogs (time ranges overlap, as in pgstac)
    from datetime import timedelta

    from stacchip_modis import month_range

    drawn = modis_months(h, v, 2018)
    first = next(m for m in drawn if m > 1 and m - 1 not in drawn)
    straddler = (
        f"MOD09A1.A{datetime(2018, first, 1) - timedelta(days=4):%Y%j}"
        f".h{h:02d}v{v:02d}.061.synthetic"
    )
    query = {"modis:horizontal-tile": {"eq": h}, "modis:vertical-tile": {"eq": v}}
    for month in drawn:
        found = [
            [
                i.id
                for i in c.search(
                    collections=["modis-09A1-061"], datetime=month_range(2018, month), query=query
                ).items()
            ]
            for c in (open_catalog(archive.items), open_catalog(stac_api))
        ]
        assert found[0] == found[1]
        assert (straddler in found[0]) == (month == first) and len(found[0]) == 2 + (month == first)
    # h/v columns of a sample source choose the tile instead of the list
    hook = get_plugin_manager().hook.stacchip_select_items
    other = hook(
        platform=get_platform(MODIS),
        sample=Sample(5, None, {"h": h + 1, "v": v}),
        catalog=open_catalog(stac_api),
    )
    assert (
        other == []
    )  # (13, 2) has items only on days 17-24 of months drawn for (12, 2), not its own
    with pytest.raises(
        StacchipError, match="sample 233 is out of range: there are 233 MODIS tiles"
    ):
        hook(platform=get_platform(MODIS), sample=Sample(233), catalog=open_catalog(archive.items))


# --- jobs ----------------------------------------------------------------------------------

def test_local_job_keeps_the_sinusoidal_pixels(archive, tmp_path):
    bucket = tmp_path / "bucket"
    results = process(MODIS, 0, bucket, None, str(archive.items))
    assert [(r.item_id, r.status, r.chips) for r in results] == [
        (i, "done", 4) for i in modis_expected()
    ]
    item_id = results[0].item_id
    item = json.loads((bucket / MODIS / item_id / "stac_item.json").read_text())
    assert sorted(item["assets"]) == sorted(
        [f"sur_refl_b0{i}" for i in range(1, 8)] + ["sur_refl_qc_500m", "sur_refl_state_500m"]
    )
    assert item["properties"]["datetime"] == item["properties"]["end_datetime"]  # as stacchip 0.1
    table = pq.read_table(bucket / "index" / MODIS / item_id / f"index_{item_id}.parquet")
    end = datetime.fromisoformat(item["properties"]["end_datetime"])
    assert table["date"][0].as_py() == end.date()
    row = table.slice(2, 1).to_pylist()[0]  # chip (0, 1)
    pixels = chip_from_row(row)
    assert list(pixels) == [f"sur_refl_b0{i}" for i in range(1, 8)]  # canonical order, no QA layers
    fill = synthetic.modis_fill_mask(SIZE, SIZE)[256:512, :256]
    for i in range(7):
        expected = synthetic.band_pattern(i, SIZE, SIZE).astype(np.int16)[256:512, :256]
        expected[fill] = -28672
        np.testing.assert_array_equal(pixels[f"sur_refl_b0{i + 1}"][0], expected)
    with rasterio.open(item["assets"]["sur_refl_b03"]["href"]) as ds:
        assert "Sinusoidal" in ds.crs.to_wkt() and ds.res == (
            synthetic.MODIS_PIXEL,
            synthetic.MODIS_PIXEL,
        )


@pytest.mark.slow  # over 5 s on two shared cores
def test_s3_job_through_the_stac_api(archive, stac_api, s3_server, bucket):
    results = process(MODIS, 0, f"s3://{bucket}", None, stac_api)
    assert [r.item_id for r in results] == modis_expected()
    client = boto3.client("s3", endpoint_url=s3_server)
    item_id = results[1].item_id
    raw = client.get_object(Bucket=bucket, Key=f"index/{MODIS}/{item_id}/index_{item_id}.parquet")[
        "Body"
    ].read()
    table = pq.read_table(io.BytesIO(raw))
    assert table["item_href"][0].as_py() == f"s3://{bucket}/{MODIS}/{item_id}/stac_item.json"
    pixels = chip_from_row(
        table.slice(0, 1).to_pylist()[0], assets=["red"]
    )  # an alias of sur_refl_b01
    np.testing.assert_array_equal(
        pixels["sur_refl_b01"][0],
        synthetic.band_pattern(0, SIZE, SIZE).astype(np.int16)[:256, :256],
    )


@pytest.mark.slow  # over 5 s on two shared cores (console scripts start a process each)
def test_console_script_reads_the_original_environment(archive, tmp_path):
    env = {
        "AWS_BATCH_JOB_ARRAY_INDEX": "0",
        "STACCHIP_BUCKET": str(tmp_path / "b"),
        "STACCHIP_STAC_API": str(archive.items),
    }
    r = run_script_named("stacchip-modis", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{i}: done, 4 chips" for i in modis_expected()]
    r = run_script_named("stacchip-modis", env={**env, "AWS_BATCH_JOB_ARRAY_INDEX": "300"})
    assert (
        r.returncode == 1
        and r.stderr.strip().splitlines()[-1]
        == "Error: sample 300 is out of range: there are 233 MODIS tiles"
    )
