"""Property-based tests of the grid math (stacchip_core/core/grid.py; issue 19): random CRSs
(UTM zones, the zones either side of 180 degrees, polar stereographic north and south, web
mercator, equal-area grids, MODIS sinusoidal), origins anywhere in each CRS's area of use,
pixel sizes, shapes and chip sizes. Every chip's centre, projected by pyproj on its own, lies
in its footprint (which also checks the row-major order), counts follow the shape, the
footprints are valid and counter-clockwise within lon/lat, antimeridian chips are split
with RFC 7946 bounds and covered by -180..180, a pole's chip goes round it.

Profiles: tests/fuzz_profiles.py (HYPOTHESIS_PROFILE=long for the campaign in docs/testing.md).
"""

import math

import fuzz_profiles  # noqa: F401 - registers and loads the profile
import numpy as np
import pyproj
import shapely
from affine import Affine
from hypothesis import assume, given, note
from hypothesis import strategies as st

from stacchip_core.core.grid import CRS84, ChipGrid
from stacchip_core.core.index import covering
from stacchip_core.demo.synthetic import MODIS_SINUSOIDAL

# (CRS, lon/lat box to draw the grid's origin from): each CRS's area of use, the UTM zones
# either side of 180 degrees drawn up to their edges and beyond (zone 1 reaches past -180
# far from the equator), polar grids up to the pole
CRSS = [
    ("EPSG:32601", (-180.0, 0.0, -170.0, 84.0)), ("EPSG:32660", (170.0, 0.0, 180.0, 84.0)),
    ("EPSG:32701", (-180.0, -80.0, -170.0, 0.0)), ("EPSG:32760", (170.0, -80.0, 180.0, 0.0)),
    ("EPSG:32633", (12.0, 0.0, 18.0, 84.0)), ("EPSG:32720", (-66.0, -80.0, -60.0, 0.0)),
    ("EPSG:3031", (-180.0, -90.0, 180.0, -60.0)), ("EPSG:3413", (-180.0, 60.0, 180.0, 90.0)),
    ("EPSG:3995", (-180.0, 60.0, 180.0, 90.0)), ("EPSG:3857", (-180.0, -80.0, 180.0, 80.0)),
    ("EPSG:6933", (-180.0, -80.0, 180.0, 80.0)), ("EPSG:3035", (-30.0, 30.0, 40.0, 80.0)),
    (MODIS_SINUSOIDAL, (-179.0, -80.0, 179.0, 80.0)),
]
PIXELS = [0.5, 10.0, 20.0, 30.0, 60.0, 231.65635826395828, 463.31271652791656, 1000.0]
CHIP_SIZES = [1, 7, 16, 64, 100, 255, 256, 512]
_TO_CRS: dict = {}
_TO_LONLAT: dict = {}


def to_crs(crs: str) -> pyproj.Transformer:
    if crs not in _TO_CRS:
        _TO_CRS[crs] = pyproj.Transformer.from_crs(CRS84, crs, always_xy=True)
        _TO_LONLAT[crs] = pyproj.Transformer.from_crs(crs, CRS84, always_xy=True)
    return _TO_CRS[crs]


@st.composite
def grids(draw, crss=CRSS) -> ChipGrid:
    crs, (west, south, east, north) = draw(st.sampled_from(crss))
    lon = draw(st.floats(west, east, allow_nan=False))
    lat = draw(st.floats(south, north, allow_nan=False))
    x0, y0 = to_crs(crs).transform(lon, lat)
    assume(math.isfinite(x0) and math.isfinite(y0))
    px = draw(st.sampled_from(PIXELS) | st.floats(0.25, 1000.0, allow_nan=False))
    cs = draw(st.sampled_from(CHIP_SIZES))
    nx, ny = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    # real chips: at most 300 km a side (a MODIS chip of 256 px is 119 km), scenes of a few
    # thousand km at most
    assume(px * cs <= 3e5 and px * cs * max(nx, ny) <= 3e6)
    shape = (ny * cs + draw(st.integers(0, cs - 1)), nx * cs + draw(st.integers(0, cs - 1)))
    # the origin anywhere from the drawn point up to one scene's width away
    dx = draw(st.floats(-1.0, 0.0)) * shape[1] * px
    dy = draw(st.floats(0.0, 1.0)) * shape[0] * px
    transform = Affine(px, 0.0, x0 + dx, 0.0, -px, y0 + dy)
    note(f"crs={crs} shape={shape} transform={tuple(transform)[:6]} chip_size={cs}")
    return ChipGrid(shape, transform, pyproj.CRS(crs), cs)


