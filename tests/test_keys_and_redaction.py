"""Hostile and unlucky inputs (issue 12): keys that would leave the bucket, secrets in
messages and reports, forged log lines."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from stacchip_core.errors import UnsafeKeyError
from stacchip_core.io import keys

LATEST_NAIP = "m_4207009_ne_19_060_20220701"


def hostile_items(archive, folder: Path, item_id: str, href: str | None = None) -> Path:
    """The archive's NAIP items, the latest (which sample 1 selects) renamed to ``item_id``
    and its image optionally at ``href``."""
    items = folder / "items"
    shutil.copytree(archive.items / "naip", items)
    for path in items.rglob("*.json"):
        d = json.loads(path.read_text())
        if d.get("id") == LATEST_NAIP:
            d["id"] = item_id
            if href is not None:
                for asset in d["assets"].values():
                    asset["href"] = href
            path.write_text(json.dumps(d))
    return items


def files_outside(root: Path, *inside: Path) -> list[str]:
    return sorted(
        str(p) for p in root.rglob("*") if p.is_file() and not any(i in p.parents for i in inside)
    )


@pytest.mark.parametrize(
    "item_id", ["../../../x", "..", ".", "a/b", "ABS", "nul\x00id", "back\\slash", "line\nbreak"]
)
def test_item_ids_never_leave_the_bucket(archive, tmp_path, item_id):
    if item_id == "ABS":
        item_id = str(tmp_path / "abs" / "x")  # an absolute path (inside tmp_path, to see it)
    items = hostile_items(archive, tmp_path, item_id)
    bucket = tmp_path / "a" / "b" / "c" / "bucket"
    r = run_cli("-q", "process", "naip", "--job", 1, "--sample", archive.points, "--bucket", bucket,
                "--stac-api", items)
    assert r.returncode == 0, r.stderr
    assert files_outside(tmp_path, bucket, items) == []
    safe = keys.segment(item_id)
    assert "/" not in safe and safe not in (".", "..")
    written = sorted(p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file())
    assert f"naip/{safe}/stac_item.json" in written
    index = pq.read_table(bucket / "index" / "naip" / safe / f"index_{safe}.parquet")
    assert len(index) == 4 and set(index["item_id"].to_pylist()) == {item_id}
    hrefs = set(index["item_href"].to_pylist())
    assert hrefs == {str((bucket / "naip" / safe / "stac_item.json").resolve())}
    item = json.loads((bucket / "naip" / safe / "stac_item.json").read_text())
    for asset in item["assets"].values():
        assert Path(asset["href"]).resolve().parent == (bucket / "naip" / safe).resolve()


@pytest.mark.parametrize("text, encoded", [
    ("S2A_20HNJ_20240311_0_L2A", "S2A_20HNJ_20240311_0_L2A"),  # real ids: unchanged
    ("m_4207009_ne_19_060_20220701", "m_4207009_ne_19_060_20220701"),
    ("..", "%2E%2E"), (".", "%2E"), ("a/b", "a%2Fb"), ("../x", "..%2Fx"), ("a%2Fb", "a%252Fb"),
    ("n\x00l", "n%00l"), ("l\nb", "l%0Ab"), ("w\\x", "w%5Cx"), ("..a", "..a"),
])
def test_segments_are_encoded(text, encoded):
    assert keys.segment(text) == encoded


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "a/.", "", "a\\b", "a\x00b"])
def test_keys_that_leave_their_prefix_are_refused(key):
    with pytest.raises(UnsafeKeyError):
        keys.check(key)


@pytest.mark.parametrize("version", ["../..", "..", "a/b", "/tmp/x", "", "v\n1"])
def test_prechip_version_must_be_a_plain_name(tmp_path, version):
    r = run_cli(
        "prechip",
        tmp_path / "missing.parquet",
        tmp_path / "target",
        "--version",
        version,
        "--job",
        0,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("Error: --version ") and "is not a plain name" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "target").exists()


def test_s3_keys_stay_under_the_prefix(archive, tmp_path, bucket):
    import boto3

    items = hostile_items(archive, tmp_path, "../../escape")
    r = run_cli("-q", "process", "naip", "--job", 1, "--sample", archive.points,
                "--bucket", f"s3://{bucket}/run/one", "--stac-api", items)
    assert r.returncode == 0, r.stderr
    import os

    client = boto3.client("s3", endpoint_url=os.environ["STACCHIP_S3_ENDPOINT"])
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(n.startswith("run/one/") and ".." not in n.split("/") for n in names), names
    assert "run/one/index/naip/..%2F..%2Fescape/index_..%2F..%2Fescape.parquet" in names


# --- secrets and forged log lines ----------------------------------------------------------

SECRETS = ("hunter2", "SIGNATURE0123", "SASSIG456", "PCTOKEN789")
SECRET_HREF = ("https://alice:hunter2@127.0.0.1:9/naip/m.tif?X-Amz-Credential=AKIA&X-Amz-Signature=SIGNATURE0123"
               "&st=2024&se=2025&sp=rl&sv=2021&sr=b&sig=SASSIG456&token=PCTOKEN789")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.mark.parametrize("args", [["-q"], ["-v"], ["--log-json", "-v"]])
def test_signed_hrefs_never_reach_errors_or_logs(archive, tmp_path, args):
    items = hostile_items(archive, tmp_path, LATEST_NAIP, href=SECRET_HREF)
    r = run_cli(
        *args,
        "process",
        "naip",
        "--job",
        1,
        "--sample",
        archive.points,
        "--bucket",
        tmp_path / "b",
        "--stac-api",
        items,
    )
    assert r.returncode == 1
    assert_no_secret(r.stdout + r.stderr)
    assert "https://REDACTED@127.0.0.1:9/naip/m.tif?" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("Error: ")


def test_signed_hrefs_never_reach_run_reports(archive, tmp_path):
    items = hostile_items(archive, tmp_path, LATEST_NAIP, href=SECRET_HREF)
    r = run_cli(
        "-q",
        "process",
        "naip",
        "--jobs",
        "1:2",
        "--scheduler",
        "sync",
        "--sample",
        archive.points,
        "--bucket",
        tmp_path / "b",
        "--stac-api",
        items,
    )
    assert r.returncode == 1
    assert_no_secret(r.stdout + r.stderr)
    report = (tmp_path / "b" / "_runs" / "process-naip-1-2.json").read_text()
    assert_no_secret(report)
    task = json.loads(report)["tasks"][0]
    assert task["status"] == "failed" and "https://REDACTED@127.0.0.1:9/naip/m.tif" in task["error"]


@pytest.mark.parametrize("log_json", [False, True])
def test_item_ids_with_newlines_do_not_forge_log_lines(archive, tmp_path, log_json):
    forged = "evil\nERROR stacchip_core: forged\r\x1b[2K line"
    items = hostile_items(archive, tmp_path, forged)
    r = run_cli(
        *(["--log-json"] if log_json else []),
        "-v",
        "process",
        "naip",
        "--job",
        1,
        "--sample",
        archive.points,
        "--bucket",
        tmp_path / "b",
        "--stac-api",
        items,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    messages = [json.loads(line)["message"] for line in lines] if log_json else lines
    assert any("evil\\nERROR stacchip_core: forged\\r\\x1b[2K line" in m for m in messages), (
        messages
    )
    assert not any(ch in r.stderr for ch in "\r\x1b")
    for line in lines:
        if log_json:
            entry = json.loads(line)
            assert entry["level"] in ("INFO", "DEBUG", "WARNING") and "\n" not in entry["message"]
        else:
            assert line.startswith(("INFO ", "DEBUG ", "WARNING ")), line


def test_one_line_errors_escape_control_characters(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1\x00\x01\x1b[31mnot parquet\nERROR forged\x07PAR1")
    r = run_cli("chip", bad, "--row", 0, "-o", tmp_path / "x.npz")
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("Error: ")
    assert not any(ch in r.stderr.rstrip("\n") for ch in "\x00\x01\x1b\x07\n")
