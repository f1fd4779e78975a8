"""The I/O layer across processes (issue 18 items 3 and 5, issue 19 item 1).

- Workers forked, forkserver-started or spawned AFTER their parent loaded the index and read a
  chip through obstore read chips through layouts only: the loopback server sees exactly the
  tiles the chips touch (plus at most one header check per asset and process), never the
  item JSON or GDAL's requests, and the pixels equal the rasterio path's.
- Loading an index never starts obstore's runtime.
- Layouts are validated by content: identical across indexings, still valid after the object
  is stored anew with another ETag (moto's S3, request counts from its recorder).
- Signing runs off the I/O loop, within the I/O time budget, once per container.
"""

import asyncio
import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from conftest import _reset_pc_sdk
from rasters import write_small_tif

from stacchip_core.core.indexer import Indexer
from stacchip_core.core.layout import decode, record_layouts
from stacchip_core.core.tiles import GridSpec, read_batch
from stacchip_core.errors import AssetError
from stacchip_core.io import objects
from stacchip_core.training.chipread import ChipReader
from stacchip_core.training.dataset import ChipDataset

S2 = "sentinel-2-l2a"
# the synthetic S2 scene: 768 px at 10 m in 512 px tiles, 256 px chips: each chip's red band
# lies in exactly one tile, so one request per chip


# --- workers (module level: spawn and forkserver import them) ------------------------------

def _read_chips(ds: ChipDataset, indices: list[int]):
    """Read chips one at a time; what this process's I/O layer spent doing it."""
    before = objects.counters()
    pixels = [ds[i]["pixels"] for i in indices]
    return os.getpid(), pixels, objects.counters() - before, objects.usable()


def _read_everything(urls: list[str]):
    """Whole objects, ranges and sizes through this process's transport."""
    out = [(objects.get_bytes(u), [bytes(b) for b in objects.get_ranges(u, [5, 900], [10, 1000])],
            objects.head(u).size) for u in urls]
    gs = objects.chips_usable("gs://bucket/a.tif")
    try:
        objects.get_bytes("gs://bucket/a.tif")
    except objects.ForkedError as exc:
        gs_error = str(exc)
    return (
        out,
        objects.counters(),
        objects.usable(),
        objects.chips_usable("s3://bucket/a.tif"),
        (gs, gs_error),
    )


def _read_layout_chips(blob: bytes, chip_size: int, xys: list[tuple[int, int]]):
    lays = decode(blob)
    grid = GridSpec.from_layouts(lays, chip_size)
    keys = list(lays)
    before = objects.counters()
    res = [
        read_batch([lays], [keys], [grid], [xy])[0] for xy in xys
    ]  # one chip at a time: one tile each
    return [
        {k: (v if isinstance(v, np.ndarray) else repr(v)) for k, v in r.items()} for r in res
    ], objects.counters() - before


@pytest.fixture
def served_index(http_s2, tmp_path):
    """The synthetic S2 scene over the loopback server, its index served beside it."""
    server, url, root = http_s2
    pq.write_table(Indexer(url, platform=S2, stats=False).create_index(), root / "idx.parquet")
    server.reset()
    return server, f"{server.url}/idx.parquet", pq.read_table(root / "idx.parquet").to_pylist()


def _assert_layout_reads_only(server, n_chips: int, checks: int) -> None:
    """Every request the server saw: a ranged GET of red.tif, one per chip plus the checks."""
    assert server.requests == n_chips + checks, server.log
    assert all(
        m == "GET" and p == "/red.tif" and rng and rng.startswith("bytes=")
        for m, p, rng in server.log
    )


@pytest.mark.parametrize("method", ["fork", pytest.param("forkserver", marks=pytest.mark.slow),
                                    pytest.param("spawn", marks=pytest.mark.slow)])
