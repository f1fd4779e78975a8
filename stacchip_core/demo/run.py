"""The main job on an embedded default: the synthetic archive of every source, searched in
place by the embedded catalog, processed by the same pipeline as production jobs into a
local bucket folder, merged, previewed and summarised. No cloud account, no network."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from stacchip_core.core.index import read_index
from stacchip_core.core.read import Reader
from stacchip_core.demo import synthetic
from stacchip_core.demo.archive import build_archive
from stacchip_core.demo.maps import index_map_html, index_map_png
from stacchip_core.demo.previews import preview_grid, read_preview_chips
from stacchip_core.pipeline.merge import merge
from stacchip_core.pipeline.process import process
from stacchip_core.plugins import platforms
from stacchip_core.types import Report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlatformSummary(Report):
    """One source of the demo: its items and chips, the mean cloud and nodata fractions
    over its chips, how many chips have none, and its preview grid (a PNG path)."""

    platform: str
    items: int
    chips: int
    cloud_mean: float
    cloud_free_chips: int
    nodata_mean: float
    nodata_free_chips: int
    preview: str


@dataclass(frozen=True)
class Throughput(Report):
    """Chips indexed per second (processing included); chips read per second through the
    read pipeline (the previews' chips and cloud masks, in batches per source; drawing the
    previews is not included), with the object-store requests and the reads that fell back
    to rasterio (local files: a cold item's first chips through layouts, then rasterio's open
    handles, by choice; neither counts as a fallback)."""

    items: int
    chips: int
    process_seconds: float
    chips_indexed_per_second: float
    chips_read: int
    read_seconds: float
    chips_read_per_second: float
    read_requests: int = 0
    read_fallbacks: int = 0
    draw_seconds: float = 0.0


@dataclass(frozen=True)
class StacksSummary(Report):
    """The stacks place (issue 21): its index, the time series and the multi-sensor stacks
    built from it, and their previews."""

    index: str
    series: str
    pairs: str
    series_stacks: int
    series_steps: int
    pair_stacks: int
    pair_platforms: list[str]
    series_preview: str
    pair_preview: str


@dataclass(frozen=True)
class DemoReport(Report):
    """Where the demo wrote the archive, the bucket, the merged index, the previews and the
    index maps, with a summary per source and the throughput."""

    archive: str
    bucket: str
    index: str
    previews: str
    map_html: str
    map_png: str | None  # None without matplotlib (the viz extra)
    summary: list[PlatformSummary]
    throughput: Throughput
    stacks: StacksSummary | None = None


def demo_jobs(archive) -> list[tuple[str, Path | None, int]]:
    """The jobs the demo runs: one per source.

    Args:
        archive: The synthetic archive (``build_archive``).

    Returns:
        (platform, sample source or None, sample index) per job.
    """
    return [
        ("sentinel-2-l2a", archive.mgrs, 0),
        ("landsat-c2l2-sr", archive.points, 0),
        ("landsat-c2l1", archive.points, 0),
        ("naip", archive.points, 1),
        ("linz", None, 0),
        ("sentinel-1-rtc", archive.mgrs, 0),
        ("modis", None, 0),
    ]


def run_demo(out: str | Path, preview_chips: int = 8) -> DemoReport:
    """Build the archive under ``out`` (scenes that look like land), run one job per source,
    merge, then write per-source preview grids, the index map (HTML and PNG) and a summary with
    the indexing and reading throughput. Platforms that are not installed are skipped.

    Args:
        out: The demo's folder: ``archive``, ``bucket``, ``previews`` and ``stacks`` go in it.
        preview_chips: Chips per source in its preview (the cloudiest).

    Returns:
        Where everything went, a summary per source and the throughput.
    """
    out = Path(out).resolve()
    with synthetic.land_appearance():
        archive = build_archive(out / "archive")
    bucket, previews = out / "bucket", out / "previews"
    os.environ.setdefault("STACCHIP_LINZ_SOURCE", str(archive.linz_source))
    installed = platforms()
    t0 = time.perf_counter()
    for platform, source, index in demo_jobs(archive):
        if platform not in installed:
            log.warning("platform %s is not installed: skipped", platform)
            continue
        results = process(platform, index, bucket, source, str(archive.items))
        log.info("%s sample %d: %d items", platform, index, len(results))
    process_s = time.perf_counter() - t0
    merged = merge(bucket / "index", bucket / "merged.parquet")
    table = read_index(bucket / "merged.parquet")
    summary, read_s, draw_s, read_chips = [], 0.0, 0.0, 0
    reader = Reader()
    for name in sorted(set(table["platform"].to_pylist())):
        rows = table.filter(pc.equal(table["platform"], name))
        cloud = rows["cloud_cover_percentage"].to_numpy()
        nodata = rows["nodata_percentage"].to_numpy()
        # the cloudiest chips first, so that the previews show what the fractions measure
        order = np.argsort(-cloud, kind="stable")[:preview_chips]
        chosen = rows.take(order).to_pylist()
        t = time.perf_counter()
        chips, masks = read_preview_chips(chosen, installed.get(name), reader)
        read_s += time.perf_counter() - t
        t = time.perf_counter()
        grid = preview_grid(
            chosen, installed.get(name), previews / f"{name}.png", chips=chips, masks=masks
        )
        draw_s += time.perf_counter() - t
        read_chips += len(order)
        summary.append(PlatformSummary(
            platform=name, items=len(set(rows["item_id"].to_pylist())), chips=len(rows),
            cloud_mean=float(cloud.mean()), cloud_free_chips=int((cloud == 0).sum()),
            nodata_mean=float(nodata.mean()), nodata_free_chips=int((nodata == 0).sum()),
            preview=str(grid["path"]),
        ))
    cost = reader.report
    reader.close()
    log.info(
        "read %d chips in %.2f s (%s); previews drawn in %.2f s", read_chips, read_s, cost, draw_s
    )
    map_html = index_map_html(table, previews / "index_map.html")
    map_png = index_map_png(table, previews / "index_map.png")
    throughput = Throughput(
        items=len(set(table["item_id"].to_pylist())), chips=len(table), process_seconds=process_s,
        chips_indexed_per_second=len(table) / process_s if process_s else 0.0,
        chips_read=read_chips, read_seconds=read_s,
        chips_read_per_second=read_chips / read_s if read_s else 0.0,
        read_requests=cost.requests, read_fallbacks=cost.fallback_count, draw_seconds=draw_s,
    )
    stacks = (
        run_stacks(archive.stack_items, out / "stacks", previews) if archive.stack_items else None
    )
    return DemoReport(
        archive=str(archive.root),
        bucket=str(bucket),
        index=merged.output,
        previews=str(previews),
        map_html=str(map_html),
        map_png=str(map_png) if map_png else None,
        summary=summary,
        throughput=throughput,
        stacks=stacks,
    )


STACK_PLATFORMS = ("sentinel-2-l2a", "sentinel-1-rtc", "landsat-c2l2-sr")


def run_stacks(items: Path, out: Path, previews: Path) -> StacksSummary | None:
    """Index the stacks place (Landsat at 128 px chips: an S2 chip then straddles several of
    them), build its time series (Sentinel-2, at least 4 steps) and its multi-sensor stacks
    (Sentinel-2 with Sentinel-1 and Landsat within 3 days), read one of each and preview them.

    Args:
        items: The stacks place's items (``Archive.stack_items``).
        out: The folder for its index and stacks tables.
        previews: The folder for the two previews.

    Returns:
        The stacks and their previews, or None (one log line) when one of the three
        platforms is not installed.
    """
    import pyarrow as pa

    from stacchip_core.core.index import write_index
    from stacchip_core.core.indexer import Indexer
    from stacchip_core.core.stacks import build_stacks, write_stacks
    from stacchip_core.demo.previews import pair_preview, series_preview
    from stacchip_core.training.stacks import StackReader

    missing = [p for p in STACK_PLATFORMS if p not in platforms()]
    if missing:
        log.warning("platforms %s are not installed: no stacks", missing)
        return None
    tables = [
        Indexer(
            str(p), chip_size=128 if "landsat" in p.parts[-3] else 256, chip_max_nodata=1.0
        ).create_index()
        for p in sorted(items.rglob("*.json"))
    ]
    index = write_index(pa.concat_tables(tables), out / "index.parquet")
    s2, s1, landsat = STACK_PLATFORMS
    series = build_stacks(index, anchor=s2, min_steps=4)
    pairs = build_stacks(index, anchor=s2, with_=[s1, landsat], window=3)
    write_stacks(series, out / "series.parquet")
    write_stacks(pairs, out / "pairs.parquet")
    reader = StackReader(
        {s2: ["red", "green", "blue"], landsat: ["red", "green", "blue"], s1: ["vv", "vh"]}
    )
    # the place's chip with the widest range of cloud over time
    clouds = series["member_cloud"].to_pylist()
    pick = int(np.argmax([max(c) - min(c) for c in clouds]))
    ts = reader.read(series.slice(pick, 1).to_pylist()[0])
    strip = series_preview(ts, clouds[pick], previews / "stack_series.png")
    pair = pair_preview(reader.read(pairs.slice(0, 1).to_pylist()[0]), previews / "stack_pair.png")
    return StacksSummary(
        index=str(index),
        series=str(out / "series.parquet"),
        pairs=str(out / "pairs.parquet"),
        series_stacks=series.num_rows,
        series_steps=int(series["steps"][pick].as_py()),
        pair_stacks=pairs.num_rows,
        pair_platforms=list(STACK_PLATFORMS),
        series_preview=str(strip["path"]),
        pair_preview=str(pair["path"]),
    )
