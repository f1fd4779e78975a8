import json
import os
import resource
import signal
import subprocess
import sys

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely

from stacchip_core import Indexer, write_index
from stacchip_core.io.files import is_temp


def test_geoparquet_1_1_readable_by_geopandas_pyarrow_duckdb(synthetic_scenes, tmp_path):
    table = Indexer(
        str(synthetic_scenes["landsat"]), chip_max_nodata=1.0, chip_size=128
    ).create_index()
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
    covering = np.stack(
        [bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], axis=1
    )
    np.testing.assert_allclose(covering, shapely.bounds(gdf.geometry.values))
    # geopandas uses the covering column to filter by bbox
    xmin, ymin, _, _ = gdf.geometry.iloc[0].bounds
    assert (
        len(gpd.read_parquet(path, bbox=(xmin + 1e-6, ymin + 1e-6, xmin + 2e-6, ymin + 2e-6))) >= 1
    )

    con = duckdb.connect()
    assert con.execute(
        f"select count(*), min(chip_index_x), max(chip_index_y) from '{path}'"
    ).fetchall() == [(16, 0, 3)]
    [(chipid, wkb)] = con.execute(
        f"select chipid, geometry from '{path}' where chipid like '%-1-2'"
    ).fetchall()
    assert shapely.from_wkb(bytes(wkb)).equals(gdf.set_index("chipid").geometry.loc[chipid])


def test_rewrite_replaces_and_leaves_no_temp_files(synthetic_scenes, tmp_path):
    table = Indexer(str(synthetic_scenes["naip"]), chip_max_nodata=1.0).create_index()
    write_index(table.slice(0, 1), tmp_path / "a" / "index.parquet")
    write_index(table, tmp_path / "a" / "index.parquet")  # rerun replaces
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["index.parquet"]
    assert pq.read_table(tmp_path / "a" / "index.parquet").num_rows == len(table)


WRITER = """
import signal, sys
if sys.argv[3] == "killed":  # Python ignores SIGXFSZ: restore the default, death
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
from stacchip_core import read_index, write_index
write_index(read_index(sys.argv[1]), sys.argv[2])
"""


def _file_size_limit(limit: int):
    def apply():  # a full disk for this process only: a write past ``limit`` bytes fails or kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("before", ["absent", "older index"])
@pytest.mark.parametrize("how", ["killed", "failed"])
def test_a_writer_stopped_midway_never_leaves_a_half_written_index(
    synthetic_scenes, tmp_path, before, how
):
    """A non-atomic writer (open the target, write) stopped half-way leaves a truncated
    target; an atomic one leaves the target as it was (absent, or the older file whole).
    ``killed``: SIGXFSZ ends the process mid-write (no cleanup can run); ``failed``: the
    write fails with EFBIG, as on a full disk."""
    table = Indexer(str(synthetic_scenes["naip"]), chip_max_nodata=1.0).create_index()
    source = write_index(table, tmp_path / "source.parquet")
    size = source.stat().st_size
    target = tmp_path / "out" / "index.parquet"
    if before == "older index":
        write_index(table.slice(0, 1), target)
    old = target.read_bytes() if target.exists() else None
    r = subprocess.run(
        [sys.executable, "-c", WRITER, str(source), str(target), how],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=_file_size_limit(size // 2),
        check=False,
    )
    if how == "killed":
        assert r.returncode == -signal.SIGXFSZ, r.stderr
    else:
        assert r.returncode == 1 and "File too large" in r.stderr, r.stderr
    if old is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == old
    # a killed writer leaves its temporary sibling (half-written, never under the target's
    # name); a failed one removes it
    left = sorted(p for p in target.parent.iterdir() if p != target)
    if how == "killed":
        assert len(left) == 1 and is_temp(left[0]) and left[0].stat().st_size == size // 2
    else:
        assert left == []
    write_index(table, target)  # a rerun publishes the whole file
    assert target.read_bytes() == source.read_bytes()
