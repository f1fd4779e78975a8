"""One object I/O layer for every URL stacchip reads: local paths, ``file://``, ``s3://``,
``https://``, ``gs://``, ``az://``, on obstore (Rust, async, retries and timeouts built in).

Every read goes through `locate`, which turns a URL into a cached ``(store, path)``;
an href-signing hook (signed Planetary Computer URLs, say) plugs in there and nowhere else.
Errors are `ObjectError` and name the URL through
`redact`, never its credentials or signature.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import obstore
from obstore.store import AzureStore, GCSStore, HTTPStore, LocalStore, S3Store

from stacchip_core.errors import ObjectError
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
    return urlsplit(str(url)).scheme.lower() in _SCHEMES


def _retry() -> RetryConfig:
    timeout, retries = object_timeouts()
    # transient failures (5xx, throttling, resets) back off 50 ms, 100 ms, ... up to `retries` times
    return {"max_retries": retries, "retry_timeout": timedelta(seconds=max(timeout * 4, 10)),
            "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=5),
                        "base": 2}}


def _client(allow_http: bool = False) -> ClientConfig:
    timeout, _ = object_timeouts()
    options: ClientConfig = {"timeout": timedelta(seconds=timeout), "connect_timeout": timedelta(seconds=min(timeout, 10))}
    if allow_http:
        options["allow_http"] = True
    return options


@lru_cache(maxsize=64)
def _store(scheme: str, netloc: str, endpoint: str | None, anonymous: bool, payer: bool, base: str = ""):
    """One store per bucket/host and settings: stores hold connection pools, worth keeping."""
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
    """``(store, path)`` for any URL or local path: THE place every object read passes."""
    url = str(url)
    _mark_used()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # a path, file://, or a Windows drive letter
        path = unquote(parts.path) if scheme == "file" else url
        return _store("file", "", None, False, False), os.path.abspath(path).lstrip("/")
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
    raise ObjectError(f"unsupported URL {redact(url)!r} (use a path, file://, s3://, http(s)://, gs:// or az://)")


def failure(exc: Exception) -> str:
    """What an object read met, in a few words: ``not found``, ``precondition failed`` (an
    ``If-Match`` that no longer holds), ``access denied``, ``timed out``, or the first line of
    the error with URLs redacted. obstore types only some of its failures, so the rest are
    told apart by the status in its message; the one place that does so."""
    import obstore.exceptions as oe

    if isinstance(exc, (oe.NotFoundError, FileNotFoundError)):
        return "not found"
    if isinstance(exc, oe.PreconditionError):
        return "precondition failed"
    if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)):
        return "access denied"
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


def get_bytes(url: str | Path) -> bytes:
    """The whole object."""
    store, path = locate(url)
    try:
        return obstore.get(store, path).bytes().to_bytes()
    except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy and OSErrors
        raise _error(str(url), exc) from None


def head(url: str | Path) -> Meta:
    store, path = locate(url)
    try:
        meta = obstore.head(store, path)
    except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy and OSErrors
        raise _error(str(url), exc, "stat") from None
    return Meta(int(meta["size"]), meta.get("e_tag"))


def _check(url: str, starts, ends, buffers) -> list:
    for s, e, b in zip(starts, ends, buffers):
        if len(b) != e - s:
            raise ObjectError(f"cannot read {redact(url)}: truncated (bytes {s}-{e} gave {len(b)})")
    return buffers


def get_ranges(url: str | Path, starts: Sequence[int], ends: Sequence[int]) -> list:
    """Byte ranges ``[start, end)``; obstore coalesces close ranges into fewer requests."""
    store, path = locate(url)
    starts, ends = [int(s) for s in starts], [int(e) for e in ends]
    try:
        out = obstore.get_ranges(store, path, starts=starts, ends=ends)
    except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy and OSErrors
        raise _error(str(url), exc) from None
    return _check(str(url), starts, ends, out)


async def get_ranges_async(url: str | Path, starts: Sequence[int], ends: Sequence[int]) -> list:
    store, path = locate(url)
    starts, ends = [int(s) for s in starts], [int(e) for e in ends]
    try:
        out = await obstore.get_ranges_async(store, path, starts=starts, ends=ends)
    except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy and OSErrors
        raise _error(str(url), exc) from None
    return _check(str(url), starts, ends, out)


async def get_head_async(url: str | Path, length: int) -> tuple[bytes, Meta]:
    """The first ``length`` bytes (fewer if the object is smaller) and the object's size and
    ETag, in ONE request."""
    store, path = locate(url)
    try:
        result = await obstore.get_async(store, path, options={"range": (0, int(length))})
        data = (await result.bytes_async()).to_bytes()
    except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy and OSErrors
        raise _error(str(url), exc) from None
    meta = result.meta
    return data, Meta(int(meta["size"]), meta.get("e_tag"))


# --- validated range reads: the one entry point of chip reads -----------------------------

COALESCE_GAP = 64 * 1024  # merge ranges closer than this into one request


class StaleObject(Exception):  # a signal to fall back, not an error for users
    """The object no longer is what the index recorded (changed size or ETag, or gone): its
    reader falls back to opening the file."""


@dataclass(frozen=True)
class Expect:
    """What the index recorded of an object, checked on every validated read."""

    size: int
    etag: str | None = None


def _coalesce(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for s, e in sorted(set(ranges)):
        if merged and s - merged[-1][1] <= COALESCE_GAP:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


async def read_ranges(href: str, ranges: Sequence[tuple[int, int]],
                      expect: Expect) -> dict[tuple[int, int], memoryview]:
    """The bytes of ``ranges`` (``[start, end)``) of the object at ``href`` (UNSIGNED: it is
    signed here, right before the read, since signatures expire): coalesced, concurrent, and
    checked against ``expect`` (size always; ``If-Match`` where an ETag is known). Raises
    `StaleObject` when the object changed or is gone, `ObjectError` otherwise."""
    from stacchip_core.plugins import sign_href

    url = sign_href(href)
    store, path = locate(url)
    merged = _coalesce(ranges)

    async def one(s: int, e: int):
        options: GetOptions = {"range": (s, e)}
        if expect.etag:
            options["if_match"] = expect.etag
        try:
            result = await obstore.get_async(store, path, options=options)
            data = await result.bytes_async()
        except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy and OSErrors
            kind = failure(exc)
            if kind in ("not found", "precondition failed"):  # the object changed or went away
                raise StaleObject(kind) from None
            raise _error(href, exc) from None
        if int(result.meta["size"]) != expect.size:
            raise StaleObject(f"size {result.meta['size']} != {expect.size}")
        if len(data) != e - s:
            raise ObjectError(f"cannot read {redact(href)}: truncated (bytes {s}-{e} gave {len(data)})")
        return s, memoryview(data)

    blocks = await asyncio.gather(*(one(s, e) for s, e in merged))
    out = {}
    for s, e in ranges:
        for bs, buf in blocks:
            if bs <= s and e <= bs + len(buf):
                out[(s, e)] = buf[s - bs:e - bs]
                break
    return out


# --- a private event loop for sync callers ------------------------------------------------

class _Loop:
    """One event loop in a daemon thread per process, so sync code (a DataLoader worker,
    the CLI) can run many reads concurrently without owning a loop. Recreated after fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = None
        self._pid = None

    def run(self, coro):
        if self._pid != os.getpid() or self._loop is None:
            with self._lock:
                if self._pid != os.getpid() or self._loop is None:
                    loop = asyncio.new_event_loop()
                    threading.Thread(target=loop.run_forever, daemon=True, name="stacchip-io").start()
                    self._loop, self._pid = loop, os.getpid()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


