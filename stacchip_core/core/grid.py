"""Pure grid math from item metadata: the chip grid, per-chip reductions, footprints."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pyproj
from affine import Affine

from stacchip_core.errors import GridError, ProjectionError

if TYPE_CHECKING:
    import pystac

# shapely is imported by the functions that build footprints (indexing, not reading)

log = logging.getLogger(__name__)

CRS84 = pyproj.CRS("OGC:CRS84")
_PROJ_KEYS = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson")


@lru_cache(maxsize=64)
def crs_transformer(src: pyproj.CRS, dst: pyproj.CRS) -> pyproj.Transformer:
    """An always-xy transformer, made once per pair of CRSs: creating one cost 3 ms, three
    times per Sentinel-2 index build (pyproj transformers are thread-safe since 3.1).

    Args:
        src: The source CRS.
        dst: The target CRS.

    Returns:
        A cached transformer from ``src`` to ``dst``, longitude/easting first.
    """
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


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
            raise ProjectionError(f"cannot parse {key}={str(value)[:80]!r}: {exc}") from exc
    return None


def _item_crs_or_none(item: pystac.Item) -> pyproj.CRS | None:
    crs = _crs_from_fields(item.properties)
    if crs is None:
        for asset in item.assets.values():
            crs = _crs_from_fields(asset.extra_fields)
            if crs is not None:
                break
    return crs


def _check_metric(item: pystac.Item, crs: pyproj.CRS) -> pyproj.CRS:
    unit = crs.axis_info[0].unit_name if crs.axis_info else None
    if not crs.is_projected or unit not in ("metre", "meter"):
        raise ProjectionError(
            f"item {item.id!r} is in {crs.to_string()} with units {unit!r}; stacchip needs a "
            "projected CRS in metres"
        )
    return crs


def item_crs(item: pystac.Item) -> pyproj.CRS:
    """The item's CRS from proj:code, proj:epsg, proj:wkt2 or proj:projjson.

    Read at item or asset level.

    Args:
        item: The STAC item.

    Returns:
        The item's CRS, projected and in metres.

    Raises:
        ProjectionError: If no field states a CRS, a field cannot be parsed, or the CRS is
            not projected in metres.
    """
    crs = _item_crs_or_none(item)
    if crs is None:
        raise ProjectionError(
            f"item {item.id!r} has no projection (none of {', '.join(_PROJ_KEYS)} on the item or "
            "its assets)"
        )
    return _check_metric(item, crs)


def _numbers(value, key: str, count: int) -> list[float]:
    """``value`` as ``count`` (or, for a transform, at least ``count``) finite numbers; a
    ProjectionError naming ``key`` otherwise (the fuzz tests, docs/testing.md, sent strings,
    nulls, nested lists and infinities here)."""
    ok = isinstance(value, (list, tuple)) and (
        len(value) == count or (key == "proj:transform" and len(value) >= count)
    )
    if ok:
        ok = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value[:count]
        )
    if not ok:
        raise ProjectionError(f"{key} {str(value)[:80]} is not {count} finite numbers")
    return [float(v) for v in value[:count]]


def _shape_transform(fields: dict) -> tuple[tuple[int, int], Affine] | None:
    shape = fields.get("proj:shape")
    if shape is None:
        return None
    rows_f, cols_f = _numbers(shape, "proj:shape", 2)
    if not (rows_f.is_integer() and cols_f.is_integer()):
        raise ProjectionError(f"proj:shape {shape} is not whole pixels")
    rows, cols = int(rows_f), int(cols_f)
    transform = fields.get("proj:transform")
    if transform is not None:
        return (rows, cols), Affine(*_numbers(transform, "proj:transform", 6))
    bbox = fields.get("proj:bbox")
    if bbox is not None and isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        xmin, ymin, xmax, ymax = _numbers(bbox, "proj:bbox", 4)
        if rows < 1 or cols < 1:
            raise ProjectionError(f"proj:shape {shape} has no pixels")
        return (rows, cols), Affine((xmax - xmin) / cols, 0, xmin, 0, -(ymax - ymin) / rows, ymax)
    return None


def finest_shape_transform(item: pystac.Item) -> tuple[tuple[int, int], Affine]:
    """Shape and transform of the finest-resolution raster, both from the same place.

    Assets that carry their own proj:shape/proj:transform compete; the item-level
    fields count as one more candidate (they describe every asset that has none).

    Args:
        item: The STAC item.

    Returns:
        The finest raster's ``(rows, cols)`` shape and its affine transform.

    Raises:
        ProjectionError: If no asset nor the item has a usable proj:shape with
            proj:transform (or proj:bbox).
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
            f"item {item.id!r} has no proj:shape with proj:transform (or proj:bbox), on the item "
            "or any asset"
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


