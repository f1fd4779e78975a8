"""Stacks (issue 21): building stacks tables from large synthetic indexes, and reading 12-step
RGB time series and Sentinel-1 + Sentinel-2 pairs over a loopback object server that adds a
delay to every request, against reading the same members one chip at a time.

    python benchmarks/bench_stacks.py                        # build 1M rows, read at 20 ms
    python benchmarks/bench_stacks.py --rows 1000000 10000000 --skip-read
    python benchmarks/bench_stacks.py --skip-build --delay 0.05

Building: a synthetic index written once per size into ``--data`` (S2-like items of 42 x 42
chips, 12 or more dates per tile, every tile's grid on the same UTM numbers, so footprints must
tell the tiles apart; layout blobs as large as real S2 ones; 10 % more rows of Sentinel-1
items on another grid for the pairs); each build runs in a fresh process (time and peak RSS
are its own) and includes writing the stacks file.

Reading: "cold" means each stack comes from data no process has read: every stack's members
are served under their own URLs (folders of symlinks to the same COGs), so no cache helps. The
server is tests/rangeserver.py in its own process (a Python server: on 2 cores it takes CPU
from the client, so absolute rates are lower bounds); request and byte counts come from it.
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
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

S2, S1 = "sentinel-2-l2a", "sentinel-1-rtc"
RGB = ["red", "green", "blue"]
K = 42  # chips across an item (an S2 tile of 10980 px at 256 px chips)
NOISE = 512  # as bench.py: ~1.4:1 deflate, like real imagery
BATCH = 8  # stacks per batch (a 12-step RGB batch is 8 x 12 x 3 chips)


# --- a large synthetic index -------------------------------------------------------------------


def _wkb_boxes(x0, y0, x1, y1):
    """WKB polygons (little-endian, 93 bytes each) of boxes, as a pyarrow binary array."""
    import numpy as np
    import pyarrow as pa

    n = len(x0)
    dt = np.dtype([("bo", "u1"), ("t", "<u4"), ("r", "<u4"), ("n", "<u4"), ("xy", "<f8", (10,))])
    a = np.zeros(n, dt)
    a["bo"], a["t"], a["r"], a["n"] = 1, 3, 1, 5
    a["xy"] = np.stack([x1, y0, x1, y1, x0, y1, x0, y0, x1, y0], axis=1)  # counterclockwise
    offsets = np.arange(n + 1, dtype=np.int32) * dt.itemsize
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(a.tobytes())]
    )


def _layout_blob(item_id: str, grid) -> bytes:
    """A layout blob the size of a real S2 item's: 11 assets of 121 tiles."""
    import numpy as np

    from stacchip_core.core.layout import AssetLayout, encode

    rng = np.random.default_rng(zlib.crc32(item_id.encode()))
    lays = []
    for k in range(11):
        counts = rng.integers(200_000, 400_000, 121)
        offsets = np.cumsum(np.r_[16_384, counts[:-1]])
        lays.append(
            AssetLayout(
                key=f"b{k}",
                href=f"https://bucket.invalid/{item_id}/b{k}.tif",
                width=10980,
                height=10980,
                tile_width=1024,
                tile_height=1024,
                dtype="uint16",
                bands=1,
                planar=1,
                compression=8,
                predictor=2,
                nodata=0.0,
                size=int(offsets[-1] + counts[-1]),
                etag=f'"{k}"',
                transform=(10.0, 499980.0, -10.0, 6400000.0),
                offsets=offsets,
                counts=counts,
            )
        )
    return encode(lays, grid)


