"""The processors of the four sources, against a real STAC API (stac-fastapi-pgstac) and
a real S3 endpoint (moto) on loopback, over the synthetic archive."""

import json
import random
import shutil
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from conftest import landsat_expected, naip_expected, run_cli, s2_expected

from stacchip_core import StacchipError
from stacchip_core.demo.archive import LINZ_PREFIX
from stacchip_core.io.catalog import open_catalog
from stacchip_core.pipeline.process import load_sample, process

S2, L2, L1 = "sentinel-2-l2a", "landsat-c2l2-sr", "landsat-c2l1"


def ids(results):
    return [r.item_id for r in results]


# --- selection -------------------------------------------------------------------------

@pytest.mark.parametrize(("platform", "source", "index"), [
    (S2, "mgrs", 0), (L2, "points", 0), (L1, "points", 0), ("naip", "points", 1)])
def test_embedded_catalog_and_pgstac_select_the_same_items(
    archive, s3_archive, stac_api, platform, source, index
):
    embedded, api = open_catalog(s3_archive), open_catalog(stac_api)
    from stacchip_core.plugins import get_platform, get_plugin_manager

    hook = get_plugin_manager().hook.stacchip_select_items
    sample = load_sample(getattr(archive, source), index)
    a = [i.id for i in hook(platform=get_platform(platform), sample=sample, catalog=embedded)]
    b = [i.id for i in hook(platform=get_platform(platform), sample=sample, catalog=api)]
    assert a == b
    expected = {
        S2: s2_expected(archive),
        L2: landsat_expected(L2),
        L1: landsat_expected(L1),
        "naip": naip_expected(),
    }
    assert a == expected[platform]


# --- Sentinel-2, local bucket ----------------------------------------------------------

def test_sentinel2_local_job(archive, tmp_path):
    bucket = tmp_path / "bucket"
    results = process(S2, 0, bucket, archive.mgrs, str(archive.items))
    assert ids(results) == s2_expected(archive)
    assert all(r.status == "done" and r.chips == 3 for r in results)
    first = results[0].item_id
    item = json.loads((bucket / S2 / first / "stac_item.json").read_text())
    kept = sorted(item["assets"])
    # both spellings occur in the archive (odd years use Planetary Computer keys)
    assert kept in (
        sorted(
            [
                "blue",
                "green",
                "red",
                "rededge1",
                "rededge2",
                "rededge3",
                "nir",
                "nir08",
                "swir16",
                "swir22",
                "scl",
            ]
        ),
        sorted(["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL"]),
    )
    for key, asset in item["assets"].items():
        assert asset["href"] == str((bucket / S2 / first / f"{key}.tif").resolve())
        assert Path(asset["href"]).exists()
    # stats against the SCL as copied
    scl_key = "scl" if "scl" in item["assets"] else "SCL"
    with rasterio.open(item["assets"][scl_key]["href"]) as ds:
        scl = ds.read(1)
    table = pq.read_table(bucket / "index" / S2 / first / f"index_{first}.parquet")
    expected = [
        np.isin(scl[y * 128 : (y + 1) * 128, x * 128 : (x + 1) * 128], [3, 8, 9, 10]).mean()
        for x, y in zip(table["chip_index_x"].to_pylist(), table["chip_index_y"].to_pylist())
    ]
    np.testing.assert_allclose(table["cloud_cover_percentage"].to_numpy(), expected, atol=1e-6)
    assert table["item_href"][0].as_py() == str((bucket / S2 / first / "stac_item.json").resolve())
    # rerun: everything complete, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in bucket.rglob("*")}
    again = process(S2, 0, bucket, archive.mgrs, str(archive.items))
    assert [r.status for r in again] == ["skipped"] * 6
    assert {p: p.stat().st_mtime_ns for p in bucket.rglob("*")} == mtimes


def test_a_job_killed_midway_is_finished_by_a_rerun(archive, tmp_path):
    """A source object vanishes after the first item (the job dies there); the rerun after
    it is back completes the job, and the result equals an uninterrupted run."""
    items = tmp_path / "items"
    shutil.copytree(archive.items / S2, items / S2)
    expected = s2_expected(archive)
    victim = json.loads(next(items.rglob(f"{expected[1]}.json")).read_text())
    red = Path(victim["assets"].get("red", victim["assets"].get("B04"))["href"])
    hidden = tmp_path / "hidden.tif"
    shutil.move(red, hidden)
    bucket = tmp_path / "bucket"
    try:
        with pytest.raises(StacchipError, match="no such file"):
            process(S2, 0, bucket, archive.mgrs, str(items))
        # the first item is complete, the second has assets but no index
        assert (bucket / "index" / S2 / expected[0]).exists()
        assert (bucket / S2 / expected[1]).exists() and not (
            bucket / "index" / S2 / expected[1]
        ).exists()
    finally:
        shutil.move(hidden, red)
    results = process(S2, 0, bucket, archive.mgrs, str(items))
    assert [r.status for r in results] == ["skipped"] + ["done"] * 5
    clean = tmp_path / "clean"
    process(S2, 0, clean, archive.mgrs, str(items))
    layout = lambda root: sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
    )
    assert layout(bucket) == layout(clean)
    for rel in layout(clean):
        if rel.endswith(".parquet"):
            a, b = pq.read_table(bucket / rel), pq.read_table(clean / rel)
            # item_href and the layouts (their asset hrefs) name the tree they were written in
            where = [c for c in ("item_href", "layouts") if c in a.column_names]
            assert a.drop(where).equals(b.drop(where))


