"""The Indexer: every chip of an item, with per-chip statistics, as a GeoParquet table."""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyproj
import pystac

from stacchip_core.core.assets import raster_keys
from stacchip_core.core.chipstats import ChipStats
from stacchip_core.core.headers import item_grid
from stacchip_core.core.index import build_table
from stacchip_core.core.tilestats import TileAssetReader
from stacchip_core.errors import ItemError, PlatformError, StacchipError
from stacchip_core.io.urls import redact_text
from stacchip_core.platform import Platform
from stacchip_core.plugins import get_platform, get_plugin_manager, platform_for_item

log = logging.getLogger(__name__)


# what pystac raises for JSON that is not a valid item: it indexes, iterates and calls methods
# on whatever it finds (the fuzz tests, docs/testing.md, met each of these)
_NOT_AN_ITEM = (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError,
                pystac.STACError, pystac.STACTypeError)


def load_item(item: pystac.Item | dict | str | Path) -> pystac.Item:
    """An item from an Item, a dict, or a path/URL to its JSON.

    Args:
        item: An Item, a dict, or a path or URL to the item's JSON.

    Returns:
        The item, checked to have a string id.

    Raises:
        ItemError: the file is missing or unreadable, or its JSON (or the dict) is not a
            STAC item with a string id.
    """
    if isinstance(item, pystac.Item):
        return _checked(item)
    with warnings.catch_warnings():
        # pystac's storage-extension migration cannot parse https hrefs; harmless
        warnings.filterwarnings("ignore", message="Could not parse bucket", category=UserWarning)
        if isinstance(item, dict):
            try:
                return _checked(pystac.Item.from_dict(item))
            except _NOT_AN_ITEM as exc:
                raise ItemError(f"not a STAC item: {redact_text(str(exc))}") from exc
        return _checked(_item_from_file(item))


def _checked(item: pystac.Item) -> pystac.Item:
    if not isinstance(item.id, str) or not item.id:
        raise ItemError(f"item id {item.id!r} is not a non-empty string")
    if item.collection_id is not None and not isinstance(item.collection_id, str):
        raise ItemError(f"item {item.id!r} has collection {item.collection_id!r}, not a string")
    return item


def _item_from_file(item: str | Path) -> pystac.Item:
    try:
        return pystac.Item.from_file(str(item))
    except FileNotFoundError as exc:
        raise ItemError(f"no such item file: {item}") from exc
    except (OSError, *_NOT_AN_ITEM) as exc:  # unreadable, not JSON, not STAC
        raise ItemError(redact_text(f"cannot read STAC item {item}: {exc}")) from exc


def crs_text(crs: pyproj.CRS) -> str:
    """``crs`` as the index stores it: its authority code (``EPSG:32633``) when it is exactly
    that, else WKT2.

    Args:
        crs: The CRS.

    Returns:
        ``AUTHORITY:CODE`` or the WKT2 text.
    """
    auth = crs.to_authority(min_confidence=100)
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def item_datetime(item: pystac.Item) -> datetime:
    """The item's datetime, or its start_datetime when it has a range.

    Args:
        item: The STAC item.

    Returns:
        The datetime.

    Raises:
        ItemError: If the item has neither datetime nor start_datetime.
    """
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise ItemError(f"item {item.id!r} has neither datetime nor start_datetime")
    return when


