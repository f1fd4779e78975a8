"""Reading index rows as model input: the platform's bands in canonical order, float32.
Shared by prechip and the data-loader dataset.

Rows with COG layouts (the index's ``layouts`` column) are read without the item JSON and
without opening any file: only the tiles of the requested bands' assets that the chips touch,
a whole batch at once (core.tiles). Other rows, and assets whose layout is stale or that the
layout path cannot decode, go through a Chipper over the item JSON (rasterio); those Chippers
are kept in a bounded LRU so open handles stay flat over an epoch.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from stacchip_core.core.chipper import Chipper, item_for_row, note_fallback
from stacchip_core.core.layout import decoded
from stacchip_core.core.output import band_stack
from stacchip_core.core.tiles import GridSpec, read_batch
from stacchip_core.errors import AssetError, PlatformError
from stacchip_core.io import objects
from stacchip_core.plugins import platforms

MAX_CHIPPERS = 32  # items whose files stay open (fallback path); older ones are closed


class ChipReader:
    """``read(row) -> float32 (bands, cs, cs)`` in the platform's canonical band order
    (or ``bands``, a subset by name); ``read_many(rows)`` reads a batch concurrently.
    Caches are per process: after a fork they start empty, and pickling (spawn) drops them."""

    def __init__(self, bands: list[str] | None = None, mountpath=None, use_layouts: bool = True) -> None:
        self.bands = bands
        self.mountpath = mountpath
        self.use_layouts = use_layouts
        self._init_cache()

    def _init_cache(self) -> None:
        self._pid = os.getpid()
        self._chippers: OrderedDict[str, Chipper] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"bands": self.bands, "mountpath": self.mountpath, "use_layouts": self.use_layouts}

    def __setstate__(self, state) -> None:
        self.__dict__.update({"use_layouts": True, **state})
        self._init_cache()

    def _platform(self, name: str):
        platform = platforms().get(name)
        if platform is None:
            raise PlatformError(f"platform {name!r} is not installed")
        return platform

    def _chipper(self, row: dict) -> Chipper:
        if os.getpid() != self._pid:  # a forked worker must not share its parent's GDAL handles
            self._init_cache()
        href = row["item_href"]
        with self._lock:
            chipper = self._chippers.get(href)
            if chipper is not None:
                self._chippers.move_to_end(href)
                return chipper
        platform = self._platform(row["platform"])
        item = item_for_row(row, self.mountpath)
        # only the assets of the wanted bands (all platform assets opened 10 files for an RGB chip)
        keys = [platform.asset_key(item, name) for name in self.band_names(row["platform"])]
        assets = list(dict.fromkeys(keys if None not in keys else platform.asset_keys(item).values()))
        chipper = Chipper(item, assets=assets, mountpath=self.mountpath, chip_size=int(row["chip_size"]),
                          platform=platform, layouts=row.get("layouts"), use_layouts=self.use_layouts)
        with self._lock:
            self._chippers[href] = chipper
            while len(self._chippers) > MAX_CHIPPERS:
                self._chippers.popitem(last=False)[1].close()
        return chipper

    def band_names(self, platform_name: str) -> list[str]:
        platform = platforms()[platform_name]
        return self.bands or platform.band_names

    def _sources(self, row: dict, lays: dict) -> list[tuple[str, int]] | None:
        """(asset key, 1-based band) of each wanted band in the row's layouts, or None."""
        platform = self._platform(row["platform"])
        lower = {k.lower(): k for k in lays}
        out = []
        for name in self.band_names(row["platform"]):
            band = platform.find(name)
            if band is None:
                return None
            key = next((lower[k.lower()] for k in band.keys if k.lower() in lower), None)
            if key is None or band.index > lays[key].bands:
                return None
            out.append((key, band.index))
        return out

    def read(self, row: dict) -> np.ndarray:
        return self.read_many([row])[0]

    def read_many(self, rows: list[dict]) -> list[np.ndarray]:
        """The chips of ``rows``: all tiles of all rows with layouts fetched concurrently."""
        if os.getpid() != self._pid:
            self._init_cache()
        out: list[np.ndarray | None] = [None] * len(rows)
        fast = []  # (i, sources, layouts, grid)
        for i, row in enumerate(rows):
            blob = row.get("layouts") if self.use_layouts else None
            if blob and not objects.chips_usable():
                blob = None
            if blob:
                lays = decoded.get(blob)
                sources = self._sources(row, lays)
                if sources is not None:
                    fast.append((i, sources, lays, GridSpec.from_layouts(lays, int(row["chip_size"]))))
        if fast:
            results = read_batch([f[2] for f in fast], [list(dict.fromkeys(k for k, _ in f[1])) for f in fast],
                                 [f[3] for f in fast],
                                 [(int(rows[f[0]]["chip_index_x"]), int(rows[f[0]]["chip_index_y"])) for f in fast])
            for (i, sources, lays, _), res in zip(fast, results):
                bad = [k for k, v in res.items() if not isinstance(v, np.ndarray)]
                for k in bad:
                    note_fallback(res[k], lays[k].href, k)
                if bad:  # stale or undecodable: the rasterio path reads this row
                    continue
                out[i] = np.stack([res[k][b - 1] for k, b in sources]).astype(np.float32)
        return [self._read_slow(row) if arr is None else arr for arr, row in zip(out, rows)]

    def _read_slow(self, row: dict) -> np.ndarray:
        chipper = self._chipper(row)
        chip = chipper.chips([(int(row["chip_index_x"]), int(row["chip_index_y"]))], workers=1)[0]
        stack, names = band_stack(chip, chipper.platform)
        wanted = self.band_names(row["platform"])
        missing = [b for b in wanted if b not in names]
        if missing:
            raise AssetError(f"chip {row['chipid']}: bands {missing} missing (item has {names})")
        return stack[[names.index(b) for b in wanted]].astype(np.float32)

    def close(self) -> None:
        for chipper in self._chippers.values():
            chipper.close()
        self._chippers.clear()
