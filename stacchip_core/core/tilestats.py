"""Per-chip statistics of a quality layer read through the tile reader, not GDAL.

The indexer's stats hook calls ``read_asset.chip_fractions("scl", masks)``. Here
``read_asset`` is a ``TileAssetReader``: when the asset has a COG layout the tile reader
decodes (core.layout, core.tiles: deflate through libdeflate in threads, other codecs through
async-tiff) and sits on the grid's lattice at a factor that divides the chip size, its tiles
are fetched and decoded by the same reader as chips, one row of tiles at a time, and each
row of chips is masked and counted right away into reused arrays. Anything else (an untiled
or big-endian file, a codec the layout path does not read, an asset off the lattice, an
object changed since its layout was read) goes to ``AssetReader``'s GDAL strips, which give
the same fractions.

Measured on bench.py's full-size Sentinel-2 SCL (5490 px, 121 deflate tiles of 512 px, on
local disk, 2 shared cores): GDAL strips plus per-strip masks 0.10-0.11 s, this path
0.03-0.04 s (docs/running-at-scale.md).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pystac

from stacchip_core.core import tiles
from stacchip_core.core.chipstats import Scratch, row_counts
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.layout import AssetLayout, ItemLayouts, read_layout
from stacchip_core.core.raster import AssetReader, unsigned_href
from stacchip_core.io import objects
from stacchip_core.io.urls import redact
from stacchip_core.platform import Platform

log = logging.getLogger(__name__)

MaskFn = Callable[[np.ndarray], np.ndarray]


class _Fallback(Exception):
    """This asset is read through GDAL instead; the message says why (logged at debug)."""


class TileAssetReader(AssetReader):
    """An ``AssetReader`` whose ``chip_fractions`` reads through the tile reader where the
    asset's layout allows, and through GDAL elsewhere, with equal results.

    Args:
        item: The STAC item.
        grid: The item's chip grid.
        platform: The item's platform, if any.
        mountpath: A local mirror that remote hrefs map to.
        threads: Rows of tiles in flight (default: up to 4, one per core).
        layouts: The item's layouts when the indexer has just read them (the indexer reads
            them anyway to record them); an asset not in it gets its layout read here, from
            one header request.
        layouts_from: Gives those layouts when first needed (after the asset is known to
            exist), so that a stats hook asking for a missing asset fails before any layout
            is read.

    Attributes:
        paths: Per asset key read by ``chip_fractions``, ``"tiles"`` or ``"gdal"``.
    """

    def __init__(self, item: pystac.Item, grid: ChipGrid, platform: Platform | None,
                 mountpath=None, threads: int | None = None,
                 layouts: ItemLayouts | dict[str, AssetLayout] | None = None,
                 layouts_from: Callable[[], ItemLayouts | None] | None = None) -> None:
        super().__init__(item, grid, platform, mountpath, threads)
        self.layouts = dict(layouts or {})
        self._layouts_from = layouts_from
        self.paths: dict[str, str] = {}

    def _layout(self, key: str) -> AssetLayout | None:
        if self._layouts_from is not None:  # asked for on the first read of a known asset
            provider, self._layouts_from = self._layouts_from, None
            self.layouts = {**(provider() or {}), **self.layouts}
        lay = self.layouts.get(key)
        if lay is None and objects.async_tiff_usable():
            href = unsigned_href(self.item.assets[key], self.mountpath)
            lay = objects.run(read_layout(key, href))
            if lay is not None:
                self.layouts[key] = lay
        return lay

    def chip_fractions(self, name: str, masks: dict[str, MaskFn],
                       band: int | None = None) -> dict[str, np.ndarray]:
        """Per-chip fractions of several masks of one band (see ``AssetReader``).

        A mask that has an ``into(data, scratch)`` method (``ClassMask``) is evaluated into
        reused arrays; any other is called as ``fn(data)``.

        Args:
            name: A canonical band name, an alias or an asset key.
            masks: Per mask name, a function from pixels to a boolean array.
            band: The band's index in its asset (1-based); default: the platform's.

        Returns:
            Per mask name, the fraction of each chip's pixels in the mask, float32
            ``(y_size, x_size)``.

        Raises:
            AssetError: If the asset is missing, cannot be read or does not fit the grid.
        """
        key, band = self._key_and_band(name, band)
        try:
            fractions = self._from_tiles(key, band, masks)
        except _Fallback as exc:
            log.debug("%s of %s through GDAL: %s", key, self.item.id, exc)
            self.paths[key] = "gdal"
            return super().chip_fractions(name, masks, band)
        self.paths[key] = "tiles"
        return fractions

    def _from_tiles(self, key: str, band: int,
                    masks: dict[str, MaskFn]) -> dict[str, np.ndarray]:
        lay = self._layout(key)
        if lay is None:
            raise _Fallback("no layout (not a tiled little-endian GeoTIFF, or unreadable)")
        if not lay.supported or band > lay.bands:
            raise _Fallback(f"compression {lay.compression}, predictor {lay.predictor}, "
                            f"{lay.bands} bands")
        grid = self.grid
        try:
            factor = tiles.factor_for(lay, tiles.GridSpec.from_grid(grid))
        except tiles.Unsupported as exc:
            raise _Fallback(str(exc)) from None
        if grid.chip_size % factor:  # chip edges cut native pixels: GDAL's path weighs them
            raise _Fallback(f"chips of {grid.chip_size / factor:g} native pixels")
        block = grid.chip_size // factor
        ny, nx = grid.y_size, grid.x_size
        if ny * block > lay.height or nx * block > lay.width:
            raise _Fallback("the asset does not cover the grid")  # GDAL's path says so
        # one read per row of tiles (4 rows of 128 px chips in a 512 px tile): one request
        # for the row's tiles, each decoded once
        rows_per_read = max(1, round(lay.tile_height / block))
        groups = [(y, min(y + rows_per_read, ny)) for y in range(0, ny, rows_per_read)]
        counts = {k: np.zeros((ny, nx), np.uint32) for k in masks}
        scratch = Scratch()

        def read(rows: tuple[int, int]) -> np.ndarray:
            y0, y1 = rows
            plan = tiles.plan_window(lay, y0 * block, 0, (y1 - y0) * block, nx * block, 1)
            (pixels,) = tiles.read_plans([plan])
            if isinstance(pixels, Exception):  # changed since its layout was read, or refused
                raise _Fallback(f"{redact(lay.href)}: {pixels}")
            return pixels[band - 1]

        def count(rows: tuple[int, int], data: np.ndarray) -> None:
            for i in range(rows[1] - rows[0]):  # a row of chips at a time: its masks stay in cache
                strip = data[i * block:(i + 1) * block]
                for k, fn in masks.items():
                    into = getattr(fn, "into", None)
                    m = into(strip, scratch) if into is not None else fn(strip)
                    counts[k][rows[0] + i] = row_counts(m, block, nx)

        # rows of tiles are read (fetched, decoded by the tile reader's threads) `ahead` at a
        # time while this thread masks the one before: one row ahead on local disk, more over
        # a network. Masking in this one thread, not a pool: on the full-size SCL under load
        # a pool of 2 took 16 ms of system time (page faults of fresh arenas) against 5
        ahead = max(1, self.threads if objects.is_remote(lay.href) else 1)
        with ThreadPoolExecutor(ahead, thread_name_prefix="stacchip-stats") as pool:
            pending = deque(pool.submit(read, rows) for rows in groups[:ahead])
            for i, rows in enumerate(groups):
                data = pending.popleft().result()
                if i + ahead < len(groups):
                    pending.append(pool.submit(read, groups[i + ahead]))
                count(rows, data)
                del data
        # the same arithmetic as the GDAL path, so both give the same float32 values
        return {k: (c / float(block * block)).astype(np.float32) for k, c in counts.items()}
