import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from conftest import run_cli
from provision import ensure_chromium

from stacchip_core.demo.maps import cloud_colours

pytestmark = pytest.mark.slow  # every test here needs the whole demo run (its module fixture)

SCL_CLOUD = (1, 3, 8, 9, 10)  # what the Sentinel-2 plugin counts as cloud


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cwd, linz = os.getcwd(), os.environ.pop("STACCHIP_LINZ_SOURCE", None)
    os.chdir(root)
    try:
        r = run_cli("-q", "demo", "-o", "demo")  # relative, as in the README
    finally:
        os.chdir(cwd)
        os.environ.pop("STACCHIP_LINZ_SOURCE", None)
        if linz is not None:
            os.environ["STACCHIP_LINZ_SOURCE"] = linz
    assert r.returncode == 0, r.stderr
    return root / "demo", r


def test_demo_runs_the_whole_job_offline(demo):
    out, r = demo
    table = pq.read_table(out / "bucket" / "merged.parquet")
    platforms = table["platform"].to_pylist()
    items = {
        p: len({i for i, q in zip(table["item_id"].to_pylist(), platforms) if q == p})
        for p in set(platforms)
    }
    # by the archive's construction: S2 sample 0 -> 6 items (2 years x 3 quarters under the cloud
    # limit), Landsat 4 quarters per level, NAIP latest + one older, LINZ 10 of 12 tiles,
    # Sentinel-1 the one item over the tile in the drawn quarter, MODIS one per drawn month of 2018
    assert items == {
        "sentinel-2-l2a": 6,
        "landsat-c2l2-sr": 4,
        "landsat-c2l1": 4,
        "naip": 2,
        "linz": 10,
        "sentinel-1-rtc": 1,
        "modis": 4,
    }
    assert platforms.count("naip") == 8 and platforms.count("linz") == 10
    # Level 1 chips on the 15 m pan grid: 600 px a side, 2 x 2 chips of 256 per item
    assert platforms.count("landsat-c2l1") == 16 and platforms.count("landsat-c2l2-sr") == 4
    index_files = list((out / "bucket" / "index").rglob("*.parquet"))
    assert len(index_files) == 31
    for item_dir in (out / "bucket" / "sentinel-2-l2a").iterdir():
        assert (item_dir / "stac_item.json").exists()
    for platform in items:
        with rasterio.open(out / "previews" / f"{platform}.png") as ds:
            assert ds.count == 3
    assert "sentinel-2-l2a" in r.stdout and "cloud mean" in r.stdout and "bucket:" in r.stdout
    assert f"indexed:  {len(table)} chips of 31 items" in r.stdout and "chips/s" in r.stdout
    # 8 previewed chips of linz, naip, S2, MODIS and Landsat L1 (16 chips: its 15 m grid),
    # all 4 of Landsat L2 and S1
    assert "read:     48 chips" in r.stdout
    # the stacks place (issue 21): 4 six-step Sentinel-2 series and 4 S2 + S1 + Landsat stacks
    assert (
        "stacks:   4 time series (6 steps previewed), 4 sentinel-2-l2a + sentinel-1-rtc + "
        "landsat-c2l2-sr"
        in r.stdout
    )
    assert (out / "previews" / "stack_series.png").exists() and (
        out / "stacks" / "pairs.parquet"
    ).exists()


DEMO_PLATFORMS = ["sentinel-2-l2a", "landsat-c2l2-sr", "landsat-c2l1", "naip", "linz",
                  "sentinel-1-rtc", "modis"]


@pytest.mark.parametrize("platform", DEMO_PLATFORMS)
def test_every_demo_source_prechips(demo, tmp_path, platform):
    """Each source of the demo's index cuts into cubes with the platform's bands, no chip
    failing; the cubes' pixels are the source files' (Landsat L1: pan on its 15 m grid, the
    30 m bands expanded 2x)."""
    from stacchip_core.plugins import get_platform

    out, _ = demo
    r = run_cli("-q", "prechip", out / "bucket" / "merged.parquet", tmp_path, "--platform",
                platform, "--max-nodata", "1", "--cube-size", "2", "--all", "--scheduler", "sync")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(next((tmp_path / "_runs").glob("prechip-*.json")).read_text())
    results = [t["result"] for t in report["tasks"]]
    assert [t["status"] for t in report["tasks"]] == ["done"] * len(results) and results
    assert all(res["failed"] == [] and res["failed_chips"] == [] for res in results)
    rows = {
        row["chipid"]: row
        for row in pq.read_table(out / "bucket" / "merged.parquet").to_pylist()
        if row["platform"] == platform
    }
    names = [b.name for b in get_platform(platform).bands]
    cubes = sorted((tmp_path / "v1" / platform).glob("cube_*.npz"))
    assert len(cubes) == len(results)
    for path in cubes:
        cube = np.load(path)
        assert cube["bands"].tolist() == names
        assert cube["pixels"].shape[:2] == (2, len(names))
        assert set(cube["chipids"].tolist()) <= set(rows)
    if platform == "landsat-c2l1":
        cube = np.load(cubes[0])
        row = rows[str(cube["chipids"][0])]
        item = json.loads(Path(row["item_href"]).read_text())
        cs, x, y = row["chip_size"], row["chip_index_x"], row["chip_index_y"]
        with rasterio.open(item["assets"]["pan"]["href"]) as ds:  # 15 m: the chip grid
            pan = ds.read(1, window=((y * cs, (y + 1) * cs), (x * cs, (x + 1) * cs)))
        with rasterio.open(item["assets"]["red"]["href"]) as ds:  # 30 m: half the pixels
            half = cs // 2
            red = ds.read(1, window=((y * half, (y + 1) * half), (x * half, (x + 1) * half)))
        np.testing.assert_array_equal(cube["pixels"][0, names.index("pan")], pan)
        np.testing.assert_array_equal(
            cube["pixels"][0, names.index("red")], np.repeat(np.repeat(red, 2, 0), 2, 1)
        )
        assert (pan > 0).mean() > 0.5


