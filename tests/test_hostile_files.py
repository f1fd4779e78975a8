"""Files under hostile conditions (issue 12): modes of published files, concurrent jobs on
the same sample, temporary files left by killed writers, full disks."""

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import run_cli
from test_process import archive  # noqa: F401  (fixture)


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_published_files_honour_the_umask(archive, tmp_path, umask):  # noqa: F811
    from stacchip_core.training.bandstats import dump

    expected = 0o666 & ~umask
    bucket = tmp_path / "bucket"
    r = run_cli("-q", "process", "naip", "--index", 1, "--sample", archive.points, "--bucket", bucket,
                "--stac-api", archive.items)
    assert r.returncode == 0, r.stderr
    tree = modes(bucket)
    assert len(tree) == 6  # 2 items x (asset, stac_item.json, index)
    assert set(tree.values()) == {expected}, {k: oct(v) for k, v in tree.items()}
    r = run_cli("merge", bucket / "index", tmp_path / "out" / "merged.parquet")
    assert r.returncode == 0, r.stderr
    r = run_cli("index", archive.items / "naip" / next(iter(sorted(os.listdir(archive.items / "naip")))),
                "-o", tmp_path / "out" / "one.parquet", "--chip-size", 128)
    index = bucket / "index" / "naip"
    row_index = next(index.rglob("*.parquet"))
    for name in ("c.npz", "c.tif"):
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
