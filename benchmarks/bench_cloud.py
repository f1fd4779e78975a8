"""Chips over object storage: this project's layout path, its rasterio path and stacchip 0.1.38,
on the same full-size synthetic Sentinel-2 COGs served by a loopback HTTP Range server that adds
a delay to every request (tests/rangeserver.py), in one run.

    python benchmarks/bench_cloud.py --original-python /tmp/orig-venv/bin/python
    python benchmarks/bench_cloud.py --delay 0.05 --items 8     # 50 ms, fewer chips

"Cold" means every chip comes from an item no process has read before: every item is served
under its own URLs (a folder of symlinks to the same COGs), so neither GDAL's caches nor ours
can help, as a shuffled loader over a large archive sees it. Every measurement runs in a fresh
process; request and byte counts come from the server. Chip counts are small to keep a run at a
few minutes: throughputs are single runs, not medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

S2 = "sentinel-2-l2a"
ITEM_ID = "S2B_T20HNJ_20240311T140636_CLOUD"
RGB = ["red", "green", "blue"]
TEN = [
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "swir16",
    "swir22",
]
NOISE = 512  # as bench.py: ~1.4:1 deflate, like real imagery
BATCH = 32


def scene(data: Path) -> Path:
    """S2 L2A, 10980 px at 10 m: blue, green, red, nir; six 20 m bands; SCL. 512 px tiles."""
    from stacchip_core.demo import synthetic

    item = data / ITEM_ID / f"{ITEM_ID}.json"
    if not item.exists():
        synthetic.sentinel2_scene(
            data,
            10980,
            bands_10m=("blue", "green", "red", "nir"),
            bands_20m=tuple(TEN[3:6]) + ("nir08", "swir16", "swir22"),
            seed=7,
            noise=NOISE,
            item_id=ITEM_ID,
        )
    return item


def serve_items(
    item: Path, root: Path, url: str, n: int, folder: str = "i", name: str = "item"
) -> list[tuple[Path, str]]:
    """``n`` copies of the item, each with its own asset URLs (symlinked folders
    ``{folder}NNNN``, item JSON ``{name}NNNN.json``): ``[(local item JSON, item URL)]``."""
    root.mkdir(parents=True, exist_ok=True)
    src = json.loads(item.read_text())
    out = []
    for i in range(n):
        assets = root / f"{folder}{i:04d}"
        if not assets.exists():
            assets.symlink_to(item.parent.resolve(), target_is_directory=True)
        d = json.loads(json.dumps(src))
        d["id"] = f"{src['id']}-{i:04d}"
        for asset in d["assets"].values():
            asset["href"] = f"{url}/{folder}{i:04d}/{Path(asset['href']).name}"
        path = root / f"{name}{i:04d}.json"
        path.write_text(json.dumps(d))
        out.append((path, f"{url}/{name}{i:04d}.json"))
    return out


def one_chip_per_item(items: list[tuple[Path, str]], seed: int):
    """An index (pyarrow table) with one random chip of each item, layouts recorded."""
    import pyarrow as pa

    from stacchip_core.core.indexer import Indexer

    rng = random.Random(seed)
    parts = []
    for _, url in items:
        table = Indexer(url, platform=S2, stats=False).create_index()
        parts.append(table.slice(rng.randrange(len(table)), 1))
    return pa.concat_tables(parts)


# Each job prints one JSON line: {"passes": [{"seconds", "requests", "bytes"}...], "chips": n}
JOB = textwrap.dedent(r"""
import json, sys, time, urllib.request
kind, index, bands, stats_url = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
import pyarrow.parquet as pq
rows = pq.read_table(index).to_pylist()
# one chip of another fresh item, untimed: imports, runtimes, plugins
warmup, rows = rows[:1], rows[1:]

def stats():
    return json.load(urllib.request.urlopen(stats_url))

def measure(fn):
    s0 = stats(); t = time.perf_counter(); fn(); dt = time.perf_counter() - t; s1 = stats()
    return {
        "seconds": dt,
        "requests": s1["requests"] - s0["requests"],
        "bytes": s1["bytes"] - s0["bytes"],
    }

passes = []
if kind.startswith("orig"):
    import pystac
    from stacchip.indexer import NoStatsChipIndexer
    from stacchip.chipper import Chipper
    items = []
    for r in warmup + rows:  # item JSON read before timing (the original takes items, not URLs)
        d = json.load(open(r["local_item"]))
        d["properties"]["proj:epsg"] = int(d["properties"].pop("proj:code").split(":")[1])
        d["stac_extensions"] = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"]
        items.append(pystac.Item.from_dict(d, migrate=False))
    for r, item in zip(warmup, items[:1]):
        Chipper(NoStatsChipIndexer(item), assets=bands).chip(r["chip_index_x"], r["chip_index_y"])
    items = items[1:]

    def run():
        for r, item in zip(rows, items):
            chipper = Chipper(NoStatsChipIndexer(item), assets=bands)
            chipper.chip(r["chip_index_x"], r["chip_index_y"])
    passes = [measure(run), measure(run)]
