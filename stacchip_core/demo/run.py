"""The main job on an embedded default: the synthetic archive of every source, searched in
place by the embedded catalog, processed by the same pipeline as production jobs into a
local bucket folder, merged, previewed and summarised. No cloud account, no network."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from stacchip_core.demo.archive import build_archive
from stacchip_core.core.chipper import Chipper, item_for_row
from stacchip_core.core.index import read_index
from stacchip_core.pipeline.merge import merge
from stacchip_core.core.output import band_stack, stretch_rgb, write_png
from stacchip_core.plugins import platforms
from stacchip_core.pipeline.process import process

log = logging.getLogger(__name__)


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


def run_demo(out: str | Path, preview_chips: int = 8) -> dict:
    """Build the archive under ``out``, run one job per source, merge, preview, summarise."""
    out = Path(out).resolve()
    archive = build_archive(out / "archive")
    bucket, previews = out / "bucket", out / "previews"
    os.environ.setdefault("STACCHIP_LINZ_SOURCE", str(archive.linz_source))
    installed = platforms()
    for platform, source, index in demo_jobs(archive):
        if platform not in installed:
            log.warning("platform %s is not installed: skipped", platform)
            continue
        results = process(platform, index, bucket, source, str(archive.items))
        log.info("%s sample %d: %d items", platform, index, len(results))
    merged = merge(bucket / "index", bucket / "merged.parquet")
    table = read_index(bucket / "merged.parquet")
    summary = []
    for name in sorted(set(table["platform"].to_pylist())):
        rows = table.filter(pc.equal(table["platform"], name))
        cloud = rows["cloud_cover_percentage"].to_numpy()
        nodata = rows["nodata_percentage"].to_numpy()
        png = _preview(rows, installed.get(name), previews / f"{name}.png", preview_chips)
        summary.append({
            "platform": name, "items": len(set(rows["item_id"].to_pylist())), "chips": len(rows),
            "cloud_mean": float(cloud.mean()), "cloud_free_chips": int((cloud == 0).sum()),
            "nodata_mean": float(nodata.mean()), "nodata_free_chips": int((nodata == 0).sum()), "preview": str(png),
        })
    return {"archive": str(archive.root), "bucket": str(bucket), "index": merged["output"],
            "previews": str(previews), "summary": summary}


def _preview(rows, platform, path: Path, n: int) -> Path:
    """A PNG grid (2 rows) of the first ``n`` chips of a platform, read back from the bucket."""
    tiles = []
    for row in rows.slice(0, n).to_pylist():
        with Chipper(item_for_row(row), platform=platform, chip_size=row["chip_size"]) as chipper:
            stack, names = band_stack(chipper.chip(row["chip_index_x"], row["chip_index_y"]), platform)
        tiles.append(stretch_rgb(stack, names, platform.nodata if platform else None))
    cols = (len(tiles) + 1) // 2
    cs = max(t.shape[1] for t in tiles)
    canvas = np.full((3, 2 * cs + 4, cols * (cs + 4)), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[:, r * (cs + 4): r * (cs + 4) + tile.shape[1], c * (cs + 4): c * (cs + 4) + tile.shape[2]] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, canvas)
    return path
