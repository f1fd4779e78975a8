import pyarrow.parquet as pq
import rasterio

from conftest import run_cli


def test_demo_runs_the_whole_job_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("-q", "demo", "-o", "demo")  # relative, as in the README
    assert r.returncode == 0, r.stderr
    table = pq.read_table(tmp_path / "demo" / "bucket" / "merged.parquet")
    counts = {p: table["platform"].to_pylist().count(p) for p in set(table["platform"].to_pylist())}
    # S2: two 1536 px scenes = 2 x 36 chips less those above 50 % nodata; NAIP 1400x1100 -> 5 x 4
    assert counts["naip"] == 20 and counts["linz"] == 20
    assert 0 < counts["sentinel-2-l2a"] <= 72 and 0 < counts["landsat-c2l2-sr"] <= 16
    files = sorted(p.relative_to(tmp_path / "demo" / "bucket").as_posix() for p in (tmp_path / "demo" / "bucket" / "index").rglob("*.parquet"))
    assert files[0] == "index/landsat-c2l2-sr/LC09_L2SR_086107_20240311_20240312_02_T2_SR/index_LC09_L2SR_086107_20240311_20240312_02_T2_SR.parquet"
    assert len(files) == 5
    for platform in counts:
        with rasterio.open(tmp_path / "demo" / "previews" / f"{platform}.png") as ds:
            assert ds.count == 3 and ds.height == 2 * 256 + 4
    assert "sentinel-2-l2a" in r.stdout and "cloud mean" in r.stdout