def test_workers_started_after_the_parent_read_use_layouts_only(served_index, method):
    server, index_url, rows = served_index
    ds = ChipDataset(index_url, bands=["red"])  # the index over http, through the I/O layer
    ds[0]  # a chip read in the parent, through obstore: its runtime is running now
    assert objects.usable()
    server.reset()
    n = len(rows)
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.starmap(_read_chips, [(ds, [i]) for i in range(n)])
    per_pid: dict[int, int] = {}
    for pid, _, spent, usable in results:
        per_pid[pid] = per_pid.get(pid, 0) + spent.checks
        assert spent.requests == 1 and spent.stale == 0
        # forked: obstore's runtime is the parent's, so the fork-safe transport reads
        assert usable == (method != "fork") and spent.portable == (
            spent.requests + spent.checks
        ) * (method == "fork")
    # deflate tiles verify themselves: no header check in any process, one request a tile
    assert all(c == 0 for c in per_pid.values())
    _assert_layout_reads_only(server, n, sum(per_pid.values()))
    slow = ChipReader(bands=["red"], use_layouts=False)
    for row, (_, pixels, _, _) in zip(rows, results):
        np.testing.assert_array_equal(pixels[0], slow.read(row))


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True])
def test_torch_dataloader_workers_use_layouts_only(served_index, torch, persistent):
    """torch's DataLoader with 2 workers and its default start method (fork on Linux), after
    the parent loaded the index and read a sample; persistent workers over two epochs."""
    from torch.utils.data import DataLoader

    server, index_url, rows = served_index
    ds = ChipDataset(index_url, bands=["red"])
    first = ds[0]["pixels"]
    server.reset()
    loader = DataLoader(ds, batch_size=1, num_workers=2, persistent_workers=persistent)
    epochs = 2 if persistent else 1
    for _ in range(epochs):
        got = [batch["pixels"][0].numpy() for batch in loader]
    _assert_layout_reads_only(server, epochs * len(rows), 0)  # forked: the parent's check holds
    np.testing.assert_array_equal(got[0], first)
    slow = ChipReader(bands=["red"], use_layouts=False)
    for row, pixels in zip(rows, got):
        np.testing.assert_array_equal(pixels, slow.read(row))


