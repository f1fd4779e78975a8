"""The Chipper: pixels of any chip of an item, read on demand from its COGs; and
``chip_from_row``. Both are front ends over the read pipeline (core.read)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Self

import pystac

from stacchip_core.core.chip import Chip
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.headers import item_grid
from stacchip_core.core.indexer import Indexer, load_item
from stacchip_core.core.read import (
    _WARNED,
    DEFAULT_BLACKLIST,
    ChipRequest,
    Reader,
    Source,
    chip_keys,
    item_for_row,
    make_chip,
    note_fallback,
)
from stacchip_core.errors import PlatformError
from stacchip_core.io import objects
from stacchip_core.platform import Platform
from stacchip_core.plugins import get_platform, platform_for_item

__all__ = [
    "DEFAULT_BLACKLIST",
    "_WARNED",
    "Chipper",
    "chip_from_row",
    "item_for_row",
    "note_fallback",
]


class Chipper:
    """Read chips of one item. ``chip(x, y)`` -> ``{asset key: array (bands, cs, cs)}``.

    Default assets: the platform's bands in canonical order when the platform is known,
    else every raster asset; minus ``asset_blacklist`` (default: SCL and QA layers).
    Coarser assets (20 m, 60 m on a 10 m grid) are read at native resolution and expanded
    by nearest neighbour. Assets off the grid's lattice (offset by a fraction of a pixel, or
    of a non-whole pixel ratio) are resampled: ``resampling`` "nearest" (default) or
    "bilinear". Open datasets are kept for the Chipper's lifetime: use it as a context
    manager or call ``close()``.

    Args:
        item_or_indexer: An Indexer (its item, grid and platform are reused), or the STAC
            item: an Item, a dict, or a path or URL to its JSON.
        assets: Asset keys or band names to read; default: see above.
        asset_blacklist: Asset keys to leave out of the default assets.
        mountpath: A local mirror that remote hrefs map to.
        chip_size: Chip side in pixels of the finest grid (default 256; not with an Indexer).
        platform: A platform or its name; None: found from the item's collection.
        resampling: ``nearest`` or ``bilinear``, for assets off the grid's lattice.
        layouts: The item's encoded COG layouts, as an index row records them.
        use_layouts: Read remote assets through their COG layouts (else rasterio only).

    Raises:
        ItemError: If the item cannot be loaded.
        ProjectionError: If the item has no usable projection metadata nor raster header.
        GridError: If the grid is degenerate.
        AssetError: If a named asset is not in the item.
    """

    def __init__(
        self,
        item_or_indexer: Indexer | pystac.Item | dict | str | Path,
        assets: Sequence[str] | None = None,
        asset_blacklist: Sequence[str] | None = None,
        mountpath: str | Path | None = None,
        chip_size: int | None = None,
        platform: str | Platform | None = None,
        resampling: str = "nearest",
        layouts: bytes | None = None,
        use_layouts: bool = True,
    ) -> None:
        if isinstance(item_or_indexer, Indexer):
            self.item = item_or_indexer.item
            self.grid: ChipGrid = item_or_indexer.grid
            self.platform = item_or_indexer.platform
            mountpath = mountpath or item_or_indexer.mountpath
        else:
            self.item = load_item(item_or_indexer)
            self.grid = item_grid(self.item, chip_size or 256, mountpath=mountpath)
            self.platform = self._platform(platform)
        self.mountpath = mountpath
        self.resampling = resampling  # for assets off the grid's lattice (core.resample)
        self.use_layouts = use_layouts
        self._source = Source.from_item(
            self.item, self.grid.chip_size, self.platform, mountpath, grid=self.grid
        )
        blacklist = {
            k.lower() for k in (DEFAULT_BLACKLIST if asset_blacklist is None else asset_blacklist)
        }
        self.assets = chip_keys(self._source, assets, blacklist)
        self._reader = Reader(mountpath, use_layouts=use_layouts, resampling=resampling)
        # COG layouts (core.layout): from the index row, else recorded on first use (one ranged
        # read per asset instead of rasterio's probe + header per asset)
        self._layout_blob = layouts
        self._layouts: dict | None = None

    @property
    def _cache(self):
        """The open rasterio datasets of this Chipper (per thread)."""
        return self._source.cache

    def _platform(self, platform) -> Platform | None:
        if isinstance(platform, Platform):
            return platform
        if platform:
            return get_platform(platform)
        try:
            return platform_for_item(self.item)
        except PlatformError:
            return None

    # sequence protocol, as in stacchip 0.1: chips in row-major order
    def __len__(self) -> int:
        return self.grid.size

    def __getitem__(self, index: int) -> Chip:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"chip {index} out of range ({len(self)} chips)")
        y, x = divmod(index, self.grid.x_size)
        return self.chip(x, y)

    def __iter__(self) -> Iterator[Chip]:
        for index in range(len(self)):
            yield self[index]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the chipper's open datasets and its reader's connections."""
        self._reader.close()
        self._source.close()

    def layouts(self) -> dict:
        """``{asset key: AssetLayout}`` of the selected remote assets that have one.

        Local files are read through rasterio (a Chipper records no layouts for them): it
        keeps their handles open, and an open item's chips cost less CPU through GDAL (5.0-5.8
        ms vs 6.3-6.5 through layouts, full-size Sentinel-2 RGB; core.read.LOCAL_LAYOUT_CHIPS).
        Index rows of local files with layouts read a cold item's first chips from them.

        Returns:
            The layouts by asset key.
        """
        if self._layouts is None:
            from stacchip_core.core.layout import decoded, record_layouts

            blob = self._layout_blob
            remote = {k: h for k in self.assets if objects.is_remote(h := self._source.hrefs[k])}
            if blob is None and self.use_layouts and remote:
                t = self.grid.transform
                blob = record_layouts(remote, (t.a, t.c, t.e, t.f))
            found = decoded.get(blob) if blob else {}
            self._layouts = {k: lay for k, lay in found.items() if objects.is_remote(lay.href)}
            self._source.layouts = dict(self._layouts)
        return self._layouts

    def chip(self, x: int, y: int) -> Chip:
        """Chip (x, y): a ``Chip``, the mapping ``{asset key: array (bands, cs, cs)}`` of
        every selected asset, with its transform and CRS.

        Args:
            x: The chip's column in the grid.
            y: The chip's row in the grid.

        Returns:
            The chip.

        Raises:
            IndexError: If the chip is outside the grid.
            AssetError: If an asset cannot be read.
        """
        return self.chips([(x, y)], workers=1)[0]

    def chips(self, xys: Iterable[tuple[int, int]], workers: int = 4) -> list[Chip]:
        """Many chips (``Chip``), in the order of ``xys``, through the read pipeline: every
        tile of every chip and asset with a layout fetched concurrently and decoded once;
        the other assets (local files, no layout, stale, off the grid's lattice: resampled)
        through rasterio by ``workers`` threads that keep their open handles.

        Args:
            xys: The chips' (column, row) in the grid.
            workers: Threads of the rasterio backend.

        Returns:
            The chips, in the order of ``xys``.

        Raises:
            IndexError: If a chip is outside the grid (checked before any read).
            AssetError: If an asset cannot be read.
        """
        requests = [ChipRequest(self._source, int(x), int(y), tuple(self.assets)) for x, y in xys]
        for req in requests:
            self.grid.window(req.x, req.y)  # bounds check with a clear message, before any read
        if self.use_layouts and objects.chips_usable():
            self.layouts()
        return [
            make_chip(req, arrays)
            for req, arrays in zip(requests, self._reader.read(requests, workers))
        ]

    @property
    def report(self):
        """What this Chipper's reads cost so far (``core.read.ReadReport``)."""
        return self._reader.report


def chip_from_row(
    row: dict,
    assets: Sequence[str] | None = None,
    mountpath: str | Path | None = None,
    asset_blacklist: Sequence[str] | None = None,
) -> Chip:
    """The chip an index row describes (a dict of the row's columns): from the row alone
    when its layouts hold the grid (no item JSON), else from its item JSON.

    Args:
        row: an index row.
        assets: band names or asset keys (default: the platform's bands' assets).
        mountpath: a local mirror that remote hrefs map to.
        asset_blacklist: asset keys left out of the default (default: SCL and QA layers).

    Returns:
        The Chip.
    """
    with Reader(mountpath) as reader:
        return reader.chips([row], assets, asset_blacklist)[0]
