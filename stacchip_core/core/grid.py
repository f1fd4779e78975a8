"""Pure grid math from item metadata: the chip grid, per-chip reductions, footprints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyproj
import pystac
import shapely
from affine import Affine

from stacchip_core.errors import GridError, ProjectionError

CRS84 = pyproj.CRS("OGC:CRS84")
_PROJ_KEYS = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson")


def _crs_from_fields(fields: dict) -> pyproj.CRS | None:
    for key in _PROJ_KEYS:
        value = fields.get(key)
        if value is None:
            continue
        if key == "proj:epsg":
            value = f"EPSG:{value}"
        try:
            return pyproj.CRS.from_user_input(value)
        except pyproj.exceptions.CRSError as exc:
            raise ProjectionError(f"cannot parse {key}={str(value)[:80]!r}: {exc}") from None
    return None


def item_crs(item: pystac.Item) -> pyproj.CRS:
    """The item's CRS from proj:code, proj:epsg, proj:wkt2 or proj:projjson (item or asset level)."""
    crs = _crs_from_fields(item.properties)
    if crs is None:
        for asset in item.assets.values():
            crs = _crs_from_fields(asset.extra_fields)
            if crs is not None:
                break
    if crs is None:
        raise ProjectionError(
            f"item {item.id!r} has no projection (none of {', '.join(_PROJ_KEYS)} on the item or its assets)"
        )
    unit = crs.axis_info[0].unit_name if crs.axis_info else None
    if not crs.is_projected or unit not in ("metre", "meter"):
        raise ProjectionError(
            f"item {item.id!r} is in {crs.to_string()} with units {unit!r}; stacchip needs a projected CRS in metres"
        )
    return crs


def _shape_transform(fields: dict) -> tuple[tuple[int, int], Affine] | None:
    shape = fields.get("proj:shape")
    if shape is None:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    transform = fields.get("proj:transform")
    if transform is not None:
        return (rows, cols), Affine(*transform[:6])
    bbox = fields.get("proj:bbox")
    if bbox is not None and len(bbox) == 4:
        xmin, ymin, xmax, ymax = bbox
        return (rows, cols), Affine((xmax - xmin) / cols, 0, xmin, 0, -(ymax - ymin) / rows, ymax)
    return None


def finest_shape_transform(item: pystac.Item) -> tuple[tuple[int, int], Affine]:
    """Shape and transform of the finest-resolution raster, both from the same place.

    Assets that carry their own proj:shape/proj:transform compete; the item-level
    fields count as one more candidate (they describe every asset that has none).
    """
    candidates = []
    for key, asset in item.assets.items():
        found = _shape_transform(asset.extra_fields)
        if found:
            candidates.append((key, *found))
    item_level = _shape_transform(item.properties)
    if item_level:
        candidates.append(("<item>", *item_level))
    if not candidates:
        raise ProjectionError(
            f"item {item.id!r} has no proj:shape with proj:transform (or proj:bbox), on the item or any asset"
        )
    # finest pixel first; on equal pixel size, the larger raster
    _, shape, transform = min(candidates, key=lambda c: (abs(c[2].a), -c[1][0] * c[1][1]))
    return shape, transform


# Limits of one item's grid. The index holds a polygon per chip and the statistics read
# full-resolution masks, so memory grows with both: 2**32 pixels (a 65,536 px square; a
# Sentinel-2 scene has 1.2e8) and 2**22 chips (~1 GB of footprints; a Sentinel-2 scene at
# 256 px has 1,764). A 1e7 x 1e7 proj:shape wanted > 17 GB before this check.
MAX_PIXELS = 1 << 32
MAX_CHIPS = 1 << 22


