"""Every loader a user would wire, over the same object server, in one run (issue 18).

Full-size synthetic Sentinel-2 COGs (bench_cloud.py's scene: 10980 px bands at 10 m, 512 px
tiles, deflate with noise) are served by nginx from C (benchmarks/nginx_server.py: Range, ETag,
If-Match; a Lua hook adds a delay to every request and counts requests and bytes), so the
server takes next to no CPU from the client. 60 items (each its own URLs: nothing cached is
reused between items), batches of 16, 2 workers, at 0, 20 and 50 ms per request, RGB and all
10 bands. Each mode runs in a fresh process.

    python benchmarks/bench_loaders.py --quick                     # ~5 minutes: few chips per mode
    python benchmarks/bench_loaders.py --original-python /tmp/orig-venv/bin/python    # the full run
    python benchmarks/bench_loaders.py --plan 20 --modes loader0,module --bands rgb

Reported per mode: chips/s (wall time of one epoch, worker start-up included), CPU ms per chip of
the parent and of its workers (getrusage of the process and of its waited-for children),
requests and KiB per chip from nginx's counters, and per band set the decode floor: CPU ms to
inflate just the tiles the chips touch (libdeflate and the predictor, on one core, bytes already
in memory). The spawn-ceiling mode runs the spawn loader over ``spawn_floor.ZeroChips``, which
reads nothing: torch's own start-up of spawned workers, the least any dataset pays; the report
turns it into the best chips/s spawn could reach. The memory mode runs the data module over an
epoch of many chips from many items (items share the same COG files under different URLs, so
the disk stays small) and samples the RSS of the parent and its workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_cloud import TEN  # the same ten S2 bands as bench_cloud's scene

log = logging.getLogger("bench_loaders")

S2 = "sentinel-2-l2a"
RGB = ["red", "green", "blue"]
S2_IDS = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "swir16": "B11",
    "swir22": "B12",
}
# GDAL options a user reading COGs over HTTP would set (GDAL's and rasterio's advice for cloud
# COGs; TorchGeo's docs defer to them)
USER_GDAL = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "GDAL_HTTP_MAX_RETRY": "0",
}

# (key, label, job kind, options); "slow" modes read fewer chips
MODES: list[tuple[str, str, str, dict[str, Any]]] = [
    (
        "loader0",
        "`DataLoader(ChipDataset, batch_sampler=…, collate_fn=collate_chips, num_workers=0)`",
        "loader",
        {"workers": 0},
    ),
    (
        "loader0-torch",
        "the same with torch's default collate",
        "loader",
        {"workers": 0, "torch_collate": True},
    ),
    ("loader2", "the same, `num_workers=2` (fork)", "loader", {}),
    ("loader2-read", "the same after `ds[0]` in the parent", "loader", {"parent_read": True}),
    (
        "spawn",
        'the same, `multiprocessing_context="spawn"` (start-up included)',
        "loader",
        {"context": "spawn"},
    ),
    (
        "spawn-ceiling",
        "the same over `ZeroChips` (reads nothing): torch's spawn start-up alone",
        "loader",
        {"context": "spawn", "zero": True},
    ),
    ("module", "`StacchipDataModule(index, num_workers=2).train_dataloader()`", "module", {}),
    ("geods", "`StacchipGeoDataset` + `RandomGeoSampler`, batches of 16, 2 workers", "geods", {}),
    (
        "tgraster",
        "TorchGeo `RasterDataset` over `/vsicurl/` + `RandomGeoSampler`",
        "tgraster",
        {"slow": True},
    ),
    (
        "orig",
        "stacchip 0.1.38 `Chipper.chip`, one process (GDAL as installed)",
        "orig",
        {"slow": True},
    ),
    (
        "orig-tuned",
        "stacchip 0.1.38 `Chipper.chip`, GDAL tuned",
        "orig",
        {"slow": True, "tuned": True},
    ),
]

# One fresh process per mode: prints one JSON line.
JOB = textwrap.dedent(r"""
import json, os, resource, sys, time, urllib.request
cfg = json.loads(sys.argv[1])
os.environ.update(cfg.get("env", {}))

def stats(reset=False):
    with urllib.request.urlopen(cfg["stats_url"] + ("?reset=1" if reset else "")) as r:
        return json.load(r)

def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime

def shutdown(loader):
    it = getattr(loader, "_iterator", None)  # persistent workers: stop them so their CPU is counted
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()

