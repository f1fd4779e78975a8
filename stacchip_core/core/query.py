"""Query a chip index without reading all of it: row groups are pruned by their statistics
(the bbox covering, datetime, platform, cloud and nodata), the rest are fetched with
coalesced range reads through the one object layer (local paths, ``s3://``, ``https://``),
and the rows are then filtered exactly: chips whose footprint intersects the area,
antimeridian-aware (a box with west > east crosses it), so no chip is missed.

Pruning is only as good as the file's order: a merged index (pipeline.merge) is sorted along
a Hilbert curve, so a 1 degree box reads a few row groups of a worldwide index.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from stacchip_core.core import pages as pagelib
from stacchip_core.errors import ConfigError, IndexFormatError, NotFoundError, ObjectError
from stacchip_core.io import objects, portable
from stacchip_core.io.urls import redact
from stacchip_core.types import Report

log = logging.getLogger(__name__)

FOOTER_BYTES = 64 * 1024  # the first read from the end of the file: the footer of most indexes
_COVERING = ("xmin", "ymin", "xmax", "ymax")
_WORLD = (-180.0, 180.0)
# columns a merged index dictionary-encodes (pipeline.merge): read as dictionaries
_DICTIONARY = ("platform", "item_id", "item_href", "layouts")
# a kept row group's chunk of a column at least this large (decoded) has only the pages that
# hold the kept rows fetched (by its offset index) and decoded (core.pages): geometry (9.6 MB
# a group) and chipid (2 MB) of a merged index; smaller chunks are one or a few pages,
# fetched and decoded whole in one call
PAGED_BYTES = 1 << 20
# the manifest of a partitioned index (pipeline.merge writes it after its files): one row per
# file with its name, rows, row groups, bbox, datetime span and platforms
MANIFEST = "_partitions.parquet"
_MANIFEST_COLUMNS = ("file", "xmin", "ymin", "xmax", "ymax", "datetime_min", "datetime_max",
                     "platforms")


@dataclass(frozen=True)
class QueryReport(Report):
    """What a query read: ``row_groups_read`` of ``row_groups_total`` row groups over
    ``files`` files, ``bytes_read`` bytes in ``requests`` requests (the footer, asked for as
    the file's last bytes, then the column chunks or pages, adjacent ones coalesced, each
    pass's requests sent at once), ``rows``
    rows returned, in ``seconds``. Over a partitioned index, ``files_read`` of
    ``files_total`` files were opened (the others pruned by the manifest, which is counted
    in the bytes and requests); ``files`` equals ``files_read``. Of the large column chunks
    of the row groups where rows matched, ``pages_decoded`` of ``pages_total`` data pages
    were decoded (those holding matching rows, see core.pages), and only those fetched when
    the file has a page index."""

    files: int
    row_groups_read: int
    row_groups_total: int
    bytes_read: int
    requests: int
    rows: int
    seconds: float
    files_total: int = 1
    files_read: int = 1
    pages_decoded: int = 0
    pages_total: int = 0


@dataclass(frozen=True)
class QueryResult:
    """The rows that match (an index table) and what reading them cost."""

    table: pa.Table
    report: QueryReport


@dataclass(frozen=True)
class Filters:
    """A query's filters, normalized: the area as boxes (none crossing 180 degrees) and a
    geometry, a datetime interval (UTC, either end open), platforms, and fraction caps."""

    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    geometry: Any = None  # a shapely geometry in lon/lat, or None
    start: datetime | None = None
    end: datetime | None = None
    platforms: tuple[str, ...] | None = None
    max_cloud: float | None = None
    max_nodata: float | None = None
    area_is_boxes: bool = False  # the area is exactly the union of ``boxes`` (a bbox query)


def query(index: str | Path, *, bbox: Sequence[float] | None = None, intersects: Any = None,
          datetime_range: str | tuple | None = None, platforms: Iterable[str] | str | None = None,
          max_cloud: float | None = None, max_nodata: float | None = None,
          columns: Sequence[str] | None = None, footprints: bool = True) -> QueryResult:
    """The chips of ``index`` that match every filter given.

    Args:
        index: an index file, or a folder / ``s3://`` prefix of index files (a partitioned
            index): a local path, ``file://``, ``s3://`` or ``https://`` URL.
        bbox: (west, south, east, north) in degrees; west > east crosses the antimeridian.
        intersects: a shapely geometry or GeoJSON mapping in lon/lat (split at the
            antimeridian as RFC 7946 asks).
        datetime_range: ``"a/b"`` (ISO 8601, ``..`` or empty for an open end; a date-only
            end includes its whole day), one instant or date, or a (start, end) pair.
        platforms: keep these platforms.
        max_cloud: keep chips with a cloud fraction at most this.
        max_nodata: keep chips with a nodata fraction at most this.
        columns: return only these columns (default: all).
        footprints: match the area against each chip's footprint (True), or against its
            bbox covering only (False: a superset, for callers that filter further).

    Returns:
        The matching rows in file order and a QueryReport.

    Raises:
        ConfigError: a filter is malformed.
        NotFoundError: no index file at ``index``.
        IndexFormatError: a file is not a readable index.
    """
    filters = make_filters(bbox, intersects, datetime_range, platforms, max_cloud, max_nodata)
    if not footprints:
        filters = replace(filters, geometry=None)
    started = time.perf_counter()
    tables, read, total, nbytes, requests = [], 0, 0, 0, 0
    decoded, pages_total = 0, 0
    files, manifest_url = _listing(index)
    selected = files
    if manifest_url is not None:  # a partitioned index: open only the files that may match
        source = _RangeFile(manifest_url)
        try:
            manifest = _read_manifest(source, manifest_url)
        finally:
            source.close()
        nbytes, requests = source.bytes_read, source.requests
        files = [_sibling(manifest_url, name) for name in manifest["file"].to_pylist()]
        if not files:
            raise NotFoundError(f"{redact(manifest_url)} names no index file")
        keep = files_may_match(manifest, filters)
        selected = [url for url, k in zip(files, keep) if k]
        if "row_groups" in manifest.column_names:  # the pruned files' row groups, unread
            total = int(pc.sum(manifest["row_groups"].filter(pa.array(~keep))).as_py() or 0)
    for url in selected or files[:1]:
        source = _RangeFile(url)
        try:
            if selected:
                table, groups, count, paged = _query_file(source, url, filters, columns)
            else:  # every file pruned: only the first one's footer, for the columns
                table, groups, count, paged = _empty_result(source, url, columns), 0, 0, (0, 0)
        finally:
            source.close()
        tables.append(table)
        read, total = read + groups, total + count
        decoded, pages_total = decoded + paged[0], pages_total + paged[1]
        nbytes, requests = nbytes + source.bytes_read, requests + source.requests
    table = (
        tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    )
    report = QueryReport(len(selected), read, total, nbytes, requests, len(table),
                         round(time.perf_counter() - started, 4), len(files), len(selected),
                         decoded, pages_total)
    log.info("query %s: %d rows; read %d of %d files, %d of %d row groups, %d bytes in %d "
             "requests, decoded %d of %d pages of large chunks, %.3f s", index, report.rows,
             len(selected), len(files), read, total, nbytes, requests, decoded, pages_total,
             report.seconds)
    return QueryResult(table, report)


def index_files(index: str | Path) -> list[str]:
    """The index files a query reads: the file itself, or the ``.parquet`` files of a local
    folder or an ``s3://`` prefix (sorted).

    Args:
        index: An index file, or a folder or ``s3://`` prefix of index files.

    Returns:
        The index files' paths or URLs.

    Raises:
        NotFoundError: If the folder does not exist or holds no ``.parquet`` file.
    """
    files, manifest_url = _listing(index)
    if manifest_url is None:
        return files
    source = _RangeFile(manifest_url)
    try:
        manifest = _read_manifest(source, manifest_url)
    finally:
        source.close()
    return [_sibling(manifest_url, name) for name in manifest["file"].to_pylist()]


def _listing(index: str | Path) -> tuple[list[str], str | None]:
    """The index files under ``index`` and the URL of its manifest (a partitioned index) or
    None: with a manifest, the files are those it names (see query)."""
    text = str(index)
    if text.endswith(".parquet") or objects.is_remote(text) and not text.startswith("s3://"):
        return [text], None
    from stacchip_core.io.store import LocalStore, open_store

    if not text.startswith("s3://") and Path(text.removeprefix("file://")).is_file():
        return [text], None
    store = open_store(text)
    if isinstance(store, LocalStore):
        if not store.root.exists():
            raise NotFoundError(f"no index at {index}")
        if store.path(MANIFEST).is_file():  # no listing needed
            return [], store.url(MANIFEST)
    keys = list(store.list("", ".parquet"))
    if MANIFEST in keys:
        return [], store.url(MANIFEST)
    if not keys:
        if text.startswith("s3://"):  # an object without the suffix
            return [text], None
        raise NotFoundError(f"no .parquet index files under {index}")
    return [store.url(k) for k in keys], None


def _sibling(manifest_url: str, name: str) -> str:
    """The URL of file ``name`` of the partitioned index whose manifest is at
    ``manifest_url`` (names are plain file names: nothing outside the folder is reached)."""
    if "/" in name or name in ("", ".", ".."):
        raise IndexFormatError(f"{redact(manifest_url)} names a file outside its folder: {name!r}")
    return f"{manifest_url.rpartition('/')[0]}/{name}"


def _read_manifest(source: _RangeFile, url: str) -> pa.Table:
    try:
        table = pq.ParquetFile(source).read()
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(f"{redact(url)} is not a readable manifest: {exc}") from None
    missing = [c for c in _MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise IndexFormatError(f"{redact(url)} is not a partition manifest: no column "
                               f"{', '.join(missing)}")
    return table


def files_may_match(manifest: pa.Table, filters: Filters) -> np.ndarray:
    """Which files of a partitioned index may hold a matching row, by their manifest rows
    (the bbox of the file's coverings, west > east across the antimeridian as for a row;
    the datetime span; the platforms). A null says nothing: the file is kept.

    Args:
        manifest: The manifest (one row per file).
        filters: The query's normalized filters.

    Returns:
        One bool per file: False only if no row of the file can match.
    """
    keep = np.ones(len(manifest), bool)
    if filters.boxes is not None:
        bounds = [
            manifest[c].cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            for c in ("xmin", "ymin", "xmax", "ymax")
        ]
        unknown = np.isnan(np.stack(bounds)).any(axis=0)
        keep &= _boxes_meet(bounds, filters.boxes) | unknown
    if filters.start or filters.end:
        lo, hi = manifest["datetime_min"], manifest["datetime_max"]
        if filters.start:  # a null compares to null: kept
            before = pc.less(hi, pa.scalar(filters.start, hi.type))
            keep &= ~pc.fill_null(before, False).to_numpy(zero_copy_only=False)
        if filters.end:
            after = pc.greater(lo, pa.scalar(filters.end, lo.type))
            keep &= ~pc.fill_null(after, False).to_numpy(zero_copy_only=False)
    if filters.platforms:
        platforms = manifest["platforms"].combine_chunks()
        parents = pc.list_parent_indices(platforms).to_numpy(zero_copy_only=False)
        hit = pc.is_in(pc.list_flatten(platforms), pa.array(list(filters.platforms)))
        hits = np.bincount(parents[hit.to_numpy(zero_copy_only=False)], minlength=len(manifest))
        keep &= (hits > 0) | platforms.is_null().to_numpy(zero_copy_only=False)
    return keep


# --- filters ---------------------------------------------------------------------------------

def make_filters(bbox=None, intersects=None, datetime_range=None, platforms=None, max_cloud=None,
                 max_nodata=None) -> Filters:
    """Check and normalize a query's filters (see query for their meaning).

    Args:
        bbox: (west, south, east, north) in degrees; west > east crosses the antimeridian.
        intersects: A shapely geometry or GeoJSON mapping in lon/lat.
        datetime_range: ``"a/b"``, one instant or date, or a (start, end) pair.
        platforms: A platform name or names to keep.
        max_cloud: The largest cloud fraction to keep (0-1).
        max_nodata: The largest nodata fraction to keep (0-1).

    Returns:
        The normalized filters.

    Raises:
        ConfigError: a box out of range, an unreadable geometry or datetime.
    """
    geometry, boxes = None, None
    if bbox is not None and intersects is not None:
        raise ConfigError("give a bbox or a geometry to intersect, not both")
    if bbox is not None:
        geometry, boxes = bbox_geometry(bbox)
    elif intersects is not None:
        geometry = _as_geometry(intersects)
        boxes = _parts_bounds(geometry)
    start, end = parse_datetime_range(datetime_range)
    if isinstance(platforms, str):
        platforms = [platforms]
    for name, value in (("max_cloud", max_cloud), ("max_nodata", max_nodata)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{name} must be a fraction 0-1, got {value}")
    return Filters(
        boxes, geometry, start, end, tuple(platforms) if platforms else None, max_cloud, max_nodata,
        area_is_boxes=bbox is not None,
    )


def bbox_geometry(
    bbox: Sequence[float],
) -> tuple[Any, tuple[tuple[float, float, float, float], ...]]:
    """The geometry and boxes of a (west, south, east, north) box; west > east crosses the
    antimeridian and becomes two boxes.

    Args:
        bbox: (west, south, east, north) in degrees.

    Returns:
        The box's geometry and its one or two boxes.

    Raises:
        ConfigError: not four numbers in range, or south > north.
    """
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ConfigError(
            f"bbox must be four numbers west,south,east,north, got {bbox!r}"
        ) from None
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise ConfigError(
            f"bbox {bbox!r} is out of range (lon -180..180, lat -90..90, south <= north)"
        )
    boxes: tuple[tuple[float, float, float, float], ...]
    if west <= east:
        boxes = ((west, south, east, north),)
    else:
        boxes = ((west, south, 180.0, north), (-180.0, south, east, north))
    geometry = (
        shapely.union_all([shapely.box(*b) for b in boxes])
        if len(boxes) > 1
        else shapely.box(*boxes[0])
    )
    return geometry, boxes


def _as_geometry(value: Any):
    if isinstance(value, shapely.Geometry):
        geometry = value
    else:
        try:
            geometry = shapely.geometry.shape(
                value.get("geometry", value) if isinstance(value, dict) else value
            )
        except Exception as exc:  # noqa: BLE001 - shapely raises many kinds on bad GeoJSON
            raise ConfigError(f"not a GeoJSON geometry: {exc}") from None
    if geometry.is_empty:
        raise ConfigError("the geometry to intersect is empty")
    return geometry


def _parts_bounds(geometry) -> tuple[tuple[float, float, float, float], ...]:
    parts = shapely.get_parts(geometry)
    if len(parts) > 64:  # many parts: their overall box prunes almost as well
        parts = [geometry]
    return tuple(tuple(float(v) for v in shapely.bounds(p)) for p in parts)  # type: ignore[misc]


def parse_datetime_range(value) -> tuple[datetime | None, datetime | None]:
    """``"a/b"``, one value, or a pair -> (start, end) in UTC, None for an open end.

    Args:
        value: ``"a/b"`` (ISO 8601, ``..`` or empty for an open end), one instant or date,
            a (start, end) pair, or None.

    Returns:
        The start and end, timezone-aware in UTC; a date-only end includes its whole day.

    Raises:
        ConfigError: a value is not ISO 8601, or the start is after the end.
    """
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        parts = value.split("/") if "/" in value else [value, value]
        if len(parts) != 2:
            raise ConfigError(f"datetime {value!r} is not an instant or an interval a/b")
    else:
        parts = list(value)
    start, end = _instant(parts[0], False), _instant(parts[1], True)
    if start and end and start > end:
        raise ConfigError(f"datetime interval {value!r} ends before it starts")
    return start, end


def _instant(value, end: bool) -> datetime | None:
    if value in (None, "", ".."):
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime(value.year, value.month, value.day) + (
            timedelta(days=1, microseconds=-1) if end else timedelta()
        )
    else:
        text = str(value).strip()
        try:
            if len(text) == 10:  # a date: the whole day
                return _instant(date.fromisoformat(text), end)
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"{text!r} is not an ISO 8601 date or datetime") from None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


# --- row-group pruning ----------------------------------------------------------------------

def _column_stats(meta: pq.FileMetaData, group: int) -> dict[str, tuple[Any, Any]]:
    """(min, max) of each column of a row group that has statistics, by path."""
    rg = meta.row_group(group)
    out = {}
    for j in range(rg.num_columns):
        col = rg.column(j)
        stats = col.statistics
        if stats is not None and stats.has_min_max:
            out[col.path_in_schema] = (stats.min, stats.max)
    return out


def _x_intervals(xmin: tuple, xmax: tuple) -> list[tuple[float, float]]:
    """Longitude intervals a row group's rows may cover, from the min/max of its covering
    columns. Rows crossing the antimeridian (west > east) can hide in any group whose xmin
    and xmax statistics are more than 180 degrees apart (a chip is narrower than that): such
    a group may cover any longitude."""
    (xmin_lo, xmin_hi), (xmax_lo, xmax_hi) = xmin, xmax
    if xmin_hi - xmax_lo > 180:
        return [_WORLD]
    return [(xmin_lo, xmax_hi)]


def group_may_match(
    stats: dict[str, tuple[Any, Any]], filters: Filters, covering: dict[str, str]
) -> bool:
    """Whether a row group's statistics allow a matching row (missing statistics: yes).

    Args:
        stats: (min, max) per column path of the row group.
        filters: The query's normalized filters.
        covering: The column path of each covering bound (xmin, ymin, xmax, ymax).

    Returns:
        False only if no row of the group can match.
    """
    if filters.boxes is not None:
        cols = [stats[covering[k]] for k in _COVERING if covering[k] in stats]
        if len(cols) == 4:
            (xmin, ymin, xmax, ymax) = cols
            south, north = ymin[0], ymax[1]
            intervals = _x_intervals(xmin, xmax)
            if not any(
                b[1] <= north
                and b[3] >= south
                and any(lo <= b[2] and hi >= b[0] for lo, hi in intervals)
                for b in filters.boxes
            ):
                return False
    when = stats.get("datetime")
    if when is not None:
        lo, hi = (_utc(v) for v in when)
        if (filters.start and hi < filters.start) or (filters.end and lo > filters.end):
            return False
    elif "date" in stats and (filters.start or filters.end):
        lo, hi = stats["date"]
        if (filters.start and hi < filters.start.date()) or (
            filters.end and lo > filters.end.date()
        ):
            return False
    if filters.platforms and "platform" in stats:
        lo, hi = stats["platform"]
        if not any(lo <= p <= hi for p in filters.platforms):
            return False
    for name, cap in (
        ("cloud_cover_percentage", filters.max_cloud),
        ("nodata_percentage", filters.max_nodata),
    ):
        if cap is not None and name in stats and stats[name][0] > cap:
            return False
    return True


def _utc(value):
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return value


def _covering(meta: pq.FileMetaData) -> dict[str, str]:
    """Column paths of the bbox covering (GeoParquet 1.1 ``covering``; default ``bbox.*``)."""
    import json

    paths = {k: f"bbox.{k}" for k in _COVERING}
    try:
        geo = json.loads((meta.metadata or {}).get(b"geo", b"{}"))
        bbox = geo["columns"][geo.get("primary_column", "geometry")]["covering"]["bbox"]
        paths = {k: ".".join(bbox[k]) for k in _COVERING}
    except (KeyError, TypeError, ValueError):
        pass
    return paths


# --- reading ---------------------------------------------------------------------------------

def _query_file(source: _RangeFile, url: str, filters: Filters,
                columns: Sequence[str] | None) -> tuple[pa.Table, int, int, tuple[int, int]]:
    info = _file_info(source, url)
    meta = info.metadata
    groups = [i for i, stats in enumerate(info.stats)
              if group_may_match(stats, filters, info.covering)]
    read = len(groups)
    names = info.names
    wanted = list(columns) if columns else list(names)
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ConfigError(f"{redact(url)} has no column {', '.join(missing)}")
    # string columns with few values per row group stay dictionaries until the rows are
    # filtered: decoding item_href, item_id and platform for every row of two 90k-row groups
    # cost 20 ms of a 1 degree box query (bench_index, 10M chips)
    pf = pq.ParquetFile(source, metadata=meta, read_dictionary=[
        c for c in _DICTIONARY if c in names
    ])
    # two passes: the small filter columns of the kept row groups first; then the other
    # columns of only the row groups where some row passed (a 1 degree box: 1-3 of them)
    cheap = [c for c in _filter_columns(filters) if c in names and c != "geometry"]
    needed = list(dict.fromkeys(wanted + [c for c in _filter_columns(filters) if c in names]))
    first, masks, paged, located = None, [], [], {}
    if cheap and groups:
        # the large chunks of the second pass are read by pages: their offset indexes come
        # with the first pass's chunks (a few hundred bytes per chunk), so the pages that
        # hold the kept rows are known without another round of requests
        paged = [c for c in needed if c not in cheap and _paged(info, groups, c)]
        footer = source.footer_thrift() if paged else b""
        located = {(g, c): _offset_index_at(footer, info, g, c) for c in paged for g in groups}
        source.prefetch(_chunk_ranges(meta, groups, cheap) + [
            (at[0], at[0] + at[1]) for at in located.values() if at is not None])
        first = _read(pf, url, groups, cheap)
        mask = _prefilter(first, filters)
        first = first.filter(pa.array(mask))  # rows of groups without a match are all False
        masks = np.split(mask, np.cumsum(info.rows[groups])[:-1])
        hits = [i for i, m in enumerate(masks) if m.any()]
        groups, masks = [groups[i] for i in hits], [masks[i] for i in hits]
        paged = paged if groups else []  # no row kept: every column is an empty read
    # the columns the first pass did not already decode, of the rows it kept; of the large
    # chunks, only the pages that hold those rows are fetched and decoded
    rest = [c for c in needed if first is None or c not in cheap]
    whole = [c for c in rest if c not in paged]
    chunks = [_PagedChunk(g, c, np.flatnonzero(m), located.get((g, c)))
              for c in paged for g, m in zip(groups, masks)]
    source.prefetch(_chunk_ranges(meta, groups, whole) + _page_ranges(source, info, chunks))
    second = _read(pf, url, groups, whole) if whole or first is None else None
    if second is not None and len(second) and masks:
        second = second.filter(pa.array(np.concatenate(masks)))
    counts = [0, 0]
    by_pages = {c: _rows_by_pages(source, info, pf, [k for k in chunks if k.column == c], counts)
                for c in paged}
    parts = [t for t in (first, second) if t is not None]
    table = pa.Table.from_arrays(
        [by_pages[c] if c in by_pages else next(t.column(c) for t in parts if c in t.column_names)
         for c in needed],
        names=needed,
    )
    if len(table) and filters.geometry is not None:
        table = table.filter(pa.array(_footprints_meet(table, filters)))
    table = table.select(wanted)
    for i, field in enumerate(table.schema):  # the index's plain types
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table, read, meta.num_row_groups, (counts[0], counts[1])


def _paged(info: _FileInfo, groups: list[int], column: str) -> bool:
    """Whether ``column``'s chunks are decoded by pages: a flat top-level column with a
    chunk of at least PAGED_BYTES among ``groups``."""
    j = info.positions.get(column)
    if j is None or column not in info.flat:
        return False
    rgs = (info.metadata.row_group(g) for g in groups)
    return max((rg.column(j).total_uncompressed_size for rg in rgs), default=0) >= PAGED_BYTES


@dataclass(frozen=True)
class _PagePlan:
    """The data pages of a chunk, from its offset index, and those holding the kept rows."""

    offsets: np.ndarray
    sizes: np.ndarray
    first_rows: np.ndarray  # one per page, then the chunk's rows
    chosen: np.ndarray


@dataclass
class _PagedChunk:
    """One row group's chunk of a column decoded by pages, as its plan is made: the kept
    rows and where its offset index is, then which pages to fetch."""

    group: int
    column: str
    rows: np.ndarray  # kept rows, within the group
    index_at: tuple[int, int] | None = None  # the offset index's range
    plan: _PagePlan | None = None  # None: the chunk is fetched whole


def _chunk_start(chunk: Any) -> int:
    """Where a column chunk's bytes begin: its dictionary page, or its first data page."""
    offsets = [o for o in (chunk.dictionary_page_offset if chunk.has_dictionary_page else None,
                           chunk.data_page_offset) if o is not None and o > 0]
    return min(offsets)


