"""stacchip: index STAC items into machine-learning chips and read them on demand.

The package root is the public API: what a plugin or a user script needs is importable
from here. The tree shows the layers (each imports only from those below it):
``cli`` > ``demo`` > ``training`` | ``pipeline`` > ``core`` > ``io`` > the plugin API
(``plugins``, ``hookspecs``, ``platform``, ``types``, ``errors``).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from stacchip_core.errors import (
    AssetError,
    CatalogError,
    ConfigError,
    CubeError,
    GridError,
    IndexFormatError,
    ItemError,
    NotFoundError,
    ObjectError,
    OutputError,
    PlatformError,
    PluginError,
    ProjectionError,
    SampleAttributeError,
    SampleError,
    ShapeError,
    StacchipError,
    StackError,
    UnsafeKeyError,
)
from stacchip_core.hookspecs import hookimpl, hookimpl_for
from stacchip_core.platform import Band, Platform
from stacchip_core.types import Catalog, Sample, Store

# The readers, the indexer and the grid are imported on first use (PEP 562): they pull in
# rasterio, pystac, shapely and pyarrow.compute, 0.3 s of CPU that a spawned DataLoader worker
# (which reads through the layout path and needs none of them) or a plugin would pay on import
_LAZY = {
    "Chipper": "stacchip_core.core.chipper",
    "chip_from_row": "stacchip_core.core.chipper",
    "item_for_row": "stacchip_core.core.chipper",
    "ChipStats": "stacchip_core.core.chipstats",
    "bit_mask": "stacchip_core.core.chipstats",
    "class_mask": "stacchip_core.core.chipstats",
    "ChipGrid": "stacchip_core.core.grid",
    "read_index": "stacchip_core.core.index",
    "write_index": "stacchip_core.core.index",
    "Indexer": "stacchip_core.core.indexer",
    "NativeBand": "stacchip_core.core.raster",
    "merge": "stacchip_core.pipeline.merge",
}

if TYPE_CHECKING:
    from stacchip_core.core.chipper import Chipper, chip_from_row, item_for_row
    from stacchip_core.core.chipstats import ChipStats, bit_mask, class_mask
    from stacchip_core.core.grid import ChipGrid
    from stacchip_core.core.index import read_index, write_index
    from stacchip_core.core.indexer import Indexer
    from stacchip_core.core.raster import NativeBand
    from stacchip_core.pipeline.merge import merge


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

try:
    __version__ = version("stacchip-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AssetError",
    "Band",
    "Catalog",
    "CatalogError",
    "ChipGrid",
    "ChipStats",
    "Chipper",
    "ConfigError",
    "CubeError",
    "GridError",
    "IndexFormatError",
    "Indexer",
    "ItemError",
    "NativeBand",
    "NotFoundError",
    "ObjectError",
    "OutputError",
    "Platform",
    "PlatformError",
    "PluginError",
    "ProjectionError",
    "Sample",
    "SampleAttributeError",
    "SampleError",
    "ShapeError",
    "StacchipError",
    "StackError",
    "Store",
    "UnsafeKeyError",
    "bit_mask",
    "chip_from_row",
    "class_mask",
    "hookimpl",
    "hookimpl_for",
    "item_for_row",
    "merge",
    "read_index",
    "write_index",
]
