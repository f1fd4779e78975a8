"""What a torch DataLoader worker does once, before its first read: freeze the objects it
started with, so that Python's cyclic garbage collector never walks them.

A forked worker inherits its parent's whole heap: every object of torch, Lightning, pyarrow and
the training script (a spawned one builds the same by importing them). CPython runs a full
collection when the objects that survived since the last one reach a quarter of the rest. A
parent that imported much after its last full collection (a training script importing rasterio
is enough) hands its workers a heap past that point, so each worker soon walks every inherited
object, and writing their GC headers copies their pages (copy-on-write). Measured with the
data module (RGB, 2 forked workers, 640 cold chips at 0 ms, three alternated runs of
benchmarks/worker_gc.py): one full collection of 0.32-0.37 s in every worker, 8.5-9.5 CPU ms
per chip in the workers; with ``gc.freeze()`` at the first read none ran, 7.4-8.0 ms.

Frozen objects are still freed by reference counting; only cycles among them, left over from
the parent, stay until the worker exits. That is the trade Python's documentation recommends
for forked workers (``gc.freeze``).
"""

from __future__ import annotations

import gc
import os
import sys

_SETTLED: int | None = None  # the process that already settled (a fork has another pid)


def settle() -> None:
    """In a torch DataLoader worker, once per process: ``gc.freeze()``. Outside one (the main
    process, ``num_workers=0``, a multiprocessing pool): nothing. The datasets call this at the
    start of each batch; after the first call in a process it costs one ``os.getpid()``."""
    global _SETTLED
    pid = os.getpid()
    if _SETTLED == pid:
        return
    _SETTLED = pid
    data = sys.modules.get("torch.utils.data")  # no torch imported: no torch worker
    if data is not None and data.get_worker_info() is not None:
        gc.freeze()
