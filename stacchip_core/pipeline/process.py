"""The processing pipeline, the same for every platform, one sample per job:

sample N -> select hook -> items -> for each item: normalize hook (assets into the store),
write ``{platform}/{item_id}/stac_item.json``, index it, write
``index/{platform}/{item_id}/index_{item_id}.parquet`` **last**, so an index never points
at missing data. An item whose index exists is complete and skipped on reruns; one
without is redone, and assets already copied are not copied again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pystac
import shapely

from stacchip_core.core.index import index_bytes
from stacchip_core.core.indexer import Indexer
from stacchip_core.errors import PlatformError, SampleAttributeError, SampleError
from stacchip_core.io import keys
from stacchip_core.io.catalog import STAC_API_ENV, open_catalog
from stacchip_core.io.store import open_store
from stacchip_core.platform import Platform
from stacchip_core.plugins import get_platform, get_plugin_manager
from stacchip_core.types import Report, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One sample location: row ``index`` of the sample source, its geometry in
    EPSG:4326 (None when the source has none) and its attributes."""

    index: int
    geometry: shapely.Geometry | None = None
    properties: dict = field(default_factory=dict)


class Attributes(dict):
    """A sample's attributes; reading a missing one is a SampleAttributeError that names
    the sample (not a bare ``KeyError: 'name'``).

    Args:
        values: The attributes.
        where: The sample, as the error names it (``sample 3 of samples.gpkg``).
    """

    def __init__(self, values: dict, where: str) -> None:
        super().__init__(values)
        self.where = where

    def __missing__(self, key):
        raise SampleAttributeError(f"{self.where} has no attribute {key!r}")


@dataclass(frozen=True)
class ItemResult(Report):
    """One item of a job: ``done`` with ``chips`` chips indexed into ``index`` (a URL), or
    ``skipped`` because its index exists (a rerun; ``chips`` is None then)."""

    item_id: str
    status: str  # "done" or "skipped"
    chips: int | None = None
    index: str | None = None


def load_sample(source: str | Path | None, index: int) -> Sample:
    """Row ``index`` of any layer geopandas reads (a local file, URL or s3:// path).

    Args:
        source: The sample source, or None for a sample with only its index (platforms that
            number their own samples).
        index: The row.

    Returns:
        The sample: its geometry in EPSG:4326 and its attributes.

    Raises:
        SampleError: A negative index, a source that cannot be read, or an index past its
            last row.
    """
    if index < 0:
        raise SampleError(f"sample index must be >= 0, got {index}")
    if source is None:
        return Sample(index, None, Attributes({}, f"sample {index}"))
    import geopandas as gpd

    location = str(source)
    if location.startswith("s3://"):
        from stacchip_core.io.settings import apply_gdal_options

        apply_gdal_options()
        location = "/vsis3/" + location[5:]
    try:
        frame = gpd.read_file(location)
    except Exception as exc:
        raise SampleError(f"cannot read sample source {source}: {exc}") from exc
    if not 0 <= index < len(frame):
        raise SampleError(f"sample {index} is out of range: {source} has {len(frame)} rows")
    if frame.crs is not None and frame.crs.to_epsg() != 4326:
        frame = frame.to_crs(4326)
    row = frame.iloc[index]
    properties = {k: _plain(v) for k, v in row.items() if k != frame.geometry.name}
    return Sample(index, row.geometry, Attributes(properties, f"sample {index} of {source}"))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def item_prefix(platform: str, item_id: str) -> str:
    """``{platform}/{item_id}``: the item id from the catalog is encoded, the platform name
    must be plain (see io.keys), so no key leaves the bucket.

    Args:
        platform: The platform's name.
        item_id: The item's id.

    Returns:
        The key prefix of the item's assets and JSON.

    Raises:
        UnsafeKeyError: A platform name that is not plain, or an empty item id.
    """
    return keys.join(keys.name(platform, "platform name"), keys.segment(item_id, "item id"))