kind, bands, batch, workers = cfg["kind"], cfg["bands"], cfg["batch"], cfg["workers"]
out = {}
if kind == "orig":
    import pyarrow.parquet as pq, pystac
    from stacchip.indexer import NoStatsChipIndexer
    from stacchip.chipper import Chipper
    rows = pq.read_table(cfg["index"]).to_pylist()
    items = {}
    for r in rows:  # item JSON read before timing (the original takes items, not URLs)
        if r["local_item"] not in items:
            d = json.load(open(r["local_item"]))
            d["properties"]["proj:epsg"] = int(d["properties"].pop("proj:code").split(":")[1])
            d["stac_extensions"] = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"]
            items[r["local_item"]] = pystac.Item.from_dict(d, migrate=False)
    stats(reset=True); c0 = cpu(); t0 = time.perf_counter()
    for r in rows:
        chipper = Chipper(NoStatsChipIndexer(items[r["local_item"]]), assets=bands)
        chipper.chip(r["chip_index_x"], r["chip_index_y"])
    n = len(rows)
else:
    if kind in ("module", "geods", "tgraster"):  # lightning / torchgeo import torchvision
        sys.path.insert(0, cfg["tests_dir"])
        from provision import import_torch_stack  # torchvision's CPU stub, as the test suite does
        import_torch_stack()
    import torch
    from torch.utils.data import DataLoader
    from stacchip_core.training.dataset import ChipDataset, PlatformBatchSampler
    # imports a training process pays once, not per epoch (nothing read, no I/O runtime started;
    # spawned workers import them again, inside the timing)
    import async_tiff, deflate, obstore, rasterio  # noqa: E401,F401
    import stacchip_core.core.tiles, stacchip_core.training.chipread  # noqa: E401,F401
    from stacchip_core.plugins import platforms
    platforms()
    if kind == "loader":
        c0 = cpu(); t0 = time.perf_counter(); stats(reset=True)
        ds = ChipDataset(cfg["index"], bands=bands)  # a path: loaded as a user's code would
        if cfg.get("zero"):
            sys.path.insert(0, cfg["bench_dir"])  # spawned workers import ZeroChips from there
            from spawn_floor import ZeroChips
            ds = ZeroChips(len(ds), len(bands))
        if cfg.get("parent_read"):
            ds[0]  # looking at one sample first: before timing starts
            c0 = cpu(); t0 = time.perf_counter(); stats(reset=True)
        sampler = PlatformBatchSampler(ds, batch, seed=0)  # the dataset: read-ahead without workers
        kw = {"multiprocessing_context": cfg["context"]} if cfg.get("context") and workers else {}
        if not cfg.get("torch_collate"):  # as the docs wire it
            from stacchip_core.training.collate import collate_chips
            kw["collate_fn"] = collate_chips
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, **kw)
        it = iter(loader)
        n = len(next(it)["chipid"])
        out["first_s"] = time.perf_counter() - t0  # start-up: the first batch
        n += sum(len(b["chipid"]) for b in it)
    elif kind == "module":
        from stacchip_core.training.datamodule import StacchipDataModule
        c0 = cpu(); t0 = time.perf_counter(); stats(reset=True)
        dm = StacchipDataModule(cfg["index"], bands=bands, batch_size=batch, num_workers=workers,
                                val_fraction=0.0, test_fraction=0.0)
        loader = dm.train_dataloader()
        n = sum(len(b["chipid"]) for b in loader)
        shutdown(loader)
    elif kind == "geods":
        from torchgeo.datasets import stack_samples
        from torchgeo.samplers import RandomGeoSampler
        from stacchip_core.training.torchgeo import StacchipGeoDataset
        stats(reset=True); t = time.perf_counter()
        ds = StacchipGeoDataset(cfg["index"], bands=bands)
        out["construct_s"] = time.perf_counter() - t
        out["construct_requests"] = stats(reset=True)["requests"]
        c0 = cpu(); t0 = time.perf_counter()
        sampler = RandomGeoSampler(ds, size=256, length=cfg["chips"])  # pixels: one chip's window
        loader = DataLoader(
            ds, sampler=sampler, batch_size=batch, num_workers=workers, collate_fn=stack_samples
        )
        n = sum(b["image"].shape[0] for b in loader)
    elif kind == "tgraster":
        import re
        from torchgeo.datasets import RasterDataset, stack_samples
        from torchgeo.samplers import RandomGeoSampler

        class Sentinel2(RasterDataset):
            filename_glob = "T20HNJ_*_B02.tif"
            filename_regex = r"^T20HNJ_(?P<date>\d{8})_(?P<band>B\w{2})\.tif$"
            date_format = "%Y%m%d"
            separate_files = True
            all_bands = tuple(cfg["band_ids"])

        stats(reset=True); t = time.perf_counter()
        ds = Sentinel2(cfg["paths"], bands=cfg["band_ids"])
        out["construct_s"] = time.perf_counter() - t
        out["construct_requests"] = stats(reset=True)["requests"]
        c0 = cpu(); t0 = time.perf_counter()
        sampler = RandomGeoSampler(ds, size=256, length=cfg["chips"])
        loader = DataLoader(
            ds, sampler=sampler, batch_size=batch, num_workers=workers, collate_fn=stack_samples
        )
        n = sum(b["image"].shape[0] for b in loader)