# --- S3 source and target, through the STAC API ------------------------------------------

def _keys(client, bucket, prefix=""):
    return sorted(
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    )


def test_landsat_s3_job_through_the_stac_api(archive, stac_api, s3_server, bucket):
    client = boto3.client("s3", endpoint_url=s3_server)
    results = process(L2, 0, f"s3://{bucket}/v1", archive.points, stac_api)
    assert ids(results) == landsat_expected(L2)
    first = results[0].item_id
    keys = _keys(client, bucket, f"v1/{L2}/{first}/")
    assert keys == sorted(
        [
            f"v1/{L2}/{first}/{k}.tif"
            for k in ("blue", "green", "red", "nir08", "swir16", "swir22", "qa_pixel")
        ]
        + [f"v1/{L2}/{first}/stac_item.json"]
    )
    item = json.loads(
        client.get_object(Bucket=bucket, Key=f"v1/{L2}/{first}/stac_item.json")["Body"].read()
    )
    assert item["assets"]["red"]["href"] == f"s3://{bucket}/v1/{L2}/{first}/red.tif"
    assert _keys(client, bucket, "v1/index/") == sorted(
        f"v1/index/{L2}/{i}/index_{i}.parquet" for i in ids(results)
    )
    # the index points at the item JSON in the bucket, and the chip reads through S3
    import io

    from stacchip_core import chip_from_row

    table = pq.read_table(
        io.BytesIO(
            client.get_object(Bucket=bucket, Key=f"v1/index/{L2}/{first}/index_{first}.parquet")[
                "Body"
            ].read()
        )
    )
    row = table.slice(0, 1).to_pylist()[0]
    assert row["item_href"] == f"s3://{bucket}/v1/{L2}/{first}/stac_item.json"
    pixels = chip_from_row(row, assets=["red"])
    from stacchip_core.demo.synthetic import band_pattern

    expected = band_pattern(2, 300, 300)[:256, :256]
    assert pixels["red"][0][pixels["red"][0] > 0].size > 0
    np.testing.assert_array_equal(
        pixels["red"][0][pixels["red"][0] > 0], expected[pixels["red"][0] > 0]
    )
    # stats against the QA_PIXEL flags as copied into the bucket
    with rasterio.open(f"s3://{bucket}/v1/{L2}/{first}/qa_pixel.tif") as ds:
        qa = ds.read(1)[:256, :256]
    assert row["nodata_percentage"] == pytest.approx(((qa & 1) != 0).mean(), abs=1e-6)
    assert row["cloud_cover_percentage"] == pytest.approx(((qa & 0b11110) != 0).mean(), abs=1e-6)
    assert 0 < row["cloud_cover_percentage"] < 1 and 0 < row["nodata_percentage"] < 1
    again = process(L2, 0, f"s3://{bucket}/v1", archive.points, stac_api)
    assert {r.status for r in again} == {"skipped"}


def test_naip_s3_job_through_the_stac_api(archive, stac_api, s3_server, bucket):
    results = process("naip", 1, f"s3://{bucket}", archive.points, stac_api)
    assert ids(results) == naip_expected()
    client = boto3.client("s3", endpoint_url=s3_server)
    assert _keys(client, bucket, f"naip/{results[0].item_id}/") == [
        f"naip/{results[0].item_id}/image.tif",
        f"naip/{results[0].item_id}/stac_item.json",
    ]
    assert [r.chips for r in results] == [4, 4]


def test_landsat_l1_selects_its_own_collection(archive, tmp_path):
    results = process(L1, 0, tmp_path / "b", archive.points, str(archive.items))
    assert ids(results) == landsat_expected(L1)


# --- LINZ ------------------------------------------------------------------------------