@pytest.mark.slow
def test_loading_an_index_never_starts_obstore(served_index, tmp_path):
    """In a fresh interpreter: an index over http and a local one load without obstore, so a
    process forked after loading one (a DataLoader worker) may still use obstore."""
    _, index_url, rows = served_index
    code = (
        "import os, sys; from stacchip_core.io import objects; from stacchip_core.training.prechip "
        "import load_index;"
        "n = [len(load_index(u)) for u in sys.argv[1:]];"
        "print(n, objects.counters().portable, flush=True);"
        "pid = os.fork();\n"
        "if pid == 0: print('child may use obstore:', objects.usable(), flush=True); os._exit(0)\n"
        "os.waitpid(pid, 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, index_url, str(_local_copy(index_url, tmp_path))],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    n = len(rows)
    assert out.stdout.splitlines() == [f"[{n}, {n}] 1", "child may use obstore: True"]


def _local_copy(url: str, tmp_path: Path) -> Path:
    path = tmp_path / "local.parquet"
    path.write_bytes(requests.get(url, timeout=10).content)
    return path


def test_a_forked_child_reads_every_scheme_through_the_fork_safe_transport(bucket, tmp_path):
    from rangeserver import RangeServer

    body = bytes(range(256)) * 8
    (tmp_path / "o.bin").write_bytes(body)
    boto3.client("s3").put_object(Bucket=bucket, Key="k/o.bin", Body=body)
    with RangeServer(tmp_path) as server:
        urls = [str(tmp_path / "o.bin"), f"file://{tmp_path / 'o.bin'}", f"{server.url}/o.bin",
                f"s3://{bucket}/k/o.bin"]
        parent = [objects.get_bytes(u) for u in urls]  # obstore, for the remote ones
        with multiprocessing.get_context("fork").Pool(1) as pool:
            out, counts, usable, s3_ok, gs_ok = pool.apply(_read_everything, (urls,))
    assert (
        not usable
        and s3_ok
        and gs_ok == (False, "cannot read gs://bucket/a.tif: gs:// has no fork-safe transport")
    )
    for (data, ranges, size), whole in zip(out, parent):
        assert (
            data == whole == body and ranges == [body[5:10], body[900:1000]] and size == len(body)
        )
    # per URL: one whole GET, two ranges, one HEAD; all through the fork-safe transport
    assert counts.requests == counts.portable == 4 * len(urls)
    assert counts.bytes == len(urls) * (len(body) + 5 + 100)


@pytest.mark.parametrize("n", [1, 100, 2048, 5000])
def test_a_suffix_range_gives_the_last_bytes_and_the_size(bucket, tmp_path, n):
    from rangeserver import RangeServer

    from stacchip_core.io import portable

    body = bytes(range(256)) * 8  # 2,048 bytes: the last n, or all of it when n is larger
    (tmp_path / "o.bin").write_bytes(body)
    boto3.client("s3").put_object(Bucket=bucket, Key="k/o.bin", Body=body)
    with RangeServer(tmp_path) as server:
        for url in (str(tmp_path / "o.bin"), f"{server.url}/o.bin", f"s3://{bucket}/k/o.bin"):
            got = objects.run(portable.read(url, -n))
            assert (bytes(got.body), got.size) == (body[-n:], len(body))
        assert server.log == [("GET", "/o.bin", f"bytes=-{n}")]


def test_counters_subtract_and_count_checks_apart(served_index):
    server, _, rows = served_index
    lays = decode(rows[0]["layouts"])
    red = lays["red"]
    objects.forget_verified()  # as in a process that did not index this object
    ranges = [(int(red.offsets[0]), int(red.offsets[0] + red.counts[0]))]
    before = objects.counters()
    objects.run(
        objects.read_ranges(red.href, ranges, red.expect())
    )  # deflate: checked by inflating
    assert (objects.counters() - before).checks == 0 and server.requests == 1
    server.reset()
    eager = dataclasses.replace(red.expect(), deferred=False)  # as for a codec without a checksum
    before = objects.counters()
    got = objects.run(objects.read_ranges(red.href, ranges, eager))
    spent = objects.counters() - before
    assert spent.requests == 1 and spent.bytes == int(red.counts[0]) and spent.checks == 1
    assert spent.check_bytes == red.head and spent.stale == 0 and spent.signed == 1
    assert server.requests == 2 and server.bytes == int(red.counts[0]) + red.head
    assert (
        bytes(got[ranges[0]])
        == (Path(server.root) / "red.tif").read_bytes()[ranges[0][0] : ranges[0][1]]
    )
    again = objects.counters()
    objects.run(objects.read_ranges(red.href, ranges, eager))
    assert (objects.counters() - again).checks == 0  # at most one check per asset and process
    objects.forget_verified()  # as a new process would: the next read checks the header again
    server.reset()
    again = objects.counters()
    objects.run(objects.read_ranges(red.href, ranges, eager))
    spent = objects.counters() - again
    assert spent.checks == 1 and spent.check_bytes == red.head and server.requests == 2


# --- layouts validated by content ----------------------------------------------------------

def test_two_indexings_give_byte_identical_layouts(synthetic_scenes, tmp_path):
    """Local files: an ETag would come from the inode and mtime. Touched and copied anew
    between the two indexings, the layouts are the same bytes."""
    import shutil

    src = Path(synthetic_scenes["s2"]).parent
    hrefs = {p.stem: str(tmp_path / p.name) for p in sorted(src.glob("*.tif"))}
    for p in src.glob("*.tif"):
        shutil.copy(p, tmp_path / p.name)
    first = record_layouts(hrefs)
    for p in src.glob("*.tif"):  # another inode, another mtime, the same bytes
        (tmp_path / p.name).unlink()
        shutil.copy(p, tmp_path / p.name)
        os.utime(tmp_path / p.name, (1e9, 1e9))
    second = record_layouts(hrefs)
    assert first == second and first is not None
    assert all(lay.etag is None and len(lay.digest) == 32 for lay in decode(first).values())


def _moto_recording(endpoint: str, action: str) -> str:
    response = requests.request("GET" if action == "download-recording" else "POST",
                                f"{endpoint}/moto-api/recorder/{action}", timeout=10)
    response.raise_for_status()
    return response.text


def test_an_object_stored_anew_keeps_the_fast_path(
    synthetic_scenes, bucket, s3_server, tmp_path, monkeypatch
):
    """Layouts recorded from objects uploaded in parts (ETag "...-1"), then the same bytes
    uploaded again in one PUT (an MD5 ETag), as a sync to another store does: a fresh process
    reads every chip through layouts. The server's own record: the tiles' ranged GETs only (deflate
    tiles verify themselves, so no header check); no GDAL, no stale layout."""
    client = boto3.client("s3")
    src = Path(synthetic_scenes["s2"]).parent
    names = ["red.tif", "nir.tif"]
    for name in names:  # "built": a multipart upload of one part
        up = client.create_multipart_upload(Bucket=bucket, Key=f"s/{name}")
        part = client.upload_part(
            Bucket=bucket,
            Key=f"s/{name}",
            UploadId=up["UploadId"],
            PartNumber=1,
            Body=(src / name).read_bytes(),
        )
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=f"s/{name}",
            UploadId=up["UploadId"],
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        )
    built = {n: client.head_object(Bucket=bucket, Key=f"s/{n}")["ETag"] for n in names}
    blob = record_layouts({n[:-4]: f"s3://{bucket}/s/{n}" for n in names})
    for name in names:  # "synced": the same bytes in one PUT
        client.put_object(Bucket=bucket, Key=f"s/{name}", Body=(src / name).read_bytes())
    synced = {n: client.head_object(Bucket=bucket, Key=f"s/{n}")["ETag"] for n in names}
    assert all(built[n] != synced[n] and built[n].endswith('-1"') for n in names)
    xys = [(0, 0), (2, 2)]
    monkeypatch.chdir(tmp_path)  # moto's recorder writes its file in the working directory
    _moto_recording(s3_server, "reset-recording")
    _moto_recording(s3_server, "start-recording")
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            chips, spent = pool.apply(_read_layout_chips, (blob, 256, xys))
    finally:
        _moto_recording(s3_server, "stop-recording")
    seen = [
        json.loads(line) for line in _moto_recording(s3_server, "download-recording").splitlines()
    ]
    assert spent.checks == 0 and spent.stale == 0 and spent.requests == 4
    assert len(seen) == 4 and all(r["method"] == "GET" and r["headers"].get("Range") for r in seen)
    assert not [r for r in seen if r["headers"]["Range"].startswith("bytes=0-")]
    import rasterio

    for name in names:
        with rasterio.open(src / name) as ds:
            data = ds.read()
        for (x, y), chip in zip(xys, chips):
            np.testing.assert_array_equal(
                chip[name[:-4]], data[:, y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256]
            )


