"""stacchip source plugin for LINZ aerial imagery (New Zealand), RGB.

No cloud mask; nodata is every pixel that is 0 in band 1, counted at native resolution.
"""

from __future__ import annotations

import numpy as np

from stacchip_core import Band, ChipStats, Platform, hookimpl

_ALIASES = ("image", "asset")
PLATFORM = Platform(
    name="linz",
    collections=(),
    bands=(
        Band("red", _ALIASES, index=1, asset="visual"),
        Band("green", _ALIASES, index=2, asset="visual"),
        Band("blue", _ALIASES, index=3, asset="visual"),
    ),
    nodata=0,
    description="LINZ aerial imagery resampled to 0.30 m, RGB",
)


@hookimpl
def stacchip_platforms():
    return [PLATFORM]


@hookimpl
def stacchip_chip_stats(platform, grid, read_asset):
    if platform.name != PLATFORM.name:
        return None
    band1 = read_asset("red")
    nodata = grid.chip_fractions(band1.data == 0, band1.factor)
    return ChipStats(cloud=np.zeros_like(nodata), nodata=nodata)
