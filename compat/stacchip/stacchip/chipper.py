"""stacchip 0.1's Chipper over `stacchip_core.Chipper`, in both of its forms:

* 0.1.32+: ``Chipper(indexer, mountpath=None, assets=None, asset_blacklist=None)`` with
  ``chip(x, y)``, ``len()``, ``chipper[i] -> (x, y, chip)`` and iteration over those;
* the first releases: ``Chipper(bucket=..., platform=..., item_id=..., chip_index_x=...,
  chip_index_y=..., mountpath=...)`` reading ``{platform}/{item_id}/stac_item.json`` from
  the bucket (or the mount), where ``chipper.chip`` is the chip itself.

``chipper.chip`` serves both: called with (x, y) it reads that chip; used as a mapping it is
the chip the constructor named.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stacchip.indexer import ChipIndexer
from stacchip.utils import _plain, load_item_local, load_item_s3
from stacchip_core import Chipper as CoreChipper
from stacchip_core.errors import ConfigError


class _Chip(Mapping):
    """``chipper.chip``: call it with (x, y), or read it as the constructor's chip."""

    def __init__(self, chipper: Chipper) -> None:
        self._chipper = chipper
        self._data: Mapping[str, np.ndarray] | None = None

    def __call__(self, x: int, y: int) -> Mapping[str, np.ndarray]:
        return self._chipper._core.chip(int(x), int(y))

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

    def __init__(self, indexer: ChipIndexer | None = None, mountpath=None, assets=None, asset_blacklist=None, *,
                 platform=None, item_id=None, chip_index_x=None, chip_index_y=None, bucket: str = "") -> None:
        # the first releases' form takes keywords (as their README wrote it): platform, item_id, ...
        if indexer is None:
            if platform is None or item_id is None:
                raise ConfigError("give an indexer, or platform and item_id (with bucket or mountpath)")
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

    @property
    def chip(self) -> _Chip:
        return _Chip(self)

    def get_pixels_for_asset(self, key: str, x: int, y: int):
        """Pixels of one asset for chip (x, y): (bands, chip_size, chip_size)."""
        return CoreChipper(self.indexer._core, assets=[key], mountpath=self.mountpath).chip(x, y)[key]

    def __len__(self) -> int:
        return self.indexer.size

    def __getitem__(self, index: int) -> tuple:
        y, x = divmod(index, self.indexer.x_size)
        return x, y, self.chip(x, y)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