def synthetic_index(
    path: Path, rows: int, dates: int = 12, s1_share: float = 0.0, seed: int = 0
) -> Path:
    """``rows`` S2-like rows (K x K chips per item, ``dates`` items per tile, tiles on a 1 degree
    lon/lat lattice), plus ``s1_share`` of that in Sentinel-1 rows (items of 36 x 36 larger chips
    on a shifted grid, between the S2 dates)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stacchip_core.core.index import SCHEMA

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    per_item = K * K
    tiles = -(-rows // (dates * per_item))
    d = 0.9 / K  # chip size in degrees
    ys, xs = np.divmod(np.arange(per_item), K)
    grid = (10.0, 499980.0, -10.0, 6400000.0)  # the same numbers in every zone
    tmp = path.with_suffix(".tmp")
    writer = None
    written = 0
    batch: list[pa.Table] = []

    def flush():
        nonlocal writer, batch
        if not batch:
            return
        t = pa.concat_tables(batch)
        batch = []
        if writer is None:
            writer = pq.ParquetWriter(tmp, t.schema, compression="zstd")
        writer.write_table(t, row_group_size=131_072)

    def item_rows(item_id, platform, when, lon0, lat0, size, nx, x_idx, y_idx, cs):
        n = len(x_idx)
        x0, y1 = lon0 + x_idx * size, lat0 - y_idx * size
        bounds = np.stack([x0, y1 - size, x0 + size, y1], axis=1)
        xs_s, ys_s = (
            pa.array(x_idx.astype(np.int32)).cast(pa.string()),
            pa.array(y_idx.astype(np.int32)).cast(pa.string()),
        )
        stamp = np.datetime64(when.replace(tzinfo=None), "us")
        import pyarrow.compute as pc

        cols = {
            "chipid": pc.binary_join_element_wise(pa.array([item_id] * n), xs_s, ys_s, "-"),
            "platform": pa.array([platform] * n),
            "item_id": pa.array([item_id] * n),
            "item_href": pa.array([f"https://bucket.invalid/{item_id}.json"] * n),
            "date": pa.array(np.full(n, stamp.astype("datetime64[D]"))).cast(pa.date32()),
            "datetime": pa.array(np.full(n, stamp)).cast(pa.timestamp("us", tz="UTC")),
            "chip_index_x": pa.array(x_idx.astype(np.int32)),
            "chip_index_y": pa.array(y_idx.astype(np.int32)),
            "chip_size": pa.array(np.full(n, cs, np.int32)),
            "cloud_cover_percentage": pa.array(rng.beta(0.6, 1.5, n).astype(np.float32)),
            "nodata_percentage": pa.array(
                np.where(rng.random(n) < 0.1, rng.random(n), 0).astype(np.float32)
            ),
            "geometry": _wkb_boxes(*bounds.T),
            "bbox": pa.StructArray.from_arrays(
                [pa.array(bounds[:, i]) for i in range(4)], ["xmin", "ymin", "xmax", "ymax"]
            ),
            "layouts": pa.array([_layout_blob(item_id, grid)] * n, pa.binary()),
        }
        return pa.table(cols, schema=SCHEMA)

    start = datetime(2023, 1, 1, 14, tzinfo=UTC)
    for tile in range(tiles):
        lon0, lat0 = -170 + (tile % 300) * 1.0, 60 - (tile // 300) * 1.0
        for k in range(dates):
            if written >= rows:
                break
            when = start + timedelta(days=5 * k + tile % 5)
            item_id = f"S2_T{tile:05d}_{when:%Y%m%d}"
            batch.append(item_rows(item_id, S2, when, lon0, lat0, d, K, xs, ys, 256))
            written += per_item
        if s1_share:
            s1_items = max(1, round(dates * s1_share))
            for k in range(s1_items):
                when = start + timedelta(days=5 * (k * dates // s1_items) + tile % 5 + 1)
                n1 = 36
                y1_, x1_ = np.divmod(np.arange(n1 * n1), n1)
                size = 0.9 / 36 * 1.0
                batch.append(
                    item_rows(
                        f"S1_T{tile:05d}_{when:%Y%m%d}",
                        S1,
                        when,
                        lon0 - 0.3 * size,
                        lat0 + 0.3 * size,
                        size,
                        n1,
                        x1_,
                        y1_,
                        256,
                    )
                )
        if sum(b.num_rows for b in batch) >= 131_072:
            flush()
    flush()
    if writer is not None:
        writer.close()
    os.replace(tmp, path)
    return path


BUILD = textwrap.dedent(r"""
import json, resource, sys, time
from stacchip_core.core.stacks import build_stacks, write_stacks
index, out, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t = time.perf_counter()
table = build_stacks(index, **kw)
t1 = time.perf_counter()
write_stacks(table, out)
t2 = time.perf_counter()
members = sum(table["steps"].to_pylist())
print(json.dumps({"build": t1 - t, "write": t2 - t1, "stacks": table.num_rows, "steps": members,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def build_job(index: Path, out: Path, kw: dict) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", BUILD, str(index), str(out), json.dumps(kw)],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- reading over a delayed server --------------------------------------------------------------


def place(data: Path, steps: int = 12, px: int = 1024) -> Path:
    """S2 RGB scenes of one place on ``steps`` dates (512 px tiles, noise for real entropy) and a
    Sentinel-1 scene over it on another grid (same zone, 1500 m x 500 m away), indexed with
    layouts into ``data/place/index.parquet`` (local hrefs)."""
    import pyarrow as pa

    from stacchip_core.core.index import write_index
    from stacchip_core.core.indexer import Indexer
    from stacchip_core.demo import synthetic

    root = data / "place"
    index = root / "index.parquet"
    if index.exists():
        return index
    origin = (767780.0, 6167440.0)
    paths = []
    for i in range(steps):
        when = datetime(2023, 1, 5, 14, tzinfo=UTC) + timedelta(days=5 * i)
        paths.append(
            synthetic.sentinel2_scene(
                root / "items",
                px,
                seed=i,
                item_id=f"S2_{when:%Y%m%d}",
                when=when,
                origin=origin,
                bands_10m=("blue", "green", "red"),
                bands_20m=(),
                noise=NOISE,
                nodata_corner=0.0,
                land_seed=1,
            )
        )
    paths.append(
        synthetic.sentinel1_scene(
            root / "items",
            px + 300,
            px + 300,
            origin=(origin[0] - 1500, origin[1] + 500),
            when=datetime(2023, 1, 16, 9, tzinfo=UTC),
            item_id="S1_20230116",
        )
    )
    tables = [Indexer(str(p), chip_max_nodata=1.0).create_index() for p in paths]
    write_index(pa.concat_tables(tables), index)
    return index


READ = textwrap.dedent(r"""
import json, sys, time, urllib.request
import pyarrow.parquet as pq
kind, path, stats_url, bands = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
table = pq.read_table(path)
def stats():
    return json.load(urllib.request.urlopen(stats_url))
from stacchip_core.training.stacks import StackDataset, StackReader
from stacchip_core.training.chipread import ChipReader
ds = StackDataset(table, bands=bands)
warm, n = 0, len(ds) - 1  # stack 0: an untimed warm-up (imports, runtimes, plugins)
ds[0]
if kind == "single":
    run = lambda: [ds[i] for i in range(1, len(ds))]
elif kind == "batched":
    batches = [list(range(k, min(k + 8, len(ds)))) for k in range(1, len(ds), 8)]
    run = lambda: [ds.__getitems__(b) for b in batches]
else:  # the same members, one chip at a time (each in its own grid: no reprojection)
    readers = {p: ChipReader(b) for p, b in bands.items()}
    rows = table.to_pylist()
    def run():
        for s in rows[1:]:
            for i in range(len(s["member_chipid"])):
                m = {k[len("member_"):]: s[k][i] for k in s if k.startswith("member_")}
                readers[m["platform"]].read(m)
s0 = stats(); t = time.perf_counter(); run(); dt = time.perf_counter() - t; s1 = stats()
print(json.dumps({"seconds": dt, "stacks": n, "requests": s1["requests"] - s0["requests"],
                  "bytes": s1["bytes"] - s0["bytes"]}))
""")


def read_job(kind: str, path: Path, stats_url: str, bands: dict) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", READ, kind, str(path), stats_url, json.dumps(bands)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if r.returncode:
        raise SystemExit(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    import pyarrow.parquet as pq

    from stacchip_core.core.stacks import build_stacks

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument(
        "--rows", type=int, nargs="*", default=[1_000_000], help="index sizes to build stacks of"
    )
    parser.add_argument(
        "--delay", type=float, default=0.02, help="seconds added to every request (default 0.02)"
    )
    parser.add_argument(
        "--stacks", type=int, default=8, help="stacks per reading scenario (+1 warm-up)"
    )
    parser.add_argument(
        "--server",
        choices=["python", "nginx"],
        default="python",
        help="tests/rangeserver.py, or nginx (benchmarks/nginx_server.py: nginx-light, Lua)",
    )
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-read", action="store_true")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if not args.skip_build:
        print(
            f"{'stack building (fresh process; write included)':<58}{'rows':>11}{'stacks':>9}"
            f"{'seconds':>9}"
            f"{'peak RSS MiB':>14}"
        )
        for rows in args.rows:
            t0 = time.perf_counter()
            index = synthetic_index(args.data / f"stacks_index_{rows}.parquet", rows, s1_share=0.1)
            n = pq.ParquetFile(index).metadata.num_rows
            print(
                f"  (index of {n} rows ready in {time.perf_counter() - t0:.0f} s, "
                f"{index.stat().st_size / 2**20:.0f} MiB)",
                file=sys.stderr,
            )
            scenarios = [
                (
                    "time series: --anchor S2 --max-steps 12 --max-cloud 0.5",
                    {"anchor": S2, "max_steps": 12, "max_cloud": 0.5},
                )
            ]
            if rows <= 1_000_000:
                scenarios += [
                    ("time series: --anchor S2 --every 30", {"anchor": S2, "every": 30}),
                    (
                        "pairs: --anchor S2 --with S1 --window 3",
                        {"anchor": S2, "with_": [S1], "window": 3, "resolve_crs": False},
                    ),
                ]
            for name, kw in scenarios:
                r = build_job(index, args.data / f"stacks_{rows}.parquet", kw)
                print(
                    f"{name:<58}{n:>11}{r['stacks']:>9}{r['build'] + r['write']:>9.1f}"
                    f"{r['rss_mib']:>14.0f}"
                )
    if args.skip_read:
        return
    index = place(args.data)
    local_root = (args.data / "place" / "items").resolve()
    series = build_stacks(index, anchor=S2, min_steps=12)
    pairs = build_stacks(index, anchor=S2, with_=[S1], window=1)
    serve_root = args.data / "place_served"
    serve_root.mkdir(exist_ok=True)
    if args.server == "nginx":  # benchmarks/nginx_server.py (from the data-loader benchmarks)
        from nginx_server import NginxServer

        nginx = NginxServer(serve_root, delay=args.delay).start()
        url, stats_url = nginx.url, nginx.stats_url

        def stop():
            nginx.__exit__(None, None, None)
    else:
        server = subprocess.Popen(
            [
                sys.executable,
                str(HERE.parent / "tests" / "rangeserver.py"),
                str(serve_root),
                str(args.delay),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        url = server.stdout.readline().strip()
        stats_url = f"{url}/_stats"

        def stop():
            server.terminate()
            server.wait(10)

    try:
        print(f"server: {args.server}")
        print(
            f"\nreading over loopback, {args.delay * 1000:.0f} ms per request, "
            "cold (each stack from fresh URLs)"
        )
        print(f"{'scenario':<52}{'stacks':>7}{'stacks/s':>10}{'req/stack':>10}{'KiB/stack':>10}")
        copy = 0
        for label, table, bands in (
            ("12-step RGB series", series, {S2: RGB}),
            ("S1 + S2 pair", pairs, {S2: RGB, S1: ["vv", "vh"]}),
        ):
            for kind, what in (
                ("batched", f"StackDataset.__getitems__({BATCH})"),
                ("single", "StackDataset[i]"),
                ("chips", "same members, ChipReader.read each"),
            ):
                fresh = _fresh(
                    table, args.stacks + 1, serve_root, url, local_root, copy, args.server
                )
                copy += args.stacks + 1
                path = args.data / f"bench_stacks_{label[:6].strip()}_{kind}.parquet"
                pq.write_table(fresh, path)
                r = read_job(kind, path, stats_url, bands)
                n = r["stacks"]
                print(
                    f"{label + ': ' + what:<52}{n:>7}{n / r['seconds']:>10.2f}"
                    f"{r['requests'] / n:>10.1f}"
                    f"{r['bytes'] / n / 1024:>10.0f}"
                )
    finally:
        stop()


def _etag(path: str, server: str) -> str:
    """The ETag the server sends for a file: tests/rangeserver.py's, or nginx's."""
    st = os.stat(path)
    if server == "nginx":
        return f'"{int(st.st_mtime):x}-{st.st_size:x}"'
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def _fresh(
    stacks, count: int, root: Path, url: str, local_root: Path, offset: int, server: str = "python"
):
    """``count`` stacks (the table's rows, cycled), stack j's members served under copy
    ``offset + j``: its own folder of symlinks, the layouts' hrefs rewritten (nothing
    re-indexed)."""
    import pyarrow as pa

    from stacchip_core.core.layout import decode, encode

    out = []
    for j in range(count):
        i = offset + j
        folder = root / f"c{i:04d}"
        if not folder.exists():
            folder.symlink_to(local_root, target_is_directory=True)
        r = stacks.slice(j % stacks.num_rows, 1).to_pylist()[0]
        blobs = []
        for blob in r["member_layouts"]:
            lays = decode(blob)
            for lay in lays.values():
                lay.etag = _etag(lay.href, server)
                lay.href = f"{url}/c{i:04d}/{Path(lay.href).relative_to(local_root).as_posix()}"
            blobs.append(encode(lays.values(), lays.grid))
        r["member_layouts"] = blobs
        r["stackid"] = f"{r['stackid']}-c{i}"
        out.append(r)
    return pa.Table.from_pylist(out, schema=stacks.schema)


if __name__ == "__main__":
    main()
