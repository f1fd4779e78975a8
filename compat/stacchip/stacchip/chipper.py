"""stacchip 0.1's Chipper over `stacchip_core.Chipper`, in both of its forms:

* 0.1.32+: ``Chipper(indexer, mountpath=None, assets=None, asset_blacklist=None)`` with
  ``chip(x, y)``, ``len()``, ``chipper[i] -> (x, y, chip)`` and iteration over those;
* the first releases: ``Chipper(bucket=..., platform=..., item_id=..., chip_index_x=...,
  chip_index_y=..., mountpath=...)`` reading ``{platform}/{item_id}/stac_item.json`` from
  the bucket (or the mount), where ``chipper.chip`` is the chip itself.

``chipper.chip`` serves both: called with (x, y) it reads that chip; used as a mapping it is
the chip the constructor named.

Pixels are read by stacchip-core, which places each file on the item's grid by the file's own
georeferencing and refuses a file whose georeferencing disagrees with the item (no CRS, or a
transform the item does not state). 0.1 read pixel windows from the item's ``proj:shape``
whatever the file said: an asset the core refuses is read that way here, as 0.1 read it (the
window of chip (x, y) scaled by the ratio of the item's shape to the file's, read by nearest
neighbour to ``chip_size`` a side).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from stacchip.indexer import ChipIndexer
from stacchip.utils import _plain, load_item_local, load_item_s3
from stacchip_core import Chipper as CoreChipper
from stacchip_core.core.raster import asset_href
from stacchip_core.errors import AssetError, ConfigError

log = logging.getLogger(__name__)


class _Chip(Mapping):
    """``chipper.chip``: call it with (x, y), or read it as the constructor's chip."""

    def __init__(self, chipper: Chipper) -> None:
        self._chipper = chipper
        self._data: Mapping[str, np.ndarray] | None = None

    def __call__(self, x: int, y: int) -> Mapping[str, np.ndarray]:
        return self._chipper._read(int(x), int(y))

    def _fixed(self) -> Mapping[str, np.ndarray]:
        if self._data is None:
            x, y = self._chipper.chip_index_x, self._chipper.chip_index_y
            if x is None or y is None:
                raise TypeError("this Chipper names no chip: call chipper.chip(x, y)")
            self._data = self(x, y)
        return self._data

    def __getitem__(self, key):
        return self._fixed()[key]

    def __iter__(self):
        return iter(self._fixed())

    def __len__(self) -> int:
        return len(self._fixed())


class Chipper:
    """Chips of one indexed item, read on demand (0.1 API)."""

    def __init__(
        self,
        indexer: ChipIndexer | None = None,
        mountpath=None,
        assets=None,
        asset_blacklist=None,
        *,
        platform=None,
        item_id=None,
        chip_index_x=None,
        chip_index_y=None,
        bucket: str = "",
    ) -> None:
        # the first releases' form takes keywords (as their README wrote it): platform, item_id, ...
        if indexer is None:
            if platform is None or item_id is None:
                raise ConfigError(
                    "give an indexer, or platform and item_id (with bucket or mountpath)"
                )
            if mountpath:
                item = load_item_local(mountpath, platform, item_id)
            elif bucket:
                item = load_item_s3(bucket, platform, item_id)
            else:
                raise ConfigError("give a bucket or a mountpath to read the item from")
            indexer = ChipIndexer(item)
        self.indexer = indexer
        self.mountpath = None if not mountpath else Path(mountpath)
        self.assets = assets
        self.asset_blacklist = asset_blacklist
        self.chip_index_x = None if chip_index_x is None else int(_plain(chip_index_x))
        self.chip_index_y = None if chip_index_y is None else int(_plain(chip_index_y))
        self._core = CoreChipper(indexer._core, assets=assets, asset_blacklist=asset_blacklist,
                                 mountpath=self.mountpath)
        self._by_key: dict[str, CoreChipper | None] = {}  # None: read as 0.1 read it

    def _read(self, x: int, y: int) -> dict[str, np.ndarray]:
        """Chip (x, y) of every selected asset: the core's reads, 0.1's windows for the
        assets the core refuses."""
        if not self._by_key:
            try:
                return dict(self._core.chip(x, y))
            except AssetError:  # some asset's georeferencing is refused: find which, once
                self._by_key = {
                    key: CoreChipper(self.indexer._core, assets=[key], mountpath=self.mountpath)
                    for key in self._core.assets
                }
        out = {}
        for key, chipper in self._by_key.items():
            if chipper is not None:
                try:
                    out[key] = chipper.chip(x, y)[key]
                    continue
                except AssetError as exc:
                    if not self._readable(key):
                        raise
                    log.info(
                        "asset %r: %s; reading the item's pixel windows as stacchip 0.1 did",
                        key,
                        exc,
                    )
                    self._by_key[key] = None
            out[key] = self._window_0_1(key, x, y)
        return out

    def _href(self, key: str) -> str:
        return asset_href(self.indexer._core.item.assets[key], self.mountpath)

    def _readable(self, key: str) -> bool:
        try:
            with rasterio.open(self._href(key)):
                return True
        except rasterio.errors.RasterioIOError:
            return False

    def _window_0_1(self, key: str, x: int, y: int) -> np.ndarray:
        """0.1's read: the item's shape over the file's decides the factor, the window is
        chip (x, y) of the item's grid divided by it, read by nearest neighbour to
        ``chip_size`` a side; the file's CRS and transform are not looked at."""
        rows, cols = self.indexer.shape
        cs = self.indexer.chip_size
        self.indexer.grid.window(x, y)  # IndexError outside the grid, as the core's chips
        with rasterio.open(self._href(key)) as src:
            if rows % src.height or cols % src.width:
                raise AssetError(
                    f"asset {key!r} ({src.height} x {src.width} px) does not divide the item's "
                    f"{rows} x {cols} grid"
                )
            factor = rows / src.height
            window = Window(math.floor(x * cs / factor), math.floor(y * cs / factor),
                            math.ceil(cs / factor), math.ceil(cs / factor))
            return src.read(
                window=window, out_shape=(src.count, cs, cs), resampling=Resampling.nearest
            )

    @property
    def chip(self) -> _Chip:
        return _Chip(self)

    def get_pixels_for_asset(self, key: str, x: int, y: int):
        """Pixels of one asset for chip (x, y): (bands, chip_size, chip_size)."""
        try:
            return CoreChipper(self.indexer._core, assets=[key], mountpath=self.mountpath).chip(
                x, y
            )[key]
        except AssetError:
            if not self._readable(key):
                raise
            return self._window_0_1(key, x, y)

    def __len__(self) -> int:
        return self.indexer.size

    def __getitem__(self, index: int) -> tuple:
        y, x = divmod(index, self.indexer.x_size)
        return x, y, self.chip(x, y)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
