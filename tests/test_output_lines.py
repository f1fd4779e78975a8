"""Every line the command line and the console scripts print is one honest line (issue 19):
catalog data (item ids, asset keys, hrefs, chip ids) and arguments with control characters
in them never forge a line, in stdout or stderr, through the real console scripts.

A forged line is a line of ``stdout + stderr`` (split as str.splitlines splits: NEL and the
Unicode separators count) that starts with the attacker's text."""

import ast
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_keys_and_redaction import LATEST_NAIP, hostile_items

BIN = Path(sys.executable).parent
ROOT = Path(__file__).parent.parent
# every kind of line break and cursor move a terminal or a log reader honours
FORGED = (
    "evil\nFORGED nl\rFORGED cr\x1b[2K\x1b[1GFORGED esc\x85FORGED nel\u2028FORGED ls\x0bFORGED vt"
)
ESCAPED = (
    "evil\\nFORGED nl\\rFORGED cr\\x1b[2K\\x1b[1GFORGED esc\\x85FORGED nel"
    "\\u2028FORGED ls\\x0bFORGED vt"
)


def run(script: str, *args, env=None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([str(BIN / script), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)


def finished(r: subprocess.CompletedProcess) -> bool:
    """Exit code 0. The interpreter has been seen to abort once in about 8 runs of
    stacchip-naip at exit, after every line was written ("PyGILState_Release ... finalizing":
    native reader threads at shutdown, not the output path); that abort is not what these
    tests are about and is reported separately."""
    return r.returncode == 0 or (r.returncode == -6 and "PyGILState_Release" in r.stderr)


def forged(r: subprocess.CompletedProcess) -> list[str]:
    """Lines that start with forged text, and raw control characters anywhere."""
    out = r.stdout + r.stderr
    bad = [line for line in out.splitlines() if line.lstrip().startswith("FORGED")]
    bad += [repr(ch) for ch in "\r\x1b\x85\u2028\x0b" if ch in out]
    return bad


@pytest.mark.parametrize("args", [
    ["process", "naip", "--job", "1"],
    ["-v", "process", "naip", "--job", "1"],
    ["--log-json", "-v", "process", "naip", "--job", "1"],
    ["-v", "process", "naip", "--jobs", "1:2", "--scheduler", "sync"],
], ids=["stdout", "verbose", "json", "run"])
def test_item_ids_forge_no_line(archive, tmp_path, args):
    items = hostile_items(archive, tmp_path, FORGED)
    r = run(
        "stacchip",
        *args,
        "--sample",
        archive.points,
        "--bucket",
        tmp_path / "b",
        "--stac-api",
        items,
    )
    assert finished(r), r.stderr
    assert forged(r) == []
    if "--jobs" not in args:  # the per-item lines name the item, escaped
        assert f"{ESCAPED}: done, 4 chips" in r.stdout.splitlines()


def test_item_ids_forge_no_line_in_the_original_console_script(archive, tmp_path):
    items = hostile_items(archive, tmp_path, FORGED)
    r = run(
        "stacchip-naip",
        env={
            "AWS_BATCH_JOB_ARRAY_INDEX": "1",
            "STACCHIP_SAMPLE_SOURCE": str(archive.points),
            "STACCHIP_BUCKET": str(tmp_path / "b"),
            "STACCHIP_STAC_API": str(items),
        },
    )
    assert finished(r), r.stderr
    assert forged(r) == []
    assert f"{ESCAPED}: done, 4 chips" in r.stdout.splitlines()
    assert any(ESCAPED in line and line.startswith("INFO ") for line in r.stderr.splitlines())


@pytest.mark.slow
def test_item_ids_forge_no_line_from_dask_workers(archive, tmp_path):
    """Worker processes log through the command's formatter, not Python's raw last resort."""
    items = hostile_items(archive, tmp_path, FORGED)
    r = run(
        "stacchip",
        "-v",
        "process",
        "naip",
        "--jobs",
        "1:2",
        "--scheduler",
        "local:1",
        "--sample",
        archive.points,
        "--bucket",
        tmp_path / "b",
        "--stac-api",
        items,
    )
    assert r.returncode == 0, r.stderr
    assert forged(r) == []
    # the worker's own record of the item, formatted by the command's formatter
    assert (
        f"INFO stacchip_core.pipeline.process: {ESCAPED}: 4 chips indexed" in r.stderr.splitlines()
    )


@pytest.mark.slow  # 4-6 s on two shared cores (CLI runs in subprocesses)
def test_hrefs_forge_no_line(archive, tmp_path):
    href = str(tmp_path / f"missing{FORGED}.tif")
    items = hostile_items(archive, tmp_path, LATEST_NAIP, href=href)
    for args in (
        ["process", "naip", "--job", "1"],
        ["process", "naip", "--jobs", "1:2", "--scheduler", "sync"],
    ):
        r = run(
            "stacchip",
            *args,
            "--sample",
            archive.points,
            "--bucket",
            tmp_path / "b",
            "--stac-api",
            items,
        )
        assert r.returncode == 1
        assert forged(r) == []
        assert (
            "missing" in r.stderr and "FORGED nl" in r.stderr
        )  # the error names the href, escaped


def test_asset_keys_forge_no_line(archive, tmp_path):
    items = hostile_items(archive, tmp_path, LATEST_NAIP)
    for path in items.rglob("*.json"):
        d = json.loads(path.read_text())
        if d.get("id") == LATEST_NAIP:
            d["assets"] = {
                f"image{FORGED}": d["assets"]["image"],
                **{k: v for k, v in d["assets"].items() if k != "image"},
            }
            path.write_text(json.dumps(d))
    r = run("stacchip", "-v", "process", "naip", "--job", "1", "--sample", archive.points,
            "--bucket", tmp_path / "b", "--stac-api", items)
    assert forged(r) == []
    assert "FORGED nl" in r.stdout + r.stderr  # the key reached the output (escaped)


def _index_with_chip_ids(path: Path, text: str) -> Path:
    """An index of 10 chips whose ids and item href hold ``text`` (the href does not exist)."""
    import shapely

    from stacchip_core.core.index import build_table, write_index

    n = 10
    xs = np.arange(n)
    table = build_table(
        item_id=text,
        item_href=f"/nonexistent/{text}.json",
        platform="naip",
        when=datetime(2022, 7, 1),
        xs=xs,
        ys=np.zeros(n, int),
        chip_size=4,
        cloud=np.zeros(n),
        nodata=np.zeros(n),
        polygons=shapely.box(xs, 0, xs + 1, 1),
        bounds=np.stack([xs, np.zeros(n), xs + 1, np.ones(n)], axis=1).astype(float),
    )
    return write_index(table, path)


def test_chip_ids_and_hrefs_forge_no_line_in_prechip(tmp_path):
    index = _index_with_chip_ids(tmp_path / "index.parquet", FORGED)
    assert pq.read_table(index)["chipid"][0].as_py() == f"{FORGED}-0-0"
    r = run(
        "stacchip",
        "-v",
        "prechip",
        index,
        tmp_path / "cubes",
        "--cube-size",
        "2",
        "--max-nodata",
        "1",
        "--job",
        "0",
    )
    assert r.returncode == 1
    assert forged(r) == []
    assert "FORGED nl" in r.stderr


def test_chip_command_prints_chip_ids_escaped(tmp_path):
    index = _index_with_chip_ids(tmp_path / "index.parquet", FORGED)
    r = run("stacchip", "chip", index, "--chipid", f"{FORGED}-0-0", "-o", tmp_path / "x.npz")
    assert r.returncode == 1
    assert forged(r) == []
    assert r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["chip", "missing\nFORGED path", "--row", "0", "-o", "x.npz"],  # click's own 'does not exist'
    ["no-such\nFORGED command"],
    ["index", "item.json", "-o", "x.parquet", "--chip-size", "x\nFORGED value"],
    ["--no-such\nFORGED-option"],
])
def test_click_errors_forge_no_line(tmp_path, args):
    r = run("stacchip", *args)
    assert r.returncode == 2
    assert forged(r) == []
    assert "\\nFORGED" in r.stderr


