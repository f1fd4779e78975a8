"""Index builds (issue 20): items/s over a loopback object server that adds a delay to every
request, for this project sequentially and concurrently (build_indexes, what
``stacchip index --workers`` runs) and for stacchip 0.1.38's Sentinel2Indexer, in one run.

    python benchmarks/bench_index_build.py --original-python /tmp/orig-venv/bin/python
    python benchmarks/bench_index_build.py --items 1000 --sequential-items 1000 \
        --original-items 100 --workers 16 --delay 0.02

The scene is bench.py's full-size synthetic Sentinel-2 L2A item (blue, green, red and nir at
10980 px, SCL at 5490 px, a coastal band; 512 px tiles), generated once into --data. Every
item is served under its own URLs (a folder of symlinks to the same COGs: a few files on
disk), so no cache of either tool helps across items. The server is nginx
(benchmarks/nginx_server.py: files served from C, Range and multi-range, ``delay`` seconds
added to every request by its Lua module without blocking others, requests and bytes counted);
``--server python`` takes tests/rangeserver.py instead (threaded, single-range GETs; it takes
CPU from the client on 2 cores). Each measurement runs in a fresh process after one untimed
item; request counts come from the server. Defaults of both tools: SCL statistics and (for
this project) layouts. ``--original-items`` runs 0.1.38 on fewer items than the project's
sequential build when it is too slow for all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

JOB = textwrap.dedent(r"""
import json, sys, time, urllib.request
kind, workers, stats_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
items = json.loads(sys.stdin.read())  # [[local item JSON, item URL], ...]; the first is the warm-up

def stats():
    return json.load(urllib.request.urlopen(stats_url))

if kind == "ours":
    from stacchip_core.core.indexer import build_indexes
    def run(batch):
        # tables are dropped as they come: each holds its layouts blob once per row in memory
        # (18 MB for this scene), so 1,000 of them would not fit
        rows = 0
        for r in build_indexes([u for _, u in batch], workers=workers):
            assert r.table is not None, r.error
            rows += len(r.table)
        return rows
else:
    import pystac
    from stacchip.indexer import Sentinel2Indexer
    def run(batch):
        rows = 0
        for path, _ in batch:
            d = json.load(open(path))
            # stacchip 0.1 reads only the legacy proj:epsg of projection extension v1
            d["properties"]["proj:epsg"] = int(d["properties"].pop("proj:code").split(":")[1])
            d["stac_extensions"] = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"]
            rows += len(Sentinel2Indexer(pystac.Item.from_dict(d, migrate=False)).create_index())
        return rows

run(items[:1])
s0 = stats(); t = time.perf_counter(); rows = run(items[1:])
dt = time.perf_counter() - t; s1 = stats()
print(json.dumps({"seconds": dt, "items": len(items) - 1, "rows": rows,
                  "requests": s1["requests"] - s0["requests"], "bytes": s1["bytes"] - s0["bytes"]}))
""")


def job(python: str, kind: str, workers: int, items: list, stats_url: str) -> dict:
    env = {**os.environ, "GDAL_CACHEMAX": "64"}
    out = subprocess.run(
        [python, "-c", JOB, kind, str(workers), stats_url],
        input=json.dumps(items),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from bench import generate
    from bench_cloud import serve_items
    from nginx_server import NginxServer
    from rangeserver import RangeServer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument("--original-python", help="python of a venv with stacchip==0.1.38")
    parser.add_argument(
        "--delay", type=float, default=0.02, help="seconds added to every request (default 0.02)"
    )
    parser.add_argument("--items", type=int, default=1000, help="items of the concurrent builds")
    parser.add_argument(
        "--sequential-items", type=int, default=50, help="items of the sequential builds"
    )
    parser.add_argument(
        "--original-items", type=int, help="items of 0.1.38's build (default: --sequential-items)"
    )
    parser.add_argument(
        "--workers", default="8,32", help="concurrent builds to run (items in flight)"
    )
    parser.add_argument("--server", choices=("nginx", "python"), default="nginx")
    args = parser.parse_args()
    item = generate(args.data)["s2"]
    root = args.data / "served-build"
    seq = args.sequential_items
    plan = [("stacchip, sequential (workers=1)", "ours", 1, seq)]
    plan += [
        (f"stacchip, build_indexes(workers={w})", "ours", int(w), args.items)
        for w in args.workers.split(",")
    ]
    if args.original_python:
        plan.append(("stacchip 0.1.38 Sentinel2Indexer, sequential", "orig", 1,
                     args.original_items or seq))
    serve = NginxServer if args.server == "nginx" else RangeServer
    load = os.getloadavg()
    with serve(root, delay=args.delay) as server:
        total = 1 + sum(n for *_, n in plan) + len(plan)
        items = [(str(p), u) for p, u in serve_items(item, root, server.url, total, "b", "build")]
        start, results = 0, []
        for name, kind, workers, n in plan:
            mine = items[start:start + n + 1]  # + 1 warm-up item; every item fresh
            start += n + 1
            python = args.original_python if kind == "orig" else sys.executable
            r = job(python, kind, workers, mine, f"{server.url}/_stats")
            r["name"] = name
            results.append(r)
            print(f"  {name}: {r['items'] / r['seconds']:.2f} items/s", file=sys.stderr, flush=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; "
        f"{args.delay * 1000:.0f} ms per request ({args.server}); load average before "
        f"{load[0]:.1f}, after {os.getloadavg()[0]:.1f}"
    )
    print(f"{'build':<48}{'items':>6}{'seconds':>9}{'items/s':>9}{'req/item':>9}{'KiB/item':>9}")
    for r in results:
        print(f"{r['name']:<48}{r['items']:>6}{r['seconds']:>9.1f}{r['items'] / r['seconds']:>9.2f}"
              f"{r['requests'] / r['items']:>9.1f}{r['bytes'] / r['items'] / 1024:>9.0f}")
    (args.data / "results_index_build.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
