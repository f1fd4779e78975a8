"""Writing chips to files: .npz arrays, a georeferenced GeoTIFF, an RGB PNG preview."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine

from stacchip_core.core.chip import Chip, band_names, stack_arrays
from stacchip_core.core.grid import ChipGrid
from stacchip_core.errors import OutputError
from stacchip_core.platform import Platform

if TYPE_CHECKING:
    from stacchip_core.core.stacks import StackPixels

log = logging.getLogger(__name__)
# rasterio is imported by the functions that write: importing it (and boto3, which it pulls in)
# costs 0.15 s of CPU, paid by every DataLoader worker and CLI call that never writes a file


def band_stack(
    chip: Mapping[str, np.ndarray], platform: Platform | None
) -> tuple[np.ndarray, list[str]]:
    """All bands of a chip in one (bands, cs, cs) array, with a name per band
    (see `stacchip_core.core.chip.band_names`).

    Args:
        chip: The chip's arrays by asset key.
        platform: The chip's platform, for band names; None for generic names.

    Returns:
        The stacked bands and one name per band.
    """
    return stack_arrays(chip), list(band_names(chip, platform))


def stretch_rgb(stack: np.ndarray, names: list[str], nodata=None) -> np.ndarray:
    """An RGB uint8 image (3, h, w) from red/green/blue bands (else the first ones),
    each stretched between its 2nd and 98th percentile of valid pixels.

    Args:
        stack: The bands, shape ``(bands, h, w)``.
        names: One name per band.
        nodata: The nodata value; pixels nodata in all three bands are black.

    Returns:
        The stretched image, uint8 of shape ``(3, h, w)``.
    """
    wanted = [names.index(b) for b in ("red", "green", "blue") if b in names]
    if len(wanted) != 3:
        wanted = list(range(min(3, len(names))))
        wanted += [wanted[-1]] * (3 - len(wanted))
    rgb = stack[wanted].astype(np.float64)
    valid = (
        np.ones(rgb.shape[1:], bool) if nodata is None else ~np.all(stack[wanted] == nodata, axis=0)
    )
    valid &= np.isfinite(rgb).all(
        axis=0
    )  # NaN/inf (Sentinel-1 without signal) would poison the percentiles
    rgb[:, ~valid] = 0
    out = np.zeros(rgb.shape, np.uint8)
    for i in range(3):
        values = rgb[i][valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, [2, 98])
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out[i] = np.clip((rgb[i] - lo) * scale, 0, 255).astype(np.uint8)
        out[i][~valid] = 0
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write a (3, h, w) uint8 array as PNG (no georeference, by design).

    Args:
        path: The file to write.
        rgb: The image, uint8 of shape ``(3, h, w)``.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="PNG", count=3, height=rgb.shape[1], width=rgb.shape[2], dtype="uint8"
        ) as dst:
            dst.write(rgb)


def write_chip(
    path: str | Path,
    chip: Chip | Mapping[str, np.ndarray] | StackPixels,
    grid: ChipGrid | None = None,
    x: int | None = None,
    y: int | None = None,
    platform: Platform | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write a chip as .npz (one array per asset), .tif (all bands, georeferenced) or
    .png (RGB preview), by the suffix of ``path``, atomically.

    A `Chip` carries its own transform, CRS and band names
    (``write_chip(path, chip)``); a plain mapping of arrays needs ``grid``, ``x`` and ``y``
    for a .tif (and ``platform`` for band names).

    Args:
        path: The file to write; its suffix picks the format.
        chip: A Chip, a stack's pixels, or a mapping of arrays by asset key.
        grid: The item's chip grid, to georeference a plain mapping.
        x: The chip's column in ``grid``.
        y: The chip's row in ``grid``.
        platform: The chip's platform, for band names.
        metadata: Values to store: GeoTIFF tags (.tif) or ``meta_{key}`` arrays (.npz).

    Returns:
        The written file.

    Raises:
        OutputError: If the suffix is not supported, a stack is written as .png, a .tif lacks
            its georeference, or the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".tif", ".tiff", ".png"):
        raise OutputError(f"unsupported output {path.name!r}: use .npz, .tif or .png")
    from stacchip_core.core.stacks import StackPixels, stack_arrays_for_output

    georef: tuple[Affine | None, str | None, list[str]] | None
    if isinstance(
        chip, StackPixels
    ):  # a stack: its members' bands, named "{platform} {date} {band}"
        if suffix == ".png":
            raise OutputError(f"cannot write a stack as {path.name}: use .npz or .tif")
        chip, georef, metadata = stack_arrays_for_output(chip, suffix, metadata)
    elif isinstance(chip, Chip):
        georef = (chip.transform, chip.crs.to_wkt(), list(chip.band_names))
        if platform is None and chip.platform:
            from stacchip_core.plugins import find_platform

            platform = find_platform(chip.platform)
        metadata = {"chipid": chip.chipid, **(metadata or {})}
    elif grid is not None and x is not None and y is not None:
        from rasterio.windows import Window
        from rasterio.windows import transform as window_transform

        georef = (window_transform(Window(*grid.window(x, y)), grid.transform), grid.crs.to_wkt(),
                  list(band_names(chip, platform)))
    elif suffix in (".tif", ".tiff"):
        raise OutputError(f"cannot write {path.name}: a GeoTIFF needs a Chip, or grid, x and y")
    else:
        georef = (None, None, list(band_names(chip, platform)))
    import rasterio.errors
    from rasterio._err import CPLE_BaseError

    from stacchip_core.io.files import publishing

    gdal_said: list[str] = []
    try:
        with publishing(path) as tmp, quiet_gdal() as gdal_said:
            try:
                _write_chip_file(tmp, suffix, chip, georef, platform, metadata)
            finally:
                Path(f"{tmp}.aux.xml").unlink(missing_ok=True)
    except (OSError, rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        # GDAL's own words say why ("_tiffWriteProc: No space left on
        # device"), its exception only "Write failed"
        reason = getattr(exc, "strerror", None) or (
            gdal_said[-1].rpartition(": ")[2] if gdal_said else str(exc)
        )
        if not getattr(exc, "strerror", None) and _disk_full(path.parent):
            reason = os.strerror(errno.ENOSPC)
        raise OutputError(f"cannot write {path}: {reason}") from exc
    return path


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _write_chip_file(tmp: Path, suffix: str, chip, georef, platform, metadata) -> None:
    if suffix == ".npz" and georef is None:  # a stack's named arrays, as they are
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **chip)
        return
    if suffix == ".npz":
        extra = {f"meta_{k}": np.asarray(v) for k, v in (metadata or {}).items()}
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{**chip, **extra})
        return
    import rasterio

    transform, crs, names = georef
    stack = stack_arrays(chip)
    if suffix == ".png":
        write_png(tmp, stretch_rgb(stack, names, platform.nodata if platform else None))
        return
    profile = {"driver": "GTiff", "crs": crs, "transform": transform, "compress": "deflate",
               "tiled": stack.shape[1] % 16 == 0, "blockxsize": min(256, stack.shape[2]),
               "blockysize": min(256, stack.shape[1])}
    with rasterio.open(tmp, "w", count=stack.shape[0], height=stack.shape[1],
                       width=stack.shape[2], dtype=stack.dtype, **profile) as dst:
        dst.write(stack)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(**{k: str(v) for k, v in (metadata or {}).items()})


@contextlib.contextmanager
def quiet_gdal():
    """Capture what GDAL and libtiff print straight to the C-level stderr while writing
    (a full disk prints ``_tiffWriteProc: No space left on device.`` several times, past
    rasterio's error handler: measured, GDAL 3.10). Yields a list that holds the captured
    lines afterwards; they are logged at DEBUG, the caller turns a failure into one line.
    Redirects file descriptor 2 of the process for the duration of one write."""
    import tempfile

    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to hide
        yield said
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(65536).decode(errors="replace")
            said.extend(line.strip().rstrip(".") for line in text.splitlines() if line.strip())
            for line in said:
                log.debug("GDAL: %s", line)


def write_cog(path: str | Path, data: np.ndarray, transform: Affine, crs: str,
              nodata=None, blocksize: int = 512, compress: str = "DEFLATE") -> Path:
    """Write ``data`` ((bands,) rows, cols) as a Cloud Optimized GeoTIFF.

    Args:
        path: The file to write; its parent folders are created.
        data: The pixels, 2-D or ``(bands, rows, cols)``.
        transform: The affine transform of the pixels.
        crs: The CRS (any form rasterio accepts).
        nodata: The nodata value, if any.
        blocksize: The COG's tile size in pixels.
        compress: The GDAL compression method.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "count": count,
        "height": height,
        "width": width,
        "dtype": data.dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    import rasterio.shutil
    from rasterio.io import MemoryFile

    with MemoryFile() as mem, mem.open(**profile) as tmp:
        tmp.write(data)
        rasterio.shutil.copy(tmp, path, driver="COG", BLOCKSIZE=blocksize, COMPRESS=compress,
                             OVERVIEWS="NONE", NUM_THREADS="ALL_CPUS")
    return path
