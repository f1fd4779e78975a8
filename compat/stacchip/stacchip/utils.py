"""stacchip 0.1's helpers to load an indexer for an item a processor wrote."""

from __future__ import annotations

import json
from pathlib import Path

from pystac import Item

from stacchip.indexer import ChipIndexer
from stacchip_core.io.store import read_url


def _plain(value):
    return (
        value.as_py() if hasattr(value, "as_py") else value
    )  # pyarrow scalars, as README examples pass


def item_key(platform, item_id) -> str:
    return f"{_plain(platform)}/{_plain(item_id)}/stac_item.json"


def load_item_s3(bucket: str, platform, item_id) -> Item:
    url = f"s3://{bucket}/{item_key(platform, item_id)}"
    item = Item.from_dict(json.loads(read_url(url)))
    item.set_self_href(url)
    return item


def load_item_local(mountpath, platform, item_id) -> Item:
    return Item.from_file(str(Path(mountpath) / item_key(platform, item_id)))


def load_indexer_s3(bucket: str, platform: str, item_id: str) -> ChipIndexer:
    """The item ``{platform}/{item_id}/stac_item.json`` of ``bucket`` (S3, with stacchip's
    endpoint settings), as an indexer."""
    return ChipIndexer(load_item_s3(bucket, platform, item_id))


def load_indexer_local(mountpath: Path, platform: str, item_id: str) -> ChipIndexer:
    """The same from a local copy (or mount) of the bucket."""
    return ChipIndexer(load_item_local(mountpath, platform, item_id))
