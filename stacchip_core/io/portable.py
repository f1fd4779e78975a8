"""The fork-safe transport: pure-Python async reads of local files, ``http(s)://`` and
``s3://`` (presigned GETs) on stacchip's I/O loop.

obstore's Rust runtime does not survive ``fork()``: a process forked after its parent read
through obstore hangs on its next obstore call. This transport holds nothing that a fork
breaks: its aiohttp sessions belong to the process and the loop that made them, and a forked
child makes its own. io.objects reads through it: local files always, remote objects wherever
obstore cannot run, and indexes, so that loading one never starts obstore's runtime in the
parent of a DataLoader.

S3 requests are presigned locally by botocore (no request of its own: moto, custom
endpoints, anonymous and requester-pays buckets alike), then sent as plain HTTP GETs with
``Range`` and ``If-Match`` headers, which presigned URLs leave unsigned.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from stacchip_core.io.settings import object_timeouts, requester_pays, s3_anonymous, s3_endpoint

log = logging.getLogger(__name__)

SCHEMES = {"", "file", "http", "https", "s3"}  # what this transport reads ("" a local path)
_RETRY_STATUS = {429, 500, 502, 503, 504}
_PRESIGN_SECONDS = 3600
_PRESIGN_REUSE = 3000  # a presigned URL is reused for 50 minutes, then signed anew


class HttpStatus(Exception):
    """A response whose status is not a success (404, 412, 403...).

    Args:
        status: The HTTP status (412 also for a local file whose ETag does not match).
    """

    def __init__(self, status: int) -> None:
        super().__init__(f"status: {status}")
        self.status = status


@dataclass(frozen=True)
class Response:
    """One read's body and what the server said of the whole object."""

    body: bytes
    size: int
    etag: str | None


def serves(url: str) -> bool:
    """Whether this transport reads ``url`` (local paths, file://, http(s)://, s3://).

    Args:
        url: A URL or a local path.

    Returns:
        True for a local path (a one-letter scheme is a Windows drive), file://,
        http(s):// and s3://.
    """
    scheme = urlsplit(str(url)).scheme.lower()
    return scheme in SCHEMES or len(scheme) == 1


def preload() -> None:
    """Import what this transport needs for HTTP (aiohttp, yarl), without starting anything.

    A process that will fork DataLoader workers calls it once: modules imported before a fork
    are the children's too, and each forked worker otherwise imports aiohttp on its first
    read (0.2 s of CPU per worker, measured; every epoch when workers do not persist)."""
    import aiohttp  # noqa: F401
    import yarl  # noqa: F401


# --- local files ------------------------------------------------------------------------

def local_etag(st: os.stat_result) -> str:
    """The ETag obstore's local store gives a file (inode, mtime in µs, size), so layouts
    recorded through either transport agree.

    Args:
        st: The file's stat.

    Returns:
        The quoted ETag.
    """
    return f'"{st.st_ino:x}-{st.st_mtime_ns // 1000:x}-{st.st_size:x}"'


def _local_path(url: str) -> str:
    parts = urlsplit(url)
    return unquote(parts.path) if parts.scheme.lower() == "file" else url


def read_local(url: str, start: int | None, end: int | None, if_match: str | None = None,
               body: bool = True) -> Response:
    """``[start, end)`` of a local file (all of it when ``start`` is None).

    Args:
        url: A local path or file:// URL.
        start: First byte, or None for the whole file; negative: the last ``-start`` bytes
            (all of a smaller file).
        end: Byte after the last (clipped to the file's size; None: to its end).
        if_match: An ETag the file must have (``local_etag``).
        body: False for the size and ETag only.

    Returns:
        The bytes, the file's size and its ETag.

    Raises:
        HttpStatus: 412 when the file's ETag is not ``if_match``.
        OSError: The file cannot be opened (FileNotFoundError when it is missing).
    """
    with open(_local_path(url), "rb") as f:
        st = os.fstat(f.fileno())
        etag = local_etag(st)
        if if_match and if_match != etag:
            raise HttpStatus(412)
        if not body:
            return Response(b"", st.st_size, etag)
        if start is None:
            data = f.read()
        elif start < 0:
            size = st.st_size
            data = os.pread(f.fileno(), min(-start, size), max(0, size + start))
        else:
            data = os.pread(
                f.fileno(), max(0, min(int(end or st.st_size), st.st_size) - start), start
            )
    return Response(data, st.st_size, etag)


# --- S3: presigned by botocore, locally ---------------------------------------------------

_CLIENTS: dict[tuple, object] = {}
_PRESIGNED: dict[tuple, tuple[float, str]] = {}
_LOCK = threading.Lock()


def _s3_client(endpoint: str | None, anonymous: bool):
    key = (os.getpid(), endpoint, anonymous)
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            config = Config(signature_version=UNSIGNED if anonymous else "s3v4",
                            s3={"addressing_style": "path" if endpoint else "auto"})
            client = _CLIENTS[key] = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, config=config
            )
    return client


