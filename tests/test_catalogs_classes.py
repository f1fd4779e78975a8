"""Cloud and nodata classes per the product definitions (README "Sentinel-2 classes",
"Landsat classes"), on real items with hand-made quality layers of their exact shape:
chip (0, 0) holds one stripe per class, every other chip reads as the layer's nodata."""

import numpy as np
import pytest
from affine import Affine
from catalogs_helpers import load, sparse_tiff
from conftest import LANDSAT_ITEM, S2_ITEM

from stacchip_core import Indexer


@pytest.fixture(scope="module")
def s2_classes(tmp_path_factory):
    """Earth Search S2 item; SCL chip (0, 0) = 128 x 128 px at 20 m, 10 columns per class 0-11,
    the last 8 columns class 4 (vegetation)."""
    scl = np.full((128, 128), 4, np.uint8)
    for value in range(12):
        scl[:, value * 10:(value + 1) * 10] = value
    item = load(S2_ITEM)
    t = item["assets"]["scl"]["proj:transform"]
    path = sparse_tiff(
        tmp_path_factory.mktemp("scl") / "scl.tif",
        tuple(item["assets"]["scl"]["proj:shape"]),
        Affine(*t[:6]),
        "EPSG:32720",
        "uint8",
        {(0, 0): scl},
        nodata=0,
    )
    item["assets"]["scl"]["href"] = str(path)
    return item


def test_sentinel2_scl_classes(s2_classes):
    table = Indexer(s2_classes, chip_max_nodata=1.0, layouts=False).create_index().to_pylist()
    first = next(r for r in table if (r["chip_index_x"], r["chip_index_y"]) == (0, 0))
    # cloud: 3 cloud shadow, 8 medium, 9 high probability, 10 thin cirrus -> 40 of 128 columns
    assert first["cloud_cover_percentage"] == pytest.approx(40 / 128, abs=1e-7)
    # nodata: 0 no data, 1 saturated or defective -> 20 of 128 columns (0.1.38: 10, and 1 was cloud)
    assert first["nodata_percentage"] == pytest.approx(20 / 128, abs=1e-7)
    # 2 (dark area / cast shadow) and 11 (snow) are neither; other chips read as SCL 0 (no data)
    assert {r["nodata_percentage"] for r in table if r["chipid"] != first["chipid"]} == {1.0}


@pytest.fixture(scope="module")
def landsat_flags(tmp_path_factory):
    """USGS Landsat 9 item (polar stereographic); QA_PIXEL chip (0, 0) in 8 stripes of 32 columns:
    fill, clear, dilated cloud, cirrus, cloud (high confidence), cloud shadow, snow, water."""
    values = [1, 1 << 6, (1 << 1) | (1 << 6), (1 << 2) | (1 << 14) | (1 << 15), (1 << 3) | (3 << 8),
              1 << 4, (1 << 5) | (3 << 12), (1 << 7) | (1 << 6)]
    qa = np.repeat(np.array(values, np.uint16), 32)[None, :].repeat(256, 0)
    item = load(LANDSAT_ITEM)
    p = item["properties"]
    path = sparse_tiff(
        tmp_path_factory.mktemp("qa") / "qa.tif",
        tuple(p["proj:shape"]),
        Affine(*p["proj:transform"][:6]),
        "EPSG:3031",
        "uint16",
        {(0, 0): qa},
        nodata=1,
    )
    item["assets"]["qa_pixel"]["href"] = str(path)
    return item


def test_landsat_qa_pixel_bits(landsat_flags):
    table = Indexer(landsat_flags, chip_max_nodata=1.0).create_index().to_pylist()
    first = table[0]
    assert (first["chip_index_x"], first["chip_index_y"]) == (0, 0)
    # cloud: dilated cloud (bit 1), cirrus (bit 2; 0.1.38 ignored
    # it), cloud (3), shadow (4): 4 of 8 stripes
    assert first["cloud_cover_percentage"] == 0.5
    assert first["nodata_percentage"] == 0.125  # fill (bit 0); snow and water are clear
    assert {r["nodata_percentage"] for r in table[1:]} == {1.0}  # unwritten tiles read as fill
