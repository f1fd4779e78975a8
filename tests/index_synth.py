"""Synthetic per-item chip indexes with the real schema (core.index.build_table), no rasters:
Sentinel-2-like items (42 x 42 chips of 2.56 km) and Landsat-like items (24 x 24 chips of
7.68 km) at random places over the world, some across the antimeridian and near the poles,
revisited on several dates. Used by tests/test_index_query.py and benchmarks/bench_index.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely

from stacchip_core.core.index import build_table, write_index

KINDS = {  # platform: (chips a side, chip size in degrees of latitude, layouts blob bytes)
    "sentinel-2-l2a": (42, 2.56 / 111.32, 6000),
    "landsat-c2l2-sr": (24, 7.68 / 111.32, 4000),
}


def item_tables(items: int, seed: int = 0, layouts: bool = False, revisits: int = 4,
                lat_range: tuple[float, float] = (-60.0, 75.0), antimeridian: float = 0.02,
                polar: float = 0.0) -> Iterator[pa.Table]:
    """``items`` per-item index tables: places drawn at random (``antimeridian`` of them
    centred on 180 degrees, ``polar`` of them above 80 degrees), each revisited up to
    ``revisits`` times; 3 of 4 items Sentinel-2, 1 of 4 Landsat."""
    rng = np.random.default_rng(seed)
    made = 0
    place = 0
    while made < items:
        platform = "landsat-c2l2-sr" if place % 4 == 3 else "sentinel-2-l2a"
        side, size, blob = KINDS[platform]
        draw = rng.random()
        if draw < antimeridian:
            lon0 = 180.0 - side * size * rng.uniform(0.1, 0.9) / 2
        else:
            lon0 = rng.uniform(-180, 180)
        lat0 = rng.uniform(80, 88) if draw > 1 - polar else rng.uniform(*lat_range)
        for visit in range(int(rng.integers(1, revisits + 1))):
            if made == items:
                break
            when = datetime(2020, 1, 1, 10, 30, tzinfo=UTC) + timedelta(
                days=int(rng.integers(0, 5 * 365)), seconds=int(rng.integers(0, 3600))
            )
            item_id = f"{platform[:2]}_{place:07d}_{visit}"
            yield _item(item_id, platform, when, lon0, lat0, side, size, rng,
                        rng.bytes(blob) if layouts else None)
            made += 1
        place += 1


def _item(item_id, platform, when, lon0, lat0, side, size, rng, blob) -> pa.Table:
    ys, xs = np.divmod(np.arange(side * side), side)
    # chips square on the ground: wider in degrees of longitude away from the equator
    width = size / max(np.cos(np.radians(lat0)), 0.05)
    xmin = lon0 + xs * width
    ymax = lat0 - ys * size
    xmax, ymin = xmin + width, ymax - size
    keep = ymin > -90
    xs, ys, xmin, xmax, ymin, ymax = (
        xs[keep],
        ys[keep],
        xmin[keep],
        xmax[keep],
        ymin[keep],
        ymax[keep],
    )
    xmin = np.where(xmin >= 180, xmin - 360, xmin)
    xmax = np.where(xmax > 180, xmax - 360, xmax)
    crossing = xmin > xmax
    polygons = shapely.box(xmin, ymin, np.where(crossing, 180.0, xmax), ymax)
    if crossing.any():  # MultiPolygons split at 180 degrees, as the grid writes them
        west = shapely.box(xmin[crossing], ymin[crossing], 180.0, ymax[crossing])
        east = shapely.box(-180.0, ymin[crossing], xmax[crossing], ymax[crossing])
        polygons[crossing] = shapely.multipolygons(np.stack([west, east], axis=1))
    bounds = np.stack([xmin, ymin, xmax, ymax], axis=1)
    n = len(xs)
    cloud = np.where(rng.random(n) < 0.5, 0.0, rng.random(n)).astype(np.float32)
    nodata = np.where(rng.random(n) < 0.8, 0.0, rng.random(n) * 0.5).astype(np.float32)
    return build_table(
        item_id=item_id,
        item_href=f"s3://bucket/{platform}/{item_id}/stac_item.json",
        platform=platform,
        when=when,
        xs=xs,
        ys=ys,
        chip_size=256,
        cloud=cloud,
        nodata=nodata,
        polygons=polygons,
        bounds=bounds,
        layouts=blob,
    )


def write_items(folder: str | Path, items: int, **kwargs) -> tuple[int, int]:
    """Write ``items`` per-item index files under ``folder`` as the processors lay them out;
    returns (files, rows)."""
    folder = Path(folder)
    rows = 0
    files = 0
    for table in item_tables(items, **kwargs):
        item_id, platform = table["item_id"][0].as_py(), table["platform"][0].as_py()
        write_index(table, folder / platform / item_id / f"index_{item_id}.parquet")
        rows += len(table)
        files += 1
    return files, rows
