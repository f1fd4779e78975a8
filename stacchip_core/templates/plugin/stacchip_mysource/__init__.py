"""stacchip source plugin for the ``mysource`` platform.

Four hooks make a source that ``stacchip index`` and ``stacchip process`` can run:
the platform's declaration, per-chip statistics from its quality layer, the items a
processing job selects for one sample, and what such a job copies into its bucket.
Everything comes from ``stacchip_core.plugin_api``, the public plugin API.
"""

from __future__ import annotations

# --8<-- [start:imports]
from stacchip_core.plugin_api import (
    Band,
    ChipStats,
    Platform,
    class_mask,
    copy_assets,
    env_job,
    hookimpl,
    hookimpl_for,
)

# --8<-- [end:imports]
# --8<-- [start:constants]
COLLECTION = "mysource-l2"
MASK_CLOUD_CLASSES = (2, 3)  # values of the quality layer that count as cloud
MASK_NODATA = 0  # the quality layer's value where the scene has no data
MAX_CLOUD_COVER = 75  # items cloudier than this (eo:cloud_cover, percent) are not selected
ITEMS_PER_SAMPLE = 2
# --8<-- [end:constants]

# --8<-- [start:platform]
PLATFORM = Platform(
    name="mysource",
    collections=(COLLECTION,),
    # model bands in canonical order; aliases are the asset keys other catalogs use
    bands=(
        Band("red", ("B04",)),
        Band("green", ("B03",)),
        Band("blue", ("B02",)),
        Band("nir", ("B08",)),
    ),
    aux=(Band("mask", ("MASK", "qa")),),  # read for statistics, not model input
    nodata=0,
    chip_size=256,
    description="an example source: four bands and a classified quality layer",
)


@hookimpl
def stacchip_platforms():
    """The platforms this plugin adds.

    Returns:
        The one platform.
    """
    return [PLATFORM]
# --8<-- [end:platform]


# --8<-- [start:stats]
@hookimpl_for(PLATFORM)
def stacchip_chip_stats(grid, read_asset):
    """Cloud and nodata fractions of every chip of an item, from its quality layer.

    The layer is read at its native resolution, in strips, and reduced per chip as it is
    read.

    Args:
        grid: The item's chip grid.
        read_asset: Reads a band of the item reduced per chip.

    Returns:
        The fractions, (grid.y_size, grid.x_size) each.
    """
    fractions = read_asset.chip_fractions(
        "mask",
        {
            "cloud": lambda mask: class_mask(mask, MASK_CLOUD_CLASSES),
            "nodata": lambda mask: mask == MASK_NODATA,
        },
    )
    return ChipStats(cloud=fractions["cloud"], nodata=fractions["nodata"])
# --8<-- [end:stats]


# --8<-- [start:select]
@hookimpl_for(PLATFORM)
def stacchip_select_items(sample, catalog):
    """The least cloudy items over the sample's location.

    Args:
        sample: The sample location.
        catalog: The catalog to search.

    Returns:
        At most ``ITEMS_PER_SAMPLE`` items, the least cloudy first.
    """
    found = catalog.search(collections=[COLLECTION], intersects=sample.geometry)
    items = [i for i in found.items() if i.properties.get("eo:cloud_cover", 0) <= MAX_CLOUD_COVER]
    items.sort(key=lambda i: (i.properties.get("eo:cloud_cover", 0), i.id))
    return items[:ITEMS_PER_SAMPLE]
# --8<-- [end:select]


# --8<-- [start:normalize]
@hookimpl_for(PLATFORM)
def stacchip_normalize_item(platform, item, store, prefix):
    """Copy the bands and the quality layer into the bucket (a rerun copies nothing twice).

    Args:
        platform: The item's platform.
        item: The selected item.
        store: The target bucket.
        prefix: The key prefix of the copies.

    Returns:
        The item with its hrefs pointing at the copies.
    """
    keys = [platform.asset_key(item, name) for name in platform.band_names + ["mask"]]
    return copy_assets(item, [k for k in keys if k], store, prefix)
# --8<-- [end:normalize]


# --8<-- [start:main]
def main() -> None:
    """``stacchip-mysource``: one processing job configured by environment variables
    (AWS_BATCH_JOB_ARRAY_INDEX, STACCHIP_SAMPLE_SOURCE, STACCHIP_BUCKET, STACCHIP_STAC_API)."""
    env_job(PLATFORM.name)
# --8<-- [end:main]
