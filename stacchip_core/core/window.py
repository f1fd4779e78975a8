"""Where a chip lies in an asset's own pixels, and how those pixels become the chip.

The three decisions every reader of a chip makes, written once and used by both read
backends (the layout path in core.tiles, the rasterio path in core.raster) and by the
resampling check (core.resample):

- ``resolution_factor``: how many grid pixels one asset pixel spans, when the asset sits on
  the grid's lattice (a whole factor, the same origin); None when it must be resampled;
- ``native_window``: the asset pixels a window of grid pixels touches (a 60 m pixel may
  straddle two 10 m chips);
- ``crop_expand``: from a block of asset pixels to the chip, by nearest neighbour.
"""

from __future__ import annotations

import math

import numpy as np

ALIGN_TOL = 0.01  # of a grid pixel: closer origins count as aligned


def resolution_factor(
    asset: tuple[float, float, float, float], grid: tuple[float, float, float, float]
) -> int | None:
    """Grid pixels per asset pixel when the asset sits exactly on the grid's lattice.

    Args:
        asset: the asset's ``(a, c, e, f)``: pixel width, x origin, pixel height, y origin.
        grid: the grid's ``(a, c, e, f)``.

    Returns:
        The whole factor (1 for a 10 m band on a 10 m grid, 2 for 20 m, 6 for 60 m), or None
        when the pixel ratio is not whole, the origins differ by more than ``ALIGN_TOL`` of
        a grid pixel, or the axes point the other way: such assets are resampled.
    """
    a, c, e, f = asset
    ga, gc, ge, gf = grid
    fx, fy = abs(a) / abs(ga), abs(e) / abs(ge)
    k = round(fx)
    if k < 1 or not math.isclose(fx, k, rel_tol=1e-6) or not math.isclose(fy, k, rel_tol=1e-6):
        return None
    if (a > 0) != (ga > 0) or (e > 0) != (ge > 0):
        return None
    tol = ALIGN_TOL * abs(ga)
    if abs(c - gc) > tol or abs(f - gf) > tol:
        return None
    return k


def native_window(
    row0: int, col0: int, height: int, width: int, factor: int
) -> tuple[int, int, int, int]:
    """The asset pixels ``(r0, r1, c0, c1)`` (end exclusive) that grid pixels
    ``row0:row0+height``, ``col0:col0+width`` touch at ``factor`` grid pixels per asset pixel.

    Args:
        row0: The first grid row.
        col0: The first grid column.
        height: Grid rows.
        width: Grid columns.
        factor: Grid pixels per asset pixel.

    Returns:
        The asset rows ``r0:r1`` and columns ``c0:c1``.
    """
    return (
        row0 // factor,
        (row0 + height - 1) // factor + 1,
        col0 // factor,
        (col0 + width - 1) // factor + 1,
    )


def crop_expand(
    block: np.ndarray,
    block_row: int,
    block_col: int,
    row0: int,
    col0: int,
    height: int,
    width: int,
    factor: int,
) -> np.ndarray:
    """The chip ``(bands, height, width)`` of grid pixels from ``(row0, col0)``, from ``block``:
    asset pixels ``(bands, h, w)`` whose first one is asset pixel ``(block_row, block_col)``.

    Each grid pixel takes the asset pixel under it (nearest neighbour): an index per row and
    per column, one fancy-indexing gather. At factor 1 a contiguous copy of a slice.

    Args:
        block: Asset pixels, shape (bands, h, w).
        block_row: The asset row of ``block``'s first row.
        block_col: The asset column of ``block``'s first column.
        row0: The chip's first grid row.
        col0: The chip's first grid column.
        height: The chip's rows.
        width: The chip's columns.
        factor: Grid pixels per asset pixel.

    Returns:
        The chip's pixels, shape (bands, height, width).
    """
    if factor == 1:
        r, c = row0 - block_row, col0 - block_col
        return np.ascontiguousarray(block[:, r:r + height, c:c + width])
    rows = (row0 + np.arange(height)) // factor - block_row
    cols = (col0 + np.arange(width)) // factor - block_col
    return block[:, rows[:, None], cols[None, :]]