def _offset_index_at(footer: bytes, info: _FileInfo, group: int, column: str
                     ) -> tuple[int, int] | None:
    """Where the offset index of ``column``'s chunk in ``group`` lies, found in the footer's
    Thrift bytes (core.pages.offset_index_at), or None when it has none."""
    chunk = info.metadata.row_group(group).column(info.positions[column])
    if not chunk.has_offset_index or not footer:
        return None
    # the row groups fill most of the footer in order, about the same size each
    n = info.metadata.num_row_groups
    span = 2 * len(footer) // n + 4096
    middle = len(footer) * (2 * group + 1) // (2 * n)
    return pagelib.offset_index_at(footer, chunk.data_page_offset,
                                   (middle - span, middle + span))


def _page_ranges(source: _RangeFile, info: _FileInfo, chunks: list[_PagedChunk]
                 ) -> list[tuple[int, int]]:
    """The ranges to fetch of paged chunks: of each chunk with an offset index (fetched
    already), its dictionary page and the data pages holding its kept rows; the whole chunk
    when those are more than half of its pages, or it has no offset index, or its offset
    index does not describe it."""
    ranges = []
    for k in chunks:
        chunk = info.metadata.row_group(k.group).column(info.positions[k.column])
        start = _chunk_start(chunk)
        if k.index_at is None:
            ranges.append((start, start + chunk.total_compressed_size))
            continue
        try:
            source.seek(k.index_at[0])
            offsets, sizes, first = pagelib.offset_index(source.read(k.index_at[1]))
        except (IndexError, KeyError, ValueError, TypeError, struct.error):
            offsets = None
        # the pages must tile the chunk exactly, after its dictionary page
        if (offsets is None or offsets[0] != chunk.data_page_offset
                or offsets[-1] + sizes[-1] != start + chunk.total_compressed_size):
            log.debug("offset index of %s in row group %d does not describe its chunk",
                      k.column, k.group)
            ranges.append((start, start + chunk.total_compressed_size))
            continue
        first_rows = np.append(first, info.rows[k.group])
        chosen = pagelib.pages_holding(first_rows, k.rows)
        if len(chosen) > len(offsets) // 2:  # decoded whole: one range, one call
            ranges.append((start, start + chunk.total_compressed_size))
            continue
        k.plan = _PagePlan(offsets, sizes, first_rows, chosen)
        if start < chunk.data_page_offset:
            ranges.append((start, chunk.data_page_offset))
        ranges.extend((int(offsets[p]), int(offsets[p] + sizes[p])) for p in chosen)
    return ranges


