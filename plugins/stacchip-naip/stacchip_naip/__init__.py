"""stacchip source plugin for NAIP aerial imagery (USDA), one 4-band asset.

NAIP has no cloud mask and no nodata value: every chip gets 0 for both.

Sample selection: the items intersecting the centroid of the sample geometry, sorted by
``naip:year``; the latest, plus one older item drawn at random (seeded by the sample index).

Planetary Computer serves NAIP from Azure blob storage that needs a SAS token: stacchip signs
such hrefs just before they are read or copied
(``stacchip_core.builtin_plugins.planetary_computer``; install
``'stacchip-naip[planetary-computer]'``).
"""

from __future__ import annotations

import random

from stacchip_core.plugin_api import (
    AssetError,
    Band,
    ChipStats,
    Platform,
    copy_assets,
    env_job,
    hookimpl,
    hookimpl_for,
)

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
    """The platforms this plugin adds.

    Returns:
        NAIP.
    """
    return [PLATFORM]


@hookimpl_for(PLATFORM)
def stacchip_chip_stats(platform, grid):
    """NAIP has no quality layer: no cloud and no nodata in any chip.

    Args:
        platform: NAIP.
        grid: The item's chip grid.

    Returns:
        Zeros per chip.
    """
    return ChipStats.zeros((grid.y_size, grid.x_size))


def _year(item) -> int:
    return int(item.properties.get("naip:year") or item.datetime.year)


@hookimpl_for(PLATFORM)
def stacchip_select_items(platform, sample, catalog):
    """The latest item at the sample's point, and one older year's item drawn by the sample.

    Args:
        platform: NAIP.
        sample: A point (or any geometry: its centroid is searched).
        catalog: The STAC API to search.

    Returns:
        At most two items, latest first.
    """
    found = list(
        catalog.search(collections=[COLLECTION], intersects=sample.geometry.centroid).items()
    )
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
    """Copy the four-band image into the store.

    Args:
        platform: NAIP.
        item: The selected item.
        store: The target store.
        prefix: The key prefix of the copy.

    Returns:
        The item with its href pointing at the copy.

    Raises:
        AssetError: The item has no image asset.
    """
    key = platform.asset_key(item, "red")
    if key is None:  # one typed error, not a KeyError from the copy
        raise AssetError(f"item {item.id!r} has no image asset (its assets: {sorted(item.assets)})")
    return copy_assets(item, [key], store, prefix)


def main() -> None:
    """``stacchip-naip``: the original console script, configured by environment."""
    env_job(PLATFORM.name)