def needs_header(item: pystac.Item) -> bool:
    """Whether the item's metadata lacks a CRS or a shape with transform, so that its grid
    must come from a raster header.

    Args:
        item: The STAC item.

    Returns:
        True if the grid needs the finest raster's header.

    Raises:
        ProjectionError: If a projection field is present but cannot be parsed.
    """
    return _item_crs_or_none(item) is None or metadata_shape_transform(item) is None


def metadata_shape_transform(item: pystac.Item) -> tuple[tuple[int, int], Affine] | None:
    """`finest_shape_transform`, or None when the item states no shape with transform.

    Args:
        item: The STAC item.

    Returns:
        The finest raster's shape and transform, or None.
    """
    try:
        return finest_shape_transform(item)
    except ProjectionError:
        return None


def validate_grid(
    item_id: str, shape: tuple[int, int], transform: Affine, chip_size: int, square: bool = True,
) -> None:
    """A GridError unless chips of ``chip_size`` on a raster of ``shape`` and ``transform``
    make a usable grid: pixels present and at most MAX_PIXELS, at least one and at most
    MAX_CHIPS whole chips, a north-up (or south-up) transform with square, non-zero pixels.
    The one check every grid built from an item passes, with or without statistics.
    ``square=False`` admits non-square pixels: a caller-given shape (0.1's ``shape=``)
    stretches the item's footprint over it.

    Args:
        item_id: The item's id, for the error message.
        shape: The raster's ``(rows, cols)``.
        transform: The raster's affine transform.
        chip_size: Chip side in pixels.
        square: Require square pixels.

    Raises:
        GridError: If the grid is empty, too large, rotated or sheared, or has non-square or
            zero-size pixels.
    """
    rows, cols = shape
    what = f"item {item_id!r}"
    if rows < 1 or cols < 1:
        raise GridError(f"{what} has an empty raster (proj:shape [{rows}, {cols}])")
    if rows * cols > MAX_PIXELS:
        raise GridError(f"{what} has {rows * cols} pixels, more than the limit of {MAX_PIXELS}")
    a, b, d, e = transform.a, transform.b, transform.d, transform.e
    for size in (a, e):
        if not math.isfinite(size) or size == 0:
            raise GridError(
                f"{what} has a pixel size of {size:g} (proj:transform {list(transform)[:6]})"
            )
    if b != 0 or d != 0:
        raise GridError(f"{what} is rotated or sheared (proj:transform {list(transform)[:6]}); "
                        "stacchip needs north-up rasters")
    if square and not math.isclose(abs(a), abs(e), rel_tol=1e-6):
        raise GridError(f"{what} has non-square pixels ({abs(a):g} x {abs(e):g})")
    chips = (rows // chip_size) * (cols // chip_size)
    if chips == 0:
        raise GridError(
            f"{what}: no whole chip of {chip_size} px fits its {rows} x {cols} px raster"
        )
    if chips > MAX_CHIPS:
        raise GridError(
            f"{what} has {chips} chips of {chip_size} px, more than the limit of {MAX_CHIPS}; "
            "use a larger chip size"
        )


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
        cls, item: pystac.Item, chip_size: int = 256, shape: tuple[int, int] | None = None,
        header: tuple[tuple[int, int], Affine, pyproj.CRS] | None = None,
    ) -> ChipGrid:
        """The chip grid of ``item`` from its projection metadata.

        Pure: no file is read. For items without projection metadata (LINZ items, early
        Landsat C2 items) the caller reads the finest raster's header and passes it:
        `stacchip_core.core.headers.item_grid` does both.

        Args:
            item: The STAC item.
            chip_size: Chip side in pixels of the finest grid.
            shape: A shape to impose (rows, cols); the footprint is kept, the pixel size follows.
            header: ``(shape, transform, crs)`` of the finest raster, used where the item's
                metadata has none.

        Returns:
            The item's chip grid.

        Raises:
            ProjectionError: The item has no projection metadata and no header was given,
                or its CRS is not in metres.
            GridError: The grid is degenerate (no whole chip, too large, rotated...).
            ValueError: ``chip_size`` is not positive.
        """
        if chip_size < 1:
            raise ValueError(f"chip_size must be positive, got {chip_size}")
        crs = _item_crs_or_none(item)
        found = metadata_shape_transform(item)
        if crs is None or found is None:
            if header is None:
                raise ProjectionError(
                    f"item {item.id!r} has no projection metadata (read the header of "
                    "its finest raster: stacchip_core.core.headers.item_grid)"
                )
            header_shape, header_transform, header_crs = header
            crs = crs or header_crs
            found = found or (header_shape, header_transform)
        found_shape, transform = found
        crs = _check_metric(item, crs)
        if shape is not None:
            # a caller-given shape keeps the footprint: pixel size follows from it
            sx = transform.a * found_shape[1] / shape[1]
            sy = transform.e * found_shape[0] / shape[0]
            transform = Affine(sx, transform.b, transform.c, transform.d, sy, transform.f)
            found_shape = (int(shape[0]), int(shape[1]))
        validate_grid(item.id, found_shape, transform, chip_size, square=shape is None)
        return cls(found_shape, transform, crs, chip_size)

    @property
    def x_size(self) -> int:
        """Chips across: whole chips only."""
        return self.shape[1] // self.chip_size

    @property
    def y_size(self) -> int:
        """Chips down: whole chips only."""
        return self.shape[0] // self.chip_size

    @property
    def size(self) -> int:
        """Chips on the grid."""
        return self.x_size * self.y_size

    @property
    def resolution(self) -> float:
        """Pixel size in CRS units (the grid's x resolution)."""
        return abs(self.transform.a)

    def window(self, x: int, y: int) -> tuple[int, int, int, int]:
        """(col_off, row_off, width, height) of chip (x, y) on the grid.

        Args:
            x: The chip's column.
            y: The chip's row.

        Returns:
            The chip's pixel window on the grid.

        Raises:
            IndexError: If the chip is outside the grid.
        """
        if not (0 <= x < self.x_size and 0 <= y < self.y_size):
            raise IndexError(f"chip ({x}, {y}) outside grid of {self.x_size} x {self.y_size} chips")
        cs = self.chip_size
        return x * cs, y * cs, cs, cs

    def chip_fractions(self, mask: np.ndarray, factor: int = 1) -> np.ndarray:
        """Fraction of True pixels of a native-resolution mask in every chip.

        ``factor`` is how many grid pixels one mask pixel spans; a chip then covers
        ``chip_size / factor`` mask pixels a side. When that is not whole (255 px chips on a
        20 m layer of a 10 m grid) native pixels cut by a chip edge count by the share of
        their area inside the chip, as if the mask were expanded to the grid. Returns float32
        of shape (y_size, x_size). One vectorized reduction, no loop over chips.

        Args:
            mask: A 2-D mask (boolean or numbers, nonzero is True) at native resolution.
            factor: Grid pixels per mask pixel (a positive integer).

        Returns:
            The fraction of True pixels per chip, float32 of shape ``(y_size, x_size)``.

        Raises:
            ValueError: If ``factor`` is not positive or the mask does not cover every chip.
        """
        cs = self.chip_size
        if factor < 1:
            raise ValueError(f"the mask's factor must be a positive integer, got {factor}")
        ny, nx = self.y_size, self.x_size
        if cs % factor:
            # chip edges cut native pixels: each counts by its share inside the chip
            from stacchip_core.core.resample import partial_block_fractions

            need = (-(-ny * cs // factor), -(-nx * cs // factor))
            if mask.shape[0] < need[0] or mask.shape[1] < need[1]:
                raise ValueError(
                    f"mask of shape {mask.shape} does not cover {ny} x {nx} chips of "
                    f"{cs / factor:g} px"
                )
            return partial_block_fractions(mask[: need[0], : need[1]] != 0, factor, cs, ny, nx)
        block = cs // factor
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
        transformer = crs_transformer(self.crs, CRS84)
        lon, lat = transformer.transform(xs, ys)
        # a corner on the antimeridian can come back a rounding
        # error beyond it (-180.00000000000003)
        return np.clip(np.asarray(lon), -180.0, 180.0), np.asarray(lat)

    def footprints(self) -> tuple[np.ndarray, np.ndarray]:
        """Chip footprints in OGC:CRS84, in row-major chip order (y, then x).

        Returns (geometries, bounds): an array of shapely Polygons (MultiPolygons for chips
        that cross the antimeridian), every ring counter-clockwise, and float64 (n, 4) bounds
        west, south, east, north. As in STAC items and GeoJSON (RFC 7946, 5.2), a chip that
        crosses the antimeridian is split into its parts east and west of 180 degrees and
        its bounds have west > east; a chip that contains a pole goes round it (the ring
        follows the pole's latitude from -180 to 180) with bounds -180 to 180. Everything is
        vectorized; only crossing and pole chips (one column, one chip) get extra work.

        Returns:
            The chips' polygons (an object array of length ``size``) and their float64
            ``(size, 4)`` bounds.
        """
        import shapely

        lon, lat = self._lattice_lonlat
        ny, nx = self.y_size, self.x_size
        # corners in ring order top-left, bottom-left, bottom-right,
        # top-right (CCW on a north-up grid)
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
        # projections that mirror (polar stereographic south, for one) turn rings clockwise:
        # reversed here by the sign of their area (shapely.orient_polygons on every chip took
        # 27 ms of a 0.25 s Sentinel-2 index build under load, cProfile)
        area = (ring[:, :-1, 0] * ring[:, 1:, 1] - ring[:, 1:, 0] * ring[:, :-1, 1]).sum(1)
        polygons = shapely.polygons(np.where((area < 0)[:, None, None], ring[:, ::-1], ring))
        bounds = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
        poles = self._pole_chips()
        touching = self._chips_touching_pole()
        # corners more than 180 degrees apart in longitude: the chip crosses the antimeridian
        # (chips are far smaller than a hemisphere), unless it holds or touches a pole
        crossing = (xs.max(1) - xs.min(1)) > 180
        crossing[list(poles) + list(touching)] = False
        # near a pole a chip spans many degrees of longitude and its edges curve far from the
        # straight lines between its corners: those chips are sampled densely (the fuzz tests
        # found a chip centre outside its footprint 12 m from the south pole)
        unwrapped = np.unwrap(xs, period=360.0, axis=1)
        curved = (unwrapped.max(1) - unwrapped.min(1)) > CURVED_SPAN
        curved[list(poles) + list(touching)] = False
        crossing &= ~curved
        if crossing.any():
            polygons[crossing], bounds[crossing] = _split_at_antimeridian(ring[crossing])
        for i in np.flatnonzero(curved).tolist():
            polygons[i], bounds[i] = _dense_footprint(self, i)
        for index, north in poles.items():
            polygons[index], bounds[index] = _around_pole(self, index, north)
        for index, (north, pole_px) in touching.items():
            polygons[index], bounds[index] = _dense_footprint(self, index, (north, pole_px))
        special = crossing | curved
        special[list(poles) + list(touching)] = True
        if special.any():  # rebuilt chips: oriented by GEOS
            polygons[special] = shapely.orient_polygons(polygons[special], exterior_cw=False)
        return polygons, bounds

    def _pole_pixels(self) -> list[tuple[bool, float, float]]:
        """(north, col, row) of each pole the CRS can place, in the grid's pixel coordinates."""
        found = []
        transformer = crs_transformer(CRS84, self.crs)
        for north, lat in ((True, 90.0), (False, -90.0)):
            x, y = transformer.transform(0.0, lat)
            if not (np.isfinite(x) and np.isfinite(y)):
                continue  # not representable (UTM): no pole on this grid
            col, row = ~self.transform @ (x, y)
            if math.isfinite(col) and math.isfinite(row):
                found.append((north, float(col), float(row)))
        return found

    def _on_chip_edge(self, v: float) -> bool:
        # a pole within a millionth of a pixel of a chip edge is on it (pyproj's round trip
        # of a pole-centred grid's origin lands within 1e-9 px)
        return abs(v / self.chip_size - round(v / self.chip_size)) * self.chip_size < 1e-6

    def _pole_chips(self) -> dict[int, bool]:
        """{chip index: True for the north pole, False for the south} of chips holding a pole
        inside them (not on their edges: see _chips_touching_pole)."""
        found = {}
        for north, col, row in self._pole_pixels():
            if self._on_chip_edge(col) or self._on_chip_edge(row):
                continue
            cx, cy = int(np.floor(col / self.chip_size)), int(np.floor(row / self.chip_size))
            if 0 <= cx < self.x_size and 0 <= cy < self.y_size:
                found[cy * self.x_size + cx] = north
        return found

    def _chips_touching_pole(self) -> dict[int, tuple[bool, tuple[float, float]]]:
        """{chip index: (north, pole's (col, row))} of chips with a pole on an edge or a corner
        (a grid centred on its pole puts it on four chips' corners). Found by the fuzz tests
        (docs/testing.md): such a chip went round the pole as if it held it, an invalid ring."""
        found = {}
        cs = self.chip_size
        for north, col, row in self._pole_pixels():
            on_col, on_row = self._on_chip_edge(col), self._on_chip_edge(row)
            if not (on_col or on_row):
                continue
            xs = {round(col / cs) - 1, round(col / cs)} if on_col else {int(np.floor(col / cs))}
            ys = {round(row / cs) - 1, round(row / cs)} if on_row else {int(np.floor(row / cs))}
            for cx in xs:
                for cy in ys:
                    if 0 <= cx < self.x_size and 0 <= cy < self.y_size:
                        found[cy * self.x_size + cx] = (north, (col, row))
        return found


def _split_at_antimeridian(rings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MultiPolygons of rings (n, 5, 2) that cross 180 degrees, split there, and their
    RFC 7946 bounds (west > east). Vectorized over the crossing chips."""
    import shapely

    unwrapped = rings.copy()
    lons = unwrapped[..., 0]
    lons[lons < 0] += 360.0  # one continuous polygon from ~179 to ~181
    whole = shapely.polygons(unwrapped)
    east = shapely.intersection(whole, shapely.box(0.0, -90.0, 180.0, 90.0))
    west = shapely.transform(shapely.intersection(whole, shapely.box(180.0, -90.0, 360.0, 90.0)),
                             lambda c: c - np.array([360.0, 0.0]))
    east_b, west_b = shapely.bounds(east), shapely.bounds(west)
    bounds = np.stack([east_b[:, 0], np.fmin(east_b[:, 1], west_b[:, 1]), west_b[:, 2],
                       np.fmax(east_b[:, 3], west_b[:, 3])], axis=1)
    # a chip that only touches 180 degrees at a corner or edge leaves a point or a line on one side
    east_ok = (shapely.get_type_id(east) == 3) & (shapely.area(east) > 0)  # not an empty polygon
    west_ok = (shapely.get_type_id(west) == 3) & (shapely.area(west) > 0)
    both = east_ok & west_ok
    out = np.empty(len(rings), dtype=object)
    if both.any():
        out[both] = shapely.multipolygons(np.stack([east[both], west[both]], axis=1))
    out[east_ok & ~both], bounds[east_ok & ~both] = east[east_ok & ~both], east_b[east_ok & ~both]
    out[west_ok & ~both], bounds[west_ok & ~both] = west[west_ok & ~both], west_b[west_ok & ~both]
    return out, bounds


def _around_pole(grid: ChipGrid, index: int, north: bool, per_side: int = 64):
    """The footprint of a chip holding a pole. Its edges are sampled densely (a straight line
    between two corners 90 degrees of longitude apart is far from the chip's edge), ordered
    by longitude and closed along the antimeridian to the pole: a lon/lat polygon cannot
    hold a pole otherwise."""
    import shapely

    y, x = divmod(index, grid.x_size)
    cs = grid.chip_size
    t = np.linspace(0.0, 1.0, per_side, endpoint=False)
    # the chip's boundary in pixel coordinates, once round
    cols = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t]) * cs + x * cs
    rows = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t)]) * cs + y * cs
    gt = grid.transform
    xs, ys = gt.a * cols + gt.b * rows + gt.c, gt.d * cols + gt.e * rows + gt.f
    lon, lat = crs_transformer(grid.crs, CRS84).transform(xs, ys)
    lon, lat = np.asarray(lon), np.asarray(lat)
    # the boundary winds once round the pole: start right after its jump across 180 degrees
    jump = int(np.argmax(np.abs(np.diff(np.append(lon, lon[0])))))
    lon, lat = np.roll(lon, -(jump + 1)), np.roll(lat, -(jump + 1))
    if lon[0] > lon[-1]:
        lon, lat = lon[::-1], lat[::-1]
    span = (lon[0] + 360.0) - lon[-1]
    at_180 = lat[-1] + (lat[0] - lat[-1]) * ((180.0 - lon[-1]) / span if span else 0.5)
    pole = 90.0 if north else -90.0
    polygon = shapely.Polygon(
        [*zip(lon, lat), (180.0, at_180), (180.0, pole), (-180.0, pole), (-180.0, at_180)]
    )
    south_lat, north_lat = (
        (min(lat.min(), at_180), 90.0) if north else (-90.0, max(lat.max(), at_180))
    )
    return polygon, np.array([-180.0, south_lat, 180.0, north_lat])


# chips whose corners span more degrees of longitude than this are sampled densely
CURVED_SPAN = 10.0


def _dense_footprint(
    grid: ChipGrid,
    index: int,
    pole: tuple[bool, tuple[float, float]] | None = None,
    per_side: int = 64,
):
    """The footprint of a chip that spans many degrees of longitude without holding a pole:
    its edges sampled densely (as for _around_pole), longitudes unwrapped, split at the
    antimeridian if it crosses it. ``pole`` (north, its (col, row)): a pole on the chip's
    edge or corner, which from there spans a range of longitudes (90 degrees at a corner,
    180 on an edge), so the pole's point becomes a segment along its latitude."""
    import shapely

    y, x = divmod(index, grid.x_size)
    cs = grid.chip_size
    t = np.linspace(0.0, 1.0, per_side, endpoint=False)
    cols = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t]) * cs + x * cs
    rows = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t)]) * cs + y * cs
    if pole is not None:
        # put the pole on the sampled boundary (an edge's sample may miss it), then start there
        pc, pr = pole[1]
        at = int(np.argmin(np.hypot(cols - pc, rows - pr)))
        if np.hypot(cols[at] - pc, rows[at] - pr) > 1e-6:
            at = at + 1 if np.hypot(np.roll(cols, -1)[at] - pc, np.roll(rows, -1)[at] - pr) < \
                np.hypot(np.roll(cols, 1)[at] - pc, np.roll(rows, 1)[at] - pr) else at
            cols, rows = np.insert(cols, at, pc), np.insert(rows, at, pr)
        else:
            cols[at], rows[at] = pc, pr
        cols, rows = np.roll(cols, -at)[1:], np.roll(rows, -at)[1:]  # the pole itself left out
    gt = grid.transform
    xs, ys = gt.a * cols + gt.b * rows + gt.c, gt.d * cols + gt.e * rows + gt.f
    lon, lat = crs_transformer(grid.crs, CRS84).transform(xs, ys)
    lon = np.unwrap(np.asarray(lon), period=360.0)
    if pole is None:
        ring = [*zip(lon, np.asarray(lat)), (lon[0], lat[0])]
    else:
        # from the pole at the first sample's longitude, round the chip, back to the pole at
        # the last sample's, and along the pole's latitude to the start
        lat_p = 90.0 if pole[0] else -90.0
        ring = [(lon[0], lat_p), *zip(lon, np.asarray(lat)), (lon[-1], lat_p), (lon[0], lat_p)]
    whole = shapely.make_valid(shapely.Polygon(ring))
    parts = []
    for shift in (-360.0, 0.0, 360.0):  # the unwrapped span may leave [-180, 180] on one side
        part = shapely.intersection(whole, shapely.box(-180.0 + shift, -90.0, 180.0 + shift, 90.0))
        part = shapely.transform(part, lambda c, s=shift: c - np.array([s, 0.0]))
        parts += [
            p
            for p in shapely.get_parts(part)
            if shapely.get_type_id(p) == 3 and shapely.area(p) > 0
        ]
    if len(parts) == 1:
        return parts[0], np.array(shapely.bounds(parts[0]))
    b = shapely.bounds(np.array(parts, dtype=object))
    east = b[:, 2] >= 180.0 - 1e-9  # the parts that reach 180 from the west, and the others
    return shapely.MultiPolygon(parts), np.array(
        [b[east, 0].min(), b[:, 1].min(), b[~east, 2].max(), b[:, 3].max()]
    )