def to_lonlat(grid: ChipGrid) -> pyproj.Transformer:
    if grid.crs.srs not in _TO_LONLAT:
        _TO_LONLAT[grid.crs.srs] = pyproj.Transformer.from_crs(grid.crs, CRS84, always_xy=True)
    return _TO_LONLAT[grid.crs.srs]


def chip_centres(grid: ChipGrid) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of every chip's centre, row-major, projected by pyproj point by point."""
    cs = grid.chip_size
    ys, xs = np.divmod(np.arange(grid.size), grid.x_size)
    cx, cy = grid.transform @ ((xs + 0.5) * cs, (ys + 0.5) * cs)
    lon, lat = to_lonlat(grid).transform(np.asarray(cx), np.asarray(cy))
    return np.asarray(lon), np.asarray(lat)


def projected_domain(grid: ChipGrid) -> bool:
    """Whether every chip corner projects to a finite lon/lat (outside it the CRS has no
    answer: a UTM zone 3,000 km off its meridian)."""
    cs = grid.chip_size
    rows, cols = np.mgrid[0 : grid.y_size + 1, 0 : grid.x_size + 1].astype(np.float64) * cs
    x, y = grid.transform @ (cols, rows)
    lon, lat = to_lonlat(grid).transform(np.asarray(x), np.asarray(y))
    return bool(np.isfinite(lon).all() and np.isfinite(lat).all())


