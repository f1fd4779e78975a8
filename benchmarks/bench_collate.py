"""The collates alone, in a real DataLoader: how much CPU a batch's hand-off costs the workers
and the main process, with the datasets' samples made up (no reading), so only the collate and
torch's transfer of the batch differ.

    python benchmarks/bench_collate.py                  # chips and stacks, 0 and 2 workers
    python benchmarks/bench_collate.py --batches 200 --runs 3

Each run is a fresh process (`getrusage` of the process and its waited-for workers). Samples
are what the datasets return: chips as the rows of one float32 batch array (ChipDataset's,
``core.read._float_stacks``), stacks as arrays of their own (StackDataset's). For each, the
collate of this tree (``training.collate``) runs against the one it replaced: torch's default
collate for chips, ``np.stack`` then ``torch.from_numpy`` for stacks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

JOB = textwrap.dedent(r"""
import json, resource, sys, time
import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate
from stacchip_core.training.collate import collate_chips, collate_stacks

cfg = json.loads(sys.argv[1])
B, kind, new = cfg["batch"], cfg["kind"], cfg["new"]


class Chips:
    # 16 RGB chips of 256 px, float32: one batch array, as ChipDataset returns them
    def __len__(self):
        return cfg["batches"] * B

    def __getitems__(self, idx):
        batch = np.ones((len(idx), 3, 256, 256), np.float32)
        return [{"pixels": px, "chipid": str(i), "item_id": "", "date": "", "lon": 0.0,
                 "lat": 0.0, "platform": "p"} for i, px in zip(idx, batch)]


class Stacks:
    # 12-step RGB stacks of 256 px, each its own array, as StackDataset returns them
    def __len__(self):
        return cfg["batches"] * B

    def __getitems__(self, idx):
        return [{"pixels": np.ones((12, 3, 256, 256), np.float32),
                 "valid": np.ones((12, 256, 256), bool), "time": np.arange(12),
                 "present": np.ones(12, bool), "dates": [], "stackid": str(i), "lon": 0.0,
                 "lat": 0.0, "platform": "p"} for i in idx]


def old_chips(samples):  # torch's default collate
    return default_collate(samples)


def old_stacks(samples):  # what collate_stacks did before training.collate.stacked
    t = np.stack([s["time"] for s in samples])
    return {"pixels": torch.from_numpy(np.stack([s["pixels"] for s in samples])),
            "valid": torch.from_numpy(np.stack([s["valid"] for s in samples])),
            "time": torch.from_numpy(t), "stackid": [s["stackid"] for s in samples]}


ds = Chips() if kind == "chips" else Stacks()
collate = {("chips", True): collate_chips, ("chips", False): old_chips,
           ("stacks", True): collate_stacks, ("stacks", False): old_stacks}[(kind, new)]
batches = [list(range(k * B, (k + 1) * B)) for k in range(cfg["batches"])]
ru = lambda w: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(w))
c0, w0, t0 = ru(resource.RUSAGE_SELF), ru(resource.RUSAGE_CHILDREN), time.perf_counter()
loader = DataLoader(ds, batch_sampler=batches, num_workers=cfg["workers"], collate_fn=collate)
n = 0
for b in loader:
    n += 1
    float(b["pixels"].reshape(-1)[-1])  # the main process touches the batch
del loader
dt = time.perf_counter() - t0
print(json.dumps({"batches": n, "seconds": dt,
                  "parent_ms": 1000 * (ru(resource.RUSAGE_SELF) - c0) / n,
                  "workers_ms": 1000 * (ru(resource.RUSAGE_CHILDREN) - w0) / n}))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=100, help="batches per run")
    ap.add_argument("--runs", type=int, default=2, help="runs of each case, interleaved")
    args = ap.parse_args()
    cases = [(kind, workers, new, batch) for kind, batch in (("chips", 16), ("stacks", 8))
             for workers in (0, 2) for new in (False, True)]
    results: dict = {}
    for _ in range(args.runs):
        for kind, workers, new, batch in cases:
            cfg = {"kind": kind, "workers": workers, "new": new, "batch": batch,
                   "batches": args.batches}
            out = subprocess.run([sys.executable, "-c", JOB, json.dumps(cfg)], check=True,
                                 capture_output=True, text=True).stdout
            results.setdefault((kind, workers, new), []).append(json.loads(out))
    print("| samples | workers | collate | CPU ms per batch: main process | workers | total |")
    print("|---|---|---|---|---|---|")
    names = {("chips", False): "torch's default", ("chips", True): "collate_chips",
             ("stacks", False): "np.stack (before)", ("stacks", True): "collate_stacks"}
    for (kind, workers, new), runs in results.items():
        what = ("16 RGB chips" if kind == "chips" else "8 RGB stacks of 12 steps")
        cells = [" / ".join(f"{r[k]:.1f}" for r in runs) for k in ("parent_ms", "workers_ms")]
        total = " / ".join(f"{r['parent_ms'] + r['workers_ms']:.1f}" for r in runs)
        print(f"| {what} | {workers} | {names[(kind, new)]} | {cells[0]} | {cells[1]} | {total} |")


if __name__ == "__main__":
    main()
