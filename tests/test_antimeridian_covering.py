"""The bbox covering of chips that cross the antimeridian (issue 19): every GeoParquet reader's
plain box test finds them, the project's own filters stay exact.

Index: the real Sentinel-2 tile T01WCP (UTM zone 1 over Chukotka, 1764 chips, 44 of them
crossing 180 degrees; latitudes 65.67 to 66.71)."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import shapely
from catalogs_helpers import load
from test_catalogs_antimeridian import T01WCP

from stacchip_core import Indexer
from stacchip_core.core.index import covering, write_index
from stacchip_core.io.catalog import EmbeddedCatalog
from stacchip_core.training.prechip import ChipFilter

EAST_OF_LINE = (179.5, 65.0, 180.0, 67.0)  # the western parts of crossing chips lie here
WEST_OF_LINE = (-180.0, 65.0, -179.5, 67.0)  # and their eastern parts here
FAR_AWAY = (10.0, 65.0, 20.0, 67.0)  # the same latitudes in Scandinavia: no chip of the tile


@pytest.fixture(scope="module")
def chukotka(tmp_path_factory):
    table = Indexer(load(T01WCP), stats=False).create_index()
    path = write_index(table, tmp_path_factory.mktemp("cover") / "index.parquet")
    geoms = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
    ids = np.asarray(table["chipid"].to_pylist(), dtype=object)
    crossing = set(ids[shapely.get_type_id(geoms) == 6])
    assert len(crossing) == 44
    return path, table, geoms, ids, crossing


def meeting(geoms, ids, box) -> set[str]:
    """The chips whose footprint meets ``box``: the exact answer, by geometry."""
    return set(ids[shapely.intersects(geoms, shapely.box(*box))])


def test_crossing_chips_are_covered_by_every_longitude(chukotka):
    path, table, geoms, _ids, _crossing = chukotka
    b = table["bbox"].combine_chunks()
    cover = np.stack([b.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], axis=1)
    multi = shapely.get_type_id(geoms) == 6
    assert (cover[:, 0] <= cover[:, 2]).all()  # no row has xmin > xmax any more
    np.testing.assert_array_equal(cover[multi][:, [0, 2]], np.tile([-180.0, 180.0], (44, 1)))
    # latitudes, and every chip that does not cross, keep the geometry's own bounds
    parts = shapely.bounds(geoms)
    np.testing.assert_array_equal(cover[~multi], parts[~multi])
    np.testing.assert_array_equal(cover[:, [1, 3]], parts[:, [1, 3]])
    # the file's bbox is the union of the coverings, as the column statistics say
    meta = json.loads(pq.read_schema(path).metadata[b"geo"])["columns"]["geometry"]
    assert meta["bbox"] == [-180.0, float(cover[:, 1].min()), 180.0, float(cover[:, 3].max())]
    assert meta["geometry_types"] == ["Polygon", "MultiPolygon"]
    stats = pq.ParquetFile(path).metadata.row_group(0)
    names = [stats.column(i).path_in_schema for i in range(stats.num_columns)]
    xmin, xmax = (stats.column(names.index(f"bbox.{k}")).statistics for k in ("xmin", "xmax"))
    assert (xmin.min, xmax.max) == (-180.0, 180.0)
    # the geometries stay split at 180 degrees (RFC 7946)
    assert (shapely.bounds(shapely.get_parts(geoms[multi]))[:, [0, 2]] <= 180).all()
    assert shapely.bounds(geoms[multi])[:, 0].min() == -180.0


def test_covering_of_rfc7946_bounds():
    bounds = np.array(
        [[179.5, 65.0, -179.5, 66.0], [10.0, 1.0, 11.0, 2.0], [-180.0, 80.0, 180.0, 90.0]]
    )
    np.testing.assert_array_equal(
        covering(bounds), [[-180, 65, 180, 66], [10, 1, 11, 2], [-180, 80, 180, 90]]
    )
    assert bounds[0, 0] == 179.5  # the input is not changed


def _geopandas(path, box):
    import geopandas

    return set(geopandas.read_parquet(path, bbox=box)["chipid"])


def _duckdb(path, box):
    import duckdb

    xmin, ymin, xmax, ymax = box
    rows = duckdb.sql(
        f"SELECT chipid FROM read_parquet('{path}') WHERE bbox.xmin <= {xmax} AND "
        f"bbox.xmax >= {xmin} AND bbox.ymin <= {ymax} AND bbox.ymax >= {ymin}"
    ).fetchall()
    return {r[0] for r in rows}


def _pyarrow(path, box):
    xmin, ymin, xmax, ymax = box
    f = ((ds.field("bbox", "xmin") <= xmax) & (ds.field("bbox", "xmax") >= xmin)
         & (ds.field("bbox", "ymin") <= ymax) & (ds.field("bbox", "ymax") >= ymin))
    return set(ds.dataset(path).to_table(columns=["chipid"], filter=f)["chipid"].to_pylist())


@pytest.mark.parametrize(
    "reader", [_geopandas, _duckdb, _pyarrow], ids=["geopandas", "duckdb", "pyarrow"]
)
@pytest.mark.parametrize(
    "box", [EAST_OF_LINE, WEST_OF_LINE], ids=["east-of-180", "west-of-minus-180"]
)
def test_naive_readers_find_every_crossing_chip(chukotka, reader, box):
    path, _table, geoms, ids, crossing = chukotka
    found = reader(path, box)
    assert crossing <= found  # all 44, on both sides of the line
    exact = meeting(geoms, ids, box)
    assert exact <= found  # and every other chip that meets the box
    assert crossing <= exact  # (each crossing chip does meet both boxes)


@pytest.mark.parametrize("box", [EAST_OF_LINE, WEST_OF_LINE, FAR_AWAY, (179.9, 66.0, 180.0, 66.1),
                                 (-180.0, 66.5, -179.0, 67.0), (170.0, 65.0, 175.0, 67.0)])
def test_chip_filter_answers_exactly(chukotka, box):
    _path, table, geoms, ids, _crossing = chukotka
    kept = ChipFilter(max_nodata=1.0, bbox=box).apply(table)
    assert set(kept["chipid"].to_pylist()) == meeting(geoms, ids, box)
    assert kept["chipid"].to_pylist() == [
        i for i in ids if i in meeting(geoms, ids, box)
    ]  # order kept


def test_chip_filter_far_away_drops_what_naive_readers_return(chukotka):
    path, table, *_ = chukotka
    assert len(_duckdb(path, FAR_AWAY)) == 44  # a box test returns the crossing chips ...
    assert (
        len(ChipFilter(max_nodata=1.0, bbox=FAR_AWAY).apply(table)) == 0
    )  # the project's filter none


def test_chip_filter_is_exact_on_indexes_written_with_west_greater_than_east(chukotka):
    """Indexes written before this covering have RFC 7946 bounds in the covering column."""
    _path, table, geoms, ids, _crossing = chukotka
    bounds = shapely.bounds(geoms)
    multi = shapely.get_type_id(geoms) == 6
    old = bounds.copy()  # west > east as the grid wrote them: the parts' inner edges
    parts_b = [shapely.bounds(shapely.get_parts(g)) for g in geoms[multi]]
    old[multi, 0] = [p[:, 0].max() for p in parts_b]
    old[multi, 2] = [p[:, 2].min() for p in parts_b]
    assert (old[multi, 0] > old[multi, 2]).all()
    fields = [pa.array(old[:, i]) for i in range(4)]
    legacy = table.set_column(
        table.schema.get_field_index("bbox"),
        "bbox",
        pa.StructArray.from_arrays(fields, names=["xmin", "ymin", "xmax", "ymax"]),
    )
    for box in (EAST_OF_LINE, WEST_OF_LINE, FAR_AWAY):
        kept = ChipFilter(max_nodata=1.0, bbox=box).apply(legacy)
        assert set(kept["chipid"].to_pylist()) == meeting(geoms, ids, box)


@pytest.mark.parametrize(
    "box, found",
    [
        (EAST_OF_LINE, True),
        (WEST_OF_LINE, True),
        (FAR_AWAY, False),
        ((-179.5, 60.0, -178.0, 65.0), False),
    ],
)
def test_embedded_catalog_finds_items_that_cross_the_line(tmp_path, box, found):
    shutil.copy(T01WCP, tmp_path / "item.json")
    item = load(T01WCP)
    assert (
        item["bbox"][0] > item["bbox"][2]
    )  # the catalog's own RFC 7946 bbox: [178.47, 65.67, -178.97, 66.71]
    catalog = EmbeddedCatalog.from_path(tmp_path)
    hits = [i.id for i in catalog.search(bbox=box).items()]
    assert hits == ([item["id"]] if found else [])
    hits = [i.id for i in catalog.search(intersects=shapely.box(*box)).items()]
    assert hits == ([item["id"]] if found else [])