def test_linz_job_resamples_to_30cm(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("STACCHIP_LINZ_SOURCE", str(archive.linz_source))
    results = process("linz", 0, tmp_path / "bucket", None, None)
    tiles = sorted(p.name for p in (archive.linz_source / LINZ_PREFIX).glob("*.tiff"))
    chosen = random.Random(42).sample(
        [f"{LINZ_PREFIX}{t}" for t in tiles], 10
    )  # 12 tiles: half, at least 10
    assert ids(results) == [Path(k).stem for k in chosen]
    for r in results:
        item = json.loads((tmp_path / "bucket" / "linz" / r.item_id / "stac_item.json").read_text())
        props = item["properties"]
        assert (
            props.get("proj:code") == "EPSG:2193" or props.get("proj:epsg") == 2193
        )  # rio-stac writes projection v1
        assert item["properties"]["datetime"].startswith("2022-12-")
        with rasterio.open(item["assets"]["visual"]["href"]) as ds:
            assert ds.res == (0.3, 0.3) and ds.count == 3 and (ds.width, ds.height) == (300, 300)
            band1 = ds.read(1)
        table = pq.read_table(
            tmp_path / "bucket" / "index" / "linz" / r.item_id / f"index_{r.item_id}.parquet"
        )
        assert len(table) == 1
        assert table["nodata_percentage"][0].as_py() == pytest.approx(
            (band1[:256, :256] == 0).mean(), abs=1e-6
        )
        odd = int(r.item_id[-4:]) % 2 == 0  # tiles 4702, 4704, ... carry the nodata strip
        assert (table["nodata_percentage"][0].as_py() > 0.25) == odd


# --- the command line and the original console scripts ----------------------------------

@pytest.mark.slow  # 4-6 s on two shared cores (CLI runs and console scripts in subprocesses)
def test_cli_process_and_env_configured_console_script(archive, tmp_path):
    r = run_cli(
        "-q",
        "process",
        "naip",
        "--job",
        "1",
        "--sample",
        archive.points,
        "--bucket",
        tmp_path / "b",
        "--stac-api",
        archive.items,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{i}: done, 4 chips" for i in naip_expected()]
    from conftest import run_script_named

    env = {"AWS_BATCH_JOB_ARRAY_INDEX": "1", "STACCHIP_SAMPLE_SOURCE": str(archive.points),
           "STACCHIP_BUCKET": str(tmp_path / "b"), "STACCHIP_STAC_API": str(archive.items)}
    r = run_script_named("stacchip-naip", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{i}: skipped" for i in naip_expected()]
    r = run_script_named("stacchip-naip", env={**env, "AWS_BATCH_JOB_ARRAY_INDEX": "7"})
    assert (
        r.returncode == 1
        and r.stderr.strip() == f"Error: sample 7 is out of range: {archive.points} has 2 rows"
    )


def test_source_archive_behind_another_s3_endpoint(
    archive, s3_server, bucket, tmp_path, monkeypatch
):
    """Source and target buckets on two S3 endpoints (two moto servers, in two processes so
    that they share no state): sources are read through STACCHIP_SOURCE_S3_ENDPOINT, the
    target through STACCHIP_S3_ENDPOINT."""
    import subprocess
    import sys
    import time
    import urllib.request

    from services import free_port

    port = free_port()
    other = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    source_endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(source_endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        src = boto3.client("s3", endpoint_url=source_endpoint)
        src.create_bucket(Bucket="source")
        items = tmp_path / "items"
        for path in sorted((archive.items / "naip").rglob("*.json")):
            d = json.loads(path.read_text())
            key = f"naip/{d['id']}/image.tif"
            src.upload_file(d["assets"]["image"]["href"], "source", key)
            d["assets"]["image"]["href"] = f"s3://source/{key}"
            (items / "naip").mkdir(parents=True, exist_ok=True)
            (items / "naip" / path.name).write_text(json.dumps(d))
        for path in sorted((archive.linz_source / LINZ_PREFIX).iterdir()):
            src.upload_file(str(path), "source", f"linz/{LINZ_PREFIX}{path.name}")
        monkeypatch.setenv("STACCHIP_SOURCE_S3_ENDPOINT", source_endpoint)
        monkeypatch.setenv("STACCHIP_LINZ_SOURCE", "s3://source/linz")
        naip = process("naip", 1, f"s3://{bucket}/out", archive.points, str(items))
        linz = process("linz", 0, f"s3://{bucket}/out", None, None)
    finally:
        other.terminate()
        other.wait(10)
    assert ids(naip) == naip_expected() and len(linz) == 10
    target = boto3.client("s3", endpoint_url=s3_server)
    keys = _keys(target, bucket, "out/index/")
    assert len(keys) == 12 and all(k.endswith(".parquet") for k in keys)
    assert "source" not in [
        b["Name"] for b in target.list_buckets()["Buckets"]
    ]  # the source lives elsewhere


@pytest.mark.parametrize(
    "script",
    [
        "stacchip-sentinel-2",
        "stacchip-landsat",
        "stacchip-landsat-l1",
        "stacchip-naip",
        "stacchip-linz",
        "stacchip-sentinel-1",
        "stacchip-modis",
    ],
)
def test_original_console_scripts_need_their_environment(script, tmp_path):
    from conftest import run_script_named

    clean = {
        k: ""
        for k in (
            "AWS_BATCH_JOB_ARRAY_INDEX",
            "JOB_COMPLETION_INDEX",
            "SLURM_ARRAY_TASK_ID",
            "STACCHIP_BUCKET",
        )
    }
    r = run_script_named(script, env=clean)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        r.stderr.strip()
        == "Error: none of AWS_BATCH_JOB_ARRAY_INDEX, JOB_COMPLETION_INDEX, "
        "SLURM_ARRAY_TASK_ID is set"
    )
    r = run_script_named(script, env={**clean, "AWS_BATCH_JOB_ARRAY_INDEX": "0"})
    assert r.stderr.strip() == "Error: STACCHIP_BUCKET env var not set"
