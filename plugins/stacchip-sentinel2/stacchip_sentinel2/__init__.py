"""stacchip source plugin for Sentinel-2 L2A.

Statistics come from the Scene Classification Layer (SCL) at its native 20 m, with the
classes of the Sentinel-2 L2A product definition (ESA, Sen2Cor Product Specification
Table "Scene Classification values"; README "Sentinel-2 classes"):

====  ==========================  =============================
SCL   class                       stacchip
====  ==========================  =============================
0     no data                     nodata
1     saturated or defective      nodata (invalid; 0.1.38: cloud)
2     dark area / cast shadow     clear (topography, not cloud)
3     cloud shadow                cloud
4-7   vegetation, bare, water,    clear
      unclassified
8, 9  cloud medium/high prob.     cloud
10    thin cirrus                 cloud
11    snow or ice                 clear
====  ==========================  =============================

Asset keys of Earth Search (``red``, ``scl``), Planetary Computer (``B04``, ``SCL``) and
Copernicus Data Space (``B04_10m``, ``SCL_20m``) all resolve.

Sample selection (the original processor's behaviour; every number is a parameter below):
samples are MGRS tiles (column ``name``); seeded by the sample index, two random years in
2018-2023; per quarter, the least cloudy item of the tile with at most 20 % nodata pixels,
skipped when its ``eo:cloud_cover`` is above ``MAX_CLOUD_COVER``.
"""

from __future__ import annotations

import random

from stacchip_core.plugin_api import (
    Band,
    ChipStats,
    ClassMask,
    Platform,
    copy_assets,
    env_job,
    hookimpl,
    hookimpl_for,
)

NAME = "sentinel-2-l2a"
# ESA L2A SCL: 3 cloud shadows, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus
SCL_CLOUD_CLASSES = (3, 8, 9, 10)
# 0 no data; 1 saturated or defective: the pixel holds no valid
# measurement (0.1.38 counted it as cloud)
SCL_NODATA_CLASSES = (0, 1)

STAC_API = "https://earth-search.aws.element84.com/v1"
COLLECTION = "sentinel-2-l2a"
YEARS = range(2018, 2024)  # 2018-2023 inclusive
N_YEARS = 2
QUARTERS = (("01-01", "03-31"), ("04-01", "06-30"), ("07-01", "09-30"), ("10-01", "12-31"))
MAX_NODATA_PIXEL_PERCENTAGE = 20
# eo:cloud_cover is a percentage (0-100). stacchip 0.1 compared it with 0.75, which kept
# only scenes with less than 0.75 % cloud; the per-chip cloud fraction in the index is the
# right place to filter chips, so scenes are kept up to 75 % cloud.
MAX_CLOUD_COVER = 75.0

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
    # the 60 m bands, not model input: named so that "coastal" finds B01 on every catalog
    named=(Band("coastal", ("B01",)), Band("nir09", ("B09",))),
    nodata=0,
    chip_size=256,
    description="Sentinel-2 L2A surface reflectance, 10/20 m bands, SCL cloud mask",
    extra={"stac_api": STAC_API},
)


@hookimpl
def stacchip_platforms():
    """The platforms this plugin adds.

    Returns:
        Sentinel-2 L2A.
    """
    return [PLATFORM]


# callables like class_mask; the indexer's reader evaluates them into reused arrays, a run
# of consecutive classes in one comparison (SCL_NODATA_CLASSES: scl <= 1)
CLOUD_MASK = ClassMask(SCL_CLOUD_CLASSES)
NODATA_MASK = ClassMask(SCL_NODATA_CLASSES)


@hookimpl_for(NAME)
def stacchip_chip_stats(platform, grid, read_asset):
    """Cloud and nodata fractions from the SCL layer at its native 20 m.

    Args:
        platform: Sentinel-2 L2A.
        grid: The item's chip grid.
        read_asset: Reads the SCL layer reduced per chip.

    Returns:
        The fractions of ``SCL_CLOUD_CLASSES`` and ``SCL_NODATA_CLASSES`` per chip.
    """
    fractions = read_asset.chip_fractions("scl", {"cloud": CLOUD_MASK, "nodata": NODATA_MASK})
    return ChipStats(cloud=fractions["cloud"], nodata=fractions["nodata"])


def quarters(year: int) -> list[str]:
    """The year's four quarters as STAC datetime intervals.

    Args:
        year: The year.

    Returns:
        ``YYYY-MM-DD/YYYY-MM-DD`` intervals, January first.
    """
    return [f"{year}-{start}/{year}-{end}" for start, end in QUARTERS]


@hookimpl_for(NAME)
def stacchip_select_items(platform, sample, catalog):
    """Per quarter of two seeded years, the least cloudy item of the sample's MGRS tile.

    Args:
        platform: Sentinel-2 L2A.
        sample: An MGRS tile: its polygon and the tile's ``name`` (``20HNJ``).
        catalog: The STAC API to search.

    Returns:
        At most eight items, in date order.

    Raises:
        SampleAttributeError: The sample has no ``name`` attribute.
    """
    tile = sample.properties["name"]
    years = sorted(random.Random(sample.index).sample(list(YEARS), N_YEARS))
    selected = []
    for year in years:
        for interval in quarters(year):
            found = list(catalog.search(
                collections=[COLLECTION],
                datetime=interval,
                intersects=sample.geometry,
                sortby="properties.eo:cloud_cover",
                query={"grid:code": {"eq": f"MGRS-{tile}"},
                       "s2:nodata_pixel_percentage": {"lte": MAX_NODATA_PIXEL_PERCENTAGE}},
                max_items=1,
            ).items())
            if found and found[0].properties["eo:cloud_cover"] <= MAX_CLOUD_COVER:
                selected.append(found[0])
    return selected


@hookimpl_for(NAME)
def stacchip_normalize_item(platform, item, store, prefix):
    """Copy the ten bands and SCL into the store.

    Args:
        platform: Sentinel-2 L2A.
        item: The selected item.
        store: The target store.
        prefix: The key prefix of the copies.

    Returns:
        The item with its hrefs pointing at the copies.
    """
    keys = list(platform.asset_keys(item).values()) + [platform.asset_key(item, "scl")]
    return copy_assets(item, [k for k in keys if k], store, prefix)


def main() -> None:
    """``stacchip-sentinel-2``: the original console script, configured by environment."""
    env_job(NAME, ("STACCHIP_MGRS_SOURCE", "STACCHIP_SAMPLE_SOURCE"))
