"""Property-based tests of item JSON -> index (issue 19): random valid items give an index of
exactly their grid's chips; random broken items (keys removed, values of the wrong type or
out of range, anywhere the indexer looks) give an index or ONE typed StacchipError, never
another exception. Through both doors: an item dict (the Python API) and an item file (the
``stacchip index`` command's path).

Profiles: tests/fuzz_profiles.py (HYPOTHESIS_PROFILE=long for the campaign in docs/testing.md).
"""

import json
import math
import tempfile
from pathlib import Path

import fuzz_profiles  # noqa: F401 - registers and loads the profile
import pyproj
from hypothesis import given, note
from hypothesis import strategies as st

from stacchip_core import Indexer, StacchipError

UTM = [f"EPSG:{326 if n else 327}{z:02d}" for z in (1, 2, 33, 59, 60) for n in (True, False)]
CRSS = [*UTM, "EPSG:3031", "EPSG:3413", "EPSG:3857", "EPSG:6933"]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def valid_items(draw) -> dict:
    crs = draw(st.sampled_from(CRSS))
    code = pyproj.CRS(crs).to_epsg()
    proj = draw(
        st.sampled_from(
            [{"proj:epsg": code}, {"proj:code": crs}, {"proj:wkt2": pyproj.CRS(crs).to_wkt()}]
        )
    )
    px = draw(st.sampled_from([10.0, 30.0, 60.0, 500.0]))
    rows, cols = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))
    # origins near the CRS's own centre, where every CRS above projects
    x0 = draw(st.floats(-2e5, 2e5)) + (500000.0 if crs in UTM else 0.0)
    y0 = draw(st.floats(-2e5, 2e5)) + (5e6 if crs.startswith("EPSG:326") else 0.0) + \
        (8e6 if crs.startswith("EPSG:327") else 0.0)
    item_id = draw(st.text(min_size=1, max_size=20))
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        "bbox": [0, 0, 1, 1],
        "properties": {
            "datetime": draw(
                st.sampled_from(["2024-03-11T14:06:36Z", "2020-01-01T00:00:00.5+02:00"])
            ),
            **proj,
            "proj:shape": [rows, cols],
            "proj:transform": [px, 0, x0, 0, -px, y0],
        },
        "links": [],
        "assets": {"data": {"href": "/nonexistent/data.tif", "type": "image/tiff"}},
        **(
            {"collection": draw(st.sampled_from(["sentinel-2-l2a", "naip", "x"]))}
            if draw(st.booleans())
            else {}
        ),
    }


PATHS = [
    ("id",),
    ("type",),
    ("properties",),
    ("properties", "datetime"),
    ("properties", "proj:epsg"),
    ("properties", "proj:code"),
    ("properties", "proj:wkt2"),
    ("properties", "proj:shape"),
    ("properties", "proj:shape", 0),
    ("properties", "proj:shape", 1),
    ("properties", "proj:transform"),
    ("properties", "proj:transform", 0),
    ("properties", "proj:transform", 2),
    ("properties", "proj:transform", 4),
    ("properties", "proj:bbox"),
    ("properties", "start_datetime"),
    ("assets",),
    ("assets", "data"),
    ("assets", "data", "href"),
    ("assets", "data", "proj:shape"),
    ("collection",),
    ("geometry",),
    ("bbox",),
    ("stac_extensions",),
    ("links",),
]
SPECIAL = st.sampled_from(
    [
        None,
        0,
        -1,
        0.0,
        -0.0,
        math.nan,
        math.inf,
        -math.inf,
        2**63,
        1e300,
        "",
        "x",
        "EPSG:4326",
        "EPSG:99999",
        [],
        [0],
        [1, 2, 3],
        [1e9, 1e9],
        [0, 0],
        [-5, 10],
        {},
        True,
        [10, 0, 0, 0, 10, 0],
        [10, 1, 0, 1, -10, 0],
        [10, 0, 0, 0, -20, 0],
    ]
)


def mutate(item: dict, path: tuple, value, delete: bool) -> dict:
    d = json.loads(json.dumps(item))
    node = d
    for step in path[:-1]:
        if (
            isinstance(node, dict)
            and step in node
            or isinstance(node, list)
            and isinstance(step, int)
            and step < len(node)
        ):
            node = node[step]
        else:
            return d
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if delete:
            del node[last]
        else:
            node[last] = value
    return d


@st.composite
def broken_items(draw) -> dict:
    item = draw(valid_items())
    for _ in range(draw(st.integers(1, 3))):
        item = mutate(item, draw(st.sampled_from(PATHS)), draw(SPECIAL | JSON), draw(st.booleans()))
    return item


def index_or_typed_error(item, via_file: bool):
    """The index of ``item``, or the StacchipError it raises; anything else fails the test."""
    try:
        if via_file:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "item.json"
                path.write_text(json.dumps(item, allow_nan=True))
                return Indexer(path, stats=False, layouts=False).create_index()
        return Indexer(item, stats=False, layouts=False).create_index()
    except StacchipError as exc:
        note(f"{type(exc).__name__}: {exc}")
        assert str(exc) and "\n" not in str(exc).strip()  # one line
        return exc


@given(valid_items(), st.booleans())
def test_valid_items_index_every_whole_chip(item, via_file):
    rows, cols = item["properties"]["proj:shape"]
    result = index_or_typed_error(item, via_file)
    if rows < 256 or cols < 256:  # no whole chip: one clear error
        assert isinstance(result, StacchipError) and "no whole chip" in str(result)
        return
    assert not isinstance(result, StacchipError), result
    nx, ny = cols // 256, rows // 256
    assert len(result) == nx * ny
    expected = [f"{item['id']}-{x}-{y}" for y in range(ny) for x in range(nx)]
    assert result["chipid"].to_pylist() == expected


@given(broken_items(), st.booleans())
def test_broken_items_give_an_index_or_one_typed_error(item, via_file):
    note(json.dumps(item, allow_nan=True)[:2000])
    index_or_typed_error(item, via_file)
