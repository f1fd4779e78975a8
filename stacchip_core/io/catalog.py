"""STAC search: a real STAC API through pystac-client, or the embedded catalog.

Processors call ``catalog.search(...)`` with pystac-client's keywords, whichever catalog
they were given. The embedded catalog answers the subset the processors use (collections,
datetime, intersects, bbox, ids, query, sortby, max_items) over item JSON files, an
``.ndjson`` file or a stac-geoparquet file, so the demo runs with no server; it refuses
what stac-fastapi-pgstac refuses and answers the rest as it does (tests compare them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import shapely
from shapely.geometry import shape

from stacchip_core.errors import CatalogError

log = logging.getLogger(__name__)

STAC_API_ENV = "STACCHIP_STAC_API"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def open_catalog(url: str | Path):
    """A pystac-client Client for an http(s) STAC API, else the embedded catalog over the
    item JSON files under a folder, an .ndjson file or a stac-geoparquet file.

    Args:
        url: An http(s) STAC API URL, or a local folder or file.

    Returns:
        A ``pystac_client.Client`` or an ``EmbeddedCatalog``.

    Raises:
        CatalogError: If a local ``url`` is no item folder, .ndjson or stac-geoparquet file.
    """
    url = str(url)
    if url.startswith(("http://", "https://")):
        import pystac_client

        client = pystac_client.Client.open(url)
        # pgstac advertises sort v1.1.0, pystac-client 0.9 looks for v1.0.0: it sorts anyway
        client.add_conforms_to("SORT")
        client.add_conforms_to("QUERY")
        return client
    return EmbeddedCatalog.from_path(url)


class EmbeddedSearch:
    """One search's result, answered as pystac-client's ``ItemSearch`` answers it.

    Args:
        items: The matched items, in the search's order.
    """

    def __init__(self, items: list[pystac.Item]) -> None:
        self._items = items

    def items(self) -> Iterator[pystac.Item]:
        """The matched items, in the search's order.

        Returns:
            An iterator over the items.
        """
        return iter(self._items)

    def item_collection(self) -> pystac.ItemCollection:
        """The matched items as one collection.

        Returns:
            The item collection.
        """
        return pystac.ItemCollection(self._items)

    def matched(self) -> int:
        """How many items matched.

        Returns:
            The number of items (after ``max_items``).
        """
        return len(self._items)


# pgstac's query extension (stac-fastapi-pgstac 7.2 on pgstac 0.10, checked against the real
# server): any other operator (`in`, `startsWith`, ...) is a 400 there, so it is an error here
QUERY_OPS = ("eq", "ne", "neq", "lt", "lte", "gt", "gte")
_VEC_OPS = {
    "eq": np.equal,
    "ne": np.not_equal,
    "neq": np.not_equal,
    "lt": np.less,
    "lte": np.less_equal,
    "gt": np.greater,
    "gte": np.greater_equal,
}
_NO_TIME = np.iinfo(np.int64).min


class EmbeddedCatalog:
    """Items searched in memory with pystac-client's keywords and pgstac's semantics.

    The items are held as columns (ids, collections, times, bboxes, geometries, one column per
    queried property), so a search is a handful of vectorized comparisons whatever the number
    of items; only the hits become ``pystac.Item``s (100k items from stac-geoparquet: opened in
    0.2 s, first search 0.4 s while the columns it needs are built, then about 7 ms a search).
    Semantics follow stac-fastapi-pgstac
    (tests compare both on the same items): query operators ``eq ne neq lt lte gt gte`` only;
    an item without the property never matches (``neq`` included); the default order is
    newest first (then id, descending); ``sortby`` puts missing values last ascending and first
    descending, ties broken by id in the first key's direction; numbers sort as numbers (as
    in catalogs that declare their numeric queryables, like the public ones).

    Args:
        items: Item dicts (``from_path`` reads them from files).
    """

    def __init__(self, items: list[dict] | None = None, *, _table=None) -> None:
        self._table = _table  # stac-geoparquet: items are rebuilt for the hits only
        self._items: list[dict] = items or []  # empty for stac-geoparquet (its table holds them)
        if _table is not None:
            self._ids = np.asarray(_table["id"].to_numpy(zero_copy_only=False), dtype=object)
            self._colls = (
                np.asarray(_table["collection"].to_numpy(zero_copy_only=False), dtype=object)
                if "collection" in _table.column_names
                else np.full(len(self._ids), None, object)
            )
            self._times = _table_times(_table)
            self._ends = _table_times(_table, ("end_datetime", "datetime", "start_datetime"))
            bbox = _table["bbox"].combine_chunks()
            self._bbox = np.column_stack(
                [
                    bbox.field(k).to_numpy(zero_copy_only=False).astype(np.float64)
                    for k in ("xmin", "ymin", "xmax", "ymax")
                ]
            )
        else:
            items = items or []
            self._ids = np.asarray([d["id"] for d in items], dtype=object)
            self._colls = np.asarray([d.get("collection") for d in items], dtype=object)
            self._times = np.asarray([_to_us(_item_time(d)) for d in items], dtype=np.int64)
            self._ends = np.asarray([_to_us(_item_end(d)) for d in items], dtype=np.int64)
            self._bbox = np.asarray([_bbox_of(d) for d in items], dtype=np.float64).reshape(-1, 4)
        self._geoms: np.ndarray | None = None
        self._props: dict[str, np.ndarray] = {}
        self._typed: dict[str, tuple] = {}

    def __len__(self) -> int:
        return len(self._ids)

    @classmethod
    def from_path(cls, path: str | Path) -> EmbeddedCatalog:
        """Item JSON files under a folder, an ``.ndjson`` file, or a stac-geoparquet file
        (``.parquet``/``.geoparquet``; needs the ``geoparquet`` extra).

        Args:
            path: The folder or file.

        Returns:
            The catalog over its items.

        Raises:
            CatalogError: If ``path`` is no item folder, .ndjson or stac-geoparquet file.
        """
        path = Path(path)
        if path.is_file() and path.suffix in (".parquet", ".geoparquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            log.info("embedded catalog: %d items from %s", table.num_rows, path)
            return cls(_table=table)
        if path.is_file() and path.suffix == ".ndjson":
            items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif path.is_dir():
            items = []
            for p in sorted(path.rglob("*.json")):
                d = json.loads(p.read_text())
                if d.get("type") == "Feature":
                    d.setdefault("links", []).append({"rel": "self", "href": str(p.resolve())})
                    items.append(d)
        else:
            raise CatalogError(
                f"no STAC API, item folder, .ndjson or stac-geoparquet file at {path}"
            )
        log.info("embedded catalog: %d items from %s", len(items), path)
        return cls(items)

    # --- columns, built on first use ----------------------------------------------------

    def _geometries(self) -> np.ndarray:
        if self._geoms is None:
            if self._table is not None:
                geoms = shapely.from_wkb(self._table["geometry"].to_numpy(zero_copy_only=False))
            else:
                geoms = np.asarray([shape(d["geometry"]) if d.get("geometry") else None
                                    for d in self._items], dtype=object)
            self._geoms = geoms
            return geoms
        return self._geoms

    def _prop(self, name: str) -> np.ndarray:
        """One property of every item, as an object array (None where missing)."""
        col = self._props.get(name)
        if col is None:
            if self._table is not None:
                if name in self._table.column_names:
                    col = np.asarray(self._table[name].to_pylist(), dtype=object)
                else:
                    col = np.full(len(self), None, dtype=object)
            else:
                col = np.asarray(
                    [d["properties"].get(name) for d in self._items] + [0], dtype=object
                )[:-1]
            self._props[name] = col
        return col

    def _prop_typed(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(values, present, numeric, values as float64 where numeric), built once per property."""
        typed = self._typed.get(name)
        if typed is None:
            values = self._prop(name)
            present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
            numeric = np.fromiter(
                (isinstance(v, (int, float)) and not isinstance(v, bool) for v in values),
                dtype=bool,
                count=len(values),
            )
            floats = np.full(len(values), np.nan)
            floats[numeric] = values[numeric].astype(np.float64)
            typed = self._typed[name] = (values, present, numeric, floats)
        return typed

    # --- search ---------------------------------------------------------------------------

    def search(self, collections=None, datetime=None, intersects=None, bbox=None, query=None,
               sortby=None, max_items=None, limit=None, ids=None, **unsupported) -> EmbeddedSearch:
        """Search the items as pystac-client's ``Client.search`` does, with pgstac's semantics.

        Args:
            collections: A collection id or ids to keep.
            datetime: An instant or an interval ``a/b`` (open ends ``..``); matches items whose
                time range overlaps it.
            intersects: A GeoJSON geometry (mapping or shapely) in lon/lat.
            bbox: (west, south, east, north) in lon/lat.
            query: ``{property: {operator: value}}`` with operators ``eq ne neq lt lte gt gte``.
            sortby: Sort keys, as pystac-client takes them (``-datetime``, ``+id``, ...).
            max_items: The most items to return.
            limit: Page size of a STAC API; ignored (there are no pages).
            ids: An item id or ids to keep.
            **unsupported: Any other keyword: an error.

        Returns:
            The search's result.

        Raises:
            CatalogError: If an unsupported keyword, query operator or malformed query is given.
            ValueError: If ``datetime`` is not ISO 8601.
        """
        if unsupported:
            raise CatalogError(f"the embedded catalog does not support {sorted(unsupported)}")
        _check_query(query)
        keys = _sort_keys(sortby)
        keep = np.ones(len(self), dtype=bool)
        if isinstance(collections, str):
            collections = [collections]
        if collections:
            keep &= np.isin(self._colls, list(collections))
        if ids:
            keep &= np.isin(self._ids, [ids] if isinstance(ids, str) else list(ids))
        start, end = _interval(datetime)
        if start is not None or end is not None:
            # an item's time range (datetime, or start_datetime .. end_datetime) overlaps the
            # interval, as pgstac matches it: an 8-day composite that starts in January is in
            # February too
            keep &= self._times != _NO_TIME
            if start is not None:
                keep &= self._ends >= _to_us(start)
            if end is not None:
                keep &= self._times <= _to_us(end)
        for name, ops in (query or {}).items():
            keep &= _query_mask(self._prop_typed(name), ops)
        area = _area(intersects, bbox)
        if area is not None:
            keep &= bbox_candidates(self._bbox, area.bounds)
            cand = np.flatnonzero(keep)
            geoms = self._geometries()[cand]
            hit = np.array([g is not None for g in geoms], dtype=bool)
            hit[hit] = (
                shapely.intersects(np.asarray(list(geoms[hit]), dtype=object), area)
                if hit.any()
                else hit[hit]
            )
            keep[cand[~hit]] = False
        rows = np.flatnonzero(keep)
        rows = rows[self._order(rows, keys)]
        if max_items is not None:
            rows = rows[:max_items]
        return EmbeddedSearch(self._to_items(rows))

    def _order(self, rows: np.ndarray, keys: list[tuple[str, bool]]) -> np.ndarray:
        """The permutation of ``rows`` in pgstac's order (np.lexsort: last key sorts first)."""
        ids = _ranks(self._ids[rows])
        if not keys:
            return np.lexsort((-ids, -self._times[rows]))
        lex = [ids if not keys[0][1] else -ids]
        for field, descending in reversed(keys):
            if field == "id":
                values, missing = self._ids[rows], np.zeros(len(rows), dtype=bool)
            elif field == "datetime":
                values = self._times[rows]
                missing = values == _NO_TIME
            else:
                values = self._prop(field)[rows]
                missing = np.asarray([v is None for v in values] + [False], dtype=bool)[:-1]
            rank = np.zeros(len(rows), dtype=np.int64)
            rank[~missing] = _ranks(values[~missing])
            if descending:  # missing values first, as PostgreSQL's DESC does
                lex += [-rank, ~missing]
            else:  # missing last
                lex += [rank, missing]
        return np.lexsort(lex)

    def _to_items(self, rows: np.ndarray) -> list[pystac.Item]:
        if self._table is not None:
            from stac_geoparquet.arrow import stac_table_to_items

            if not len(rows):
                return []
            return [_to_item(d) for d in stac_table_to_items(self._table.take(rows))]
        return [_to_item(self._items[i]) for i in rows]


