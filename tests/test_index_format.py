import json

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pyproj
import shapely

from stacchip_core import Indexer, write_index


def test_geoparquet_1_1_readable_by_geopandas_pyarrow_duckdb(synthetic_scenes, tmp_path):
    table = Indexer(str(synthetic_scenes["landsat"]), chip_max_nodata=1.0, chip_size=128).create_index()
    path = write_index(table, tmp_path / "index.parquet")

    meta = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert meta["version"] == "1.1.0" and meta["primary_column"] == "geometry"
    col = meta["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"]
    assert pyproj.CRS.from_json_dict(col["crs"]).equals(pyproj.CRS("OGC:CRS84"))
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]

    gdf = gpd.read_parquet(path)
    assert len(gdf) == len(table) == 4 * 4
    assert gdf.crs.equals(pyproj.CRS("OGC:CRS84"))
    np.testing.assert_allclose(gdf.total_bounds, col["bbox"])
    # geopandas recognises the covering column (it does not surface it as data) ...
    assert "bbox" not in gdf.columns
    # ... which agrees with the geometries
    bbox = pq.read_table(path, columns=["bbox"]).column("bbox").combine_chunks()
    covering = np.stack([bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], axis=1)
    np.testing.assert_allclose(covering, shapely.bounds(gdf.geometry.values))
    # geopandas uses the covering column to filter by bbox
    xmin, ymin, xmax, ymax = gdf.geometry.iloc[0].bounds
    assert len(gpd.read_parquet(path, bbox=(xmin + 1e-6, ymin + 1e-6, xmin + 2e-6, ymin + 2e-6))) >= 1

    con = duckdb.connect()
    assert con.execute(f"select count(*), min(chip_index_x), max(chip_index_y) from '{path}'").fetchall() == [(16, 0, 3)]
    [(chipid, wkb)] = con.execute(f"select chipid, geometry from '{path}' where chipid like '%-1-2'").fetchall()
    assert shapely.from_wkb(bytes(wkb)).equals(gdf.set_index("chipid").geometry.loc[chipid])


def test_write_is_atomic_and_leaves_no_temp_files(synthetic_scenes, tmp_path):
    table = Indexer(str(synthetic_scenes["naip"]), chip_max_nodata=1.0).create_index()
    write_index(table, tmp_path / "a" / "index.parquet")
    write_index(table, tmp_path / "a" / "index.parquet")  # rerun replaces
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["index.parquet"]
