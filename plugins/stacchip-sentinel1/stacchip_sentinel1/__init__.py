"""stacchip source plugin for Sentinel-1 backscatter (``sentinel-1-rtc``: gamma0, float32, UTM).

Statistics: radar sees through clouds, so the cloud fraction is 0 by definition. A pixel is
nodata in a polarisation when it holds the asset's declared nodata value (``raster:bands``;
the product default otherwise: -32768 for RTC, 0 for GRD amplitudes) or is not finite (NaN,
inf). A chip's nodata fraction is the larger of its per-polarisation fractions (``vv``,
``vh``): both polarisations come from one acquisition and one geocoding, so their masks
normally coincide and this is the fraction of pixels without signal.

Sample selection (the original processor's behaviour; constants below): samples are MGRS
tiles (a polygon layer, column ``name``); seeded by the sample index, one year in 2018-2023
and one quarter of it; the first item (the catalog's default order, newest first) of that
quarter that **intersects the tile** and has both ``vv`` and ``vh``. stacchip 0.1 left its
intersects filter commented out and took any item of the quarter, anywhere on Earth.

Normalization: ``vv`` and ``vh`` are rewritten as deflate-compressed COGs into the target
store. Planetary Computer hrefs are signed on the way
(``stacchip_core.builtin_plugins.planetary_computer``). GRD items are
accepted when their metadata gives a map grid (projection, shape, transform); GRD scenes in
radar geometry are refused with a clear error.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from stacchip_core.plugin_api import (
    AssetError,
    Band,
    ChipGrid,
    ChipStats,
    ConfigError,
    Platform,
    PlatformError,
    ProjectionError,
    SampleError,
    apply_gdal_options,
    asset_href,
    env_job,
    fetch,
    hookimpl,
    hookimpl_for,
    join_key,
    key_segment,
    redact,
    redact_text,
    scratch_dir,
)

if TYPE_CHECKING:
    import pystac

log = logging.getLogger(__name__)

NAME = "sentinel-1-rtc"
STAC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
COLLECTION = "sentinel-1-rtc"
GRD_COLLECTION = "sentinel-1-grd"
YEARS = range(2018, 2024)  # 2018-2023 inclusive
QUARTERS = [("01-01", "03-31"), ("04-01", "06-30"), ("07-01", "09-30"), ("10-01", "12-31")]
POLARISATIONS = ("vv", "vh")
RTC_NODATA = -32768.0  # the RTC product's nodata (no signal, outside the swath)
GRD_NODATA = 0  # GRD amplitudes: 0 is no data
SEARCH_LIMIT = 20  # items of the quarter looked at for one with both polarisations

PLATFORM = Platform(
    name=NAME,
    collections=(COLLECTION, GRD_COLLECTION),
    bands=(Band("vv", ("VV",)), Band("vh", ("VH",))),
    nodata=RTC_NODATA,
    chip_size=256,
    description="Sentinel-1 C-band backscatter (gamma0, RTC), VV and VH; no clouds in radar",
    extra={"stac_api": STAC_API},
)


@hookimpl
def stacchip_platforms():
    """The platforms this plugin adds.

    Returns:
        Sentinel-1 RTC.
    """
    return [PLATFORM]


def nodata_value(item: pystac.Item, key: str) -> float:
    """The nodata value of asset ``key``: as declared (raster:bands), else the product's.

    Args:
        item: The item.
        key: The asset's key.

    Returns:
        The value (NaN when declared so).
    """
    for band in item.assets[key].extra_fields.get("raster:bands") or []:
        if band.get("nodata") is not None:
            value = band["nodata"]
            return float("nan") if str(value).lower() == "nan" else float(value)
    return float(GRD_NODATA) if item.collection_id == GRD_COLLECTION else RTC_NODATA


def nodata_mask(data: np.ndarray, value: float) -> np.ndarray:
    """Pixels without signal: the nodata value, and for floats anything not finite.

    Args:
        data: A band.
        value: Its nodata value.

    Returns:
        A boolean mask of ``data``'s shape.
    """
    if data.dtype.kind != "f":
        return data == value
    mask = ~np.isfinite(data)
    if not np.isnan(value):
        mask |= data == value
    return mask


def polarisation_keys(platform: Platform, item: pystac.Item) -> list[str]:
    """The item's vv and vh asset keys, those it has.

    Args:
        platform: Sentinel-1 RTC.
        item: The item.

    Returns:
        The keys, vv first.
    """
    return [k for k in (platform.asset_key(item, p) for p in POLARISATIONS) if k]


@hookimpl_for(PLATFORM)
def stacchip_chip_stats(platform, item, read_asset):
    """Radar sees through clouds: no cloud; nodata where either polarisation has no signal.

    Args:
        platform: Sentinel-1 RTC.
        item: The item (its assets' declared nodata values).
        read_asset: Reads vv and vh reduced per chip.

    Returns:
        Zero cloud and the larger nodata fraction of the two per chip.

    Raises:
        AssetError: The item has neither a vv nor a vh asset.
    """
    keys = polarisation_keys(platform, item)
    if not keys:
        raise AssetError(
            f"item {item.id!r} has neither a vv nor a vh asset (assets: {', '.join(item.assets)})"
        )
    nodata = None
    for key in keys:
        value = nodata_value(item, key)
        fraction = read_asset.chip_fractions(key, {"nodata": lambda d, v=value: nodata_mask(d, v)})[
            "nodata"
        ]
        nodata = fraction if nodata is None else np.maximum(nodata, fraction)
    return ChipStats(cloud=np.zeros_like(nodata), nodata=nodata)


def year_and_quarter(index: int) -> tuple[int, str]:
    """The sample's year and quarter, drawn as stacchip 0.1 drew them (``random.seed(index)``,
    then one year of 2018-2023, then one quarter): a rerun selects the same.

    Args:
        index: The sample's number.

    Returns:
        (year, the quarter as a ``YYYY-MM-DD/YYYY-MM-DD`` interval).
    """
    rng = random.Random(index)
    year = rng.sample(YEARS, 1)[0]
    start, end = rng.sample(QUARTERS, 1)[0]
    return year, f"{year}-{start}/{year}-{end}"


@hookimpl_for(PLATFORM)
def stacchip_select_items(platform, sample, catalog):
    """The first item of the sample's seeded quarter over its MGRS tile with both polarisations.

    Args:
        platform: Sentinel-1 RTC.
        sample: An MGRS tile polygon.
        catalog: The STAC API to search.

    Returns:
        One item, or none when no item of the quarter has both.

    Raises:
        SampleError: The sample has no geometry (no sample source).
        ConfigError: No STAC API.
    """
    if sample.geometry is None:
        raise SampleError("sentinel-1-rtc needs a sample source of MGRS tile polygons (--sample)")
    if catalog is None:
        raise ConfigError("sentinel-1-rtc needs a STAC API (--stac-api)")
    _, interval = year_and_quarter(sample.index)
    log.info("sample %d (MGRS %s): %s", sample.index, sample.properties.get("name"), interval)
    search = catalog.search(collections=[COLLECTION], datetime=interval, intersects=sample.geometry,
                            max_items=SEARCH_LIMIT)
    for item in search.items():
        if len(polarisation_keys(platform, item)) == len(POLARISATIONS):
            return [item]
    return []


def check_grid(item: pystac.Item) -> None:
    """Refuse an item without a map grid: GRD scenes are in radar geometry.

    Args:
        item: The item.

    Raises:
        PlatformError: A GRD collection's item, or one whose grid cannot be read.
    """
    # GRD files carry ground control points, not a map grid; refused by collection before any
    # header read (the header fallback for items without projection would read a GCP raster)
    reason = None
    if (item.collection_id or "").lower().endswith("-grd"):
        reason = f"collection {item.collection_id!r} is in radar geometry"
    else:
        try:
            ChipGrid.from_item(item)
        except ProjectionError as exc:
            reason = str(exc)
    if reason is not None:
        raise PlatformError(
            f"Sentinel-1 item {item.id!r} has no map grid ({reason}); GRD scenes in radar "
            "geometry must be "
            f"terrain corrected first (the {COLLECTION} collection is)"
        )


def to_deflate_cog(source: Path, target: Path) -> None:
    """Rewrite a raster as a deflate-compressed COG (floating-point predictor for float32).

    Args:
        source: The raster.
        target: The COG to write.
    """
    import rasterio
    import rasterio.shutil

    with rasterio.open(source) as src:
        predictor = "3" if src.dtypes[0].startswith("float") else "2"
        rasterio.shutil.copy(src, target, driver="COG", COMPRESS="DEFLATE", PREDICTOR=predictor,
                             BLOCKSIZE=512, OVERVIEWS="NONE", NUM_THREADS="ALL_CPUS")


@hookimpl_for(PLATFORM)
def stacchip_normalize_item(platform, item, store, prefix):
    """Rewrite vv and vh as deflate COGs into the store.

    Args:
        platform: Sentinel-1 RTC.
        item: The selected item.
        store: The target store.
        prefix: The key prefix of the copies.

    Returns:
        A copy of the item with only vv and vh, their hrefs pointing at the rewrites.

    Raises:
        PlatformError: The item has no map grid (``check_grid``).
        AssetError: The item has neither a vv nor a vh asset, or one cannot be rewritten.
    """
    check_grid(item)
    keys = polarisation_keys(platform, item)
    if not keys:
        raise AssetError(
            f"item {item.id!r} has neither a vv nor a vh asset (assets: {', '.join(item.assets)})"
        )
    out = item.clone()
    out.assets = {k: out.assets[k] for k in keys}
    apply_gdal_options()
    for key in keys:
        source = asset_href(out.assets[key])
        name = key_segment(Path(urlparse(source).path).name or f"{key}.tif", "asset file name")
        target = join_key(prefix, name)
        if not store.exists(target):  # a rerun keeps what is there
            with scratch_dir("s1") as tmp:  # a rerun removes what a killed job left
                try:
                    local = fetch(source, tmp)  # asset_href signed it
                    to_deflate_cog(local, tmp / f"cog-{name}")
                except AssetError:
                    raise
                except Exception as exc:
                    raise AssetError(
                        f"cannot rewrite {redact(source)} as a COG: {redact_text(str(exc))}"
                    ) from exc
                store.put_file(target, tmp / f"cog-{name}")
        out.assets[key].href = store.url(target)
        log.info("%s: %s -> %s", item.id, key, out.assets[key].href)
    out.clear_links()
    return out


def main() -> None:
    """``stacchip-sentinel-1``: the original console script, configured by environment."""
    env_job(NAME, ("STACCHIP_MGRS_SOURCE", "STACCHIP_SAMPLE_SOURCE"))
