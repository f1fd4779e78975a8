"""The read pipeline: chips of index rows (or of one item), planned per asset, read by two
backends, and cropped and expanded the same way. Every reader of stacchip is a front end over
it: ``Chipper``, ``chip_from_row``, ``ChipReader``/``ChipDataset``, the TorchGeo dataset, the
xarray output, prechip and ``stacchip chip`` (docs/reading.md tells the story).

1. **Source**: what a read of one item needs. From the index row alone when its layouts hold
   the grid's shape and CRS (indexes written since they do): grid, CRS, asset hrefs, tile
   tables and where each band lies, without the item JSON. From the item JSON otherwise
   (older indexes, rows without layouts, ``Chipper(item)``).
2. **Plan**: per chip and asset, an ``AssetRead``: href, native window, expansion factor and
   backend, made by one band resolver (``Source.key_for``: the platform's aliases and the
   Copernicus ``_10m`` suffix rule, over whatever keys the source has) and one backend rule
   (``choose_backend``).
3. **Backends**, per asset: ``layout`` (core.tiles: the tiles of the whole batch, each
   fetched and decoded once even when several chips share it) and ``rasterio`` (core.raster:
   open handles, kept per item; resampled reads for assets off the grid's lattice). An asset
   whose layout is stale or cannot be decoded falls back to rasterio alone; the other assets
   of its chip still come from their layouts.
4. **Crop/expand**: core.window.crop_expand, for both backends.

Each batch reports what it cost (``ReadReport``): requests and bytes, tiles decoded, decode
seconds, reads through rasterio and fallbacks by reason; a ``Reader`` adds them up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyproj
from affine import Affine

from stacchip_core.core.assets import raster_keys
from stacchip_core.core.chip import Chip, band_names
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.headers import item_grid
from stacchip_core.core.layout import AssetLayout, ItemLayouts, decoded
from stacchip_core.core.raster import (
    DatasetCache,
    grid_factor,
    read_chip_window,
    resolve_href,
    unsigned_href,
)
from stacchip_core.core.tiles import (
    GridSpec,
    StaleLayout,
    TileCost,
    Unsupported,
    factor_for,
    plan_window,
    read_plans,
)
from stacchip_core.errors import AssetError, IndexFormatError, PlatformError
from stacchip_core.io import objects
from stacchip_core.io.settings import apply_gdal_options
from stacchip_core.io.store import read_url
from stacchip_core.io.urls import redact
from stacchip_core.platform import Platform
from stacchip_core.plugins import find_platform, sign_href

if TYPE_CHECKING:
    import pystac

log = logging.getLogger(__name__)

LAYOUT, RASTERIO = "layout", "rasterio"
# reasons an asset is read through rasterio by design, not as a fallback
CHOSEN = frozenset({"local file", "layouts off"})
# the report kind of what a forked child cannot read from layouts
FORKED = "I/O layer unusable after fork"
MAX_SOURCES = 32  # items whose open handles a Reader keeps; older ones are closed
# items whose sources a Reader keeps (a source from layouts holds no handle, only what a plan
# needs): with 32, random chips of 60 items rebuilt a source for every other chip
MAX_KEPT = 1024


# --- what a read costs -------------------------------------------------------------------

@dataclass(frozen=True)
class ReadReport:
    """What reads cost: one batch (``Reader.last``) or all so far (``Reader.report``).

    ``requests``/``bytes``: object-store requests and bytes the batch's own reads received,
    validation reads included, from the I/O layer's tally of that read (``objects.tally()``:
    batches other threads read meanwhile are not in it); reads through rasterio are not in
    them (GDAL does its own I/O).
    ``tiles``: distinct tiles decoded by the layout path; ``decode_seconds``: CPU seconds
    spent decoding them. ``layout_reads``/``rasterio_reads``: asset reads (one asset of one
    chip) by backend. ``fallbacks``: ``(reason, asset reads)`` of the rasterio reads that
    were meant to come from layouts (stale, unsupported, no layout, forked I/O layer);
    local files and ``use_layouts=False`` are read through rasterio by choice, not counted.
    """

    chips: int = 0
    requests: int = 0
    bytes: int = 0
    tiles: int = 0
    decode_seconds: float = 0.0
    layout_reads: int = 0
    rasterio_reads: int = 0
    fallbacks: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: ReadReport) -> ReadReport:
        values = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "fallbacks"
        }
        merged = Counter(dict(self.fallbacks)) + Counter(dict(other.fallbacks))
        return ReadReport(**values, fallbacks=tuple(sorted(merged.items())))

    @property
    def fallback_count(self) -> int:
        """Asset reads that fell back to rasterio, all reasons."""
        return sum(n for _, n in self.fallbacks)


def wire(spent: objects.Counters) -> tuple[int, int]:
    """Requests and bytes that crossed the wire, validation reads included.

    Args:
        spent: Counters (a tally's, or a difference of two snapshots).

    Returns:
        ``(requests, bytes)``.
    """
    return spent.requests + spent.checks, spent.bytes + spent.check_bytes


# --- one item as a read needs it ---------------------------------------------------------

@lru_cache(maxsize=256)
def _crs(text: str) -> pyproj.CRS:
    """A CRS from the index's text, parsed once per process (about 1 ms each)."""
    return pyproj.CRS.from_user_input(text)


def item_for_row(row: dict, mountpath: str | Path | None = None) -> pystac.Item:
    """The STAC item an index row points at (its ``item_href``).

    Args:
        row: an index row (a dict of its columns).
        mountpath: a local mirror that remote hrefs map to.

    Returns:
        The item, its self link set to ``item_href``.

    Raises:
        IndexFormatError: the row has no ``item_href``.
    """
    href = row.get("item_href")
    if not href:
        raise IndexFormatError(
            f"index row {row.get('chipid')!r} has no item_href; load the item yourself"
        )
    import pystac  # only for rows without layouts

    data = json.loads(read_url(resolve_href(href, mountpath)))
    item = pystac.Item.from_dict(data)
    item.set_self_href(href)
    return item


class Source:
    """One item as reads need it: its chip grid, platform, asset hrefs (unsigned), COG
    layouts and where each band lies; and the rasterio handles opened for it (per thread).
    Built by ``from_item`` or ``from_layouts``; ``close()`` closes its handles.

    Args:
        item_id: The item's id.
        grid: The item's chip grid.
        platform: The item's platform, if known.
        hrefs: Unsigned href per asset key.
        layouts: COG layouts per asset key, where known.
        bands: ``(asset key, 1-based band index)`` per canonical band name, as indexed.
        when: The item's datetime, ISO 8601.
        item: The STAC item, for signing hooks that look at the asset; None from a row.
    """

    def __init__(
        self,
        item_id: str,
        grid: ChipGrid,
        platform: Platform | None,
        hrefs: dict[str, str],
        layouts: dict[str, AssetLayout] | None = None,
        bands: dict[str, tuple[str, int]] | None = None,
        when: str | None = None,
        item: pystac.Item | None = None,
    ) -> None:
        self.item_id, self.grid, self.platform = item_id, grid, platform
        self.hrefs = hrefs
        self.layouts: dict[str, AssetLayout] = dict(layouts or {})
        self.bands = dict(bands or {})
        self.when = when
        self.item = item  # for signing hooks that look at the asset; None when read from the row
        self.cache = DatasetCache()
        self._factors: dict[str, int | None] = {}
        self._lock = threading.Lock()
        self.chips_planned = 0  # chips planned from this source (core.read.LOCAL_LAYOUT_CHIPS)

    @classmethod
    def from_item(
        cls,
        item: pystac.Item,
        chip_size: int = 256,
        platform: Platform | None = None,
        mountpath: str | Path | None = None,
        layouts: dict[str, AssetLayout] | None = None,
        grid: ChipGrid | None = None,
    ) -> Source:
        """The source of a STAC item; its grid from the item's projection metadata (or the
        header of its finest raster), unless ``grid`` is given.

        Args:
            item: The STAC item.
            chip_size: Chip side in pixels of the finest grid.
            platform: The item's platform, if known.
            mountpath: A local mirror that remote hrefs map to.
            layouts: COG layouts per asset key, where known.
            grid: The item's chip grid, if already built.

        Returns:
            The item's source.

        Raises:
            ProjectionError: The item has no usable projection metadata nor raster header.
            GridError: The grid is degenerate.
        """
        grid = grid or item_grid(item, chip_size, mountpath=mountpath)
        when = item.datetime or item.common_metadata.start_datetime
        hrefs = {k: unsigned_href(a, mountpath) for k, a in item.assets.items()}
        return cls(
            item.id, grid, platform, hrefs, layouts, None, when.isoformat() if when else None, item
        )

    @classmethod
    def from_layouts(cls, lays: ItemLayouts, row: dict, platform: Platform | None,
                     mountpath: str | Path | None = None) -> Source:
        """The source of an index row whose layouts are standalone (grid, shape and CRS).

        Args:
            lays: The row's decoded layouts.
            row: The index row.
            platform: The item's platform, if known.
            mountpath: A local mirror that remote hrefs map to.

        Returns:
            The row's source, without its item.

        Raises:
            IndexFormatError: The layouts do not hold the grid's CRS.
        """
        if not lays.standalone:
            raise IndexFormatError(
                f"index row {row.get('chipid')!r}: its layouts do not hold the grid's CRS"
            )
        a, c, e, f = lays.grid  # type: ignore[misc]
        grid = ChipGrid(tuple(lays.shape), Affine(a, 0, c, 0, e, f),  # type: ignore[arg-type]
                        _crs(lays.crs), int(row.get("chip_size") or 256))
        hrefs = {k: resolve_href(lay.href, mountpath) for k, lay in lays.items()}
        hrefs.update({k: resolve_href(h, mountpath) for k, h in lays.hrefs.items()})
        when = row.get("datetime")
        text = when.isoformat() if isinstance(when, datetime) else (str(when) if when else None)
        return cls(str(row["item_id"]), grid, platform, hrefs, lays, lays.bands, text)

    def key_for(self, name: str) -> tuple[str, int] | None:
        """``(asset key, 1-based band index)`` of band ``name`` (canonical name, alias or
        asset key): the one band resolver of every read. The index's record first, then
        the platform's aliases and key rules over this source's asset keys.

        Args:
            name: A canonical band name, an alias or an asset key.

        Returns:
            The asset key and band index, or None if no asset holds the band.
        """
        band = self.platform.find(name) if self.platform else None
        if band is not None and band.name in self.bands and self.bands[band.name][0] in self.hrefs:
            return self.bands[band.name]
        if self.platform is not None:
            key = self.platform.key_in(self.hrefs, name)
        else:
            lower = {k.lower(): k for k in self.hrefs}
            key = name if name in self.hrefs else lower.get(name.lower())
        if key is None:
            return None
        return key, band.index if band is not None else 1

    def asset_key(self, name: str) -> str:
        """The asset key of band or asset ``name``; AssetError when the item has none.

        Args:
            name: A canonical band name, an alias or an asset key.

        Returns:
            The asset key.

        Raises:
            AssetError: If no asset of the item holds ``name``.
        """
        found = self.key_for(name)
        if found is None:
            raise AssetError(
                f"item {self.item_id!r} has no asset {name!r} (assets: {', '.join(self.hrefs)})"
            )
        return found[0]

    def default_keys(self, blacklist: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """The assets a chip holds when none are named: the platform's bands' assets in
        canonical order, else every raster asset; minus ``blacklist`` (lowercase keys).

        Args:
            blacklist: Lowercase asset keys to leave out.

        Returns:
            The asset keys, in order.
        """
        if self.platform is not None and self.platform.bands:
            found = [self.key_for(b.name) for b in self.platform.bands]
            keys = list(dict.fromkeys(k for k, _ in (f for f in found if f is not None)))
        elif self.item is not None:
            keys = raster_keys(self.item)
        else:  # from the row: the indexer recorded the raster assets
            keys = list(self.hrefs)
        return [k for k in keys if k.lower() not in blacklist]

    def signed(self, key: str) -> str:
        """Where to open asset ``key`` now: signed right before use (signatures expire).

        Args:
            key: An asset key of this source.

        Returns:
            The signed href.
        """
        asset = self.item.assets.get(key) if self.item is not None else None
        return sign_href(self.hrefs[key], asset)

    def factor(self, key: str, ds) -> int | None:
        """Grid pixels per pixel of the open dataset of ``key`` (None: resampled).

        Args:
            key: An asset key of this source.
            ds: The asset's open rasterio dataset.

        Returns:
            The whole factor, cached per key, or None when the asset is off the lattice.

        Raises:
            AssetError: If the dataset is in another CRS or does not overlap the grid.
        """
        with self._lock:
            if key not in self._factors:
                self._factors[key] = grid_factor(ds, self.grid, key)
            return self._factors[key]

    def chip_transform(self, x: int, y: int) -> Affine:
        """The affine transform of chip (x, y)'s pixels.

        Args:
            x: The chip's column.
            y: The chip's row.

        Returns:
            The grid's transform, shifted to the chip's corner.

        Raises:
            IndexError: If the chip is outside the grid.
        """
        col0, row0, _, _ = self.grid.window(x, y)
        return self.grid.transform @ Affine.translation(col0, row0)

    def close(self) -> None:
        """Close the rasterio handles this source opened (they reopen on a later read)."""
        self.cache.close()


def source_for_row(
    row: dict, mountpath: str | Path | None = None, platform: Platform | None = None
) -> Source:
    """The source of an index row: from its layouts alone when they hold the grid's CRS,
    else from its item JSON (with the row's layouts, if any).

    Args:
        row: an index row (dict).
        mountpath: a local mirror that remote hrefs map to.
        platform: the row's platform (default: the installed one its ``platform`` names).

    Returns:
        A Source; close it (or let a Reader) when done.
    """
    blob = row.get("layouts")
    lays = decoded.get(blob) if blob else None
    platform = platform or find_platform(row.get("platform"))
    if lays is not None and lays.standalone:
        return Source.from_layouts(lays, row, platform, mountpath)
    item = item_for_row(row, mountpath)
    return Source.from_item(
        item, int(row.get("chip_size") or 256), platform, mountpath, layouts=lays
    )


def grid_for_row(row: dict, mountpath: str | Path | None = None) -> ChipGrid:
    """The chip grid of an index row's item.

    Args:
        row: an index row.
        mountpath: a local mirror that remote hrefs map to.

    Returns:
        The grid, from the row's layouts when they hold it, else from its item JSON.
    """
    blob = row.get("layouts")
    lays = decoded.get(blob) if blob else None
    if lays is not None and lays.standalone:
        a, c, e, f = lays.grid  # type: ignore[misc]
        return ChipGrid(tuple(lays.shape), Affine(a, 0, c, 0, e, f),  # type: ignore[arg-type]
                        _crs(lays.crs), int(row.get("chip_size") or 256))
    return item_grid(
        item_for_row(row, mountpath), int(row.get("chip_size") or 256), mountpath=mountpath
    )


# --- the plan -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChipRequest:
    """Chip (x, y) of ``source``, assets ``keys`` (each read with all its bands)."""

    source: Source
    x: int
    y: int
    keys: tuple[str, ...]


@dataclass
class AssetRead:
    """The plan of one asset of one chip: where it is, which backend reads it and why.

    ``window`` is the native ``(r0, r1, c0, c1)`` and ``factor`` the expansion (grid
    pixels per asset pixel) when the layout gives them; the rasterio backend finds them
    from the open file (None: decided there; factor None there means resampled).
    """

    chip: int
    key: str
    href: str
    backend: str
    reason: str | None = None
    factor: int | None = None
    window: tuple[int, int, int, int] | None = None
    tile_plan: Any = field(default=None, repr=False)  # core.tiles.ChipPlan of the layout backend


# Local chips of an item read through its layouts before rasterio's open handles take over.
# Measured on full-size Sentinel-2 (RGB, page cache warm, one chip at a time, CPU ms per chip,
# /tmp/pipe_cold/bench.py in the report of issue 18's leftovers): a chip of an item not yet
# opened costs 11.5-14.5 through rasterio (a GDAL open per asset) and 7.2-7.3 through layouts;
# chips of an open item cost 5.0-5.8 through rasterio and 6.3-6.5 through layouts. Layouts win
# up to about 4 chips per item (7.2 + 6.3 (k - 1) < 6.5 + 5.0 k), rasterio beyond.
LOCAL_LAYOUT_CHIPS = 4


def choose_backend(
    lay: AssetLayout | None, href: str, use_layouts: bool, cold: bool = False
) -> str | None:
    """The one backend rule: None for the layout path, else why rasterio reads the asset.

    Local files with a layout are read through it while their item is cold (its first
    ``LOCAL_LAYOUT_CHIPS`` chips in a reader: no GDAL open), then through rasterio's open
    handles, which are cheaper per chip once open (numbers at ``LOCAL_LAYOUT_CHIPS``).

    Args:
        lay: the asset's layout, or None.
        href: where the asset lies (unsigned, resolved).
        use_layouts: False reads everything through rasterio.
        cold: the item has read fewer than ``LOCAL_LAYOUT_CHIPS`` chips in this reader.

    Returns:
        None, or the reason (``CHOSEN`` reasons are not fallbacks).
    """
    if not use_layouts:
        return "layouts off"
    if not objects.is_remote(href):
        return None if (cold and lay is not None) else "local file"
    if lay is None:
        return "no layout"
    if not objects.chips_usable(href):
        return FORKED
    return None


def plan(requests: Sequence[ChipRequest], use_layouts: bool = True) -> list[AssetRead]:
    """Per chip and asset of ``requests``, what reads it (see ``AssetRead``).

    Args:
        requests: the chips and their assets.
        use_layouts: False plans every asset for rasterio.

    Returns:
        One ``AssetRead`` per chip and asset, in request order.

    Raises:
        IndexError: a chip outside its item's grid.
    """
    out = []
    for i, req in enumerate(requests):
        grid = req.source.grid
        col0, row0, cs, _ = grid.window(req.x, req.y)  # bounds check with a clear message
        spec = GridSpec.from_grid(grid)
        cold = req.source.chips_planned < LOCAL_LAYOUT_CHIPS
        req.source.chips_planned += 1  # a heuristic's count: a race between threads is harmless
        for key in req.keys:
            href = req.source.hrefs[key]
            lay = req.source.layouts.get(key)
            reason = choose_backend(lay, href, use_layouts, cold)
            if reason is None and lay is not None:
                try:
                    factor = factor_for(lay, spec)
                    tp = plan_window(lay, row0, col0, cs, cs, factor)
                except Unsupported as exc:
                    reason = f"unsupported: {exc}"
                else:
                    _, _, r0, r1, c0, c1 = tp.window
                    out.append(AssetRead(i, key, href, LAYOUT, None, factor, (r0, r1, c0, c1), tp))
                    continue
            out.append(AssetRead(i, key, href, RASTERIO, reason))
    return out


def _reason_kind(reason: str | None) -> str:
    return (reason or "unknown").split(":")[0]


_WARNED: set[str] = set()


def fallback_kind(reason: BaseException | None) -> str:
    """The report kind of a fallback found while reading (``ReadReport.fallbacks``).

    Args:
        reason: the exception the layout backend returned for an asset.

    Returns:
        ``FORKED`` for ``objects.NoTransport`` (nothing in this process can read the object
        or decode its tiles: gs:// or az://, or async-tiff, in a child forked after its
        parent used them), "stale" for any other ``StaleLayout`` (the object changed or is
        gone), "undecodable" otherwise (tiles the decoders refuse).
    """
    if isinstance(reason, objects.NoTransport):
        return FORKED
    if isinstance(reason, StaleLayout):
        return "stale"
    return "undecodable"


_FORK_NOTED: set[tuple[int, str]] = set()


def note_fallback(reason, href: str, key: str) -> None:
    """Log why a layout read fell back, in words that say why: one warning per stale object
    ("changed since it was indexed"), one per process and cause for what this process cannot
    read from layouts ("cannot read ... in this process"), debug otherwise.

    Args:
        reason: the exception the layout backend returned (``StaleLayout``, ``Unsupported``).
        href: the asset's href (redacted in the message).
        key: the asset key.
    """
    kind = fallback_kind(reason) if reason is not None else None
    if kind == FORKED:
        noted = (os.getpid(), str(reason))
        if noted not in _FORK_NOTED:
            _FORK_NOTED.add(noted)
            log.warning(
                "asset %r (%s) cannot be read from its layout in this process (%s); reading it, "
                "and "
                "the like, with rasterio. Start workers with 'forkserver' or 'spawn' to keep the "
                "fast path",
                key,
                redact(href),
                reason,
            )
    elif kind == "stale":
        if href not in _WARNED:
            _WARNED.add(href)
            if len(_WARNED) > 100_000:
                _WARNED.clear()
            log.warning("asset %r (%s) changed since it was indexed (%s); reading it with rasterio",
                        key, redact(href), reason)
    elif reason is not None:
        log.debug("asset %r read with rasterio: %s", key, reason)


# --- the reader ---------------------------------------------------------------------------

_NOTHING = ReadReport()  # ``Reader.last`` before a thread's first read


class ReadCosts:
    """What a reader's batches cost: ``report``, their sum, and ``last``, the last batch each
    thread read. Threads may share a reader (a read-ahead thread): no update of the sum is
    lost, and each thread sees its own last batch.

    Args:
        report: The sum so far.
    """

    def __init__(self, report: ReadReport = _NOTHING) -> None:
        self.report = report
        self._last = threading.local()
        self._lock = threading.Lock()

    @property
    def last(self) -> ReadReport:
        """The cost of the last batch this thread read."""
        return getattr(self._last, "value", _NOTHING)

    @last.setter
    def last(self, batch: ReadReport) -> None:
        """Set this thread's last batch without adding it to the sum.

        Args:
            batch: The batch's cost.
        """
        self._last.value = batch

    def add(self, batch: ReadReport) -> None:
        """One more batch read by this thread: its ``last``, and added to ``report``.

        Args:
            batch: The batch's cost.
        """
        self._last.value = batch
        with self._lock:
            self.report = self.report + batch


class ReportsCosts:
    """``report`` and ``last`` of a reader that keeps its batches' costs in a ``ReadCosts``
    (``Reader``, ``training.stacks.StackReader``)."""

    _costs: ReadCosts

    @property
    def report(self) -> ReadReport:
        """What this reader's batches cost so far, all threads together."""
        return self._costs.report

    @property
    def last(self) -> ReadReport:
        """The cost of the last batch this thread read (each thread sees its own)."""
        return self._costs.last


class Reader(ReportsCosts):
    """Reads batches of chips through the pipeline and keeps what outlives a batch: the
    sources of recent items (with their open handles; at most ``max_sources``), the threads
    of the rasterio backend, and the cost so far (``report``; the last batch: ``last``).

    Per process: after a fork it starts afresh (a child must not share its parent's GDAL
    handles), and pickling (spawn) keeps only its settings.

    Args:
        mountpath: a local mirror that remote hrefs map to.
        use_layouts: read from COG layouts where the index has them (else rasterio only).
        resampling: "nearest" or "bilinear", for assets off the grid's lattice.
        workers: threads of the rasterio backend (GDAL releases the GIL).
        max_sources: items whose sources (open handles) are kept.
    """

    def __init__(
        self,
        mountpath: str | Path | None = None,
        use_layouts: bool = True,
        resampling: str = "nearest",
        workers: int = 4,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.mountpath, self.use_layouts, self.resampling = mountpath, use_layouts, resampling
        self.workers, self.max_sources = workers, max_sources
        self._init(_NOTHING)

    def _init(self, report: ReadReport) -> None:
        self._pid = os.getpid()
        self._costs = ReadCosts(report)  # a fresh lock and per-thread last; the sum kept
        self._sources: OrderedDict[tuple, Source] = OrderedDict()
        self._open: OrderedDict[int, Source] = OrderedDict()  # sources with rasterio handles
        self._retired: list[
            Source
        ] = []  # evicted, closed once no read is running (threads may share a reader)
        self._active = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("mountpath", "use_layouts", "resampling", "workers", "max_sources")
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init(_NOTHING)

    def _check_fork(self) -> None:
        if (
            os.getpid() != self._pid
        ):  # a forked child: its parent's handles and threads are not its own
            self._init(self.report)

    def source(self, row: dict, names: Sequence[str] = ()) -> Source:
        """The source of an index row, kept for later rows of the same item. When the row's
        layouts do not know an asset of ``names`` (band names or keys that are neither the
        platform's bands nor its layers), the item JSON's source, which knows every asset.

        Args:
            row: The index row.
            names: Band names or asset keys the read needs.

        Returns:
            The source, kept for later rows of the same item.

        Raises:
            IndexFormatError: A row needs its item JSON and has no ``item_href``.
        """
        self._check_fork()
        key = (row.get("item_href") or row.get("item_id"), int(row.get("chip_size") or 256))
        found = self._kept(key)
        if found is None:
            found = self._keep(key, source_for_row(row, self.mountpath))
        if found.item is None and any(found.key_for(n) is None for n in names):
            full = self._kept((*key, "item"))
            if full is None:
                item = item_for_row(row, self.mountpath)
                full = self._keep(
                    (*key, "item"),
                    Source.from_item(
                        item,
                        key[1],
                        found.platform,
                        self.mountpath,
                        layouts=found.layouts,
                        grid=found.grid,
                    ),
                )
            return full
        return found

    def _kept(self, key: tuple) -> Source | None:
        with self._lock:
            found = self._sources.get(key)
            if found is not None:
                self._sources.move_to_end(key)
            return found

    def _keep(self, key: tuple, source: Source) -> Source:
        with self._lock:
            self._sources[key] = source
            while len(self._sources) > max(MAX_KEPT, self.max_sources):
                old = self._sources.popitem(last=False)[1]
                if self._open.pop(id(old), None) is not None:
                    self._retired.append(old)
        return source

    def _opened(self, source: Source) -> None:
        """``source`` has rasterio handles now: the oldest beyond ``max_sources`` close theirs
        (once no read runs; they reopen if needed)."""
        with self._lock:
            self._open[id(source)] = source
            self._open.move_to_end(id(source))
            while len(self._open) > self.max_sources:
                self._retired.append(self._open.popitem(last=False)[1])

    def read(
        self, requests: Sequence[ChipRequest], workers: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """The pixels of each request: one plan, the layout backend for the whole batch at
        once, then rasterio for the rest. Sets ``last`` and adds it to ``report``.

        Args:
            requests: chips and their assets.
            workers: rasterio threads (default: the reader's; 1: in this thread).

        Returns:
            Per request, ``{asset key: (bands, cs, cs)}`` in the order of its keys.

        Raises:
            AssetError: an asset cannot be read by either backend.
        """
        self._check_fork()
        with self._lock:
            self._active += 1
        try:
            return self._read(requests, workers)
        finally:
            with self._lock:
                self._active -= 1
                retired = self._retired if self._active == 0 else []
                if retired:
                    self._retired = []
            for source in retired:
                source.close()

    def _read(
        self, requests: Sequence[ChipRequest], workers: int | None
    ) -> list[dict[str, np.ndarray]]:
        plans = plan(requests, self.use_layouts)
        out: list[dict[str, np.ndarray]] = [{} for _ in requests]
        cost = TileCost()
        with objects.tally() as spent:  # this read's requests, not other threads'
            fast = [p for p in plans if p.backend == LAYOUT]
            if fast:
                for p, res in zip(fast, read_plans([p.tile_plan for p in fast], cost)):
                    if isinstance(res, np.ndarray):
                        out[p.chip][p.key] = res
                    else:  # stale or undecodable: this asset alone goes to rasterio
                        note_fallback(res, p.href, p.key)
                        p.backend, p.reason = RASTERIO, f"{fallback_kind(res)}: {res}"
            slow = [p for p in plans if p.backend == RASTERIO]
            for p in slow:
                noted = (p.reason or "").startswith(("stale", "undecodable", FORKED))
                if p.reason not in CHOSEN and not noted:
                    log.debug("asset %r read with rasterio: %s", p.key, p.reason)
            if slow:
                apply_gdal_options()
                workers = self.workers if workers is None else workers
                if workers <= 1 or len(slow) < 2:
                    arrays = [self._rasterio(requests[p.chip], p.key) for p in slow]
                else:
                    arrays = list(
                        self._threads(workers).map(
                            lambda p: self._rasterio(requests[p.chip], p.key), slow
                        )
                    )
                for p, arr in zip(slow, arrays):
                    out[p.chip][p.key] = arr
        requests_n, bytes_n = wire(spent.counters)
        fallbacks = Counter(_reason_kind(p.reason) for p in slow if p.reason not in CHOSEN)
        last = ReadReport(
            chips=len(requests),
            requests=requests_n,
            bytes=bytes_n,
            tiles=cost.tiles,
            decode_seconds=cost.decode_seconds,
            layout_reads=len(plans) - len(slow),
            rasterio_reads=len(slow),
            fallbacks=tuple(sorted(fallbacks.items())),
        )
        self._costs.add(last)
        return [{k: res[k] for k in req.keys} for res, req in zip(out, requests)]

    def _threads(self, workers: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool._max_workers != workers:
            if self._pool is not None:
                self._pool.shutdown()
            # kept: its threads keep their open handles (DatasetCache is per thread)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stacchip-read")
        return self._pool

    def _rasterio(self, req: ChipRequest, key: str) -> np.ndarray:
        source = req.source
        self._opened(source)
        ds = source.cache.open(source.signed(key))
        from rasterio.errors import RasterioError  # imported with the dataset it opened

        try:
            return read_chip_window(
                ds, source.grid, source.factor(key, ds), req.x, req.y, resampling=self.resampling
            )
        except RasterioError as exc:
            raise AssetError(
                f"cannot read chip ({req.x}, {req.y}) of asset {key!r}: {exc}"
            ) from exc

    # front-end helpers over rows
    def chips(self, rows: Sequence[dict], assets: Sequence[str] | None = None,
              asset_blacklist: Sequence[str] | None = None) -> list[Chip]:
        """The chips of index rows as ``Chip``s.

        Args:
            rows: index rows.
            assets: band names or asset keys (default: the platform's bands' assets).
            asset_blacklist: keys left out of the default (default: SCL and QA layers).

        Returns:
            One Chip per row.
        """
        blacklist = {
            k.lower() for k in (DEFAULT_BLACKLIST if asset_blacklist is None else asset_blacklist)
        }
        requests = []
        for row in rows:
            source = self.source(row, assets or ())
            keys = chip_keys(source, assets, blacklist)
            requests.append(
                ChipRequest(source, int(row["chip_index_x"]), int(row["chip_index_y"]), tuple(keys))
            )
        return [make_chip(req, arrays) for req, arrays in zip(requests, self.read(requests))]

    def stacks(self, rows: Sequence[dict], bands: Sequence[str] | None = None) -> list[np.ndarray]:
        """The chips of index rows as float32 stacks.

        Args:
            rows: index rows.
            bands: band names (default: each platform's canonical bands).

        Returns:
            One float32 ``(bands, cs, cs)`` per row, bands in that order.

        Raises:
            AssetError: a band is missing or an asset cannot be read.
        """
        requests, picks = [], []
        known: dict[str | None, list[str]] = {}
        for row in rows:
            name_of = row.get("platform")
            wanted = known.get(name_of)
            if wanted is None:
                wanted = known[name_of] = band_list(find_platform(name_of), name_of, bands)
            source = self.source(row, wanted)
            pick = []
            for name in wanted:
                found = source.key_for(name)
                if found is None:
                    raise AssetError(f"chip {row.get('chipid')}: band {name!r} missing "
                                     f"(item {source.item_id!r} has {', '.join(source.hrefs)})")
                pick.append(found)
            picks.append(pick)
            keys = tuple(dict.fromkeys(k for k, _ in pick))
            requests.append(
                ChipRequest(source, int(row["chip_index_x"]), int(row["chip_index_y"]), keys)
            )
        chips = []
        for row, pick, arrays in zip(rows, picks, self.read(requests)):
            for key, index in pick:
                if index > arrays[key].shape[0]:
                    raise AssetError(
                        f"chip {row.get('chipid')}: asset {key!r} has {arrays[key].shape[0]} "
                        "bands, "
                        f"not {index}"
                    )
            chips.append([arrays[k][b - 1] for k, b in pick])
        return _float_stacks(chips)

    def close(self) -> None:
        """Close every kept source's handles and the rasterio threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        with self._lock:
            for source in [*self._sources.values(), *self._retired]:
                source.close()
            self._sources.clear()
            self._open.clear()
            self._retired.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _float_stacks(chips: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Each chip's planes cast to one float32 ``(bands, h, w)`` while copied (one pass, no
    stack in the source dtype).

    Chips of one shape are written into one ``(n, bands, h, w)`` array and returned as its rows
    (views): a collate can then take the whole batch without copying it
    (``training.collate.collate_chips``; torch's own stack of 16 RGB chips cost 0.4-0.6 CPU
    ms per chip more in one process on the loader benchmark: a new 12.6 MB tensor faulted in
    and filled on 2 OpenMP threads).

    Args:
        chips: Per chip, its planes ``(h, w)`` in band order.

    Returns:
        One float32 ``(bands, h, w)`` per chip, in order.
    """
    shapes = {(len(planes), *planes[0].shape) for planes in chips}
    if len(shapes) > 1:  # mixed chip sizes: an array each
        return [_float_stacks([planes])[0] for planes in chips]
    out = np.empty((len(chips), *(shapes.pop() if shapes else (0, 0, 0))), np.float32)
    for i, planes in enumerate(chips):
        for j, plane in enumerate(planes):
            out[i, j] = plane
    return list(out)


DEFAULT_BLACKLIST = ("scl", "qa_pixel")


def band_list(
    platform: Platform | None, name: str | None, bands: Sequence[str] | None
) -> list[str]:
    """The band names to read.

    Args:
        platform: the row's platform, or None when not installed.
        name: the platform's name (for the message).
        bands: the bands asked for, or None.

    Returns:
        ``bands``, or the platform's canonical bands.

    Raises:
        PlatformError: no bands asked for and the platform is not installed.
    """
    if bands:
        return list(bands)
    if platform is None:
        raise PlatformError(f"platform {name!r} is not installed")
    return platform.band_names


def chip_keys(source: Source, assets: Sequence[str] | None, blacklist: set[str]) -> list[str]:
    """The asset keys of a chip.

    Args:
        source: the chip's source.
        assets: band names or asset keys, or None for the defaults.
        blacklist: lowercase keys left out of the defaults.

    Returns:
        The keys, in order, without repeats.

    Raises:
        AssetError: a named asset is missing, or no default asset resolves.
    """
    if assets is not None:
        return list(dict.fromkeys(source.asset_key(name) for name in assets))
    keys = source.default_keys(blacklist)
    if not keys:  # never hand out empty chips silently
        what = (
            f"none of platform {source.platform.name!r}'s bands "
            f"({', '.join(source.platform.band_names)})"
            if source.platform and source.platform.bands
            else "no raster asset"
        )
        raise AssetError(
            f"item {source.item_id!r}: {what} resolves to an asset; its asset keys are: "
            f"{', '.join(source.hrefs) or '(none)'}; name assets explicitly or add aliases in the "
            "plugin"
        )
    return keys


def make_chip(req: ChipRequest, arrays: dict[str, np.ndarray]) -> Chip:
    """The ``Chip`` of a request's pixels.

    Args:
        req: the request.
        arrays: its pixels, ``{asset key: (bands, H, W)}``.

    Returns:
        The Chip, with its transform, CRS, band names, item id and time.
    """
    source = req.source
    platform = source.platform
    return Chip(arrays=arrays, transform=source.chip_transform(req.x, req.y), crs=source.grid.crs,
                item_id=source.item_id, x=req.x, y=req.y, band_names=band_names(arrays, platform),
                platform=platform.name if platform else None, datetime=source.when,
                nodata=platform.nodata if platform else None)


def read_rows(rows: Sequence[dict], bands: Sequence[str] | None = None, *, chips: bool = False,
              assets: Sequence[str] | None = None, reader: Reader | None = None,
              mountpath: str | Path | None = None) -> list:
    """Read index rows through the pipeline: the public entry point.

    Args:
        rows: index rows (dicts of the index's columns), any items and platforms.
        bands: band names for float32 stacks (default: each platform's canonical bands).
        chips: return ``Chip``s (one array per asset) instead of stacks.
        assets: with ``chips``, the assets (band names or keys) of each chip.
        reader: a Reader to use (its sources, threads and report); default a new one,
            closed afterwards.
        mountpath: for a new reader, a local mirror that remote hrefs map to.

    Returns:
        Per row, a float32 ``(bands, cs, cs)`` array, or a ``Chip`` when ``chips``.

    Raises:
        AssetError: an asset cannot be read or a band is missing.
    """
    own = reader is None
    reader = reader or Reader(mountpath)
    try:
        return list(reader.chips(rows, assets)) if chips else list(reader.stacks(rows, bands))
    finally:
        if own:
            reader.close()


def read_windows(layouts: Sequence[AssetLayout], windows: Sequence[tuple[int, int, int, int]],
                 factors: Sequence[int] | None = None, cost: TileCost | None = None) -> list:
    """The lower level: any windows of any assets through the layout backend, for readers
    that plan their own geometry (stacks reprojected onto an anchor grid).

    Args:
        layouts: one ``AssetLayout`` per window.
        windows: ``(row0, col0, height, width)`` per window, in grid pixels (``factors``
            grid pixels per asset pixel; with factor 1, the asset's own pixels).
        factors: expansion per window (default 1).
        cost: adds what the layout path spent (tiles decoded, decode seconds), as a
            ``Reader``'s batches do, for the caller's ``ReadReport``.

    Returns:
        Per window, ``(bands, height, width)`` in the asset's dtype, or the exception that
        says why the layout could not serve it (``StaleLayout``; read it with rasterio).

    Raises:
        AssetError: an object cannot be read (not stale: gone wrong).
    """
    factors = factors or [1] * len(windows)
    plans, where = [], []
    out: list = [None] * len(windows)
    for i, (lay, (row0, col0, h, w), k) in enumerate(zip(layouts, windows, factors)):
        try:
            plans.append(plan_window(lay, row0, col0, h, w, k))
            where.append(i)
        except Unsupported as exc:
            out[i] = exc
    for i, res in zip(where, read_plans(plans, cost)):
        out[i] = res
    return out

