"""stacchip 0.1's indexer classes over `stacchip_core.Indexer`.

Same constructors, attributes and ``create_index()`` table (chipid, date, chip_index_x,
chip_index_y, cloud_cover_percentage, nodata_percentage, geometry as a geoarrow polygon;
the two ``*_percentage`` columns hold fractions 0-1, as they did). The source classes open
their quality asset as 0.1 did, through this module's ``rasterio`` name (code and tests that
patch ``stacchip.indexer.rasterio.open`` see every read), read at the grid's shape and
decode it as 0.1 did: Sentinel-2 SCL classes 1, 3, 8, 9 and 10 are cloud and 0 is nodata
(stacchip-sentinel2 counts 1, saturated or defective, as nodata); Landsat QA_PIXEL bits 1, 3,
4 are cloud and bit 0 nodata. MODIS keeps the corrected decoding of stacchip-modis (0.1 read
the QC's MODLAND 01, "less than ideal quality", as cloud). Fractions are computed once per
item in one vectorized pass; a subclass that overrides ``get_stats(x, y)`` is called chip by
chip, as 0.1 did.
"""

from __future__ import annotations

import logging
from functools import cached_property

import geoarrow.pyarrow as ga
import numpy as np
import pyarrow as pa
import pyproj
import rasterio  # 0.1 opened quality assets through this name: patching its .open reaches them
import shapely
from pystac import Item
from rasterio.enums import Resampling
from shapely.ops import transform as transform_geometry

from stacchip_core import Indexer
from stacchip_core.core.indexer import item_datetime, load_item
from stacchip_core.core.raster import asset_href
from stacchip_core.errors import AssetError

log = logging.getLogger(__name__)


def _vectorized(fn):
    """Marks the get_stats of the classes here: their statistics come in one pass."""
    fn.stacchip_vectorized = True
    return fn


