"""Copernicus Data Space Sentinel-2 items: resolution-suffixed asset keys (B04_10m, SCL_20m)
and proj:code on the assets only. Item: tests/data/cdse-S2B_MSIL2A_20200322T074609_... (real)."""

import numpy as np
import pytest
from affine import Affine
from catalogs_helpers import CDSE_S2_ITEM, load, pattern, sparse_tiff
from conftest import per_chip_mean, scl_blocks

from stacchip_core import Indexer, class_mask
from stacchip_core.core.chipper import Chipper
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.indexer import load_item
from stacchip_core.core.output import write_cog
from stacchip_core.errors import AssetError
from stacchip_core.plugins import platform_for_item

CRS = "EPSG:32636"


def test_cdse_keys_resolve_to_the_finest_resolution():
    item = load_item(load(CDSE_S2_ITEM))
    platform = platform_for_item(item)
    assert platform.name == "sentinel-2-l2a"
    assert platform.asset_keys(item) == {
        "blue": "B02_10m",
        "green": "B03_10m",
        "red": "B04_10m",
        "rededge1": "B05_20m",
        "rededge2": "B06_20m",
        "rededge3": "B07_20m",
        "nir": "B08_10m",
        "nir08": "B8A_20m",
        "swir16": "B11_20m",
        "swir22": "B12_20m",
    }
    assert platform.asset_key(item, "scl") == "SCL_20m"
    grid = ChipGrid.from_item(item)  # proj:code only on the assets
    assert grid.crs.to_epsg() == 32636 and grid.shape == (10980, 10980)
    assert grid.transform == Affine(10, 0, 699960, 0, -10, 300000)


@pytest.fixture(scope="module")
def cdse_item(tmp_path_factory):
    d = tmp_path_factory.mktemp("cdse")
    item = load(CDSE_S2_ITEM)
    red = pattern(512, 512, 4)
    swir = pattern(256, 256, 11)
    sparse_tiff(
        d / "B04.tif",
        (10980, 10980),
        Affine(10, 0, 699960, 0, -10, 300000),
        CRS,
        "uint16",
        {(256, 512): red},
    )
    sparse_tiff(
        d / "B11.tif",
        (5490, 5490),
        Affine(20, 0, 699960, 0, -20, 300000),
        CRS,
        "uint16",
        {(128, 256): swir},
    )
    scl = scl_blocks(5490, 5490)
    write_cog(d / "SCL.tif", scl, Affine(20, 0, 699960, 0, -20, 300000), CRS, nodata=0)
    for key, name in (("B04_10m", "B04.tif"), ("B11_20m", "B11.tif"), ("SCL_20m", "SCL.tif")):
        item["assets"][key]["href"] = str(d / name)
    return item, red, swir, scl


def test_cdse_chips_read_the_suffixed_assets(cdse_item):
    item, red, swir, _ = cdse_item
    with Chipper(item, assets=["red", "swir16"]) as chipper:
        assert chipper.assets == ["B04_10m", "B11_20m"]
        chip = chipper.chip(2, 1)  # rows 256:512, cols 512:768 of the 10 m grid
    np.testing.assert_array_equal(chip["B04_10m"][0], red[:256, :256])
    np.testing.assert_array_equal(
        chip["B11_20m"][0], np.repeat(np.repeat(swir[:128, :128], 2, 0), 2, 1)
    )


def test_cdse_stats_from_scl_20m(cdse_item):
    item, _, _, scl = cdse_item
    table = Indexer(item, chip_max_nodata=1.0).create_index()
    assert len(table) == 42 * 42
    nodata = per_chip_mean(class_mask(scl, [0, 1]), 128, 42, 42).ravel()
    cloud = per_chip_mean(class_mask(scl, [3, 8, 9, 10]), 128, 42, 42).ravel()
    np.testing.assert_allclose(table["nodata_percentage"].to_numpy(), nodata, atol=1e-6)
    np.testing.assert_allclose(table["cloud_cover_percentage"].to_numpy(), cloud, atol=1e-6)
    assert 0 < nodata.mean() < 1


def test_unresolved_bands_raise_with_the_asset_keys():
    item = load(CDSE_S2_ITEM)
    item["assets"] = {
        k.replace("_", "-"): v for k, v in item["assets"].items()
    }  # B04-10m: no known key
    with pytest.raises(
        AssetError, match=r"none of platform 'sentinel-2-l2a'.s bands .* resolves.*B04-10m"
    ):
        Chipper(item)
