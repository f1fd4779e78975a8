"""One object I/O layer for every URL stacchip reads: local paths, ``file://``, ``s3://``,
``https://``, ``gs://``, ``az://``.

Two transports serve it. obstore (Rust, async, retries and timeouts built in; the cheaper
per request) wherever it can run; its runtime does not survive ``fork()``, so in a process
forked after its parent used obstore, the fork-safe transport (io.portable: aiohttp, S3
presigned by botocore, local files) reads local, http(s) and s3 URLs instead; gs:// and az://
fall back to rasterio there, with one warning. Indexes are read by the fork-safe transport
(or pyarrow, for local files) in every process, so loading one never starts obstore.

Hrefs are signed (``stacchip_sign_href``) by ``sign``, off the event loop. Every read is
counted (``counters()``). Errors are ObjectError and name the URL through ``redact``, never
its credentials or signature.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import astuple, dataclass, fields
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import obstore
from obstore.store import AzureStore, GCSStore, HTTPStore, LocalStore, S3Store

from stacchip_core.errors import ObjectError
from stacchip_core.io import portable
from stacchip_core.io.settings import object_timeouts, requester_pays, s3_anonymous, s3_endpoint
from stacchip_core.io.urls import redact

if TYPE_CHECKING:  # obstore's option types exist in its stubs only
    from obstore import GetOptions
    from obstore.store import AzureConfig, ClientConfig, GCSConfig, RetryConfig, S3Config

log = logging.getLogger(__name__)

_SCHEMES = {"s3", "http", "https", "gs", "az", "abfs", "abfss"}


@dataclass(frozen=True)
class Meta:
    """What a HEAD tells: the object's size and ETag (None where the store has none)."""

    size: int
    etag: str | None


def is_remote(url: str) -> bool:
    """Whether ``url`` names a remote object (s3://, http(s)://, gs://, az://...).

    Args:
        url: A URL or local path.

    Returns:
        True for a remote scheme; False for a path or file://.
    """
    return urlsplit(str(url)).scheme.lower() in _SCHEMES


def _retry() -> RetryConfig:
    timeout, retries = object_timeouts()
    # transient failures (5xx, throttling, resets) back off 50 ms, 100 ms, ... up to `retries` times
    return {
        "max_retries": retries,
        "retry_timeout": timedelta(seconds=max(timeout * 4, 10)),
        "backoff": {
            "init_backoff": timedelta(milliseconds=50),
            "max_backoff": timedelta(seconds=5),
            "base": 2,
        },
    }


def _client(allow_http: bool = False) -> ClientConfig:
    timeout, _ = object_timeouts()
    options: ClientConfig = {
        "timeout": timedelta(seconds=timeout),
        "connect_timeout": timedelta(seconds=min(timeout, 10)),
    }
    if allow_http:
        options["allow_http"] = True
    return options


# what a store reads from the environment when it is built, beyond stacchip's own settings:
# obstore's S3, GCS and Azure stores take their credentials, region, account... from variables
# with these prefixes, and its HTTP client the proxy variables
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_PROXIES = _PROXY_VARS + tuple(v.upper() for v in _PROXY_VARS)
_ENV_PREFIXES = {
    "s3": ("AWS_", *_PROXIES),
    "gs": ("GOOGLE_", "SERVICE_ACCOUNT", *_PROXIES),
    **{scheme: ("AZURE_", *_PROXIES) for scheme in ("az", "abfs", "abfss")},
}


def _environment(scheme: str) -> tuple:
    """The settings a store of ``scheme`` is built from, as part of its cache key: a store
    cached before a setting changed (a timeout, the Azure account, credentials, a proxy) is
    not reused after it. Credentials enter the key as a digest, not as themselves. Measured
    with 35 variables set: 12 us a call, locate of an s3:// URL 5 -> 17 us (timeit, loaded
    machine), against a millisecond or more for the remote request that follows."""
    prefixes = _ENV_PREFIXES.get(scheme, _PROXIES)
    environ = os.environ
    read = [(k, environ[k]) for k in sorted(k for k in environ if k.startswith(prefixes))]
    return object_timeouts(), hashlib.sha256(repr(read).encode()).hexdigest()


def _store(
    scheme: str, netloc: str, endpoint: str | None, anonymous: bool, payer: bool, base: str = ""
):
    """The store for a bucket/host with these settings and the environment as it is now."""
    return _cached_store(scheme, netloc, endpoint, anonymous, payer, base, _environment(scheme))


