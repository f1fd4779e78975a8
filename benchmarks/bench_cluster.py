"""The demo archive processed sequentially vs on a 2-worker dask LocalCluster.

    uv run --all-packages python benchmarks/bench_cluster.py [--repeats 3]

Each run processes the demo's jobs (one sample of each source: S2, Landsat L2 and L1, NAIP,
LINZ) into a fresh bucket folder; times are medians of --repeats. The archive is built once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

from stacchip_core.demo.archive import build_archive
from stacchip_core.demo.run import demo_jobs
from stacchip_core.pipeline.process import process
from stacchip_core.pipeline.runner import run_tasks


def demo_job(i: int, jobs, items: str, bucket: str) -> int:
    platform, source, index = jobs[i]
    return len(process(platform, index, bucket, source, items))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stacchip-bench-"))
    archive = build_archive(work / "archive")
    os.environ["STACCHIP_LINZ_SOURCE"] = str(archive.linz_source)
    jobs = demo_jobs(archive)
    results = {}
    for scheduler in ("sync", "local:2"):
        times = []
        for r in range(args.repeats):
            bucket = work / f"bucket-{scheduler.replace(':', '')}-{r}"
            fn = partial(demo_job, jobs=jobs, items=str(archive.items), bucket=str(bucket))
            start = time.perf_counter()
            report = run_tasks(fn, range(len(jobs)), scheduler, retries=0, command="bench")
            times.append(time.perf_counter() - start)
            assert not report.failed, report.failed
            items = sum(t.result for t in report.tasks)
        results[scheduler] = statistics.median(times)
        print(
            f"{scheduler:<10} {results[scheduler]:6.2f} s  ({len(jobs)} jobs, {items} items; runs "
            f"{', '.join(f'{t:.2f}' for t in times)})"
        )
    print(
        f"speed-up on 2 workers: {results['sync'] / results['local:2']:.2f}x (cluster start-up "
        "included)"
    )
    # an already running cluster (as on a real deployment): start-up and imports excluded
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        warm = partial(demo_job, jobs=jobs, items=str(archive.items), bucket=str(work / "warm-up"))
        run_tasks(warm, range(len(jobs)), cluster.scheduler_address, retries=0, command="warm-up")
        times = []
        for r in range(args.repeats):
            fn = partial(
                demo_job, jobs=jobs, items=str(archive.items), bucket=str(work / f"bucket-warm-{r}")
            )
            start = time.perf_counter()
            run_tasks(fn, range(len(jobs)), cluster.scheduler_address, retries=0, command="bench")
            times.append(time.perf_counter() - start)
    results["warm"] = statistics.median(times)
    print(
        f"{'warm tcp':<10} {results['warm']:6.2f} s  (runs {', '.join(f'{t:.2f}' for t in times)})"
    )
    print(f"speed-up on a running 2-worker cluster: {results['sync'] / results['warm']:.2f}x")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
