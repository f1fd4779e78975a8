"""Local chips, cold and warm: rasterio (a GDAL open per asset of each item) against the layout
path (plain local reads of the touched tiles), to keep core.read.LOCAL_LAYOUT_CHIPS honest.

    uv run --all-packages python benchmarks/bench_local.py --items 41 --repeats 2

Full-size synthetic Sentinel-2 (benchmarks/bench_cloud.py's scene), ``--items`` copies under
their own paths (symlinks: every item is new to GDAL and to the reader), RGB, one chip per call
(as a DataLoader's ``__getitem__``). "cold": one chip of each item; "warm": as many chips of
one item. One warm-up chip of another item first (threads, the I/O loop, GDAL's drivers).
Every measurement runs in a fresh process. Reports chips/s and CPU ms per chip; on a shared
machine trust the CPU column.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def items(src: Path, root: Path, n: int) -> list[Path]:
    """``n`` copies of the item ``src`` in folders of symlinks to its files."""
    item = json.loads(src.read_text())
    out = []
    for i in range(n):
        folder = root / f"i{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        copy = json.loads(json.dumps(item))
        copy["id"] = f"{item['id']}_{i}"
        for asset in copy["assets"].values():
            href = Path(asset["href"]) if Path(asset["href"]).is_absolute() else src.parent / asset["href"]
            link = folder / href.name
            if not link.exists():
                link.symlink_to(href.resolve())
            asset["href"] = str(link)
        path = folder / "item.json"
        path.write_text(json.dumps(copy))
        out.append(path)
    return out


def measure(index: Path, mode: str, kind: str) -> dict:
    """One measurement in this process."""
    import pyarrow.parquet as pq

    from stacchip_core.core import read

    read.LOCAL_LAYOUT_CHIPS = 0 if mode == "rasterio" else 1 << 30
    by_item: dict[str, list[dict]] = {}
    for row in pq.read_table(index).to_pylist():
        by_item.setdefault(row["item_id"], []).append(row)
    groups = list(by_item.values())
    warmup, groups = groups[0][0], groups[1:]
    chosen = [g[len(g) // 2] for g in groups] if kind == "cold" else groups[0][:len(groups)]
    with read.Reader() as reader:
        reader.stacks([warmup], ["red", "green", "blue"])
        t0, c0 = time.perf_counter(), time.process_time()
        for row in chosen:
            reader.stacks([row], ["red", "green", "blue"])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": mode, "kind": kind, "chips": len(chosen), "chips_s": round(len(chosen) / wall, 1),
            "cpu_ms_chip": round(1000 * cpu / len(chosen), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument("--items", type=int, default=41)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--measure", nargs=3, metavar=("INDEX", "MODE", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args.measure[2])))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_cloud import scene

    from stacchip_core.core.indexer import Indexer

    root = args.data / "local"
    index = root / f"index{args.items}.parquet"
    if not index.exists():
        paths = items(scene(args.data), root, args.items)
        pq.write_table(pa.concat_tables([Indexer(str(p), stats=False).create_index() for p in paths]), index)
    for _ in range(args.repeats):
        for mode in ("rasterio", "layouts"):
            for kind in ("cold", "warm"):
                out = subprocess.run([sys.executable, __file__, "--measure", str(index), mode, kind],
                                     capture_output=True, text=True, check=True).stdout
                print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
