"""The Chipper: pixels of any chip of an item, read on demand from its COGs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pystac
from rasterio.errors import RasterioError

from stacchip_core.errors import AssetError, PlatformError, StacchipError
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.indexer import Indexer, load_item
from stacchip_core.platform import Platform, unresolved_bands_message
from stacchip_core.plugins import find_platform, get_platform, platform_for_item
from stacchip_core.core.raster import DatasetCache, asset_href, grid_factor, read_chip_window, resolve_href
from stacchip_core.io.settings import apply_gdal_options
from stacchip_core.io.store import read_url

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
    ) -> None:
        if isinstance(item_or_indexer, Indexer):
            self.item = item_or_indexer.item
            self.grid: ChipGrid = item_or_indexer.grid
            self.platform = item_or_indexer.platform
            mountpath = mountpath or item_or_indexer.mountpath
        else:
            self.item = load_item(item_or_indexer)
            self.grid = ChipGrid.from_item(self.item, chip_size or 256, mountpath=mountpath)
            self.platform = self._platform(platform)
        self.mountpath = mountpath
        self.resampling = resampling  # for assets off the grid's lattice (core.resample)
        blacklist = {k.lower() for k in (DEFAULT_BLACKLIST if asset_blacklist is None else asset_blacklist)}
        self.assets = self._select_assets(assets, blacklist)
        apply_gdal_options()
        self._cache = DatasetCache()
        self._factors: dict[str, int] = {}
        self._pool: ThreadPoolExecutor | None = None  # kept: its threads keep their open handles

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

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"chip {index} out of range ({len(self)} chips)")
        y, x = divmod(index, self.grid.x_size)
        return self.chip(x, y)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(self)):
            yield self[index]

    def __enter__(self) -> Chipper:
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

    def chip(self, x: int, y: int) -> dict[str, np.ndarray]:
        """Pixels of chip (x, y) for every selected asset."""
        self.grid.window(x, y)  # bounds check with a clear message
        out = {}
        for key in self.assets:
            ds = self._dataset(key)
            try:
                out[key] = read_chip_window(ds, self.grid, self._factors[key], x, y, resampling=self.resampling)
            except RasterioError as exc:
                raise AssetError(f"cannot read chip ({x}, {y}) of asset {key!r}: {exc}") from None
        return out

    def chips(self, xys: Iterable[tuple[int, int]], workers: int = 4) -> list[dict[str, np.ndarray]]:
        """Many chips, read by ``workers`` threads (GDAL reads release the GIL). The threads
        live as long as the Chipper and each keeps its own open handles across calls.
        Results keep the order of ``xys``."""
        xys = list(xys)
        if workers <= 1 or len(xys) < 2:
            return [self.chip(x, y) for x, y in xys]
        if self._pool is None or self._pool._max_workers != workers:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stacchip-chips")
        return list(self._pool.map(lambda xy: self.chip(*xy), xys))


def item_for_row(row: dict, mountpath: str | Path | None = None) -> pystac.Item:
    """The STAC item an index row points at (its ``item_href``)."""
    href = row.get("item_href")
    if not href:
        raise StacchipError(f"index row {row.get('chipid')!r} has no item_href; load the item yourself")
    data = json.loads(read_url(resolve_href(href, mountpath)))
    item = pystac.Item.from_dict(data)
    item.set_self_href(href)
    return item


def chip_from_row(
    row: dict,
    assets: Sequence[str] | None = None,
    mountpath: str | Path | None = None,
    asset_blacklist: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Pixels of the chip an index row describes (a dict of the row's columns)."""
    item = item_for_row(row, mountpath)
    with Chipper(
        item,
        assets=assets,
        asset_blacklist=asset_blacklist,
        mountpath=mountpath,
        chip_size=int(row.get("chip_size") or 256),
        platform=find_platform(row.get("platform")),
    ) as chipper:
        return chipper.chip(int(row["chip_index_x"]), int(row["chip_index_y"]))
