"""stacchip source plugin for Landsat 8/9 Collection 2, Level 1 and Level 2 surface reflectance.

Statistics come from ``qa_pixel`` bit flags: nodata is bit 0 (fill); cloud is bit 1
(dilated cloud), bit 3 (cloud) or bit 4 (cloud shadow).
"""

from __future__ import annotations

from stacchip_core import Band, ChipStats, Platform, bit_mask, hookimpl

QA_FILL_BIT = 0
QA_CLOUD_BITS = (1, 3, 4)

_BANDS = (
    Band("blue", ("B2",)),
    Band("green", ("B3",)),
    Band("red", ("B4",)),
    Band("nir08", ("B5",)),
    Band("swir16", ("B6",)),
    Band("swir22", ("B7",)),
)
_QA = (Band("qa_pixel", ("QA_PIXEL",)),)

L1 = Platform(
    name="landsat-c2l1",
    collections=("landsat-c2l1", "landsat-c2-l1"),
    bands=_BANDS,
    aux=_QA,
    nodata=0,
    description="Landsat 8/9 Collection 2 Level 1, 30 m",
)
L2 = Platform(
    name="landsat-c2l2-sr",
    collections=("landsat-c2l2-sr", "landsat-c2-l2"),
    bands=_BANDS,
    aux=_QA,
    nodata=0,
    description="Landsat 8/9 Collection 2 Level 2 surface reflectance, 30 m",
)
NAMES = {L1.name, L2.name}


@hookimpl
def stacchip_platforms():
    return [L1, L2]


@hookimpl
def stacchip_chip_stats(platform, grid, read_asset):
    if platform.name not in NAMES:
        return None
    qa = read_asset("qa_pixel")
    return ChipStats(
        cloud=grid.chip_fractions(bit_mask(qa.data, QA_CLOUD_BITS), qa.factor),
        nodata=grid.chip_fractions(bit_mask(qa.data, (QA_FILL_BIT,)), qa.factor),
    )