def _check_query(query) -> None:
    for name, ops in (query or {}).items():
        if not isinstance(ops, dict):
            raise CatalogError(f"query {name!r}: expected {{operator: value}}, got {ops!r}")
        bad = sorted(set(ops) - set(QUERY_OPS))
        if bad:
            raise CatalogError(f"query {name!r}: operator(s) {bad} not supported by pgstac "
                               f"(it accepts {', '.join(QUERY_OPS)}); use one search per value")


def _query_mask(typed, ops: dict) -> np.ndarray:
    values, present, numeric, floats = typed
    keep = present.copy()
    other = present & ~numeric
    for op, target in ops.items():
        fn = _VEC_OPS[op]
        ok = np.zeros(len(values), dtype=bool)
        number = _as_number(target)
        if number is not None:  # pgstac compares "5" with 5 as numbers
            ok[numeric] = fn(floats[numeric], number)
        if other.any():
            sub = values[other]
            try:
                ok[other] = np.asarray(fn(sub, target), dtype=bool)  # object ufunc: a C loop
            except TypeError:
                ok[other] = op in ("ne", "neq")
        keep &= ok
    return keep


def _as_number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _ranks(values: np.ndarray) -> np.ndarray:
    """Dense ranks of comparable values (numbers as numbers, strings as strings)."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    try:
        arr = values.astype(np.float64) if values.dtype == object and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) else values
    except (TypeError, ValueError):
        arr = values
    if arr.dtype == object:
        arr = arr.astype(str)
    return np.unique(arr, return_inverse=True)[1].astype(np.int64)


def bbox_candidates(bounds: np.ndarray, box) -> np.ndarray:
    """Rows of lon/lat ``bounds`` (n, 4) that may meet ``box`` (xmin, ymin, xmax, ymax): a
    prefilter, the geometry decides. Bounds with west > east (RFC 7946 bounds of something
    that crosses the antimeridian) count as spanning every longitude: compared as plain
    numbers they would match no box at all. NaN bounds stay candidates.

    Args:
        bounds: Lon/lat bounds (west, south, east, north), shape (n, 4).
        box: (xmin, ymin, xmax, ymax) in lon/lat.

    Returns:
        A boolean array of length n, True for the candidates.
    """
    xmin, ymin, xmax, ymax = box
    west, east = bounds[:, 0], bounds[:, 2]
    crossing = west > east
    west, east = np.where(crossing, -180.0, west), np.where(crossing, 180.0, east)
    return ~((west > xmax) | (east < xmin) | (bounds[:, 1] > ymax) | (bounds[:, 3] < ymin))


def _area(intersects, bbox):
    area = None
    if intersects is not None:
        area = shape(intersects) if isinstance(intersects, dict) else intersects
        if hasattr(area, "__geo_interface__") and not isinstance(area, shapely.Geometry):
            area = shape(area.__geo_interface__)
    if bbox is not None:
        box = shapely.box(*bbox)
        area = box if area is None else area.intersection(box)
    return area


def _bbox_of(d: dict) -> list[float]:
    if d.get("bbox"):
        b = d["bbox"]
        return [b[0], b[1], b[3], b[4]] if len(b) == 6 else list(b)
    if d.get("geometry"):
        return list(shape(d["geometry"]).bounds)
    return [np.nan] * 4


def _to_us(when: datetime | None) -> int:
    if when is None:
        return int(_NO_TIME)
    return (when - _EPOCH) // timedelta(microseconds=1)


def _table_times(table, names=("datetime", "start_datetime")) -> np.ndarray:
    """The first of the ``names`` columns present and not null, as microseconds since the epoch."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = None
    for name in names:
        if name in table.column_names:
            c = pc.cast(table[name], pa.timestamp("us", tz="UTC"))
            col = c if col is None else pc.coalesce(col, c)
    if col is None:
        return np.full(table.num_rows, _NO_TIME, dtype=np.int64)
    return pc.fill_null(pc.cast(col, pa.int64()), int(_NO_TIME)).to_numpy()


