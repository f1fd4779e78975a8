"""Errors as a careless user meets them (issue 12): one line, exit 1, never a traceback;
usage errors stay click's (exit 2)."""

import http.server
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import run_cli, run_script_named

from stacchip_core.pipeline.runner import local_workers

SCRIPTS = [
    "stacchip-sentinel-2",
    "stacchip-landsat",
    "stacchip-landsat-l1",
    "stacchip-naip",
    "stacchip-linz",
]
CONTROL = [chr(c) for c in range(32) if chr(c) != "\n"] + ["\x7f"]


def one_line(stderr: str) -> str:
    """The error line: the last line of stderr, the only one that is not a log line
    (the console scripts log at INFO for batch logs)."""
    lines = stderr.splitlines()
    assert lines and lines[-1].startswith("Error: "), stderr
    assert all(line.startswith(("INFO ", "WARNING ", "DEBUG ")) for line in lines[:-1]), stderr
    assert "Traceback" not in stderr
    assert not any(ch in stderr for ch in CONTROL), repr(stderr)
    return lines[-1]


@pytest.fixture(scope="module")
def forbidden():
    """An HTTP server on loopback that answers every request as S3 does for a denied one."""
    class Deny(http.server.BaseHTTPRequestHandler):
        def _deny(self):
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied</Message></Error>")
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _deny

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def base_env(archive, tmp_path) -> dict:
    return {
        "AWS_BATCH_JOB_ARRAY_INDEX": "1",
        "JOB_COMPLETION_INDEX": "",
        "SLURM_ARRAY_TASK_ID": "",
        "STACCHIP_SAMPLE_SOURCE": str(archive.points),
        "STACCHIP_MGRS_SOURCE": str(archive.mgrs),
        "STACCHIP_BUCKET": str(tmp_path / "b"),
        "STACCHIP_STAC_API": str(archive.items),
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }


