"""Small GeoTIFFs the tests write: one 128 px uint16 band in 64 px tiles, on a UTM grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_small_tif(path: Path, data: np.ndarray, nodata=None, compress: str | None = None) -> Path:
    """``data`` (1, 128, 128) uint16 as a tiled GeoTIFF (uncompressed unless ``compress``):
    uncompressed, its size is the same whatever the pixels."""
    options = {"compress": compress} if compress else {}
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 10, 10), tiled=True,
                       blockxsize=64, blockysize=64, nodata=nodata, **options) as ds:
        ds.write(data)
    return path
