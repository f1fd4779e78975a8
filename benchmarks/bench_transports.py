"""CPU per ranged GET of each transport of the I/O layer, through ``objects.read_ranges``.

obstore in this process; the fork-safe transport (aiohttp) in a child forked after this
process used obstore, which is where it takes over. The object server is a separate process
(tests/rangeserver.py), so its CPU is not counted; only the client's (all its threads).

    uv run --all-packages python benchmarks/bench_transports.py [--requests 1500] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stacchip_core.io import objects

SIZE = 16 * 1024  # one small tile


def measure(url: str, n: int, concurrency: int, size: int) -> tuple[float, float, int]:
    """(CPU µs per request, requests per second, requests counted) for n ranged reads."""
    ranges = [((i * 7919) % 200 * size, (i * 7919) % 200 * size + size) for i in range(n)]
    expect = objects.Expect(size=200 * size)

    async def go(part):
        sem = asyncio.Semaphore(concurrency)

        async def one(r):
            async with sem:
                await objects.read_ranges(url, [r], expect)

        await asyncio.gather(*(one(r) for r in part))

    objects.run(go(ranges[:50]))  # warm: connections, signing hook
    before = objects.counters()
    t0, c0 = time.perf_counter(), time.process_time()
    objects.run(go(ranges))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return dc / n * 1e6, n / dt, (objects.counters() - before).requests


def _child(url, n, concurrency, size, conn):
    conn.send((measure(url, n, concurrency, size), objects.usable()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "blob.bin").write_bytes(os.urandom(200 * SIZE))
        server = subprocess.Popen(
            [sys.executable, str(Path(__file__).parents[1] / "tests" / "rangeserver.py"), tmp],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = server.stdout.readline().strip() + "/blob.bin"  # type: ignore[union-attr]
            cpu, rate, counted = measure(url, args.requests, args.concurrency, SIZE)
            print(
                f"obstore              {cpu:6.0f} µs CPU/request  {rate:6.0f} req/s  ({counted} "
                "requests)"
            )
            parent, child = multiprocessing.get_context("fork").Pipe()
            proc = multiprocessing.get_context("fork").Process(
                target=_child, args=(url, args.requests, args.concurrency, SIZE, child))
            proc.start()
            (cpu, rate, counted), usable = parent.recv()
            proc.join()
            assert not usable
            print(
                f"fork-safe (aiohttp)  {cpu:6.0f} µs CPU/request  {rate:6.0f} req/s  ({counted} "
                "requests)"
            )
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
