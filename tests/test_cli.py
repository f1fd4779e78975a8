import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from conftest import LINZ_ITEM, NAIP_ITEM, TEST_ITEM, run_cli, run_script

from stacchip_core.core.output import write_cog
from stacchip_core.demo.synthetic import band_pattern


def assert_one_line_error(result, pattern):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and pattern in lines[0], lines[0]


def test_index_merge_chip_round_trip(synthetic_scenes, tmp_path):
    out = tmp_path / "idx"
    r = run_script(
        "-q", "index", synthetic_scenes["s2"], "-o", out / "s2.parquet", "--max-nodata", "1"
    )
    assert r.returncode == 0, r.stderr
    assert "9 of 9 chips (sentinel-2-l2a, 3 x 3 grid)" in r.stdout
    r = run_cli(
        "-q", "index", synthetic_scenes["naip"], "-o", out / "naip.parquet", "--chip-size", "100"
    )
    assert "30 of 30 chips (naip, 5 x 6 grid)" in r.stdout
    r = run_cli("-q", "merge", out, tmp_path / "all.parquet")
    assert r.returncode == 0 and "39 chips from 2 index files" in r.stdout

    chipid = "S2A_T20HNJ_20240311T140636_L2A-1-2"
    r = run_cli(
        "-q",
        "chip",
        tmp_path / "all.parquet",
        "--chipid",
        chipid,
        "--assets",
        "red,nir08",
        "-o",
        tmp_path / "c.npz",
    )
    assert r.returncode == 0, r.stderr
    npz = np.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(npz["red"][0], band_pattern(2, 768, 768)[512:768, 256:512])
    assert npz["nir08"].shape == (1, 256, 256) and str(npz["meta_chipid"]) == chipid

    r = run_cli(
        "-q", "chip", tmp_path / "all.parquet", "--chipid", chipid, "-o", tmp_path / "c.tif"
    )
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.count == 10 and ds.descriptions[:3] == ("blue", "green", "red")
        assert ds.transform == Affine(10, 0, 499980 + 2560, 0, -10, 6400000 - 2 * 2560)
        assert ds.crs.to_epsg() == 32720
        np.testing.assert_array_equal(ds.read(3), band_pattern(2, 768, 768)[512:768, 256:512])

    # the merged rows are in Hilbert order of the chip centres: find the first NAIP row
    naip_row = (
        pq.read_table(tmp_path / "all.parquet", columns=["platform"])["platform"]
        .to_pylist()
        .index("naip")
    )
    r = run_cli("-q", "chip", tmp_path / "all.parquet", "--row", naip_row, "-o", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "c.png") as ds:
        assert (ds.count, ds.width, ds.height, ds.dtypes[0]) == (3, 100, 100, "uint8")
        rgb = ds.read()
    assert rgb.min() == 0 and rgb.max() == 255  # stretched


def test_plugins_lists_the_four_sources():
    r = run_script("plugins", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) >= {"sentinel2", "landsat", "naip", "linz"}
    assert rows["landsat"]["platforms"] == ["landsat-c2l1", "landsat-c2l2-sr"]
    assert rows["sentinel2"]["distribution"] == "stacchip-sentinel2"
    assert "stacchip_chip_stats" in rows["naip"]["hooks"]


@pytest.fixture
def bad_inputs(tmp_path):
    t = Affine(10, 0, 500000, 0, -10, 4000000)
    good = write_cog(tmp_path / "good.tif", np.ones((512, 512), np.uint16), t, "EPSG:32633")
    odd = write_cog(
        tmp_path / "odd.tif",
        np.ones((400, 400), np.uint16),
        Affine(15, 0, 500000, 0, -15, 4000000),
        "EPSG:32633",
    )
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00garbage")

    def item(name, **changes):
        d = {
            "type": "Feature",
            "stac_version": "1.1.0",
            "id": name,
            "geometry": None,
            "links": [],
            "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:code": "EPSG:32633"},
            "assets": {
                "main": {
                    "href": str(good),
                    "type": "image/tiff",
                    "proj:shape": [512, 512],
                    "proj:transform": list(t)[:6],
                }
            },
        }
        for key, value in changes.items():
            if key == "assets":
                d["assets"].update(value)
            else:
                d["properties"][key] = value
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(d))
        return path

    return {
        "degrees": item("degrees", **{"proj:code": "EPSG:4326"}),
        "odd": item("odd", assets={"odd": {"href": str(odd), "type": "image/tiff"}}),
        "corrupt": item("corrupt", assets={"c": {"href": str(corrupt), "type": "image/tiff"}}),
        "plain": item("plain"),
    }


