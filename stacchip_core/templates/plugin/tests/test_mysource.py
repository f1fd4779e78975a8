"""The plugin's tests: exact statistics of a known quality layer, and a whole processing job
(selection, normalization, index) over a folder of items, through the command line and the
console script. Everything runs offline on rasters written here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyproj
import pytest
from affine import Affine

from stacchip_core import Indexer
from stacchip_core.plugin_api import write_cog

CRS, SIZE, RES = 32633, 512, 10.0
BIN = Path(sys.executable).parent


# --8<-- [start:layer]
def quality_layer() -> np.ndarray:
    """Chip (0, 0) clear; (1, 0) half cloud; (0, 1) a quarter without data; (1, 1) all cloud."""
    mask = np.ones((SIZE, SIZE), np.uint8)
    mask[:256, 256:384] = 2
    mask[256:384, :128] = 0
    mask[256:, 256:] = 3
    return mask
# --8<-- [end:layer]


def write_item(folder: Path, item_id: str, origin: tuple[float, float], cloud_cover: float) -> Path:
    """A STAC item of the mysource-l2 collection with four bands and the quality layer."""
    folder.mkdir(parents=True, exist_ok=True)
    transform = Affine(RES, 0, origin[0], 0, -RES, origin[1])
    assets = {}
    for i, key in enumerate(["B04", "B03", "B02", "B08"]):
        data = np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) + 100 * i + 1
        path = write_cog(folder / f"{item_id}_{key}.tif", data, transform, f"EPSG:{CRS}", nodata=0)
        assets[key] = {
            "href": str(path),
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
        }
    path = write_cog(folder / f"{item_id}_MASK.tif", quality_layer(), transform, f"EPSG:{CRS}")
    assets["MASK"] = {
        "href": str(path),
        "type": "image/tiff; application=geotiff",
        "roles": ["data"],
    }
    x0, y1 = origin
    x1, y0 = x0 + SIZE * RES, y1 - SIZE * RES
    to_lonlat = pyproj.Transformer.from_crs(CRS, 4326, always_xy=True)
    lon, lat = to_lonlat.transform([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0])
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "mysource-l2",
        "geometry": {"type": "Polygon", "coordinates": [list(map(list, zip(lon, lat)))]},
        "bbox": [min(lon), min(lat), max(lon), max(lat)],
        "properties": {
            "datetime": "2024-05-01T10:00:00Z",
            "eo:cloud_cover": cloud_cover,
            "proj:epsg": CRS,
            "proj:shape": [SIZE, SIZE],
            "proj:transform": list(transform)[:6],
        },
        "assets": assets,
        "links": [],
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
    }
    path = folder / f"{item_id}.json"
    path.write_text(json.dumps(item))
    return path


ORIGIN = (500000.0, 5000000.0)
FAR = (300000.0, 5500000.0)


@pytest.fixture
def archive(tmp_path):
    """Items over one place (clear, cloudy, too cloudy) and one elsewhere; a sample there."""
    items = tmp_path / "items"
    write_item(items, "clear", ORIGIN, 10.0)
    write_item(items, "cloudy", ORIGIN, 50.0)
    write_item(items, "too-cloudy", ORIGIN, 90.0)
    write_item(items, "elsewhere", FAR, 0.0)
    to_lonlat = pyproj.Transformer.from_crs(CRS, 4326, always_xy=True)
    lon, lat = to_lonlat.transform(ORIGIN[0] + 2560, ORIGIN[1] - 2560)  # the scene's centre
    samples = tmp_path / "samples.geojson"
    samples.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [lon, lat]},
                    }
                ],
            }
        )
    )
    return items, samples


# --8<-- [start:stats]
def test_statistics_are_the_quality_layer_fractions(tmp_path):
    item = write_item(tmp_path, "one", ORIGIN, 10.0)
    rows = Indexer(str(item), chip_max_nodata=1.0).create_index().to_pylist()
    got = {
        (r["chip_index_x"], r["chip_index_y"]): (
            r["cloud_cover_percentage"],
            r["nodata_percentage"],
        )
        for r in rows
    }
    assert got == {(0, 0): (0.0, 0.0), (1, 0): (0.5, 0.0), (0, 1): (0.0, 0.25), (1, 1): (1.0, 0.0)}
# --8<-- [end:stats]


def expect_job(bucket: Path, stdout: str) -> None:
    assert stdout.splitlines() == ["clear: done, 4 chips", "cloudy: done, 4 chips"]
    for item_id in ("clear", "cloudy"):
        copied = sorted(p.name for p in (bucket / "mysource" / item_id).iterdir())
        assert copied == sorted(
            [f"{item_id}_{k}.tif" for k in ("B02", "B03", "B04", "B08", "MASK")]
            + ["stac_item.json"]
        )
        index = pq.read_table(bucket / "index" / "mysource" / item_id / f"index_{item_id}.parquet")
        assert sorted(index["cloud_cover_percentage"].to_pylist()) == [0.0, 0.0, 0.5, 1.0]


# --8<-- [start:job]
def test_a_processing_job_selects_copies_and_indexes(archive, tmp_path):
    items, samples = archive
    bucket = tmp_path / "bucket"
    r = subprocess.run(
        [
            str(BIN / "stacchip"),
            "process",
            "mysource",
            "--job",
            "0",
            "--sample",
            str(samples),
            "--stac-api",
            str(items),
            "--bucket",
            str(bucket),
            "--scheduler",
            "sync",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    expect_job(bucket, r.stdout)
# --8<-- [end:job]


def test_the_console_script_runs_a_job_from_the_environment(archive, tmp_path):
    items, samples = archive
    bucket = tmp_path / "bucket"
    env = {
        **os.environ,
        "AWS_BATCH_JOB_ARRAY_INDEX": "0",
        "STACCHIP_SAMPLE_SOURCE": str(samples),
        "STACCHIP_STAC_API": str(items),
        "STACCHIP_BUCKET": str(bucket),
    }
    r = subprocess.run(
        [str(BIN / "stacchip-mysource")], capture_output=True, text=True, env=env, check=False
    )
    assert r.returncode == 0, r.stderr
    expect_job(bucket, r.stdout)


def test_stacchip_lists_the_plugin():
    r = subprocess.run(
        [str(BIN / "stacchip"), "plugins", "--json"], capture_output=True, text=True, check=True
    )
    found = {row["name"]: row for row in json.loads(r.stdout)}
    assert found["mysource"]["platforms"] == ["mysource"]
    assert found["mysource"]["hooks"] == [
        "stacchip_chip_stats",
        "stacchip_normalize_item",
        "stacchip_platforms",
        "stacchip_select_items",
    ]
