"""Helpers for the asset-normalization hook: copy assets into a store, rewrite hrefs."""

from __future__ import annotations

import logging
import shutil
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from stacchip_core.core.raster import asset_href
from stacchip_core.errors import AssetError
from stacchip_core.io.files import scratch_dir
from stacchip_core.io.keys import join as join_key
from stacchip_core.io.keys import segment
from stacchip_core.io.settings import s3_endpoint, source_s3_endpoint
from stacchip_core.io.store import S3Store
from stacchip_core.io.urls import redact, redact_text
from stacchip_core.plugins import sign_href
from stacchip_core.types import Store

if TYPE_CHECKING:
    import pystac

log = logging.getLogger(__name__)


def fetch(href: str, directory: Path) -> Path:
    """A local file with the object at ``href``: a local path as is, else downloaded into
    ``directory`` (s3:// from the source endpoint, STACCHIP_SOURCE_S3_ENDPOINT).

    Args:
        href: A local path, file://, s3:// or http(s):// URL.
        directory: Where to download a remote object to.

    Returns:
        The local file.

    Raises:
        AssetError: If a local file does not exist or the scheme is not supported.
    """
    url = urlparse(href)
    if url.scheme in ("", "file"):
        local = Path(url.path if url.scheme == "file" else href)
        if not local.exists():
            raise AssetError(f"no such file: {local}")
        return local
    local = directory / (Path(url.path).name or "object")
    if url.scheme == "s3":
        S3Store(url.netloc, endpoint=source_s3_endpoint()).client.download_file(
            url.netloc, url.path.lstrip("/"), str(local)
        )
    elif url.scheme in ("http", "https"):
        with urllib.request.urlopen(href, timeout=60) as response, open(local, "wb") as fh:
            shutil.copyfileobj(response, fh)
    else:
        raise AssetError(f"cannot fetch {redact(href)}: unsupported scheme {url.scheme!r}")
    return local


def copy_into(store: Store, href: str, key: str) -> str:
    """Copy the object at ``href`` (local path, file://, s3://, http(s)://) to ``key`` of
    ``store``, unless it is there already. Returns the store URL of the copy.

    Args:
        store: The store to copy into.
        href: The object's local path, file://, s3:// or http(s):// URL.
        key: The key of the copy in ``store``.

    Returns:
        The store URL of the copy.

    Raises:
        AssetError: If the object cannot be fetched or written (the message is redacted).
    """
    if store.exists(key):
        return store.url(key)
    url = urlparse(href)
    try:
        if (
            url.scheme == "s3"
            and isinstance(store, S3Store)
            and source_s3_endpoint() == (store.endpoint or s3_endpoint())
        ):
            # same endpoint: a server-side copy, no bytes through this machine
            store.client.copy(
                {"Bucket": url.netloc, "Key": url.path.lstrip("/")}, store.bucket, store.key(key)
            )
            return store.url(key)
        with scratch_dir("copy") as tmp:  # a rerun removes what a killed job left
            return store.put_file(key, fetch(href, tmp))
    except AssetError:
        raise
    except Exception as exc:  # boto/urllib errors name the object
        raise AssetError(
            redact_text(f"cannot copy {redact(href)} to {store.url(key)}: {exc}")
        ) from exc


def copy_assets(item: pystac.Item, keys: list[str], store: Store, prefix: str,
                hrefs: dict[str, str] | None = None) -> pystac.Item:
    """A copy of ``item`` with only ``keys``, each copied to ``{prefix}/{file name}`` in the
    store and its href rewritten. ``hrefs`` overrides where to copy an asset from (e.g. an
    alternate s3 href).

    Args:
        item: The source item (not changed).
        keys: The asset keys to keep and copy.
        store: The store to copy into.
        prefix: The key prefix of the copies.
        hrefs: Per asset key, an href to copy from instead of the asset's own.

    Returns:
        The normalized copy of ``item``, without links.

    Raises:
        AssetError: If an asset cannot be copied.
        UnsafeKeyError: If an asset's file name or the resulting key is unsafe.
    """
    out = item.clone()
    for key in list(out.assets):
        if key not in keys:
            del out.assets[key]
    for key in keys:
        asset = out.assets[key]
        override = (hrefs or {}).get(key)
        source = sign_href(override, asset) if override else asset_href(asset)  # asset_href signs
        name = segment(Path(urlparse(source).path).name or f"{key}.tif", "asset file name")
        asset.href = copy_into(store, source, join_key(prefix, name))
        log.info("copied %s -> %s", key, asset.href)
    out.clear_links()
    return out
