"""The main job on an embedded default: a synthetic archive of every source, indexed,
merged, previewed and summarised, with no cloud account and no network."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from . import synthetic
from .chipper import Chipper
from .index import read_index, write_index
from .indexer import Indexer
from .merge import merge
from .output import band_stack, stretch_rgb, write_png

log = logging.getLogger(__name__)

# (generator, keyword arguments, platform): small scenes with each source's real layout
SCENES = [
    (synthetic.sentinel2_scene, {"size": 1536, "item_id": "S2A_T20HNJ_20240311T140636_L2A", "seed": 1}, None),
    (synthetic.sentinel2_scene, {"size": 1536, "item_id": "S2B_MSIL2A_20240419T095549_R122_T47XML", "seed": 2,
                                 "naming": "planetary-computer", "epsg": 32647, "origin": (399960.0, 9100020.0)}, None),
    (synthetic.landsat_scene, {"rows": 1100, "cols": 1150, "seed": 3}, None),
    (synthetic.naip_scene, {"rows": 1400, "cols": 1100}, "naip"),
    (synthetic.linz_scene, {"rows": 1300, "cols": 1100}, "linz"),
]


def run_demo(out: str | Path, preview_chips: int = 8) -> dict:
    """Generate, index, merge and preview the synthetic archive under ``out``."""
    out = Path(out)
    archive, bucket, previews = out / "archive", out / "bucket", out / "previews"
    indexers = []
    for make, kwargs, platform in SCENES:
        path = make(archive, **kwargs)
        indexer = Indexer(str(path), platform=platform)
        table = indexer.create_index()
        item_id = indexer.item.id
        write_index(table, bucket / "index" / indexer.platform_name / item_id / f"index_{item_id}.parquet")
        log.info("indexed %s: %d chips", item_id, len(table))
        indexers.append(indexer)
    merged = merge(bucket / "index", bucket / "merged.parquet")
    table = read_index(bucket / "merged.parquet")
    summary = []
    for name in sorted(set(table["platform"].to_pylist())):
        rows = table.filter(pc.equal(table["platform"], name))
        cloud = rows["cloud_cover_percentage"].to_numpy()
        nodata = rows["nodata_percentage"].to_numpy()
        png = _preview(name, rows, indexers, previews / f"{name}.png", preview_chips)
        summary.append({
            "platform": name, "items": len(set(rows["item_id"].to_pylist())), "chips": len(rows),
            "cloud_mean": float(cloud.mean()), "cloud_free_chips": int((cloud == 0).sum()),
            "nodata_mean": float(nodata.mean()), "nodata_free_chips": int((nodata == 0).sum()), "preview": str(png),
        })
    return {"archive": str(archive), "index": merged["output"], "previews": str(previews), "summary": summary}


def _preview(platform: str, rows, indexers, path: Path, n: int) -> Path:
    """A PNG grid (2 rows) of the first ``n`` chips of a platform, each RGB-stretched."""
    by_item = {ix.item.id: ix for ix in indexers}
    tiles = []
    for row in rows.slice(0, n).to_pylist():
        indexer = by_item[row["item_id"]]
        with Chipper(indexer) as chipper:
            stack, names = band_stack(chipper.chip(row["chip_index_x"], row["chip_index_y"]), indexer.platform)
        tiles.append(stretch_rgb(stack, names, indexer.platform.nodata if indexer.platform else None))
    cols = (len(tiles) + 1) // 2
    cs = tiles[0].shape[1]
    canvas = np.full((3, 2 * cs + 4, cols * (cs + 4)), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[:, r * (cs + 4): r * (cs + 4) + cs, c * (cs + 4): c * (cs + 4) + cs] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, canvas)
    return path
