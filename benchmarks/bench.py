"""Benchmark stacchip against the original stacchip 0.1.38 on the same synthetic full-size scenes.

    python benchmarks/bench.py                  # everything; the original needs --original-python
    python benchmarks/bench.py --original-python /path/to/venv/bin/python --repeats 5
    python benchmarks/bench.py --original-python /tmp/orig-venv/bin/python --s2-index-only \
        --rounds 3 --repeats 3 [--also-python main=/work/main/.venv/bin/python]

Each measurement runs in a fresh process (peak RSS is per measurement); times are medians of
--repeats runs with the files in the page cache. Data is generated once into --data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).parent
NOISE = 512  # uniform noise amplitude in the bands: ~2.3:1 deflate, close to real imagery


def generate(data: Path) -> dict[str, Path]:
    """Full-size scenes: S2 L2A (4 x 10980^2 uint16 at 10 m, SCL 5490^2 at 20 m) and Landsat
    (8271 x 8331 bands and qa_pixel), COGs with 512 px tiles, deflate."""
    from stacchip_core.demo import synthetic

    s2 = data / "S2A_T20HNJ_20240311T140636_L2A" / "S2A_T20HNJ_20240311T140636_L2A.json"
    if not s2.exists():
        synthetic.sentinel2_scene(
            data,
            10980,
            bands_10m=("blue", "green", "red", "nir"),
            bands_20m=(),
            seed=7,
            noise=NOISE,
        )
    ls = (
        data
        / "LC09_L2SR_086107_20240311_20240312_02_T2_SR"
        / "LC09_L2SR_086107_20240311_20240312_02_T2_SR.json"
    )
    if not ls.exists():
        synthetic.landsat_scene(data, 8271, 8331, seed=7, noise=NOISE)
    return {"s2": s2, "landsat": ls}


# Each job prints one JSON line: {"seconds": [...], "cpu": [...], "maxrss_mib": ...}
JOB = textwrap.dedent(r"""
import json, random, resource, sys, time
kind, item_path, repeats, n_chips = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import numpy as np, pystac
d = json.load(open(item_path))
times, cpu = [], []

def cpu_now():
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return r.ru_utime + r.ru_stime

def timed(fn):
    fn()  # warm-up, untimed: first-touch page faults and lazy imports are not the work measured
    for _ in range(repeats):
        c = cpu_now(); t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
        cpu.append(cpu_now() - c)
    return out

random.seed(0)
if kind.startswith("orig"):
    # stacchip 0.1 reads only the legacy proj:epsg of projection extension v1
    d["properties"]["proj:epsg"] = int(d["properties"].pop("proj:code").split(":")[1])
    d["stac_extensions"] = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"]
    if "qa_pixel" in d["assets"]:  # it always reads qa_pixel from alternate.s3.href
        d["assets"]["qa_pixel"]["alternate"] = {"s3": {"href": d["assets"]["qa_pixel"]["href"]}}
    item = pystac.Item.from_dict(d, migrate=False)
    from stacchip.indexer import Sentinel2Indexer, LandsatIndexer
    from stacchip.chipper import Chipper
    if kind == "orig-s2-index":
        timed(lambda: Sentinel2Indexer(item).create_index())
    elif kind == "orig-landsat-index":
        timed(lambda: LandsatIndexer(item).create_index())
    elif kind == "orig-chips":
        indexer = Sentinel2Indexer(item)
        xy = [
            (random.randrange(indexer.x_size), random.randrange(indexer.y_size))
            for _ in range(n_chips)
        ]
        chipper = Chipper(indexer, assets=["red", "green", "blue"])
        timed(lambda: [chipper.chip(x, y) for x, y in xy])
