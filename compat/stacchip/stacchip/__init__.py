"""stacchip 0.1's API, unchanged, over stacchip-core.

``from stacchip.indexer import NoStatsChipIndexer, LandsatIndexer, Sentinel2Indexer, ...``,
``from stacchip.chipper import Chipper`` and ``from stacchip.utils import load_indexer_s3``
keep working; the work is done by ``stacchip_core`` and its source plugins. Where 0.1 gave
wrong values (chip footprints from a 10 m shape with a 60 m transform, MODIS clouds from the
wrong QC bit pattern), these classes give the correct ones: see "Migrating from stacchip 0.1"
in docs/migrating.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stacchip")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
