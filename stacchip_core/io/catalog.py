"""STAC search: a real STAC API through pystac-client, or the embedded catalog.

Processors call ``catalog.search(...)`` with pystac-client's keywords, whichever catalog
they were given. The embedded catalog answers the subset the processors use (collections,
datetime, intersects, bbox, query, sortby, max_items) over item JSON files, so the demo
runs with no server; a test checks it selects what stac-fastapi-pgstac selects.
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pystac
import shapely
from shapely.geometry import shape

from stacchip_core.errors import StacchipError

log = logging.getLogger(__name__)

STAC_API_ENV = "STACCHIP_STAC_API"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OPS = {"eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le,
        "gt": operator.gt, "gte": operator.ge, "in": lambda a, b: a in b}


def open_catalog(url: str | Path):
    """A pystac-client Client for an http(s) STAC API, else the embedded catalog over the
    item JSON files under a folder (or listed in an .ndjson file)."""
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
    def __init__(self, items: list[pystac.Item]) -> None:
        self._items = items

    def items(self) -> Iterator[pystac.Item]:
        return iter(self._items)

    def item_collection(self) -> pystac.ItemCollection:
        return pystac.ItemCollection(self._items)

    def matched(self) -> int:
        return len(self._items)


class EmbeddedCatalog:
    """Items in memory, searched with pystac-client's keywords."""

    def __init__(self, items: list[dict]) -> None:
        self._items = items
        self._geoms = [shape(d["geometry"]) if d.get("geometry") else None for d in items]

    @classmethod
    def from_path(cls, path: str | Path) -> EmbeddedCatalog:
        path = Path(path)
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
            raise StacchipError(f"no STAC API or item folder at {path}")
        log.info("embedded catalog: %d items from %s", len(items), path)
        return cls(items)

    def search(self, collections=None, datetime=None, intersects=None, bbox=None, query=None,
               sortby=None, max_items=None, limit=None, **unsupported) -> EmbeddedSearch:
        if unsupported:
            raise StacchipError(f"the embedded catalog does not support {sorted(unsupported)}")
        if isinstance(collections, str):
            collections = [collections]
        area = None
        if intersects is not None:
            area = shape(intersects) if isinstance(intersects, dict) else intersects
            if hasattr(area, "__geo_interface__") and not isinstance(area, shapely.Geometry):
                area = shape(area.__geo_interface__)
        if bbox is not None:
            box = shapely.box(*bbox)
            area = box if area is None else area.intersection(box)
        start, end = _interval(datetime)
        hits = []
        for d, geom in zip(self._items, self._geoms):
            if collections and d.get("collection") not in collections:
                continue
            if area is not None and (geom is None or not geom.intersects(area)):
                continue
            if start or end:
                # an item's time range (datetime, or start_datetime .. end_datetime) overlaps the
                # interval, as pgstac matches it: an 8-day composite that starts in January is in February too
                first, last = _item_time(d), _item_end(d)
                if first is None or (start and last < start) or (end and first > end):
                    continue
            if query and not all(_match(d["properties"].get(k), ops) for k, ops in query.items()):
                continue
            hits.append(d)
        # the API's default order (newest first), then each sort key from the last: stable sorts
        hits.sort(key=lambda d: (_item_time(d) or _EPOCH, d["id"]), reverse=True)
        for field, descending in reversed(_sort_keys(sortby)):
            present = [d for d in hits if d["properties"].get(field) is not None]
            missing = [d for d in hits if d["properties"].get(field) is None]  # last, either way
            present.sort(key=lambda d: d["properties"][field], reverse=descending)
            hits = present + missing
        if max_items is not None:
            hits = hits[:max_items]
        return EmbeddedSearch([_to_item(d) for d in hits])


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
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _interval(value) -> tuple[datetime | None, datetime | None]:
    if not value:
        return None, None
    if "/" not in value:
        start = _parse(value)
        if len(value) == 10:  # a whole day
            return start, start.replace(hour=23, minute=59, second=59, microsecond=999999)
        return start, start
    a, b = value.split("/")
    start = None if a in ("", "..") else _parse(a)
    end = None if b in ("", "..") else _parse(b)
    if end is not None and len(b) == 10:  # an end date includes the whole day, as STAC APIs do
        end = end.replace(hour=23, minute=59, second=59, microsecond=999999)
    return start, end


def _item_time(d: dict) -> datetime | None:
    props = d["properties"]
    value = props.get("datetime") or props.get("start_datetime")
    return _parse(value) if value else None


def _item_end(d: dict) -> datetime | None:
    props = d["properties"]
    value = props.get("end_datetime") or props.get("datetime") or props.get("start_datetime")
    return _parse(value) if value else None


def _match(value, ops: dict) -> bool:
    if value is None:
        return False
    return all(_OPS[op](value, target) for op, target in ops.items())


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
