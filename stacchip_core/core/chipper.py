"""The Chipper: pixels of any chip of an item, read on demand from its COGs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import pystac
from affine import Affine
from rasterio.errors import RasterioError

from stacchip_core.core.chip import Chip, band_names
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.headers import item_grid
from stacchip_core.core.indexer import Indexer, load_item
from stacchip_core.core.raster import (
    DatasetCache,
    asset_href,
    grid_factor,
    read_chip_window,
    resolve_href,
    unsigned_href,
)
from stacchip_core.errors import AssetError, IndexFormatError, PlatformError
from stacchip_core.io.settings import apply_gdal_options
from stacchip_core.io.store import read_url
from stacchip_core.platform import Platform, unresolved_bands_message
from stacchip_core.plugins import find_platform, get_platform, platform_for_item

if TYPE_CHECKING:  # imported on first use: obstore and async-tiff load only for remote reads
    from stacchip_core.core.tiles import GridSpec

log = logging.getLogger(__name__)

DEFAULT_BLACKLIST = ("scl", "qa_pixel")
_NON_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual"}


def _is_raster(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    roles = set(asset.roles or [])
    if roles and roles <= _NON_DATA_ROLES:
        return False
    return "tiff" in media or "jp2" in media or "proj:shape" in asset.extra_fields or not media


class Chipper:
    """Read chips of one item. ``chip(x, y)`` -> ``{asset key: array (bands, cs, cs)}``.

    Default assets: the platform's bands in canonical order when the platform is known,
    else every raster asset; minus ``asset_blacklist`` (default: SCL and QA layers).
    Coarser assets (20 m, 60 m on a 10 m grid) are read at native resolution and expanded
    by nearest neighbour. Assets off the grid's lattice (offset by a fraction of a pixel, or
    of a non-whole pixel ratio) are resampled: ``resampling`` "nearest" (default) or "bilinear". Open datasets are kept for the Chipper's lifetime: use it as a
    context manager or call ``close()``.
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
        blacklist = {k.lower() for k in (DEFAULT_BLACKLIST if asset_blacklist is None else asset_blacklist)}
        self.assets = self._select_assets(assets, blacklist)
        apply_gdal_options()
        self._cache = DatasetCache()
        self._factors: dict[str, int | None] = {}  # None: off the lattice, resampled
        self._pool: ThreadPoolExecutor | None = None  # kept: its threads keep their open handles
        # COG layouts (core.layout): from the index row, else recorded on first use (one ranged
        # read per asset instead of rasterio's probe + header per asset)
        self.use_layouts = use_layouts
        self._layout_blob = layouts
        self._layouts: dict | None = None
        self._spec: GridSpec | None = None
        self._remote: bool | None = None

    def _platform(self, platform) -> Platform | None:
        if isinstance(platform, Platform):
            return platform
        if platform:
            return get_platform(platform)
        try:
            return platform_for_item(self.item)
        except PlatformError:
            return None

    def _select_assets(self, assets, blacklist) -> list[str]:
        if assets is not None:
            keys = []
            for name in assets:
                key = self.platform.asset_key(self.item, name) if self.platform else None
                key = key or (name if name in self.item.assets else None)
                if key is None:
                    raise AssetError(
                        f"item {self.item.id!r} has no asset {name!r} (assets: {', '.join(self.item.assets)})"
                    )
                keys.append(key)
            return keys
        if self.platform is not None and self.platform.bands:
            keys = list(dict.fromkeys(self.platform.asset_keys(self.item).values()))
        else:
            keys = [k for k, a in self.item.assets.items() if _is_raster(a)]
        keys = [k for k in keys if k.lower() not in blacklist]
        if not keys:  # never hand out empty chips silently
            raise AssetError(unresolved_bands_message(self.item, self.platform))
        return keys

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
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._cache.close()

    def _dataset(self, key: str):
        href = asset_href(self.item.assets[key], self.mountpath)
        ds = self._cache.open(href)
        if key not in self._factors:
            self._factors[key] = grid_factor(ds, self.grid, key)
        return ds

    def layouts(self) -> dict:
        """``{asset key: AssetLayout}`` of the selected remote assets that have one.

        Local files are read through rasterio: a Chipper keeps their handles open, and GDAL
        then reads a chip in half the time of the layout path (full-size S2, RGB: 245 vs 122
        chips/s, benchmarks/bench_cloud.py); layouts save requests, which local files do not cost."""
        if self._layouts is None:
            from stacchip_core.core.layout import decoded, record_layouts
            from stacchip_core.io.objects import is_remote

            blob = self._layout_blob
            if blob is None and self.use_layouts:
                t = self.grid.transform
                hrefs = {k: unsigned_href(self.item.assets[k], self.mountpath) for k in self.assets}
                blob = record_layouts({k: h for k, h in hrefs.items() if is_remote(h)}, (t.a, t.c, t.e, t.f))
            self._layouts = {k: lay for k, lay in (decoded.get(blob) if blob else {}).items() if is_remote(lay.href)}
            from stacchip_core.core.tiles import GridSpec

            self._spec = GridSpec.from_grid(self.grid)
        return self._layouts

    def _rasterio_chip(self, key: str, x: int, y: int) -> np.ndarray:
        ds = self._dataset(key)
        try:
            return read_chip_window(ds, self.grid, self._factors[key], x, y, resampling=self.resampling)
        except RasterioError as exc:
            raise AssetError(f"cannot read chip ({x}, {y}) of asset {key!r}: {exc}") from exc

    def chip(self, x: int, y: int) -> Chip:
        """Chip (x, y): a `Chip`, the mapping ``{asset key:
        array (bands, cs, cs)}`` of every selected asset, with its transform and CRS."""
        return self.chips([(x, y)], workers=1)[0]

    def _chip(self, arrays: dict[str, np.ndarray], x: int, y: int) -> Chip:
        col0, row0, _, _ = self.grid.window(x, y)
        when = self.item.datetime or self.item.common_metadata.start_datetime
        return Chip(
            arrays=arrays, transform=self.grid.transform @ Affine.translation(col0, row0), crs=self.grid.crs,
            item_id=self.item.id, x=x, y=y, band_names=band_names(arrays, self.platform),
            platform=self.platform.name if self.platform else None,
            datetime=when.isoformat() if when else None,
            nodata=self.platform.nodata if self.platform else None,
        )

    def chips(self, xys: Iterable[tuple[int, int]], workers: int = 4) -> list[Chip]:
        """Many chips (`Chip`). From layouts: every tile of
        every chip and asset fetched concurrently (adjacent ranges coalesced) and decoded in
        async-tiff's thread pool. Assets without a usable layout (none recorded, stale, a
        codec async-tiff lacks, or off the grid's lattice: resampled) are read through
        rasterio by ``workers`` threads (GDAL releases the GIL), which live as long as the
        Chipper and keep their open handles. Results keep the order of ``xys``."""
        xys = [(int(x), int(y)) for x, y in xys]
        for x, y in xys:
            self.grid.window(x, y)  # bounds check with a clear message
        from stacchip_core.io.objects import chips_usable, is_remote

        if self._remote is None:  # once: local files never take the layout path (see layouts())
            self._remote = any(is_remote(unsigned_href(self.item.assets[k], self.mountpath)) for k in self.assets)
        lays = self.layouts() if self.use_layouts and self._remote and chips_usable() else {}
        if lays:
            from stacchip_core.core.tiles import read_batch

            out = read_batch([lays] * len(xys), [self.assets] * len(xys), [self._spec] * len(xys), xys)
        else:
            out = [{} for _ in xys]
        todo = [(i, k) for i, res in enumerate(out) for k in self.assets
                if not isinstance(res.get(k), np.ndarray)]
        for i, k in todo:
            lay = lays.get(k)
            note_fallback(out[i].get(k), lay.href if lay is not None else self.item.assets[k].href, k)
        if todo:
            if workers <= 1 or len(todo) < 2:
                arrays = [self._rasterio_chip(k, *xys[i]) for i, k in todo]
            else:
                if self._pool is None or self._pool._max_workers != workers:
                    if self._pool is not None:
                        self._pool.shutdown()
                    self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stacchip-chips")
                arrays = list(self._pool.map(lambda ik: self._rasterio_chip(ik[1], *xys[ik[0]]), todo))
            for (i, k), arr in zip(todo, arrays):
                out[i][k] = arr
        return [self._chip({k: res[k] for k in self.assets}, x, y) for res, (x, y) in zip(out, xys)]


