import json

import numpy as np
import pytest
from affine import Affine
from conftest import per_chip_mean, run_script

from stacchip_core import Indexer, PluginError, class_mask, plugins
from stacchip_core.core.output import write_cog

# every hook's docstring and its signature on the rendered plugin page: tests/test_hook_docs.py


def test_the_four_sources_are_found_through_entry_points():
    names = {row["name"] for row in plugins.plugin_info()}
    assert {"sentinel2", "landsat", "naip", "linz"} <= names
    assert set(plugins.platforms()) >= {
        "sentinel-2-l2a",
        "landsat-c2l1",
        "landsat-c2l2-sr",
        "naip",
        "linz",
    }


def test_allow_list_restricts_loading(monkeypatch):
    monkeypatch.setenv("STACCHIP_PLUGINS", "naip")
    plugins.reset()
    assert set(plugins.platforms()) == {"naip"}
    monkeypatch.setenv("STACCHIP_PLUGINS", "")
    plugins.reset()
    assert plugins.platforms() == {}


def test_third_party_plugin_is_discovered_through_its_entry_point(with_example_plugin):
    info = {row["name"]: row for row in plugins.plugin_info()}
    assert info["example"]["distribution"] == "stacchip-example"
    assert info["example"]["version"] == "1.0.0"
    assert info["example"]["platforms"] == ["example-sat"]
    assert plugins.get_platform("example-sat").nodata == 255


def test_third_party_plugin_overrides_sentinel2_stats(with_example_plugin, s2_fixture):
    item, scl = s2_fixture
    # the item's bands are remote (unreachable here): no layouts, the stats are under test
    table = Indexer(item, chip_max_nodata=1.0, layouts=False).create_index()
    expected = per_chip_mean(class_mask(scl, [9]), 128, 42, 42)
    np.testing.assert_allclose(
        table["cloud_cover_percentage"].to_numpy(), expected.ravel(), atol=1e-6
    )
    # without the plugin, the stock definition (classes 3, 8, 9, 10) applies
    with pytest.MonkeyPatch.context() as m:
        m.setenv("STACCHIP_PLUGINS", "sentinel2")
        plugins.reset()
        stock = Indexer(item, chip_max_nodata=1.0, layouts=False).create_index()
    assert (
        stock["cloud_cover_percentage"].to_numpy().sum()
        > table["cloud_cover_percentage"].to_numpy().sum()
    )


def test_third_party_platform_and_command_from_the_cli(plugin_dir, tmp_path):
    mask = np.zeros((100, 150), np.uint8)  # 20 m mask under a 10 m band
    mask[:50, :50] = 1  # chips x 0-1, y 0-1 (a 20 m pixel spans 2 grid pixels)
    mask[50:, 100:] = 255  # chips x 4-5, y 2-3
    t10, t20 = Affine(10, 0, 600000, 0, -10, 5000000), Affine(20, 0, 600000, 0, -20, 5000000)
    pan = write_cog(tmp_path / "pan.tif", np.ones((200, 300), np.uint16), t10, "EPSG:32631")
    m = write_cog(tmp_path / "mask.tif", mask, t20, "EPSG:32631")
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "ex1",
        "collection": "example-collection",
        "geometry": None,
        "links": [],
        "properties": {"datetime": "2025-05-01T10:00:00Z", "proj:code": "EPSG:32631"},
        "assets": {
            "B1": {
                "href": str(pan),
                "type": "image/tiff",
                "proj:shape": [200, 300],
                "proj:transform": list(t10)[:6],
            },
            "MASK": {
                "href": str(m),
                "type": "image/tiff",
                "proj:shape": [100, 150],
                "proj:transform": list(t20)[:6],
            },
        },
    }
    path = tmp_path / "ex1.json"
    path.write_text(json.dumps(item))
    env = {"PYTHONPATH": str(plugin_dir), "STACCHIP_PLUGINS": "example,naip"}
    r = run_script(
        "-q",
        "index",
        path,
        "--chip-size",
        "50",
        "--max-nodata",
        "1",
        "-o",
        tmp_path / "ex.parquet",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "24 of 24 chips (example-sat, 6 x 4 grid)" in r.stdout
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "ex.parquet")
    cloud = t["cloud_cover_percentage"].to_numpy().reshape(4, 6)
    nodata = t["nodata_percentage"].to_numpy().reshape(4, 6)
    np.testing.assert_array_equal(cloud[:2, :2], 1.0)
    assert cloud.sum() == 4 and nodata.sum() == 4 and nodata[2:, 4:].min() == 1.0
    r = run_script("example-hello", "world", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "hello world from stacchip-example"


def test_misspelt_hook_is_reported(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setenv("STACCHIP_PLUGINS", "broken")
    plugins.reset()
    with pytest.raises(PluginError, match="stacchip_chip_stat"):
        plugins.get_plugin_manager()
    r = run_script("plugins", env={"PYTHONPATH": str(plugin_dir), "STACCHIP_PLUGINS": "broken"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("Error: ") and "stacchip_chip_stat" in r.stderr


@pytest.mark.parametrize("args, listed", [([], False), (["--all"], True)])
def test_the_built_in_signer_is_listed_with_all_only(args, listed):
    from click.testing import CliRunner

    from stacchip_core.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--json", *args])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert ("stacchip-core.planetary-computer" in rows) is listed
    if listed:
        assert rows["stacchip-core.planetary-computer"]["hooks"] == ["stacchip_sign_href"]
        assert rows["stacchip-core.planetary-computer"]["distribution"] == "stacchip-core"
