"""Items without projection metadata read their grid from the finest raster's header.

Item: tests/data/linz-BQ25_10000_0305.json (LINZ topo-imagery: no proj:* fields at all), its
`visual` asset a synthetic RGB COG of the 1:10k sheet in NZTM2000 (4.8 x 7.2 km at 1.2 m)."""

import json
import logging

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from catalogs_helpers import load, pattern, sparse_tiff
from conftest import LINZ_ITEM

from stacchip_core import Indexer
from stacchip_core.core.chipper import Chipper
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.headers import item_grid
from stacchip_core.core.indexer import load_item
from stacchip_core.errors import ProjectionError

RES = 1.2
SHAPE = (6000, 4000)  # 7200 m x 4800 m


@pytest.fixture(scope="module")
def linz(tmp_path_factory):
    item = load(LINZ_ITEM)
    # the sheet's NZTM corner from the item's own footprint
    lon, lat = np.array(item["geometry"]["coordinates"][0]).T
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:2193", always_xy=True).transform(lon, lat)
    left, top = round(min(x) / 10) * 10, round(max(y) / 10) * 10
    transform = Affine(RES, 0, left, 0, -RES, top)
    rgb = np.stack([pattern(256, 256, s, np.uint8) for s in range(3)])
    path = sparse_tiff(
        tmp_path_factory.mktemp("linz") / "BQ25_10000_0305.tiff",
        SHAPE,
        transform,
        "EPSG:2193",
        "uint8",
        {(256, 512): rgb},
        nodata=None,
        count=3,
    )
    item["assets"]["visual"]["href"] = str(path)
    return item, transform, rgb


def test_grid_from_the_header(linz, caplog):
    item, transform, _ = linz
    with caplog.at_level(logging.INFO, logger="stacchip_core.core.headers"):
        grid = item_grid(load_item(item))
    assert grid.shape == SHAPE and grid.transform == transform and grid.crs.to_epsg() == 2193
    assert "no projection metadata: reading the header of asset 'visual'" in caplog.text
    # footprints land on the item's own footprint
    geoms, _ = grid.footprints()
    assert shapely.from_geojson(json.dumps(item["geometry"])).buffer(1e-4).contains(
        shapely.union_all(geoms))


def test_the_grid_math_takes_the_header_it_is_given_and_reads_nothing(linz):
    item, transform, _ = linz
    loaded = load_item(item)
    loaded.assets["visual"].href = "/nonexistent/never-read.tiff"  # a read would fail
    grid = ChipGrid.from_item(loaded, header=(SHAPE, transform, pyproj.CRS.from_epsg(2193)))
    assert grid.shape == SHAPE and grid.transform == transform and grid.crs.to_epsg() == 2193
    with pytest.raises(
        ProjectionError, match="has no projection metadata .*core.headers.item_grid"
    ):
        ChipGrid.from_item(loaded)


def test_chips_and_stats_of_an_item_without_projection(linz):
    item, _, rgb = linz
    with Chipper(item, platform="linz") as chipper:
        np.testing.assert_array_equal(chipper.chip(2, 1)["visual"], rgb)
    table = Indexer(item, platform="linz", chip_max_nodata=1.0).create_index().to_pylist()
    assert len(table) == (6000 // 256) * (4000 // 256)
    # LINZ nodata: band 1 == 0; only chip (2, 1) is written, every other tile reads 0
    by_xy = {(r["chip_index_x"], r["chip_index_y"]): r["nodata_percentage"] for r in table}
    assert by_xy.pop((2, 1)) == pytest.approx(float((rgb[0] == 0).mean()), abs=1e-7)
    assert set(by_xy.values()) == {1.0}


def test_unreadable_header_is_one_clear_line():
    with pytest.raises(
        ProjectionError, match=r"has no projection metadata and asset 'visual' cannot be read"
    ):
        item_grid(load_item(load(LINZ_ITEM)))
