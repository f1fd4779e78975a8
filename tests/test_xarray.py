"""Chips as DataArrays and predictions written back on the chip's window."""

import numpy as np
import pyproj
import pytest
import rasterio
import shapely

from stacchip_core import Indexer
from stacchip_core.demo.synthetic import band_pattern
from stacchip_core.errors import StacchipError
from stacchip_core.training.xarray import chip_dataarray, prediction_dataarray, write_prediction

S2_ORIGIN = (499980.0, 6400000.0)  # synthetic.sentinel2_scene's default, EPSG:32720, 10 m


@pytest.fixture(scope="module")
def rows(synthetic_scenes):
    table = Indexer(str(synthetic_scenes["s2"]), chip_max_nodata=1.0).create_index()
    return {(r["chip_index_x"], r["chip_index_y"]): r for r in table.to_pylist()}


@pytest.mark.parametrize("xy", [(0, 0), (2, 1), (1, 2)])
def test_chip_dataarray_lies_on_the_chips_window(rows, xy):
    row = rows[xy]
    da = chip_dataarray(row, bands=["red", "nir", "swir16"])
    cs = row["chip_size"]
    x0, y0 = (
        S2_ORIGIN[0] + row["chip_index_x"] * cs * 10,
        S2_ORIGIN[1] - row["chip_index_y"] * cs * 10,
    )
    assert da.dims == ("band", "y", "x") and da.shape == (3, cs, cs)
    assert list(da.band.values) == ["red", "nir", "swir16"]
    np.testing.assert_array_equal(da.x.values, x0 + 5 + 10 * np.arange(cs))
    np.testing.assert_array_equal(da.y.values, y0 - 5 - 10 * np.arange(cs))
    assert pyproj.CRS(da.spatial_ref.attrs["crs_wkt"]) == pyproj.CRS("EPSG:32720")
    assert da.spatial_ref.attrs["GeoTransform"].split() == [
        str(float(x0)),
        "10.0",
        "0.0",
        str(float(y0)),
        "0.0",
        "-10.0",
    ]
    assert str(da.time.values) == "2024-03-11T14:11:54.000000000"
    # pixels: red is band 2 of the 10 m set, nir band 3; swir16 a 20 m band (index 8) expanded x2
    r0, c0 = row["chip_index_y"] * cs, row["chip_index_x"] * cs
    np.testing.assert_array_equal(
        da.sel(band="red").values, band_pattern(2, 768, 768)[r0 : r0 + cs, c0 : c0 + cs]
    )
    swir = band_pattern(8, 384, 384)[r0 // 2:(r0 + cs) // 2, c0 // 2:(c0 + cs) // 2]
    np.testing.assert_array_equal(
        da.sel(band="swir16").values, np.repeat(np.repeat(swir, 2, 0), 2, 1)
    )
    # the window's corners, projected with pyproj, are the index footprint's corners
    to_lonlat = pyproj.Transformer.from_crs("EPSG:32720", "OGC:CRS84", always_xy=True)
    corners = [(x0, y0), (x0 + cs * 10, y0), (x0 + cs * 10, y0 - cs * 10), (x0, y0 - cs * 10)]
    lon, lat = to_lonlat.transform(*zip(*corners))
    footprint = shapely.from_wkb(row["geometry"])
    for p in zip(lon, lat):
        assert (
            min(shapely.Point(p).distance(shapely.Point(c)) for c in footprint.exterior.coords)
            < 1e-9
        )


@pytest.mark.parametrize(
    "shape,res", [((5, 256, 256), 10.0), ((256, 256), 10.0), ((2, 64, 64), 40.0)]
)
def test_prediction_lands_where_the_chip_came_from(rows, tmp_path, shape, res):
    row = rows[(2, 1)]
    pred = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = write_prediction(tmp_path / "pred.tif", pred, row)
    x0, y0 = S2_ORIGIN[0] + 2 * 2560, S2_ORIGIN[1] - 1 * 2560
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32720
        assert tuple(ds.transform)[:6] == (res, 0.0, x0, 0.0, -res, y0)
        assert ds.bounds == (x0, y0 - 2560, x0 + 2560, y0)
        np.testing.assert_array_equal(ds.read(), pred.reshape((-1,) + shape[-2:]))
    da = prediction_dataarray(pred, row)
    assert da.shape == (1 if len(shape) == 2 else shape[0],) + shape[-2:]
    assert da.x.values[0] == x0 + res / 2 and da.y.values[-1] == y0 - 2560 + res / 2
    assert not list(tmp_path.glob(".*tmp*"))


def test_prediction_of_another_size_is_one_clear_error(rows, tmp_path):
    with pytest.raises(StacchipError, match="does not fit a chip of 256 x 256"):
        write_prediction(tmp_path / "p.tif", np.zeros((1, 100, 256), np.float32), rows[(0, 0)])
    assert not list(tmp_path.iterdir())