def validate_grid(item_id: str, shape: tuple[int, int], transform: Affine, chip_size: int) -> None:
    """A GridError unless chips of ``chip_size`` on a raster of ``shape`` and ``transform``
    make a usable grid: pixels present and at most MAX_PIXELS, at least one and at most
    MAX_CHIPS whole chips, a north-up (or south-up) transform with square, non-zero pixels.
    The one check every grid built from an item passes, with or without statistics."""
    rows, cols = shape
    what = f"item {item_id!r}"
    if rows < 1 or cols < 1:
        raise GridError(f"{what} has an empty raster (proj:shape [{rows}, {cols}])")
    if rows * cols > MAX_PIXELS:
        raise GridError(f"{what} has {rows * cols} pixels, more than the limit of {MAX_PIXELS}")
    a, b, d, e = transform.a, transform.b, transform.d, transform.e
    for size in (a, e):
        if not math.isfinite(size) or size == 0:
            raise GridError(f"{what} has a pixel size of {size:g} (proj:transform {list(transform)[:6]})")
    if b != 0 or d != 0:
        raise GridError(f"{what} is rotated or sheared (proj:transform {list(transform)[:6]}); "
                        "stacchip needs north-up rasters")
    if not math.isclose(abs(a), abs(e), rel_tol=1e-6):
        raise GridError(f"{what} has non-square pixels ({abs(a):g} x {abs(e):g})")
    chips = (rows // chip_size) * (cols // chip_size)
    if chips == 0:
        raise GridError(f"{what}: no whole chip of {chip_size} px fits its {rows} x {cols} px raster")
    if chips > MAX_CHIPS:
        raise GridError(f"{what} has {chips} chips of {chip_size} px, more than the limit of {MAX_CHIPS}; "
                        "use a larger chip size")


@dataclass(frozen=True)
class ChipGrid:
    """Chips of ``chip_size`` pixels on a raster of ``shape`` (rows, cols) and ``transform``.

    Chip (x, y) covers rows ``y*cs:(y+1)*cs`` and cols ``x*cs:(x+1)*cs``; partial edge
    chips are not part of the grid.
    """

    shape: tuple[int, int]
    transform: Affine
    crs: pyproj.CRS
    chip_size: int = 256

    @classmethod
    def from_item(
        cls, item: pystac.Item, chip_size: int = 256, shape: tuple[int, int] | None = None
    ) -> ChipGrid:
        if chip_size < 1:
            raise ValueError(f"chip_size must be positive, got {chip_size}")
        crs = item_crs(item)
        found_shape, transform = finest_shape_transform(item)
        if shape is not None:
            # a caller-given shape keeps the footprint: pixel size follows from it
            sx = transform.a * found_shape[1] / shape[1]
            sy = transform.e * found_shape[0] / shape[0]
            transform = Affine(sx, transform.b, transform.c, transform.d, sy, transform.f)
            found_shape = (int(shape[0]), int(shape[1]))
        validate_grid(item.id, found_shape, transform, chip_size)
        return cls(found_shape, transform, crs, chip_size)

    @property
    def x_size(self) -> int:
        return self.shape[1] // self.chip_size

    @property
    def y_size(self) -> int:
        return self.shape[0] // self.chip_size

    @property
    def size(self) -> int:
        return self.x_size * self.y_size

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)

    def window(self, x: int, y: int) -> tuple[int, int, int, int]:
        """(col_off, row_off, width, height) of chip (x, y) on the grid."""
        if not (0 <= x < self.x_size and 0 <= y < self.y_size):
            raise IndexError(f"chip ({x}, {y}) outside grid of {self.x_size} x {self.y_size} chips")
        cs = self.chip_size
        return x * cs, y * cs, cs, cs

    def chip_fractions(self, mask: np.ndarray, factor: int = 1) -> np.ndarray:
        """Fraction of True pixels of a native-resolution mask in every chip.

        ``factor`` is how many grid pixels one mask pixel spans; a chip then covers
        ``chip_size / factor`` mask pixels a side, which must be whole. Returns float32
        of shape (y_size, x_size). One vectorized reduction, no loop over chips.
        """
        cs = self.chip_size
        if factor < 1 or cs % factor:
            raise ValueError(f"chip size {cs} is not a multiple of the mask's factor {factor}")
        block = cs // factor
        ny, nx = self.y_size, self.x_size
        if mask.shape[0] < ny * block or mask.shape[1] < nx * block:
            raise ValueError(
                f"mask of shape {mask.shape} does not cover {ny} x {nx} chips of {block} px"
            )
        # a view (each axis splits in two), summed as uint8 rows first: 3x faster than
        # count_nonzero over both axes on a full scene
        if mask.dtype not in (np.bool_, np.uint8):
            mask = mask != 0
        blocks = mask[: ny * block, : nx * block].view(np.uint8).reshape(ny, block, nx, block)
        counts = blocks.sum(axis=1, dtype=np.uint16).sum(axis=2, dtype=np.uint32)
        return (counts / float(block * block)).astype(np.float32)

    @cached_property
    def _lattice_lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        # chip corners form a (y_size+1, x_size+1) lattice: one projection call for all
        cs = self.chip_size
        cols, rows = np.meshgrid(
            np.arange(self.x_size + 1, dtype=np.float64) * cs,
            np.arange(self.y_size + 1, dtype=np.float64) * cs,
        )
        t = self.transform
        xs = t.a * cols + t.b * rows + t.c
        ys = t.d * cols + t.e * rows + t.f
        transformer = pyproj.Transformer.from_crs(self.crs, CRS84, always_xy=True)
        lon, lat = transformer.transform(xs, ys)
        return np.asarray(lon), np.asarray(lat)

    def footprints(self) -> tuple[np.ndarray, np.ndarray]:
        """Chip footprints in OGC:CRS84, in row-major chip order (y, then x).

        Returns (polygons, bounds) where polygons is an array of shapely Polygons with a
        counter-clockwise ring and bounds is float64 (n, 4) xmin, ymin, xmax, ymax.
        """
        lon, lat = self._lattice_lonlat
        ny, nx = self.y_size, self.x_size
        # corners in ring order top-left, bottom-left, bottom-right, top-right (CCW)
        corner_slices = [
            (slice(0, ny), slice(0, nx)),
            (slice(1, ny + 1), slice(0, nx)),
            (slice(1, ny + 1), slice(1, nx + 1)),
            (slice(0, ny), slice(1, nx + 1)),
        ]
        xs = np.stack([lon[s].ravel() for s in corner_slices], axis=1)
        ys = np.stack([lat[s].ravel() for s in corner_slices], axis=1)
        ring = np.stack([xs, ys], axis=2)
        ring = np.concatenate([ring, ring[:, :1]], axis=1)
        polygons = shapely.polygons(ring)
        bounds = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
        return polygons, bounds


def integer_factor(coarse: float, fine: float, what: str) -> int:
    """How many ``fine`` pixels one ``coarse`` pixel spans; a clear error if not whole."""
    ratio = abs(coarse) / abs(fine)
    factor = round(ratio)
    if factor < 1 or not math.isclose(ratio, factor, rel_tol=1e-6):
        raise ValueError(
            f"{what}: pixel size {abs(coarse):g} is not an integer multiple of the grid's {abs(fine):g}"
        )
    return factor
