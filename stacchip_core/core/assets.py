"""Which assets of an item hold pixels a chip is made of: the one rule every reader, the
indexer (layouts) and the header fallback of the grid use."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pystac

# roles of assets that are pictures of the data, not the data (Earth Search's "visual" TCI,
# thumbnails, overviews) or not pixels at all
NON_DATA_ROLES = frozenset({"thumbnail", "overview", "metadata", "visual", "visual-preview"})
RASTER_MEDIA = ("tiff", "jp2")


def is_raster_asset(asset: pystac.Asset) -> bool:
    """True when ``asset`` is a raster of data.

    Args:
        asset: a STAC asset.

    Returns:
        False when all its roles are non-data roles (thumbnail, overview, metadata, visual);
        else True for a TIFF or JPEG 2000 media type, for an asset with ``proj:shape``, and
        for an asset without a media type (many catalogs leave it out).
    """
    roles = set(asset.roles or ())
    if roles and roles <= NON_DATA_ROLES:
        return False
    media = (asset.media_type or "").lower()
    return not media or any(m in media for m in RASTER_MEDIA) or "proj:shape" in asset.extra_fields


def raster_keys(item: pystac.Item) -> list[str]:
    """The keys of ``item``'s raster data assets, in the item's order.

    Args:
        item: The STAC item.

    Returns:
        The asset keys.
    """
    return [k for k, a in item.assets.items() if is_raster_asset(a)]
