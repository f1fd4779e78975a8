"""Reading index rows as model input: the platform's bands in canonical order, float32.
Shared by prechip, the data-loader dataset, the TorchGeo dataset and the xarray output.

A front end over the read pipeline (core.read): rows whose layouts hold the grid are read
without the item JSON and without opening any file (only the tiles of the requested bands'
assets that the chips touch, a whole batch at once); other assets (local files, no layout,
stale, off the grid's lattice) through rasterio, each alone, with handles kept for the last
``MAX_CHIPPERS`` items so open files stay flat over an epoch.
"""

from __future__ import annotations

import numpy as np

from stacchip_core.core.read import MAX_SOURCES, Reader, ReadReport, band_list
from stacchip_core.errors import PlatformError
from stacchip_core.plugins import platforms

MAX_CHIPPERS = MAX_SOURCES  # items whose files stay open (rasterio backend); older ones are closed


class ChipReader:
    """``read(row) -> float32 (bands, cs, cs)`` in the platform's canonical band order
    (or ``bands``, a subset by name); ``read_many(rows)`` reads a batch concurrently.
    Caches are per process: after a fork they start empty, and pickling (spawn) drops them.
    ``report`` is what its reads cost so far, ``last_report`` the last batch's.

    Args:
        bands: Band names to read (default: each platform's canonical bands).
        mountpath: A local mirror that remote hrefs map to.
        use_layouts: Read through the index's COG layouts where it has them.
    """

    def __init__(
        self, bands: list[str] | None = None, mountpath=None, use_layouts: bool = True
    ) -> None:
        self.bands = bands
        self.mountpath = mountpath
        self.use_layouts = use_layouts
        self._reader = Reader(mountpath, use_layouts=use_layouts)

    def __getstate__(self):
        return {"bands": self.bands, "mountpath": self.mountpath, "use_layouts": self.use_layouts}

    def __setstate__(self, state) -> None:
        self.__dict__.update({"use_layouts": True, **state})
        self._reader = Reader(self.mountpath, use_layouts=self.use_layouts)

    def band_names(self, platform_name: str) -> list[str]:
        """The band names a chip of platform ``platform_name`` is read with.

        Args:
            platform_name: The platform's name, as in the index.

        Returns:
            The band names, in read order.

        Raises:
            PlatformError: If no bands are given and the platform is not installed.
        """
        platform = platforms().get(platform_name)
        if platform is None and not self.bands:
            raise PlatformError(f"platform {platform_name!r} is not installed")
        return band_list(platform, platform_name, self.bands)

    def read(self, row: dict) -> np.ndarray:
        """One chip: float32 ``(bands, cs, cs)``.

        Args:
            row: An index row.

        Returns:
            The chip's pixels.

        Raises:
            PlatformError: If no bands are given and the row's platform is not installed.
        """
        return self.read_many([row])[0]

    def read_many(self, rows: list[dict]) -> list[np.ndarray]:
        """The chips of ``rows``: all tiles of all rows with layouts fetched concurrently.

        Args:
            rows: Index rows.

        Returns:
            The chips' float32 ``(bands, cs, cs)`` pixels, in the order of ``rows``.

        Raises:
            PlatformError: If no bands are given and a row's platform is not installed.
        """
        for name in {row["platform"] for row in rows}:
            self.band_names(name)  # an uninstalled platform: one clear error first
        return self._reader.stacks(rows, self.bands)

    @property
    def report(self) -> ReadReport:
        """What this reader's reads cost so far (chips, requests, bytes, tiles, fallbacks)."""
        return self._reader.report

    @property
    def last_report(self) -> ReadReport:
        """What the last batch this thread read cost."""
        return self._reader.last

    def close(self) -> None:
        """Close the open handles and threads of the reader (later reads reopen them)."""
        self._reader.close()
