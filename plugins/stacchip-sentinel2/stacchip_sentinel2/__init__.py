"""stacchip source plugin for Sentinel-2 L2A.

Statistics come from the Scene Classification Layer (SCL) at its native 20 m: cloud is
classes 1 (saturated/defective), 3 (cloud shadow), 8, 9 (cloud medium/high probability)
and 10 (thin cirrus); nodata is class 0. Asset keys of Earth Search (``red``, ``scl``)
and Planetary Computer (``B04``, ``SCL``) both resolve.
"""

from __future__ import annotations

from stacchip_core import Band, ChipStats, Platform, class_mask, hookimpl

NAME = "sentinel-2-l2a"
SCL_CLOUD_CLASSES = (1, 3, 8, 9, 10)
SCL_NODATA_CLASS = 0

PLATFORM = Platform(
    name=NAME,
    collections=("sentinel-2-l2a", "sentinel-2-c1-l2a"),
    bands=(
        Band("blue", ("B02",)),
        Band("green", ("B03",)),
        Band("red", ("B04",)),
        Band("rededge1", ("B05",)),
        Band("rededge2", ("B06",)),
        Band("rededge3", ("B07",)),
        Band("nir", ("B08",)),
        Band("nir08", ("B8A",)),
        Band("swir16", ("B11",)),
        Band("swir22", ("B12",)),
    ),
    aux=(Band("scl", ("SCL",)),),
    nodata=0,
    chip_size=256,
    description="Sentinel-2 L2A surface reflectance, 10/20 m bands, SCL cloud mask",
)


@hookimpl
def stacchip_platforms():
    return [PLATFORM]


@hookimpl
def stacchip_chip_stats(platform, grid, read_asset):
    if platform.name != NAME:
        return None
    scl = read_asset("scl")
    return ChipStats(
        cloud=grid.chip_fractions(class_mask(scl.data, SCL_CLOUD_CLASSES), scl.factor),
        nodata=grid.chip_fractions(scl.data == SCL_NODATA_CLASS, scl.factor),
    )
