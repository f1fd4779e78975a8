"""Helpers for the real-catalog tests (tests/test_catalogs_*.py): real items from tests/data,
paired with synthetic rasters of their exact shape, transform and CRS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

DATA = Path(__file__).parent / "data"
CDSE_S2_ITEM = DATA / "cdse-S2B_MSIL2A_20200322T074609_N0500_R135_T36NYH_20230612T214223.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def sparse_tiff(path: Path, shape: tuple[int, int], transform: Affine, crs: str, dtype: str,
                blocks: dict[tuple[int, int], np.ndarray], nodata=0, count: int = 1) -> Path:
    """A tiled GeoTIFF of the full ``shape`` in which only ``blocks`` ({(row, col): array})
    are written (SPARSE_OK): a 10980 x 10980 band costs a few kB and milliseconds, and
    every other pixel reads as ``nodata``."""
    profile = dict(driver="GTiff", height=shape[0], width=shape[1], count=count, dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", sparse_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        for (row, col), data in blocks.items():
            data = data if data.ndim == 3 else data[None]
            dst.write(data, window=Window(col, row, data.shape[2], data.shape[1]))
    return path


def pattern(rows: int, cols: int, seed: int, dtype=np.uint16) -> np.ndarray:
    """Distinct, nonzero pixel values, so that a wrong offset or band shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, np.iinfo(dtype).max, size=(rows, cols), dtype=dtype)
