"""The embedded catalog against the real stac-fastapi-pgstac: same refusals, same answers;
and at scale over a stac-geoparquet file of 100k items."""

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pystac_client.exceptions
import pytest
import shapely
from provision import ensure_postgis
from services import StacApi
from shapely.geometry import shape

from stacchip_core.errors import StacchipError
from stacchip_core.io.catalog import EmbeddedCatalog, open_catalog

COLLECTION = {
    "type": "Collection",
    "id": "c",
    "stac_version": "1.1.0",
    "description": "d",
    "license": "x",
    "links": [],
    "extent": {
        "spatial": {"bbox": [[-180, -90, 180, 90]]},
        "temporal": {"interval": [[None, None]]},
    },
}
# the public pgstac catalogs declare eo:cloud_cover a number (else pgstac sorts it as text)
QUERYABLES = {
    "type": "object",
    "properties": {"eo:cloud_cover": {"type": "number"}, "n": {"type": "integer"}},
}


def small_items() -> list[dict]:
    """40 items with ties, missing values, two collections, points and squares."""
    rng = np.random.default_rng(3)
    items = []
    for i in range(40):
        x, y = float(i % 8), float(i // 8)
        geom = (
            {"type": "Point", "coordinates": [x, y]}
            if i % 3
            else {
                "type": "Polygon",
                "coordinates": [[[x, y], [x + 0.6, y], [x + 0.6, y + 0.6], [x, y + 0.6], [x, y]]],
            }
        )
        props = {"datetime": (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=7 * (i % 13)))
                 .strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "platform": ["x", "y", "z"][i % 3], "grid:code": f"MGRS-{'AB'[i % 2]}", "n": i}
        if i % 5:
            props["eo:cloud_cover"] = float(rng.choice([5, 9, 10, 20.5, 75]))
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": f"it{i:02d}",
                "collection": "c",
                "geometry": geom,
                "bbox": list(shape(geom).bounds),
                "properties": props,
                "links": [],
                "assets": {},
            }
        )
    return items


@pytest.fixture(scope="module")
def pgstac():
    ensure_postgis()
    api = StacApi()
    try:
        api.start()
        api.load([COLLECTION], small_items())
        path = api.tmp / "queryables.json"
        path.write_text(json.dumps(QUERYABLES))
        api.pypgstac("load_queryables", str(path))
        yield open_catalog(api.url)
    finally:
        api.stop()


SQUARE = {
    "type": "Polygon",
    "coordinates": [[[0.5, 0.5], [3.2, 0.5], [3.2, 3.3], [0.5, 3.3], [0.5, 0.5]]],
}
SEARCHES = {
    "all": {},
    "eq": {"query": {"eo:cloud_cover": {"eq": 9}}},
    "eq-string-number": {"query": {"eo:cloud_cover": {"eq": "9"}}},
    "neq-skips-missing": {"query": {"eo:cloud_cover": {"neq": 9}}},
    "ne": {"query": {"platform": {"ne": "x"}}},
    "range": {"query": {"eo:cloud_cover": {"gte": 9, "lt": 75}}},
    "string-lt": {"query": {"platform": {"lt": "y"}}},
    "two-props": {"query": {"grid:code": {"eq": "MGRS-A"}, "n": {"gt": 10}}},
    "sort-asc": {"sortby": "properties.eo:cloud_cover"},
    "sort-desc": {"sortby": "-eo:cloud_cover"},
    "sort-dict": {"sortby": [{"field": "properties.eo:cloud_cover", "direction": "desc"}]},
    "sort-two": {"sortby": ["-platform", "+eo:cloud_cover"]},
    "sort-string-then-number": {"sortby": ["platform", "-n"]},
    "sort-id": {"sortby": "id"},
    "datetime-instant": {"datetime": "2024-01-01T07:00:00Z"},
    "datetime-range": {"datetime": "2024-01-01T10:00:00Z/2024-01-02T12:00:00Z"},
    "datetime-open-end": {"datetime": "2024-01-03T00:00:00Z/.."},
    "datetime-open-start": {"datetime": "../2024-01-01T14:00:00Z"},
    "datetime-day": {"datetime": "2024-01-02"},
    "bbox": {"bbox": [0.5, 0.5, 3.2, 3.3]},
    "intersects-polygon": {"intersects": SQUARE},
    "intersects-point": {"intersects": {"type": "Point", "coordinates": [3.3, 0.3]}},
    "collections": {"collections": ["c"], "query": {"n": {"lte": 3}}},
    "no-collection": {"collections": ["nope"]},
    "max-items": {"sortby": "eo:cloud_cover", "max_items": 3},
    "first-least-cloudy": {
        "collections": ["c"],
        "query": {"eo:cloud_cover": {"lte": 50}, "grid:code": {"eq": "MGRS-B"}},
        "sortby": "properties.eo:cloud_cover",
        "max_items": 1,
    },
    "ids": {"ids": ["it03", "it07", "it30"]},
}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_embedded_catalog_answers_as_pgstac(pgstac, name):
    kwargs = SEARCHES[name]
    expected = [i.id for i in pgstac.search(**kwargs).items()]
    got = [i.id for i in EmbeddedCatalog(small_items()).search(**kwargs).items()]
    assert got == expected
    if name not in ("no-collection", "ids"):
        assert len(expected) > 0  # every case selects something


