"""Files under hostile conditions (issue 12): modes of published files, concurrent jobs on
the same sample, temporary files left by killed writers, full disks."""

import os
import stat
from pathlib import Path

import pytest
from conftest import run_cli


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_published_files_honour_the_umask(archive, tmp_path, umask):
    from stacchip_core.training.bandstats import dump

    expected = 0o666 & ~umask
    bucket = tmp_path / "bucket"
    r = run_cli("-q", "process", "naip", "--job", 1, "--sample", archive.points, "--bucket", bucket,
                "--stac-api", archive.items)
    assert r.returncode == 0, r.stderr
    tree = modes(bucket)
    assert len(tree) == 6  # 2 items x (asset, stac_item.json, index)
    assert set(tree.values()) == {expected}, {k: oct(v) for k, v in tree.items()}
    r = run_cli("merge", bucket / "index", tmp_path / "out" / "merged.parquet")
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "index",
        archive.items / "naip" / next(iter(sorted(os.listdir(archive.items / "naip")))),
        "-o",
        tmp_path / "out" / "one.parquet",
        "--chip-size",
        128,
    )
    index = bucket / "index" / "naip"
    row_index = next(index.rglob("*.parquet"))
    for name in ("c.npz", "c.tif"):  # two outputs checked together below, not two cases
        r = run_cli("chip", row_index, "--row", 0, "-o", tmp_path / "out" / name)
        assert r.returncode == 0, r.stderr
    dump({"naip": {}}, tmp_path / "out" / "stats.json")
    out = modes(tmp_path / "out")
    assert set(out) >= {"merged.parquet", "c.npz", "c.tif", "stats.json"}
    assert set(out.values()) == {expected}, {k: oct(v) for k, v in out.items()}


def test_store_writes_honour_the_umask(tmp_path, umask):
    from stacchip_core.io.store import LocalStore

    store = LocalStore(tmp_path)
    store.write_bytes("a/b.bin", b"x")
    (tmp_path / "src").write_bytes(b"y")
    store.put_file("a/c.bin", tmp_path / "src")
    assert stat.S_IMODE((tmp_path / "a" / "b.bin").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "a" / "c.bin").stat().st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path / "a")) == ["b.bin", "c.bin"]  # no temporary file left


# --- concurrent jobs on the same sample ----------------------------------------------------

# starts the CLI after its imports, at a given wall-clock time: two processes then really
# run side by side instead of one finishing its imports seconds before the other
_AT = """import sys, time
from stacchip_core.cli import main
start = float(sys.argv[1])
sys.argv = ["stacchip", *sys.argv[2:]]
time.sleep(max(0.0, start - time.time()))
main()
"""


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def same_tree(a_root: Path, b_root: Path) -> None:
    import pyarrow.parquet as pq

    a, b = files(a_root), files(b_root)
    assert sorted(a) == sorted(b)
    for key in a:
        if key.endswith(".parquet"):
            x, y = pq.read_table(a_root / key), pq.read_table(b_root / key)
            # item_href and the layouts (their asset hrefs) name the tree they were written in
            where = [c for c in ("item_href", "layouts") if c in x.column_names]
            assert x.drop(where).equals(y.drop(where)), key
        elif key.endswith(".json"):
            assert a[key].replace(str(a_root).encode(), b"") == b[key].replace(
                str(b_root).encode(), b""
            ), key
        else:
            assert a[key] == b[key], key


@pytest.mark.slow
def test_two_jobs_on_the_same_sample_at_once_both_succeed(archive, tmp_path):
    import subprocess
    import sys
    import time

    args = ["-q", "process", "sentinel-2-l2a", "--job", "0", "--sample", str(archive.mgrs),
            "--stac-api", str(archive.items), "--bucket"]
    for attempt in range(3):  # the race window is narrow: three rounds, each must pass
        shared = tmp_path / f"shared{attempt}"
        start = time.time() + 6  # both are past their imports by then
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _AT, str(start), *args, str(shared)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            assert len(out.splitlines()) == 6, out
    alone = tmp_path / "alone"
    r = run_cli(*args, alone)
    assert r.returncode == 0, r.stderr
    for attempt in range(3):
        same_tree(tmp_path / f"shared{attempt}", alone)


def test_only_stale_temporary_files_are_removed(tmp_path):
    import subprocess
    import sys

    from stacchip_core.io import files as f

    (tmp_path / "sub").mkdir()
    live = f.temp_sibling(tmp_path / "sub" / "a.tif").name  # this live process: in flight
    # a writer that made its temporary file and died before the rename
    code = (
        "import sys; from stacchip_core.io.files import temp_sibling; "
        "print(temp_sibling(sys.argv[1]).name)"
    )
    dead = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "sub" / "b.tif")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    names = {
        live: False,
        dead: True,  # its writer is gone
        ".c.tif~otherhost~1~00ff.tmp": False,  # another host, recently written: maybe in flight
        ".d.tif~otherhost~1~00ff.tmp.old": False,  # not a temporary file name
        ".e.tif.x1y2z3.tmp": True,  # an older version's name: no current writer makes it
    }
    for name in names:
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / name).write_bytes(b"x")
    old = tmp_path / "sub" / ".f.tif~otherhost~1~00ff.tmp"
    old.write_bytes(b"x")
    os.utime(old, (0, 0))  # untouched for decades: its writer is dead
    assert f.remove_stale(tmp_path) == 3
    left = sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert left == sorted(n for n, stale in names.items() if not stale)