def test_library_warnings_are_one_escaped_log_line():
    code = (
        "import warnings; from stacchip_core.cli import _setup_logging; _setup_logging(0, False); "
        f"warnings.warn({FORGED!r})"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert forged(r) == []
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING py.warnings: ") and ESCAPED in lines[0]


def test_stats_prints_band_names_escaped(tmp_path):
    """Band names come from the cube files: the stats table escapes them."""
    cubes = tmp_path / "cubes" / "v1" / "naip"
    cubes.mkdir(parents=True)
    np.savez(
        cubes / "cube_000000.npz",
        pixels=np.ones((2, 1, 2, 2), np.float32),
        bands=np.array([FORGED]),
        platform=np.array("naip"),
        chipids=np.array(["a", "b"]),
    )
    r = run("stacchip", "stats", tmp_path / "cubes")
    assert forged(r) == []


def _prints(tree: ast.AST) -> list[int]:
    """Lines of click.echo(...) and print(...) calls, outside the one echo() helper."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "echo":
            node.body = []  # the helper itself calls click.echo
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "print") or (
                    isinstance(f, ast.Attribute) and f.attr in ("echo", "secho") and
                    isinstance(f.value, ast.Name) and f.value.id == "click"):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", [ROOT / "stacchip_core" / "cli.py",
                                  *sorted((ROOT / "plugins").glob("*/stacchip_*/*.py"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_commands_print_through_echo(path):
    assert _prints(ast.parse(path.read_text())) == []

