"""Assets off the chip grid's lattice, and chip sizes that cut native pixels.

Item: tests/data/ga-ls8c-ard-provisional-3-2-1_107073_2022-08-25_nrt.json (Geoscience Australia
ARD, grids verbatim: 30 m bands at origin 230685, the 15 m pan at 230692.5 - half a pan pixel
off), with sparse synthetic rasters of the exact shapes."""

import numpy as np
import pyproj
import pytest
from affine import Affine
from catalogs_helpers import DATA, load, pattern, sparse_tiff
from conftest import per_chip_mean

from stacchip_core import Indexer
from stacchip_core.core.chipper import Chipper
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.output import write_cog

GA = DATA / "ga-ls8c-ard-provisional-3-2-1_107073_2022-08-25_nrt.json"
CRS = "EPSG:32652"


@pytest.fixture(scope="module")
def ga(tmp_path_factory):
    d = tmp_path_factory.mktemp("ga")
    item = load(GA)
    # multiples of 4: bilinear means of 2 or 4 pixels stay whole numbers, exactly checkable
    red = (pattern(300, 300, 4) // 4 * 4).astype(np.uint16)
    pan = pattern(512, 512, 8)
    for key, data in (("nbart_red", red), ("nbart_panchromatic", pan)):
        a = item["assets"][key]
        a["href"] = str(
            sparse_tiff(
                d / f"{key}.tif",
                tuple(a["proj:shape"]),
                Affine(*a["proj:transform"][:6]),
                CRS,
                "uint16",
                {(0, 0): data},
                nodata=0,
            )
        )
    return item, red, pan


def test_landsat_l1_default_bands_read_on_the_offset_pan_grid(ga):
    item, red, pan = ga
    with Chipper(item, platform="landsat-c2l1") as chipper:
        assert chipper.grid.transform == Affine(15, 0, 230692.5, 0, -15, -1962592.5)  # the pan grid
        assert "nbart_red" in chipper.assets and "nbart_panchromatic" in chipper.assets
        chipper.assets = ["nbart_red", "nbart_panchromatic"]
        chip = chipper.chip(1, 1)  # pan rows/cols 256:512
    np.testing.assert_array_equal(
        chip["nbart_panchromatic"][0], pan[256:512, 256:512]
    )  # exact path
    # nearest: grid pixel j has its centre at 230700 + 15 j, inside 30 m pixel (j + 1) // 2
    j = np.arange(256, 512)
    np.testing.assert_array_equal(
        chip["nbart_red"][0], red[((j + 1) // 2)[:, None], ((j + 1) // 2)[None, :]]
    )


def test_bilinear_is_an_option(ga):
    item, red, _ = ga
    with Chipper(item, assets=["nbart_red"], resampling="bilinear") as chipper:
        chip = chipper.chip(0, 0)["nbart_red"][0]
    # centre of grid pixel j is at 30 m pixel coordinate j / 2 +
    # 0.5: even j on a centre, odd j halfway
    j = np.arange(256)
    lo, w = j // 2, (j % 2) / 2
    rows = red[lo].astype(float) * (1 - w)[:, None] + red[lo + 1].astype(float) * w[:, None]
    expected = rows[:, lo] * (1 - w)[None, :] + rows[:, lo + 1] * w[None, :]
    np.testing.assert_array_equal(chip, expected.astype(np.uint16))


def test_non_whole_pixel_ratio(tmp_path):
    """A 25 m layer on a 10 m grid: nearest picks the 25 m pixel under each 10 m centre."""
    t10 = Affine(10, 0, 500000, 0, -10, 4000000)
    t25 = Affine(25, 0, 500000, 0, -25, 4000000)
    main = write_cog(tmp_path / "m.tif", np.ones((512, 512), np.uint16), t10, "EPSG:32633")
    layer = pattern(210, 210, 3)
    odd = write_cog(tmp_path / "odd.tif", layer, t25, "EPSG:32633")
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "odd", "geometry": None, "links": [],
            "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:code": "EPSG:32633"},
            "assets": {"main": {"href": str(main), "type": "image/tiff", "proj:shape": [512, 512],
                                "proj:transform": list(t10)[:6]},
                       "odd": {"href": str(odd), "type": "image/tiff"}}}
    with Chipper(item, assets=["odd"]) as chipper:
        chip = chipper.chip(1, 0)["odd"][0]
    idx = ((np.arange(256) + 0.5) * 10 // 25).astype(int)
    np.testing.assert_array_equal(
        chip, layer[idx][:, ((np.arange(256, 512) + 0.5) * 10 // 25).astype(int)]
    )


@pytest.mark.parametrize(
    "factor, mask_true, expected",
    [
        # grid 6 x 6 px, chips of 3, a mask of 3 x 3 native pixels of 2
        # grid px: chip edges cut native pixels
        (2, (0, 1), {(0, 0): 2 / 9, (1, 0): 2 / 9, (0, 1): 0, (1, 1): 0}),
        (2, (1, 1), {(0, 0): 1 / 9, (1, 0): 1 / 9, (0, 1): 1 / 9, (1, 1): 1 / 9}),
        (
            2,
            (2, 0),
            {(0, 0): 0, (1, 0): 0, (0, 1): 4 / 9, (1, 1): 0},
        ),  # rows 4-5, cols 0-1: inside chip (0, 1)
    ],
)
def test_partial_native_pixels_weigh_by_their_share(factor, mask_true, expected):
    grid = ChipGrid((6, 6), Affine(10, 0, 0, 0, -10, 0), pyproj.CRS("EPSG:32633"), 3)
    mask = np.zeros((3, 3), bool)
    mask[mask_true] = True
    fractions = grid.chip_fractions(mask, factor)
    for (x, y), value in expected.items():
        assert fractions[y, x] == pytest.approx(value, abs=1e-7)


def test_chip_size_255_on_sentinel2(s2_fixture):
    """0.1.38 accepted 255 px chips on S2; a 20 m SCL pixel then straddles chip edges."""
    item, scl = s2_fixture
    table = Indexer(item, chip_size=255, chip_max_nodata=1.0, layouts=False).create_index()
    assert len(table) == 43 * 43
    # reference: the SCL expanded to the 10 m grid, plain means per 255 px chip
    cloud = np.isin(scl, [3, 8, 9, 10]).repeat(2, 0).repeat(2, 1)
    nodata = np.isin(scl, [0, 1]).repeat(2, 0).repeat(2, 1)
    np.testing.assert_allclose(
        table["cloud_cover_percentage"].to_numpy(),
        per_chip_mean(cloud, 255, 43, 43).ravel(),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        table["nodata_percentage"].to_numpy(), per_chip_mean(nodata, 255, 43, 43).ravel(), atol=1e-6
    )