def test_a_changed_header_is_caught_by_the_first_check(tmp_path, caplog):
    """A process that did not record the layout checks the header: another header of the same
    size makes the layout stale (one warning from the chip reader), and the pixels come from
    the new file."""
    import logging

    from rangeserver import RangeServer

    from stacchip_core.core.chipper import _WARNED, Chipper

    rng = np.random.default_rng(3)
    first, second = (rng.integers(0, 60000, (1, 128, 128)).astype("uint16") for _ in range(2))
    path = tmp_path / "a.tif"

    def write(data, nodata):
        write_small_tif(path, data, nodata)

    write(first, 1)
    with RangeServer(tmp_path) as server:
        url = f"{server.url}/a.tif"
        blob = record_layouts({"a": url})
        size = path.stat().st_size
        write(second, 2)
        assert path.stat().st_size == size
        objects.forget_verified()  # as in another process
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": "h",
            "geometry": None,
            "links": [],
            "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:epsg": 32633},
            "assets": {
                "a": {
                    "href": url,
                    "type": "image/tiff",
                    "proj:shape": [128, 128],
                    "proj:transform": [10, 0, 500000, 0, -10, 4000000],
                }
            },
        }
        _WARNED.clear()
        before = objects.counters()
        with caplog.at_level(logging.WARNING), Chipper(item, chip_size=64, layouts=blob) as chipper:
            np.testing.assert_array_equal(chipper.chip(1, 0)["a"], second[:, :64, 64:])
            np.testing.assert_array_equal(chipper.chip(0, 1)["a"], second[:, 64:, :64])
        spent = objects.counters() - before
    stale = [
        r.getMessage() for r in caplog.records if "changed since it was indexed" in r.getMessage()
    ]
    assert len(stale) == 1 and "header changed" in stale[0]
    assert spent.checks == 1 and spent.stale == 1


