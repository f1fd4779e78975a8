"""Stacks: the same place across dates and sensors, grouped from a chip index.

A stack is an *anchor* place (one chip window of one grid) and its *members*: index rows
read onto that window. Two rules make members (docs/stacks.md):

- **exact**: rows of the anchor's platform on the same grid (CRS, transform, chip size) with
  the same chip index. They form a time series whose pixels are exact windows.
- **warped**: rows of the ``with_`` platforms (any grid: another sensor, another UTM zone)
  whose item covers at least ``share`` of the anchor footprint within ``window`` days of an
  anchor step. They are reprojected onto the anchor window when read.

Everything is columnar: the grid key of a row comes from its item's layouts (decoded once
per distinct blob) and its footprint; grouping is one hash aggregation; per-step filters,
``every`` and ``max_steps`` are sorts and masks over all rows at once; footprint overlap is an
STRtree query and vectorized shapely intersections, one partition (1 degree cell) at a time.
The output is GeoParquet (one row per stack, members as list columns, row groups ordered by
grid and place) that geopandas and DuckDB read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stacchip_core.core.index import BBOX_TYPE, with_geo_metadata
from stacchip_core.errors import IndexFormatError, NotFoundError, StacchipError, StackError

log = logging.getLogger(__name__)

# columns the grouping needs; geometry is read later, for the rows that end up in a stack only
_LIGHT = [
    "platform",
    "item_id",
    "item_href",
    "date",
    "chip_index_x",
    "chip_index_y",
    "chip_size",
    "cloud_cover_percentage",
    "nodata_percentage",
    "bbox",
    "layouts",
]
_DICT = ["platform", "item_id", "item_href", "layouts", "crs"]
QUANTUM = (
    1e5  # footprint centres are compared at 1e-5 degree (~1 m): same grid + chip = same footprint
)
CELL = 1.0  # degrees: the partition of the overlap search
METADATA_KEY = b"stacchip:stacks"

MEMBER_FIELDS = [
    ("chipid", pa.string()),
    ("item_id", pa.string()),
    ("item_href", pa.string()),
    ("platform", pa.string()),
    ("date", pa.date32()),
    ("cloud", pa.float32()),
    ("nodata", pa.float32()),
    ("step", pa.int16()),
    ("exact", pa.bool_()),
    ("coverage", pa.float32()),
    ("chip_index_x", pa.int32()),
    ("chip_index_y", pa.int32()),
    ("chip_size", pa.int32()),
    ("layouts", pa.dictionary(pa.int32(), pa.binary())),
    ("crs", pa.dictionary(pa.int32(), pa.string())),
]


@dataclass(frozen=True)
class StackOptions:
    """How rows group into stacks (see ``build_stacks``)."""

    anchor: str | None = None
    with_: tuple[str, ...] = ()
    share: float = 0.9
    window: float = 0.0
    min_steps: int = 1
    max_steps: int | None = None
    max_cloud: float | None = None
    max_nodata: float | None = None
    every: int | None = None
    resolve_crs: bool = True
    region: tuple[float, float, float, float] | None = None

    def check(self) -> None:
        """Validate the options.

        Raises:
            StackError: If ``with_`` lacks an anchor or repeats it, ``share`` is not in
                (0, 1], the step bounds are inconsistent, ``every`` < 1 or ``window`` < 0.
        """
        if self.with_ and not self.anchor:
            raise StackError(
                "--with needs --anchor: members of other sensors join an anchor platform's chips"
            )
        if self.anchor and self.anchor in self.with_:
            raise StackError(
                f"--with {self.anchor} repeats the anchor platform: "
                "its other grids form their own stacks"
            )
        if not 0 < self.share <= 1:
            raise StackError(f"share must be in (0, 1], got {self.share}")
        if self.min_steps < 1 or (self.max_steps is not None and self.max_steps < self.min_steps):
            raise StackError(
                f"steps: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}"
            )
        if self.every is not None and self.every < 1:
            raise StackError(f"every must be at least 1 day, got {self.every}")
        if self.window < 0:
            raise StackError(f"window must be >= 0 days, got {self.window}")


@dataclass
class StackPixels:
    """One stack's pixels on the anchor chip's window.

    ``pixels[platform]`` is float32 ``(T, C, H, W)`` (T the anchor's steps: every platform of a
    multi-sensor stack has one member per step), ``valid[platform]`` bool ``(T, H, W)`` (all
    bands hold data there), ``dates[platform]`` the members' dates, ``bands[platform]`` the
    band names. ``anchor`` names the anchor platform; ``crs`` and ``transform`` (affine
    ``[a, b, c, d, e, f]``) the anchor window, when known.
    """

    stackid: str
    anchor: str
    pixels: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    dates: dict[str, list[date]]
    bands: dict[str, list[str]]
    crs: str | None = None
    transform: list[float] | None = None
    members: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, list[dict]] = field(default_factory=dict, repr=False)  # members' index fields

    @property
    def series(self) -> np.ndarray:
        """The anchor platform's ``(T, C, H, W)``."""
        return self.pixels[self.anchor]


# --- reading the index -------------------------------------------------------------------


