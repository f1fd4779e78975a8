"""What fetching a chip's tiles costs the client, apart from decoding them (issue 18).

bench_loaders.py measures whole loaders against a decode floor (CPU to inflate the tiles a
chip touches). This one measures the other large part of a chip's CPU: the requests. The same
files, server and chips as bench_loaders (nginx at 20 ms per request, 60 items, 640 random
chips, RGB: one range of one tile per band and chip), fetched in batches of 16 chips (48
requests at once) by each way there is to ask for them, each in a fresh process:

- ``read_ranges``: stacchip's I/O layer as the readers call it (``io.objects.read_ranges``:
  signing, the store's cache, checks of size and length, tallies), over obstore;
- ``obstore-get``: what it awaits, bare: ``obstore.get_async`` (status, size and ETag) and then
  the body (``bytes_async``), on the same loop;
- ``obstore-range``: ``obstore.get_range_async``, the body in one await (no size, no ETag);
- ``obstore-sync``: ``obstore.get`` and ``.bytes()`` from 48 threads: no asyncio at all;
- ``portable``: ``read_ranges`` over the fork-safe transport (aiohttp), what a DataLoader
  worker forked after its parent used obstore reads with.

Reported per mode: requests/s, CPU ms per request and per RGB chip (getrusage of the process,
all its threads), context switches per request (``ru_nvcsw + ru_nivcsw``), and the requests
nginx counted. The decode floor of the same chips (bench_loaders.decode_floor) is printed
beside, so the two parts of a chip's CPU can be compared.

    python benchmarks/bench_fetch.py                       # 20 ms, 2 runs of each mode
    python benchmarks/bench_fetch.py --delay 0 --runs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

log = logging.getLogger("bench_fetch")

MODES = ("read_ranges", "obstore-get", "obstore-range", "obstore-sync", "portable")

JOB = textwrap.dedent(r"""
import asyncio, json, os, resource, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
cfg = json.loads(sys.argv[1])
if cfg["mode"] == "portable":
    os.environ["STACCHIP_IO_TRANSPORT"] = "portable"
import obstore
from stacchip_core.io import objects

def stats(reset=False):
    with urllib.request.urlopen(cfg["stats_url"] + ("?reset=1" if reset else "")) as r:
        return json.load(r)

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)  # the process: every thread
    return r.ru_utime + r.ru_stime, r.ru_nvcsw + r.ru_nivcsw

with open(cfg["fetches"]) as fh:  # (href, start, end, size, etag, digest, head)
    fetches = [tuple(f) for f in json.load(fh)]
mode, batch = cfg["mode"], cfg["batch"]
pool = ThreadPoolExecutor(batch) if mode == "obstore-sync" else None

async def one(href, s, e, size, etag, digest, head):
    if mode in ("read_ranges", "portable"):
        expect = objects.Expect(size, etag, digest, head, deferred=True)  # as deflate layouts
        return await objects.read_ranges(href, [(s, e)], expect)
    store, path = objects.locate(href)
    if mode == "obstore-get":
        result = await obstore.get_async(store, path, options={"range": (s, e)})
        return await result.bytes_async()
    return await obstore.get_range_async(store, path, start=s, end=e)

def sync_one(f):
    href, s, e = f[:3]
    store, path = objects.locate(href)
    return obstore.get(store, path, options={"range": (s, e)}).bytes()

async def gather(group):
    return await asyncio.gather(*(one(*f) for f in group))

def read(group):
    if pool is not None:
        return list(pool.map(sync_one, group))
    return objects.run(gather(group))

groups = [fetches[i:i + batch] for i in range(0, len(fetches), batch)]
read(groups[0])  # connections opened, stores built: not timed
stats(reset=True)
(c0, s0), t0 = usage(), time.perf_counter()
n = 0
for g in groups[1:]:
    n += sum(1 for _ in read(g))
dt = time.perf_counter() - t0
c1, s1 = usage()
print(json.dumps({"requests_made": n, "seconds": dt, "cpu": c1 - c0, "switches": s1 - s0,
                  "requests": stats()["requests"]}))
