import pyarrow.parquet as pq
import rasterio

from conftest import run_cli


def test_demo_runs_the_whole_job_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STACCHIP_LINZ_SOURCE", raising=False)
    r = run_cli("-q", "demo", "-o", "demo")  # relative, as in the README
    assert r.returncode == 0, r.stderr
    table = pq.read_table(tmp_path / "demo" / "bucket" / "merged.parquet")
    platforms = table["platform"].to_pylist()
    items = {p: len({i for i, q in zip(table["item_id"].to_pylist(), platforms) if q == p}) for p in set(platforms)}
    # by the archive's construction: S2 sample 0 -> 6 items (2 years x 3 quarters under the cloud
    # limit), Landsat 4 quarters per level, NAIP latest + one older, LINZ 10 of 12 tiles,
    # Sentinel-1 the one item over the tile in the drawn quarter, MODIS one per drawn month of 2018
    assert items == {"sentinel-2-l2a": 6, "landsat-c2l2-sr": 4, "landsat-c2l1": 4, "naip": 2, "linz": 10,
                     "sentinel-1-rtc": 1, "modis": 4}
    assert platforms.count("naip") == 8 and platforms.count("linz") == 10
    index_files = list((tmp_path / "demo" / "bucket" / "index").rglob("*.parquet"))
    assert len(index_files) == 31
    for item_dir in (tmp_path / "demo" / "bucket" / "sentinel-2-l2a").iterdir():
        assert (item_dir / "stac_item.json").exists()
    for platform in items:
        with rasterio.open(tmp_path / "demo" / "previews" / f"{platform}.png") as ds:
            assert ds.count == 3
    assert "sentinel-2-l2a" in r.stdout and "cloud mean" in r.stdout and "bucket:" in r.stdout
