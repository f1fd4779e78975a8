"""Resampled reads for assets that are not on the chip grid's lattice.

Most assets sit on the grid exactly: their pixel size is a whole multiple of the grid's and
their origin is on a grid pixel corner, and they are read as they are (``core.raster``). This
module serves the others:

* offset grids - Landsat's 15 m pan is offset by 7.5 m (half a pan pixel) from the 30 m
  bands (Geoscience Australia ARD: pan origin 230692.5 vs 230685), so on the pan grid the
  30 m bands start a quarter of their pixel off;
* pixel sizes that are not a whole multiple of the grid's (a 25 m layer on a 10 m grid);
* chip sizes that are not a multiple of a coarse band's factor (255 px chips on a 20 m SCL):
  chip edges then cut native pixels, which statistics weigh by the part inside the chip.

Reads are separable index arithmetic in numpy on the native pixels the chip needs (one window
read): ``nearest`` (default) takes, for each grid pixel, the native pixel under its centre;
``bilinear`` blends the four nearest native pixel centres (edges clamp). Pixels outside the
asset get its nodata (0 without one). Grids must not be rotated.
"""

from __future__ import annotations

import numpy as np
import pyproj

from stacchip_core.core.window import resolution_factor
from stacchip_core.errors import AssetError

RESAMPLING = ("nearest", "bilinear")


def alignment(ds, grid, name: str) -> int | None:
    """The whole factor (grid pixels per asset pixel) when ``ds`` sits exactly on ``grid``'s
    lattice, ``None`` when it must be resampled. Raises for what no read can fix: another CRS,
    rotation, or no overlap with the grid at all.

    Args:
        ds: An open rasterio dataset.
        grid: The item's chip grid.
        name: The asset's name, for error messages.

    Returns:
        The whole factor, or None.

    Raises:
        AssetError: If the asset or grid is rotated, the CRSs differ, the asset does not
            overlap the grid, or an aligned asset does not cover it.
    """
    t, g = ds.transform, grid.transform
    if t.b or t.d or g.b or g.d:
        raise AssetError(
            f"asset {name!r} or the grid is rotated; stacchip reads north-up rasters only"
        )
    if ds.crs is not None and not pyproj.CRS.from_user_input(ds.crs.to_wkt()).equals(
            grid.crs, ignore_axis_order=True):
        raise AssetError(f"asset {name!r} is in {ds.crs}, the item in {grid.crs.to_string()}")
    # overlap with the chipped part of the grid
    gx0, gy0 = g.c, g.f
    gx1, gy1 = g.c + g.a * grid.x_size * grid.chip_size, g.f + g.e * grid.y_size * grid.chip_size
    ax0, ay0 = t.c, t.f
    ax1, ay1 = t.c + t.a * ds.width, t.f + t.e * ds.height
    if min(ax0, ax1) >= max(gx0, gx1) or max(ax0, ax1) <= min(gx0, gx1) or \
            min(ay0, ay1) >= max(gy0, gy1) or max(ay0, ay1) <= min(gy0, gy1):
        raise AssetError(f"asset {name!r} does not overlap the item's grid")
    factor = resolution_factor((t.a, t.c, t.e, t.f), (g.a, g.c, g.e, g.f))
    if factor is not None:
        if (
            ds.width * factor < grid.x_size * grid.chip_size
            or ds.height * factor < grid.y_size * grid.chip_size
        ):
            raise AssetError(
                f"asset {name!r} ({ds.height} x {ds.width} px at factor {factor}) does not cover "
                "the "
                f"grid ({grid.shape[0]} x {grid.shape[1]} px)"
            )
        return factor
    return None


def _source_coords(ds, grid, col0: int, row0: int, width: int, height: int):
    """Fractional native (col, row) of the centres of ``width`` x ``height`` grid pixels."""
    g, t = grid.transform, ds.transform
    xs = g.c + g.a * (col0 + np.arange(width) + 0.5)
    ys = g.f + g.e * (row0 + np.arange(height) + 0.5)
    return (xs - t.c) / t.a, (ys - t.f) / t.e