else:
    import rasterio
    from rasterio.windows import Window
    from stacchip_core import Chipper, Indexer
    item = pystac.Item.from_dict(d)
    if kind == "ours-s2-index":
        timed(lambda: Indexer(item).create_index())
    elif kind == "ours-landsat-index":
        timed(lambda: Indexer(item).create_index())
    elif kind == "read-qa":
        timed(lambda: rasterio.open(d["assets"]["qa_pixel"]["href"]).read(1))
    elif kind == "read-scl-native":
        timed(lambda: rasterio.open(d["assets"]["scl"]["href"]).read(1))
    else:
        chipper = Chipper(item, assets=["red", "green", "blue"])
        xy = [
            (random.randrange(chipper.grid.x_size), random.randrange(chipper.grid.y_size))
            for _ in range(n_chips)
        ]
        if kind == "ours-chips":
            chipper.chip(*xy[0])  # handles open once, as in a long-running loader
            timed(lambda: [chipper.chip(x, y) for x, y in xy])
        elif kind == "ours-chips-parallel":
            chipper.chips(xy[:4], workers=2)
            timed(lambda: chipper.chips(xy, workers=2))
        elif kind == "floor-open-handles":
            handles = [rasterio.open(d["assets"][k]["href"]) for k in ("red", "green", "blue")]
            timed(
                lambda: [
                    [h.read(window=Window(x * 256, y * 256, 256, 256)) for h in handles]
                    for x, y in xy
                ]
            )
maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": times, "cpu": cpu, "maxrss_mib": maxrss_mib}))
""")


def s3_copy(item: Path, data: Path) -> tuple[Path, dict, object]:
    """Start moto's S3 server on loopback, upload the RGB COGs; an item pointing at them."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "STACCHIP_S3_ENDPOINT": f"http://{host}:{port}",
    }
    client = boto3.client("s3", endpoint_url=env["STACCHIP_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket="bench")
    d = json.loads(item.read_text())
    for key in ("red", "green", "blue"):
        client.upload_file(d["assets"][key]["href"], "bench", f"s2/{key}.tif")
        d["assets"][key]["href"] = f"s3://bench/s2/{key}.tif"
    path = data / "s2_on_s3.json"
    path.write_text(json.dumps(d))
    return path, env, server


def run(
    python: str, kind: str, item: Path, repeats: int, env: dict | None = None, chips: int = 200
) -> dict:
    # a small GDAL block cache: repeats must decode again, as the first run (and the
    # original, which reopens files for every chip) does
    env = {"GDAL_CACHEMAX": "64", **(env or {})}
    # run from the temp folder: `python -c` puts the working directory first on sys.path, so
    # from a checkout another venv's python would import this checkout's stacchip_core
    out = subprocess.run(
        [python, "-c", JOB, kind, str(Path(item).resolve()), str(repeats), str(chips)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
        cwd=tempfile.gettempdir(),
    )
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["median"] = statistics.median(result["seconds"])
    result["chips"] = chips
    return result


def s2_index_comparison(items: dict[str, Path], original: str, rounds: int, repeats: int,
                        also: list[tuple[str, str]]) -> None:
    """One full-size Sentinel-2 scene indexed with SCL statistics and layouts (the defaults)
    by this checkout, by any ``also`` pythons, and by 0.1.38's Sentinel2Indexer: ``rounds``
    rounds, the tools interleaved within each, ``repeats`` timed builds per job after a
    warm-up. Prints medians of wall and CPU seconds (every thread), the load average at each
    job, and the speed-ups over 0.1.38."""
    jobs = [("this checkout", "ours-s2-index", sys.executable), *[
        (name, "ours-s2-index", py) for name, py in also], ("0.1.38", "orig-s2-index", original)]
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    loads = []
    for _ in range(rounds):
        for name, kind, python in jobs:
            loads.append(os.getloadavg()[0])
            r = run(python, kind, items["s2"], repeats)
            wall.setdefault(name, []).extend(r["seconds"])
            cpu.setdefault(name, []).extend(r["cpu"])
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {rounds} rounds x {repeats} builds per tool")
    print(f"load average (1 min) at each job: {' '.join(f'{x:.1f}' for x in loads)}")
    for name, (w, c) in med.items():
        print(f"{name:<16} wall median {w:.3f} s  CPU median {c:.3f} s   "
              f"(wall {' '.join(f'{x:.3f}' for x in wall[name])})")
    ow, oc = med["0.1.38"]
    for name, (w, c) in med.items():
        if name != "0.1.38":
            print(f"speed-up of {name} over 0.1.38: wall {ow / w:.1f}x, CPU {oc / c:.1f}x "
                  "(target >= 10)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument(
        "--original-python", help="python of a venv with stacchip==0.1.38 (numpy<2, pyarrow 25.0.1)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--s2-index-only", action="store_true",
                        help="only the Sentinel-2 index build against 0.1.38, in --rounds rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also-python", action="append", default=[], metavar="NAME=PYTHON",
                        help="with --s2-index-only: another checkout's python to compare")
    args = parser.parse_args()
    t = time.perf_counter()
    items = generate(args.data)
    print(f"data ready in {time.perf_counter() - t:.1f} s under {args.data}", file=sys.stderr)
    if args.s2_index_only:
        if not args.original_python:
            raise SystemExit("--s2-index-only needs --original-python")
        also = [tuple(a.split("=", 1)) for a in args.also_python]
        s2_index_comparison(items, args.original_python, args.rounds, args.repeats, also)
        return
    ours = sys.executable
    r = {}
    for kind, item in [
        ("ours-s2-index", "s2"),
        ("read-scl-native", "s2"),
        ("ours-landsat-index", "landsat"),
        ("read-qa", "landsat"),
        ("floor-open-handles", "s2"),
        ("ours-chips", "s2"),
        ("ours-chips-parallel", "s2"),
    ]:
        r[kind] = run(ours, kind, items[item], args.repeats)
    s3_item, s3_env, server = s3_copy(items["s2"], args.data)
    try:
        # moto answers range requests slowly on large objects: few chips, one repeat
        r["ours-chips-s3"] = run(ours, "ours-chips", s3_item, 1, s3_env, chips=40)
        r["ours-chips-parallel-s3"] = run(ours, "ours-chips-parallel", s3_item, 1, s3_env, chips=40)
    finally:
        server.stop()
    if args.original_python:
        for kind, item in [
            ("orig-s2-index", "s2"),
            ("orig-landsat-index", "landsat"),
            ("orig-chips", "s2"),
        ]:
            r[kind] = run(
                args.original_python,
                kind,
                items[item],
                max(1, args.repeats // 2) if "index" in kind else args.repeats,
            )

    def line(name, key, unit="s"):
        v = r[key]
        print(f"{name:<44}{v['median']:>9.3f} s   peak RSS {v['maxrss_mib']:>6.0f} MiB")

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    line("stacchip S2 index (1764 chips)", "ours-s2-index")
    line("  reading SCL at native 20 m", "read-scl-native")
    line("stacchip Landsat index (1024 chips)", "ours-landsat-index")
    line("  reading qa_pixel once", "read-qa")
    chips = lambda key: r[key]["chips"] / r[key]["median"]
    print(f"{'open-handle floor, 200 RGB chips':<44}{chips('floor-open-handles'):>9.1f} chips/s")
    print(f"{'stacchip Chipper.chip, 1 thread':<44}{chips('ours-chips'):>9.1f} chips/s")
    print(f"{'stacchip Chipper.chips, 2 threads':<44}{chips('ours-chips-parallel'):>9.1f} chips/s")
    print(f"{'stacchip Chipper.chip from loopback S3':<44}{chips('ours-chips-s3'):>9.1f} chips/s")
    print(
        f"{'stacchip Chipper.chips, 2 threads, S3':<44}{chips('ours-chips-parallel-s3'):>9.1f} "
        "chips/s"
    )
    print("ratios:")
    print(
        "  Landsat index / one qa_pixel read        "
        f"{r['ours-landsat-index']['median'] / r['read-qa']['median']:.2f}  (target <= 1.3)"
    )
    print(
        "  single-thread chips / open-handle floor  "
        f"{chips('ours-chips') / chips('floor-open-handles'):.2f}  (target >= 0.9)"
    )
    if args.original_python:
        line("original S2 index", "orig-s2-index")
        line("original Landsat index", "orig-landsat-index")
        print(f"{'original Chipper.chip':<44}{chips('orig-chips'):>9.1f} chips/s")
        print(
            "  S2 index speed-up vs original            "
            f"{r['orig-s2-index']['median'] / r['ours-s2-index']['median']:.1f}x  (target >= 10)"
        )
        print(
            "  S2 index peak RSS ours / original        "
            f"{r['ours-s2-index']['maxrss_mib'] / r['orig-s2-index']['maxrss_mib']:.2f}  (target "
            "< 1)"
        )
        print(
            "  parallel chips / original chips          "
            f"{chips('ours-chips-parallel') / chips('orig-chips'):.1f}x  (target >= 3)"
        )
    (args.data / "results.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
