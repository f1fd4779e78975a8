"""Scaling out: array-job indices, a real dask LocalCluster with 2 worker processes,
run reports, and a job killed with SIGKILL then rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import naip_expected, run_cli

from stacchip_core.pipeline.runner import job_index_from_env, parse_range


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_runs" not in p.parts}


def test_job_index_from_the_array_job_environment(monkeypatch, archive, tmp_path):
    for var in ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    assert job_index_from_env() is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert job_index_from_env() == 4
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert job_index_from_env() == 1  # Kubernetes before Slurm
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "0")
    assert job_index_from_env() == 0  # AWS Batch first
    monkeypatch.delenv("AWS_BATCH_JOB_ARRAY_INDEX")
    r = run_cli(
        "-q",
        "process",
        "naip",
        "--sample",
        archive.points,
        "--bucket",
        tmp_path,
        "--stac-api",
        archive.items,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{i}: done, 4 chips" for i in naip_expected()
    ]  # sample 1, from JOB_COMPLETION_INDEX
    assert list(parse_range("3:6")) == [3, 4, 5]


@pytest.mark.slow
def test_fan_out_on_a_local_cluster(archive, tmp_path):
    args = [
        "process",
        "naip",
        "--jobs",
        "0:3",
        "--samples",
        archive.points,
        "--stac-api",
        archive.items,
        "--retries",
        "1",
    ]
    r = run_cli("-q", *args, "--bucket", tmp_path / "dask", "--scheduler", "local:2")
    # sample 2 does not exist: it fails, the others are done
    assert r.returncode == 1
    assert "2 of 3 jobs done, 1 failed" in r.stdout and "(local:2)" in r.stdout
    assert "failed: job 2: SampleError: sample 2 is out of range" in r.stderr
    report = json.loads((tmp_path / "dask" / "_runs" / "process-naip-0-3.json").read_text())
    assert report["summary"] == {"tasks": 3, "done": 2, "failed": 1}
    assert [t["status"] for t in report["tasks"]] == ["done", "done", "failed"]
    assert report["tasks"][0]["result"] == []  # no NAIP over the Landsat sample point
    assert [x["item_id"] for x in report["tasks"][1]["result"]] == naip_expected()
    # the same outputs as running the jobs one after the other in this process
    r = run_cli("-q", *args, "--bucket", tmp_path / "sync", "--scheduler", "sync")
    assert r.returncode == 1
    assert files(tmp_path / "dask").keys() == files(tmp_path / "sync").keys()
    for key, data in files(tmp_path / "dask").items():
        if key.endswith(".tif"):
            assert data == files(tmp_path / "sync")[key]


@pytest.mark.slow
def test_prechip_all_on_a_local_cluster(archive, tmp_path):
    from stacchip_core.pipeline.merge import merge
    from stacchip_core.pipeline.process import process

    bucket = tmp_path / "bucket"
    process("sentinel-2-l2a", 0, bucket, archive.mgrs, str(archive.items))
    merge(bucket / "index", bucket / "merged.parquet", progress=False)
    common = [
        "prechip",
        bucket / "merged.parquet",
        "--cube-size",
        "3",
        "--cubes-per-job",
        "1",
        "--max-nodata",
        "1",
    ]
    r = run_cli(
        "-q", *common[:2], tmp_path / "dask", *common[2:], "--all", "--scheduler", "local:2"
    )
    assert r.returncode == 0, r.stderr
    assert (
        "4 of 4 jobs done, 0 failed" in r.stdout
    )  # 18 chips in blocks of 3 + 1 spare: 4 cubes, one per job
    r = run_cli(
        "-q", *common[:2], tmp_path / "seq", *common[2:], "--cubes-per-job", "4", "--job", "0"
    )
    assert r.returncode == 0, r.stderr
    a, b = files(tmp_path / "dask"), files(tmp_path / "seq")
    assert sorted(a) == sorted(b) and len(a) == 4
    for key in a:
        with np.load(tmp_path / "dask" / key) as x, np.load(tmp_path / "seq" / key) as y:
            np.testing.assert_array_equal(x["pixels"], y["pixels"])
            assert list(x["chipids"]) == list(y["chipids"])


@pytest.mark.slow
def test_a_job_killed_with_sigkill_reruns_to_the_same_outputs(archive, tmp_path):
    exe = Path(sys.executable).with_name("stacchip")
    args = [
        str(exe),
        "-q",
        "process",
        "sentinel-2-l2a",
        "--job",
        "0",
        "--sample",
        str(archive.mgrs),
        "--stac-api",
        str(archive.items),
        "--bucket",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        args + [str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and not list((killed / "index").rglob("*.parquet"))
        and proc.poll() is None
    ):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((killed / "index").rglob("*.parquet")))
    assert 1 <= done_before < 6, "the job must die midway for this test to mean anything"
    assert subprocess.run(args + [str(killed)], capture_output=True, check=False).returncode == 0
    clean = tmp_path / "clean"
    assert subprocess.run(args + [str(clean)], capture_output=True, check=False).returncode == 0
    a, b = files(killed), files(clean)
    assert sorted(a) == sorted(b)
    assert not [k for k in a if ".tmp" in k]  # no temporary file was left behind
    for key in a:
        if key.endswith(".parquet"):
            x, y = pq.read_table(killed / key), pq.read_table(clean / key)
            # item_href and the layouts (their asset hrefs) name the tree they were written in
            where = [c for c in ("item_href", "layouts") if c in x.column_names]
            assert x.drop(where).equals(y.drop(where))
        elif key.endswith(".json"):
            assert a[key].replace(str(killed).encode(), b"") == b[key].replace(
                str(clean).encode(), b""
            )
        else:
            assert a[key] == b[key], key


def test_log_json(tmp_path):
    from stacchip_core.demo.synthetic import naip_scene

    item = naip_scene(tmp_path, 300, 300)
    r = run_cli("--log-json", "-v", "index", item, "-o", tmp_path / "i.parquet")
    assert r.returncode == 0
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    assert lines and {"time", "level", "logger", "message"} <= set(lines[0])
    assert any("1 of 1 chips kept" in line["message"] for line in lines)


@pytest.mark.slow  # about 5 s on two shared cores (a dask cluster over TCP)
def test_fan_out_to_a_running_cluster_over_tcp(archive, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        r = run_cli(
            "-q",
            "process",
            "naip",
            "--jobs",
            "1:2",
            "--samples",
            archive.points,
            "--stac-api",
            archive.items,
            "--bucket",
            tmp_path,
            "--scheduler",
            cluster.scheduler_address,
        )
    assert r.returncode == 0, r.stderr
    assert "1 of 1 jobs done, 0 failed" in r.stdout
    assert sorted(
        p.parent.name for p in (tmp_path / "index" / "naip").rglob("*.parquet")
    ) == sorted(naip_expected())