class ChipIndexer:
    """Indexer base class (0.1 API). Subclasses override ``get_stats(x, y)``."""

    platform: str | None = None  # the stacchip-core platform computing the statistics

    def __init__(
        self, item: Item, chip_size: int = 256, chip_max_nodata: float = 0.5, shape=None
    ) -> None:
        self.item = (
            item if isinstance(item, Item) else load_item(item)
        )  # 0.1 took Items; dicts and paths work too
        item = self.item
        self.chip_size = chip_size
        self.chip_max_nodata = chip_max_nodata
        self._shape = shape
        self._core = Indexer(
            self._item_for_stats(item),
            chip_size=chip_size,
            chip_max_nodata=chip_max_nodata,
            platform=self._platform_name(item),
            shape=shape,
            stats=self.platform is not None,
        )
        self.setup_projector()

    def _platform_name(self, item: Item) -> str | None:
        return self.platform

    def _item_for_stats(self, item: Item) -> Item:
        return item

    # --- grid, as 0.1 exposed it -----------------------------------------------------------
    def assert_units_metre(self) -> None:
        """Kept for compatibility: the grid refuses CRSs not in metres when it is built."""

    @property
    def grid(self):
        return self._core.grid

    @property
    def crs(self):
        from rasterio.crs import CRS

        return CRS.from_wkt(self.grid.crs.to_wkt())

    def setup_projector(self) -> None:
        self._projector = pyproj.Transformer.from_crs(
            self.grid.crs, "EPSG:4326", always_xy=True
        ).transform

    def reproject(self, geom):
        """A geometry from the item's CRS to WGS84 (lon, lat)."""
        return transform_geometry(self._projector, geom)

    @cached_property
    def shape(self) -> list:
        """[rows, cols] of the finest asset (or the shape given)."""
        return [int(v) for v in self.grid.shape]

    @cached_property
    def transform(self) -> list:
        """The grid's transform as the list 0.1 returned (a, b, c, d, e, f)."""
        return list(self.grid.transform)[:6]

    @property
    def x_size(self) -> int:
        return self.grid.x_size

    @property
    def y_size(self) -> int:
        return self.grid.y_size

    @property
    def size(self) -> int:
        return self.x_size * self.y_size

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return self._core.bbox

    def get_chip_bbox(self, x: int, y: int) -> shapely.Polygon:
        """The chip's footprint in WGS84 (its four corners projected)."""
        self.grid.window(x, y)
        return self._footprints[y * self.x_size + x]

    @cached_property
    def _footprints(self) -> np.ndarray:
        return self.grid.footprints()[0]

    # --- statistics ------------------------------------------------------------------------
    def get_stats(self, x: int, y: int) -> tuple[float, float]:
        """(cloud fraction, nodata fraction) of chip (x, y): subclasses implement it."""
        raise NotImplementedError()

    def _stats_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        stats = self._core.chip_stats
        return stats.cloud, stats.nodata

    def _quality_key(self, name: str) -> str | None:
        platform = self._core.platform
        key = platform.asset_key(self._core.item, name) if platform else None
        return key or (name if name in self._core.item.assets else None)

    def _quality_fractions(self, name: str, masks: dict) -> dict[str, np.ndarray]:
        """Per-chip fractions of ``masks`` ({name: layer -> bool array}) of quality asset
        ``name``, opened through ``rasterio.open`` as 0.1 opened it. 0.1 read the layer at the
        grid's shape by nearest neighbour; a layer whose pixels are a whole number of grid
        pixels is read at its own size instead and weighted by that factor (the same
        fractions, a quarter of the memory for a 20 m SCL)."""
        key = self._quality_key(name)
        if key is None:
            raise AssetError(
                f"item {self.item.id!r} has no {name} asset (assets: {', '.join(self.item.assets)})"
            )
        rows, cols = self.shape
        with rasterio.open(asset_href(self._core.item.assets[key], self._core.mountpath)) as src:
            factor = rows // src.height if src.height and rows % src.height == 0 else 0
            if factor and src.width * factor == cols:
                layer = src.read(1)
            else:
                factor = 1
                layer = src.read(out_shape=(1, rows, cols), resampling=Resampling.nearest)[0]
        return {what: self.grid.chip_fractions(mask(layer), factor) for what, mask in masks.items()}

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if getattr(type(self).get_stats, "stacchip_vectorized", False):
            return self._stats_arrays()
        # a subclass's own get_stats: chip by chip, as 0.1 did
        cloud = np.zeros((self.y_size, self.x_size), np.float32)
        nodata = np.zeros_like(cloud)
        for y in range(self.y_size):
            for x in range(self.x_size):
                cloud[y, x], nodata[y, x] = self.get_stats(x, y)
        return cloud, nodata

    def create_index(self) -> pa.Table:
        """The chips whose nodata fraction is at most ``chip_max_nodata``, as 0.1's table."""
        cloud, nodata = self._arrays
        ys, xs = np.divmod(np.arange(self.size), self.x_size)
        keep = nodata.ravel() <= self.chip_max_nodata
        polygons = self._footprints[keep]
        log.info(
            "Dropped %d/%d chips due to nodata above %s",
            self.size - int(keep.sum()),
            self.size,
            self.chip_max_nodata,
        )
        n = int(keep.sum())
        if n:
            geometry = ga.as_geoarrow(ga.array(shapely.to_wkb(polygons)))
        else:
            geometry = ga.polygon().wrap_array(pa.array([], ga.polygon().storage_type))
        return pa.table(
            {
                "chipid": pa.array(
                    [f"{self.item.id}-{x}-{y}" for x, y in zip(xs[keep], ys[keep])], pa.string()
                ),
                "date": pa.array([item_datetime(self.item).date()] * n, pa.date32()),
                "chip_index_x": pa.array(xs[keep], pa.uint16()),
                "chip_index_y": pa.array(ys[keep], pa.uint16()),
                "cloud_cover_percentage": pa.array(cloud.ravel()[keep], pa.float32()),
                "nodata_percentage": pa.array(nodata.ravel()[keep], pa.float32()),
                "geometry": geometry,
            }
        )