_WARNED: set[str] = set()


def note_fallback(reason, href: str, key: str) -> None:
    """One warning per asset whose layout is stale; quieter notes for the other fallbacks."""
    from stacchip_core.io.objects import StaleObject as StaleLayout
    from stacchip_core.io.urls import redact

    if isinstance(reason, StaleLayout):
        if href not in _WARNED:
            _WARNED.add(href)
            if len(_WARNED) > 100_000:
                _WARNED.clear()
            log.warning("asset %r (%s) changed since it was indexed (%s); reading it with rasterio",
                        key, redact(href), reason)
    elif reason is not None:
        log.debug("asset %r read with rasterio: %s", key, reason)


def item_for_row(row: dict, mountpath: str | Path | None = None) -> pystac.Item:
    """The STAC item an index row points at (its ``item_href``)."""
    href = row.get("item_href")
    if not href:
        raise IndexFormatError(f"index row {row.get('chipid')!r} has no item_href; load the item yourself")
    data = json.loads(read_url(resolve_href(href, mountpath)))
    item = pystac.Item.from_dict(data)
    item.set_self_href(href)
    return item


def chip_from_row(
    row: dict,
    assets: Sequence[str] | None = None,
    mountpath: str | Path | None = None,
    asset_blacklist: Sequence[str] | None = None,
) -> Chip:
    """The chip an index row describes (a dict of the row's columns); from the row's COG
    layouts when it has them."""
    item = item_for_row(row, mountpath)
    with Chipper(
        item,
        assets=assets,
        asset_blacklist=asset_blacklist,
        mountpath=mountpath,
        chip_size=int(row.get("chip_size") or 256),
        platform=find_platform(row.get("platform")),
        layouts=row.get("layouts"),
    ) as chipper:
        return chipper.chip(int(row["chip_index_x"]), int(row["chip_index_y"]))
