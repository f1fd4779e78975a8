"""Merged indexes built for queries (issue 20): merge time, peak memory and size of
synthetic worldwide Sentinel-2 + Landsat indexes, and what 1 and 0.1 degree boxes, date
windows and cloud filters read, through the project's query, geopandas and DuckDB, on the
sorted index and on the same rows in input order (the merge before issue 20).

Rows are generated directly as per-item index files with the real schema (tests/index_synth.py;
no rasters): 3 of 4 items Sentinel-2-like (1,764 chips), 1 of 4 Landsat-like (576 chips),
places at random over the world, each revisited up to 4 times over 5 years.

    uv run --all-packages python benchmarks/bench_index.py --sizes 100000,1000000,10000000

A partitioned variant of the same index (a folder of files by region, --partition-rows) is
merged and queried alongside the single file with --partition-rows 1000000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import numpy as np
import pyarrow.parquet as pq

CHILD_MERGE = """
import json, sys, time
from stacchip_core.pipeline.merge import MEMORY_ROWS, merge
start = time.perf_counter()
memory_rows = int(sys.argv[3]) if len(sys.argv) > 3 else MEMORY_ROWS
partition_rows = int(sys.argv[4]) if len(sys.argv) > 4 else None
report = merge(sys.argv[1], sys.argv[2], progress=False, memory_rows=memory_rows,
               partition_rows=partition_rows)
seconds = time.perf_counter() - start
peak = [int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(json.dumps({"seconds": seconds, "peak_mib": peak, "rows": report.rows}))
"""

CHILD_UNSORTED = """
import json, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from stacchip_core.pipeline.merge import ROW_GROUP_ROWS
start = time.perf_counter()
files = sorted(Path(sys.argv[1]).rglob('*.parquet'))
first = pq.read_table(files[0])
pending, writer = [], pq.ParquetWriter(sys.argv[2], first.schema, compression='zstd')
import pyarrow as pa
buffered = 0
for f in files:  # the merge before issue 20: input order, row groups of 128k rows
    t = pq.read_table(f)
    pending.append(t); buffered += len(t)
    if buffered >= 131072:
        table = pa.concat_tables(pending); whole = len(table) // 131072 * 131072
        writer.write_table(table.slice(0, whole), row_group_size=131072)
        pending = [table.slice(whole)]; buffered = len(table) - whole
if buffered:
    writer.write_table(pa.concat_tables(pending), row_group_size=131072)
writer.close()
peak = [int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak}))
"""


def generate(folder: Path, chips: int, layouts: bool) -> tuple[int, int]:
    from index_synth import write_items

    items = max(1, round(chips / (0.75 * 1764 + 0.25 * 576)))
    return write_items(folder, items, seed=11, layouts=layouts)


def _child(code: str, *args: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def _times_ms(fn, repeats: int) -> tuple[float, float]:
    """Median and min of ``repeats`` runs, in ms (the machine is shared: the min is the
    least disturbed run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1), round(min(times) * 1000, 1)


def _duck_arrow(relation):
    # DuckDB 2 names it to_arrow_table, 1.x arrow()
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def queries(path: Path, seed: int = 0, boxes: int = 5) -> list[tuple[str, dict]]:
    """Query cases: 1 and 0.1 degree boxes around random chips, a month, a cloud filter."""
    table = pq.read_table(path, columns=["bbox"]).column("bbox").combine_chunks()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(table), boxes)
    cases = []
    for size in (1.0, 0.1):
        for r in rows:
            x, y = table.field("xmin")[int(r)].as_py(), table.field("ymin")[int(r)].as_py()
            x = min(x, 180 - size)
            cases.append((f"{size:g} deg box", {"bbox": (x, y, x + size, min(y + size, 90))}))
    x, y = table.field("xmin")[int(rows[0])].as_py(), table.field("ymin")[int(rows[0])].as_py()
    x = min(x, 179)
    cases.append(
        (
            "1 deg box, one month",
            {"bbox": (x, y, x + 1, y + 1), "datetime_range": "2022-03-01/2022-03-31"},
        )
    )
    cases.append(("1 deg box, cloud <= 0.1", {"bbox": (x, y, x + 1, y + 1), "max_cloud": 0.1}))
    cases.append(("one month, worldwide", {"datetime_range": "2022-03-01/2022-03-31"}))
    return cases


