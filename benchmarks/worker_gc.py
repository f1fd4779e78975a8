"""Full garbage collections in DataLoader workers, with and without ``training.workers``.

The data module (RGB, batches of 16, 2 forked workers) reads ``--chips`` cold chips from
bench_loaders' 60 items over the loopback nginx at 0 ms, in a fresh process per run, with a
``gc.callbacks`` probe in each worker. ``--unfrozen`` runs mark each worker as settled in its
``worker_init_fn``, so that it does not freeze its heap (the code before ``training.workers``).
Frozen and unfrozen runs alternate.

    uv run --all-packages python benchmarks/worker_gc.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import gc, json, os, resource, sys, tempfile, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["tests_dir"])
from provision import import_torch_stack
import_torch_stack()
import torch  # noqa: F401  (a training script's imports, before timing: as bench_loaders')
import async_tiff, deflate, obstore, rasterio  # noqa: E401,F401
import stacchip_core.core.tiles, stacchip_core.training.chipread  # noqa: E401,F401
from stacchip_core.plugins import platforms
from stacchip_core.training import workers
from stacchip_core.training.datamodule import StacchipDataModule
platforms()
probe_dir = cfg["probe_dir"]

def probe(_):
    if cfg["unfrozen"]:
        workers._SETTLED = os.getpid()  # as if settled: no gc.freeze(), the code before
    st = {"full": 0, "full_s": 0.0, "t0": 0.0}
    path = os.path.join(probe_dir, f"{os.getpid()}.json")
    with open(path, "w") as fh:
        json.dump(st, fh)
    def cb(phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            st["t0"] = time.perf_counter()
            return
        st["full"] += 1
        st["full_s"] += time.perf_counter() - st["t0"]
        with open(path, "w") as fh:
            json.dump(st, fh)
    gc.callbacks.append(cb)

def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime

c0, t0 = cpu(), time.perf_counter()
dm = StacchipDataModule(cfg["index"], bands=["red", "green", "blue"], batch_size=16,
                        num_workers=2, val_fraction=0.0, test_fraction=0.0)
loader = dm.train_dataloader()
loader.worker_init_fn = probe
n = sum(len(b["chipid"]) for b in loader)
loader._iterator._shutdown_workers()  # persistent workers: stop them before counting their CPU
dt, c1 = time.perf_counter() - t0, cpu()
found = [json.load(open(os.path.join(probe_dir, f))) for f in os.listdir(probe_dir)]
print(json.dumps({"chips": n, "rate": n / dt, "parent_ms": 1000 * (c1[0] - c0[0]) / n,
                  "workers_ms": 1000 * (c1[1] - c0[1]) / n,
                  "full": [f["full"] for f in found], "full_s": [f["full_s"] for f in found]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument("--chips", type=int, default=640)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import pyarrow.parquet as pq
    from bench_loaders import index_items, pick, serve
    from nginx_server import NginxServer

    print("| run | workers | chips/s | CPU ms/chip, parent + workers | full collections per "
          "worker (s) |\n|---|---|---|---|---|")
    with NginxServer(args.data / "loaders", delay=0) as server, \
            tempfile.TemporaryDirectory() as tmp:
        _, items = serve(args.data, server.url, 60)
        index = Path(tmp) / "index.parquet"
        pq.write_table(pick(index_items(items), args.chips, 0), index)
        for run in range(1, args.runs + 1):
            for unfrozen in (True, False):
                probe_dir = tempfile.mkdtemp(dir=tmp)
                cfg = {"index": str(index), "unfrozen": unfrozen, "probe_dir": probe_dir,
                       "tests_dir": str(HERE.parent / "tests")}
                out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                full = ", ".join(f"{n} ({s:.2f})" for n, s in zip(r["full"], r["full_s"]))
                print(f"| {run} | {'not frozen' if unfrozen else 'frozen (settle)'} | "
                      f"{r['rate']:.1f} | {r['parent_ms']:.2f} + {r['workers_ms']:.2f} | "
                      f"{full} |", flush=True)


if __name__ == "__main__":
    main()