def _to_item(d: dict) -> pystac.Item:
    item = pystac.Item.from_dict(d)
    for link in d.get("links", []):
        if link.get("rel") == "self":
            item.set_self_href(link["href"])
    return item


def _parse(value: str) -> datetime:
    value = value.replace("Z", "+00:00")
    if len(value) == 10:
        value += "T00:00:00+00:00"
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _interval(value) -> tuple[datetime | None, datetime | None]:
    if not value:
        return None, None
    if "/" not in value:
        start = _parse(value)
        if len(value) == 10:  # a whole day
            return start, start.replace(hour=23, minute=59, second=59, microsecond=999999)
        return start, start
    a, b = value.split("/")
    begin: datetime | None = None if a in ("", "..") else _parse(a)
    end: datetime | None = None if b in ("", "..") else _parse(b)
    if end is not None and len(b) == 10:  # an end date includes the whole day, as STAC APIs do
        end = end.replace(hour=23, minute=59, second=59, microsecond=999999)
    return begin, end


def _item_time(d: dict) -> datetime | None:
    props = d["properties"]
    value = props.get("datetime") or props.get("start_datetime")
    return _parse(value) if value else None


def _item_end(d: dict) -> datetime | None:
    props = d["properties"]
    value = props.get("end_datetime") or props.get("datetime") or props.get("start_datetime")
    return _parse(value) if value else None


def _sort_keys(sortby) -> list[tuple[str, bool]]:
    if not sortby:
        return []
    if isinstance(sortby, str):
        sortby = sortby.split(",")
    keys = []
    for entry in sortby:
        if isinstance(entry, dict):
            field, descending = entry["field"], entry.get("direction") == "desc"
        else:
            descending = entry.startswith("-")
            field = entry.lstrip("+-")
        keys.append((field.removeprefix("properties."), descending))
    return keys