def _fetched_pages(source: _RangeFile, info: _FileInfo, k: _PagedChunk
                   ) -> tuple[pagelib.ChunkPages | None, np.ndarray | None]:
    """A chunk's pages and the ones holding its kept rows: from the pages fetched by their
    offset index, or else from the whole chunk's page headers (None, None when those cannot
    be read: then it is decoded whole)."""
    chunk = info.metadata.row_group(k.group).column(info.positions[k.column])
    start = _chunk_start(chunk)
    plan = k.plan
    if plan is not None:
        source.seek(start)
        dictionary = (source.read(chunk.data_page_offset - start)
                      if start < chunk.data_page_offset else None)
        data = [b""] * len(plan.offsets)  # b"": a page not fetched
        for p in plan.chosen:
            source.seek(int(plan.offsets[p]))
            data[p] = source.read(int(plan.sizes[p]))
        return pagelib.ChunkPages(dictionary, tuple(data), plan.first_rows), plan.chosen
    source.seek(start)
    try:
        found = pagelib.chunk_pages(source.read(chunk.total_compressed_size))
    except (IndexError, KeyError, ValueError, struct.error):  # pyarrow says what is wrong
        return None, None
    return found, found.pages_of(k.rows) if found is not None else None


def _rows_by_pages(source: _RangeFile, info: _FileInfo, pf: pq.ParquetFile,
                   chunks: list[_PagedChunk], counts: list[int]) -> pa.ChunkedArray:
    """The kept rows of one column's ``chunks``, decoding only the data pages that hold them
    (a whole chunk when most of its pages do, or its pages cannot be told)."""
    meta = info.metadata
    column = chunks[0].column
    target = pf.schema_arrow.field(column).type
    dictionary = column in _DICTIONARY
    if dictionary and not pa.types.is_dictionary(target):
        target = pa.dictionary(pa.int32(), target)
    arrays = []
    for k in chunks:
        chunk = meta.row_group(k.group).column(info.positions[column])
        found, chosen = _fetched_pages(source, info, k)
        rows, got = k.rows, None
        if found is not None and chosen is not None and len(chosen) <= len(found.pages) // 2:
            try:
                blob, _ = pagelib.pages_file(info.flat, column, chunk, meta.created_by, found,
                                             chosen)
                values = pagelib.read_pages(blob, column, dictionary)
            except (pa.ArrowException, KeyError, ValueError):  # decoded whole below instead
                log.debug("pages of %s in row group %d not decodable alone", column, k.group)
            else:
                sizes = found.first_rows[chosen + 1] - found.first_rows[chosen]
                base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
                page = np.searchsorted(found.first_rows, rows, side="right") - 1
                local = base[np.searchsorted(chosen, page)] + rows - found.first_rows[page]
                got = values.take(pa.array(local))
                counts[0] += len(chosen)
                counts[1] += len(found.pages)
        if got is None:  # reads what it needs beyond the fetched pages (logged at debug)
            got = _read(pf, source.url, [k.group], [column]).column(0).take(pa.array(rows))
            if found is not None:
                counts[0] += len(found.pages)
                counts[1] += len(found.pages)
        arrays.extend(got.cast(target).chunks if got.type != target else got.chunks)
    return pa.chunked_array(arrays, type=target)


