"""Reading index rows as model input: the platform's bands in canonical order, float32.
Shared by prechip and the data-loader dataset; keeps one Chipper per item per process."""

from __future__ import annotations

import os
import threading

import numpy as np

from stacchip_core.core.chipper import Chipper, item_for_row
from stacchip_core.errors import StacchipError
from stacchip_core.core.output import band_stack
from stacchip_core.plugins import platforms


class ChipReader:
    """``read(row) -> float32 (bands, cs, cs)`` in the platform's canonical band order
    (or ``bands``, a subset by name). Open datasets are cached per item and per process:
    after a fork the cache starts empty, and pickling (spawn) drops it."""

    def __init__(self, bands: list[str] | None = None, mountpath=None) -> None:
        self.bands = bands
        self.mountpath = mountpath
        self._init_cache()

    def _init_cache(self) -> None:
        self._pid = os.getpid()
        self._chippers: dict[str, Chipper] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"bands": self.bands, "mountpath": self.mountpath}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def _chipper(self, row: dict) -> Chipper:
        if os.getpid() != self._pid:  # a forked worker must not share its parent's GDAL handles
            self._init_cache()
        href = row["item_href"]
        with self._lock:
            chipper = self._chippers.get(href)
            if chipper is None:
                platform = platforms().get(row["platform"])
                if platform is None:
                    raise StacchipError(f"platform {row['platform']!r} is not installed")
                item = item_for_row(row, self.mountpath)
                assets = list(dict.fromkeys(platform.asset_keys(item).values()))
                chipper = Chipper(item, assets=assets, mountpath=self.mountpath,
                                  chip_size=int(row["chip_size"]), platform=platform)
                self._chippers[href] = chipper
        return chipper

    def band_names(self, platform_name: str) -> list[str]:
        platform = platforms()[platform_name]
        return self.bands or platform.band_names

    def read(self, row: dict) -> np.ndarray:
        chipper = self._chipper(row)
        stack, names = band_stack(chipper.chip(int(row["chip_index_x"]), int(row["chip_index_y"])), chipper.platform)
        wanted = self.band_names(row["platform"])
        missing = [b for b in wanted if b not in names]
        if missing:
            raise StacchipError(f"chip {row['chipid']}: bands {missing} missing (item has {names})")
        return stack[[names.index(b) for b in wanted]].astype(np.float32)

    def close(self) -> None:
        for chipper in self._chippers.values():
            chipper.close()
        self._chippers.clear()