dt = time.perf_counter() - t0
c1 = cpu()
s = stats()
out.update({"seconds": dt, "chips": n, "cpu_parent": c1[0] - c0[0], "cpu_workers": c1[1] - c0[1],
            "requests": s["requests"], "bytes": s["bytes"]})
print(json.dumps(out))
""")

# The memory mode: the data module over a long epoch, RSS of the parent and workers sampled.
MEMORY_JOB = textwrap.dedent(r'''
import json, os, resource, sys, threading, time
import psutil
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["tests_dir"])
from provision import import_torch_stack
import_torch_stack()
from stacchip_core.training.datamodule import StacchipDataModule
me = psutil.Process()
samples = []
done = threading.Event()

def rss():
    """(parent + workers, parent, largest worker) PSS in bytes: pages shared after fork count
    once in the total. getrusage's ru_maxrss is no use here: Linux keeps it across fork and
    exec, so a job would report its launcher's peak."""
    sizes = []
    for p in [me] + me.children(recursive=True):
        try:
            sizes.append(p.memory_full_info().pss)
        except psutil.Error:
            sizes.append(0)
    return sum(sizes), sizes[0], max(sizes[1:], default=0)

def watch():
    while not done.is_set():
        samples.append((time.perf_counter(), count[0], *rss()))
        done.wait(1.0)

count = [0]
t0 = time.perf_counter()
dm = StacchipDataModule(cfg["index"], bands=cfg["bands"], batch_size=cfg["batch"],
                        num_workers=cfg["workers"], val_fraction=0.0, test_fraction=0.0)
threading.Thread(target=watch, daemon=True).start()
loader = dm.train_dataloader()
for b in loader:
    count[0] += len(b["chipid"])
    if time.perf_counter() - t0 > cfg["limit_s"]:  # a slow read path would take hours: stop, say so
        break
done.set()
dt = time.perf_counter() - t0
it = getattr(loader, "_iterator", None)
if it is not None and hasattr(it, "_shutdown_workers"):
    it._shutdown_workers()
