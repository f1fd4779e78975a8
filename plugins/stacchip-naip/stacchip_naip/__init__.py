"""stacchip source plugin for NAIP aerial imagery (USDA), one 4-band asset.

NAIP has no cloud mask and no nodata value: every chip gets 0 for both.

Sample selection: the items intersecting the centroid of the sample geometry, sorted by
``naip:year``; the latest, plus one older item drawn at random (seeded by the sample index).

Planetary Computer serves NAIP from Azure blob storage that needs a SAS token: the plugin signs
such hrefs just before they are read or copied (``stacchip_sign_href``), with the
``planetary-computer`` package (``pip install 'stacchip-naip[planetary-computer]'``; it asks
Planetary Computer's token endpoint, so signing needs the network). A signer of your own,
registered as a plugin, answers first.
"""

from __future__ import annotations

import random
from urllib.parse import parse_qs, urlparse

from stacchip_core import Band, ChipStats, Platform, StacchipError, hookimpl, hookimpl_for
from stacchip_core.pipeline.ingest import copy_assets

STAC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
COLLECTION = "naip"

_IMAGE = ("image", "asset")  # Planetary Computer's key, and rio-stac's default
PLATFORM = Platform(
    name="naip",
    collections=("naip",),
    bands=(
        Band("red", _IMAGE[1:], index=1, asset="image"),
        Band("green", _IMAGE[1:], index=2, asset="image"),
        Band("blue", _IMAGE[1:], index=3, asset="image"),
        Band("nir", _IMAGE[1:], index=4, asset="image"),
    ),
    nodata=None,
    description="NAIP 0.6 m / 1 m RGB+NIR aerial imagery",
    extra={"stac_api": STAC_API},
)


@hookimpl
def stacchip_platforms():
    return [PLATFORM]


PC_HOST = "planetarycomputer.microsoft.com"
PC_BLOB_SUFFIX = ".blob.core.windows.net"
# storage accounts Planetary Computer serves these sources from (items without PC links)
PC_ACCOUNTS = frozenset({"naipeuwest", "sentinel2l2a01", "landsateuwest"})


def _from_planetary_computer(href: str, asset) -> bool:
    url = urlparse(href)
    host = url.hostname or ""
    if url.scheme != "https" or not host.endswith(PC_BLOB_SUFFIX) or "sig" in parse_qs(url.query):
        return False  # not Azure blob storage, or signed already
    if host.removesuffix(PC_BLOB_SUFFIX) in PC_ACCOUNTS:
        return True
    item = getattr(asset, "owner", None)
    return any(PC_HOST in (link.href or "") for link in getattr(item, "links", ()) or ())


@hookimpl(trylast=True)
def stacchip_sign_href(href, asset):
    """Planetary Computer blob hrefs get a SAS token (planetary-computer package)."""
    if not _from_planetary_computer(href, asset):
        return None
    try:
        import planetary_computer
    except ImportError:
        raise StacchipError(
            f"{urlparse(href).hostname} (Planetary Computer) needs signed hrefs: install "
            "'stacchip-naip[planetary-computer]', or register a stacchip_sign_href plugin"
        ) from None
    return planetary_computer.sign(href)


@hookimpl_for(PLATFORM)
def stacchip_chip_stats(platform, grid):
    return ChipStats.zeros((grid.y_size, grid.x_size))


def _year(item) -> int:
    return int(item.properties.get("naip:year") or item.datetime.year)


@hookimpl_for(PLATFORM)
def stacchip_select_items(platform, sample, catalog):
    found = list(catalog.search(collections=[COLLECTION], intersects=sample.geometry.centroid).items())
    if not found:
        return []
    found.sort(key=lambda item: (_year(item), item.id))
    latest = found[-1]
    older = [item for item in found if _year(item) < _year(latest)]
    selected = [latest]
    if older:
        selected.append(random.Random(sample.index).choice(older))
    return selected


@hookimpl_for(PLATFORM)
def stacchip_normalize_item(platform, item, store, prefix):
    return copy_assets(item, [platform.asset_key(item, "red")], store, prefix)


def main() -> None:
    from stacchip_core.cli import env_job

    env_job(PLATFORM.name)
