"""Footprints that cross the antimeridian, go round a pole or come from mirroring projections.

Items: tests/data/stactools-S2A_T01WCP_20230625T234624_L2A.json (UTM zone 1 over Chukotka, real,
crossing 180 degrees), the USGS Landsat 9 item in Antarctic polar stereographic (EPSG:3031)."""

import json

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from catalogs_helpers import DATA, load
from conftest import LANDSAT_ITEM, S2_ITEM

from stacchip_core import Indexer
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.index import write_index
from stacchip_core.core.indexer import load_item

T01WCP = DATA / "stactools-S2A_T01WCP_20230625T234624_L2A.json"
NORWAY = (
    15.0,
    68.0,
    31.0,
    71.5,
)  # Finnmark / Troms: lon and lat of Chukotka's chips, but 180 degrees away


def _all_ccw(geoms) -> bool:
    parts = shapely.get_parts(geoms)
    return bool(shapely.is_ccw(shapely.get_exterior_ring(parts)).all())


@pytest.fixture(scope="module")
def chukotka_index(tmp_path_factory):
    table = Indexer(load(T01WCP), stats=False).create_index()
    return write_index(table, tmp_path_factory.mktemp("am") / "index.parquet"), table


def test_crossing_chips_are_split_with_rfc7946_bounds():
    grid = ChipGrid.from_item(load_item(load(T01WCP)))
    geoms, bounds = grid.footprints()
    multi = shapely.get_type_id(geoms) == 6
    crossing = bounds[:, 0] > bounds[:, 2]
    np.testing.assert_array_equal(multi, crossing)
    assert (
        multi.sum() == 44
    )  # one chip per row crosses (44 of 1764: some rows cross twice on their edges)
    assert shapely.is_valid(geoms).all() and _all_ccw(geoms)
    # every part stays within [-180, 180] and touches the antimeridian from its side
    parts = shapely.get_parts(geoms[multi])
    part_bounds = shapely.bounds(parts)
    assert (part_bounds[:, 0] >= -180).all() and (part_bounds[:, 2] <= 180).all()
    assert np.isin(part_bounds[:, [0, 2]], [-180.0, 180.0]).any(axis=1).all()
    # the parts add up to the chip: its area, unwrapped, equals the pyproj corners' polygon
    index = int(np.flatnonzero(multi)[0])
    y, x = divmod(index, grid.x_size)
    col, row = np.array([0, 0, 1, 1]) + x, np.array([0, 1, 1, 0]) + y
    xs, ys = grid.transform @ (col * 256, row * 256)
    lon, lat = pyproj.Transformer.from_crs(grid.crs, "OGC:CRS84", always_xy=True).transform(xs, ys)
    unwrapped = shapely.Polygon(zip(np.where(np.asarray(lon) < 0, np.asarray(lon) + 360, lon), lat))
    assert shapely.area(geoms[index]) == pytest.approx(unwrapped.area, rel=1e-9)
    assert bounds[index][0] == pytest.approx(min(lo for lo in lon if lo > 0))
    assert bounds[index][2] == pytest.approx(max(lo for lo in lon if lo < 0))


def test_index_bbox_query_over_norway_returns_no_chukotka_chip(chukotka_index):
    import geopandas

    path, table = chukotka_index
    meta = json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]
    assert meta["geometry_types"] == ["Polygon", "MultiPolygon"]
    # the file's bbox is the union of the coverings: crossing chips span every longitude
    # (tests/test_antimeridian_covering.py), the latitudes are the tile's
    west, south, east, north = meta["bbox"]
    item_bbox = load(T01WCP)["bbox"]  # the catalog's own: [178.47, 65.67, -178.97, 66.71]
    assert (west, east) == (-180.0, 180.0)
    assert south == pytest.approx(item_bbox[1], abs=0.05) and north == pytest.approx(
        item_bbox[3], abs=0.05
    )
    assert len(geopandas.read_parquet(path, bbox=NORWAY)) == 0
    near = geopandas.read_parquet(path, bbox=(179.0, 65.0, 180.0, 67.0))
    assert (
        0 < len(near) < len(table) and near.intersects(shapely.box(179.0, 65.0, 180.0, 67.0)).all()
    )
    assert len(geopandas.read_parquet(path)) == len(table) == 1764


def test_geo_metadata_stays_polygon_without_crossing():
    table = Indexer(load(S2_ITEM), stats=False, layouts=False).create_index()
    meta = json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]
    assert meta["geometry_types"] == ["Polygon"] and meta["bbox"][0] < meta["bbox"][2]


def test_polar_stereographic_rings_are_counterclockwise():
    # EPSG:3031 mirrors orientation: the corner ring came out clockwise before
    geoms, _ = ChipGrid.from_item(load_item(load(LANDSAT_ITEM))).footprints()
    assert shapely.is_valid(geoms).all() and _all_ccw(geoms)


@pytest.mark.parametrize(
    "crs, pole_lat", [("EPSG:3031", -90.0), ("EPSG:32661", 90.0), ("EPSG:3413", 90.0)]
)
def test_chip_holding_the_pole(crs, pole_lat):
    """A 102.4 km grid round the pole (100 m pixels), the pole at the centre of chip (1, 1)."""
    px, py = pyproj.Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(0.0, pole_lat)
    grid = ChipGrid(
        (1024, 1024), Affine(100, 0, px - 38400, 0, -100, py + 38400), pyproj.CRS(crs), 256
    )
    geoms, bounds = grid.footprints()
    assert shapely.is_valid(geoms).all() and _all_ccw(geoms)
    pole = 1 * grid.x_size + 1
    assert shapely.get_type_id(geoms[pole]) == 3
    np.testing.assert_allclose(bounds[pole][[0, 2]], [-180, 180])
    assert bounds[pole][3 if pole_lat > 0 else 1] == pole_lat
    # it holds points close to the pole at every longitude, and its neighbours do not
    ring = shapely.points(
        np.linspace(-179, 179, 37), np.full(37, pole_lat - np.sign(pole_lat) * 0.01)
    )
    assert shapely.contains(geoms[pole], ring).all()
    others = np.delete(geoms, pole)
    assert not shapely.intersects(others[:, None], ring[None, :]).any()
    # the 180 degree meridian leaves the pole through some chips: those are split
    assert ((bounds[:, 0] > bounds[:, 2]).sum() >= 1) and (
        shapely.get_type_id(geoms) == 6
    ).sum() >= 1
