"""Planetary Computer signing: a built-in ``stacchip_sign_href`` implementation.

Planetary Computer serves its sources (NAIP, Sentinel-1 RTC, MODIS, Sentinel-2, Landsat…) from
Azure blob storage that needs a SAS token. Such hrefs are signed with the ``planetary-computer``
package (``pip install 'stacchip-core[planetary-computer]'``; it asks Planetary Computer's token
endpoint, so signing needs the network) just before they are read or copied. It is registered
``trylast``: a signer of your own, registered as a plugin, answers first.
"""

from __future__ import annotations

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
    """Whether ``href`` is an unsigned blob of Planetary Computer's storage."""
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
    """Planetary Computer blob hrefs get a SAS token (planetary-computer package)."""
    if not from_planetary_computer(href, asset):
        return None
    try:
        import planetary_computer
    except ImportError as exc:
        raise AssetError(
            f"{urlparse(href).hostname} (Planetary Computer) needs signed hrefs: install "
            "'stacchip-core[planetary-computer]', or register a stacchip_sign_href plugin"
        ) from exc
    try:
        return planetary_computer.sign(href)
    except Exception as exc:
        raise AssetError(f"cannot sign an href on {urlparse(href).hostname} with Planetary Computer's token endpoint: "
                         f"{type(exc).__name__}") from exc