def _axis(src: np.ndarray, size: int, resampling: str):
    """Per output pixel: native indices (clipped), weights, and validity, along one axis."""
    if resampling == "nearest":
        index = np.floor(src).astype(np.int64)
        valid = (index >= 0) & (index < size)
        return (np.clip(index, 0, size - 1),), (np.ones(len(src)),), valid
    centre = src - 0.5
    lo = np.floor(centre).astype(np.int64)
    w = centre - lo
    valid = (src >= 0) & (src < size)
    return (np.clip(lo, 0, size - 1), np.clip(lo + 1, 0, size - 1)), (1 - w, w), valid


def read_resampled(ds, grid, col0: int, row0: int, width: int, height: int, indexes=None,
                   resampling: str = "nearest") -> np.ndarray:
    """Grid pixels ``[row0:row0+height, col0:col0+width]`` of ``ds`` resampled onto the grid:
    shape (bands, height, width), the asset's dtype. One window read of the native pixels
    they need.

    Args:
        ds: An open rasterio dataset.
        grid: The item's chip grid.
        col0: The first grid column.
        row0: The first grid row.
        width: Grid columns to read.
        height: Grid rows to read.
        indexes: A band index (1-based; the result is then 2-D) or a list; default: all.
        resampling: ``nearest`` or ``bilinear``.

    Returns:
        The resampled pixels; outside the asset, its nodata value (else 0).

    Raises:
        ValueError: If ``resampling`` is not one of ``RESAMPLING``.
    """
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    src_c, src_r = _source_coords(ds, grid, col0, row0, width, height)
    cols, cw, cvalid = _axis(src_c, ds.width, resampling)
    rows, rw, rvalid = _axis(src_r, ds.height, resampling)
    c_lo, c_hi = int(min(c.min() for c in cols)), int(max(c.max() for c in cols)) + 1
    r_lo, r_hi = int(min(r.min() for r in rows)), int(max(r.max() for r in rows)) + 1
    if indexes is None:
        indexes = list(range(1, ds.count + 1))
    single = isinstance(indexes, int)
    from rasterio.windows import Window

    block = ds.read(
        [indexes] if single else indexes, window=Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo)
    )
    dtype = block.dtype
    if resampling == "nearest":
        out = block[:, rows[0][:, None] - r_lo, cols[0][None, :] - c_lo]
    else:
        acc = np.zeros((block.shape[0], height, width), np.float64)
        for ri, rwt in zip(rows, rw):
            for ci, cwt in zip(cols, cw):
                acc += block[:, ri[:, None] - r_lo, ci[None, :] - c_lo] * (
                    rwt[:, None] * cwt[None, :]
                )
        out = (np.rint(acc) if np.issubdtype(dtype, np.integer) else acc).astype(dtype)
    invalid = ~(rvalid[:, None] & cvalid[None, :])
    if invalid.any():
        out[:, invalid] = ds.nodata if ds.nodata is not None else 0
    return out[0] if single else out


def read_chip(ds, grid, x: int, y: int, indexes=None, resampling: str = "nearest") -> np.ndarray:
    """Chip (x, y) of ``ds`` resampled onto the grid: (bands, cs, cs).

    Args:
        ds: An open rasterio dataset.
        grid: The item's chip grid.
        x: The chip's column.
        y: The chip's row.
        indexes: Band indexes (1-based) to read; default: all.
        resampling: ``nearest`` or ``bilinear``.

    Returns:
        The chip's pixels.

    Raises:
        IndexError: If the chip is outside the grid.
        ValueError: If ``resampling`` is not one of ``RESAMPLING``.
    """
    col0, row0, cs, _ = grid.window(x, y)
    return read_resampled(ds, grid, col0, row0, cs, cs, indexes, resampling)