""")


def fetches_of(table, bands: list[str]) -> list[list]:
    """Per chip and band, in the chips' order: the range of each tile it touches (one: the
    bench's chips each lie in one tile), with what the layout recorded of the object."""
    from stacchip_core.core.layout import decode
    from stacchip_core.core.tiles import GridSpec, _ranges, plan
    from stacchip_core.plugins import get_platform

    s2 = get_platform("sentinel-2-l2a")
    out = []
    for r in table.to_pylist():
        lays = decode(r["layouts"])
        grid = GridSpec.from_layouts(lays, int(r["chip_size"]))
        for b in bands:
            key = next(k for k in s2.find(b).keys if k in lays)  # type: ignore[union-attr]
            lay = lays[key]
            for s, e in _ranges(plan(lay, grid, r["chip_index_x"], r["chip_index_y"])):
                out.append([lay.href, s, e, lay.size, lay.etag, lay.digest, lay.head])
    return out


def main() -> None:
    from bench_loaders import RGB, decode_floor, index_items, pick, run_job, serve
    from nginx_server import NginxServer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument("--delay", type=float, default=20, help="ms per request (default 20)")
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--chips", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16, help="chips per batch (default 16)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each mode, interleaved")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from bench_cloud import scene

    scene_dir = scene(args.data).parent
    modes = args.modes.split(",")
    with NginxServer(args.data / "loaders", delay=args.delay / 1000) as server:
        _, items = serve(args.data, server.url, args.items)
        table = pick(index_items(items), args.chips, seed=3)  # bench_loaders' chips
        tiles_per_chip, floor, floor_rows = decode_floor(table, RGB, scene_dir)
        fetches = fetches_of(table, RGB)
        per_chip = len(fetches) / len(table)
        fetches_file = args.data / "bench_fetch_ranges.json"
        fetches_file.write_text(json.dumps(fetches))
        rows: dict[str, list[dict]] = {m: [] for m in modes}
        for run in range(args.runs):
            for mode in modes:
                cfg = {"mode": mode, "fetches": str(fetches_file), "batch": args.batch * len(RGB),
                       "stats_url": server.stats_url}
                r = run_job(sys.executable, JOB, cfg)
                if "error" in r:
                    raise SystemExit(f"{mode}: {r['error']}\n{r.get('stderr', '')}")
                rows[mode].append(r)
                log.info("run %d %-14s %.3f CPU ms per request", run + 1, mode,
                         1000 * r["cpu"] / r["requests_made"])
    kib = sum(f[2] - f[1] for f in fetches) / len(fetches) / 1024
    print(f"\n{args.delay:g} ms per request; {len(table)} RGB chips, {per_chip:.0f} requests of "
          f"{kib:.0f} KiB each per chip, {args.batch * len(RGB)} at once; decode floor "
          f"{floor:.2f} CPU ms per chip ({floor_rows:.2f} inflating only the rows chips need; "
          f"{tiles_per_chip:.1f} tiles/chip); runs shown as a / b\n")
    print("| how the ranges are fetched | requests/s | CPU ms per request | CPU ms per RGB chip "
          "| x the decode floor | context switches per request | requests nginx counted |")
    print("|---|---|---|---|---|---|---|")

    def each(fmt, key) -> str:
        return " / ".join(fmt.format(key(r)) for r in rows[mode])

    for mode in modes:
        print(
            f"| `{mode}` | {each('{:.0f}', lambda r: r['requests_made'] / r['seconds'])} | "
            f"{each('{:.3f}', lambda r: 1000 * r['cpu'] / r['requests_made'])} | "
            f"{each('{:.2f}', lambda r: 1000 * r['cpu'] / r['requests_made'] * per_chip)} | "
            f"{each('{:.2f}x', lambda r: 1000 * r['cpu'] / r['requests_made'] * per_chip / floor)}"
            f" | {each('{:.1f}', lambda r: r['switches'] / r['requests_made'])} | "
            f"{each('{:d}', lambda r: r['requests'])} |"
        )
    out = args.data / "results_fetch.json"
    saved = {"rows": rows, "floor": floor, "floor_rows": floor_rows, "per_chip": per_chip,
             "args": vars(args) | {"data": str(args.data)}}
    out.write_text(json.dumps(saved))


if __name__ == "__main__":
    main()