# --- signing: off the loop, within the budget, once per container ----------------------------

class _TokenEndpoint:
    """A loopback SAS token endpoint that answers after ``delay`` seconds, or never (``hang``),
    and counts what it is asked."""

    def __init__(self, delay: float = 0.0, hang: bool = False) -> None:
        self.asked: list[str] = []
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                endpoint.asked.append(self.path)
                if hang:
                    endpoint.release.wait(60)
                    return
                time.sleep(delay)
                body = json.dumps({"msft:expiry": "2999-01-01T00:00:00Z",
                                   "token": f"se=2999&sig={self.path.rsplit('/', 1)[1]}"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/api/sas/v1/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def token_endpoint(request, monkeypatch):
    pytest.importorskip("planetary_computer")
    endpoint = _TokenEndpoint(**request.param)
    monkeypatch.setenv("PC_SDK_SAS_URL", endpoint.url)
    monkeypatch.setenv("STACCHIP_IO_TIMEOUT", "2")
    monkeypatch.setenv("STACCHIP_IO_RETRIES", "1")
    _reset_pc_sdk()
    yield endpoint
    endpoint.stop()
    monkeypatch.undo()
    _reset_pc_sdk()


def _pc(container: str, name: str) -> str:
    return f"https://naipeuwest.blob.core.windows.net/{container}/v002/{name}.tif"


@pytest.mark.parametrize("token_endpoint", [{"hang": True}], indirect=True)
def test_a_hanging_token_endpoint_answers_within_the_budget(token_endpoint, served_index, caplog):
    import logging

    _, _, rows = served_index
    red = decode(rows[0]["layouts"])["red"]
    tile = [(int(red.offsets[0]), int(red.offsets[0] + red.counts[0]))]

    async def both():
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def signed():
            try:
                await objects.read_ranges(_pc("hang1", "a"), [(0, 10)], objects.Expect(100))
            except AssetError as exc:
                return str(exc), loop.time() - t0
            return None, loop.time() - t0

        async def plain():
            data = await objects.read_ranges(red.href, tile, red.expect())
            return len(data[tile[0]]), loop.time() - t0

        return await asyncio.gather(signed(), plain())

    (message, t_signed), (n, t_plain) = objects.run(both())
    assert (
        message
        == "cannot get a Planetary Computer token for naipeuwest/hang1: "
        "no answer within 2 s (STACCHIP_IO_TIMEOUT)"
    )
    assert (
        2 <= t_signed < 3.5 and n == int(red.counts[0]) and t_plain < 1.0
    )  # the other read went on
    t0 = time.monotonic()  # the same container again: the failure is remembered
    with pytest.raises(AssetError, match="no answer within 2 s"):
        objects.run(objects.read_ranges(_pc("hang1", "b"), [(0, 10)], objects.Expect(100)))
    assert time.monotonic() - t0 < 0.5
    # indexing in another container: an index without layouts and one warning, within the budget
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert (
            record_layouts({"a": _pc("hang2", "a"), "b": _pc("hang2", "b"), "c": _pc("hang2", "c")})
            is None
        )
    assert time.monotonic() - t0 < 3.5
    warned = [r.getMessage() for r in caplog.records if "no layout" in r.getMessage()]
    assert len(warned) == 1 and "hang2: no answer within 2 s" in warned[0]
    assert sorted(token_endpoint.asked) == ["/api/sas/v1/token/naipeuwest/hang1",
                                            "/api/sas/v1/token/naipeuwest/hang2"]


@pytest.mark.parametrize("token_endpoint", [{"delay": 0.3}], indirect=True)
def test_a_slow_token_endpoint_is_asked_once_per_container(token_endpoint):
    hrefs = [_pc(container, f"a{i}") for container in ("slow1", "slow2") for i in range(12)]

    async def sign_all():
        return await asyncio.gather(*(objects.sign(h) for h in hrefs))

    signed = objects.run(sign_all())
    assert sorted(token_endpoint.asked) == ["/api/sas/v1/token/naipeuwest/slow1",
                                            "/api/sas/v1/token/naipeuwest/slow2"]
    assert signed == [f"{h}?se=2999&sig={h.split('/')[3]}" for h in hrefs]
    # threads signing at once (rasterio's fallback signs from its threads): still once
    from concurrent.futures import ThreadPoolExecutor

    from stacchip_core.plugins import sign_href

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(sign_href, [_pc("slow3", f"b{i}") for i in range(16)]))
    assert sum(p.endswith("/slow3") for p in token_endpoint.asked) == 1


@pytest.mark.parametrize("mode", ["signed", "requester-pays", "anonymous"])
def test_presigned_s3_reads(bucket, monkeypatch, mode):
    """The fork-safe transport's S3 reads: presigned by botocore (nothing asked of the
    server), requester-pays sending the header it signed, anonymous reads of a public object."""
    from stacchip_core.io import portable

    body = bytes(range(200))
    boto3.client("s3").put_object(Bucket=bucket, Key="p/o.bin", Body=body, ACL="public-read")
    if mode == "requester-pays":
        monkeypatch.setenv("STACCHIP_REQUESTER_PAYS", "1")
    if mode == "anonymous":
        monkeypatch.setenv("STACCHIP_ANONYMOUS", "1")
    url = f"s3://{bucket}/p/o.bin"
    signed, headers = portable.presign(url)
    assert ("X-Amz-Signature=" in signed) == (mode != "anonymous")
    assert headers == ({"x-amz-request-payer": "requester"} if mode == "requester-pays" else {})
    got = objects.run(portable.read(url, 10, 20))
    assert got.body == body[10:20] and got.size == 200 and got.etag
    with pytest.raises(portable.HttpStatus) as err:
        objects.run(portable.read(url, 0, 10, if_match='"not-the-etag"'))
    assert err.value.status == 412


def _layouts_and_lzw_chip(href: str, blob: bytes):
    lays = decode(blob)
    res = read_batch([lays], [["a"]], [GridSpec.from_layouts(lays, 64)], [(0, 0)])[0]["a"]
    return record_layouts({"a": href}), objects.async_tiff_usable(), type(res).__name__, str(res)


def test_a_child_forked_after_async_tiff_ran_does_not_hang(tmp_path):
    """async-tiff's runtime hangs in such a child, like obstore's: the child records no layout
    and leaves an LZW asset (which async-tiff would decode) to rasterio, within seconds."""
    from rangeserver import RangeServer

    write_small_tif(tmp_path / "a.tif", np.arange(128 * 128, dtype="uint16").reshape(1, 128, 128),
                    compress="lzw")
    with RangeServer(tmp_path) as server:
        href = f"{server.url}/a.tif"
        blob = record_layouts({"a": href})  # async-tiff parses the header here
        assert blob is not None and objects.async_tiff_usable()
        with multiprocessing.get_context("fork").Pool(1) as pool:
            layout, usable, kind, reason = pool.apply_async(
                _layouts_and_lzw_chip, (href, blob)
            ).get(timeout=60)
    assert layout is None and not usable
    assert (
        kind == "NoTransport"
        and "async-tiff cannot run in a process forked after its parent used it" in reason
    )
