"""The Chip model: a mapping of asset -> array that knows where it lies."""

import numpy as np
import pyproj
import pytest
from affine import Affine

from stacchip_core.core.chip import Chip, band_names
from stacchip_core.plugins import get_platform


@pytest.fixture
def chip():
    red = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    image = np.stack([red[0] + 100, red[0] + 200])
    return Chip(
        arrays={"B04": red, "image": image},
        transform=Affine(10, 0, 500_000, 0, -10, 4_000_040),
        crs=pyproj.CRS.from_epsg(32633),
        item_id="S2A_X",
        x=3,
        y=7,
        band_names=band_names({"B04": red, "image": image}, get_platform("sentinel-2-l2a")),
    )


def test_chip_is_still_a_mapping_of_assets(chip):
    assert list(chip) == ["B04", "image"] and len(chip) == 2
    assert chip["B04"][0, 1, 2] == 6
    assert dict(chip).keys() == {"B04", "image"}
    assert {**chip}["image"].shape == (2, 4, 4)


def test_chip_georeferencing(chip):
    assert chip.chipid == "S2A_X-3-7"
    assert chip.shape == (4, 4)
    assert chip.bounds == (500_000, 4_000_000, 500_040, 4_000_040)


def test_band_names_use_canonical_names_and_asset_numbers(chip):
    assert chip.band_names == ("red", "image_1", "image_2")


def test_stack_all_and_by_name(chip):
    assert chip.stack().shape == (3, 4, 4)
    picked = chip.stack(["image_2", "red"])
    np.testing.assert_array_equal(picked[0], chip["image"][1])
    np.testing.assert_array_equal(picked[1], chip["B04"][0])
    with pytest.raises(KeyError, match="no band \\['nir'\\]"):
        chip.stack(["nir"])


def test_naip_band_names():
    image = np.zeros((4, 2, 2), np.uint8)
    assert band_names({"image": image}, get_platform("naip")) == ("red", "green", "blue", "nir")