@pytest.mark.slow  # over 5 s on two shared cores (console scripts start a process each)
@pytest.mark.parametrize("script", SCRIPTS[:4])
def test_console_scripts_with_the_stac_api_down(script, archive, tmp_path):
    env = {**base_env(archive, tmp_path), "STACCHIP_STAC_API": f"http://127.0.0.1:{closed_port()}/"}
    r = run_script_named(script, env=env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "127.0.0.1" in one_line(r.stderr)


@pytest.mark.slow  # over 5 s on two shared cores (console scripts start a process each)
@pytest.mark.parametrize("script", ["stacchip-naip", "stacchip-linz"])
def test_console_scripts_when_s3_denies_access(script, archive, tmp_path, forbidden):
    env = {
        **base_env(archive, tmp_path),
        "STACCHIP_BUCKET": "s3://target/run",
        "STACCHIP_S3_ENDPOINT": forbidden,
        "AWS_ENDPOINT_URL": forbidden,
        "AWS_BATCH_JOB_ARRAY_INDEX": "1" if script == "stacchip-naip" else "0",
    }
    r = run_script_named(script, env=env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    line = one_line(r.stderr)
    assert "403" in line or "AccessDenied" in line or "Forbidden" in line, line


@pytest.mark.parametrize("how", ["script", "cli"])
def test_sentinel_2_without_a_sample_source_says_what_is_missing(how, archive, tmp_path):
    message = (
        "Error: platform 'sentinel-2-l2a' needs a sample source "
        "(--sample or STACCHIP_SAMPLE_SOURCE)"
    )
    if how == "script":
        env = {
            **base_env(archive, tmp_path),
            "STACCHIP_SAMPLE_SOURCE": "",
            "STACCHIP_MGRS_SOURCE": "",
            "AWS_BATCH_JOB_ARRAY_INDEX": "0",
        }
        r = run_script_named("stacchip-sentinel-2", env=env)
    else:
        r = run_cli(
            "process",
            "sentinel-2-l2a",
            "--job",
            0,
            "--bucket",
            tmp_path / "b",
            "--stac-api",
            archive.items,
            env={"STACCHIP_SAMPLE_SOURCE": "", "STACCHIP_MGRS_SOURCE": ""},
        )
    assert r.returncode == 1
    assert one_line(r.stderr) == message
    assert not (tmp_path / "b").exists()


def test_a_sample_without_the_attribute_a_platform_needs(archive, tmp_path):
    # the point layer has no MGRS tile name: Sentinel-2's selection needs one
    r = run_cli(
        "process",
        "sentinel-2-l2a",
        "--job",
        0,
        "--sample",
        archive.points,
        "--bucket",
        tmp_path / "b",
        "--stac-api",
        archive.items,
    )
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"Error: sample 0 of {archive.points} has no attribute 'name', "
                                  "which platform 'sentinel-2-l2a' needs")


def test_usage_errors_exit_2(tmp_path):
    r = run_cli("chip", tmp_path)  # no -o
    assert r.returncode == 2 and "Missing option '-o'" in r.stderr
    r = run_cli("process", "naip", "--bucket", tmp_path, "--job", -1)
    assert r.returncode == 2


def _limit_file_size(limit: int):
    def apply():  # a full disk for this process only: writes past ``limit`` bytes fail (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.fixture(scope="module")
def naip_index(archive, tmp_path_factory):
    from stacchip_core.pipeline.process import process

    bucket = tmp_path_factory.mktemp("naip")
    process("naip", 1, bucket, archive.points, str(archive.items))
    return min((bucket / "index").rglob("*.parquet"))


@pytest.mark.slow  # over 5 s on two shared cores
@pytest.mark.parametrize("name", ["x.tif", "x.npz", "x.png"])
def test_chip_on_a_full_disk_is_one_line(naip_index, tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    exe = str(Path(sys.executable).with_name("stacchip"))
    r = subprocess.run(
        [exe, "chip", str(naip_index), "--row", "0", "-o", str(out / name)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=_limit_file_size(4096),
        check=False,
    )
    assert r.returncode == 1
    line = one_line(r.stderr)
    if (
        name == "x.png"
    ):  # libpng reports its own words for a short write ("No IDATs written into file")
        assert line.startswith(f"Error: cannot write {out / name}: ")
    else:
        assert line == f"Error: cannot write {out / name}: File too large"
    assert list(out.iterdir()) == []


@pytest.mark.slow  # over 5 s on two shared cores
def test_chip_on_a_real_full_disk(naip_index, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (full / "fill").write_bytes(b"\0" * 65536) if False else None
        with open(full / "fill", "wb") as fh:
            try:
                fh.write(b"\0" * 65536)
            except OSError:
                pass
        exe = str(Path(sys.executable).with_name("stacchip"))
        r = subprocess.run([exe, "chip", str(naip_index), "--row", "0", "-o", str(full / "x.tif")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 1
        assert (
            one_line(r.stderr) == f"Error: cannot write {full / 'x.tif'}: No space left on device"
        )
        assert sorted(os.listdir(full)) == ["fill"]
    finally:
        subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("command", ["chip", "merge"])
@pytest.mark.parametrize("seed", range(6))
def test_bit_flipped_index_is_one_clean_line(naip_index, tmp_path, seed, command):
    import random

    data = bytearray(naip_index.read_bytes())
    rng = random.Random(seed)
    # flip bits in the footer (the schema and metadata, what a reader parses first)
    for _ in range(8):
        i = rng.randrange(len(data) - 600, len(data) - 8)
        data[i] ^= 1 << rng.randrange(8)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    args = {"chip": ["chip", bad, "--row", 0, "-o", tmp_path / "c.npz"],
            "merge": ["merge", tmp_path, tmp_path / "o" / "m.parquet"]}[command]
    r = run_cli(*args)
    if r.returncode != 0:  # 0: the flips hit bytes nobody reads
        assert r.returncode == 1
        assert not one_line(r.stderr).endswith(
            "\\n"
        )  # arrow's trailing newline is not kept, even escaped


@pytest.mark.parametrize(
    ("scheduler", "workers"),
    [("sync", None), ("local", os.cpu_count()), ("local:3", 3), ("tcp://10.0.0.1:8786", None)],
)
def test_scheduler_settings_are_understood(scheduler, workers):
    assert local_workers(scheduler) == workers


@pytest.mark.parametrize("scheduler", ["localhost:8786", "local:abc", "local:0", "tcp://", "dask"])
def test_a_bad_scheduler_is_one_line_before_any_job_runs(scheduler, archive, tmp_path):
    """``local:abc`` used to fail deep in dask with a raw ValueError."""
    r = run_cli(
        "process", "naip", "--bucket", tmp_path, "--all", "--scheduler", scheduler,
        "--sample", archive.points, "--stac-api", archive.items,
    )
    assert r.returncode != 0
    assert one_line(r.stderr) == (
        f"Error: unknown scheduler {scheduler!r}: use sync, local, local:N (N > 0) or "
        "tcp://HOST:PORT"
    )
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_prechip_all_with_no_cube_to_cut_is_one_line(naip_index, tmp_path):
    """Fewer chips than one cube: nothing to run, said in one line (was an IndexError)."""
    r = run_cli("prechip", naip_index, tmp_path / "t", "--all", "--cube-size", 100000)
    assert r.returncode == 1
    assert one_line(r.stderr) == (
        "Error: --all: nothing to run (no cube of 100000 chips (--cube-size) among the chips "
        "the filter keeps)"
    )
    assert not (tmp_path / "t").exists()