@given(grids())
def test_counts_and_row_major_ids(grid):
    rows, cols = grid.shape
    assert (grid.x_size, grid.y_size) == (cols // grid.chip_size, rows // grid.chip_size)
    assert grid.size == grid.x_size * grid.y_size >= 1
    last = grid.window(grid.x_size - 1, grid.y_size - 1)
    assert last[0] + last[2] <= cols and last[1] + last[3] <= rows  # edge chips stay inside
    assume(projected_domain(grid))
    geoms, bounds = grid.footprints()
    assert geoms.shape == (grid.size,) and bounds.shape == (grid.size, 4)


@given(grids())
def test_footprints_hold_their_chip_centres(grid):
    assume(projected_domain(grid))
    geoms, _ = grid.footprints()
    lon, lat = chip_centres(grid)
    assume(np.isfinite(lon).all() and np.isfinite(lat).all())
    points = shapely.points(lon, lat)
    # chip i's own centre, so the ids are row-major too; 1e-7 degrees (1 cm) for centres on 180
    assert (shapely.distance(geoms, points) <= 1e-7).all(), np.flatnonzero(
        shapely.distance(geoms, points) > 1e-7
    )
    assert shapely.is_valid(geoms).all()
    parts = shapely.get_parts(geoms)
    assert shapely.is_ccw(shapely.get_exterior_ring(parts)).all()
    coords = shapely.get_coordinates(geoms)
    assert (np.abs(coords[:, 0]) <= 180).all() and (np.abs(coords[:, 1]) <= 90).all()


@given(grids())
def test_bounds_and_covering(grid):
    assume(projected_domain(grid))
    geoms, bounds = grid.footprints()
    crossing = bounds[:, 0] > bounds[:, 2]
    multi = shapely.get_type_id(geoms) == 6
    np.testing.assert_array_equal(multi, crossing)  # split chips, and only they, have west > east
    plain = ~crossing
    np.testing.assert_allclose(bounds[plain], shapely.bounds(geoms[plain]), atol=1e-9)
    if crossing.any():
        part_bounds = shapely.bounds(shapely.get_parts(geoms[crossing]))
        assert (
            np.isin(part_bounds[:, [0, 2]], [-180.0, 180.0]).any(axis=1).all()
        )  # each touches the line
    cover = covering(bounds)
    assert (cover[:, 0] <= cover[:, 2]).all()
    geom_bounds = shapely.bounds(geoms)
    assert (cover[:, 0] <= geom_bounds[:, 0] + 1e-9).all() and (
        cover[:, 2] >= geom_bounds[:, 2] - 1e-9
    ).all()
    assert (cover[:, 1] <= geom_bounds[:, 1] + 1e-9).all() and (
        cover[:, 3] >= geom_bounds[:, 3] - 1e-9
    ).all()


POLAR = [c for c in CRSS if c[0] in ("EPSG:3031", "EPSG:3413", "EPSG:3995")]


@st.composite
def pole_grids(draw) -> ChipGrid:
    """Polar grids drawn round their pole: the pole falls on some chip (or an edge)."""
    crs, _ = draw(st.sampled_from(POLAR))
    px = draw(st.sampled_from([100.0, 500.0, 1000.0, 5000.0]))
    cs = draw(st.sampled_from([16, 64, 256]))
    nx, ny = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    assume(px * cs <= 3e5)
    width, height = nx * cs * px, ny * cs * px
    pole_x, pole_y = to_crs(crs).transform(0.0, 90.0 if crs != "EPSG:3031" else -90.0)
    x0 = pole_x - draw(st.floats(0.0, 1.0)) * width
    y0 = pole_y + draw(st.floats(0.0, 1.0)) * height
    note(f"crs={crs} px={px} cs={cs} nx={nx} ny={ny} origin=({x0}, {y0})")
    return ChipGrid((ny * cs, nx * cs), Affine(px, 0.0, x0, 0.0, -px, y0), pyproj.CRS(crs), cs)


# a pole this close to a chip edge (in pixels) is on it: the chips either side touch the pole
# rather than one holding it (pyproj's round trip of a pole-centred origin lands within 1e-9)
ON_EDGE = 1e-3


@given(pole_grids())
def test_pole_chips_go_round_their_pole(grid):
    geoms, bounds = grid.footprints()
    north = grid.crs.to_epsg() != 3031
    pole = shapely.Point(0.0, 90.0 if north else -90.0)
    # where the pole falls on the grid, in pixels, by pyproj on its own
    col, row = ~grid.transform @ to_crs(grid.crs.srs).transform(0.0, pole.y)
    cs = grid.chip_size
    ys, xs = np.divmod(np.arange(grid.size), grid.x_size)
    near = np.flatnonzero(  # chips whose pixels, grown by ON_EDGE, hold the pole
        (xs * cs - ON_EDGE <= col) & (col <= (xs + 1) * cs + ON_EDGE)
        & (ys * cs - ON_EDGE <= row) & (row <= (ys + 1) * cs + ON_EDGE)
    )
    covered = np.flatnonzero(shapely.covers(geoms, pole))
    assert set(covered.tolist()) <= set(near.tolist())  # no chip away from the pole covers it
    on_edge = min(abs(v - round(v / cs) * cs) for v in (col, row)) <= ON_EDGE
    if len(near) == 1 and not on_edge:  # one chip holds the pole: its footprint goes round it
        index = int(near[0])
        assert covered.tolist() == [index]
        assert bounds[index][[0, 2]].tolist() == [-180.0, 180.0]
        assert bounds[index][3 if north else 1] == pole.y
    lon, lat = chip_centres(grid)
    assert (shapely.distance(geoms, shapely.points(lon, lat)) <= 1e-7).all()
    assert shapely.is_valid(geoms).all()
