
import numpy as np
import pyproj
import pystac
import pytest
from affine import Affine
from conftest import LANDSAT_ITEM, LINZ_ITEM, NAIP_ITEM, S2_ITEM, TEST_ITEM, load

from stacchip_core import ChipGrid, ProjectionError
from stacchip_core.core.grid import item_crs


def item(path) -> pystac.Item:
    return pystac.Item.from_dict(load(path))


@pytest.mark.parametrize(
    "path, shape, res, chips",
    [
        (S2_ITEM, (10980, 10980), 10, (42, 42)),
        (LANDSAT_ITEM, (8271, 8331), 30, (32, 32)),
        (NAIP_ITEM, (12666, 9704), 0.6, (37, 49)),
        (TEST_ITEM, (800, 1000), 1, (3, 3)),
    ],
)
def test_grid_of_real_items(path, shape, res, chips):
    grid = ChipGrid.from_item(item(path), 256)
    assert grid.shape == shape
    assert grid.resolution == res
    assert (grid.x_size, grid.y_size) == chips
    assert grid.size == chips[0] * chips[1]


def test_s2_shape_and_transform_come_from_the_same_10m_asset():
    # stacchip 0.1 paired the 10980 px shape with the 60 m transform: 6x oversized chips
    grid = ChipGrid.from_item(item(S2_ITEM), 256)
    assert grid.transform == Affine(10, 0, 499980, 0, -10, 6400000)
    polygons, _ = grid.footprints()
    utm = pyproj.Transformer.from_crs("OGC:CRS84", "EPSG:32720", always_xy=True)
    xs, ys = utm.transform(*np.asarray(polygons[0].exterior.coords).T)
    assert max(xs) - min(xs) == pytest.approx(2560, abs=0.01)
    assert max(ys) - min(ys) == pytest.approx(2560, abs=0.01)


def test_footprints_match_pyproj_corner_by_corner():
    grid = ChipGrid.from_item(item(LANDSAT_ITEM), 256)
    polygons, bounds = grid.footprints()
    to_lonlat = pyproj.Transformer.from_crs("EPSG:3031", "OGC:CRS84", always_xy=True)
    for x, y in [(0, 0), (31, 0), (5, 17), (31, 31)]:
        x0, y0 = 1517085 + 30 * 256 * x, -1811685 - 30 * 256 * y
        x1, y1 = x0 + 30 * 256, y0 - 30 * 256
        expected = [
            to_lonlat.transform(px, py)
            for px, py in [(x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0)]
        ]
        ring = np.asarray(polygons[y * grid.x_size + x].exterior.coords)
        np.testing.assert_allclose(ring, expected, rtol=0, atol=1e-9)
        exp = np.asarray(expected)
        np.testing.assert_allclose(
            bounds[y * grid.x_size + x],
            [exp[:, 0].min(), exp[:, 1].min(), exp[:, 0].max(), exp[:, 1].max()],
            atol=1e-9,
        )
    assert all(p.exterior.is_ccw for p in polygons[:50])


@pytest.mark.parametrize("key, value", [
    ("proj:code", "EPSG:26919"),
    ("proj:epsg", 26919),
    ("proj:wkt2", pyproj.CRS("EPSG:26919").to_wkt()),
    ("proj:projjson", pyproj.CRS("EPSG:26919").to_json_dict()),
])
def test_projection_from_every_spelling(key, value):
    d = load(TEST_ITEM)
    for k in ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson"):
        d["properties"].pop(k, None)
    d["properties"][key] = value
    assert item_crs(pystac.Item.from_dict(d)).to_epsg() == 26919


def test_projection_at_asset_level():
    d = load(TEST_ITEM)
    props = d["properties"]
    asset = d["assets"]["asset"]
    for k in ("proj:epsg", "proj:shape", "proj:transform"):
        asset[k] = props.pop(k)
    grid = ChipGrid.from_item(pystac.Item.from_dict(d), 100)
    assert (
        grid.crs.to_epsg() == 26919
        and grid.shape == (800, 1000)
        and (grid.x_size, grid.y_size) == (10, 8)
    )


def test_pystac_migrated_item_uses_proj_code():
    it = pystac.Item.from_file(str(LANDSAT_ITEM))  # pystac migrates proj:epsg to proj:code
    assert "proj:epsg" not in it.properties
    assert ChipGrid.from_item(it).crs.to_epsg() == 3031


def test_transform_from_bbox_when_missing():
    d = load(NAIP_ITEM)
    del d["properties"]["proj:transform"]
    grid = ChipGrid.from_item(pystac.Item.from_dict(d))
    assert grid.transform.a == pytest.approx(0.6) and grid.transform.c == pytest.approx(341338.2)


def test_no_projection_is_a_clear_error():
    with pytest.raises(ProjectionError, match="has no projection"):
        ChipGrid.from_item(item(LINZ_ITEM))


def test_degrees_are_refused():
    d = load(TEST_ITEM)
    d["properties"]["proj:epsg"] = 4326
    with pytest.raises(ProjectionError, match="metres"):
        ChipGrid.from_item(pystac.Item.from_dict(d))


def test_chip_fractions_equal_a_per_chip_loop():
    rng = np.random.default_rng(1)
    grid = ChipGrid((1000, 1300), Affine(10, 0, 0, 0, -10, 0), pyproj.CRS("EPSG:32633"), 256)
    for factor in (1, 2, 4):
        mask = rng.random((1000 // factor + 3, 1300 // factor)) < 0.3
        got = grid.chip_fractions(mask, factor)
        b = 256 // factor
        expected = np.array(
            [
                [mask[y * b : (y + 1) * b, x * b : (x + 1) * b].mean() for x in range(5)]
                for y in range(3)
            ]
        )
        assert got.shape == (3, 5)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_chip_fractions_weigh_native_pixels_cut_by_chip_edges():
    # 256 is not a multiple of 6: a 60 m pixel straddles chips and counts by its share in each
    grid = ChipGrid((1000, 1000), Affine(10, 0, 0, 0, -10, 0), pyproj.CRS("EPSG:32633"), 256)
    mask = np.random.default_rng(6).random((200, 200)) < 0.3
    expanded = mask.repeat(6, 0).repeat(6, 1)
    reference = [
        [expanded[y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256].mean() for x in range(3)]
        for y in range(3)
    ]
    np.testing.assert_allclose(grid.chip_fractions(mask, 6), reference, atol=1e-6)
    with pytest.raises(ValueError, match="does not cover"):
        grid.chip_fractions(np.zeros((100, 100), bool), 6)


def test_class_and_bit_masks():
    from stacchip_core import bit_mask, class_mask

    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expected = np.isin(scl, [1, 3, 8, 9, 10])
    np.testing.assert_array_equal(class_mask(scl, [1, 3, 8, 9, 10]), expected)
    np.testing.assert_array_equal(
        class_mask(scl, list(range(1, 11))), (scl >= 1) & (scl <= 10)
    )  # lookup table
    np.testing.assert_array_equal(
        class_mask(scl.astype(np.int32), list(range(1, 11))), (scl >= 1) & (scl <= 10)
    )
    assert not class_mask(scl, []).any()
    qa = np.array([0, 1, 2, 4, 8, 16, 1 << 6, (1 << 3) | (3 << 8)], np.uint16)
    np.testing.assert_array_equal(bit_mask(qa, (1, 3, 4)), [0, 0, 1, 0, 1, 1, 0, 1])