class Indexer:
    """List the chips of one STAC item with cloud and nodata fractions.

    ``platform`` is a platform name; by default it is found from the item's collection
    among the installed plugins. ``stats=False`` indexes without statistics (all
    fractions 0) for items no plugin knows. ``shape`` overrides the grid's (rows, cols).

    Args:
        item: The STAC item: an Item, a dict, or a path or URL to its JSON.
        chip_size: Chip side in pixels of the finest grid.
        chip_max_nodata: Chips with a larger nodata fraction are left out of the index.
        platform: A platform or its name; None: found from the item's collection.
        shape: A grid shape (rows, cols) to impose.
        stats: Compute cloud and nodata fractions (False: all 0).
        mountpath: A local mirror that remote hrefs map to.
        layouts: Record the assets' COG layouts in the index.

    Raises:
        ItemError: If the item cannot be loaded.
        PlatformError: If no platform is found for the item while ``stats`` is on.
        ProjectionError: If the item has no usable projection metadata nor raster header.
        GridError: If the grid is degenerate.
    """

    def __init__(
        self,
        item: pystac.Item | dict | str | Path,
        chip_size: int = 256,
        chip_max_nodata: float = 0.5,
        platform: str | Platform | None = None,
        shape: tuple[int, int] | None = None,
        stats: bool = True,
        mountpath: str | Path | None = None,
        layouts: bool = True,
    ) -> None:
        self.item = load_item(item)
        self.chip_size = chip_size
        self.chip_max_nodata = chip_max_nodata
        self.stats = stats
        self.mountpath = mountpath
        self.layouts = layouts
        self.platform = self._resolve_platform(platform)
        self.grid = item_grid(self.item, chip_size, shape, mountpath=mountpath)

    def _resolve_platform(self, platform) -> Platform | None:
        if isinstance(platform, Platform):
            return platform
        if platform is not None:
            return get_platform(platform)
        try:
            return platform_for_item(self.item)
        except PlatformError:
            if self.stats:
                raise
            return None

    @property
    def platform_name(self) -> str:
        """The platform's name; without a platform, the item's collection (or ``unknown``)."""
        if self.platform is not None:
            return self.platform.name
        return self.item.collection_id or "unknown"

    # the original API
    @property
    def shape(self) -> tuple[int, int]:
        """The grid's (rows, cols) in pixels of the finest asset."""
        return self.grid.shape

    @property
    def transform(self):
        """The grid's affine transform."""
        return self.grid.transform

    @property
    def crs(self):
        """The grid's CRS (pyproj)."""
        return self.grid.crs

    @property
    def x_size(self) -> int:
        """Chips across."""
        return self.grid.x_size

    @property
    def y_size(self) -> int:
        """Chips down."""
        return self.grid.y_size

    @property
    def size(self) -> int:
        """Chips in the grid (``x_size * y_size``), before the nodata filter."""
        return self.grid.size

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounds of the raster in its own CRS (xmin, ymin, xmax, ymax)."""
        t, (rows, cols) = self.grid.transform, self.grid.shape
        xs = [t.c, t.c + t.a * cols]
        ys = [t.f, t.f + t.e * rows]
        return min(xs), min(ys), max(xs), max(ys)

    @cached_property
    def _layouts_blob(self) -> bytes | None:
        # read once, when the statistics first read a quality layer that the item has: that
        # layer is then read through the tile reader with the layout just recorded, without
        # a header request of its own
        return self.asset_layouts() if self.layouts else None

    @cached_property
    def chip_stats(self) -> ChipStats:
        """Cloud and nodata fractions of every chip, from the platform's stats hook.

        The hook's ``read_asset`` reads quality layers through the tile reader where their
        COG layout allows, else through GDAL (core.tilestats); both give the same fractions.

        Raises:
            PlatformError: If no installed plugin computes statistics for the platform.
            ValueError: If the hook's arrays do not have the grid's shape in chips.
        """
        from stacchip_core.core.layout import decode

        shape = (self.grid.y_size, self.grid.x_size)
        if not self.stats:
            return ChipStats.zeros(shape)
        def layouts():
            blob = self._layouts_blob
            return decode(blob) if blob else None

        reader = TileAssetReader(self.item, self.grid, self.platform, self.mountpath,
                                 layouts_from=layouts)
        result = get_plugin_manager().hook.stacchip_chip_stats(
            platform=self.platform, item=self.item, grid=self.grid, read_asset=reader
        )
        if result is None:
            name = self.platform.name if self.platform is not None else None
            raise PlatformError(
                f"no installed plugin computes statistics for platform {name!r}; "
                "ask for no statistics (stats=False / --no-stats) to index it anyway"
            )
        return result.check(shape)

    def asset_layouts(self) -> bytes | None:
        """The encoded COG layouts of the assets a chipper reads (core.layout), from one
        ranged read per asset, all at once, with what a read needs besides: the grid's
        transform, shape and CRS and where each of the platform's bands lies; None when off
        or when no asset has a layout.

        Returns:
            The encoded layouts, or None.
        """
        from stacchip_core.core.layout import record_layouts
        from stacchip_core.core.raster import unsigned_href

        bands: dict[str, tuple[str, int]] = {}
        if self.platform is not None and self.platform.bands:
            for band in self.platform.bands + self.platform.aux:
                key = self.platform.asset_key(self.item, band.name)
                if key is not None:
                    bands[band.name] = (key, band.index)
            # the bands' and layers' (SCL, QA: masks are read with chips) assets get a layout
            keys = list(dict.fromkeys(k for k, _ in bands.values()))
        else:
            keys = raster_keys(self.item)
        # every raster asset gets a layout, not only the bands' (Sentinel-2's 60 m coastal and
        # nir09 too: else they are read through GDAL over HTTP). Measured on the synthetic
        # 768 px Sentinel-2 scene the blob grows by 42 bytes for coastal (988 to 1,030 bytes;
        # Planetary Computer keys 959 to 1,000), one header read more when indexing.
        # Unsigned: layouts are stored, and signed again right before each read.
        keys = list(dict.fromkeys([*keys, *raster_keys(self.item)]))
        hrefs = {
            k: unsigned_href(self.item.assets[k], self.mountpath)
            for k in keys
            if k in self.item.assets
        }
        t = self.grid.transform
        return record_layouts(
            hrefs,
            (t.a, t.c, t.e, t.f),
            shape=self.grid.shape,
            crs=crs_text(self.grid.crs),
            bands=bands,
        )

    def create_index(self) -> pa.Table:
        """The index table: one row per chip whose nodata fraction is <= chip_max_nodata.

        Returns:
            The index table, with ``geo`` metadata.

        Raises:
            PlatformError: If no installed plugin computes statistics for the platform.
            ItemError: If the item has neither datetime nor start_datetime.
        """
        grid = self.grid
        stats = self.chip_stats
        ys, xs = np.divmod(np.arange(grid.size), grid.x_size)
        cloud, nodata = stats.cloud.ravel(), stats.nodata.ravel()
        keep = nodata <= self.chip_max_nodata
        polygons, bounds = grid.footprints()
        log.info(
            "%s: %d of %d chips kept (nodata <= %g)",
            self.item.id,
            int(keep.sum()),
            grid.size,
            self.chip_max_nodata,
        )
        return build_table(
            item_id=self.item.id,
            item_href=self.item.get_self_href(),
            platform=self.platform_name,
            when=item_datetime(self.item),
            xs=xs[keep],
            ys=ys[keep],
            chip_size=grid.chip_size,
            cloud=cloud[keep],
            nodata=nodata[keep],
            polygons=polygons[keep],
            bounds=bounds[keep],
            layouts=self._layouts_blob,
        )


@dataclass(frozen=True)
class ItemIndex:
    """One item of a batch build: its ``table`` (None when it failed, with ``error`` the
    one-line reason), the ``item`` indexed and the ``seconds`` it took."""

    item: pystac.Item | None
    table: pa.Table | None
    error: str | None = None
    seconds: float = 0.0


def build_indexes(items: Iterable[pystac.Item | dict | str | Path], workers: int = 8,
                  **indexer_kwargs) -> Iterator[ItemIndex]:
    """Index many items concurrently in this process, results in the order of ``items``.

    Each item's headers, quality layer and layouts are read by its own ``Indexer`` (GDAL and
    the object layer release the GIL while they wait), ``workers`` items at a time; at most
    ``2 * workers`` results wait to be consumed, so memory stays bounded however many items
    come. Every table is what ``Indexer(item, **indexer_kwargs).create_index()`` gives alone:
    a concurrent build equals a sequential one byte for byte.

    Args:
        items: items, item dicts, or paths/URLs of item JSON (an iterator is consumed lazily).
        workers: items in flight (1: one after the other, in this thread).
        **indexer_kwargs: passed to Indexer (chip_size, chip_max_nodata, platform, ...).

    Yields:
        One ItemIndex per item; a failing item is reported, not raised.
    """
    if workers <= 1:
        for item in items:
            yield _index_one(item, indexer_kwargs)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="stacchip-index") as pool:
        for item in items:
            pending.append(pool.submit(_index_one, item, indexer_kwargs))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _index_one(item, kwargs: dict) -> ItemIndex:
    start = time.perf_counter()
    loaded = None
    try:
        loaded = load_item(item)
        table = Indexer(loaded, **kwargs).create_index()
    except Exception as exc:  # one failing item never stops the batch
        log.debug("indexing %s failed", getattr(loaded, "id", item), exc_info=True)
        text = str(exc) if isinstance(exc, StacchipError) else f"{type(exc).__name__}: {exc}"
        return ItemIndex(loaded, None, redact_text(text.strip()), time.perf_counter() - start)
    return ItemIndex(loaded, table, None, time.perf_counter() - start)