def _empty_result(source: _RangeFile, url: str, columns: Sequence[str] | None) -> pa.Table:
    """No rows, with the columns a query of this file returns (from its footer)."""
    schema = _file_info(source, url).metadata.schema.to_arrow_schema()
    wanted = list(columns) if columns else schema.names
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise ConfigError(f"{redact(url)} has no column {', '.join(missing)}")
    return schema.empty_table().select(wanted)


@dataclass(frozen=True)
class _FileInfo:
    """What pruning needs of one index file, parsed once: its metadata, column names, the
    covering's column paths, each row group's statistics and row count."""

    metadata: pq.FileMetaData
    names: tuple[str, ...]
    covering: dict[str, str]
    stats: tuple[dict[str, tuple[Any, Any]], ...]
    rows: np.ndarray
    positions: dict[str, int]  # a top-level leaf column -> its position in a row group
    flat: dict[str, Any]  # the schema elements of flat top-level columns (core.pages)


_INFO_FILES = 32  # files whose parsed metadata is kept (a few hundred kB each)
_infos: OrderedDict[tuple, _FileInfo] = OrderedDict()
_infos_lock = threading.Lock()


def _file_info(source: _RangeFile, url: str) -> _FileInfo:
    """The file's parsed metadata, from a cache keyed by the URL, the size and a digest of
    the footer's bytes (always read: a rewritten file is never answered from the cache).
    Parsing the statistics of 108 row groups took 8 ms of every 1 degree box query on the
    10M-chip bench_index file, and opening its footer 3 ms more."""
    key = (url, source.size, source.footer_digest())
    with _infos_lock:
        info = _infos.get(key)
        if info is not None:
            _infos.move_to_end(key)
            return info
    try:
        meta = pq.ParquetFile(source).metadata
        names = tuple(meta.schema.to_arrow_schema().names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(f"{redact(url)} is not a readable index: {exc}") from None
    try:
        flat = pagelib.flat_columns(source.footer_thrift())
    except (IndexError, KeyError, ValueError, struct.error):  # then chunks are decoded whole
        flat = {}
    first = meta.row_group(0) if meta.num_row_groups else None
    info = _FileInfo(
        meta,
        names,
        _covering(meta),
        tuple(_column_stats(meta, i) for i in range(meta.num_row_groups)),
        np.array([meta.row_group(i).num_rows for i in range(meta.num_row_groups)], np.int64),
        {first.column(j).path_in_schema: j for j in range(first.num_columns)} if first else {},
        flat,
    )
    with _infos_lock:
        _infos[key] = info
        while len(_infos) > _INFO_FILES:
            _infos.popitem(last=False)
    return info


def _read(pf: pq.ParquetFile, url: str, groups: list[int], columns: list[str]) -> pa.Table:
    try:
        if groups:
            return pf.read_row_groups(groups, columns=columns)
        return pf.schema_arrow.empty_table().select(columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(f"{redact(url)} is not a readable index: {exc}") from None


def _filter_columns(filters: Filters) -> list[str]:
    cols = []
    if filters.boxes is not None:
        cols += ["bbox", "geometry"] if filters.geometry is not None else ["bbox"]
    if filters.start or filters.end:
        cols += ["datetime", "date"]
    if filters.platforms:
        cols.append("platform")
    if filters.max_cloud is not None:
        cols.append("cloud_cover_percentage")
    if filters.max_nodata is not None:
        cols.append("nodata_percentage")
    return cols


def _chunk_ranges(
    meta: pq.FileMetaData, groups: list[int], columns: list[str]
) -> list[tuple[int, int]]:
    """Byte ranges of the column chunks of ``columns`` in row groups ``groups``."""
    ranges = []
    for i in groups:
        rg = meta.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema.split(".")[0] not in columns:
                continue
            start = _chunk_start(col)
            ranges.append((start, start + col.total_compressed_size))
    return ranges


def _prefilter(table: pa.Table, filters: Filters) -> np.ndarray:
    """The rows whose attributes match and whose covering meets the area (a superset of the
    answer when footprints are tested after)."""
    mask = np.ones(len(table), bool)
    if filters.platforms:
        mask &= pc.is_in(table["platform"], pa.array(list(filters.platforms))).to_numpy(
            zero_copy_only=False
        )
    for name, cap in (
        ("cloud_cover_percentage", filters.max_cloud),
        ("nodata_percentage", filters.max_nodata),
    ):
        if cap is not None:
            mask &= pc.fill_null(pc.less_equal(table[name], cap), False).to_numpy(
                zero_copy_only=False
            )
    if filters.start or filters.end:
        mask &= _time_mask(table, filters)
    if filters.boxes is not None:
        bbox = table["bbox"].combine_chunks()
        mask &= _boxes_meet(
            [bbox.field(k).to_numpy(zero_copy_only=False) for k in _COVERING], filters.boxes
        )
    return mask


def _footprints_meet(table: pa.Table, filters: Filters) -> np.ndarray:
    """Whether each row's footprint intersects the area (exact, planar in lon/lat). When the
    area is a box, a row whose covering lies inside it meets it without a test (a footprint
    lies in its covering); only rows across the box's edge are parsed and tested."""
    meets = np.zeros(len(table), bool)
    if filters.area_is_boxes and filters.boxes and "bbox" in table.column_names:
        bbox = table["bbox"].combine_chunks()
        xmin, ymin, xmax, ymax = (bbox.field(k).to_numpy(zero_copy_only=False) for k in _COVERING)
        for w, s, e, n in filters.boxes:  # NaN (an empty footprint) is never inside
            meets |= (xmin >= w) & (xmax <= e) & (ymin >= s) & (ymax <= n) & (xmin <= xmax)
    edge = np.flatnonzero(~meets)
    if len(edge):
        wkb = table["geometry"].take(pa.array(edge)).to_numpy(zero_copy_only=False)
        shapely.prepare(filters.geometry)
        meets[edge] = shapely.intersects(shapely.from_wkb(wkb), filters.geometry)
    return meets


def _time_mask(table: pa.Table, filters: Filters) -> np.ndarray:
    if "datetime" in table.column_names and table["datetime"].null_count < len(table):
        col = table["datetime"]
        result = pc.is_valid(col)
        if filters.start:
            result = pc.and_(result, pc.greater_equal(col, pa.scalar(filters.start, col.type)))
        if filters.end:
            result = pc.and_(result, pc.less_equal(col, pa.scalar(filters.end, col.type)))
        return pc.fill_null(result, False).to_numpy(zero_copy_only=False)
    col = table["date"]
    result = pc.is_valid(col)
    if filters.start:
        result = pc.and_(
            result, pc.greater_equal(col, pa.scalar(filters.start.date(), pa.date32()))
        )
    if filters.end:
        result = pc.and_(result, pc.less_equal(col, pa.scalar(filters.end.date(), pa.date32())))
    return pc.fill_null(result, False).to_numpy(zero_copy_only=False)


def _boxes_meet(b: list[np.ndarray], boxes) -> np.ndarray:
    """Rows whose covering meets any of ``boxes`` (none crossing 180 degrees); a row with
    west > east covers [west, 180] and [-180, east]."""
    xmin, ymin, xmax, ymax = b
    crossing = xmin > xmax
    near = np.zeros(len(xmin), bool)
    for w, s, e, n in boxes:
        lat = (ymin <= n) & (ymax >= s)
        plain = ~crossing & (xmin <= e) & (xmax >= w)
        wrapped = crossing & ((xmin <= e) | (xmax >= w))  # [xmin, 180] or [-180, xmax] meets [w, e]
        near |= lat & (plain | wrapped)
    return near


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges closer than COALESCE_GAP merged into one (column chunks are adjacent)."""
    merged: list[list[int]] = []
    for s, e in sorted(set(ranges)):
        if merged and s - merged[-1][1] <= objects.COALESCE_GAP:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _tail(url: str, n: int) -> tuple[int, bytes, int]:
    """The object's size and its last ``n`` bytes (all of a smaller object), and the requests
    that took: one suffix range through the fork-safe transport where it serves the URL
    (local, http(s), s3), as index loads are (io.objects), so a query never starts obstore's
    runtime and DataLoader workers forked after it keep their fast chip reads; elsewhere a
    HEAD, then a range. The suffix saves a HEAD's round trip: one of the five rounds of a
    remote query of a large index (20 ms of 137 at 20 ms per request)."""
    if not portable.serves(url):
        size = objects.head(url).size
        if not size or not n:
            return size, b"", 1
        return size, _get_ranges(url, [(max(0, size - n), size)])[0], 2
    try:
        if not objects.is_remote(url):
            got = portable.read_local(url, -n, None)
        else:
            got = objects.run(portable.read(url, -n))
    except portable.HttpStatus as exc:
        if exc.status != 416:  # a suffix of an empty object is "not satisfiable"
            raise ObjectError(f"cannot read {redact(url)}: {objects.failure(exc)}") from None
        got = None
    except Exception as exc:  # noqa: BLE001 - aiohttp's errors and OSErrors
        raise ObjectError(f"cannot read {redact(url)}: {objects.failure(exc)}") from None
    if got is None:
        return _size_of(url), b"", 2
    if got.size < 0:  # the server did not say the object's size
        return _size_of(url), bytes(got.body), 2
    return got.size, bytes(got.body), 1


def _size_of(url: str) -> int:
    try:
        if not objects.is_remote(url):
            return portable.read_local(url, None, None, body=False).size
        return objects.run(portable.read(url, body=False)).size
    except Exception as exc:  # noqa: BLE001 - aiohttp's errors, HttpStatus and OSErrors
        raise ObjectError(f"cannot stat {redact(url)}: {objects.failure(exc)}") from None


def _get_ranges(url: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of ``ranges``, all requests at once (see _tail for the transport)."""
    if not portable.serves(url):
        return [
            bytes(b)
            for b in objects.get_ranges(url, [s for s, _ in ranges], [e for _, e in ranges])
        ]

    async def every() -> list:
        return await asyncio.gather(*(portable.read(url, s, e) for s, e in ranges))

    try:
        if not objects.is_remote(url):
            bodies = [portable.read_local(url, s, e).body for s, e in ranges]
        else:
            bodies = [r.body for r in objects.run(every())]
    except Exception as exc:  # noqa: BLE001 - aiohttp's errors, HttpStatus and OSErrors
        raise ObjectError(f"cannot read {redact(url)}: {objects.failure(exc)}") from None
    for (s, e), body in zip(ranges, bodies):
        if len(body) != e - s:
            raise ObjectError(
                f"cannot read {redact(url)}: truncated (bytes {s}-{e} gave {len(body)})"
            )
    return [bytes(b) for b in bodies]


class _RangeFile:
    """A read-only file over one object, for pyarrow: reads are served from ranges fetched
    ahead (the footer, then every column chunk a query needs, coalesced into few requests
    by the object layer); other reads go out as they come. Counts bytes and requests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bytes_read = 0
        self._pos = 0
        self.closed = False
        self._cache: list[tuple[int, bytes]] = []
        self.size, data, self.requests = _tail(url, FOOTER_BYTES)
        tail = len(data)
        if tail:
            self._cache.append((self.size - tail, data))
            self.bytes_read += tail
            footer = self._cached(self.size - 8, self.size) if self.size >= 8 else None
            if footer is not None and footer[4:] == b"PAR1":  # a longer footer: the rest of it now
                start = self.size - 8 - int.from_bytes(footer[:4], "little")
                if 0 <= start < self.size - tail:
                    self.prefetch([(start, self.size - tail)])

    def footer_digest(self) -> bytes:
        """A digest of the file's footer (its metadata and length), or of its last bytes
        when it has no Parquet footer (pyarrow then says why it cannot read it)."""
        tail = self._cached(self.size - 8, self.size) if self.size >= 8 else None
        start = self.size - min(self.size, FOOTER_BYTES)
        if tail is not None and tail[4:] == b"PAR1":
            start = max(0, self.size - 8 - int.from_bytes(tail[:4], "little"))
        data = self._cached(start, self.size) or b""
        return hashlib.blake2b(data, digest_size=16).digest()

    def footer_thrift(self) -> bytes:
        """The footer's Thrift bytes (the file metadata, without its length and magic)."""
        tail = self._cached(self.size - 8, self.size) if self.size >= 8 else None
        if tail is None or tail[4:] != b"PAR1":
            return b""
        start = self.size - 8 - int.from_bytes(tail[:4], "little")
        return self._cached(start, self.size - 8) or b""

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        ranges = [(s, e) for s, e in ranges if e > s and not self._cached(s, e)]
        if not ranges:
            return
        merged = _coalesce(ranges)
        buffers = _get_ranges(self.url, merged)
        self.requests += len(merged)
        for (s, e), buf in zip(merged, buffers):
            self._cache.append((s, buf))
            self.bytes_read += e - s

    def _cached(self, start: int, end: int) -> bytes | None:
        for s, data in self._cache:
            if s <= start and end <= s + len(data):
                return data[start - s:end - s]
        # a read across two adjacent cached ranges (a footer fetched in two parts)
        parts, at = [], start
        for s, data in sorted(self._cache):
            if s <= at < s + len(data):
                parts.append(data[at - s:min(end, s + len(data)) - s])
                at += len(parts[-1])
                if at >= end:
                    return b"".join(parts)
        return None

    # the file protocol pyarrow uses
    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = (
            offset if whence == 0 else self._pos + offset if whence == 1 else self.size + offset
        )
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        start = self._pos
        if end <= start:
            return b""
        data = self._cached(start, end)
        if data is None:
            log.debug(
                "query read outside the prefetched ranges: %s bytes %d-%d",
                redact(self.url),
                start,
                end,
            )
            self.prefetch([(start, end)])
            data = self._cached(start, end) or b""
        self._pos = end
        return data

    def close(self) -> None:
        self.closed = True
        self._cache.clear()