def presign(url: str, method: str = "GET") -> tuple[str, dict[str, str]]:
    """An HTTP(S) URL for ``s3://bucket/key`` that needs no further signing (plain when the
    bucket is read anonymously), reused while it has more than 10 minutes left, and the
    headers it signed, which requests must send (``x-amz-request-payer``).

    Args:
        url: An ``s3://bucket/key`` URL.
        method: ``"GET"``, or ``"HEAD"`` for a URL that asks for the object's metadata.

    Returns:
        (URL, headers to send with it).
    """
    parts = urlsplit(url)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    endpoint, anonymous, payer = s3_endpoint(), s3_anonymous(), requester_pays()
    cache_key = (os.getpid(), method, bucket, key, endpoint, anonymous, payer)
    now = time.monotonic()
    headers = {"x-amz-request-payer": "requester"} if payer else {}
    hit = _PRESIGNED.get(cache_key)
    if hit is not None and hit[0] > now:
        return hit[1], headers
    params = {"Bucket": bucket, "Key": key}
    if payer:
        params["RequestPayer"] = "requester"
    op = "get_object" if method == "GET" else "head_object"
    signed = _s3_client(endpoint, anonymous).generate_presigned_url(
        op, Params=params, ExpiresIn=_PRESIGN_SECONDS
    )
    if len(_PRESIGNED) > 100_000:  # bounded over a long epoch
        _PRESIGNED.clear()
    _PRESIGNED[cache_key] = (now + _PRESIGN_REUSE, signed)
    return signed, headers


# --- HTTP(S): aiohttp, one session per process and loop -----------------------------------

_SESSIONS: dict[tuple[int, int], tuple[object, object]] = {}  # (pid, id(loop)) -> (loop, session)


def _session():
    import aiohttp

    loop = asyncio.get_running_loop()
    key = (os.getpid(), id(loop))
    held = _SESSIONS.get(key)
    if held is not None and held[0] is loop and not held[1].closed:  # type: ignore[attr-defined]
        return held[1]
    if held is not None:  # a loop that ended, whose id a new one reuses
        _drop(held[1])
    # limit_per_host: as many connections as a batch has concurrent tile reads of one host
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    _SESSIONS[key] = (loop, session)
    return session


def _drop(session) -> None:
    """Forget a session without any I/O: its sockets close with their file descriptors, no
    bytes sent. A forked child must not close its parent's connections the polite way (a TLS
    close_notify on a shared socket would break the parent's stream), and at exit the OS
    closes them anyway; aiohttp would otherwise warn 'Unclosed client session' at exit."""
    try:
        connector = session._connector  # private: aiohttp has no public way to drop a session
        if connector is not None:
            connector._conns.clear()
        session._connector = None
    except AttributeError:  # another aiohttp: its warning at exit is harmless
        pass


def _drop_all() -> None:
    for _, session in _SESSIONS.values():
        _drop(session)
    _SESSIONS.clear()


def _after_fork() -> None:
    _drop_all()  # the parent's: the child makes its own
    _CLIENTS.clear()
    _PRESIGNED.clear()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_drop_all)


def _size(headers, status: int, body_len: int) -> int:
    rng = headers.get("Content-Range")
    if rng and "/" in rng and not rng.endswith("/*"):
        return int(rng.rsplit("/", 1)[1])
    if status == 200:
        return int(headers.get("Content-Length") or body_len)
    return -1


async def _http(url: str, start: int | None, end: int | None, if_match: str | None, body: bool,
                extra: dict[str, str]) -> Response:
    import aiohttp
    from yarl import URL

    headers = {"Accept-Encoding": "identity", **extra}
    if start is not None and start < 0:  # a suffix: the last -start bytes
        headers["Range"] = f"bytes={start}"
    elif start is not None:
        headers["Range"] = f"bytes={start}-{max(start, int(end or 0) - 1)}"
    if if_match:
        headers["If-Match"] = if_match
    # encoded=True: a signed query (SAS, presigned S3) must reach the server byte for byte
    timeout, _ = object_timeouts()  # per request: the setting may change while a session lives
    async with _session().request(
        "GET" if body else "HEAD",
        URL(url, encoded=True),  # type: ignore[attr-defined]
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10)),
    ) as resp:
        if resp.status not in (200, 206):
            raise HttpStatus(resp.status)
        data = await resp.read() if body else b""
        size = _size(resp.headers, resp.status, len(data))  # of the whole object
        if start is not None and resp.status == 200 and body:  # a server that ignores Range
            data = data[start:end]
        return Response(data, size, resp.headers.get("ETag"))
    raise aiohttp.ClientError("unreachable")  # pragma: no cover


async def read(
    url: str,
    start: int | None = None,
    end: int | None = None,
    if_match: str | None = None,
    body: bool = True,
) -> Response:
    """``[start, end)`` of the object at ``url`` (the whole object when ``start`` is None; its
    size and ETag only when ``body`` is False), retrying transient failures (5xx, 429,
    resets, timeouts) ``STACCHIP_IO_RETRIES`` times with backoff.

    Args:
        url: A local path, file://, http(s):// or s3:// URL.
        start: First byte, or None for the whole object; negative: the last ``-start``
            bytes (a suffix range; all of a smaller object), with ``end`` None.
        end: Byte after the last (None: to the object's end).
        if_match: An ETag the object must have (``If-Match``).
        body: False for the size and ETag only (a HEAD request).

    Returns:
        The bytes, the object's size (-1 when the server did not say) and its ETag.

    Raises:
        HttpStatus: A status that is not a success and not transient (404, 412, 403...), or
            a transient one when the retries ran out.
        aiohttp.ClientError: The connection failed on the last retry.
        TimeoutError: The last retry timed out.
        OSError: A local file cannot be read.
    """
    import aiohttp

    scheme = urlsplit(url).scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, read_local, url, start, end, if_match, body)
    _, retries = object_timeouts()
    for attempt in range(retries + 1):
        target, extra = presign(url, "GET" if body else "HEAD") if scheme == "s3" else (url, {})
        try:
            return await _http(target, start, end, if_match, body, extra)
        except HttpStatus as exc:
            if exc.status not in _RETRY_STATUS or attempt == retries:
                raise
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            if attempt == retries:
                raise
        await asyncio.sleep(min(0.05 * 2 ** attempt, 5.0))
    raise AssertionError("unreachable")  # pragma: no cover