@pytest.mark.parametrize(
    "op,value", [("in", [5, 9]), ("startsWith", "MGRS"), ("contains", "A"), ("like", "x%")]
)
def test_embedded_catalog_refuses_what_pgstac_refuses(pgstac, op, value):
    query = {"grid:code" if isinstance(value, str) else "eo:cloud_cover": {op: value}}
    with pytest.raises(pystac_client.exceptions.APIError, match="400|eq"):
        list(pgstac.search(query=query).items())
    with pytest.raises(StacchipError, match=f"'{op}'.*not supported by pgstac"):
        EmbeddedCatalog(small_items()).search(query=query)


# --- 100k items from a stac-geoparquet file ------------------------------------------

N = 100_000


def big_items() -> list[dict]:
    rng = np.random.default_rng(7)
    lon, lat = rng.uniform(-180, 179, N), rng.uniform(-80, 79, N)
    cloud = np.round(rng.uniform(0, 100, N), 1)
    day = rng.integers(0, 365 * 3, N)
    tiles = rng.integers(0, 50, N)
    t0 = datetime(2021, 1, 1, tzinfo=UTC)
    items = []
    for i in range(N):
        x, y = float(lon[i]), float(lat[i])
        props = {
            "datetime": (t0 + timedelta(days=int(day[i]), seconds=i % 86400)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "grid:code": f"MGRS-{tiles[i]:02d}",
            "eo:cloud_cover": float(cloud[i]),
            "s2:nodata_pixel_percentage": float(i % 40),
        }
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": f"S2_{i:06d}",
                "collection": "sentinel-2-l2a" if i % 4 else "landsat-c2l2-sr",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1], [x, y]]],
                },
                "bbox": [x, y, x + 1, y + 1],
                "properties": props,
                "links": [],
                "assets": {"red": {"href": f"s3://b/{i}/red.tif"}},
            }
        )
    return items


def reference(items, collections, area, start, end, tile, max_cloud, max_nodata):
    """A plain loop: the items a search must return, least cloudy first (ties: id)."""
    hits = []
    for d in items:
        p = d["properties"]
        when = datetime.fromisoformat(p["datetime"])
        if (
            d["collection"] in collections
            and start <= when <= end
            and p["grid:code"] == tile
            and p["eo:cloud_cover"] <= max_cloud
            and p["s2:nodata_pixel_percentage"] <= max_nodata
            and shape(d["geometry"]).intersects(area)
        ):
            hits.append(d)
    return [
        d["id"] for d in sorted(hits, key=lambda d: (d["properties"]["eo:cloud_cover"], d["id"]))
    ]


@pytest.fixture(scope="module")
def big_catalog(tmp_path_factory):
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    items = big_items()
    path = tmp_path_factory.mktemp("geoparquet") / "items.parquet"
    to_parquet(parse_stac_items_to_arrow(items), path)
    return items, path


@pytest.mark.parametrize(
    "area", [shapely.box(-10, -10, 30, 30), shapely.Point(2.5, 48.5).buffer(25)]
)
def test_100k_items_from_stac_geoparquet(big_catalog, area):
    items, path = big_catalog
    t = time.perf_counter()
    catalog = open_catalog(path)
    opened = time.perf_counter() - t
    assert len(catalog) == N
    kwargs = dict(  # noqa: C408 - keyword arguments for search()
                  collections=["sentinel-2-l2a"], intersects=shapely.geometry.mapping(area),
                  datetime="2022-01-01T00:00:00Z/2022-12-31T23:59:59Z",
                  query={"grid:code": {"eq": "MGRS-07"}, "eo:cloud_cover": {"lte": 60},
                         "s2:nodata_pixel_percentage": {"lte": 20}},
                  sortby="properties.eo:cloud_cover")
    expected = reference(items, {"sentinel-2-l2a"}, area, datetime(2022, 1, 1, tzinfo=UTC),
                         datetime(2022, 12, 31, 23, 59, 59, tzinfo=UTC), "MGRS-07", 60, 20)
    t = time.perf_counter()
    got = catalog.search(**kwargs)
    first = time.perf_counter() - t
    t = time.perf_counter()
    again = catalog.search(**kwargs)
    second = time.perf_counter() - t
    assert [i.id for i in got.items()] == expected and len(expected) > 0
    assert [i.id for i in again.items()] == expected
    # hits come back as whole items, hrefs included
    first_item = next(iter(got.items()))
    assert first_item.assets["red"].href == f"s3://b/{int(first_item.id[3:])}/red.tif"
    # measured: open 0.2 s, first search 0.4 s (columns and geometries built once), then ~7 ms
    assert opened < 5 and first < 5 and second < 0.25, (opened, first, second)
    # descending: the cloudiest first, ties by id descending (pgstac's tie-break)
    top = max(d["properties"]["eo:cloud_cover"] for d in items)
    assert [i.id for i in catalog.search(max_items=1, sortby="-eo:cloud_cover").items()] == \
        [max(d["id"] for d in items if d["properties"]["eo:cloud_cover"] == top)]


def test_refusals_are_one_clear_line():
    catalog = EmbeddedCatalog(small_items())
    with pytest.raises(StacchipError, match="not supported") as e:
        catalog.search(query={"platform": {"in": ["x"]}})
    assert "\n" not in str(e.value)
    with pytest.raises(StacchipError, match="does not support"):
        catalog.search(filter={"op": "=", "args": [{"property": "n"}, 1]})
