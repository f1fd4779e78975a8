"""stacchip source plugin for Landsat 8/9 Collection 2, Level 1 and Level 2 surface reflectance.

Statistics come from the ``qa_pixel`` bit flags of Collection 2 (USGS Landsat 8-9 C2 Level 2
Science Product Guide LSDS-1619, Table 6-3; Landsat 4-7: LSDS-1618; USGS "Landsat Collection 2
Quality Assessment Bands";
README "Landsat classes"):

===  ===================  ============================  =================================
bit  flag                 stacchip                      sensors
===  ===================  ============================  =================================
0    fill                 nodata                        all (ETM+ SLC-off gaps are fill)
1    dilated cloud        cloud                         OLI/TIRS, TM, ETM+ (not MSS)
2    cirrus               cloud (0.1.38: ignored)       OLI/TIRS only; unused (0) elsewhere
3    cloud                cloud                         all, MSS included
4    cloud shadow         cloud                         OLI/TIRS, TM, ETM+ (not MSS)
5    snow                 clear                         OLI/TIRS, TM, ETM+
6    clear                clear                         -
7    water                clear                         -
===  ===================  ============================  =================================

Bits 8-15 are confidences (cloud, shadow, snow, cirrus); the flags above already encode the
high-confidence decisions, so they are not read again.

Sample selection: the centroid of the sample geometry; seeded by the sample index, one
random year in 2018-2023; per quarter the least cloudy LANDSAT_8 or LANDSAT_9 item of the
platform's collection with ``eo:cloud_cover`` at most 75. Assets are copied from their
``alternate.s3.href`` where the item has one (the requester-pays bucket on AWS).
"""

from __future__ import annotations

import random

from stacchip_core.plugin_api import (
    Band,
    ChipStats,
    Platform,
    bit_mask,
    copy_assets,
    env_job,
    hookimpl,
    hookimpl_for,
)

QA_FILL_BIT = 0
# 1 dilated cloud, 2 cirrus (OLI only, high-confidence cirrus;
# 0.1.38 ignored it), 3 cloud, 4 cloud shadow
QA_CLOUD_BITS = (1, 2, 3, 4)

STAC_API = "https://landsatlook.usgs.gov/stac-server"
YEARS = range(2018, 2024)
QUARTERS = (("01-01", "03-31"), ("04-01", "06-30"), ("07-01", "09-30"), ("10-01", "12-31"))
SATELLITES = ["LANDSAT_8", "LANDSAT_9"]
MAX_CLOUD_COVER = 75.0

# aliases: USGS/Earth Search keys (B2...) and Geoscience Australia ARD keys (nbart_blue...)
_BANDS = (
    Band("blue", ("B2", "nbart_blue")),
    Band("green", ("B3", "nbart_green")),
    Band("red", ("B4", "nbart_red")),
    Band("nir08", ("B5", "nbart_nir")),
    Band("swir16", ("B6", "nbart_swir_1")),
    Band("swir22", ("B7", "nbart_swir_2")),
)
_QA = (Band("qa_pixel", ("QA_PIXEL",)),)

L1 = Platform(
    name="landsat-c2l1",
    collections=("landsat-c2l1", "landsat-c2-l1"),
    # pan is 15 m: an L1 item's chip grid is the 15 m grid, the 30 m bands expand 2x; where pan
    # is offset by 7.5 m from them (GA ARD) they are resampled onto it (core.resample)
    bands=_BANDS
    + (
        Band("pan", ("B8", "nbart_panchromatic")),
        Band("lwir", ("lwir11", "B10")),
        Band("lwir_high", ("lwir12", "B11")),
    ),
    aux=_QA,
    nodata=0,
    description="Landsat 8/9 Collection 2 Level 1",
    extra={"stac_api": STAC_API},
)
L2 = Platform(
    name="landsat-c2l2-sr",
    collections=("landsat-c2l2-sr", "landsat-c2-l2"),
    bands=_BANDS,
    aux=_QA,
    nodata=0,
    description="Landsat 8/9 Collection 2 Level 2 surface reflectance, 30 m",
    extra={"stac_api": STAC_API},
)
NAMES = {L1.name, L2.name}


@hookimpl
def stacchip_platforms():
    """The platforms this plugin adds.

    Returns:
        Landsat Collection 2 Level-1 and Level-2.
    """
    return [L1, L2]


@hookimpl_for(*NAMES)
def stacchip_chip_stats(platform, grid, read_asset):
    """Cloud and nodata fractions from the QA_PIXEL bit flags.

    Args:
        platform: A Landsat platform.
        grid: The item's chip grid.
        read_asset: Reads the QA_PIXEL layer reduced per chip.

    Returns:
        The fractions of ``QA_CLOUD_BITS`` and the fill bit per chip.
    """
    # strip by strip: decoding overlaps with the bit tests, the 69 Mpx band is never held whole
    fractions = read_asset.chip_fractions("qa_pixel", {
        "cloud": lambda qa: bit_mask(qa, QA_CLOUD_BITS),
        "nodata": lambda qa: bit_mask(qa, (QA_FILL_BIT,)),
    })
    return ChipStats(cloud=fractions["cloud"], nodata=fractions["nodata"])


@hookimpl_for(*NAMES)
def stacchip_select_items(platform, sample, catalog):
    """Per quarter of a seeded year, the least cloudy Landsat 8 or 9 item at the sample.

    Args:
        platform: A Landsat platform (its name is the collection searched).
        sample: A point (or any geometry: its centroid is searched).
        catalog: The STAC API to search.

    Returns:
        At most four items, in date order.
    """
    point = sample.geometry.centroid
    year = random.Random(sample.index).choice(list(YEARS))
    selected = []
    for start, end in QUARTERS:
        # one search per satellite: the query extension has no "in" (pgstac refuses it)
        candidates = []
        for satellite in SATELLITES:
            candidates += list(catalog.search(
                collections=[platform.name],
                datetime=f"{year}-{start}/{year}-{end}",
                intersects=point,
                sortby="properties.eo:cloud_cover",
                query={"platform": {"eq": satellite}, "eo:cloud_cover": {"lte": MAX_CLOUD_COVER}},
                max_items=1,
            ).items())
        if candidates:
            selected.append(min(candidates, key=lambda item: item.properties["eo:cloud_cover"]))
    return selected


@hookimpl_for(*NAMES)
def stacchip_normalize_item(platform, item, store, prefix):
    """Copy the bands and QA_PIXEL into the store, from their ``s3`` alternates when the
    item has them.

    Args:
        platform: A Landsat platform.
        item: The selected item.
        store: The target store.
        prefix: The key prefix of the copies.

    Returns:
        The item with its hrefs pointing at the copies.
    """
    keys = [
        k
        for k in list(platform.asset_keys(item).values()) + [platform.asset_key(item, "qa_pixel")]
        if k
    ]
    alternates = {
        k: item.assets[k].extra_fields.get("alternate", {}).get("s3", {}).get("href") for k in keys
    }
    return copy_assets(item, keys, store, prefix, hrefs={k: v for k, v in alternates.items() if v})


def main_l2() -> None:
    """``stacchip-landsat-l2``: the original console script, configured by environment."""
    env_job(L2.name)


def main_l1() -> None:
    """``stacchip-landsat-l1``: the original console script, configured by environment."""
    env_job(L1.name)