def index_key(platform: str, item_id: str) -> str:
    """``index/{platform}/{item_id}/index_{item_id}.parquet``: where an item's index goes.

    Args:
        platform: The platform's name.
        item_id: The item's id.

    Returns:
        The key.

    Raises:
        UnsafeKeyError: A platform name that is not plain, or an empty item id.
    """
    safe = keys.segment(item_id, "item id")
    return keys.join("index", keys.name(platform, "platform name"), safe, f"index_{safe}.parquet")


def item_key(platform: str, item_id: str) -> str:
    """``{platform}/{item_id}/stac_item.json``: where an item's normalized JSON goes.

    Args:
        platform: The platform's name.
        item_id: The item's id.

    Returns:
        The key.

    Raises:
        UnsafeKeyError: A platform name that is not plain, or an empty item id.
    """
    return keys.join(item_prefix(platform, item_id), "stac_item.json")


def process_item(platform: Platform, item: pystac.Item, store: Store, chip_size: int | None = None,
                 max_nodata: float = 0.5) -> ItemResult:
    """Normalize, write and index one item into the store (skipped when its index exists).

    Args:
        platform: The item's platform.
        item: The item, as the selection hook gave it.
        store: The target bucket.
        chip_size: Chip size in pixels (default: the platform's).
        max_nodata: Chips with a larger nodata fraction are left out of the index.

    Returns:
        ``done`` with the chip count and the index's URL, or ``skipped``.

    Raises:
        PlatformError: No installed plugin normalizes items of the platform.
    """
    ikey = index_key(platform.name, item.id)
    if store.exists(ikey):
        log.info("%s: complete, skipped", item.id)
        return ItemResult(item.id, "skipped", index=store.url(ikey))
    prefix = item_prefix(platform.name, item.id)
    # a killed run may have left temporary files: redoing the item starts clean
    removed = store.remove_partial(prefix) + store.remove_partial(ikey.rpartition("/")[0])
    if removed:
        log.info("%s: removed %d temporary files of an interrupted run", item.id, removed)
    normalized = get_plugin_manager().hook.stacchip_normalize_item(
        platform=platform, item=item, store=store, prefix=prefix
    )
    if normalized is None:
        raise PlatformError(f"no installed plugin normalizes items of platform {platform.name!r}")
    skey = item_key(platform.name, item.id)
    normalized.set_self_href(store.url(skey))
    store.write_bytes(
        skey, json.dumps(normalized.to_dict(include_self_link=False), indent=1).encode()
    )
    table = Indexer(
        normalized,
        chip_size=chip_size or platform.chip_size,
        chip_max_nodata=max_nodata,
        platform=platform,
    ).create_index()
    url = store.write_bytes(
        ikey, index_bytes(table)
    )  # last: the index only points at data that exists
    log.info("%s: %d chips indexed", item.id, len(table))
    return ItemResult(item.id, "done", len(table), url)


def process(
    platform: str,
    index: int,
    bucket: str | Path,
    sample_source: str | Path | None = None,
    stac_api: str | None = None,
    chip_size: int | None = None,
    max_nodata: float = 0.5,
) -> list[ItemResult]:
    """Run one job: select the items for sample ``index`` and process each into ``bucket``.

    Args:
        platform: The platform's name.
        index: The sample's row in ``sample_source``.
        bucket: The target: a folder or ``s3://bucket[/prefix]``.
        sample_source: The sample locations (any layer geopandas reads); None only for
            platforms that number their own samples.
        stac_api: The catalog to select from (default: ``STACCHIP_STAC_API``, else the
            platform's).
        chip_size: Chip size in pixels (default: the platform's).
        max_nodata: Chips with a larger nodata fraction are left out of the index.

    Returns:
        One result per selected item, in selection order.

    Raises:
        SampleError: No sample source where the platform needs one, or the sample cannot
            be read.
        SampleAttributeError: The selection needs an attribute the sample source lacks.
        PlatformError: No installed plugin selects or normalizes items of the platform.
    """
    plat = get_platform(platform)
    if sample_source is None and plat.extra.get("samples") is None:
        # only platforms that number their own samples (LINZ's prefixes) run without a source
        raise SampleError(
            f"platform {platform!r} needs a sample source (--sample or STACCHIP_SAMPLE_SOURCE)"
        )
    sample = load_sample(sample_source, index)
    stac_api = stac_api or os.environ.get(STAC_API_ENV) or plat.extra.get("stac_api")
    catalog = open_catalog(stac_api) if stac_api else None
    try:
        items = get_plugin_manager().hook.stacchip_select_items(
            platform=plat, sample=sample, catalog=catalog
        )
    except SampleAttributeError as exc:  # the selection reads an attribute the sample source lacks
        raise SampleAttributeError(f"{exc}, which platform {platform!r} needs") from exc
    if items is None:
        raise PlatformError(f"no installed plugin selects items for platform {platform!r}")
    log.info("sample %d: %d items selected for %s", index, len(items), platform)
    store = open_store(bucket)
    return [process_item(plat, item, store, chip_size, max_nodata) for item in items]


