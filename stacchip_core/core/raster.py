"""Reading rasters: href resolution, GDAL environment, open-handle cache, native and chip reads."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from stacchip_core.core import resample
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.window import crop_expand, native_window
from stacchip_core.errors import AssetError
from stacchip_core.io.settings import apply_gdal_options
from stacchip_core.io.urls import redact_text
from stacchip_core.platform import Platform
from stacchip_core.plugins import sign_href

if TYPE_CHECKING:
    import pystac

log = logging.getLogger(__name__)
# rasterio is imported by the functions that open datasets: importing it (and boto3, which it
# pulls in) costs 0.15 s of CPU in every DataLoader worker, and the layout path never needs it


def resolve_href(href: str, mountpath: str | Path | None = None) -> str:
    """Where to open ``href``: a local path, or a URL GDAL reads (s3://, https://).

    With a ``mountpath``, remote hrefs map to ``mountpath/<path of the URL>``: the key of
    ``s3://bucket/key``, as when the bucket is mounted at ``mountpath``.

    Args:
        href: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.
        mountpath: A folder where the remote buckets are mounted, if any.

    Returns:
        The path or URL to open.
    """
    url = urlparse(href)
    if url.scheme == "file":
        return url.path
    if mountpath and url.scheme in ("s3", "http", "https", "gs", "az"):
        return str(Path(mountpath) / url.path.lstrip("/"))
    return href


def asset_href(asset: pystac.Asset, mountpath: str | Path | None = None) -> str:
    """Where to open ``asset`` now: resolved, then signed by the ``stacchip_sign_href`` hook
    (Planetary Computer SAS tokens, ...). Never store the result: signatures expire.

    Args:
        asset: The STAC asset.
        mountpath: A folder where the remote buckets are mounted, if any.

    Returns:
        The signed path or URL to open.
    """
    return sign_href(unsigned_href(asset, mountpath), asset)


def unsigned_href(asset: pystac.Asset, mountpath: str | Path | None = None) -> str:
    """Where ``asset`` lies, resolved but not signed: what may be stored (COG layouts).

    Args:
        asset: The STAC asset; a relative href is resolved against its item's location.
        mountpath: A folder where the remote buckets are mounted, if any.

    Returns:
        The unsigned path or URL.
    """
    href = asset.href
    # only relative hrefs are resolved against the item's location: pystac would turn a
    # local absolute path into a path on the catalog's host when the item has an https self link
    if not (urlparse(href).scheme or href.startswith("/")):
        href = asset.get_absolute_href() or href
    return resolve_href(href, mountpath)


@dataclass(frozen=True)
class NativeBand:
    """A band read at its own resolution; ``factor`` grid pixels per band pixel."""

    data: np.ndarray
    factor: int


class DatasetCache:
    """Open rasterio datasets by href, one set per thread (GDAL handles are not thread-safe)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def open(self, href: str):
        """This thread's open dataset for ``href``, opened on first use.

        Args:
            href: The path or URL to open.

        Returns:
            The open rasterio dataset (closed by ``close``).

        Raises:
            AssetError: If rasterio cannot open it.
        """
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        ds = handles.get(href)
        if ds is None:
            import rasterio
            from rasterio.errors import RasterioError

            try:
                ds = rasterio.open(href)
            except RasterioError as exc:
                raise AssetError(redact_text(f"cannot open {href}: {exc}")) from exc
            handles[href] = ds
            with self._lock:
                self._all.append(ds)
        return ds

    def close(self) -> None:
        """Close every dataset opened through this cache, in every thread."""
        with self._lock:
            for ds in self._all:
                ds.close()
            self._all.clear()
        self._local = threading.local()


def grid_factor(ds, grid: ChipGrid, name: str) -> int | None:
    """Grid pixels per dataset pixel when the dataset sits exactly on the grid's lattice;
    ``None`` when it is offset or of a non-whole pixel ratio and is read through
    `stacchip_core.core.resample`. Raises for another CRS or no coverage.

    Args:
        ds: An open rasterio dataset.
        grid: The item's chip grid.
        name: The asset's name, for error messages.

    Returns:
        The whole number of grid pixels per dataset pixel, or None.

    Raises:
        AssetError: If the dataset is in another CRS or does not overlap the grid.
    """
    return resample.alignment(ds, grid, name)


def read_chip_window(ds, grid: ChipGrid, factor: int | None, x: int, y: int, indexes=None,
                     resampling: str = "nearest") -> np.ndarray:
    """Pixels of chip (x, y), read at the dataset's native resolution and expanded by
    nearest neighbour to ``chip_size`` a side. Shape (bands, cs, cs). ``factor`` None (off
    the grid's lattice): a resampled read (``resampling`` nearest or bilinear).

    Args:
        ds: An open rasterio dataset.
        grid: The item's chip grid.
        factor: Grid pixels per dataset pixel, as from ``grid_factor``.
        x: The chip's column in the grid.
        y: The chip's row in the grid.
        indexes: The dataset's band indexes to read (1-based); default: all.
        resampling: ``nearest`` or ``bilinear``, for off-lattice reads.

    Returns:
        The chip's pixels, shape ``(bands, chip_size, chip_size)``.
    """
    if factor is None:  # offset or non-whole pixel ratio
        return resample.read_chip(ds, grid, x, y, indexes, resampling)
    from rasterio.windows import Window

    col0, row0, cs, _ = grid.window(x, y)
    r0, r1, c0, c1 = native_window(row0, col0, cs, cs, factor)
    block = ds.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0))
    return crop_expand(block, r0, c0, row0, col0, cs, cs, factor)


