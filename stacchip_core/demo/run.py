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
from stacchip_core.demo import synthetic
from stacchip_core.demo.archive import build_archive
from stacchip_core.demo.maps import index_map_html, index_map_png
from stacchip_core.demo.previews import preview_grid
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
    """Chips indexed per second (processing included) and chips read per second (previews)."""

    items: int
    chips: int
    process_seconds: float
    chips_indexed_per_second: float
    chips_read: int
    read_seconds: float
    chips_read_per_second: float


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


def demo_jobs(archive) -> list[tuple[str, Path | None, int]]:
    """(platform, sample source, sample index) of the jobs the demo runs."""
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
    the indexing and reading throughput."""
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
    summary, read_s, read_chips = [], 0.0, 0
    for name in sorted(set(table["platform"].to_pylist())):
        rows = table.filter(pc.equal(table["platform"], name))
        cloud = rows["cloud_cover_percentage"].to_numpy()
        nodata = rows["nodata_percentage"].to_numpy()
        # the cloudiest chips first, so that the previews show what the fractions measure
        order = np.argsort(-cloud, kind="stable")[:preview_chips]
        t = time.perf_counter()
        grid = preview_grid(rows.take(order).to_pylist(), installed.get(name), previews / f"{name}.png")
        read_s += time.perf_counter() - t
        read_chips += len(order)
        summary.append(PlatformSummary(
            platform=name, items=len(set(rows["item_id"].to_pylist())), chips=len(rows),
            cloud_mean=float(cloud.mean()), cloud_free_chips=int((cloud == 0).sum()),
            nodata_mean=float(nodata.mean()), nodata_free_chips=int((nodata == 0).sum()),
            preview=str(grid["path"]),
        ))
    map_html = index_map_html(table, previews / "index_map.html")
    map_png = index_map_png(table, previews / "index_map.png")
    throughput = Throughput(
        items=len(set(table["item_id"].to_pylist())), chips=len(table), process_seconds=process_s,
        chips_indexed_per_second=len(table) / process_s if process_s else 0.0,
        chips_read=read_chips, read_seconds=read_s,
        chips_read_per_second=read_chips / read_s if read_s else 0.0,
    )
    return DemoReport(archive=str(archive.root), bucket=str(bucket), index=merged.output, previews=str(previews),
                      map_html=str(map_html), map_png=str(map_png) if map_png else None, summary=summary,
                      throughput=throughput)
