"""stacchip: index STAC items into machine-learning chips and read them on demand."""

from importlib.metadata import PackageNotFoundError, version

from .chipper import Chipper, chip_from_row, item_for_row
from .errors import AssetError, PlatformError, PluginError, ProjectionError, StacchipError
from .grid import ChipGrid
from .hookspecs import hookimpl
from .index import read_index, write_index
from .indexer import Indexer
from .merge import merge
from .platform import Band, Platform
from .raster import NativeBand
from .stats import ChipStats, bit_mask, class_mask

try:
    __version__ = version("stacchip-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AssetError", "Band", "ChipGrid", "ChipStats", "Chipper", "Indexer", "NativeBand", "Platform",
    "PlatformError", "PluginError", "ProjectionError", "StacchipError", "bit_mask", "chip_from_row",
    "class_mask", "hookimpl", "item_for_row", "merge", "read_index", "write_index",
]