# (the item, the options after it, the message); "missing" is a path that does not exist,
# other strings name a bad_inputs item
BAD_INPUTS = {
    "missing item": ("missing", ("-o", "out.parquet"), "no such item file"),
    "no projection": (LINZ_ITEM, ("--platform", "linz", "-o", "out.parquet"), "has no projection"),
    "degrees": ("degrees", ("--no-stats", "-o", "out.parquet"), "needs a projected CRS in metres"),
    "unknown platform": (
        NAIP_ITEM,
        ("--platform", "goes-16", "-o", "out.parquet"),
        "unknown platform 'goes-16'; installed platforms: landsat-c2l1",
    ),
    "no platform": (
        TEST_ITEM,
        ("-o", "out.parquet"),
        "no installed platform claims collection None",
    ),
    "missing stats asset": (
        TEST_ITEM,
        ("--platform", "sentinel-2-l2a", "-o", "out.parquet"),
        "has no asset 'scl'",
    ),
    "missing band asset": ("plain", ("-o", "x.txt", "--platform", "linz"), "has no asset 'red'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_and_writes_nothing(bad_inputs, tmp_path, case):
    item, options, message = BAD_INPUTS[case]
    if isinstance(item, str):
        item = tmp_path / "missing.json" if item == "missing" else bad_inputs[item]
    args = (
        "index",
        item,
        *(tmp_path / o if o.endswith((".parquet", ".txt")) else o for o in options),
    )
    assert_one_line_error(run_cli(*args), message)
    if case == "no projection":  # and once through the real console script, in its own process
        assert_one_line_error(run_script(*args), message)
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "x.txt").exists()
    assert list(tmp_path.glob(".*tmp*")) == []


def test_chip_errors(bad_inputs, tmp_path):
    idx = tmp_path / "i.parquet"
    for name in ("odd", "corrupt"):
        r = run_cli("-q", "index", bad_inputs[name], "--no-stats", "-o", idx)
        assert r.returncode == 0, r.stderr
    out = tmp_path / "c.npz"
    assert_one_line_error(
        run_cli("chip", idx, "--row", 0, "--assets", "c", "-o", out), "cannot open"
    )
    run_cli("-q", "index", bad_inputs["odd"], "--no-stats", "-o", idx)
    # a 15 m asset on a 10 m grid is resampled (core.resample), no longer an error
    assert run_cli("-q", "chip", idx, "--row", 0, "--assets", "odd", "-o", out).returncode == 0
    out.unlink()
    assert_one_line_error(
        run_cli("chip", idx, "--row", 0, "--assets", "nope", "-o", out), "has no asset 'nope'"
    )
    assert_one_line_error(run_cli("chip", idx, "--row", 99, "-o", out), "row 99 is out of range")
    assert_one_line_error(
        run_cli("chip", idx, "--chipid", "x-0-0", "-o", out), "chip 'x-0-0' is not in"
    )
    assert_one_line_error(
        run_cli("chip", idx, "--row", 0, "--assets", "main", "-o", tmp_path / "c.jpg"),
        "unsupported output",
    )
    assert not out.exists()
    assert list(tmp_path.glob(".*tmp*")) == []


def test_merge_of_a_corrupt_file_is_one_line(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.parquet").write_bytes(b"PAR1 not really")
    assert_one_line_error(
        run_cli("merge", tmp_path / "src", tmp_path / "m.parquet"), "not a readable parquet file"
    )
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--job", "0", "--jobs", "0:2"], "give only one of --job, --jobs and --all"),
        (
            ["--index", "0", "--index-range", "0:2"],
            "give only one of --job, --jobs and --all",
        ),  # the earlier names
        ([], "give --job, --jobs or --all"),
    ],
)
def test_job_options_and_their_earlier_names(args, message, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from stacchip_core.cli import cli
    from stacchip_core.pipeline.runner import INDEX_ENV_VARS

    for name in INDEX_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, ["process", "naip", *args, "--bucket", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