class _PlatformIndexer(ChipIndexer):
    @_vectorized
    def get_stats(self, x: int, y: int) -> tuple[float, float]:
        self.grid.window(x, y)
        cloud, nodata = self._arrays
        return float(cloud[y, x]), float(nodata[y, x])


class NoStatsChipIndexer(_PlatformIndexer):
    """No clouds and no nodata anywhere."""

    def _stats_arrays(self):
        zeros = np.zeros((self.y_size, self.x_size), np.float32)
        return zeros, zeros.copy()


class NoDataMaskChipIndexer(_PlatformIndexer):
    """Nodata from a boolean mask of the grid's shape; no clouds (Sentinel-1 in 0.1)."""

    def __init__(
        self, item: Item, nodata_mask, chip_size: int = 256, chip_max_nodata: float = 0.5
    ) -> None:
        super().__init__(item, chip_size, chip_max_nodata)
        self.nodata_mask = nodata_mask

    def _stats_arrays(self):
        nodata = self.grid.chip_fractions(np.asarray(self.nodata_mask))
        return np.zeros_like(nodata), nodata


class LandsatIndexer(_PlatformIndexer):
    """Landsat 8/9: QA_PIXEL bits (stacchip-landsat); ``qa_pixel`` read from its
    ``alternate.s3.href`` where the item has one, as 0.1 did."""

    def _platform_name(self, item):
        return (
            item.collection_id
            if item.collection_id in ("landsat-c2l1", "landsat-c2l2-sr")
            else "landsat-c2l2-sr"
        )

    platform = "landsat-c2l2-sr"
    nodata_bits, cloud_bits = (
        1 << 0,
        (1 << 1) | (1 << 3) | (1 << 4),
    )  # fill; dilated cloud, cloud, shadow

    def _stats_arrays(self):
        f = self._quality_fractions("qa_pixel", {"cloud": lambda qa: (qa & self.cloud_bits) != 0,
                                                 "nodata": lambda qa: (qa & self.nodata_bits) != 0})
        return f["cloud"], f["nodata"]

    def _item_for_stats(self, item):
        asset = item.assets.get("qa_pixel")
        alternate = (
            asset.extra_fields.get("alternate", {}).get("s3", {}).get("href") if asset else None
        )
        if not alternate:
            return item
        clone = item.clone()
        clone.assets["qa_pixel"].href = alternate
        return clone


class Sentinel2Indexer(_PlatformIndexer):
    """Sentinel-2 L2A: SCL classes (stacchip-sentinel2), either catalog's asset keys."""

    platform = "sentinel-2-l2a"
    scl_filter = (1, 3, 8, 9, 10)  # 0.1's cloud classes, 1 (saturated or defective) included
    nodata_value = 0

    def _stats_arrays(self):
        f = self._quality_fractions("scl", {"cloud": lambda scl: np.isin(scl, self.scl_filter),
                                            "nodata": lambda scl: scl == self.nodata_value})
        return f["cloud"], f["nodata"]


class ModisIndexer(_PlatformIndexer):
    """MODIS 09A1: state flags, or the QC MODLAND bits (stacchip-modis's decoding); nodata
    where ``sur_refl_b01`` holds the fill value."""

    platform = "modis"

    def _stats_arrays(self):
        from stacchip_modis import FILL, QC, STATE, qc_cloud, state_cloud

        nodata = self._quality_fractions("sur_refl_b01", {"nodata": lambda b01: b01 == FILL})[
            "nodata"
        ]
        if self._quality_key(STATE):
            cloud = self._quality_fractions(STATE, {"cloud": state_cloud})["cloud"]
        else:
            cloud = self._quality_fractions(QC, {"cloud": qc_cloud})["cloud"]
        return cloud, nodata
