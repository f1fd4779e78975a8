"""Leftovers (issue 12): a run killed with SIGKILL at any moment, or one that hits a full
disk, is followed by a rerun that ends with exactly the outputs of an uninterrupted run."""

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from processes import kill_when

EXE = str(Path(sys.executable).with_name("stacchip"))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_runs" not in p.parts}



@pytest.fixture(scope="module")
def merged(archive, tmp_path_factory):
    from stacchip_core.pipeline.merge import merge
    from stacchip_core.pipeline.process import process

    bucket = tmp_path_factory.mktemp("bucket")
    process("sentinel-2-l2a", 0, bucket, archive.mgrs, str(archive.items))
    merge(bucket / "index", bucket / "merged.parquet", progress=False)
    return bucket / "merged.parquet"


PRECHIP = ["-q", "prechip", "--cube-size", "3", "--cubes-per-job", "4", "--max-nodata", "1", "--job", "0"]


def prechip_args(index: Path, target: Path) -> list[str]:
    return [EXE, *PRECHIP[:2], str(index), str(target), *PRECHIP[2:]]


@pytest.mark.slow
def test_killed_prechip_reruns_to_exactly_the_clean_outputs(merged, tmp_path):
    clean = tmp_path / "clean"
    assert subprocess.run(prechip_args(merged, clean), capture_output=True, check=False).returncode == 0
    expected = tree(clean)
    assert len(expected) == 4
    rng = random.Random(12)
    target = tmp_path / "killed"
    for round_ in range(3):
        proc = subprocess.Popen(prechip_args(merged, target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # at a random moment once cubes are being written (imports take seconds here)
        time.sleep(rng.uniform(0.0, 0.3))
        killed = kill_when(proc, lambda n=round_: any(target.rglob("*.tmp")) or len(list(target.rglob("cube_*"))) > n)
        assert killed or proc.returncode == 0
    # what a writer killed between its temporary file and the rename leaves, old and new names
    cubes = next(p for p in target.rglob("*") if p.is_dir() and p.parent.parent == target) if target.exists() else None
    folder = cubes or (target / "v1" / "sentinel-2-l2a")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".cube_000002.npz.k3j4h5.tmp").write_bytes(b"half")
    # a writer that made its temporary file, wrote half of it and died before the rename
    code = ("import sys; from stacchip_core.io.files import temp_sibling; "
            "temp_sibling(sys.argv[1]).write_bytes(b'half')")
    subprocess.run([sys.executable, "-c", code, str(folder / "cube_000003.npz")], check=True)
    r = subprocess.run(prechip_args(merged, target), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    got = tree(target)
    assert sorted(got) == sorted(expected)
    for key in got:
        with np.load(target / key) as x, np.load(clean / key) as y:
            np.testing.assert_array_equal(x["pixels"], y["pixels"])
            assert list(x["chipids"]) == list(y["chipids"])


@pytest.mark.slow
def test_killed_merge_leaves_nothing(merged, tmp_path):
    from stacchip_core import write_index
    from stacchip_core.core.index import read_index

    one = read_index(merged).slice(0, 5)
    for i in range(600):
        write_index(one, tmp_path / "many" / f"{i:04d}" / "index.parquet")
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    out = tmp_path / "out"
    out.mkdir()
    args = [EXE, "-q", "merge", str(tmp_path / "many"), str(out / "m.parquet")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # killed while it writes: a temporary file exists (beside DST, or staged in TMPDIR)
    assert kill_when(proc, lambda: any(out.iterdir()) or any(scratch.iterdir())), "merge ended before the kill"
    r = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["m.parquet"]
    assert list(scratch.iterdir()) == []
    assert pq.read_metadata(out / "m.parquet").num_rows == 600 * 5


@pytest.mark.slow
def test_killed_copy_from_s3_leaves_nothing(archive, s3_archive, tmp_path):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    args = [EXE, "-q", "process", "sentinel-2-l2a", "--job", "0", "--sample", str(archive.mgrs),
            "--stac-api", str(s3_archive), "--bucket"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert kill_when(proc, lambda: any(p.is_file() for p in scratch.rglob("*"))), "the job ended before the kill"
    assert any(scratch.iterdir())  # the killed job's download folder
    r = subprocess.run([*args, str(killed)], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert list(scratch.iterdir()) == []
    clean = tmp_path / "clean"
    assert subprocess.run([*args, str(clean)], env=env, capture_output=True, check=False).returncode == 0
    assert sorted(tree(killed)) == sorted(tree(clean))


def _limit_file_size(limit: int):
    def apply():  # a full disk for this process only: writes past ``limit`` bytes fail (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow  # over 5 s on two shared cores
def test_stats_on_a_full_disk_leaves_nothing(merged, tmp_path):
    cubes = tmp_path / "cubes"
    assert subprocess.run(prechip_args(merged, cubes), capture_output=True, check=False).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([EXE, "stats", str(cubes), "-o", str(out / "stats.json")], capture_output=True, text=True,
                       env=env, preexec_fn=_limit_file_size(64), check=False)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"Error: cannot write {out / 'stats.json'}: File too large"]
    assert list(out.iterdir()) == []