def _outline(mask):
    m = np.pad(mask, 1, mode="edge")
    return mask & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])


@pytest.mark.parametrize("tile", [0, 1, 5])
def test_s2_preview_outlines_the_cloud_mask_and_shows_clouds(demo, tile):
    """Tiles are the cloudiest chips first; in each, magenta is exactly the SCL cloud mask's
    outline, clouds are white, and the printed fraction is the mask's mean."""
    from stacchip_core.demo.previews import GAP, LABEL

    out, _ = demo
    table = pq.read_table(out / "bucket" / "merged.parquet").to_pylist()
    rows = sorted(
        [r for r in table if r["platform"] == "sentinel-2-l2a"],
        key=lambda r: -r["cloud_cover_percentage"],
    )
    row = rows[tile]
    item = json.loads(Path(row["item_href"]).read_text())
    cs, x, y = row["chip_size"], row["chip_index_x"], row["chip_index_y"]
    scl_href = next(a["href"] for k, a in item["assets"].items() if k.lower() == "scl")
    with rasterio.open(scl_href) as ds:  # 20 m: half the chip's pixels
        scl = ds.read(
            1, window=((y * cs // 2, (y + 1) * cs // 2), (x * cs // 2, (x + 1) * cs // 2))
        )
    scl = np.repeat(np.repeat(scl, 2, 0), 2, 1)
    mask = np.isin(scl, SCL_CLOUD)
    assert mask.mean() == pytest.approx(row["cloud_cover_percentage"], abs=1e-6)
    with rasterio.open(out / "previews" / "sentinel-2-l2a.png") as ds:
        png = ds.read()
    r, c = divmod(tile, 4)
    r0, c0 = GAP + r * (cs + LABEL + GAP), GAP + c * (cs + GAP)
    pix = png[:, r0:r0 + cs, c0:c0 + cs]
    magenta = (pix[0] == 255) & (pix[1] == 0) & (pix[2] == 255)
    np.testing.assert_array_equal(magenta, _outline(mask))
    opaque = np.isin(scl, (8, 9)) & ~_outline(mask)
    assert opaque.sum() > 100 and (pix[:, opaque] >= 250).all()  # clouds are drawn white
    clear = ~mask & (scl != 0)
    assert (pix[:, clear].min(axis=0) >= 250).mean() < 0.02  # and the land is not


def test_index_map_png_shows_every_cloud_level(demo):
    out, _ = demo
    table = pq.read_table(out / "bucket" / "merged.parquet")
    with rasterio.open(out / "previews" / "index_map.png") as ds:
        png = ds.read()[:3]
    found = {tuple(int(v) for v in png[:, i, j]) for i, j in zip(*np.nonzero(png[0] >= 0))}
    for colour in set(cloud_colours(table["cloud_cover_percentage"].to_numpy())):
        rgb = tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))
        assert rgb in found, colour


def test_index_map_html_renders_the_chips_offline_in_chromium(demo, tmp_path):
    out, _ = demo
    chromium = ensure_chromium()
    page = out / "previews" / "index_map.html"
    text = page.read_text()
    assert (
        "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        and "https://" not in text
    )
    table = pq.read_table(out / "bucket" / "merged.parquet")
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,700",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.stdout.count('class="chip"') == len(table)
    shot = tmp_path / "map.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with rasterio.open(shot) as ds:
        pixels = ds.read()[:3].reshape(3, -1).T
    # the first view is the S2 tile; where chips of several dates overlap, the cloudiest is on top
    s2 = table.filter(np.asarray(table["platform"].to_pylist()) == "sentinel-2-l2a")
    top = {}
    for g, cloud in zip(shapely.from_wkb(s2["geometry"].to_numpy(zero_copy_only=False)),
                        s2["cloud_cover_percentage"].to_numpy()):
        top[g.wkb] = max(cloud, top.get(g.wkb, -1.0))
    colours = {
        tuple(int(c[k : k + 2], 16) for k in (1, 3, 5))
        for c in cloud_colours(np.array(list(top.values())))
    }
    for rgb in colours:
        assert (pixels == rgb).all(axis=1).sum() > 2000, rgb


def test_every_label_character_has_a_glyph():
    """The built-in preview font draws every character of the labels the demo writes: each
    platform's name, ISO dates and fractions (a missing glyph would draw as a blank)."""
    from stacchip_core.demo.previews import text_mask
    from stacchip_core.plugins import platforms

    labels = [*platforms(), "2023-02-04", "cloud 0.13", "nodata 0.05", "s2 + s1"]
    chars = {ch for label in labels for ch in label if ch != " "}
    blank = sorted(ch for ch in chars if not text_mask(ch, 20).any())
    assert blank == []