def _baseline(path: str | None):
    """The ``query`` function of another copy of core/query.py (``--baseline-query``), to
    time before and after in the same run, interleaved (the machine is shared)."""
    if not path:
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_query", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.query


def run_query(path: Path, kwargs: dict, repeats: int, baseline=None, url: str = "") -> dict:
    """Time the project's query of ``path`` (or of ``url``, the same file over HTTP: then
    only the project's query and the baseline), against the baseline or geopandas and
    DuckDB."""
    import duckdb
    import geopandas as gpd

    from stacchip_core.core.query import query

    target = url or path  # over HTTP: the project and the baseline read ranges of the file
    result = query(target, **kwargs)
    out = {
        "rows": result.report.rows,
        "groups": f"{result.report.row_groups_read}/{result.report.row_groups_total}",
        "files": f"{result.report.files_read}/{result.report.files_total}",
        "mib_read": round(result.report.bytes_read / 2**20, 2),
    }
    if url:
        out["requests"] = result.report.requests
    if path.is_dir():  # a partitioned index: the project's query only
        out["project_ms"], out["project_ms_min"] = _times_ms(lambda: query(path, **kwargs),
                                                             repeats)
        return out
    if baseline is not None:  # one run of each in turn, so both see the same load
        before_result = baseline(target, **kwargs)
        assert before_result.table.equals(result.table)
        out["baseline_mib"] = round(before_result.report.bytes_read / 2**20, 2)
        now, before = [], []
        for _ in range(repeats):
            now.append(_times_ms(lambda: query(target, **kwargs), 1)[0])
            before.append(_times_ms(lambda: baseline(target, **kwargs), 1)[0])
        out["project_ms"], out["project_ms_min"] = statistics.median(now), min(now)
        out["baseline_ms"], out["baseline_ms_min"] = statistics.median(before), min(before)
        return out
    out["project_ms"], out["project_ms_min"] = _times_ms(lambda: query(target, **kwargs),
                                                         repeats)
    if url:  # geopandas and DuckDB read the local file only
        return out
    if "bbox" in kwargs and "datetime_range" not in kwargs and "max_cloud" not in kwargs:
        w, s, e, n = kwargs["bbox"]
        # without the layouts column: geopandas and DuckDB decode it into one blob per row (6 kB
        # here), which made a 1 degree box over the input-order file take gigabytes
        columns = [c for c in pq.read_schema(path).names if c != "layouts"]
        out["geopandas_ms"], out["geopandas_ms_min"] = _times_ms(
            lambda: gpd.read_parquet(path, bbox=(w, s, e, n), columns=columns), repeats
        )
        con = duckdb.connect()
        sql = (
            f"SELECT * EXCLUDE (layouts) FROM read_parquet('{path}') WHERE bbox.xmin <= {e} AND "
            f"bbox.xmax >= {w} "
            f"AND bbox.ymin <= {n} AND bbox.ymax >= {s}"
        )
        fetch = lambda: _duck_arrow(con.sql(sql))
        out["duckdb_ms"], out["duckdb_ms_min"] = _times_ms(fetch, repeats)
        out["duckdb_rows"] = fetch().num_rows  # covering overlap: >= exact rows
        con.close()
    return out


def _build(folder: Path, chips: int, layouts: bool, reuse: bool, unsorted_too: bool) -> dict:
    """Generate the per-item files and merge them, or reuse what an earlier run left in
    ``folder`` (``--reuse``: merge time and peak memory are then those of that run)."""
    record = folder / "build.json"
    merged, unsorted = folder / "merged.parquet", folder / "unsorted.parquet"
    if reuse and record.exists() and merged.exists():
        built = json.loads(record.read_text())
        if not unsorted_too or unsorted.exists():
            built["reused"] = True
            return built
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    files, rows = generate(folder / "index", chips, layouts)
    built = {"files": files, "rows": rows, "generate_s": time.perf_counter() - start}
    built["merge"] = _child(CHILD_MERGE, str(folder / "index"), str(merged))
    if unsorted_too:
        built["unsorted"] = _child(CHILD_UNSORTED, str(folder / "index"), str(unsorted))
    record.write_text(json.dumps(built))
    return built


