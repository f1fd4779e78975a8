"""stacchip source plugin for MODIS surface reflectance 8-day composites on the sinusoidal
grid: platform ``modis`` (``modis-09A1-061``, 500 m, Terra MOD09A1 and Aqua MYD09A1) and
platform ``modis-09q1`` (``modis-09Q1-061``, 250 m, MOD09Q1 and MYD09Q1).

09Q1 (the MOD09 Collection 6.1 file specification, and the ``QA_bitmap_index`` attributes
of the MOD09Q1/MYD09Q1 files): bands ``sur_refl_b01`` (red) and ``sur_refl_b02`` (NIR), int16,
scale 0.0001, fill -28672, on the 250 m grid (4800 x 4800 pixels of 231.656 m a tile).
``sur_refl_state_250m`` (uint16, fill 65535, valid 0-57343) carries the same bit table as the
500 m state below (it is the 500 m state of the same composite), so clouds are decoded
exactly as for 09A1. ``sur_refl_qc_250m`` (uint16, fill 65535, valid 0-32767) is: bits 0-1
MODLAND QA (00 ideal quality, 01 less than ideal, 10 not produced due to cloud effects, 11 not
produced for other reasons), 2-3 cloud state (not populated in 09Q1: LP DAAC's QA note directs
users to the state flags), 4-7 and 8-11 band 1 and band 2 data quality (0000 highest, 1111 not
processed due to deep ocean or clouds), 12 atmospheric correction performed, 13 adjacency
correction performed, 14 different orbit from 500 m, 15 spare. Items without the state layer
take cloud from the QC's MODLAND bits (10), as 09A1 items without state do.

Bands: ``sur_refl_b01`` .. ``sur_refl_b07`` (int16, scale 0.0001, fill -28672), in the
product's order. Aux layers: ``sur_refl_state_500m`` (uint16 bit field, fill 65535) and
``sur_refl_qc_500m`` (uint32 band quality).

Statistics (bit numbers as in the product definition: the MOD09 Collection 6.1 User's Guide,
Vermote, Roger & Ray, and the ``QA_bitmap_index`` attribute every MOD09A1 file carries for
``sur_refl_state_500m``):

=========  ===================================================================
state bit  meaning
=========  ===================================================================
0-1        cloud state: 00 clear, 01 cloudy, 10 mixed, 11 not set (assumed clear)
2          cloud shadow (1 = yes)
3-5        land/water flag
6-7        aerosol quantity
8-9        cirrus detected: 00 none, 01 small, 10 average, 11 high
10         internal cloud algorithm flag (1 = cloud)
11         internal fire algorithm flag
12         MOD35 snow/ice flag
13         pixel is adjacent to cloud
14         salt pan
15         internal snow mask
=========  ===================================================================

A pixel is cloud when its cloud state is cloudy (01) or mixed (10), or it is flagged as cloud
shadow (bit 2) or cloud by the internal algorithm (bit 10); the fill value 65535 is never
cloud. A pixel is nodata when ``sur_refl_b01`` holds the fill value -28672. Items without the
state layer (those written by stacchip 0.1, which kept only the QC band) take cloud from the
QC band's MODLAND bits 0-1 instead: 10 = "corrected product not produced due to cloud
effects". stacchip 0.1 tested bit 0 set and bit 1 clear, which is 01, "produced at less than
ideal quality", and called that cloud.

Sample selection (the original processor's behaviour; constants below): sample N is the Nth
sinusoidal tile (h, v) of ``TILES``, tiles chosen to be away from the dateline cut (or the
``h``/``v`` columns of a sample source); for each year of ``YEARS``, ``MONTHS_PER_YEAR``
months drawn with the seed ``h * v * year``; per month the first item of the tile in the
catalog's default order (newest first), found with ``modis:horizontal-tile`` and
``modis:vertical-tile`` ``eq`` queries.

Normalization: the bands and both quality layers are copied as they are, **in the sinusoidal
CRS** (stacchip 0.1 reprojected them to EPSG:3857, resampling every pixel by nearest
neighbour and stretching them towards the poles). The chip grid is exact in the sinusoidal
metres of ``proj:wkt2`` and chip footprints are projected to lon/lat corner by corner, so
nothing is gained by reprojecting. The item's ``datetime`` is set to its ``end_datetime`` as
stacchip 0.1 did (composites have a date range).
"""

from __future__ import annotations

import calendar
import logging
import random

import numpy as np

from stacchip_core.plugin_api import (
    AssetError,
    Band,
    ChipStats,
    ConfigError,
    Platform,
    SampleError,
    copy_assets,
    env_job,
    hookimpl,
    hookimpl_for,
)

log = logging.getLogger(__name__)

