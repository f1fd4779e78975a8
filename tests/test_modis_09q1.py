"""MODIS 09Q1 (``modis-09Q1-061``, 250 m) as platform ``modis-09q1`` of the MODIS plugin
(issue 19): the 250 m sinusoidal grid against pyproj, statistics against hand-decoded state and
QC bits (the product's bit tables, decoded here by integer arithmetic), selection, a job with
exact pixels, and the console script."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import per_chip_mean, run_script_named

from stacchip_core import Indexer, chip_from_row
from stacchip_core.core.output import write_cog
from stacchip_core.demo import synthetic
from stacchip_core.io.catalog import open_catalog
from stacchip_core.pipeline.process import Sample, process
from stacchip_core.plugins import get_platform, get_plugin_manager

NAME = "modis-09q1"
PIXEL_250M = synthetic.MODIS_PIXEL / 2  # 231.656 m: 4800 px a tile
SIZE = 600  # 2 x 2 chips of 256 px, and a margin the grid leaves out
FILL, STATE_FILL, QC_FILL = -28672, 65535, 65535


def qc_layer(rows: int, cols: int, seed: int) -> np.ndarray:
    """``sur_refl_qc_250m`` with every MODLAND value, band qualities, correction bits."""
    rng = np.random.default_rng(seed)
    modland = rng.choice([0, 1, 2, 3], size=(rows, cols), p=[0.5, 0.2, 0.2, 0.1])
    quality = rng.integers(0, 16, size=(rows, cols))
    return (modland | quality << 4 | quality << 8 | 1 << 12 | 1 << 13).astype(np.uint16)


def scene_09q1(outdir: Path, h: int = 12, v: int = 4, start=datetime(2018, 3, 6, tzinfo=UTC),
               platform: str = "terra", seed: int = 0, size: int = SIZE) -> Path:
    """A 09Q1 item as Planetary Computer publishes one: two int16 bands, the 250 m state
    (uint16, the 500 m state table) and QC (uint16), sinusoidal ``proj:wkt2``, 8-day range."""
    prefix = "MOD09Q1" if platform == "terra" else "MYD09Q1"
    item_id = f"{prefix}.A{start:%Y%j}.h{h:02d}v{v:02d}.061.synthetic"
    folder = outdir / item_id
    x0, y0 = synthetic.modis_tile_origin(h, v)
    t = Affine(PIXEL_250M, 0, x0, 0, -PIXEL_250M, y0)
    wkt = pyproj.CRS(synthetic.MODIS_SINUSOIDAL).to_wkt()
    fill = synthetic.modis_fill_mask(size, size)
    state = synthetic.modis_state_layer(size, size, seed)
    state[fill] = STATE_FILL
    qc = qc_layer(size, size, seed)
    qc[fill] = QC_FILL
    assets = {}
    for i in (0, 1):
        band = synthetic.band_pattern(i, size, size).astype(np.int16)
        band[fill] = FILL
        key = f"sur_refl_b0{i + 1}"
        assets[key] = {
            "href": str(write_cog(folder / f"{key}.tif", band, t, wkt, nodata=FILL).resolve()),
            "type": synthetic.COG_MEDIA_TYPE,
            "roles": ["data"],
        }
    for key, layer in (("sur_refl_state_250m", state), ("sur_refl_qc_250m", qc)):
        assets[key] = {
            "href": str(write_cog(folder / f"{key}.tif", layer, t, wkt, nodata=65535).resolve()),
            "type": synthetic.COG_MEDIA_TYPE,
            "roles": ["data"],
        }
    end = start.replace(hour=23, minute=59, second=59) + timedelta(days=7)
    lon, lat = pyproj.Transformer.from_crs(wkt, "OGC:CRS84", always_xy=True).transform(
        [x0, x0, x0 + size * PIXEL_250M, x0 + size * PIXEL_250M], [y0, y0 - size * PIXEL_250M] * 2)
    ring = [
        [lon[0], lat[0]],
        [lon[1], lat[1]],
        [lon[3], lat[3]],
        [lon[2], lat[2]],
        [lon[0], lat[0]],
    ]
    item = {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": "modis-09Q1-061",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(lon), min(lat), max(lon), max(lat)],
        "properties": {"datetime": None, "start_datetime": f"{start:%Y-%m-%dT%H:%M:%SZ}",
                       "end_datetime": f"{end:%Y-%m-%dT%H:%M:%SZ}", "platform": platform,
                       "modis:horizontal-tile": h, "modis:vertical-tile": v, "proj:wkt2": wkt,
                       "proj:shape": [size, size], "proj:transform": list(t)[:6]},
        "links": [], "assets": assets,
    }
    path = folder / f"{item_id}.json"
    path.write_text(json.dumps(item))
    return path


def read(d: dict, key: str) -> np.ndarray:
    with rasterio.open(d["assets"][key]["href"]) as ds:
        return ds.read(1)


def state_decoded(state: np.ndarray) -> np.ndarray:
    """The state bit table by integer arithmetic: cloud state 01 or 10, shadow (bit 2),
    internal cloud (bit 10); the fill is never cloud."""
    s = state.astype(np.int64)
    cloud_state, shadow, internal = s % 4, (s // 4) % 2, (s // 1024) % 2
    return ((cloud_state == 1) | (cloud_state == 2) | (shadow == 1) | (internal == 1)) & (
        s != 65535
    )


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return scene_09q1(tmp_path_factory.mktemp("q1"), seed=5)


def test_the_platform_is_the_plugins(scene):
    platform = get_platform(NAME)
    assert platform.collections == ("modis-09Q1-061",)
    assert platform.band_names == ["sur_refl_b01", "sur_refl_b02"]
    assert [b.name for b in platform.aux] == ["sur_refl_state_250m", "sur_refl_qc_250m"]
    assert platform.nodata == FILL and platform.find("red").name == "sur_refl_b01"
    assert Indexer(str(scene)).platform.name == NAME  # found from the item's collection
    assert get_platform("modis").collections == ("modis-09A1-061",)  # 09A1 stays the 500 m platform


def test_the_250m_grid_and_footprints_match_pyproj(scene):
    indexer = Indexer(str(scene), chip_max_nodata=1.0)
    assert (indexer.x_size, indexer.y_size) == (2, 2)
    assert indexer.grid.resolution == pytest.approx(231.65635826395828, abs=1e-9)
    table = indexer.create_index()
    to_lonlat = pyproj.Transformer.from_crs(synthetic.MODIS_SINUSOIDAL, "OGC:CRS84", always_xy=True)
    x0, y0 = synthetic.modis_tile_origin(12, 4)
    for row in table.to_pylist():
        x, y = row["chip_index_x"], row["chip_index_y"]
        xs = [x0 + (x + i) * 256 * PIXEL_250M for i in (0, 0, 1, 1)]
        ys = [y0 - (y + j) * 256 * PIXEL_250M for j in (0, 1, 1, 0)]
        lon, lat = to_lonlat.transform(xs, ys)
        ring = np.array(shapely.from_wkb(row["geometry"]).exterior.coords)[:4]
        np.testing.assert_allclose(ring, np.column_stack([lon, lat]), atol=1e-9)
    # 256 px of 250 m: a chip is half as wide in degrees as a 09A1 chip at the same place
    first = shapely.from_wkb(table["geometry"][0].as_py()).bounds
    assert first[3] == pytest.approx(50.0, abs=1e-9)
    assert first[3] - first[1] == pytest.approx(
        256 * PIXEL_250M / 6371007.181 * 180 / np.pi, rel=1e-9
    )


def test_stats_from_the_250m_state_and_the_fill_value(scene):
    table = Indexer(str(scene), chip_max_nodata=1.0).create_index()
    d = json.loads(scene.read_text())
    state, b01 = read(d, "sur_refl_state_250m"), read(d, "sur_refl_b01")
    cloud = state_decoded(state)[:512, :512]
    assert 0.05 < cloud.mean() < 0.6 and (state == STATE_FILL).any()
    np.testing.assert_allclose(table["cloud_cover_percentage"].to_numpy(),
                               per_chip_mean(cloud, 256, 2, 2).ravel(), atol=1e-6)
    np.testing.assert_allclose(table["nodata_percentage"].to_numpy(),
                               per_chip_mean(b01[:512, :512] == FILL, 256, 2, 2).ravel(), atol=1e-6)
    assert (
        table["nodata_percentage"][0].as_py() == 0.0 and table["nodata_percentage"][3].as_py() > 0
    )


def test_items_without_state_take_cloud_from_the_qc_modland_bits(scene, tmp_path):
    d = json.loads(scene.read_text())
    qc = read(d, "sur_refl_qc_250m")
    del d["assets"]["sur_refl_state_250m"]
    path = tmp_path / "qc-only.json"
    path.write_text(json.dumps(d))
    table = Indexer(str(path), chip_max_nodata=1.0).create_index()
    modland = qc.astype(np.int64) % 4  # bits 0-1; 10 = not produced due to cloud effects
    expected = per_chip_mean((modland == 2)[:512, :512], 256, 2, 2).ravel()
    assert 0.1 < expected.mean() < 0.3
    np.testing.assert_allclose(table["cloud_cover_percentage"].to_numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "value, cloud",
    [
        (0b00, False),  # ideal quality
        (0b01, False),  # less than ideal: not cloud (0.1 said it was)
        (0b10, True),  # not produced due to cloud effects
        (0b11, False),  # not produced for other reasons
        (0b1100 | 0b00, False),  # cloud state bits 2-3 are not populated in 09Q1: ignored
        (0b1111 << 4 | 0b1111 << 8, False),  # band qualities 'not processed' alone
        (1 << 12 | 1 << 13 | 0b10, True),  # corrections performed, cloud
        (65535, False),  # fill: MODLAND 11
    ],
)
def test_qc_250m_bit_table(value, cloud):
    from stacchip_modis import qc_cloud

    assert qc_cloud(np.array([value], np.uint16))[0] == cloud == ((value % 4) == 2)


def test_both_missing_is_an_asset_error(scene, tmp_path):
    from stacchip_core import AssetError

    d = json.loads(scene.read_text())
    del d["assets"]["sur_refl_state_250m"], d["assets"]["sur_refl_qc_250m"]
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(d))
    with pytest.raises(AssetError, match="has neither sur_refl_state_250m nor sur_refl_qc_250m"):
        Indexer(str(path)).create_index()


# --- the processor -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """09Q1 items of tile h12v02 (TILES[0]) on day 9 of the months drawn for 2018, Terra and
    Aqua on the same day for one month, one item of another tile, and a 09A1 item of a drawn
    month (which the 09Q1 platform must not select)."""
    from stacchip_modis import TILES, months

    root = tmp_path_factory.mktemp("q1-items")
    h, v = TILES[0]
    drawn = months(h, v, 2018)
    expected = []
    for n, month in enumerate(drawn):
        start = datetime(2018, month, 9, tzinfo=UTC)
        scene_09q1(root, h, v, start, "aqua", seed=n, size=260)
        expected.append(f"MYD09Q1.A{start:%Y%j}.h{h:02d}v{v:02d}.061.synthetic")
        if n == 0:  # Terra the day before: the catalog's newest-first order picks Aqua
            scene_09q1(root, h, v, start - timedelta(days=1), "terra", seed=9, size=260)
    scene_09q1(root, h + 1, v, datetime(2018, drawn[0], 9, tzinfo=UTC), seed=7, size=260)
    synthetic.modis_scene(root, 260, h=h, v=v, start=datetime(2018, drawn[0], 10, tzinfo=UTC))
    return root, expected


def test_selection_takes_09q1_items_of_the_tile_and_months(catalog):
    root, expected = catalog
    hook = get_plugin_manager().hook.stacchip_select_items
    got = hook(platform=get_platform(NAME), sample=Sample(0), catalog=open_catalog(root))
    assert [i.id for i in got] == expected
    # the 500 m platform selects its own collection's item of the same tile and month
    from stacchip_modis import TILES, months

    h, v = TILES[0]
    first = datetime(2018, months(h, v, 2018)[0], 10)
    modis = hook(platform=get_platform("modis"), sample=Sample(0), catalog=open_catalog(root))
    assert [i.id for i in modis] == [f"MOD09A1.A{first:%Y%j}.h{h:02d}v{v:02d}.061.synthetic"]


def test_job_copies_bands_and_quality_layers_with_exact_pixels(catalog, tmp_path):
    root, expected = catalog
    bucket = tmp_path / "bucket"
    results = process(NAME, 0, bucket, None, str(root))
    assert [(r.item_id, r.status, r.chips) for r in results] == [(i, "done", 1) for i in expected]
    item_id = expected[0]
    item = json.loads((bucket / NAME / item_id / "stac_item.json").read_text())
    assert sorted(item["assets"]) == [
        "sur_refl_b01",
        "sur_refl_b02",
        "sur_refl_qc_250m",
        "sur_refl_state_250m",
    ]
    assert item["properties"]["datetime"] == item["properties"]["end_datetime"]
    table = pq.read_table(bucket / "index" / NAME / item_id / f"index_{item_id}.parquet")
    assert table["platform"].to_pylist() == [NAME]
    pixels = chip_from_row(table.slice(0, 1).to_pylist()[0])
    assert list(pixels) == ["sur_refl_b01", "sur_refl_b02"]
    fill = synthetic.modis_fill_mask(260, 260)[:256, :256]
    for i in (0, 1):
        band = synthetic.band_pattern(i, 260, 260).astype(np.int16)[:256, :256]
        band[fill] = FILL
        np.testing.assert_array_equal(pixels[f"sur_refl_b0{i + 1}"][0], band)
    with rasterio.open(item["assets"]["sur_refl_qc_250m"]["href"]) as ds:
        assert ds.dtypes[0] == "uint16" and ds.res == pytest.approx((PIXEL_250M, PIXEL_250M))


def test_the_console_script(catalog, tmp_path):
    root, expected = catalog
    r = run_script_named("stacchip-modis-09q1", env={"AWS_BATCH_JOB_ARRAY_INDEX": "0",
                                                     "STACCHIP_BUCKET": str(tmp_path / "b"),
                                                     "STACCHIP_STAC_API": str(root)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{i}: done, 1 chips" for i in expected]
    assert sorted(p.name for p in (tmp_path / "b" / "index" / NAME).iterdir()) == sorted(expected)