def _load(index: str | Path | pa.Table, columns: list[str], filters=None) -> pa.Table:
    if isinstance(index, pa.Table):
        table = index.select([c for c in columns if c in index.column_names])
        return _dict_encode(table.filter(filters) if filters is not None else table)
    try:
        schema = pq.read_schema(index) if Path(index).is_file() else None
        names = schema.names if schema is not None else pq.ParquetDataset(index).schema.names
        cols = [c for c in columns if c in names]
        dicts = [c for c in _DICT if c in cols]
        return _dict_encode(
            pq.read_table(index, columns=cols, read_dictionary=dicts, filters=filters)
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(f"{index} is not a readable index: {exc}") from exc


def _dict_encode(table: pa.Table) -> pa.Table:
    for name in _DICT:
        if name in table.column_names and not pa.types.is_dictionary(table.schema.field(name).type):
            i = table.column_names.index(name)
            table = table.set_column(i, name, pc.dictionary_encode(table.column(i)))
    return table.combine_chunks() if table.num_rows else table


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """(per-row int codes, distinct values) of a dictionary column; null -> -1."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    # unify_dictionaries was done by combine_chunks; indices may be null
    codes = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, arr.dictionary.to_pylist()


def _bounds(table: pa.Table) -> np.ndarray:
    bbox = table.column("bbox").combine_chunks()
    return np.stack(
        [bbox.field(k).to_numpy(zero_copy_only=False) for k in ("xmin", "ymin", "xmax", "ymax")],
        axis=1,
    )


def _grids(blobs: list) -> tuple[np.ndarray, list[str | None]]:
    """Per distinct layouts blob: the chip grid ``(a, c, e, f)`` (NaN when unknown) and its CRS
    (when the layouts record one)."""
    from stacchip_core.core.layout import decoded

    grids = np.full((len(blobs), 4), np.nan)
    crss: list[str | None] = []
    for i, blob in enumerate(blobs):
        crs = None
        if blob:
            try:
                lays = decoded.get(blob)
            except (IndexFormatError, ValueError, KeyError):
                lays = None
            if lays is not None:
                if getattr(lays, "grid", None):
                    grids[i] = lays.grid
                crs = getattr(lays, "crs", None)
        crss.append(str(crs) if crs else None)
    return grids, crss


def _row_grids(codes: np.ndarray, blobs: list) -> np.ndarray:
    """(n, 4) grid numbers per row from its layouts code (NaN where unknown)."""
    grids, _ = _grids(blobs)
    out = np.full((len(codes), 4), np.nan)
    known = codes >= 0
    out[known] = grids[codes[known]]
    return out


# --- grouping ------------------------------------------------------------------------------


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-spread 64-bit hash of each value (wrapping uint64)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _place_keys(table: pa.Table, rows: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """A group id per row of ``rows``: same platform, grid, chip size, chip index and footprint.

    The key columns are hashed together and sorted once (10M rows: ~2 s, ~1 GB less than
    arrow's group-by plus join); equal hashes are then checked column by column, and a
    collision (never seen; odds ~1e-6 at 10M rows) falls back to an exact arrow group-by."""
    platform, _ = _codes(table.column("platform"))
    lay_codes, blobs = (
        _codes(table.column("layouts"))
        if "layouts" in table.column_names
        else (np.full(table.num_rows, -1), [])
    )
    # grid numbers to 1e-6 of their unit; unknown grids: the footprint alone decides
    grid_q = (
        np.where(np.isfinite(g := _grids(blobs)[0]), np.round(g * 1e6), 0).astype(np.int64)
        if blobs
        else None
    )

    def columns():
        """The key columns one at a time (at 10M rows each is 80 MB: never all held at once)."""
        yield platform[rows]
        for name in ("chip_size", "chip_index_x", "chip_index_y"):
            yield table.column(name).to_numpy()[rows].astype(np.int64)
        codes = lay_codes[rows]
        for k in range(4):
            yield (
                np.where(codes >= 0, grid_q[np.maximum(codes, 0), k], 0)
                if grid_q is not None
                else np.zeros(len(rows), np.int64)
            )
        for lo, hi in ((0, 2), (1, 3)):
            yield np.round((bounds[rows, lo] + bounds[rows, hi]) / 2 * QUANTUM).astype(np.int64)

    h = np.zeros(len(rows), np.uint64)
    with np.errstate(over="ignore"):
        for i, col in enumerate(columns()):
            h = _mix(h ^ _mix(col.astype(np.uint64) + np.uint64(i + 1)))
    _, first, gid = np.unique(h, return_index=True, return_inverse=True)
    del h
    if all(np.array_equal(col, col[first][gid]) for col in columns()):
        # numbered by first appearance: stacks come out in the index's (spatial) order
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return rank[gid]
    log.warning("a hash collision among place keys: grouping exactly instead")
    cols = list(columns())
    names = [f"k{i}" for i in range(len(cols))]
    keys = pa.table(dict(zip(names, cols))).append_column("row", pa.array(np.arange(len(rows))))
    ids = keys.group_by(names, use_threads=False).aggregate([("row", "min")])
    ids = ids.append_column("gid", pa.array(np.arange(ids.num_rows))).drop(["row_min"])
    joined = keys.join(ids, names, use_threads=False)
    out = np.empty(len(rows), np.int64)
    out[joined.column("row").to_numpy()] = joined.column("gid").to_numpy()
    return out


def _score(cloud: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """The clearest first: the lower cloud fraction (to 1e-4), then the lower nodata fraction."""
    return np.round(cloud.astype(np.float64), 4) + np.clip(nodata, 0, 1).astype(np.float64) * 1e-5


def _first_per(keys: Sequence[np.ndarray], order_by: Sequence[np.ndarray]) -> np.ndarray:
    """Indices of the first row (by ``order_by``, lexicographic) of each distinct ``keys``."""
    order = np.lexsort(tuple(reversed(list(keys) + list(order_by))))
    k = np.stack([kk[order] for kk in keys], axis=1)
    new = np.ones(len(order), bool)
    new[1:] = np.any(k[1:] != k[:-1], axis=1)
    return order[new]


def _rank_within(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """0-based rank of each row within its group by ``score`` (ties: earlier row first)."""
    order = np.lexsort((np.arange(len(group)), score, group))
    g = group[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    sizes = np.diff(np.r_[start, len(g)])
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(g)) - np.repeat(start, sizes)
    return rank


def _thin(gid: np.ndarray, day: np.ndarray, score: np.ndarray, opts: StackOptions) -> np.ndarray:
    """Row positions kept after ``every`` (the clearest per interval, one per day in any
    case) and ``max_steps`` (the clearest N), within each group."""
    pos = np.arange(len(gid))
    if not len(pos):
        return pos
    # one step per day: two items of one place and day (a reprocessed duplicate) keep the clearest
    keep = _first_per([gid, day], [score, pos])
    if opts.every:
        sub = keep
        bins = np.floor_divide(day[sub], opts.every)  # intervals counted from 1970-01-01
        keep = sub[_first_per([gid[sub], bins], [score[sub], day[sub]])]
    if opts.max_steps:
        rank = _rank_within(gid[keep], score[keep])
        keep = keep[rank < opts.max_steps]
    return np.sort(keep)


# --- overlap of other sensors ----------------------------------------------------------------


def _cells(bounds: np.ndarray) -> np.ndarray:
    cx = np.floor((bounds[:, 0] + bounds[:, 2]) / 2 / CELL).astype(np.int64)
    cy = np.floor((bounds[:, 1] + bounds[:, 3]) / 2 / CELL).astype(np.int64)
    return cx * 100_000 + cy


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, b) for a, b in zip(lo, hi)])`` without the loop."""
    counts = hi - lo
    starts = np.r_[0, np.cumsum(counts)[:-1]] if len(counts) else np.empty(0, np.int64)
    return (np.repeat(lo - starts, counts) + np.arange(counts.sum())).astype(np.int64)


def _quads(geoms) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (n, 4, 2) counterclockwise, mask of the geometries that are quadrilaterals:
    polygons of 5 coordinates, which leaves no room for a hole)."""
    import shapely

    n = len(geoms)
    ok = (shapely.get_type_id(geoms) == 3) & (shapely.get_num_coordinates(geoms) == 5)
    quads = np.zeros((n, 4, 2))
    if ok.any():
        coords = shapely.get_coordinates(geoms[ok]).reshape(-1, 5, 2)[:, :4]
        x, y = coords[..., 0], coords[..., 1]
        signed = (x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1)
        coords[signed < 0] = coords[signed < 0][:, ::-1]
        quads[ok] = coords
        ok[np.flatnonzero(ok)[signed == 0]] = False  # degenerate
    return quads, ok


def _convex_clip_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Areas of the intersections of convex quadrilaterals ``a[i]`` and ``b[i]`` ((n, 4, 2),
    counterclockwise): Sutherland-Hodgman clipping of each ``a`` by ``b``'s four edges, all pairs
    and vertices at once (a clip adds at most one vertex per edge: at most 8), then the shoelace
    formula."""
    n, M = len(a), 8
    poly = np.zeros((n, M, 2))
    poly[:, :4] = a
    count = np.full(n, 4)
    slots = np.arange(M)[None, :]
    for k in range(4):
        p0, p1 = b[:, k], b[:, (k + 1) % 4]
        ex, ey = (p1 - p0)[:, 0:1], (p1 - p0)[:, 1:2]
        side = ex * (poly[..., 1] - p0[:, 1:2]) - ey * (poly[..., 0] - p0[:, 0:1])
        live = slots < count[:, None]
        prev = (slots - 1) % np.maximum(count, 1)[:, None]
        prev_s = np.take_along_axis(side, prev, 1)
        prev_v = np.take_along_axis(poly, prev[..., None], 1)
        cur_in, prev_in = side >= 0, prev_s >= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(cur_in != prev_in, prev_s / (prev_s - side), 0.0)
        crossing = prev_v + t[..., None] * (poly - prev_v)
        # per slot: maybe the crossing point, then maybe the vertex itself, in that order
        emit = np.stack([live & (cur_in != prev_in), live & cur_in], axis=2).reshape(n, 2 * M)
        values = np.stack([crossing, poly], axis=2).reshape(n, 2 * M, 2)
        pos = np.cumsum(emit, 1) - 1
        r, c = np.nonzero(emit)
        out = np.zeros((n, M, 2))
        out[r, pos[r, c]] = values[r, c]
        poly, count = out, emit.sum(1)
    x, y = poly[..., 0], poly[..., 1]
    nxt = np.where(slots + 1 < count[:, None], slots + 1, 0)
    xn, yn = np.take_along_axis(x, nxt, 1), np.take_along_axis(y, nxt, 1)
    terms = np.where(slots < count[:, None], x * yn - xn * y, 0.0)
    return np.where(count >= 3, np.abs(terms.sum(1)) / 2, 0.0)


def intersection_areas(a, b) -> np.ndarray:
    """Areas of ``a[i] & b[i]`` for arrays of shapely geometries (see ``_pair_areas``).

    Args:
        a: Shapely geometries.
        b: Shapely geometries, as many.

    Returns:
        float64 areas, in the geometries' units.
    """
    qa, oka = _quads(a)
    qb, okb = _quads(b)
    i = np.arange(len(a))
    return _pair_areas((a, qa, oka), (b, qb, okb), i, i)


def _pair_areas(a, b, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Areas of ``a[i] & b[j]``, ``a`` and ``b`` as (geometries, quads, quad mask): chip
    footprints (convex quadrilaterals) by vectorized clipping in cache-sized blocks (measured on
    200k pairs: 2.9 s against 9.0 s for shapely.intersection, a loaded machine), anything else
    (antimeridian MultiPolygons, pole chips) by shapely."""
    import shapely

    ga, qa, oka = a
    gb, qb, okb = b
    both = oka[i] & okb[j]
    out = np.empty(len(i))
    w = np.flatnonzero(both)
    for k in range(0, len(w), 4096):  # blocks that stay in cache: 3x faster than all at once
        part = w[k : k + 4096]
        out[part] = _convex_clip_areas(qa[i[part]], qb[j[part]])
    rest = np.flatnonzero(~both)
    if len(rest):
        out[rest] = shapely.area(shapely.intersection(ga[i[rest]], gb[j[rest]]))
    return out


def _touched_cells(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, cell) for every ``CELL`` degree cell each bbox touches (antimeridian-crossing
    boxes: the cell of their west edge only)."""
    x0, x1 = (
        np.floor(bounds[:, 0] / CELL).astype(np.int64),
        np.floor(bounds[:, 2] / CELL).astype(np.int64),
    )
    y0, y1 = (
        np.floor(bounds[:, 1] / CELL).astype(np.int64),
        np.floor(bounds[:, 3] / CELL).astype(np.int64),
    )
    nx, ny = np.maximum(x1 - x0 + 1, 1), np.maximum(y1 - y0 + 1, 1)
    counts = nx * ny
    rows = np.repeat(np.arange(len(bounds)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.r_[0, np.cumsum(counts)[:-1]], counts)
    return rows, (x0[rows] + k % nx[rows]) * 100_000 + (y0[rows] + k // nx[rows])


def _overlaps(anchor_geoms, anchor_bounds: np.ndarray, cand_geoms, cand_bounds: np.ndarray):
    """(anchor i, candidate j, intersection area / anchor area) of intersecting pairs, one
    1-degree cell of anchors (by their centre) at a time, against the candidates that touch
    the cell or its neighbours (a candidate is listed in every cell its bbox touches, so
    footprints larger than a cell are found too)."""
    import shapely

    a_cell = _cells(anchor_bounds)
    a_order = np.argsort(a_cell, kind="stable")
    a_sorted = a_cell[a_order]
    c_rows, c_cell = _touched_cells(cand_bounds)
    c_order = np.argsort(c_cell, kind="stable")
    c_sorted, c_rows = c_cell[c_order], c_rows[c_order]
    out_i, out_j, out_s = [], [], []
    areas = shapely.area(anchor_geoms)
    anchors = (anchor_geoms, *_quads(anchor_geoms))
    cands = (cand_geoms, *_quads(cand_geoms))
    cells, starts = np.unique(a_sorted, return_index=True)
    ends = np.r_[starts[1:], len(a_sorted)]
    for cell, s0, s1 in zip(cells, starts, ends):
        ai = a_order[s0:s1]
        near = [cell + dx * 100_000 + dy for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
        lo, hi = np.searchsorted(c_sorted, near, "left"), np.searchsorted(c_sorted, near, "right")
        cj = np.unique(c_rows[_ranges(lo, hi)])
        if not len(cj):
            continue
        tree = shapely.STRtree(shapely.box(*cand_bounds[cj].T))
        qa, qc = tree.query(shapely.box(*anchor_bounds[ai].T), predicate="intersects")
        if not len(qa):
            continue
        i, j = ai[qa], cj[qc]
        inter = _pair_areas(anchors, cands, i, j)
        ok = inter > 0
        out_i.append(i[ok])
        out_j.append(j[ok])
        out_s.append(inter[ok] / areas[i[ok]])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def _wkb(index, table_rows: np.ndarray, source: pa.Table | None) -> pa.Array:
    """The WKB footprints of the given row positions, in that order (read from a file in
    row-group batches, so the geometry of rows in no stack is never held)."""
    if source is not None:
        return source.column("geometry").combine_chunks().take(pa.array(table_rows))
    wanted = np.unique(table_rows)
    parts = []
    offset = 0
    dataset = pq.ParquetFile(index) if Path(index).is_file() else None
    batches = (
        dataset.iter_batches(columns=["geometry"], batch_size=262_144)
        if dataset is not None
        else pq.read_table(index, columns=["geometry"]).to_batches(262_144)
    )
    for batch in batches:
        n = batch.num_rows
        lo, hi = np.searchsorted(wanted, [offset, offset + n])
        if hi > lo:
            parts.append(batch.column(0).take(pa.array(wanted[lo:hi] - offset)))
        offset += n
    found = pa.concat_arrays(parts) if parts else pa.array([], pa.binary())
    return found.take(pa.array(np.searchsorted(wanted, table_rows)))


def _geometry(index, table_rows: np.ndarray, source: pa.Table | None) -> np.ndarray:
    """Shapely footprints of the given row positions."""
    import shapely

    return shapely.from_wkb(_wkb(index, table_rows, source).to_numpy(zero_copy_only=False))


# --- the whole thing ---------------------------------------------------------------------------


def build_stacks(
    index: str | Path | pa.Table,
    anchor: str | None = None,
    with_: Sequence[str] = (),
    share: float = 0.9,
    window: float = 0.0,
    min_steps: int = 1,
    max_steps: int | None = None,
    max_cloud: float | None = None,
    max_nodata: float | None = None,
    every: int | None = None,
    resolve_crs: bool = True,
    region: tuple[float, float, float, float] | None = None,
) -> pa.Table:
    """Group the rows of a chip index into stacks of the same place.

    Args:
        index: An index (GeoParquet file or folder, or a pyarrow Table with the index schema).
        anchor: The platform whose chips anchor the stacks (default: every platform, each its own).
        with_: Other platforms whose rows join an anchor step (reprojected onto its window).
        share: The least fraction of the anchor footprint a joining item must cover.
        window: Days between an anchor step and a joining row, at most (inclusive).
        min_steps: Stacks with fewer steps are dropped.
        max_steps: Keep the clearest N steps of a stack (then in date order).
        max_cloud: Steps (and joining rows) with a larger cloud fraction are dropped.
        max_nodata: Steps (and joining rows) with a larger nodata fraction are dropped.
        every: One step per interval of this many days (from 1970-01-01), the clearest.
        resolve_crs: Read the item JSON of items with warped members when neither the index nor
            the layouts record their CRS (once per item, here: readers then need none).
        region: ``(west, south, east, north)``: only stacks whose anchor footprint's centre lies
            in ``[west, east) x [south, north)``, reading only the rows near it (Parquet
            statistics skip the rest). Regions that tile an area give each stack exactly once:
            one process per region bounds the memory of any index size.

    Returns:
        The stacks table (one row per stack, members as list columns: ``MEMBER_FIELDS``;
        docs/stacks.md) with its GeoParquet metadata.

    Raises:
        StackError: Contradicting options.
        IndexFormatError: The index cannot be read.
        NotFoundError: No row of the anchor platform passes the filters.
    """
    opts = StackOptions(
        anchor,
        tuple(with_),
        share,
        window,
        min_steps,
        max_steps,
        max_cloud,
        max_nodata,
        every,
        resolve_crs,
        region,
    )
    opts.check()
    if region is not None:
        # the region's rows (and, for joining sensors, a margin around it), geometry included
        margin = 0.5 if opts.with_ else 0.0
        w, so, e, no = region
        near = (
            (pc.field("bbox", "xmax") >= w - margin)
            & (pc.field("bbox", "xmin") <= e + margin)
            & (pc.field("bbox", "ymax") >= so - margin)
            & (pc.field("bbox", "ymin") <= no + margin)
        )
        index = _load(index, _LIGHT + ["crs", "geometry"], near)
    source = index if isinstance(index, pa.Table) else None
    table = _load(index, _LIGHT + ["crs"])
    missing = [
        c
        for c in (
            "platform",
            "item_id",
            "date",
            "chip_index_x",
            "chip_index_y",
            "chip_size",
            "bbox",
        )
        if c not in table.column_names
    ]
    if missing:
        raise IndexFormatError(
            f"{index if source is None else 'the table'} is not a chip index: no {missing}"
        )
    n = table.num_rows
    rows = np.arange(n)
    cloud = table.column("cloud_cover_percentage").to_numpy(zero_copy_only=False).astype(np.float32)
    nodata = table.column("nodata_percentage").to_numpy(zero_copy_only=False).astype(np.float32)
    ok = np.ones(n, bool)
    if max_cloud is not None:
        ok &= cloud <= max_cloud
    if max_nodata is not None:
        ok &= nodata <= max_nodata
    platform_codes, platforms = _codes(table.column("platform"))
    if anchor is not None:
        if anchor not in platforms and region is not None:  # a region without it: no stacks
            platforms = [*platforms, anchor]
        if anchor not in platforms:
            raise NotFoundError(
                f"no rows of platform {anchor!r} in the index (it has {sorted(platforms)})"
            )
        is_anchor = platform_codes == platforms.index(anchor)
    else:
        is_anchor = np.ones(n, bool)
    bounds = _bounds(table)
    if region is not None:
        cx, cy = (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2
        is_anchor &= (cx >= region[0]) & (cx < region[2]) & (cy >= region[1]) & (cy < region[3])
    day = table.column("date").cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    score = _score(cloud, nodata)
    # anchor steps: grouped by place, one per day, filtered
    arow = rows[is_anchor & ok]
    gid_all = _place_keys(table, arow, bounds) if len(arow) else np.empty(0, np.int64)
    if opts.with_:
        arow, gid_all, joined = _join_others(
            index,
            source,
            table,
            arow,
            gid_all,
            bounds,
            day,
            score,
            cloud,
            nodata,
            ok,
            platform_codes,
            platforms,
            opts,
        )
    else:
        joined = None
    keep = _thin(gid_all, day[arow], score[arow], opts)
    arow, gid = arow[keep], gid_all[keep]
    # steps in date order within each stack; stacks with too few steps dropped
    order = np.lexsort((day[arow], gid))
    arow, gid = arow[order], gid[order]
    starts = (
        np.r_[0, np.flatnonzero(gid[1:] != gid[:-1]) + 1] if len(gid) else np.empty(0, np.int64)
    )
    sizes = np.diff(np.r_[starts, len(gid)])
    big = sizes >= min_steps
    stack_of = np.repeat(np.arange(len(starts)), sizes)
    sel = big[stack_of]
    arow, stack_of = arow[sel], stack_of[sel]
    remap = np.cumsum(big) - 1
    stack_of = remap[stack_of]
    n_stacks = int(big.sum())
    if n_stacks == 0:
        log.warning("no stack has %d steps or more", min_steps)
    step = (
        np.arange(len(arow))
        - np.repeat(
            np.r_[0, np.flatnonzero(np.diff(stack_of)) + 1],
            np.diff(np.r_[0, np.flatnonzero(np.diff(stack_of)) + 1, len(arow)]),
        )
        if len(arow)
        else np.empty(0, np.int64)
    )
    out = _assemble(
        index,
        source,
        table,
        arow,
        stack_of,
        step,
        n_stacks,
        joined,
        bounds,
        day,
        cloud,
        nodata,
        opts,
    )
    log.info("%d stacks from %d rows (%d steps)", n_stacks, n, len(arow))
    return out


def _join_others(
    index,
    source,
    table,
    arow,
    gid,
    bounds,
    day,
    score,
    cloud,
    nodata,
    ok,
    platform_codes,
    platforms,
    opts: StackOptions,
):
    """Anchor steps that every ``with_`` platform joins (the rest are dropped), and the joining
    members: ``{anchor row: [(platform, row, coverage, cloud, nodata), ...]}`` as arrays."""
    wanted = [platforms.index(p) for p in opts.with_ if p in platforms]
    if len(wanted) < len(opts.with_):
        absent = [p for p in opts.with_ if p not in platforms]
        if opts.region is None:
            raise NotFoundError(f"no rows of platform(s) {absent} in the index")
        none = np.empty(0, np.int64)  # a region without them: no anchor step is joined
        return none, none, {k: none for k in ("anchor_row", "row", "coverage", "cloud", "nodata")}
    cand = np.flatnonzero(np.isin(platform_codes, wanted))
    # anchors as places (their footprint) vs candidate rows, then times and items
    first = _first_per([gid], [np.arange(len(gid))])
    place_rows = arow[first]
    place_of = np.searchsorted(gid[first], gid) if len(first) else np.empty(0, np.int64)
    geoms = _geometry(index, np.r_[place_rows, cand], source)
    pg, cg = geoms[: len(place_rows)], geoms[len(place_rows) :]
    pi, cj, frac = _overlaps(pg, bounds[place_rows], cg, bounds[cand])
    crow = cand[cj]
    # expand place pairs to anchor steps within the time window
    by_place = np.argsort(place_of, kind="stable")
    p_sorted = place_of[by_place]
    lo, hi = np.searchsorted(p_sorted, pi, "left"), np.searchsorted(p_sorted, pi, "right")
    counts = hi - lo
    pair = np.repeat(np.arange(len(pi)), counts)
    step_pos = by_place[_ranges(lo, hi)]
    srow, mrow, mfrac = arow[step_pos], crow[pair], frac[pair]
    dt = np.abs(day[srow] - day[mrow])
    near = (dt <= opts.window) & ok[mrow]
    srow, mrow, mfrac, dt, step_pos = srow[near], mrow[near], mfrac[near], dt[near], step_pos[near]
    # per (anchor step, item): coverage = summed overlap of its chips; cloud, nodata weighted
    item_codes, _ = _codes(table.column("item_id"))
    key_item = item_codes[mrow]
    order = np.lexsort((-mfrac, key_item, step_pos))
    sp, it = step_pos[order], key_item[order]
    new = np.ones(len(order), bool)
    new[1:] = (sp[1:] != sp[:-1]) | (it[1:] != it[:-1])
    starts = np.flatnonzero(new)
    cover = np.add.reduceat(mfrac[order], starts) if len(starts) else np.empty(0)
    w_cloud = (
        np.add.reduceat(mfrac[order] * cloud[mrow[order]], starts) / np.maximum(cover, 1e-12)
        if len(starts)
        else np.empty(0)
    )
    w_nodata = (
        np.add.reduceat(mfrac[order] * nodata[mrow[order]], starts) / np.maximum(cover, 1e-12)
        if len(starts)
        else np.empty(0)
    )
    best_row = mrow[order][starts]  # the chip of the item that overlaps most
    g_step, g_dt = sp[starts], dt[order][starts]
    full = cover >= opts.share - 1e-9
    if opts.max_cloud is not None:
        full &= w_cloud <= opts.max_cloud
    if opts.max_nodata is not None:
        full &= w_nodata <= opts.max_nodata
    g_step, g_dt, best_row = g_step[full], g_dt[full], best_row[full]
    cover, w_cloud, w_nodata = cover[full], w_cloud[full], w_nodata[full]
    g_plat = platform_codes[best_row]
    # per (anchor step, platform): the nearest in time, then the clearest
    pick = _first_per([g_step, g_plat], [g_dt, _score(w_cloud, w_nodata)])
    have = np.zeros((len(arow), len(wanted)), bool)
    col = np.searchsorted(np.array(sorted(wanted)), g_plat[pick])
    have[g_step[pick], col] = True
    full_steps: np.ndarray = np.asarray(have.all(axis=1))
    keep_step = np.flatnonzero(full_steps)
    pick = pick[full_steps[g_step[pick]]]
    joined = {
        "anchor_row": arow[g_step[pick]],
        "row": best_row[pick],
        "coverage": cover[pick],
        "cloud": w_cloud[pick],
        "nodata": w_nodata[pick],
    }
    log.info("%d of %d anchor steps joined by %s", len(keep_step), len(arow), ", ".join(opts.with_))
    return arow[keep_step], gid[keep_step], joined


def _assemble(
    index,
    source,
    table,
    arow,
    stack_of,
    step,
    n_stacks,
    joined,
    bounds,
    day,
    cloud,
    nodata,
    opts: StackOptions,
) -> pa.Table:
    """The stacks table from anchor steps (and joined members)."""
    members = {
        "row": arow,
        "stack": stack_of,
        "step": step,
        "exact": np.ones(len(arow), bool),
        "coverage": np.ones(len(arow), np.float32),
        "cloud": cloud[arow],
        "nodata": nodata[arow],
        "rank": np.zeros(len(arow), np.int64),
    }
    if joined is not None and len(arow):
        # joined members follow the anchor's steps, platform by platform in --with order
        a_sorted = np.argsort(arow)
        k = np.searchsorted(arow[a_sorted], joined["anchor_row"])
        inside = (k < len(arow)) & (
            arow[a_sorted][np.minimum(k, len(arow) - 1)] == joined["anchor_row"]
        )
        at = a_sorted[np.minimum(k, len(arow) - 1)][inside]
        plat_codes, plats = _codes(table.column("platform"))
        rank_of = {plats.index(p): r + 1 for r, p in enumerate(opts.with_)}
        jr = joined["row"][inside]
        members = {
            k2: np.concatenate([v, extra])
            for (k2, v), extra in zip(
                members.items(),
                [
                    jr,
                    stack_of[at],
                    step[at],
                    np.zeros(len(jr), bool),
                    joined["coverage"][inside].astype(np.float32),
                    joined["cloud"][inside].astype(np.float32),
                    joined["nodata"][inside].astype(np.float32),
                    np.array([rank_of[int(c)] for c in plat_codes[jr]], np.int64),
                ],
            )
        }
    order = np.lexsort((members["step"], members["rank"], members["stack"]))
    m = {k2: v[order] for k2, v in members.items()}
    offsets = np.r_[0, np.cumsum(np.bincount(m["stack"], minlength=n_stacks))].astype(np.int32)
    rows = pa.array(m["row"])
    lt = table.take(rows)
    item_id = lt.column("item_id").combine_chunks().cast(pa.string())
    x, y = lt.column("chip_index_x").combine_chunks(), lt.column("chip_index_y").combine_chunks()
    chipid = pc.binary_join_element_wise(item_id, x.cast(pa.string()), y.cast(pa.string()), "-")
    crs = _member_crs(lt, m, opts)
    layouts = (
        lt.column("layouts").combine_chunks()
        if "layouts" in lt.column_names
        else pa.nulls(len(rows), pa.dictionary(pa.int32(), pa.binary()))
    )
    href = (
        lt.column("item_href").combine_chunks().cast(pa.string())
        if "item_href" in lt.column_names
        else pa.nulls(len(rows), pa.string())
    )
    values = {
        "chipid": chipid,
        "item_id": item_id,
        "item_href": href,
        "platform": lt.column("platform").combine_chunks().cast(pa.string()),
        "date": lt.column("date").combine_chunks(),
        "cloud": pa.array(m["cloud"], pa.float32()),
        "nodata": pa.array(m["nodata"], pa.float32()),
        "step": pa.array(m["step"], pa.int16()),
        "exact": pa.array(m["exact"]),
        "coverage": pa.array(m["coverage"], pa.float32()),
        "chip_index_x": x,
        "chip_index_y": y,
        "chip_size": lt.column("chip_size").combine_chunks(),
        "layouts": layouts.cast(pa.dictionary(pa.int32(), pa.binary())),
        "crs": crs,
    }
    off = pa.array(offsets)
    cols = {
        f"member_{name}": pa.ListArray.from_arrays(off, values[name].cast(t))
        for name, t in MEMBER_FIELDS
    }
    # the anchor: the first member of each stack
    first = m["row"][offsets[:-1]] if n_stacks else np.empty(0, np.int64)
    first_crs = crs.take(pa.array(offsets[:-1])) if n_stacks else pa.nulls(0, pa.string())
    steps = (
        np.array([0]) if not n_stacks else np.bincount(m["stack"][m["exact"]], minlength=n_stacks)
    )
    fl = table.take(pa.array(first))
    transform = _anchor_transforms(fl)
    b = bounds[first]
    wkb = _wkb(index, first, source).cast(pa.binary()) if n_stacks else pa.array([], pa.binary())
    plat = fl.column("platform").combine_chunks().cast(pa.string())
    fx, fy = fl.column("chip_index_x").combine_chunks(), fl.column("chip_index_y").combine_chunks()
    first_items = fl.column("item_id").combine_chunks().cast(pa.string())
    stackid = pc.binary_join_element_wise(
        plat, first_items, fx.cast(pa.string()), fy.cast(pa.string()), "-"
    )
    date_col = values["date"]
    exact_ends = np.r_[offsets[:-1] + steps - 1] if n_stacks else np.empty(0, np.int64)
    out = pa.table(
        {
            "stackid": stackid,
            "platform": plat,
            "chip_index_x": fx,
            "chip_index_y": fy,
            "chip_size": fl.column("chip_size").combine_chunks(),
            "steps": pa.array(steps[:n_stacks] if n_stacks else np.empty(0, np.int32), pa.int32()),
            "start_date": date_col.take(pa.array(offsets[:-1]))
            if n_stacks
            else pa.array([], pa.date32()),
            "end_date": date_col.take(pa.array(exact_ends))
            if n_stacks
            else pa.array([], pa.date32()),
            "crs": first_crs.cast(pa.string()),
            "transform": transform,
            **cols,
            "geometry": wkb,
            "bbox": pa.StructArray.from_arrays(
                [pa.array(b[:, i], pa.float64()) for i in range(4)], fields=list(BBOX_TYPE)
            ),
        }
    )
    out = with_geo_metadata(out, b)
    meta = dict(out.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(
        {
            "anchor": opts.anchor,
            "with": list(opts.with_),
            "share": opts.share,
            "window": opts.window,
            "min_steps": opts.min_steps,
            "max_steps": opts.max_steps,
            "max_cloud": opts.max_cloud,
            "max_nodata": opts.max_nodata,
            "every": opts.every,
        }
    ).encode()
    return out.replace_schema_metadata(meta)


def _anchor_transforms(fl: pa.Table) -> pa.Array:
    """The chip window's affine ``[a, b, c, d, e, f]`` per stack, from the anchor's layouts
    grid (null when the layouts do not record one)."""
    n = fl.num_rows
    if "layouts" not in fl.column_names or not n:
        return pa.nulls(n, pa.list_(pa.float64()))
    codes, blobs = _codes(fl.column("layouts"))
    g = _row_grids(codes, blobs)
    cs = fl.column("chip_size").to_numpy().astype(np.float64)
    x = fl.column("chip_index_x").to_numpy().astype(np.float64)
    y = fl.column("chip_index_y").to_numpy().astype(np.float64)
    a, c, e, f = g.T
    vals = np.stack([a, np.zeros(n), c + x * cs * a, np.zeros(n), e, f + y * cs * e], axis=1)
    known = np.isfinite(vals).all(axis=1)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(vals.ravel()), 6).cast(pa.list_(pa.float64()))
    return pc.if_else(pa.array(known), arr, pa.nulls(n, pa.list_(pa.float64())))


def _member_crs(lt: pa.Table, m: dict, opts: StackOptions) -> pa.Array:
    """Each member's CRS (dictionary-encoded): the index's ``crs`` column, else its layouts',
    else (with warped members and ``resolve_crs``) its item JSON's, read once per item. Works
    on distinct values only: per-member work is numpy indexing."""
    n = lt.num_rows
    names: list[str] = []
    where: dict[str, int] = {}

    def code(value: str | None) -> int:
        if value is None:
            return -1
        if value not in where:
            where[value] = len(names)
            names.append(value)
        return where[value]

    out = np.full(n, -1, np.int64)
    if "crs" in lt.column_names:
        codes, vals = _codes(lt.column("crs"))
        table_codes = np.array([code(v) for v in vals] + [-1], np.int64)
        out = table_codes[codes]
    if "layouts" in lt.column_names:
        codes, blobs = _codes(lt.column("layouts"))
        _, crss = _grids(blobs)
        blob_codes = np.array([code(v) for v in crss] + [-1], np.int64)
        out = np.where(out >= 0, out, blob_codes[codes])
    if opts.resolve_crs and not m["exact"].all() and "item_href" in lt.column_names:
        warped_stacks = np.unique(m["stack"][~m["exact"]])
        need = np.isin(m["stack"], warped_stacks) & (out < 0)
        if need.any():
            codes, hrefs = _codes(lt.column("item_href"))
            wanted = np.unique(codes[need])
            found = _item_crs({hrefs[c] for c in wanted if c >= 0 and hrefs[c]})
            href_codes = np.array([code(found.get(h)) for h in hrefs] + [-1], np.int64)
            out = np.where(out >= 0, out, href_codes[codes])
    indices = pa.array(out.astype(np.int32), mask=out < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(names, pa.string()))


def _item_crs(hrefs: set[str]) -> dict[str, str]:
    """``{item href: CRS as authority code or WKT}``, one item JSON read per item."""
    from concurrent.futures import ThreadPoolExecutor

    from stacchip_core.core.grid import item_crs
    from stacchip_core.core.indexer import load_item

    def one(href: str) -> tuple[str, str | None]:
        try:
            crs = item_crs(load_item(href))
        except StacchipError as exc:  # its stacks then fail when read, naming the member
            log.warning("no CRS for the members of item %s: %s", href, exc)
            return href, None
        auth = crs.to_authority()
        return href, f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()

    with ThreadPoolExecutor(8) as pool:
        return {k: v for k, v in pool.map(one, sorted(hrefs)) if v is not None}


def write_stacks(table: pa.Table, path: str | Path, row_group_size: int = 16_384) -> Path:
    """Write a stacks table as GeoParquet, atomically (a temporary file, then renamed), row
    groups in the table's order (places in index order: readers filtering by bbox skip whole
    row groups). Each row group's layouts dictionary holds only the items it uses (a Parquet
    dictionary is written whole per row group: 10M-row indexes have thousands of items).

    Args:
        table: A stacks table (``build_stacks``).
        path: A local file path.
        row_group_size: Stacks per row group.

    Returns:
        The path written.
    """
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, table.schema, compression="zstd") as writer:
            for start in range(0, max(table.num_rows, 1), row_group_size):
                writer.write_table(
                    _compact_dictionaries(table.slice(start, row_group_size)),
                    row_group_size=row_group_size,
                )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _compact_dictionaries(part: pa.Table) -> pa.Table:
    """``part`` with its list-of-dictionary columns holding only the values its rows use."""
    for i, f in enumerate(part.schema):
        if not (pa.types.is_list(f.type) and pa.types.is_dictionary(f.type.value_type)):
            continue
        col = part.column(i).combine_chunks()
        raw = (
            col.offsets.to_numpy()
        )  # a slice's offsets are not rebased: its values start at raw[0]
        values = col.values.slice(int(raw[0]), int(raw[-1] - raw[0]))
        offsets = pa.array((raw - raw[0]).astype(np.int32))
        idx = values.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = np.asarray(values.indices.is_valid())
        used, inverse = np.unique(idx[valid], return_inverse=True)
        full = np.zeros(len(idx), np.int64)
        full[valid] = inverse
        inverse = full
        indices = pa.array(inverse.astype(np.int32), mask=~valid)
        compact = pa.DictionaryArray.from_arrays(indices, values.dictionary.take(pa.array(used)))
        part = part.set_column(i, f, pa.ListArray.from_arrays(offsets, compact))
    return part


def read_stacks(path: str | Path) -> pa.Table:
    """A stacks table written by ``write_stacks``.

    Args:
        path: The stacks file.

    Returns:
        The table (members' layouts stay dictionary-encoded).

    Raises:
        IndexFormatError: Not a readable stacks table.
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(f"{path} is not a readable stacks table: {exc}") from exc
    if "member_chipid" not in table.column_names:
        raise IndexFormatError(f"{path} is not a stacks table (no member columns)")
    return table


def stack_options(table: pa.Table) -> dict:
    """The options a stacks table was built with (its ``stacchip:stacks`` metadata).

    Args:
        table: A stacks table.

    Returns:
        The options as a dict (empty when the table does not record them).
    """
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def stack_arrays_for_output(stack: StackPixels, suffix: str, metadata: dict | None):
    """What ``write_chip`` writes for a stack: for .npz the arrays ``{platform}`` (T, C, H, W),
    ``{platform}_valid``, ``{platform}_dates`` and ``{platform}_bands`` (no georeference); for
    .tif one float32 band per (member, band), NaN where not valid, described
    ``"{platform} {date} {band}"``, on the anchor window.

    Args:
        stack: The stack's pixels.
        suffix: The output's suffix, ``.npz`` or ``.tif``.
        metadata: Extra metadata to write; the stack's id is added.

    Returns:
        The arrays to write, the georeference (transform, CRS WKT, band names; None for
        .npz) and the metadata.

    Raises:
        OutputError: A GeoTIFF of a stack whose anchor CRS or transform is unknown.
    """
    from affine import Affine

    from stacchip_core.errors import OutputError

    meta = {"stackid": stack.stackid, **(metadata or {})}
    if suffix == ".npz":
        arrays: dict[str, np.ndarray] = {"stackid": np.asarray(stack.stackid)}
        for p, px in stack.pixels.items():
            arrays[p] = px
            arrays[f"{p}_valid"] = stack.valid[p]
            arrays[f"{p}_dates"] = np.asarray([d.isoformat() for d in stack.dates[p]])
            arrays[f"{p}_bands"] = np.asarray(stack.bands[p])
        return arrays, None, meta
    import pyproj

    if stack.crs and stack.transform:
        transform, crs = Affine(*stack.transform[:6]), pyproj.CRS.from_user_input(stack.crs)
    elif stack.rows.get(stack.anchor) and stack.rows[stack.anchor][0].get("item_href"):
        # an exact series built without CRS: its first member's item says where it lies
        from stacchip_core.core.chipper import item_for_row
        from stacchip_core.core.grid import ChipGrid

        row = stack.rows[stack.anchor][0]
        grid = ChipGrid.from_item(item_for_row(row), int(row["chip_size"]))
        col, top, _, _ = grid.window(int(row["chip_index_x"]), int(row["chip_index_y"]))
        transform, crs = grid.transform @ Affine.translation(col, top), grid.crs
    else:
        raise OutputError(
            f"stack {stack.stackid}: its CRS or transform is unknown (build the stacks from an "
            "index whose layouts record them), so it cannot be written as a GeoTIFF"
        )
    bands, names = [], []
    for p, px in stack.pixels.items():
        for t, d in enumerate(stack.dates[p]):
            for c, name in enumerate(stack.bands[p]):
                bands.append(np.where(stack.valid[p][t], px[t, c], np.nan).astype(np.float32))
                names.append(f"{p} {d.isoformat()} {name}")
    georef = (transform, crs.to_wkt(), names)
    return {"stack": np.stack(bands)}, georef, meta