@lru_cache(maxsize=64)
def _cached_store(
    scheme: str, netloc: str, endpoint: str | None, anonymous: bool, payer: bool, base: str,
    environment: tuple,
):
    """One store per bucket/host and settings: stores hold connection pools, worth keeping.
    ``environment`` (see _environment) is only part of the key; the stores read it."""
    if scheme == "file":
        return LocalStore()
    if scheme == "s3":
        kwargs: S3Config = {}
        if endpoint:
            kwargs["endpoint"] = endpoint
            kwargs["virtual_hosted_style_request"] = False
        if anonymous:
            kwargs["skip_signature"] = True
        if payer:
            kwargs["request_payer"] = True
        return S3Store(netloc, config=kwargs, retry_config=_retry(),
                       client_options=_client(bool(endpoint and endpoint.startswith("http://"))))
    if scheme in ("http", "https"):
        return HTTPStore.from_url(base or f"{scheme}://{netloc}", retry_config=_retry(),
                                  client_options=_client(scheme == "http"))
    if scheme == "gs":
        gcs: GCSConfig = {"skip_signature": True} if anonymous else {}
        return GCSStore(netloc, config=gcs, retry_config=_retry(), client_options=_client())
    if scheme in ("az", "abfs", "abfss"):
        azure: AzureConfig = {"skip_signature": True} if anonymous else {}
        return AzureStore(netloc, config=azure, retry_config=_retry(), client_options=_client())
    raise ObjectError(f"unsupported URL scheme {scheme!r}")


def locate(url: str | Path):
    """``(store, path)`` for any URL or local path: THE place every object read passes.

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.

    Returns:
        The obstore store (one per bucket or host and settings) and the path in it. The
        settings are read from the environment at each call (stacchip's, and the variables
        obstore reads: ``AWS_*``, ``GOOGLE_*``, ``AZURE_*``, proxies): after one changes, the
        next call builds a new store.

    Raises:
        ObjectError: If the scheme is not supported or the store cannot be configured.
        ForkedError: If this process was forked after its parent used obstore.
    """
    url = str(url)
    _mark_used()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # a path, file://, or a Windows drive letter
        path = unquote(parts.path) if scheme == "file" else url
        # a local store reads no setting: its key skips the environment
        store = _cached_store("file", "", None, False, False, "", ())
        return store, os.path.abspath(path).lstrip("/")
    if scheme == "s3":
        return _store("s3", parts.netloc, s3_endpoint(), s3_anonymous(), requester_pays()), unquote(
            parts.path.lstrip("/"))
    if scheme in ("http", "https"):
        if parts.query:
            # a signed URL: its query must reach the server untouched, and object_store would
            # escape a '?' in a path, so the full URL is the store's base and the path empty
            return _store(scheme, parts.netloc, None, False, False, url), ""
        return _store(scheme, parts.netloc, None, False, False), unquote(parts.path.lstrip("/"))
    if scheme in ("gs", "az", "abfs", "abfss"):
        try:
            store = _store(scheme, parts.netloc, None, s3_anonymous(), False)
        except Exception as exc:  # noqa: BLE001 - obstore.exceptions.GenericError: settings missing from the environment
            hint = (" (az://CONTAINER/KEY takes the account from AZURE_STORAGE_ACCOUNT_NAME)"
                    if scheme != "gs" else "")
            reason = _strip_urls(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
            raise ObjectError(f"cannot open {redact(url)}: {reason}{hint}") from None
        return store, unquote(parts.path.lstrip("/"))
    raise ObjectError(
        f"unsupported URL {redact(url)!r} (use a path, file://, s3://, http(s)://, gs:// or az://)"
    )


def failure(exc: Exception) -> str:
    """What an object read met, in a few words: ``not found``, ``precondition failed`` (an
    ``If-Match`` that no longer holds), ``access denied``, ``timed out``, or the first line of
    the error with URLs redacted. obstore types only some of its failures, so the rest are
    told apart by the status in its message; the one place that does so.

    Args:
        exc: The error either transport raised.

    Returns:
        A few words, free of URLs.
    """
    import obstore.exceptions as oe

    if isinstance(exc, (oe.NotFoundError, FileNotFoundError)):
        return "not found"
    if isinstance(exc, oe.PreconditionError):
        return "precondition failed"
    if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError, PermissionError)):
        return "access denied"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, portable.HttpStatus):
        return {404: "not found", 412: "precondition failed", 403: "access denied",
                401: "access denied"}.get(exc.status, f"HTTP status {exc.status}")
    message = str(exc)
    if "timed out" in message.lower() or "timeout" in message.lower():
        return "timed out"
    if "status: 404" in message:
        return "not found"
    if "status: 412" in message or "Precondition" in message:
        return "precondition failed"
    if "status: 403" in message or "status: 401" in message:
        return "access denied"
    text = message.splitlines()[0] if message else type(exc).__name__
    # obstore's messages repeat the URL, with its query: keep the kind of failure only
    return _strip_urls(text.split(" in ")[0] if "Error performing" in text else text)


def _error(url: str, exc: Exception, what: str = "read") -> ObjectError:
    """One redacted ObjectError for a failed object read. Callers raise it ``from None``,
    unlike the rest of the library: obstore's messages carry the full request URL, signature
    and all, and a chained cause would print it in every traceback a user logs."""
    return ObjectError(f"cannot {what} {redact(url)}: {failure(exc)}")


def _strip_urls(text: str) -> str:
    from stacchip_core.io.urls import redact_text

    return redact_text(text)


