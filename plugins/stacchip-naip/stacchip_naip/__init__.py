"""stacchip source plugin for NAIP aerial imagery (USDA), one 4-band asset.

NAIP has no cloud mask and no nodata value: every chip gets 0 for both.
"""

from __future__ import annotations

from stacchip_core import Band, ChipStats, Platform, hookimpl

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
)


@hookimpl
def stacchip_platforms():
    return [PLATFORM]


@hookimpl
def stacchip_chip_stats(platform, grid):
    if platform.name != PLATFORM.name:
        return None
    return ChipStats.zeros((grid.y_size, grid.x_size))
