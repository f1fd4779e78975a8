"""The object I/O layer (io.objects) and read_url over real loopback servers."""

import sys
from pathlib import Path

import boto3
import pytest

from stacchip_core.errors import ObjectError
from stacchip_core.io import objects
from stacchip_core.io.store import read_url

sys.path.insert(0, str(Path(__file__).parent))
from rangeserver import RangeServer

BODY = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def server(tmp_path):
    (tmp_path / "o.bin").write_bytes(BODY)
    (tmp_path / "item.json").write_text('{"id": "x"}')
    with RangeServer(tmp_path) as srv:
        yield srv, tmp_path


@pytest.mark.parametrize("form", ["path", "file"])
def test_local_paths_and_file_urls(server, form):
    _, root = server
    url = str(root / "o.bin") if form == "path" else f"file://{root / 'o.bin'}"
    assert objects.get_bytes(url) == BODY
    assert objects.get_ranges(url, [0, 1000], [10, 1300]) == [BODY[:10], BODY[1000:1300]]
    assert objects.head(url).size == len(BODY)


def test_http_get_ranges_head_and_item_json(server):
    srv, _ = server
    url = f"{srv.url}/o.bin"
    assert [bytes(b) for b in objects.get_ranges(url, [5, 9000], [10, 9100])] == [
        BODY[5:10],
        BODY[9000:9100],
    ]
    meta = objects.head(url)
    assert meta.size == 10240 and meta.etag.startswith('"2800-')
    assert read_url(f"{srv.url}/item.json") == b'{"id": "x"}'


def test_signed_http_url_keeps_its_query(server):
    srv, _ = server
    assert objects.get_bytes(f"{srv.url}/o.bin?sv=1&sig=abc") == BODY
    assert srv.log[-1][1] == "/o.bin?sv=1&sig=abc"


def test_transient_503s_are_retried(server):
    srv, _ = server
    srv.faults["/o.bin"] = [503, 503]
    assert objects.get_bytes(f"{srv.url}/o.bin") == BODY
    assert srv.requests == 3


@pytest.mark.parametrize("status,reason", [(404, "not found"), (403, "access denied")])
def test_errors_are_one_redacted_line(server, status, reason):
    srv, _ = server
    srv.faults["/o.bin"] = [status] * 10
    url = f"http://user:pw@127.0.0.1:{srv.port}/o.bin?X-Amz-Signature=SECRET"
    with pytest.raises(ObjectError) as err:
        objects.get_bytes(url)
    assert str(err.value) == (
        f"cannot read http://REDACTED@127.0.0.1:{srv.port}/o.bin?X-Amz-Signature=REDACTED: {reason}"
    )


def test_missing_local_file_message(tmp_path):
    with pytest.raises(ObjectError, match="no such file"):
        read_url(str(tmp_path / "nope.json"))


def test_s3_with_configured_endpoint(bucket):
    boto3.client("s3").put_object(Bucket=bucket, Key="k/o.bin", Body=BODY)
    url = f"s3://{bucket}/k/o.bin"
    assert objects.get_bytes(url) == BODY
    assert objects.get_ranges(url, [100], [200]) == [BODY[100:200]]
    assert objects.head(url).size == len(BODY)
    assert read_url(url) == BODY
    with pytest.raises(ObjectError, match=f"cannot read s3://{bucket}/k/missing: not found"):
        objects.get_bytes(f"s3://{bucket}/k/missing")


def test_unsupported_scheme():
    with pytest.raises(ObjectError, match="unsupported URL"):
        objects.locate("ftp://host/x")