class AssetReader:
    """``read_asset(name)`` as handed to the stats hook: whole band, native resolution.

    Args:
        item: The item whose assets are read.
        grid: The item's chip grid.
        platform: The item's platform (resolves band names and aliases), if known.
        mountpath: A folder where the remote buckets are mounted, if any.
        threads: Threads that read strips of a band at once (default: up to 4).
    """

    def __init__(self, item: pystac.Item, grid: ChipGrid, platform: Platform | None, mountpath=None,
                 threads: int | None = None):
        self.item, self.grid, self.platform, self.mountpath = item, grid, platform, mountpath
        self.threads = threads or min(4, os.cpu_count() or 1)

    def _key_and_band(self, name: str, band: int | None) -> tuple[str, int]:
        """The asset key of ``name`` and its band: ``band``, else the platform's, else 1."""
        key = self.key(name)
        if band is None:
            declared = self.platform.find(name) if self.platform else None
            band = declared.index if declared else 1
        return key, band

    def key(self, name: str) -> str:
        """The item's asset key of band ``name``.

        Args:
            name: A canonical band name, an alias or an asset key.

        Returns:
            The asset key.

        Raises:
            AssetError: If the item has no such asset.
        """
        key = self.platform.asset_key(self.item, name) if self.platform else None
        if key is None and name in self.item.assets:
            key = name
        if key is None:
            raise AssetError(
                f"item {self.item.id!r} has no asset {name!r} (assets: "
                f"{', '.join(self.item.assets)})"
            )
        return key

    def __call__(self, name: str, band: int | None = None) -> NativeBand:
        """Band ``name`` (canonical name, alias or asset key). ``band`` defaults to the
        band's index in its asset as the platform declares it (NAIP's nir is band 4).

        Args:
            name: A canonical band name, an alias or an asset key.
            band: The band's index in its asset (1-based).

        Returns:
            The band's pixels over the grid at native resolution, and its factor.

        Raises:
            AssetError: If the asset is missing, cannot be read or does not fit the grid.
        """
        key, band = self._key_and_band(name, band)
        href = asset_href(self.item.assets[key], self.mountpath)
        log.info("reading %s of %s at native resolution", key, self.item.id)
        import rasterio
        from rasterio.errors import RasterioError

        apply_gdal_options()
        try:
            with rasterio.open(href) as ds:
                factor = grid_factor(ds, self.grid, key)
                if factor is None:  # off the lattice: resampled onto the grid (nearest), factor 1
                    g = self.grid
                    data = resample.read_resampled(
                        ds, g, 0, 0, g.x_size * g.chip_size, g.y_size * g.chip_size, band
                    )
                    return NativeBand(data, 1)
                # only the part the chips cover (native pixels cut by a chip edge included)
                shape = (-(-self.grid.y_size * self.grid.chip_size // factor),
                         -(-self.grid.x_size * self.grid.chip_size // factor))
                data = np.empty(shape, dtype=ds.dtypes[band - 1])
            _read_strips(href, band, data, self.threads)
        except RasterioError as exc:
            raise AssetError(redact_text(f"cannot read asset {key!r} ({href}): {exc}")) from exc
        return NativeBand(data, factor)

    def chip_fractions(self, name: str, masks: dict[str, Callable[[np.ndarray], np.ndarray]],
                       band: int | None = None) -> dict[str, np.ndarray]:
        """Per-chip fractions of several masks of one band, without holding the band.

        ``masks`` maps a name to ``fn(data) -> boolean array`` of the same shape. The band is
        read at native resolution in tile-aligned strips of whole chip rows, by several
        threads with their own handles, and each strip is masked and reduced right away:
        decoding overlaps with the mask work and memory stays at a few strips. Returns
        ``{name: float32 (y_size, x_size)}``, equal to ``grid.chip_fractions(fn(data), factor)``.

        Args:
            name: A canonical band name, an alias or an asset key.
            masks: Per mask name, a function from pixels to a boolean array.
            band: The band's index in its asset (1-based); default: the platform's.

        Returns:
            Per mask name, the fraction of each chip's pixels in the mask.

        Raises:
            AssetError: If the asset is missing, cannot be read or does not fit the grid.
        """
        key, band = self._key_and_band(name, band)
        href = asset_href(self.item.assets[key], self.mountpath)
        log.info("reading %s of %s at native resolution, in strips", key, self.item.id)
        import rasterio
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        apply_gdal_options()
        grid = self.grid
        try:
            with rasterio.open(href) as ds:
                factor = grid_factor(ds, grid, key)
                tile_height = ds.block_shapes[band - 1][0]
            if (
                factor is None or grid.chip_size % factor
            ):  # off the lattice, or chips cut native pixels
                return resample.chip_fractions(href, band, grid, factor, masks, self.threads)
            block = grid.chip_size // factor
            rows_per_read = max(1, tile_height // block)  # whole tiles per read where chips allow
            ny, nx = grid.y_size, grid.x_size
            counts = {k: np.zeros((ny, nx), np.int64) for k in masks}
            groups = [range(y, min(y + rows_per_read, ny)) for y in range(0, ny, rows_per_read)]

            def work(part: list[range]) -> None:
                with rasterio.open(href) as ds:
                    for rows in part:
                        data = ds.read(
                            band, window=Window(0, rows[0] * block, nx * block, len(rows) * block)
                        )
                        for k, fn in masks.items():
                            m = fn(data)
                            if m.dtype != np.uint8:
                                m = (
                                    m.view(np.uint8)
                                    if m.dtype == np.bool_
                                    else (m != 0).view(np.uint8)
                                )
                            strip = m.reshape(len(rows), block, nx, block).sum(
                                axis=1, dtype=np.uint16
                            )
                            counts[k][rows[0]:rows[-1] + 1] = strip.sum(axis=2, dtype=np.uint32)

            parts = [groups[i::self.threads] for i in range(self.threads)]
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(work, [p for p in parts if p]))
        except RasterioError as exc:
            raise AssetError(redact_text(f"cannot read asset {key!r} ({href}): {exc}")) from exc
        return {k: (c / float(block * block)).astype(np.float32) for k, c in counts.items()}


def _read_strips(href: str, band: int, out: np.ndarray, threads: int) -> None:
    """Fill ``out`` with the top-left window of that shape, in row strips decoded by
    ``threads`` threads, each with its own handle (GDAL decodes without the GIL)."""
    import rasterio
    from rasterio.windows import Window

    rows, cols = out.shape
    edges = np.linspace(0, rows, max(1, threads) + 1).astype(int)

    def read(i: int) -> None:
        r0, r1 = edges[i], edges[i + 1]
        if r1 > r0:
            with rasterio.open(href) as ds:
                ds.read(band, window=Window(0, r0, cols, r1 - r0), out=out[r0:r1])

    if threads <= 1:
        read(0)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, range(threads)))