def process_job(
    index: int,
    *,
    platform: str,
    bucket: str,
    sample_source=None,
    stac_api=None,
    chip_size=None,
    max_nodata: float = 0.5,
    batch_size: int = 1,
    workers: int = 4,
) -> list[ItemResult]:
    """One job, picklable for a cluster (its results pickle too): sample ``index``, or with
    ``batch_size`` B the samples ``index*B .. index*B+B-1`` (see process_batch).

    Args:
        index: The job's number.
        platform: The platform's name.
        bucket: The target: a folder or ``s3://bucket[/prefix]``.
        sample_source: The sample locations (see ``process``).
        stac_api: The catalog to select from (see ``process``).
        chip_size: Chip size in pixels (default: the platform's).
        max_nodata: Chips with a larger nodata fraction are left out of the index.
        batch_size: Samples per job.
        workers: Items processed at once within a batch.

    Returns:
        One result per selected item.
    """
    if batch_size <= 1:
        return process(platform, index, bucket, sample_source, stac_api, chip_size, max_nodata)
    return process_batch(
        platform, index, batch_size, bucket, sample_source, stac_api, chip_size, max_nodata, workers
    )


def process_batch(
    platform: str,
    job: int,
    batch_size: int,
    bucket: str | Path,
    sample_source=None,
    stac_api: str | None = None,
    chip_size: int | None = None,
    max_nodata: float = 0.5,
    workers: int = 4,
) -> list[ItemResult]:
    """Job ``job`` of batches of ``batch_size`` samples: the items of every sample of the
    batch (the last batch stops at the source's end), each item once, ``workers`` items
    processed at once. Results in sample, then selection order.

    Args:
        platform: The platform's name.
        job: The job's number.
        batch_size: Samples per job.
        bucket: The target: a folder or ``s3://bucket[/prefix]``.
        sample_source: The sample locations (see ``process``).
        stac_api: The catalog to select from (see ``process``).
        chip_size: Chip size in pixels (default: the platform's).
        max_nodata: Chips with a larger nodata fraction are left out of the index.
        workers: Items processed at once.

    Returns:
        One result per distinct selected item.

    Raises:
        ConfigError: The batch starts past the last sample.
        SampleError: The sample source cannot be read, or there is none where the platform
            needs one.
        PlatformError: No installed plugin selects or normalizes items of the platform.
    """
    from concurrent.futures import ThreadPoolExecutor

    from stacchip_core.pipeline.runner import batch_range

    plat = get_platform(platform)
    samples = batch_range(job, batch_size, count_samples(platform, sample_source))
    stac_api = stac_api or os.environ.get(STAC_API_ENV) or plat.extra.get("stac_api")
    catalog = open_catalog(stac_api) if stac_api else None
    items: dict[str, pystac.Item] = {}
    for index in samples:
        sample = load_sample(sample_source, index)
        selected = get_plugin_manager().hook.stacchip_select_items(
            platform=plat, sample=sample, catalog=catalog
        )
        if selected is None:
            raise PlatformError(f"no installed plugin selects items for platform {platform!r}")
        for item in selected:  # a place two samples share is processed once
            items.setdefault(item.id, item)
    log.info(
        "batch %d (samples %d-%d): %d items selected for %s",
        job,
        samples.start,
        samples.stop - 1,
        len(items),
        platform,
    )
    store = open_store(bucket)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="stacchip-process") as pool:
        return list(
            pool.map(
                lambda item: process_item(plat, item, store, chip_size, max_nodata), items.values()
            )
        )


