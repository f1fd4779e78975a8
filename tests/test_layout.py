"""Layouts: recorded with the index, one request per asset, compact, merged with it."""

import sys
from pathlib import Path

import duckdb
import geopandas
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio

from stacchip_core.core.indexer import Indexer
from stacchip_core.core.layout import decode, encode, record_layouts

sys.path.insert(0, str(Path(__file__).parent))
from rangeserver import RangeServer


def test_layout_matches_gdal(synthetic_scenes):
    ix = Indexer(str(synthetic_scenes["s2"]), stats=False, platform="sentinel-2-l2a")
    table = ix.create_index()
    lays = decode(table["layouts"][0].as_py())
    assert set(table["layouts"].to_pylist()) == {table["layouts"][0].as_py()}  # one value per item
    for lay in lays.values():
        with rasterio.open(lay.href) as ds:
            assert (lay.width, lay.height) == (ds.width, ds.height)
            assert (lay.tile_height, lay.tile_width) == ds.block_shapes[0]
            assert lay.dtype == ds.dtypes[0] and lay.bands == ds.count
            assert lay.transform == (ds.transform.a, ds.transform.c, ds.transform.e, ds.transform.f)
            assert lay.nodata == ds.nodata
            assert lay.size == Path(lay.href).stat().st_size
            # offsets/byte counts as GDAL reports them for the first and last tile
            n = len(lay.offsets)
            tpr = lay.tiles_across
            for i in (0, n - 1):
                y, x = divmod(i, tpr)
                assert (
                    int(ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)) == lay.offsets[i]
                )
                assert int(ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1)) == lay.counts[i]


def test_encode_decode_round_trip(synthetic_scenes):
    ix = Indexer(str(synthetic_scenes["s2"]), stats=False, platform="sentinel-2-l2a")
    blob = ix.asset_layouts()
    lays = decode(blob)
    again = decode(encode(lays.values()))
    for k in lays:
        assert lays[k].scalars() == again[k].scalars()
        np.testing.assert_array_equal(lays[k].offsets, again[k].offsets)


def test_no_layouts_option_and_readers(synthetic_scenes, tmp_path):
    from conftest import run_cli

    out = tmp_path / "i.parquet"
    assert (
        run_cli(
            "index", synthetic_scenes["s2"], "--no-stats", "--platform", "sentinel-2-l2a", "-o", out
        ).returncode
        == 0
    )
    off = tmp_path / "off.parquet"
    assert (
        run_cli(
            "index",
            synthetic_scenes["s2"],
            "--no-stats",
            "--platform",
            "sentinel-2-l2a",
            "--no-layouts",
            "-o",
            off,
        ).returncode
        == 0
    )
    assert pq.read_table(off)["layouts"].null_count == pq.read_table(off).num_rows
    on = pq.read_table(out)
    assert on["layouts"].null_count == 0
    # geopandas and DuckDB still read it; a merge (concatenation) carries the column
    assert len(geopandas.read_parquet(out)) == on.num_rows
    assert duckdb.sql(f"select count(distinct layouts) from '{out}'").fetchall() == [(1,)]
    merged = pa.concat_tables([on, pq.read_table(off)])
    assert merged["layouts"].null_count == on.num_rows


def test_one_request_per_asset_over_http(tmp_path):
    from rasterio.transform import from_origin

    for name in ("a", "b"):
        with rasterio.open(
            tmp_path / f"{name}.tif",
            "w",
            driver="GTiff",
            width=600,
            height=600,
            count=1,
            dtype="uint16",
            crs="EPSG:32633",
            transform=from_origin(0, 0, 10, 10),
            tiled=True,
            compress="deflate",
        ) as ds:
            ds.write(np.ones((1, 600, 600), np.uint16))
    with RangeServer(tmp_path) as srv:
        blob = record_layouts({"a": f"{srv.url}/a.tif", "b": f"{srv.url}/b.tif"})
        assert srv.requests == 2
    assert set(decode(blob)) == {"a", "b"}