print(json.dumps({"seconds": dt, "chips": count[0], "planned": len(dm.table), "samples": samples}))
''')


# Imported once before any mode, with bytecode caches written: a user's install holds them (pip
# compiles at install), while an environment with PYTHONDONTWRITEBYTECODE (this project's
# sandbox has it) compiles every import from source, e.g. 0.75 s of pandas' 0.9 s import
WARM = textwrap.dedent(r"""
import json, sys
cfg = json.loads(sys.argv[1])
if cfg.get("ours"):
    sys.path.insert(0, cfg["tests_dir"])
    from provision import import_torch_stack
    import_torch_stack()
    import aiohttp, async_tiff, deflate, obstore, pandas, rasterio  # noqa: E401,F401
    import stacchip_core.training.datamodule, stacchip_core.training.torchgeo  # noqa: E401,F401
else:
    import pystac, rasterio, stacchip.chipper, stacchip.indexer  # noqa: E401,F401
print("{}")
""")


def run_job(python: str, code: str, cfg: dict, timeout: float = 3600) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # see WARM
    r = subprocess.run(
        [python, "-c", code, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if r.returncode:
        return {
            "error": (r.stderr or r.stdout).strip().splitlines()[-1][:300]
            if (r.stderr or r.stdout)
            else f"exit {r.returncode}",
            "stderr": r.stderr[-4000:],
        }
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- data --------------------------------------------------------------------------------

def serve(data: Path, url: str, n_items: int) -> tuple[Path, list[tuple[Path, str]]]:
    """The served folder: ``scene`` (the COGs), item JSONs whose assets point at
    ``/a/i<k>/scene/<file>`` (nginx maps every ``/a/<name>/`` to the same files) with a day of
    their own each, and for TorchGeo ``tg/i<k>/T20HNJ_<date>_<B..>.tif`` symlinks."""
    from bench_cloud import ITEM_ID, scene

    item = scene(data)
    root = data / "loaders"
    root.mkdir(parents=True, exist_ok=True)
    link = root / "scene"
    if not link.exists():
        link.symlink_to(item.parent.resolve(), target_is_directory=True)
    src = json.loads(item.read_text())
    when = datetime(2024, 1, 1, 10, 30, tzinfo=UTC)
    out = []
    for i in range(n_items):
        d = json.loads(json.dumps(src))
        d["id"] = f"{ITEM_ID}-{i:04d}"
        day = when + timedelta(days=i)
        d["properties"]["datetime"] = day.strftime("%Y-%m-%dT%H:%M:%SZ")
        for asset in d["assets"].values():
            asset["href"] = f"{url}/a/i{i:04d}/scene/{Path(asset['href']).name}"
        path = root / f"item{i:04d}.json"
        path.write_text(json.dumps(d))
        out.append((path, f"{url}/item{i:04d}.json"))
        tg = root / "tg" / f"i{i:04d}"
        tg.mkdir(parents=True, exist_ok=True)
        for name, bid in S2_IDS.items():
            f = tg / f"T20HNJ_{day:%Y%m%d}_{bid}.tif"
            if not f.exists():
                f.symlink_to(item.parent.resolve() / f"{name}.tif")
    return root, out


def index_items(items: list[tuple[Path, str]]):
    """The whole index of each item (1764 chips each), with its local item JSON path."""
    import pyarrow as pa

    from stacchip_core.core.indexer import Indexer

    parts = []
    for local, url in items:
        t = Indexer(url, platform=S2, stats=False).create_index()
        i = t.column_names.index("layouts")  # one item's layout on each of its rows: held once
        t = t.set_column(i, "layouts", pa.compute.dictionary_encode(t.column(i)))
        parts.append(t.append_column("local_item", pa.array([str(local)] * len(t))))
    return pa.concat_tables(parts).unify_dictionaries()


def pick(table, n: int, seed: int):
    """``n`` random chips of ``table`` (across all its items), in random order."""
    import pyarrow as pa

    rng = random.Random(seed)
    rows = rng.sample(range(len(table)), min(n, len(table)))
    return table.take(pa.array(rows))


def tiles_of(table, bands: list[str]) -> list[tuple[str, int, int, int]]:
    """(asset key, offset, byte count, rows) of every tile the chips of ``table`` touch, once
    per URL; ``rows``: down to which of its rows the chips need it (the readers' own region of
    a tile, core.tiles._regions, joined over the chips)."""
    from stacchip_core.core.layout import decode
    from stacchip_core.core.tiles import GridSpec, _regions, plan
    from stacchip_core.plugins import get_platform

    s2 = get_platform(S2)
    out: dict[tuple, int] = {}
    for r in table.to_pylist():
        lays = decode(r["layouts"])
        grid = GridSpec.from_layouts(lays, int(r["chip_size"]))
        keys = {k for b in bands for k in s2.find(b).keys if k in lays}  # type: ignore[union-attr]
        for k in keys:
            lay = lays[k]
            for (tx, ty), (_, end, _, _) in _regions(
                lay, [plan(lay, grid, r["chip_index_x"], r["chip_index_y"])]
            ).items():
                i = ty * lay.tiles_across + tx
                t = (lay.href, k, int(lay.offsets[i]), int(lay.counts[i]))
                out[t] = max(out.get(t, 0), end)
    return [(*t[1:], rows) for t, rows in sorted(out.items())]


def decode_floor(table, bands: list[str], scene_dir: Path) -> tuple[float, float, float]:
    """(tiles per chip, CPU ms per chip) to inflate the touched tiles alone: libdeflate and the
    horizontal predictor, one core, the bytes already in memory; and CPU ms per chip to inflate
    them only down to the last row the chips need (as the readers do: ISA-L for a part,
    libdeflate for a whole tile, core.tiles._inflate_rows). The two are timed alternately."""
    import numpy as np

    from stacchip_core.core.layout import decode
    from stacchip_core.core.tiles import _inflate_rows

    lays = decode(table["layouts"][0].as_py())
    tiles = tiles_of(table, bands)
    blobs = []
    for key, off, count, rows in tiles:
        with open(scene_dir / Path(lays[key].href).name, "rb") as fh:
            fh.seek(off)
            blobs.append((key, fh.read(count), rows))

    def inflate(whole: bool) -> float:
        t = time.process_time()
        for key, buf, rows in blobs:
            lay = lays[key]
            n = lay.tile_height if whole else rows
            dtype = np.dtype(lay.dtype).newbyteorder("<")
            row_bytes = lay.tile_width * lay.bands * dtype.itemsize
            arr = np.frombuffer(_inflate_rows(buf, row_bytes, n, lay.tile_height),
                                dtype).reshape(n, lay.tile_width, lay.bands)
            if lay.predictor == 2:
                np.cumsum(arr, axis=1, dtype=dtype)
        return time.process_time() - t

    best, rows_best = float("inf"), float("inf")
    for _ in range(3):
        best = min(best, inflate(whole=True))
        rows_best = min(rows_best, inflate(whole=False))
    n = len(table)
    return len(tiles) / n, best * 1000 / n, rows_best * 1000 / n


def memory_index(base, n_items: int, per_item: int, url: str, path: Path, seed: int = 1) -> None:
    """``n_items`` items of ``per_item`` random chips each, written to ``path``: the rows and
    layouts of one indexed item, each item's under its own URLs (``/a/m<k>/scene/…``); the
    layouts column dictionary-encoded (one copy per item), as the data module holds it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stacchip_core.core.layout import decode, encode

    one = base.filter(pa.compute.equal(base["item_id"], base["item_id"][0]))
    lays = decode(one["layouts"][0].as_py())
    rng = np.random.default_rng(seed)
    take = np.concatenate([rng.choice(len(one), per_item, replace=False) for _ in range(n_items)])
    t = one.take(pa.array(take))
    item = np.repeat(np.arange(n_items), per_item)
    ids = [f"MEM-{k:05d}" for k in range(n_items)]
    def moved(href: str, k: int) -> str:
        return f"{url}/a/m{k:05d}/scene/{Path(href).name}"

    def extras(
        k: int,
    ) -> dict:  # what newer layouts hold besides the tiles (grid shape, CRS, bands, hrefs)
        out = {a: getattr(lays, a) for a in ("shape", "crs", "bands") if getattr(lays, a, None)}
        hrefs: dict[str, str] = getattr(lays, "hrefs", None) or {}
        if hrefs:
            out["hrefs"] = {key: moved(h, k) for key, h in hrefs.items()}
        return out

    blobs = [
        encode([replace(v, href=moved(v.href, k)) for v in lays.values()], lays.grid, **extras(k))
        for k in range(n_items)
    ]
    cols = {
        "item_id": pa.array([ids[k] for k in item]),
        "item_href": pa.array([f"{url}/m/{ids[k]}.json" for k in item]),
        "chipid": pa.array(
            [
                f"{ids[k]}-{x}-{y}"
                for k, x, y in zip(
                    item, t["chip_index_x"].to_pylist(), t["chip_index_y"].to_pylist()
                )
            ]
        ),
        "layouts": pa.DictionaryArray.from_arrays(
            pa.array(item, pa.int32()), pa.array(blobs, pa.binary())
        ),
    }
    for name, col in cols.items():
        i = t.column_names.index(name)
        t = t.set_column(i, name, col)
    # item JSONs too, for readers that fall back to them (a forked worker that may not use obstore)
    src = json.loads(Path(one["local_item"][0].as_py()).read_text())
    folder = Path(one["local_item"][0].as_py()).parent / "m"
    folder.mkdir(exist_ok=True)
    for k, item_id in enumerate(ids):
        d = json.loads(json.dumps(src))
        d["id"] = item_id
        for asset in d["assets"].values():
            asset["href"] = f"{url}/a/m{k:05d}/scene/{Path(asset['href']).name}"
        (folder / f"{item_id}.json").write_text(json.dumps(d))
    t = t.drop_columns([c for c in ("local_item",) if c in t.column_names])
    pq.write_table(t, path)


# --- the run -----------------------------------------------------------------------------

def spawn_ceiling(per: dict, key: str, modes) -> str:
    """What spawn could reach at best: torch's start-up (ZeroChips' first batch) followed by
    the best stacchip mode's epoch, against that mode."""
    zero, spawn = per.get(f"spawn-ceiling:{key}"), per.get(f"spawn:{key}")
    ours = [per[f"{m[0]}:{key}"] for m in modes
            if m[2] in ("loader", "module", "geods") and not m[3].get("zero")
            and f"{m[0]}:{key}" in per and "error" not in per[f"{m[0]}:{key}"]]
    if not zero or "error" in zero or "first_s" not in zero or not spawn or "error" in spawn \
            or not ours:
        return ""
    best = max(ours, key=lambda r: r["chips"] / r["seconds"])
    rate = best["chips"] / best["seconds"]
    ceiling = best["chips"] / (zero["first_s"] + best["seconds"])
    got = spawn["chips"] / spawn["seconds"]
    return (f"\nspawn's ceiling: torch's spawned workers take {zero['first_s']:.2f} s to give "
            f"a first batch of `ZeroChips`; after that, an epoch at the best mode's speed would "
            f"give {ceiling:.1f} chips/s = {ceiling / rate:.2f}x the best ({rate:.1f}); "
            f"stacchip's spawn gives {got:.1f} = {got / rate:.2f}x")


def fmt_row(name: str, r: dict, floor_ms: float, tiles: float | None) -> str:
    if "error" in r:
        return f"| {name} | failed: {r['error']} | | | | | | |"
    c = r["chips"] or 1
    cpu_p, cpu_w = r["cpu_parent"] * 1000 / c, r["cpu_workers"] * 1000 / c
    extra = ""
    if "construct_s" in r:
        extra = f" (+ {r['construct_s']:.1f} s, {r['construct_requests']} requests to construct)"
    return (
        f"| {name}{extra} | {r['chips']} | {r['chips'] / r['seconds']:.1f} | {cpu_p:.1f} + "
        f"{cpu_w:.1f} "
        f"| {(cpu_p + cpu_w) / floor_ms:.1f}x | "
        f"{r['requests'] / c:.1f}{f' (tiles {tiles:.1f})' if tiles else ''} "
        f"| {r['bytes'] / c / 1024:.0f} |"
    )


def main() -> None:
    import pyarrow.parquet as pq
    from nginx_server import NginxServer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument(
        "--quick", action="store_true", help="few chips per mode, small memory mode"
    )
    parser.add_argument(
        "--plan",
        default="0,20,50,memory",
        help="what to run, in order: delays in ms per request, and 'memory' "
        "(default 0,20,50,memory)",
    )
    parser.add_argument("--bands", default="rgb,ten", help="rgb, ten or both (default)")
    parser.add_argument(
        "--modes", default=",".join(m[0] for m in MODES), help="modes to run at each delay"
    )
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chips", type=int, help="chips per mode (default 320; --quick 48)")
    parser.add_argument(
        "--slow-chips", type=int, help="chips of the slow modes (default 32; --quick 8)"
    )
    parser.add_argument(
        "--memory-items", type=int, help="items of the memory mode (default 10000; --quick 200)"
    )
    parser.add_argument("--memory-chips", type=int, help="chips per item there (default 10)")
    parser.add_argument(
        "--memory-limit", type=float, default=900, help="seconds before the memory mode stops"
    )
    parser.add_argument(
        "--report", type=Path, help="print the tables of a results JSON written before, and exit"
    )
    parser.add_argument(
        "--original-python", help="python of a venv with stacchip==0.1.38 (else no 0.1.38 rows)"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default DATA/results_loaders.json)")
    args = parser.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        keys = {k.split(":")[0] for per in saved["delays"].values() for k in per}
        names = {k.split(":")[1] for per in saved["delays"].values() for k in per}
        for k in ("items", "batch", "workers"):
            setattr(args, k, saved.get("args", {}).get(k, getattr(args, k)))
        report(
            saved,
            [m for m in MODES if m[0] in keys],
            {k: v for k, v in (("rgb", RGB), ("ten", TEN)) if k in names},
            saved.get("chips", 48),
            saved.get("slow", 8),
            args,
        )
        return
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    chips = args.chips or (48 if args.quick else 320)
    slow = args.slow_chips or (8 if args.quick else 32)
    mem_items = args.memory_items or (200 if args.quick else 10000)
    mem_chips = args.memory_chips or 10
    plan = args.plan.split(",")
    bandsets = {"rgb": RGB, "ten": TEN}
    bandsets = {k: v for k, v in bandsets.items() if k in args.bands.split(",")}
    modes = [m for m in MODES if m[0] in args.modes.split(",")]
    if not args.original_python:
        modes = [m for m in modes if m[2] != "orig"]
    t_start = time.perf_counter()
    run_job(sys.executable, WARM, {"ours": True, "tests_dir": str(HERE.parent / "tests")})
    if args.original_python:
        run_job(args.original_python, WARM, {})
    from bench_cloud import scene

    scene_dir = scene(args.data).parent
    root = args.data / "loaders"
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"delays": {}, "floors": {}, "memory": None, "chips": chips, "slow": slow,
                     "args": vars(args) | {"data": str(args.data), "out": str(args.out)}}
    out_path = args.out or args.data / "results_loaders.json"
    with NginxServer(root, delay=0) as server:
        _, items = serve(args.data, server.url, args.items)
        t = time.perf_counter()
        full = index_items(items)
        log.info(
            "%d items indexed in %.0f s (%d chips)", len(items), time.perf_counter() - t, len(full)
        )
        table = pick(full, chips, seed=3)
        slow_table = pick(full, slow, seed=4)
        idx = args.data / "bench_loaders_index.parquet"
        slow_idx = args.data / "bench_loaders_slow.parquet"
        pq.write_table(table, idx)
        pq.write_table(slow_table, slow_idx)
        for key, bands in bandsets.items():
            results["floors"][key] = {"fast": decode_floor(table, bands, scene_dir),
                                      "slow": decode_floor(slow_table, bands, scene_dir)}
        # TorchGeo's files: one URL per band file of the slow table's items
        slow_items = sorted(
            {int(h.rsplit("item", 1)[1][:4]) for h in slow_table["item_href"].to_pylist()}
        )

        def run_memory() -> None:
            server.delay = 0
            mem_idx = args.data / "bench_loaders_memory.parquet"
            t = time.perf_counter()
            memory_index(full, mem_items, mem_chips, server.url, mem_idx)
            log.info(
                "memory index: %d chips from %d items in %.0f s",
                mem_items * mem_chips,
                mem_items,
                time.perf_counter() - t,
            )
            cfg = {
                "index": str(mem_idx),
                "bands": RGB,
                "batch": args.batch,
                "workers": args.workers,
                "limit_s": args.memory_limit,
                "tests_dir": str(HERE.parent / "tests"),
            }
            results["memory"] = run_job(sys.executable, MEMORY_JOB, cfg, timeout=4 * 3600)
            results["memory"]["items"] = mem_items
            out_path.write_text(json.dumps(results, indent=1, default=str))

        try:
            for step in plan:
                if step == "memory":
                    run_memory()
                    continue
                delay = float(step) / 1000
                server.delay = delay
                per = results["delays"][str(int(delay * 1000))] = {}
                for key, bands in bandsets.items():
                    for mkey, label, kind, opts in modes:
                        is_slow = opts.get("slow", False)
                        cfg = {
                            "kind": kind,
                            "bands": bands,
                            "batch": args.batch,
                            "workers": opts.get("workers", args.workers),
                            "stats_url": server.stats_url,
                            "index": str(slow_idx if is_slow else idx),
                            "chips": slow if is_slow else chips,
                            "parent_read": opts.get("parent_read", False),
                            "context": opts.get("context"),
                            "zero": opts.get("zero", False),
                            "torch_collate": opts.get("torch_collate", False),
                            "bench_dir": str(HERE),
                            "tests_dir": str(HERE.parent / "tests"),
                        }
                        python = sys.executable
                        if kind == "orig":
                            python = args.original_python
                            from stacchip_core.io.settings import GDAL_DEFAULTS

                            cfg["env"] = (
                                {k: str(v) for k, v in GDAL_DEFAULTS.items()}
                                if opts.get("tuned")
                                else {}
                            )
                        if kind == "tgraster":
                            cfg["env"] = USER_GDAL
                            cfg["band_ids"] = [S2_IDS[b] for b in bands]
                            day = datetime(2024, 1, 1)
                            cfg["paths"] = [
                                f"/vsicurl/{server.url}/tg/i{i:04d}/"
                                f"T20HNJ_{day + timedelta(days=i):%Y%m%d}_B02.tif"
                                for i in slow_items
                            ]
                        t = time.perf_counter()
                        r = run_job(python, JOB, cfg)
                        per[f"{mkey}:{key}"] = r
                        out_path.write_text(
                            json.dumps(results, indent=1, default=str)
                        )  # a cut-short run keeps its rows
                        if "error" in r:
                            log.warning(
                                "%s, %s, %d ms: failed: %s",
                                mkey,
                                key,
                                delay * 1000,
                                r["stderr"][-1500:],
                            )
                        else:
                            log.info(
                                "%-13s %-4s %3d ms: %6.1f chips/s, %5.1f req/chip (%.0f s)",
                                mkey,
                                key,
                                delay * 1000,
                                r["chips"] / r["seconds"],
                                r["requests"] / max(1, r["chips"]),
                                time.perf_counter() - t,
                            )
        except KeyboardInterrupt:  # Ctrl-C: nginx stops, the tables show what ran
            log.warning("interrupted: reporting the modes that ran")
            results["interrupted"] = True

    results["elapsed_s"] = time.perf_counter() - t_start
    out_path.write_text(json.dumps(results, indent=1, default=str))
    report(results, modes, bandsets, chips, slow, args)


def report(results: dict, modes, bandsets, chips: int, slow: int, args) -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; "
        f"{args.items} items, batches of {args.batch}, {args.workers} workers; {chips} chips per "
        "mode "
        f"({slow} for TorchGeo's RasterDataset and stacchip 0.1.38); one run each"
    )
    for delay, per in results["delays"].items():
        for key in bandsets:
            fast_tiles, fast_floor, *fast_rows = results["floors"][key]["fast"]
            slow_tiles, slow_floor, *_ = results["floors"][key]["slow"]
            part = (f"; {fast_rows[0]:.1f} inflating only the rows chips need" if fast_rows
                    else "")
            print(f"\n### {delay} ms per request, {'RGB' if key == 'rgb' else '10 bands'} "
                  f"(decode floor {fast_floor:.1f} CPU ms/chip{part}; {fast_tiles:.1f} "
                  "tiles/chip)\n")
            print("| how the chips are loaded | chips | chips/s | CPU ms/chip (parent + workers) "
                  "| CPU / decode floor | requests/chip | KiB/chip |")
            print("|---|---|---|---|---|---|---|")
            for mkey, label, _kind, opts in modes:
                r = per.get(f"{mkey}:{key}")
                if r is not None:
                    s = opts.get("slow", False)
                    # TorchGeo's RasterDataset reads random windows, not the chips the floor counts
                    tiles = (None if _kind == "tgraster" or opts.get("zero")
                             else (slow_tiles if s else fast_tiles))
                    print(fmt_row(label, r, slow_floor if s else fast_floor, tiles))
            print(spawn_ceiling(per, key, modes))
    m = results.get("memory")
    if m:
        if "error" in m:
            print(f"\nmemory mode failed: {m['error']}")
        else:
            s = m["samples"]
            peak = max(x[2] for x in s) if s else 0
            marks = []
            for frac in (0.1, 0.25, 0.5, 0.75, 1.0):
                want = frac * m["chips"]
                x = next((x for x in s if x[1] >= want), s[-1]) if s else None
                if x:
                    marks.append(f"{x[1]} chips: {x[2] / 2**20:.0f} MiB")
            cut = (
                f" (stopped at the time limit; {m['planned']} planned)"
                if m["chips"] < m["planned"]
                else ""
            )
            print(
                f"\nmemory: data module, RGB, {m['chips']} chips{cut} from {m['items']} items, "
                f"{args.workers} workers, "
                f"0 ms: {m['chips'] / m['seconds']:.1f} chips/s; peak PSS of parent + workers "
                f"{peak / 2**20:.0f} MiB "
                f"(parent {max(x[3] for x in s) / 2**20:.0f} MiB, largest worker "
                f"{max(x[4] for x in s) / 2**20:.0f} "
                f"MiB, sampled every second); along the epoch: {'; '.join(marks)}"
            )
    if "elapsed_s" in results:
        print(f"\n(total {results['elapsed_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