else:
    from stacchip_core.training.chipread import ChipReader
    from stacchip_core.training.dataset import ChipDataset
    if kind == "layout-seq":
        ds = ChipDataset(index, bands=bands)
        run = lambda: [ds[i] for i in range(1, len(ds))]
    elif kind == "layout-batch":
        ds = ChipDataset(index, bands=bands)
        run = lambda: [
            ds.__getitems__(list(range(k, min(k + 32, len(ds))))) for k in range(1, len(ds), 32)
        ]
    elif kind == "rasterio-seq":
        reader = ChipReader(bands, use_layouts=False)
        run = lambda: [reader.read(r) for r in rows]
    elif kind == "rasterio-batch":
        reader = ChipReader(bands, use_layouts=False)
        run = lambda: [reader.read_many(rows[k:k + 32]) for k in range(0, len(rows), 32)]
    (ds.__getitems__([0]) if kind.startswith("layout") else reader.read(warmup[0]))
    passes = [measure(run), measure(run)]
print(json.dumps({"passes": passes, "chips": len(rows)}))
""")


def job(
    python: str, kind: str, index: Path, bands: list[str], stats_url: str, env: dict | None = None
) -> dict:
    env = {**os.environ, "GDAL_CACHEMAX": "64", **(env or {})}
    out = subprocess.run(
        [python, "-c", JOB, kind, str(index), ",".join(bands), stats_url],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tiles_touched(table, bands: list[str]) -> float:
    """Mean number of tiles (over the requested bands' assets) a chip of ``table`` touches."""
    from stacchip_core.core.layout import decode
    from stacchip_core.core.tiles import GridSpec, plan
    from stacchip_core.plugins import get_platform

    platform = get_platform(S2)
    total = 0
    rows = table.to_pylist()
    for r in rows:
        lays = decode(r["layouts"])
        grid = GridSpec.from_layouts(lays, int(r["chip_size"]))
        keys = {k for b in bands for k in platform.find(b).keys if k in lays}
        total += sum(
            len(plan(lays[k], grid, r["chip_index_x"], r["chip_index_y"]).tiles) for k in keys
        )
    return total / len(rows)


def local_rows(item: Path, repeats: int) -> dict:
    """Local disk: bench.py's open-handle floor and Chipper rows on this scene, and index time
    with and without layouts (SCL statistics included, as `stacchip index` does)."""
    import bench

    r = {
        k: bench.run(sys.executable, k, item, repeats) for k in ("floor-open-handles", "ours-chips")
    }
    code = textwrap.dedent(r"""
    import json, statistics, sys, time
    from stacchip_core.core.indexer import Indexer
    item = sys.argv[1]
    Indexer(item).create_index()  # warm-up
    t = {True: [], False: []}
    for _ in range(int(sys.argv[2])):
        for on in (False, True):
            s = time.perf_counter()
            Indexer(item, layouts=on).create_index()
            t[on].append(time.perf_counter() - s)
    print(json.dumps({"with": statistics.median(t[True]), "without": statistics.median(t[False])}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code, str(item), str(repeats)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GDAL_CACHEMAX": "64"},
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    r["index"] = json.loads(out.stdout.strip().splitlines()[-1])
    return r


def main() -> None:
    import pyarrow.parquet as pq
    from rangeserver import RangeServer

    from stacchip_core.io.settings import GDAL_DEFAULTS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument("--original-python", help="python of a venv with stacchip==0.1.38")
    parser.add_argument(
        "--delay", type=float, default=0.02, help="seconds added to every request (default 0.02)"
    )
    parser.add_argument(
        "--items", type=int, default=16, help="chips (= fresh items) per sequential scenario"
    )
    parser.add_argument(
        "--batches", type=int, default=2, help="batches of 32 fresh items per batched scenario"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the local-disk rows")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    item = scene(args.data)
    print(f"data ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    n, nb = args.items, args.batches * BATCH
    scenarios = [  # (name, job kind, bands, python, fresh items)
        ("layout, sequential ds[i]", "layout-seq", RGB, None, n),
        ("layout, batched __getitems__(32)", "layout-batch", RGB, None, nb),
        ("rasterio path, sequential", "rasterio-seq", RGB, None, n),
        ("rasterio path, read_many(32)", "rasterio-batch", RGB, None, BATCH),
        ("stacchip 0.1.38 Chipper.chip", "orig", RGB, "orig", n),
        ("stacchip 0.1.38 Chipper.chip, GDAL tuned", "orig-tuned", RGB, "orig", n),
        ("layout, sequential ds[i], 10 bands", "layout-seq", TEN, None, n),
        ("layout, batched __getitems__(32), 10 bands", "layout-batch", TEN, None, nb),
        ("rasterio path, sequential, 10 bands", "rasterio-seq", TEN, None, max(4, n // 2)),
        ("stacchip 0.1.38 Chipper.chip, 10 bands", "orig", TEN, "orig", max(4, n // 2)),
        (
            "stacchip 0.1.38 Chipper.chip, 10 bands, GDAL tuned",
            "orig-tuned",
            TEN,
            "orig",
            max(4, n // 2),
        ),
    ]
    if not args.original_python:
        scenarios = [s for s in scenarios if s[3] != "orig"]
    results = []
    root = args.data / "served"
    root.mkdir(exist_ok=True)
    with RangeServer(root, delay=args.delay) as server:
        scenarios = [(a, b, c, d, e + 1) for a, b, c, d, e in scenarios]  # + 1 warm-up item each
        total = sum(s[4] for s in scenarios)
        items = serve_items(item, root, server.url, total)
        server.delay = 0  # indexing is not what is measured here
        t0 = time.perf_counter()
        import pyarrow as pa

        start = 0
        for name, kind, bands, python, count in scenarios:
            mine = items[start:start + count]
            start += count
            table = one_chip_per_item(mine, seed=start)
            table = table.append_column("local_item", pa.array([str(p) for p, _ in mine]))
            path = args.data / f"bench_cloud_{kind}_{len(bands)}_{start}.parquet"
            pq.write_table(table, path)
            results.append(
                {
                    "name": name,
                    "kind": kind,
                    "bands": bands,
                    "python": python,
                    "index": path,
                    "tiles": tiles_touched(table, bands),
                }
            )
        print(f"{total} items indexed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        server.delay = args.delay
        for r in results:
            python = args.original_python if r["python"] == "orig" else sys.executable
            # "tuned": the original given the GDAL settings this project applies (io.settings)
            env = GDAL_DEFAULTS if r["kind"] == "orig-tuned" else None
            r.update(job(python, r["kind"], r["index"], r["bands"], f"{server.url}/_stats", env))
            print(
                f"  {r['name']}: {r['chips'] / r['passes'][0]['seconds']:.1f} chips/s",
                file=sys.stderr,
            )
    local = None if args.skip_local else local_rows(item, args.repeats)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; "
        f"{args.delay * 1000:.0f} ms per request"
    )
    print(
        f"{'scenario (cold: each chip from a fresh item)':<52}"
        f"{'chips':>6}{'chips/s':>9}{'req/chip':>9}"
        f"{'tiles/chip':>11}{'KiB/chip':>9}{'warm chips/s':>13}"
    )
    for r in results:
        cold, warm = r["passes"]
        c = r["chips"]
        print(
            f"{r['name']:<52}{c:>6}{c / cold['seconds']:>9.1f}"
            f"{cold['requests'] / c:>9.1f}{r['tiles']:>11.1f}"
            f"{cold['bytes'] / c / 1024:>9.0f}{c / warm['seconds']:>13.1f}"
        )
    by = {(r["kind"], len(r["bands"])): r for r in results}
    speed = lambda k, b: by[(k, b)]["chips"] / by[(k, b)]["passes"][0]["seconds"]
    if args.original_python:
        orig = {
            b: max(speed("orig", b), speed("orig-tuned", b)) for b in (3, 10)
        }  # its better setting
        print("ratios to stacchip 0.1.38 (cold, its faster GDAL setting):")
        print(
            f"  sequential RGB            {speed('layout-seq', 3) / orig[3]:6.1f}x  (target >= 10)"
        )
        print(
            f"  batched RGB               {speed('layout-batch', 3) / orig[3]:6.1f}x  (target >= "
            "40)"
        )
        print(
            f"  sequential 10 bands       {speed('layout-seq', 10) / orig[10]:6.1f}x  (target >= "
            "10)"
        )
        print(f"  batched 10 bands          {speed('layout-batch', 10) / orig[10]:6.1f}x")
    if local:
        floor = local["floor-open-handles"]
        ours = local["ours-chips"]
        rate = lambda v: v["chips"] / v["median"]
        print(
            f"local disk: open-handle floor {rate(floor):.1f} chips/s, Chipper.chip "
            f"{rate(ours):.1f} chips/s: "
            f"ratio {rate(ours) / rate(floor):.2f} (target >= 0.9)"
        )
        ix = local["index"]
        print(
            f"index time, local S2 with SCL stats: {ix['without']:.3f} s without layouts, "
            f"{ix['with']:.3f} s with: "
            f"{ix['with'] / ix['without']:.2f}x (target <= 1.3)"
        )
    # index size: the whole scene (1764 chips) with and without layouts
    from stacchip_core.core.indexer import Indexer

    sizes = {}
    for on in (True, False):
        table = Indexer(str(item), stats=False, layouts=on).create_index()
        path = args.data / f"bench_cloud_size_{on}.parquet"
        pq.write_table(table, path)
        sizes[on] = (path.stat().st_size, len(table), len(table["layouts"][0].as_py() or b""))
    (with_bytes, chips, blob), (without_bytes, _, _) = sizes[True], sizes[False]
    print(
        f"layouts in the index: {blob} B per item (11 assets), "
        f"{(with_bytes - without_bytes) / chips:.1f} B per chip "
        f"in the file ({chips} chips: {without_bytes / 1024:.0f} KiB without, "
        f"{with_bytes / 1024:.0f} KiB with)"
    )
    (args.data / "results_cloud.json").write_text(
        json.dumps(
            {
                "results": [
                    {k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()}
                    for r in results
                ],
                "local": local,
                "sizes": {str(k): v for k, v in sizes.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
