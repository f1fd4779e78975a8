"""stacchip source plugin for LINZ aerial imagery (New Zealand), RGB.

No cloud mask; nodata is every pixel that is 0 in band 1, counted at native resolution.

Sample N is a catalog prefix of the source bucket (``PREFIXES``, the regional collections
of the original processor, or a ``prefix`` column of the sample source). Its ``.tiff``
objects are listed, half of them sampled (at least 10, at most 2000, seed 42), and each is
resampled to 0.30 m (bilinear), its alpha band dropped, written as a COG into the target
store and described by a new item (rio-stac, projection extension) whose datetime is the
source item's ``start_datetime``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from stacchip_core.plugin_api import (
    Band,
    ChipStats,
    Platform,
    SampleError,
    apply_gdal_options,
    env_job,
    fetch,
    hookimpl,
    hookimpl_for,
    open_store,
    scratch_dir,
    source_s3_endpoint,
    write_cog,
)

SOURCE_ENV = "STACCHIP_LINZ_SOURCE"
SOURCE = "s3://nz-imagery"
TARGET_RESOLUTION = 0.3
SAMPLE_FRACTION, SAMPLE_MIN, SAMPLE_MAX, SAMPLE_SEED = 0.5, 10, 2000, 42
PREFIXES = [
    "auckland/auckland_2022_0.075m/",
    "wellington/wellington_2021_0.075m/",
    "wellington/wellington_2021_0.3m/",
    "bay-of-plenty/bay-of-plenty_2023_0.1m/",
    "bay-of-plenty/tauranga_2022_0.1m/",
    "bay-of-plenty/tauranga-winter_2022_0.1m/",
    "canterbury/canterbury_2023_0.3m/",
    "canterbury/ashburton_2023_0.1m/",
    "canterbury/hurunui_2023_0.075m/",
    "canterbury/timaru_2022-2023_0.1m/",
    "canterbury/selwyn_2022-2023_0.075m/",
    "gisborne/gisborne_2023_0.075m/",
    "hawkes-bay/hawkes-bay_2022_0.05m/",
    "hawkes-bay/napier_2017-2018_0.05m/",
    "hawkes-bay/wairoa_2014-2015_0.1m/",
    "manawatu-whanganui/manawatu-whanganui_2021-2022_0.3m/",
    "manawatu-whanganui/palmerston-north_2022_0.125m/",
    "manawatu-whanganui/rangitikei_2021_0.125m/",
    "manawatu-whanganui/tararua_2024_0.1m/",
    "manawatu-whanganui/whanganui_2022_0.075m/",
    "marlborough/marlborough_2023_0.075m/",
    "nelson/nelson_2022_0.075m/",
    "northland/northland_2016_0.1m/",
    "otago/queenstown_2021_0.1m/",
    "otago/otago_2018_0.1m/",
    "otago/dunedin_2018-2019_0.1m/",
    "southland/southland_2023_0.1m/",
    "southland/invercargill_2022_0.05m/",
    "taranaki/taranaki_2022_0.05m/",
    "taranaki/new-plymouth_2017_0.1m/",
    "tasman/tasman_2023_0.075m/",
    "waikato/hamilton_2023_0.05m/",
    "waikato/otorohanga_2021_0.1m/",
    "waikato/taupo_2023_0.075m/",
    "waikato/thames-coromandel_2021_0.1m/",
    "waikato/waikato_2021_0.1m/",
    "waikato/waipa_2021_0.1m/",
    "west-coast/buller_2020_0.2m/",
    "west-coast/west-coast_2016_0.1m/",
]

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
    extra={"samples": len(PREFIXES)},  # --all: every regional prefix
)


@hookimpl
def stacchip_platforms():
    """The platforms this plugin adds.

    Returns:
        LINZ aerial imagery.
    """
    return [PLATFORM]


@hookimpl_for(PLATFORM)
def stacchip_chip_stats(platform, grid, read_asset):
    """LINZ imagery has no cloud mask: nodata where the red band is 0, no cloud.

    Args:
        platform: LINZ.
        grid: The item's chip grid.
        read_asset: Reads the red band reduced per chip.

    Returns:
        Zero cloud and the nodata fraction per chip.
    """
    nodata = read_asset.chip_fractions("red", {"nodata": lambda band1: band1 == 0})["nodata"]
    return ChipStats(cloud=np.zeros_like(nodata), nodata=nodata)


def sample_size(n: int) -> int:
    """How many of a prefix's tiles are processed.

    Args:
        n: The prefix's tiles.

    Returns:
        ``SAMPLE_FRACTION`` of them, at least ``SAMPLE_MIN`` and at most ``SAMPLE_MAX`` (and
        never more than ``n``).
    """
    return min(n, max(SAMPLE_MIN, min(int(n * SAMPLE_FRACTION), SAMPLE_MAX)))


@hookimpl_for(PLATFORM)
def stacchip_select_items(platform, sample):
    """A seeded draw of the tiles under the sample's prefix of the LINZ bucket.

    Args:
        platform: LINZ.
        sample: A ``prefix`` attribute, else the sample's number picks one of ``PREFIXES``.

    Returns:
        One item per drawn tile, its ``visual`` asset the tile.

    Raises:
        SampleError: A sample number past the last of ``PREFIXES``.
    """
    prefix = sample.properties.get("prefix")
    if prefix is None:
        if sample.index >= len(PREFIXES):
            raise SampleError(
                f"sample {sample.index} is out of range: there are {len(PREFIXES)} LINZ prefixes"
            )
        prefix = PREFIXES[sample.index]
    import pystac  # here: every reader process loads this plugin

    source = open_store(os.environ.get(SOURCE_ENV, SOURCE), endpoint=source_s3_endpoint())
    tiffs = [key for key in source.list(prefix, ".tiff")]
    chosen = random.Random(SAMPLE_SEED).sample(tiffs, sample_size(len(tiffs)))
    items = []
    for key in chosen:
        item = pystac.Item.from_dict(json.loads(source.read_bytes(key[: -len(".tiff")] + ".json")))
        item.assets = {
            "visual": pystac.Asset(source.url(key), media_type=pystac.MediaType.COG, roles=["data"])
        }
        items.append(item)
    return items


def resample(href: str, path: Path, resolution: float = TARGET_RESOLUTION) -> None:
    """Resample a LINZ tile to ``resolution`` (bilinear), keep RGB, write a COG.

    Args:
        href: The tile (a path or URL rasterio opens).
        path: The COG to write.
        resolution: The target resolution in the tile's CRS units (metres).
    """
    import rasterio  # here, not at import: every reader process loads this plugin
    from rasterio.enums import Resampling

    apply_gdal_options()
    with rasterio.open(href) as src:
        scale = abs(src.transform.a) / resolution
        height, width = max(1, round(src.height * scale)), max(1, round(src.width * scale))
        data = src.read([1, 2, 3], out_shape=(3, height, width), resampling=Resampling.bilinear)
        transform = src.transform @ src.transform.scale(src.width / width, src.height / height)
        write_cog(path, data, transform, src.crs.to_wkt(), nodata=0)


@hookimpl_for(PLATFORM)
def stacchip_normalize_item(platform, item, store, prefix):
    """Resample the tile to ``TARGET_RESOLUTION`` into the store, with a new item for it.

    Args:
        platform: LINZ.
        item: The selected item.
        store: The target store.
        prefix: The key prefix of the copy.

    Returns:
        A new item (rio-stac, with projection metadata) whose ``visual`` asset is the copy.
    """
    import pystac
    from rio_stac import create_stac_item

    source = item.assets["visual"].href
    key = f"{prefix}/{Path(urlparse(source).path).name}"
    with scratch_dir("linz") as tmp:  # a rerun removes what a killed job left
        local = tmp / "visual.tiff"
        if store.exists(key):
            href = store.url(key)  # a rerun: resampled already
        else:
            # fetched first: the source bucket may sit behind another endpoint than the target
            resample(str(fetch(source, tmp)), local)
            href = str(local)
        new = create_stac_item(
            href,
            input_datetime=item.common_metadata.start_datetime,
            id=item.id,
            asset_name="visual",
            asset_media_type=pystac.MediaType.COG,
            with_proj=True,
        )
        if not store.exists(key):
            store.put_file(key, local)
    new.assets["visual"].href = store.url(key)
    new.clear_links()
    return new


def main() -> None:
    """``stacchip-linz``: the original console script, configured by environment."""
    env_job(PLATFORM.name)
