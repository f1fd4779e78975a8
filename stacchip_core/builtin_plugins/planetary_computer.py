"""Planetary Computer signing: a built-in ``stacchip_sign_href`` implementation.

Planetary Computer serves its sources (NAIP, Sentinel-1 RTC, MODIS, Sentinel-2, Landsat…) from
Azure blob storage that needs a SAS token. Such hrefs are signed with the ``planetary-computer``
package (``pip install 'stacchip-core[planetary-computer]'``; it asks Planetary Computer's token
endpoint, so signing needs the network) just before they are read or copied. It is registered
``trylast``: a signer of your own, registered as a plugin, answers first.

One token per storage account and container, asked once and cached until a minute before it
expires (in the package's own cache, ``planetary_computer.sas.TOKEN_CACHE``), whatever the
number of threads asking at once. The token request has a time budget: ``STACCHIP_IO_TIMEOUT``
seconds in all (default 30), ``STACCHIP_IO_RETRIES`` retries within it, where the package's own
client retries 10 times with backoff (about 7 minutes when the endpoint is unreachable). A
failure is remembered for 30 s, so the other hrefs of that container fail at once.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlparse

from stacchip_core.errors import AssetError
from stacchip_core.hookspecs import hookimpl

if TYPE_CHECKING:
    import pystac

PC_HOST = "planetarycomputer.microsoft.com"
PC_BLOB_SUFFIX = ".blob.core.windows.net"
# storage accounts Planetary Computer serves sources from (for items that carry no PC link)
PC_ACCOUNTS = frozenset({"naipeuwest", "sentinel2l2a01", "landsateuwest", "sentinel1euwestrtc",
                         "sentinel1euwest", "modiseuwest"})


def from_planetary_computer(href: str, asset: pystac.Asset | None) -> bool:
    """Whether ``href`` is an unsigned blob of Planetary Computer's storage.

    Args:
        href: The asset's href.
        asset: The asset, if known: an item linking to Planetary Computer marks blobs of
            storage accounts not in ``PC_ACCOUNTS`` as its own.

    Returns:
        True for an https Azure blob href without a ``sig`` in its query, of a known
        Planetary Computer account or of an item that links to Planetary Computer.
    """
    url = urlparse(href)
    host = url.hostname or ""
    if url.scheme != "https" or not host.endswith(PC_BLOB_SUFFIX) or "sig" in parse_qs(url.query):
        return False  # not Azure blob storage, or signed already
    if host.removesuffix(PC_BLOB_SUFFIX) in PC_ACCOUNTS:
        return True
    item = getattr(asset, "owner", None)
    return any(PC_HOST in (link.href or "") for link in getattr(item, "links", ()) or ())


@hookimpl(trylast=True)
def stacchip_sign_href(href: str, asset: pystac.Asset | None) -> str | None:
    """Planetary Computer blob hrefs get a SAS token (planetary-computer package).

    Args:
        href: The asset's href.
        asset: The asset, if known.

    Returns:
        ``href`` with the container's SAS token as its query, or None when ``href`` is not
        an unsigned Planetary Computer blob (another signer, or none, answers).

    Raises:
        AssetError: The planetary-computer extra is not installed, or the token endpoint
            failed or did not answer within the I/O time budget.
    """
    if not from_planetary_computer(href, asset):
        return None
    try:
        import planetary_computer  # noqa: F401 - installed? (the extra)
    except ImportError as exc:
        raise AssetError(
            f"{urlparse(href).hostname} (Planetary Computer) needs signed hrefs: install "
            "'stacchip-core[planetary-computer]', or register a stacchip_sign_href plugin"
        ) from exc
    url = urlparse(href)
    account = (url.hostname or "").removesuffix(PC_BLOB_SUFFIX)
    container = url.path.lstrip("/").split("/", 1)[0]
    token = _token(account, container)
    return f"{href}?{token}"


def sign_cached(href: str) -> str | None:
    """``href`` as the built-in signer answers it when that needs no request: unchanged (not
    a Planetary Computer blob), or signed with a cached token; None when a token must be
    asked (or the package is missing: the hook then says so).

    Args:
        href: The asset's href.

    Returns:
        ``href`` itself, ``href`` with a cached token that is valid for another minute, or
        None.
    """
    if not from_planetary_computer(href, None):
        return href
    try:
        from planetary_computer import sas
        from planetary_computer.settings import Settings
    except ImportError:
        return None
    url = urlparse(href)
    account = (url.hostname or "").removesuffix(PC_BLOB_SUFFIX)
    container = url.path.lstrip("/").split("/", 1)[0]
    cached = sas.TOKEN_CACHE.get(f"{Settings.get().sas_url}/{account}/{container}")
    return f"{href}?{cached.token}" if cached is not None and cached.ttl() >= 60 else None


FAILURE_MEMORY = 30.0  # seconds a failed token request is remembered for its container
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()
_FAILED: dict[tuple[str, str], tuple[float, str]] = {}


def _budget() -> tuple[float, int]:
    # the I/O layer's settings (io.settings.object_timeouts), read here: signing sits below io
    return float(os.environ.get("STACCHIP_IO_TIMEOUT") or 30), int(
        os.environ.get("STACCHIP_IO_RETRIES") or 4
    )


def _token(account: str, container: str) -> str:
    """The SAS token of a container: cached, asked once at a time per container, within the
    I/O time budget.

    Raises:
        AssetError: the endpoint failed, or did not answer within the budget.
    """
    from planetary_computer import sas
    from planetary_computer.settings import Settings

    settings = Settings.get()
    url = f"{settings.sas_url}/{account}/{container}"
    cached = sas.TOKEN_CACHE.get(url)
    if cached is not None and cached.ttl() >= 60:  # the package's own margin
        return cached.token
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault((account, container), threading.Lock())
    with lock:  # one request per container: the threads behind it find the token cached
        cached = sas.TOKEN_CACHE.get(url)
        if cached is not None and cached.ttl() >= 60:
            return cached.token
        failed = _FAILED.get((account, container))
        if failed is not None and failed[0] > time.monotonic():
            raise AssetError(failed[1])
        try:
            token = _ask(url, settings.subscription_key)
        except AssetError as exc:
            _FAILED[(account, container)] = (time.monotonic() + FAILURE_MEMORY, str(exc))
            raise
        _FAILED.pop((account, container), None)
        sas.TOKEN_CACHE[url] = token
        return token.token


def _ask(url: str, subscription_key: str | None):
    """One token from the endpoint, retried on 429/5xx and connection errors while the
    budget lasts."""
    import requests
    from planetary_computer.sas import SASToken

    timeout, retries = _budget()
    deadline = time.monotonic() + timeout
    headers = {"Ocp-Apim-Subscription-Key": subscription_key} if subscription_key else None
    account = urlparse(url).path.rstrip("/").split("/")[-2:]
    what = f"a Planetary Computer token for {'/'.join(account)}"
    reason = "no answer"
    for attempt in range(retries + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            response = requests.get(url, headers=headers, timeout=left)
        except requests.Timeout:
            reason = f"no answer within {timeout:g} s (STACCHIP_IO_TIMEOUT)"
            break
        except requests.RequestException as exc:
            reason = type(exc).__name__
        else:
            if response.status_code == 200:
                try:
                    return SASToken(**response.json())
                except Exception as exc:  # noqa: BLE001 - pydantic's or json's: an answer that is no token
                    raise AssetError(
                        f"cannot get {what}: not a token ({type(exc).__name__})"
                    ) from None
            reason = f"HTTP status {response.status_code}"
            if response.status_code not in (429, 500, 502, 503, 504):
                break
        if attempt < retries:
            time.sleep(min(0.5 * 2 ** attempt, max(0.0, deadline - time.monotonic())))
    raise AssetError(f"cannot get {what}: {reason}")