NAME = "modis"
STAC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
COLLECTION = "modis-09A1-061"
FILL = -28672  # sur_refl_b01..b07
STATE = "sur_refl_state_500m"
QC = "sur_refl_qc_500m"
STATE_FILL = 65535
CLOUD_STATES = (1, 2)  # bits 0-1: cloudy, mixed
SHADOW_BIT, INTERNAL_CLOUD_BIT = 2, 10
QC_CLOUD = 2  # QC bits 0-1 = 10: not produced due to cloud effects
YEARS = (2018, 2020, 2022, 2023)
MONTHS_PER_YEAR = 4

# sinusoidal grid tiles away from the dateline cut, the original processor's 233, by row v
_ROWS = {
    2: [*range(12, 24)],
    3: [9, *range(11, 16), *range(17, 27)],
    4: [8, *range(10, 15), *range(17, 29)],
    5: [*range(7, 13), *range(15, 22), *range(23, 31)],
    6: [3, *range(7, 12), *range(16, 32)],
    7: [3, *range(7, 12), *range(15, 34)],
    8: [1, 2, *range(8, 14), 16, *range(18, 24), *range(25, 35)],
    9: [*range(1, 5), *range(8, 15), 16, 19, *range(21, 24), 25, *range(27, 35)],
    10: [*range(2, 6), *range(10, 15), 17, *range(19, 24), *range(27, 34)],
    11: [*range(3, 7), 8, *range(10, 16), *range(19, 24), *range(27, 33)],
    12: [11, 12, 13, 16, 17, 19, 20, 24, *range(27, 31)],
    13: [12, 13, 17, 20, 21, 22, 28],
    14: [13, 14, 15, 16, 18, 22],
}
TILES: list[tuple[int, int]] = [
    (h, v) for v, hs in _ROWS.items() for h in hs
]  # (h, v), sample order

BAND_ALIASES = {1: ("B01", "red"), 2: ("B02", "nir08"), 3: ("B03", "blue"), 4: ("B04", "green"),
                5: ("B05",), 6: ("B06", "swir16"), 7: ("B07", "swir22")}
PLATFORM = Platform(
    name=NAME,
    collections=(COLLECTION,),
    bands=tuple(Band(f"sur_refl_b{i:02d}", aliases) for i, aliases in BAND_ALIASES.items()),
    aux=(Band(STATE, ("state",)), Band(QC, ("qc",))),
    nodata=FILL,
    chip_size=256,
    description=(
        "MODIS 8-day surface reflectance, 500 m, bands 1-7, sinusoidal grid, state-flag clouds"
    ),
    extra={"stac_api": STAC_API, "samples": len(TILES)},
)

NAME_250M = "modis-09q1"
COLLECTION_250M = "modis-09Q1-061"
STATE_250M = "sur_refl_state_250m"
QC_250M = "sur_refl_qc_250m"
PLATFORM_250M = Platform(
    name=NAME_250M,
    collections=(COLLECTION_250M,),
    bands=tuple(Band(f"sur_refl_b{i:02d}", BAND_ALIASES[i]) for i in (1, 2)),
    aux=(Band(STATE_250M, ("state",)), Band(QC_250M, ("qc",))),
    nodata=FILL,
    chip_size=256,
    description=(
        "MODIS 8-day surface reflectance, 250 m, bands 1-2, sinusoidal grid, state-flag clouds"
    ),
    extra={"stac_api": STAC_API, "samples": len(TILES)},
)


@hookimpl
def stacchip_platforms():
    """The platforms this plugin adds.

    Returns:
        MODIS 09A1 (500 m) and 09Q1 (250 m).
    """
    return [PLATFORM, PLATFORM_250M]


def state_cloud(state: np.ndarray) -> np.ndarray:
    """Cloud from the 500 m state flags (see the module docstring for the bit table).

    Args:
        state: The ``sur_refl_state_500m`` flags.

    Returns:
        A boolean mask, True where cloudy, mixed, shadowed or internally cloudy (not fill).
    """
    cloud_state = state & np.uint16(3)
    mask = (cloud_state == CLOUD_STATES[0]) | (cloud_state == CLOUD_STATES[1])
    mask |= (state & np.uint16((1 << SHADOW_BIT) | (1 << INTERNAL_CLOUD_BIT))) != 0
    mask &= state != STATE_FILL
    return mask


def qc_cloud(qc: np.ndarray) -> np.ndarray:
    """Cloud from the QC band's MODLAND bits 0-1 (10: not produced due to cloud effects).

    Args:
        qc: The QC band.

    Returns:
        A boolean mask, True where cloudy.
    """
    return (qc & np.asarray(3, dtype=qc.dtype)) == QC_CLOUD