@dataclass(frozen=True)
class IndexManyReport(Report):
    """What ``stacchip index`` did with many items: ``done`` items indexed into ``chips``
    chips under ``output``, ``failed`` items (``errors``: one line each), in ``seconds``."""

    output: str
    done: int
    failed: int
    chips: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        """Items indexed or failed per second (0 for a run that took no time)."""
        return (self.done + self.failed) / self.seconds if self.seconds else 0.0


def index_many(items, output: str | Path, workers: int = 8, **indexer_kwargs) -> IndexManyReport:
    """Index many items concurrently (core.indexer.build_indexes) into a folder or
    ``s3://`` prefix laid out as the processors do:
    ``index/{platform}/{item_id}/index_{item_id}.parquet``
    (merge the ``index`` folder). An item without a self link is written beside its index
    (``{platform}/{item_id}/stac_item.json``) first, so every row points at an item that exists.

    Args:
        items: items, item dicts, or item JSON paths/URLs.
        output: the target folder or ``s3://bucket/prefix``.
        workers: items in flight at once.
        **indexer_kwargs: passed to Indexer.

    Returns:
        Counts, the time taken and one line per failed item.
    """
    import time

    from stacchip_core.core.indexer import build_indexes, load_item

    store = open_store(output)
    start = time.perf_counter()

    def linked():
        for item in items:
            if isinstance(item, (pystac.Item, dict)):
                item = load_item(item)
                if not item.get_self_href():
                    name = indexer_kwargs.get("platform") or item.collection_id or "unknown"
                    key = item_key(name, item.id)
                    item.set_self_href(store.url(key))
                    store.write_bytes(
                        key, json.dumps(item.to_dict(include_self_link=False), indent=1).encode()
                    )
            yield item

    done = failed = chips = 0
    errors: list[str] = []
    for result in build_indexes(linked(), workers=workers, **indexer_kwargs):
        if result.table is None or result.item is None:
            failed += 1
            errors.append(f"{getattr(result.item, 'id', '?')}: {result.error}")
            log.warning("indexing failed: %s", errors[-1])
            continue
        platform = result.table["platform"][0].as_py() if len(result.table) else (
            indexer_kwargs.get("platform") or result.item.collection_id or "unknown")
        store.write_bytes(index_key(platform, result.item.id), index_bytes(result.table))
        done += 1
        chips += len(result.table)
    seconds = time.perf_counter() - start
    report = IndexManyReport(store.url(""), done, failed, chips, round(seconds, 3), errors)
    log.info(
        "indexed %d items (%d chips, %d failed) in %.1f s: %.1f items/s",
        done,
        chips,
        failed,
        seconds,
        report.items_per_second,
    )
    return report


def count_samples(platform: str, sample_source=None) -> int:
    """How many samples ``--all`` means: the rows of the sample source, or the platform's
    own sample count (LINZ's list of prefixes).

    Args:
        platform: The platform's name.
        sample_source: The sample locations, if any.

    Returns:
        The number of samples.

    Raises:
        SampleError: The source cannot be read, or there is none and the platform does not
            number its own samples.
    """
    if sample_source is not None:
        import pyogrio

        location = str(sample_source)
        if location.startswith("s3://"):
            from stacchip_core.io.settings import apply_gdal_options

            apply_gdal_options()
            location = "/vsis3/" + location[5:]
        try:
            return int(pyogrio.read_info(location)["features"])
        except Exception as exc:
            raise SampleError(f"cannot read sample source {sample_source}: {exc}") from exc
    count = get_platform(platform).extra.get("samples")
    if count is None:
        raise SampleError(f"platform {platform!r} needs a sample source (--sample) for --all")
    return int(count)
