"""Grids read from raster headers, for items whose metadata does not state them.

The grid math (`stacchip_core.core.grid`) reads no file; this module, beside the readers,
opens the finest raster asset's header when an item has no projection metadata.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyproj
from affine import Affine

from stacchip_core.core.assets import is_raster_asset
from stacchip_core.core.grid import ChipGrid, needs_header
from stacchip_core.core.raster import asset_href
from stacchip_core.errors import ProjectionError

if TYPE_CHECKING:
    import pystac

log = logging.getLogger(__name__)


def item_grid(item: pystac.Item, chip_size: int = 256, shape: tuple[int, int] | None = None,
              mountpath=None) -> ChipGrid:
    """The chip grid of ``item``: from its projection metadata, else from the header of its
    finest raster asset (`grid_from_header`, logged).

    Args:
        item: The STAC item.
        chip_size: Chip side in pixels of the finest grid.
        shape: A shape to impose (rows, cols), as `ChipGrid.from_item` takes it.
        mountpath: A local mirror that remote hrefs map to, as the readers use it.

    Returns:
        The item's chip grid.

    Raises:
        ProjectionError: No metadata and no readable raster with a CRS.
        GridError: The grid is degenerate.
    """
    header = grid_from_header(item, mountpath) if needs_header(item) else None
    return ChipGrid.from_item(item, chip_size, shape, header=header)


def grid_from_header(item: pystac.Item,
                     mountpath=None) -> tuple[tuple[int, int], Affine, pyproj.CRS]:
    """Shape, transform and CRS of the finest raster asset, read from the file's header.

    For items without projection metadata. Only headers are read (a few kB a file): the asset
    with the smallest ``gsd`` when assets state one, else every raster data asset (finest
    pixel wins, then the larger raster). Each read is logged.

    Args:
        item: The STAC item.
        mountpath: A local mirror that remote hrefs map to.

    Returns:
        ``(shape, transform, crs)`` of the finest raster.

    Raises:
        ProjectionError: No raster asset, an unreadable one, or none with a CRS.
    """
    candidates = [(k, a) for k, a in item.assets.items() if is_raster_asset(a)]
    if not candidates:
        raise ProjectionError(f"item {item.id!r} has no projection metadata and no raster asset "
                              "to read it from")
    with_gsd = [(a.extra_fields.get("gsd") or a.common_metadata.gsd, k, a) for k, a in candidates]
    with_gsd = [c for c in with_gsd if c[0]]
    if with_gsd:
        _, key, asset = min(with_gsd, key=lambda c: float(c[0] or 0))  # all truthy here
        candidates = [(key, asset)]
    import rasterio  # only for items without projection metadata (0.15 s of CPU to import)
    from rasterio.errors import RasterioError

    found = []
    for key, asset in candidates:
        href = asset_href(asset, mountpath)
        log.info("item %s has no projection metadata: reading the header of asset %r", item.id, key)
        try:
            with rasterio.open(href) as ds:
                if ds.crs is None:
                    continue
                crs = pyproj.CRS.from_user_input(ds.crs.to_wkt())
                found.append((key, (ds.height, ds.width), Affine(*tuple(ds.transform)[:6]), crs))
        except RasterioError as exc:
            raise ProjectionError(f"item {item.id!r} has no projection metadata and asset {key!r} "
                                  f"cannot be read for it: {exc}") from exc
    if not found:
        raise ProjectionError(f"item {item.id!r} has no projection metadata and its rasters "
                              "have no CRS")
    key, shape, transform, crs = min(found, key=lambda c: (abs(c[2].a), -c[1][0] * c[1][1]))
    log.info("item %s: grid from asset %r: %d x %d px of %g m, %s", item.id, key, shape[0],
             shape[1],
             abs(transform.a), crs.to_string())
    return shape, transform, crs