# --- counters -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Counters:
    """What this process's object reads cost so far (whichever transport served them);
    ``after - before`` is what happened in between.

    Attributes:
        requests: GET/HEAD requests for data (tiles, headers, whole objects); checks excluded.
        bytes: body bytes those requests returned.
        checks: requests that validated a layout (a header read and its digest).
        check_bytes: body bytes of those.
        stale: validated reads that found their object changed or gone (StaleObject).
        portable: requests (checks included) served by the fork-safe transport, not obstore.
        signed: hrefs signed before a read (by the hook in a thread where it may block).
    """

    requests: int = 0
    bytes: int = 0
    checks: int = 0
    check_bytes: int = 0
    stale: int = 0
    portable: int = 0
    signed: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(a - b for a, b in zip(astuple(self), astuple(other))))

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(astuple(self), astuple(other))))


_COUNTS: dict[str, int] = dict.fromkeys((f.name for f in fields(Counters)), 0)
_COUNTS_LOCK = threading.Lock()
# the tallies open in this context: a read's own counts, apart from what other threads read
# meanwhile (a read-ahead thread, a shared reader); asyncio tasks started through run() and
# run_coroutine_threadsafe carry their caller's context, so the loop's reads count here too
_TALLIES: ContextVar[tuple[dict[str, int], ...]] = ContextVar("stacchip_tallies", default=())


def _zero_counts() -> None:
    for name in _COUNTS:
        _COUNTS[name] = 0


def _count(**deltas: int) -> None:
    tallies = _TALLIES.get()
    with _COUNTS_LOCK:
        for name, value in deltas.items():
            _COUNTS[name] += value
            for counts in tallies:
                counts[name] += value


class Tally:
    """The object reads made inside one ``tally()`` block (``counters``), whichever thread
    or I/O task made them for it."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(_COUNTS, 0)

    @property
    def counters(self) -> Counters:
        """What the block's reads cost so far."""
        with _COUNTS_LOCK:
            return Counters(**self._counts)


@contextmanager
def tally() -> Iterator[Tally]:
    """Count the reads this block makes, and only them: reads of other threads meanwhile
    are in ``counters()`` but not here. Blocks nest.

    Yields:
        The block's ``Tally``.
    """
    mine = Tally()
    token = _TALLIES.set((*_TALLIES.get(), mine._counts))
    try:
        yield mine
    finally:
        _TALLIES.reset(token)


def counters() -> Counters:
    """A snapshot of this process's read counters (cumulative; a forked child starts at zero).

    Returns:
        The counters.
    """
    with _COUNTS_LOCK:
        return Counters(**_COUNTS)


# --- the transport: obstore where it runs, the fork-safe one elsewhere --------------------

TRANSPORT_ENV = "STACCHIP_IO_TRANSPORT"  # "portable": the fork-safe transport in every process


def _portable(url: str) -> bool:
    """Whether ``url`` is read through the fork-safe transport in this process: local files
    always (plain reads; they never start obstore's runtime), remote objects where obstore
    cannot run (a child forked after its parent used it). Raises NoTransport for schemes that
    transport lacks (gs://, az://) there."""
    if not is_remote(url):
        return True
    if usable() and (
        os.environ.get(TRANSPORT_ENV, "auto") != "portable" or not portable.serves(url)
    ):
        return False
    if not portable.serves(url):
        _warn_no_transport()
        raise NoTransport(f"{urlsplit(url).scheme}:// has no fork-safe transport")
    return True


async def _fetch(
    url: str,
    start: int | None = None,
    end: int | None = None,
    if_match: str | None = None,
    what: str = "requests",
) -> portable.Response:
    """One GET of ``[start, end)`` (all when ``start`` is None) through this process's
    transport: the body, the object's size and ETag. Counted under ``what``."""
    if _portable(url):
        response = await portable.read(url, start, end, if_match)
        _count(
            **{what: 1, ("bytes" if what == "requests" else "check_bytes"): len(response.body)},
            portable=1,
        )
        return response
    body, size, etag = await _obstore_get(url, start, end, if_match)
    data = body.to_bytes()
    _count(**{what: 1, ("bytes" if what == "requests" else "check_bytes"): len(data)})
    return portable.Response(data, size, etag)


async def _fetch_view(
    url: str, start: int, end: int, if_match: str | None
) -> tuple[memoryview, int, str | None]:
    """``_fetch`` of a range for reading in place: a view of obstore's buffer, not a copy.
    Tiles are only inflated, and copying them into bytes (1.2 MB per RGB chip into fresh
    pages, holding the GIL) cost one process 8.79 -> 8.34 CPU ms per cold RGB chip (medians
    of five interleaved runs of 1,280 chips at 0 ms)."""
    if _portable(url):
        response = await _fetch(url, start, end, if_match)
        return memoryview(response.body), response.size, response.etag
    body, size, etag = await _obstore_get(url, start, end, if_match)
    _count(requests=1, bytes=len(body))
    return memoryview(body), size, etag


