"""Outputs are a pure function of their inputs (issue 19, item 1): two clean runs of the same
jobs, a run killed with SIGKILL and rerun, and two overlapping runs of the same jobs on one
sample leave byte-identical trees: per-item indexes, item JSON, copied assets, the merged
index, the cubes of ``stacchip prechip``, and the run reports except the fields that say
when (``started``, ``seconds``).

Every run writes to the same bucket path (then moved aside), since item JSON and indexes name
the bucket they were written in. Until layouts were validated by size and header digest, the
``layouts`` column held each asset's ETag, which a local folder derives from the file's inode
and modification time: the indexes of every pair of runs differed there, and nowhere else.
"""

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from processes import kill_when

EXE = str(Path(sys.executable).with_name("stacchip"))
WHEN = ("started", "seconds")  # the fields of a run report that say when

pytestmark = pytest.mark.slow


def cli(*args) -> list[str]:
    return [EXE, "-q", *map(str, args)]


def steps(archive, bucket: Path, job: int | None = None) -> dict[str, list[str]]:
    """The pipeline's commands: process two samples, merge, cut cubes (two jobs). ``job``:
    one job of each (no run report), else both as one run (with reports)."""
    jobs = ["--job", str(job)] if job is not None else ["--jobs", "0:2", "--scheduler", "sync"]
    return {
        "process": cli("process", "sentinel-2-l2a", *jobs, "--sample", archive.mgrs, "--stac-api", archive.items,
                       "--bucket", bucket),
        "merge": cli("merge", bucket / "index", bucket / "merged.parquet"),
        "prechip": cli("prechip", bucket / "merged.parquet", bucket / "cubes", "--cube-size", "3",
                       "--cubes-per-job", "4", "--max-nodata", "1", *jobs),
    }


def ok(args: list[str]) -> None:
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def without_when(report: bytes) -> object:
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in WHEN}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return strip(json.loads(report))


def differing(a: Path, b: Path) -> dict[str, str]:
    """{file: how it differs} between two trees: 'missing', 'bytes', or for indexes
    'layouts' (only the layouts column differs) or 'rows' (more than that). Run reports are
    compared without the fields that say when."""
    ta, tb = tree(a), tree(b)
    out = {k: "missing" for k in set(ta) ^ set(tb)}
    for key in sorted(set(ta) & set(tb)):
        if "_runs/" in key:
            if without_when(ta[key]) != without_when(tb[key]):
                out[key] = "report"
        elif ta[key] != tb[key]:
            if key.endswith(".parquet"):
                x, y = pq.read_table(a / key), pq.read_table(b / key)
                same = x.drop(["layouts"]).equals(y.drop(["layouts"])) and x.schema.metadata == y.schema.metadata
                out[key] = "layouts" if same else "rows"
            else:
                out[key] = "bytes"
    return out



@pytest.fixture(scope="module")
def runs(archive, tmp_path_factory) -> dict[str, Path]:
    """The trees of each kind of run, all written at one bucket path and moved aside."""
    root = tmp_path_factory.mktemp("determinism")
    bucket = root / "bucket"
    out = {}

    def keep(name: str) -> None:
        bucket.rename(root / name)
        out[name] = root / name

    for name in ("clean", "clean-again"):
        for args in steps(archive, bucket).values():
            ok(args)
        keep(name)

    # killed once mid-way through each step that writes many files, then rerun
    rng = random.Random(19)
    for job in (0, 1):
        s = steps(archive, bucket, job)
        proc = subprocess.Popen(s["process"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.5))
        kill_when(proc, lambda: any((bucket / "index").rglob("*.parquet")))
        ok(s["process"])
    ok(steps(archive, bucket)["merge"])
    for job in (0, 1):
        s = steps(archive, bucket, job)
        proc = subprocess.Popen(s["prechip"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(proc, lambda: any(bucket.rglob("*.tmp")) or any(bucket.rglob("cube_*")))
        ok(s["prechip"])
    keep("killed")

    # two runs of the same jobs at once, on one bucket
    for step in ("process", "merge", "prechip"):
        for job in (0, 1):
            args = steps(archive, bucket, job)[step]
            pair = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(2)]
            for proc in pair:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err
            if step == "merge":
                break  # one merge of the whole tree
    keep("overlapping")
    return out


def test_two_clean_runs_are_byte_identical(runs):
    assert differing(runs["clean"], runs["clean-again"]) == {}
    # and what was run is there: 6 items, their indexes, the merged index, cubes, two reports
    files = tree(runs["clean"])
    assert sum(k.endswith("stac_item.json") for k in files) == 6
    assert sum(k.startswith("index/") and k.endswith(".parquet") for k in files) == 6
    assert sum(k.startswith("cubes/v1/") for k in files) == 4  # cubes of 3 chips: job 0 writes all 4
    assert sorted(k for k in files if "_runs/" in k) == ["_runs/process-sentinel-2-l2a-0-2.json",
                                                         "cubes/_runs/prechip-v1-0-2.json"]


@pytest.mark.parametrize("other", ["killed", "overlapping"])
def test_killed_and_overlapping_runs_are_byte_identical(runs, other):
    """Against the clean run, without its run reports (these runs ran job by job, which
    writes none)."""
    assert {k: v for k, v in differing(runs["clean"], runs[other]).items() if "_runs/" not in k} == {}
    assert not [k for k in tree(runs[other]) if ".tmp" in k or "_runs/" in k]


def test_the_indexes_compared_hold_layouts(runs):
    """The comparison covers the layouts: every row of every index has one, and the run's
    copy of each asset is what it describes (its size)."""
    from stacchip_core.core.layout import decode

    for key in sorted(tree(runs["clean"])):
        if key.endswith(".parquet"):
            layouts = pq.read_table(runs["clean"] / key)["layouts"]
            assert layouts.null_count == 0, key
    key = next(k for k in sorted(tree(runs["clean"])) if k.startswith("index/") and k.endswith(".parquet"))
    decoded = decode(pq.read_table(runs["clean"] / key)["layouts"][0].as_py())
    assert decoded
    for lay in decoded.values():
        # written in the bucket path, the tree moved to runs["clean"] afterwards
        name = Path(lay.href).relative_to(runs["clean"].parent / "bucket")
        assert (runs["clean"] / name).stat().st_size == lay.size


def test_tree_copies_are_independent(runs, tmp_path):
    """The comparison itself can fail: one changed byte in a cube is found."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["clean"], copy)
    cube = next(p for p in sorted(copy.rglob("cube_*.npz")))
    data = bytearray(cube.read_bytes())
    data[-30] ^= 1
    cube.write_bytes(bytes(data))
    diff = differing(runs["clean"], copy)
    assert diff[cube.relative_to(copy).as_posix()] == "bytes"