@hookimpl_for(PLATFORM, PLATFORM_250M)
def stacchip_chip_stats(platform, item, read_asset):
    """Cloud from the state flags (or, without them, the QC band); nodata where band 1 is fill.

    Args:
        platform: A MODIS platform.
        item: The item (which of its quality layers it has).
        read_asset: Reads band 1 and a quality layer reduced per chip.

    Returns:
        The cloud and nodata fractions per chip.

    Raises:
        AssetError: The item has neither quality layer.
    """
    state, qc = (layer.name for layer in platform.aux)  # the 500 m or the 250 m layers
    nodata = read_asset.chip_fractions("sur_refl_b01", {"nodata": lambda b01: b01 == FILL})[
        "nodata"
    ]
    if platform.asset_key(item, state):
        cloud = read_asset.chip_fractions(state, {"cloud": state_cloud})["cloud"]
    elif platform.asset_key(item, qc):
        cloud = read_asset.chip_fractions(qc, {"cloud": qc_cloud})["cloud"]
    else:
        raise AssetError(f"item {item.id!r} has neither {state} nor {qc}: no cloud information")
    return ChipStats(cloud=cloud, nodata=nodata)


def tile_of(sample) -> tuple[int, int]:
    """The sample's (h, v): ``h``/``v`` columns of a sample source, else the Nth of TILES.

    Args:
        sample: The sample.

    Returns:
        (h, v).

    Raises:
        SampleError: A sample number past the last of ``TILES``.
    """
    props = sample.properties
    if props.get("h") is not None and props.get("v") is not None:
        return int(props["h"]), int(props["v"])
    if sample.index >= len(TILES):
        raise SampleError(
            f"sample {sample.index} is out of range: there are {len(TILES)} MODIS tiles"
        )
    return TILES[sample.index]


def months(h: int, v: int, year: int) -> list[int]:
    """The months of ``year`` processed for tile (h, v), drawn as stacchip 0.1 drew them.

    Args:
        h: The tile's horizontal number.
        v: The tile's vertical number.
        year: The year.

    Returns:
        ``MONTHS_PER_YEAR`` months, 1-12, in the order drawn.
    """
    if MONTHS_PER_YEAR >= 12:
        return list(range(1, 13))
    return random.Random(h * v * year).sample(range(1, 13), MONTHS_PER_YEAR)


def month_range(year: int, month: int) -> str:
    """A month as a STAC datetime interval.

    Args:
        year: The year.
        month: The month, 1-12.

    Returns:
        ``YYYY-MM-01/YYYY-MM-DD``, DD the month's last day.
    """
    last = calendar.monthrange(year, month)[1]
    return f"{year}-{month:02d}-01/{year}-{month:02d}-{last:02d}"


@hookimpl_for(PLATFORM, PLATFORM_250M)
def stacchip_select_items(platform, sample, catalog):
    """In each of ``YEARS``, per month drawn for the sample's tile, the first composite.

    Args:
        platform: A MODIS platform (its collections are searched).
        sample: The tile (``h`` and ``v`` attributes, else the Nth of ``TILES``).
        catalog: The STAC API to search.

    Returns:
        Up to ``MONTHS_PER_YEAR`` items a year, in date order.

    Raises:
        ConfigError: No STAC API.
        SampleError: A sample number past the last of ``TILES``.
    """
    if catalog is None:
        raise ConfigError(f"{platform.name} needs a STAC API (--stac-api)")
    h, v = tile_of(sample)
    selected = []
    for year in YEARS:
        for month in months(h, v, year):
            found = list(catalog.search(
                collections=list(platform.collections),
                datetime=month_range(year, month),
                # eq only: pgstac's query extension has no "in"
                query={"modis:horizontal-tile": {"eq": h}, "modis:vertical-tile": {"eq": v}},
                max_items=1,
            ).items())
            if found:
                selected.append(found[0])
            else:
                log.info("h%02dv%02d: no item in %s", h, v, month_range(year, month))
    return selected


@hookimpl_for(PLATFORM, PLATFORM_250M)
def stacchip_normalize_item(platform, item, store, prefix):
    """Copy the bands and quality layers into the store; the copy is dated by its last day.

    Args:
        platform: A MODIS platform.
        item: The selected item.
        store: The target store.
        prefix: The key prefix of the copies.

    Returns:
        The item with its hrefs pointing at the copies, its datetime the composite's end.
    """
    keys = [k for k in [*platform.asset_keys(item).values(),
                        *(platform.asset_key(item, layer.name) for layer in platform.aux)] if k]
    out = copy_assets(item, keys, store, prefix)  # signs Planetary Computer hrefs on the way
    end = out.common_metadata.end_datetime
    if end is not None:  # composites: dated by their last day, as stacchip 0.1 did
        out.datetime = end
    return out


def main() -> None:
    """``stacchip-modis``: the original console script, configured by environment
    (``AWS_BATCH_JOB_ARRAY_INDEX`` is the tile's number, ``STACCHIP_BUCKET`` the target)."""
    env_job(NAME)


def main_09q1() -> None:
    """``stacchip-modis-09q1``: the 250 m composites' job, configured as ``stacchip-modis``
    (``AWS_BATCH_JOB_ARRAY_INDEX`` the tile's number, ``STACCHIP_BUCKET`` the target)."""
    env_job(NAME_250M)