async def _obstore_get(url: str, start: int | None, end: int | None, if_match: str | None):
    """One GET through obstore: its buffer (not copied), the object's size and ETag."""
    store, path = locate(url)
    options: GetOptions = {}
    if start is not None:
        options["range"] = (int(start), int(end or 0))
    if if_match:
        options["if_match"] = if_match
    result = await obstore.get_async(store, path, options=options)
    return await result.bytes_async(), int(result.meta["size"]), result.meta.get("e_tag")


def get_bytes(url: str | Path) -> bytes:
    """The whole object.

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.

    Returns:
        The object's bytes.

    Raises:
        ObjectError: If the object cannot be read (one redacted line).
        ForkedError: If this forked process has no transport for the URL's scheme.
    """
    url = str(url)
    try:
        if _portable(url):
            # local files need no loop
            response = (
                portable.read_local(url, None, None)
                if not is_remote(url)
                else run(portable.read(url))
            )
            _count(requests=1, bytes=len(response.body), portable=1)
            return response.body
        store, path = locate(url)
        data = obstore.get(store, path).bytes().to_bytes()
    except NoTransport as exc:
        raise ForkedError(f"cannot read {redact(url)}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - either transport's errors and OSErrors
        raise _error(url, exc) from None
    _count(requests=1, bytes=len(data))
    return data


def head(url: str | Path) -> Meta:
    """The object's size and ETag.

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.

    Returns:
        The object's size and ETag.

    Raises:
        ObjectError: If the object cannot be read (one redacted line).
        ForkedError: If this forked process has no transport for the URL's scheme.
    """
    url = str(url)
    try:
        if _portable(url):
            response = (portable.read_local(url, None, None, body=False) if not is_remote(url)
                        else run(portable.read(url, body=False)))
            _count(requests=1, portable=1)
            return Meta(response.size, response.etag)
        store, path = locate(url)
        meta = obstore.head(store, path)
    except NoTransport as exc:
        raise ForkedError(f"cannot read {redact(url)}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - either transport's errors and OSErrors
        raise _error(url, exc, "stat") from None
    _count(requests=1)
    return Meta(int(meta["size"]), meta.get("e_tag"))


def _check(url: str, starts, ends, buffers) -> list:
    for s, e, b in zip(starts, ends, buffers):
        if len(b) != e - s:
            raise ObjectError(f"cannot read {redact(url)}: truncated (bytes {s}-{e} gave {len(b)})")
    return buffers


def get_ranges(url: str | Path, starts: Sequence[int], ends: Sequence[int]) -> list:
    """Byte ranges ``[start, end)``, concurrently (adjacent ones coalesced by obstore).

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.
        starts: The ranges' first bytes.
        ends: The ranges' ends (exclusive).

    Returns:
        The ranges' bytes, in order.

    Raises:
        ObjectError: If a range cannot be read or comes back truncated.
        ForkedError: If this forked process has no transport for the URL's scheme.
    """
    url = str(url)
    if _portable_or_forked(url):
        return run(get_ranges_async(url, starts, ends))
    store, path = locate(url)
    starts, ends = [int(s) for s in starts], [int(e) for e in ends]
    try:
        out = obstore.get_ranges(store, path, starts=starts, ends=ends)
    except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy and OSErrors
        raise _error(url, exc) from None
    _count(requests=len(_coalesce(list(zip(starts, ends)))), bytes=sum(len(b) for b in out))
    return _check(url, starts, ends, out)


def _portable_or_forked(url: str) -> bool:
    try:
        return _portable(url)
    except NoTransport:
        return True  # get_ranges_async says so, as one ForkedError


async def get_ranges_async(url: str | Path, starts: Sequence[int], ends: Sequence[int]) -> list:
    """Byte ranges ``[start, end)``, concurrently, on the caller's event loop.

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.
        starts: The ranges' first bytes.
        ends: The ranges' ends (exclusive).

    Returns:
        The ranges' bytes, in order.

    Raises:
        ObjectError: If a range cannot be read or comes back truncated.
        ForkedError: If this forked process has no transport for the URL's scheme.
    """
    url = str(url)
    starts, ends = [int(s) for s in starts], [int(e) for e in ends]
    try:
        out: list
        if _portable(url):
            out = [
                r.body
                for r in await asyncio.gather(*(_fetch(url, s, e) for s, e in zip(starts, ends)))
            ]
        else:
            store, path = locate(url)
            out = await obstore.get_ranges_async(store, path, starts=starts, ends=ends)
            _count(requests=len(_coalesce(list(zip(starts, ends)))), bytes=sum(len(b) for b in out))
    except NoTransport as exc:
        raise ForkedError(f"cannot read {redact(url)}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - either transport's errors and OSErrors
        raise _error(url, exc) from None
    return _check(url, starts, ends, out)


async def get_head_async(url: str | Path, length: int) -> tuple[bytes, Meta]:
    """The first ``length`` bytes (fewer if the object is smaller) and the object's size and
    ETag, in ONE request.

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.
        length: How many bytes to read.

    Returns:
        The bytes read and the object's size and ETag.

    Raises:
        ObjectError: If the object cannot be read (one redacted line).
        NoTransport: If this forked process has no transport for the URL's scheme.
    """
    try:
        response = await _fetch(str(url), 0, int(length))
    except NoTransport:
        raise
    except Exception as exc:  # noqa: BLE001 - either transport's errors and OSErrors
        raise _error(str(url), exc) from None
    return response.body, Meta(response.size, response.etag)


def read_table(url: str | Path, **kwargs):
    """The Parquet table at a local path or URL (``pyarrow.parquet.read_table`` keyword
    arguments pass through). Not through obstore: the parent of a DataLoader loads its
    index, then forks, and obstore's runtime would not survive into the workers. Local
    files are read by pyarrow itself, http(s) and s3 ones in one GET of the fork-safe
    transport; only gs:// and az:// indexes (which it cannot read) go through obstore.

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.
        **kwargs: Passed to ``pyarrow.parquet.read_table``.

    Returns:
        The pyarrow Table.

    Raises:
        ObjectError: the object cannot be read.
        pyarrow.ArrowInvalid: it is not Parquet.
    """
    import io

    url = str(url)
    if not is_remote(url):
        path = unquote(urlsplit(url).path) if url.lower().startswith("file:") else url
        if not os.path.isfile(path):
            raise ObjectError(f"no such file: {path}")
        return _parquet(path, kwargs)
    if not portable.serves(url):  # gs://, az://: only obstore reads them
        return _parquet(io.BytesIO(get_bytes(url)), kwargs)
    try:
        response = run(portable.read(url))
    except Exception as exc:  # noqa: BLE001 - aiohttp's errors and HttpStatus
        raise _error(url, exc) from None
    _count(requests=1, bytes=len(response.body), portable=1)
    return _parquet(io.BytesIO(response.body), kwargs)


def _parquet(source, kwargs: dict):
    """A whole Parquet file. Through ``ParquetFile`` unless a keyword needs the dataset
    API (filters...): ``pq.read_table`` imports pyarrow.dataset, and with it pandas, which
    cost a DataLoader's parent 1.0 s of CPU on first use of the index (measured)."""
    import pyarrow.parquet as pq

    if set(kwargs) <= {"columns", "read_dictionary"}:
        table = pq.ParquetFile(source, read_dictionary=kwargs.get("read_dictionary")).read(
            columns=kwargs.get("columns")
        )
    else:
        table = pq.read_table(source, **kwargs)
    release_arrow_memory()
    return table


def release_arrow_memory() -> None:
    """Give the pages pyarrow's allocator freed back to the system. Decoding a Parquet file
    takes several times the table's size, and mimalloc keeps the freed pages: a 181 MB index
    of 100,000 chips with layouts left a process at 1004 MiB RSS for a 200 MB table, 301 MiB
    after this (3.7 ms). A DataLoader's parent forks its workers after loading its index, so
    the pages it keeps are counted in every worker too."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# --- signing, off the I/O loop ------------------------------------------------------------

_SIGNER = None
_SIGN_LOCKS: dict[tuple, asyncio.Lock] = {}
_SIGN_FAILED: dict[tuple, tuple[float, str]] = {}
SIGN_FAILURE_MEMORY = 30.0  # seconds a signing timeout is remembered: later hrefs fail at once


def _signer():
    global _SIGNER
    if _SIGNER is None:
        from concurrent.futures import ThreadPoolExecutor

        # a few threads: a hanging token endpoint holds one per storage account/container
        _SIGNER = ThreadPoolExecutor(8, thread_name_prefix="stacchip-sign")
    return _SIGNER


def _sign_key(href: str) -> tuple:
    """What one token covers: the scheme, host and first path segment (an Azure storage
    account and container, an S3 bucket)."""
    parts = urlsplit(href)
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.lstrip("/").split("/", 1)[0]


async def sign(href: str) -> str:
    """``href`` as the ``stacchip_sign_href`` hook rewrites it, computed OFF the event loop
    (in a small thread pool; the hook may ask a token endpoint) and one at a time per storage
    account and container (the first asks for the token, the others then find it cached).
    The answer comes within ``STACCHIP_IO_TIMEOUT`` seconds: a hook that takes longer fails
    with one AssetError, and hrefs of the same container fail at once for the next 30 s.
    Reads of other hrefs go on meanwhile.

    Args:
        href: The unsigned href.

    Returns:
        The signed href.

    Raises:
        AssetError: the hook failed or took longer than the I/O timeout.
    """
    from stacchip_core.errors import AssetError
    from stacchip_core.plugins import sign_href, sign_href_at_once

    _count(signed=1)
    at_once = sign_href_at_once(href)  # no hook of a user, nothing to ask: no thread (70 µs saved)
    if at_once is not None:
        return at_once
    key = _sign_key(href)
    loop = asyncio.get_running_loop()
    lock = _SIGN_LOCKS.get((id(loop), *key))
    if lock is None:
        lock = _SIGN_LOCKS[(id(loop), *key)] = asyncio.Lock()
    timeout, _ = object_timeouts()
    async with lock:
        failed = _SIGN_FAILED.get(key)
        if failed is not None and failed[0] > time.monotonic():
            raise AssetError(failed[1])
        try:
            # a second more than the budget: a signer that keeps to it
            # (the built-in one) answers first
            return await asyncio.wait_for(
                loop.run_in_executor(_signer(), sign_href, href, None), timeout + 1
            )
        except TimeoutError:
            message = (
                f"signing hrefs of {redact(f'{key[0]}://{key[1]}/{key[2]}')} took longer than "
                f"{timeout:g} s (STACCHIP_IO_TIMEOUT)"
            )
            _SIGN_FAILED[key] = (time.monotonic() + SIGN_FAILURE_MEMORY, message)
            raise AssetError(message) from None


# --- validated range reads: the one entry point of chip reads -----------------------------

COALESCE_GAP = 64 * 1024  # merge ranges closer than this into one request


class StaleObject(Exception):  # a signal to fall back, not an error for users
    """The object no longer is what the index recorded (changed size, header or ETag, or
    gone): its reader falls back to opening the file."""


class NoTransport(StaleObject):
    """No transport can read this URL in this process (gs:// or az:// in a child forked after
    its parent used obstore): the reader falls back to rasterio, as for a stale object."""


@dataclass(frozen=True)
class Expect:
    """What the index recorded of an object, checked by validated reads: its size (every
    response), the digest of its first ``head`` bytes (once per process), or, in layouts
    written before digests, its ETag (every request, as If-Match)."""

    size: int
    etag: str | None = None
    digest: str | None = None
    head: int = 0
    # the caller verifies what it reads (deflate tiles carry an Adler-32 checksum and must
    # inflate to their exact size, or a part of one to its exact length): no header check up
    # front, only when a tile fails (``check_header``). Saves one request per asset and
    # process: 3.6-4.0 requests for 3.0 tiles per cold RGB chip in bench_loaders.py before
    deferred: bool = False


def digest(data: bytes) -> str:
    """The digest layouts record of an object's header bytes.

    Args:
        data: The header bytes.

    Returns:
        A 16-byte BLAKE2b digest, as 32 hex digits.
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# objects whose header digest matched in this process: (href, size, digest) -> ETag seen then
_VERIFIED: dict[tuple, str | None] = {}
_CHECKING: dict[tuple, asyncio.Future] = {}


def note_checked(href: str, expect: Expect, etag: str | None) -> None:
    """Record that the object at ``href`` was just seen to match ``expect`` (its header was read
    and hashed, at index time), with this ETag: reads in this process need no check.

    Args:
        href: The object's unsigned href.
        expect: What the index recorded of the object.
        etag: The ETag the object had, if any.
    """
    if len(_VERIFIED) > 100_000:  # bounded over a long epoch
        _VERIFIED.clear()
    _VERIFIED[(href, expect.size, expect.digest)] = etag


def forget_verified() -> None:
    """Forget which objects this process has checked against their layouts, as a new process
    would: the next layout read of each object checks its header again (one request per
    object, counted as a check) and takes the ETag it has then.

    Reads notice a rewritten object by themselves where the store gives ETags (the ETag
    seen at the check no longer matches: the object is checked again). Call this after
    replacing objects in place behind a server without ETags, or to measure what a process
    that did not index the objects spends.
    """
    _VERIFIED.clear()


async def _verify(href: str, url: str, expect: Expect) -> str | None:
    """The header check of a layout: its first bytes must hash to the recorded digest.
    Returns the ETag the object has now (sent as If-Match by later reads); raises
    StaleObject when the object changed."""
    try:
        response = await _fetch(url, 0, expect.head, what="checks")
    except NoTransport:
        raise
    except Exception as exc:  # noqa: BLE001 - either transport's errors and OSErrors
        if failure(exc) in ("not found", "precondition failed"):
            raise StaleObject(failure(exc)) from None
        raise _error(href, exc) from None
    if response.size != expect.size:
        raise StaleObject(f"size {response.size} != {expect.size}")
    if digest(response.body[:expect.head]) != expect.digest:
        raise StaleObject("its header changed")
    return response.etag


async def _verified(href: str, url: str, expect: Expect) -> str | None:
    """The ETag of a checked object: checked once per process (concurrent callers share one
    check, which goes on if one of them is cancelled), remembered after."""
    key = (href, expect.size, expect.digest)
    if key in _VERIFIED:
        return _VERIFIED[key]
    running_key = (id(asyncio.get_running_loop()), *key)
    running = _CHECKING.get(running_key)
    if running is None:

        async def check() -> str | None:
            try:
                etag = await _verify(href, url, expect)
            finally:
                _CHECKING.pop(running_key, None)
            note_checked(href, expect, etag)
            return etag

        running = _CHECKING[running_key] = asyncio.ensure_future(check())
        # retrieved here too, so a check whose callers all went away logs nothing
        running.add_done_callback(lambda task: task.cancelled() or task.exception())
    return await asyncio.shield(running)


def _coalesce(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for s, e in sorted(set(ranges)):
        if merged and s - merged[-1][1] <= COALESCE_GAP:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


class _Changed(StaleObject):
    """An If-Match that no longer holds (412)."""


async def _blocks(
    href: str,
    url: str,
    merged: list[tuple[int, int]],
    expect: Expect,
    if_match: str | None,
    check: asyncio.Future | None,
) -> list[tuple[int, memoryview]]:
    """The merged ranges, read concurrently (beside ``check``, a header check, if any)."""

    async def one(s: int, e: int) -> tuple[int, memoryview]:
        try:
            body, size, _etag = await _fetch_view(url, s, e, if_match)
        except NoTransport:
            raise
        except Exception as exc:  # noqa: BLE001 - either transport's errors and OSErrors
            kind = failure(exc)
            if kind == "precondition failed":
                raise _Changed(kind) from None
            if kind == "not found":  # the object went away
                raise StaleObject(kind) from None
            raise _error(href, exc) from None
        if size != expect.size:
            raise StaleObject(f"size {size} != {expect.size}")
        if len(body) != e - s:
            raise ObjectError(
                f"cannot read {redact(href)}: truncated (bytes {s}-{e} gave {len(body)})"
            )
        return s, body

    try:
        if check is None:
            return list(await asyncio.gather(*(one(s, e) for s, e in merged)))
        *blocks, _ = await asyncio.gather(*(one(s, e) for s, e in merged), check)
        return blocks
    finally:
        if check is not None and not check.done():
            check.cancel()


async def read_ranges(href: str, ranges: Sequence[tuple[int, int]],
                      expect: Expect) -> dict[tuple[int, int], memoryview]:
    """The bytes of ``ranges`` (``[start, end)``) of the object at ``href`` (UNSIGNED: it is
    signed here, off the loop, right before the read, since signatures expire): coalesced,
    concurrent, and checked against ``expect``.

    The size is checked on every response. A layout with a header digest is checked once per
    process: its header is read beside the first tile reads (no added latency) and the ETag
    seen then goes as If-Match on later reads. When that fails (the object was rewritten, or
    copied anew) the header is checked once more: unchanged, reads go on with the new ETag;
    changed, the object is stale. A layout from before digests sends its recorded ETag as
    If-Match, as it always did.

    Args:
        href: The object's unsigned href.
        ranges: The ``[start, end)`` byte ranges to read.
        expect: What the index recorded of the object.

    Returns:
        The bytes of each range, by range.

    Raises:
        StaleObject: the object changed or is gone (the caller falls back).
        ObjectError: any other failure (one redacted line).
        AssetError: signing the href failed.
    """
    url = await sign(href)
    merged = _coalesce(ranges)
    try:
        if not expect.digest or expect.etag:  # a layout from before digests: its ETag decides
            blocks = await _blocks(href, url, merged, expect, expect.etag, None)
        elif expect.deferred:  # the caller checks the bytes (and calls check_header if they fail)
            blocks = await _blocks(href, url, merged, expect, None, None)
        else:
            key = (href, expect.size, expect.digest)
            for attempt in range(2):
                known = key in _VERIFIED
                check = None if known else asyncio.ensure_future(_verified(href, url, expect))
                try:
                    blocks = await _blocks(href, url, merged, expect, _VERIFIED.get(key), check)
                    break
                except _Changed:
                    if attempt or not known:
                        raise
                    _VERIFIED.pop(key, None)  # rewritten or copied since its check: check again
    except NoTransport:
        raise  # not stale: this process cannot read it (counted apart from changed objects)
    except StaleObject:
        _count(stale=1)
        raise
    out = {}
    for s, e in ranges:
        for bs, buf in blocks:
            if bs <= s and e <= bs + len(buf):
                out[(s, e)] = buf[s - bs:e - bs]
                break
    return out


async def check_header(href: str, expect: Expect) -> None:
    """The header check of a ``deferred`` layout, for a caller whose tiles did not decode:
    raises StaleObject when the object changed since it was indexed (counted as stale);
    returns when it is unchanged (the tiles are corrupt, or the decoder failed).

    Args:
        href: The object's unsigned href.
        expect: What the index recorded of the object.

    Raises:
        StaleObject: If the object changed since it was indexed.
        AssetError: If signing the href failed.
    """
    if not expect.digest:
        return
    try:
        await _verified(href, await sign(href), expect)
    except StaleObject:
        _count(stale=1)
        raise


# --- a private event loop for sync callers ------------------------------------------------

class _Loop:
    """One event loop in a daemon thread per process, so sync code (a DataLoader worker,
    the CLI) can run many reads concurrently without owning a loop. Recreated after fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = None
        self._pid = None
        self._thread: threading.Thread | None = None

    def run(self, coro):
        if self._pid != os.getpid() or self._loop is None:
            with self._lock:
                if self._pid != os.getpid() or self._loop is None:
                    loop = asyncio.new_event_loop()
                    self._thread = threading.Thread(
                        target=loop.run_forever, daemon=True, name="stacchip-io"
                    )
                    self._thread.start()
                    self._loop, self._pid = loop, os.getpid()
        if (
            threading.current_thread() is self._thread
        ):  # sync code called from a coroutine on this loop
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as helper:  # waiting on our own loop would never end
                context = contextvars.copy_context()  # its reads count in the caller's tally
                return helper.submit(context.run, asyncio.run, coro).result()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


    def close(self, timeout: float = 5.0) -> None:
        """Stop this process's loop and wait for its thread: at exit, so that no read still in
        flight calls back into the interpreter while it finalizes (a native thread doing so
        aborts the process after its work is done)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._pid != os.getpid() or not thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout)
        except Exception:  # noqa: BLE001, S110 - best effort at exit
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


_LOOP = _Loop()
atexit.register(_LOOP.close)


def run(coro):
    """Run a coroutine on stacchip's I/O loop and wait for its result (from any thread that
    is not that loop).

    Args:
        coro: The coroutine.

    Returns:
        The coroutine's result (its exception is raised).
    """
    return _LOOP.run(coro)


_USED_BY: int | None = None  # the process that started obstore's (tokio) runtime
_NATIVE_BY: int | None = None  # the process that started async-tiff's (tokio) runtime


def usable() -> bool:
    """Whether this process may use obstore. Its Rust runtime does not survive ``fork()``
    (its threads are not copied; reads then hang forever), so a process forked after its
    parent read through obstore must not: reads there go through the fork-safe transport
    (io.portable), which needs nothing from the parent.

    Returns:
        True unless another process (the parent) started obstore's runtime.
    """
    return _USED_BY is None or _USED_BY == os.getpid()


def chips_usable(href: str | None = None) -> bool:
    """Whether chips may be read from layouts in this process (of ``href``, when given): yes
    wherever obstore runs, and for local, http(s) and s3 objects everywhere (the fork-safe
    transport). gs:// and az:// in a child forked after its parent used obstore: no, with
    one warning per process.

    Args:
        href: The object's href, if a particular one.

    Returns:
        Whether layouts may be used.
    """
    if usable() or href is None or portable.serves(href):
        return True
    _warn_no_transport()
    return False


def _warn_no_transport() -> None:
    global _FORK_WARNED
    if _FORK_WARNED != os.getpid():
        _FORK_WARNED = os.getpid()
        log.warning(
            "process %d was forked after its parent read through obstore, whose runtime does not "
            "survive fork(): its gs:// and az:// chips are read through rasterio (slower; http(s) "
            "and "
            "s3 keep the fast path). Use multiprocessing_context='forkserver' or 'spawn' for them",
            os.getpid(),
        )


_FORK_WARNED: int | None = None


def _mark_used() -> None:
    global _USED_BY
    if _USED_BY is None:
        _USED_BY = os.getpid()
    elif _USED_BY != os.getpid():
        raise ForkedError("obstore cannot be used in a process forked after its parent used it")


class ForkedError(ObjectError):
    """This process was forked after obstore was used and called it anyway (only ``locate``
    does: every read routes around it)."""


def async_tiff_usable() -> bool:
    """Whether this process may use async-tiff: like obstore, its runtime hangs in a child
    forked after its parent used it (measured: ``TIFF.open`` never returns there).

    Returns:
        True unless another process (the parent) started async-tiff's runtime.
    """
    return _NATIVE_BY is None or _NATIVE_BY == os.getpid()


def use_async_tiff() -> None:
    """Say that this process is about to use async-tiff (every ``TIFF.open`` of stacchip goes
    through layout.HeaderInput, which calls this).

    Raises:
        NoTransport: a parent process used it before forking this one; the caller reads
            another way (a layout is not recorded; a chip's asset goes through rasterio).
    """
    global _NATIVE_BY
    if _NATIVE_BY is None:
        _NATIVE_BY = os.getpid()
    elif _NATIVE_BY != os.getpid():
        raise NoTransport("async-tiff cannot run in a process forked after its parent used it")


def _after_fork() -> None:
    _cached_store.cache_clear()
    _zero_counts()  # counters are per process
    _CHECKING.clear()  # keyed by loops of the parent's I/O thread, which the child does not have
    _SIGN_LOCKS.clear()
    global _SIGNER
    _SIGNER = None  # its threads stayed in the parent


def _before_fork() -> None:
    # a child of a process that used obstore reads through the fork-safe transport: import
    # aiohttp once here rather than in every child (0.2 s of CPU per DataLoader worker,
    # measured; every epoch when workers do not persist)
    if _USED_BY == os.getpid():
        portable.preload()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork)