def partial_block_fractions(mask: np.ndarray, factor: int, chip_size: int, ny: int, nx: int,
                            row0: int = 0, first_chip: int = 0) -> np.ndarray:
    """Per-chip fractions of a native-resolution ``mask`` when chips cut native pixels
    (``chip_size`` not a multiple of ``factor``): each native pixel counts by the share of its
    area inside the chip, so the result equals the fraction of the mask expanded to the grid.

    ``mask`` holds native rows from ``row0`` on (a strip) and must cover chips ``ny`` x ``nx``
    from chip row ``first_chip``. Separable and in integers: rows are repeated ``factor``
    times and summed per chip row, then the (small) row sums are repeated along columns and
    summed per chip: no loop over chips, no float rounding.

    Args:
        mask: Native-resolution mask rows (nonzero is True).
        factor: Grid pixels per native pixel.
        chip_size: Chip side in grid pixels.
        ny: Chip rows to reduce.
        nx: Chip columns to reduce.
        row0: The native row of ``mask``'s first row.
        first_chip: The chip row of the first chip row to reduce.

    Returns:
        The fractions, float32 of shape (ny, nx).
    """
    cs = chip_size
    m = mask.view(np.uint8) if mask.dtype == np.bool_ else (mask != 0).view(np.uint8)
    skip = (
        first_chip * cs - row0 * factor
    )  # grid rows of the strip's first native row before chip row 0
    rows = np.repeat(m, factor, axis=0)[skip: skip + ny * cs]
    by_row = rows.reshape(ny, cs, -1).sum(axis=1, dtype=np.uint32)  # (ny, native cols)
    cols = np.repeat(by_row, factor, axis=1)[:, : nx * cs]
    counts = cols.reshape(ny, nx, cs).sum(axis=2, dtype=np.uint32)
    return (counts / float(cs * cs)).astype(np.float32)


def chip_fractions(
    href: str, band: int, grid, factor: int | None, masks: dict, threads: int = 1
) -> dict:
    """``AssetReader.chip_fractions`` for a band off the grid's lattice (``factor`` None: read
    resampled, nearest, at grid resolution) or whose factor does not divide the chip size
    (native pixels cut by chip edges, weighed by their share). Reads span whole tile rows
    (a chip row's window alone would decode each 512 px tile row several times), on
    ``threads`` threads with their own handles.

    Args:
        href: Where to open the asset.
        band: The band's index (1-based).
        grid: The item's chip grid.
        factor: Grid pixels per native pixel, or None off the lattice.
        masks: Per mask name, a function from pixels to a boolean array.
        threads: Reading threads.

    Returns:
        Per mask name, float32 fractions of shape (y_size, x_size).
    """
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    from rasterio.windows import Window

    cs, ny, nx = grid.chip_size, grid.y_size, grid.x_size
    out = {k: np.zeros((ny, nx), np.float32) for k in masks}
    with rasterio.open(href) as ds:
        tile_height = ds.block_shapes[band - 1][0]
    native_per_chip = cs if factor is None else cs / factor
    per_read = max(1, int(tile_height // native_per_chip))
    groups = [range(y, min(y + per_read, ny)) for y in range(0, ny, per_read)]

    def work(part: list[range]) -> None:
        with rasterio.open(href) as ds:
            for rows in part:
                y0, n = rows[0], len(rows)
                if factor is None:
                    data = read_resampled(ds, grid, 0, y0 * cs, nx * cs, n * cs, band)
                else:
                    r0, r1 = (y0 * cs) // factor, ((y0 + n) * cs - 1) // factor + 1
                    c1 = min(ds.width, (nx * cs - 1) // factor + 1)
                    data = ds.read(band, window=Window(0, r0, c1, r1 - r0))
                for k, fn in masks.items():
                    m = fn(data)
                    if factor is None:
                        blocks = m.reshape(n, cs, nx, cs).sum(axis=(1, 3), dtype=np.uint32)
                        out[k][y0:y0 + n] = blocks / float(cs * cs)
                    else:
                        out[k][y0 : y0 + n] = partial_block_fractions(
                            m, factor, cs, n, nx, row0=r0, first_chip=y0
                        )

    threads = max(1, threads)
    parts = [groups[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [p for p in parts if p]))
    return out