_LOOP = _Loop()


def run(coro):
    """Run a coroutine on stacchip's I/O loop and wait for its result (from any thread that
    is not that loop)."""
    return _LOOP.run(coro)


_USED_BY: int | None = None  # the process that started obstore's (tokio) runtime


def usable() -> bool:
    """Whether this process may use obstore/async-tiff. Their Rust runtime does not survive
    ``fork()`` (its threads are not copied; reads then hang forever), so a process forked
    after its parent read through them must not: callers fall back to rasterio/boto3 there.
    Forking before the first read (a DataLoader's usual case) or the spawn start method
    keeps the fast path."""
    return _USED_BY is None or _USED_BY == os.getpid()


def chips_usable() -> bool:
    """`usable`, for chip readers: the first time it is False in a process, one warning
    says why chips are slow there and how to avoid it."""
    ok = usable()
    global _FORK_WARNED
    if not ok and _FORK_WARNED != os.getpid():
        _FORK_WARNED = os.getpid()
        log.warning("process %d was forked after its parent read through obstore, whose runtime does not "
                    "survive fork(): it reads chips through rasterio (slower). Start DataLoader workers "
                    "before reading any chip in the parent, or use multiprocessing_context='spawn'", os.getpid())
    return ok


_FORK_WARNED: int | None = None


def _mark_used() -> None:
    global _USED_BY
    if _USED_BY is None:
        _USED_BY = os.getpid()
    elif _USED_BY != os.getpid():
        raise ForkedError("obstore cannot be used in a process forked after its parent used it")


class ForkedError(ObjectError):
    """This process was forked after obstore was used: read another way."""


def _after_fork() -> None:
    _store.cache_clear()


os.register_at_fork(after_in_child=_after_fork)