def _partitioned(folder: Path, rows: int, reuse: bool) -> tuple[Path, dict]:
    """A partitioned merge of the same inputs (``--partition-rows``), timed in a fresh
    process, or the one an earlier run left (``--reuse``)."""
    record = folder / "build.json"
    built = json.loads(record.read_text())
    out = folder / f"parts-{rows}"
    name = f"partitioned-{rows}"
    if not (reuse and name in built and (out / "_partitions.parquet").exists()):
        built[name] = _child(CHILD_MERGE, str(folder / "index"), str(out), "250000", str(rows))
        record.write_text(json.dumps(built))
    return out, built[name]


def memory_scaling(src: Path, work: Path, copies: list[float], memory_rows: int) -> None:
    """Peak RSS of merges of a share or several copies of the same per-item files (symlinks;
    copies are whole folders, so ``2`` merges every row twice): does memory grow with rows?"""
    files = sorted(src.rglob("*.parquet"))
    for share in copies:
        folder = work / f"copies-{share:g}"
        shutil.rmtree(folder, ignore_errors=True)
        chosen = [(c, f) for c in range(int(share) or 1)
                  for f in (files if share >= 1 else files[: round(len(files) * share)])]
        for copy, f in chosen:
            link = folder / f"c{copy}" / f.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.resolve())
        out = work / f"copies-{share:g}.parquet"
        m = _child(CHILD_MERGE, str(folder), str(out), str(memory_rows))
        print(f"merge of {m['rows']:>11,} rows ({len(chosen):,} files, memory_rows "
              f"{memory_rows:,}): {m['seconds']:6.1f} s, peak RSS {m['peak_mib']:5d} MiB",
              flush=True)
        out.unlink()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--layouts", default="no,yes", help="no,yes: without and with layouts")
    parser.add_argument(
        "--layouts-max", type=int, default=1_000_000, help="largest size built with layouts"
    )
    parser.add_argument("--work", default=str(HERE / ".data" / "bench-index"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=5, help="random boxes per box size")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--reuse", action="store_true",
        help="reuse the inputs and merged files a --keep run left (no merge is timed)",
    )
    parser.add_argument(
        "--memory-scaling", default="",
        help="e.g. 0.1,1,2: after building each size, merge that share or number of copies "
             "of its inputs and report peak RSS (is merge memory bounded?)",
    )
    parser.add_argument("--memory-rows", type=int, default=250_000,
                        help="merge(memory_rows=) for --memory-scaling")
    parser.add_argument("--partition-rows", type=int, default=0,
                        help="also merge into a partitioned index of files of at most this "
                             "many rows and query it (the project's query only)")
    parser.add_argument("--no-queries", action="store_true")
    parser.add_argument("--no-worldwide", action="store_true",
                        help="skip the worldwide month (it reads every row group)")
    parser.add_argument("--no-input-order", action="store_true",
                        help="skip the input-order file and its queries")
    parser.add_argument(
        "--baseline-query", default="",
        help="another copy of stacchip_core/core/query.py (e.g. main's) to time against the "
             "current one, interleaved (geopandas and DuckDB are then not run)",
    )
    parser.add_argument(
        "--http-delay", type=float, default=None,
        help="query the sorted file over a loopback nginx adding this many seconds to each "
             "request (e.g. 0.02; the project's query and the baseline only)",
    )
    args = parser.parse_args()
    work = Path(args.work)
    baseline = _baseline(args.baseline_query)
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
          f", load {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for chips in (int(s) for s in args.sizes.split(",")):
        for layouts in (v == "yes" for v in args.layouts.split(",")):
            if layouts and chips > args.layouts_max:
                continue
            name = f"{chips}-{'layouts' if layouts else 'plain'}"
            folder = work / name
            built = _build(folder, chips, layouts, args.reuse, not args.no_input_order)
            rows = built["rows"]
            print(
                f"\n== {rows:,} chips in {built['files']:,} per-item files "
                f"({'with' if layouts else 'without'} layouts; "
                f"generated in {built['generate_s']:.0f} s"
                f"{'; reused from an earlier run' if built.get('reused') else ''})"
            )
            merged, unsorted = folder / "merged.parquet", folder / "unsorted.parquet"
            m = built["merge"]
            size = merged.stat().st_size
            meta = pq.read_metadata(merged)
            print(
                f"merge (sorted):   {m['seconds']:7.1f} s  peak RSS {m['peak_mib']:5d} MiB  "
                f"{size / 2**20:8.1f} MiB ({size / rows * 1e6 / 2**20:.0f} MiB per million chips), "
                f"{meta.num_row_groups} row groups"
            )
            paths = [("sorted", merged)]
            if not args.no_input_order:
                u = built["unsorted"]
                print(
                    f"input order:      {u['seconds']:7.1f} s  peak RSS {u['peak_mib']:5d} MiB  "
                    f"{unsorted.stat().st_size / 2**20:8.1f} MiB, "
                    f"{pq.read_metadata(unsorted).num_row_groups} row groups"
                )
                paths.append(("input order", unsorted))
            if args.partition_rows:
                parts, pm = _partitioned(folder, args.partition_rows, args.reuse)
                manifest = pq.read_table(parts / "_partitions.parquet")
                size = sum(f.stat().st_size for f in parts.iterdir())
                print(
                    f"merge (partitioned, {args.partition_rows:,} rows): {pm['seconds']:7.1f} s"
                    f"  peak RSS {pm['peak_mib']:5d} MiB  {size / 2**20:8.1f} MiB in "
                    f"{manifest.num_rows} files ({min(manifest['rows'].to_pylist()):,}-"
                    f"{max(manifest['rows'].to_pylist()):,} rows), "
                    f"{sum(manifest['row_groups'].to_pylist())} row groups"
                )
                paths.append(("partitioned", parts))
            if args.memory_scaling:
                memory_scaling(folder / "index", work / "scaling",
                               [float(v) for v in args.memory_scaling.split(",")],
                               args.memory_rows)
            server = None
            if args.http_delay is not None:
                from nginx_server import NginxServer

                server = NginxServer(folder, delay=args.http_delay).start()
                paths = [("sorted, over HTTP", merged)]
            for label, path in [] if args.no_queries else paths:
                url = f"{server.url}/merged.parquet" if server is not None else ""
                if url:
                    label += f" at {args.http_delay * 1000:g} ms per request"
                print(f"  queries, {label} (ms: median of the boxes' medians, [min of all runs]):")
                by_case: dict[str, list[dict]] = {}
                for case, kwargs in queries(merged, boxes=args.boxes):
                    if args.no_worldwide and "bbox" not in kwargs:
                        continue
                    by_case.setdefault(case, []).append(
                        run_query(path, kwargs, args.repeats, baseline, url)
                    )
                for case, results in by_case.items():
                    def med(k: str, results=results):
                        return statistics.median(r[k] for r in results) if k in results[0] else None

                    def low(k: str, results=results):
                        return min(r[k + "_min"] for r in results)

                    groups = ", ".join(r["groups"] for r in results)
                    if path.is_dir():
                        groups = ", ".join(r["files"] for r in results) + " files; " + groups
                    line = (f"    {case:<24} rows {med('rows'):>9,.0f}  groups {groups:<28} "
                            f"MiB {med('mib_read'):7.2f}  project {med('project_ms'):7.1f} "
                            f"[{low('project_ms'):6.1f}] ms")
                    if med("requests") is not None:
                        line += f" in {med('requests'):.0f} requests"
                    if med("baseline_ms") is not None:
                        line += (f"  baseline {med('baseline_ms'):7.1f} "
                                 f"[{low('baseline_ms'):6.1f}] ms, MiB {med('baseline_mib'):.2f}")
                    elif med("geopandas_ms") is not None:
                        line += (
                            f"  geopandas {med('geopandas_ms'):7.1f} [{low('geopandas_ms'):6.1f}]"
                            f" ms  duckdb {med('duckdb_ms'):7.1f} [{low('duckdb_ms'):6.1f}] ms"
                        )
                    print(line, flush=True)
            if server is not None:
                server.stop()
            if not args.keep and not args.reuse:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
