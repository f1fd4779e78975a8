"""Each source plugin installs and works alone: a fresh environment with stacchip-core and
that one plugin, running a whole job on the synthetic archive."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from archive_expectations import modis_expected, s1_expected
from conftest import landsat_expected, naip_expected, s2_expected

ROOT = Path(__file__).parents[1]
UV = Path(sys.executable).with_name("uv")

# each test builds a fresh venv and installs into it: 20 s and more each on two shared cores
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("plugin, entry, platform, index, source", [
    ("stacchip-sentinel2", "sentinel2", "sentinel-2-l2a", 0, "mgrs"),
    ("stacchip-landsat", "landsat", "landsat-c2l2-sr", 0, "points"),
    ("stacchip-naip", "naip", "naip", 1, "points"),
    ("stacchip-linz", "linz", "linz", 0, None),
])
def test_plugin_alone(plugin, entry, platform, index, source, archive, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "-q", str(venv)], check=True)
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    str(ROOT), str(ROOT / "plugins" / plugin)], check=True)
    stacchip = venv / "bin" / "stacchip"
    env = {
        "PATH": str(venv / "bin"),
        "STACCHIP_LINZ_SOURCE": str(archive.linz_source),
        "HOME": str(tmp_path),
    }
    info = json.loads(
        subprocess.run(
            [str(stacchip), "plugins", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    assert [row["name"] for row in info] == [entry]
    args = [
        str(stacchip),
        "-q",
        "process",
        platform,
        "--job",
        str(index),
        "--bucket",
        str(tmp_path / "bucket"),
    ]
    if source:
        args += ["--sample", str(getattr(archive, source)), "--stac-api", str(archive.items)]
    r = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    done = [line.split(":")[0] for line in r.stdout.splitlines()]
    expected = {
        "sentinel-2-l2a": s2_expected(archive),
        "landsat-c2l2-sr": landsat_expected("landsat-c2l2-sr"),
        "naip": naip_expected(),
    }.get(platform)
    if expected is not None:
        assert done == expected
    else:
        assert len(done) == 10
    indexes = sorted((tmp_path / "bucket" / "index" / platform).rglob("*.parquet"))
    assert [p.parent.name for p in indexes] == sorted(done)


@pytest.mark.parametrize("plugin, entry, platform, source", [
    ("stacchip-sentinel1", "sentinel1", "sentinel-1-rtc", "mgrs"),
    ("stacchip-modis", "modis", "modis", None),
])
def test_new_source_plugin_alone(plugin, entry, platform, source, archive, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "-q", str(venv)], check=True)
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    str(ROOT), str(ROOT / "plugins" / plugin)], check=True)
    stacchip = venv / "bin" / "stacchip"
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    info = json.loads(
        subprocess.run(
            [str(stacchip), "plugins", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    assert [row["name"] for row in info] == [entry]
    args = [
        str(stacchip),
        "-q",
        "process",
        platform,
        "--job",
        "0",
        "--bucket",
        str(tmp_path / "bucket"),
        "--stac-api",
        str(archive.items),
    ] + (["--sample", str(getattr(archive, source))] if source else [])
    r = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    done = [line.split(":")[0] for line in r.stdout.splitlines()]
    assert done == (s1_expected(0) if platform == "sentinel-1-rtc" else modis_expected())
    indexes = sorted((tmp_path / "bucket" / "index" / platform).rglob("*.parquet"))
    assert [p.parent.name for p in indexes] == sorted(done)


def test_the_0_1_compat_distribution_installs_with_every_source(tmp_path):
    """``stacchip`` (compat/stacchip) brings the 0.1 imports and every source plugin."""
    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "-q", str(venv)], check=True)
    plugins = sorted((ROOT / "plugins").iterdir())
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            str(ROOT),
            *map(str, plugins),
            str(ROOT / "compat" / "stacchip"),
        ],
        check=True,
    )
    code = (
        "from stacchip.indexer import ChipIndexer, NoStatsChipIndexer, NoDataMaskChipIndexer, "
        "LandsatIndexer, "
        "Sentinel2Indexer, ModisIndexer; from stacchip.chipper import Chipper; "
        "from stacchip.utils import load_indexer_s3, load_indexer_local; import stacchip; "
        "print(stacchip.__version__)"
    )
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.2.0"
    info = json.loads(
        subprocess.run(
            [str(venv / "bin" / "stacchip"), "plugins", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    assert sorted(row["name"] for row in info) == [
        "landsat",
        "linz",
        "modis",
        "naip",
        "sentinel1",
        "sentinel2",
    ]
    scripts = {p.name for p in (venv / "bin").iterdir() if p.name.startswith("stacchip-")}
    assert scripts == {
        "stacchip-landsat",
        "stacchip-landsat-l1",
        "stacchip-linz",
        "stacchip-modis",
        "stacchip-modis-09q1",
        "stacchip-naip",
        "stacchip-prechip",
        "stacchip-sentinel-1",
        "stacchip-sentinel-2",
        "stacchip-stats",
    }


def test_demo_after_a_plain_install_of_the_core_and_sentinel2(tmp_path):
    """The first command a newcomer runs works without the viz extra: previews are drawn
    without matplotlib, and the static map is skipped with one line naming the extra."""
    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "-q", str(venv)], check=True)
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    str(ROOT), str(ROOT / "plugins" / "stacchip-sentinel2")], check=True)
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import matplotlib"], env=env,
                           capture_output=True, check=False)
    assert probe.returncode == 1  # what a plain install has
    out = tmp_path / "demo"
    r = subprocess.run(
        [str(venv / "bin" / "stacchip"), "demo", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "matplotlib" in line]
    assert len(said) == 1 and said[0].endswith(
        "index_map.png not drawn: it needs matplotlib (pip install 'stacchip-core[viz]'); "
        "index_map.html shows the same")
    previews = out / "previews"
    assert sorted(p.name for p in previews.iterdir()) == ["index_map.html", "sentinel-2-l2a.png"]
    with rasterio.open(previews / "sentinel-2-l2a.png") as ds:
        png = ds.read()
    # labels are drawn in the strip under each tile, in the built-in font's dark grey
    from stacchip_core.demo.previews import GAP, TEXT

    strip = png[:, GAP + 256 + 4:GAP + 256 + 4 + 14, GAP:GAP + 256]
    assert ((strip[0] == TEXT[0]) & (strip[1] == TEXT[1]) & (strip[2] == TEXT[2])).sum() > 200
    assert "map:" in r.stdout and "index_map.png" not in r.stdout
