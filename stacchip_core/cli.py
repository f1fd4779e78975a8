"""The ``stacchip`` command line. Click commands only: the work is done by functions a
Python user can call too.

Everything it prints is one honest line per line: report lines go through ``echo``, log
records through ``_LineFormatter`` (library warnings too: they are captured by logging),
errors through ``error_line`` and click's own errors through ``_escaped``; each escapes
control characters (item ids, asset keys and hrefs are catalog data, and a newline in one
must not forge a line). Commands print with ``echo``, never ``click.echo`` or ``print``
(tests/test_output_lines.py checks this module and the plugins).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from stacchip_core.errors import ConfigError, StacchipError
from stacchip_core.io.urls import redact_text

log = logging.getLogger("stacchip_core")


def echo(text: str = "", err: bool = False) -> None:
    """Print one line (stdout, or stderr with ``err``): URLs redacted, control characters
    escaped, so that data in it (an item id with a newline) cannot forge another line.

    Args:
        text: the line; a newline in it is printed as ``\\n``.
        err: print to stderr.
    """
    click.echo(redact_text(text) if text else "", err=err)


def _escaped(exc: click.ClickException) -> click.ClickException:
    """``exc`` whose message prints as one line (a bad option value can hold anything)."""
    if not getattr(exc, "_stacchip_escaped", False):
        message = exc.format_message
        exc.format_message = lambda: redact_text(message())  # type: ignore[method-assign]
        exc._stacchip_escaped = True  # type: ignore[attr-defined]
    return exc


def error_line(exc: BaseException) -> str:
    """The one line an error prints as: its message (unexpected errors with their type),
    URLs redacted, control characters escaped (catalog data cannot forge lines).

    Args:
        exc: The error.

    Returns:
        Its message (``Type: message`` for errors that are not a ``StacchipError``) on one
        line.
    """
    text = str(exc) if isinstance(exc, StacchipError) else f"{type(exc).__name__}: {exc}"
    return redact_text(text.strip())  # arrow ends some messages with a newline


class _Group(click.Group):
    """Turns every error into one line on stderr and exit code 1: no tracebacks.
    Usage errors (a missing or bad option) stay click's: exit code 2."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as exc:
            raise _escaped(exc) from exc.__cause__

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            raise _escaped(exc) from exc.__cause__
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # -vv shows the traceback
            log.debug("error", exc_info=True)
            raise click.ClickException(error_line(exc)) from None


class _LineFormatter(logging.Formatter):
    """One line per message: URLs redacted, control characters (newlines in item ids…)
    escaped. Tracebacks (-vv only) keep their lines, with URLs redacted."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = redact_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return "\n".join(redact_text(line) for line in super().formatException(ei).splitlines())


class _JsonFormatter(_LineFormatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                 "logger": record.name, "message": redact_text(record.getMessage())}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


_LOG_SETTINGS: tuple[int, bool, bool] = (0, False, False)  # the last _setup_logging's, for workers


class _LoggedJob:
    """A job that sets up the command's logging in the dask worker process that runs it. A
    worker has no handler of its own for stacchip's records, and Python's last-resort
    handler prints warnings raw: an item id with a newline would forge a line there."""

    def __init__(self, fn, settings: tuple[int, bool, bool]) -> None:
        self.fn, self.settings = fn, settings

    def __call__(self, index: int):
        if not logging.getLogger().handlers:  # a fresh worker process (not sync, not this one)
            _setup_logging(*self.settings)
        return self.fn(index)


def _setup_logging(verbose: int, quiet: bool, log_json: bool = False) -> None:
    global _LOG_SETTINGS
    _LOG_SETTINGS = (verbose, quiet, log_json)
    # default WARNING, -v INFO, -vv DEBUG (with tracebacks); -q only errors
    level = (
        logging.ERROR
        if quiet
        else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if log_json else _LineFormatter("%(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # library warnings are log records: one escaped line each
    for noisy in ("rasterio", "botocore", "urllib3", "boto3", "s3transfer", "distributed"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug and tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--log-json", is_flag=True, help="Log lines as JSON objects (for log shippers).")
@click.version_option(package_name="stacchip-core")
def cli(verbose: int, quiet: bool, log_json: bool) -> None:
    """Index STAC items into ML chips and read their pixels."""
    _setup_logging(verbose, quiet, log_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--all", "show_all", is_flag=True, help="Also stacchip-core's built-in hook implementations."
)
def plugins(as_json: bool, show_all: bool) -> None:
    """Installed plugins, their versions, platforms and hooks."""
    from stacchip_core.plugins import plugin_info

    rows = plugin_info(builtins=show_all)
    if as_json:
        for line in json.dumps(
            rows, indent=2
        ).splitlines():  # ASCII: control characters are \u escapes
            echo(line)
        return
    if not rows:
        echo("no plugins installed")
    for row in rows:
        echo(f"{row['name']} ({row['distribution']} {row['version']})")
        echo(f"  platforms: {', '.join(row['platforms']) or '-'}")
        echo(f"  hooks: {', '.join(row['hooks'])}")


# the --mountpath option of every command that reads hrefs
MOUNTPATH = click.option(
    "--mountpath",
    type=click.Path(file_okay=False),
    help="Local mirror that s3:// and https:// hrefs map to.",
)


@cli.command()
@click.argument("items", metavar="ITEM...", nargs=-1, type=str)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="GeoParquet file to write (one ITEM), or a folder of per-item index files (many items).",
)
@click.option("--platform", help="Platform name (default: from the item's collection).")
@click.option("--chip-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--max-nodata",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Drop chips with a larger nodata fraction.",
)
@click.option("--no-stats", is_flag=True, help="Index without cloud/nodata statistics (all 0).")
@click.option(
    "--no-layouts", is_flag=True, help="Do not record COG layouts (chips then open each file)."
)
@MOUNTPATH
@click.option(
    "--catalog",
    help=(
        "Index the items of a search: a STAC API URL, or a stac-geoparquet / .ndjson file "
        "or item folder."
    ),
)
@click.option("--collections", help="Search: comma-separated collection ids.")
@click.option("--bbox", type=float, nargs=4, help="Search: west south east north.")
@click.option("--datetime", "datetime_range", help="Search: ISO 8601 instant or interval a/b.")
@click.option("--max-items", type=click.IntRange(min=1), help="Search: at most this many items.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Items indexed at once.",
)
def index(
    items,
    output,
    platform,
    chip_size,
    max_nodata,
    no_stats,
    mountpath,
    no_layouts,
    catalog,
    collections,
    bbox,
    datetime_range,
    max_items,
    workers,
) -> None:
    """Index the chips of STAC items into --output.

    One ITEM (a JSON file or URL) goes into one GeoParquet file; many ITEMs, or the items
    of a --catalog search, into a folder of per-item index files (then `stacchip merge`
    them).
    """
    from stacchip_core.core.index import write_index
    from stacchip_core.core.indexer import Indexer

    if not items and not catalog:
        raise click.UsageError("give one or more ITEMs or a --catalog to search")
    if len(items) == 1 and not catalog:
        indexer = Indexer(
            items[0],
            chip_size=chip_size,
            chip_max_nodata=max_nodata,
            platform=platform,
            stats=not no_stats,
            mountpath=mountpath,
            layouts=not no_layouts,
        )
        table = indexer.create_index()
        write_index(table, output)
        echo(f"{output}: {len(table)} of {indexer.size} chips ({indexer.platform_name}, "
                   f"{indexer.x_size} x {indexer.y_size} grid)")
        return
    from stacchip_core.pipeline.process import index_many

    sources: Iterable = list(items)
    if catalog:
        from itertools import chain

        from stacchip_core.io.catalog import open_catalog

        search = open_catalog(catalog).search(
            collections=collections.split(",") if collections else None,
            bbox=list(bbox) if bbox else None,
            datetime=datetime_range,
            max_items=max_items,
        )
        # lazily: the first items are indexed while later pages of the search are fetched,
        # and a search of 100,000 items is never held whole
        sources = chain(sources, search.items())
    report = index_many(
        sources,
        output,
        workers=workers,
        chip_size=chip_size,
        chip_max_nodata=max_nodata,
        platform=platform,
        stats=not no_stats,
        mountpath=mountpath,
        layouts=not no_layouts,
    )
    echo(
        f"{output}: {report.chips} chips of {report.done} items in {report.seconds:.1f} s "
        f"({report.items_per_second:.1f} items/s, {workers} at once); {report.failed} failed"
    )
    for line in report.errors:
        echo(f"failed: {line}", err=True)
    if report.failed:
        raise SystemExit(1)


@cli.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, path_type=Path))
@click.option("--row", type=click.IntRange(min=0), help="Row number in the index.")
@click.option("--chipid", help="Chip id ({item_id}-{x}-{y}).")
@click.option(
    "--assets", help="Comma-separated asset keys or band names (default: the platform's bands)."
)
@MOUNTPATH
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output .npz, .tif or .png (RGB preview).",
)
@click.option(
    "--stack",
    "stackid",
    help="A stack id: INDEX is then a stacks table (stacchip stack); .npz or .tif.",
)
def chip(index_path, row, chipid, assets, mountpath, output, stackid) -> None:
    """Read the pixels of one chip of INDEX into --output.

    Name the chip by --row or --chipid. With --stack, INDEX is a stacks table (`stacchip
    stack`) and --output holds every step of that stack.
    """
    from stacchip_core.core.chipper import chip_from_row
    from stacchip_core.core.index import find_row
    from stacchip_core.core.output import write_chip

    if stackid is not None:
        _write_stack(index_path, stackid, assets, output)
        return
    if (row is None) == (chipid is None):
        raise click.UsageError("give exactly one of --row or --chipid")
    record = find_row(index_path, row=row, chipid=chipid)
    pixels = chip_from_row(
        record, assets=assets.split(",") if assets else None, mountpath=mountpath
    )
    write_chip(output, pixels)
    shapes = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in pixels.items())
    echo(f"{output}: {record['chipid']}: {shapes}")


def _write_stack(path: Path, stackid: str, bands: str | None, output: Path) -> None:
    import pyarrow.compute as pc

    from stacchip_core.core.output import write_chip
    from stacchip_core.core.stacks import read_stacks
    from stacchip_core.errors import NotFoundError
    from stacchip_core.training.stacks import StackReader

    table = read_stacks(path)
    found = table.filter(pc.equal(table["stackid"], stackid))
    if not found.num_rows:
        raise NotFoundError(f"stack {stackid!r} is not in {path}")
    record = found.slice(0, 1).to_pylist()[0]
    # --assets names the anchor platform's bands; other platforms read their canonical bands
    pixels = StackReader({record["platform"]: bands.split(",")} if bands else None).read(record)
    write_chip(output, pixels)
    shapes = ", ".join(f"{p} {v.shape}" for p, v in pixels.pixels.items())
    echo(f"{output}: {stackid}: {shapes}")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--partition-rows", type=click.IntRange(min=1), default=None,
              help="Write DST as a folder of files of at most this many rows, each a compact "
                   "region, plus a manifest (_partitions.parquet) queries prune files by.")
def merge(src, dst, partition_rows) -> None:
    """Merge per-item index files into one GeoParquet index.

    SRC is the folder or s3:// prefix `stacchip index` or `stacchip process` wrote them to;
    DST the merged file, its rows in Hilbert order so that queries read few row groups (with
    --partition-rows, a folder or s3:// prefix of such files).
    """
    from stacchip_core.pipeline.merge import merge as merge_indexes

    result = merge_indexes(src, dst, partition_rows=partition_rows)
    echo(f"{result.output}: {result.rows} chips from {result.files} index files")


@cli.command()
@click.argument("index_path", metavar="INDEX")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Stacks GeoParquet file to write.")
@click.option(
    "--anchor", help="Platform whose chips anchor the stacks (default: each platform its own)."
)
@click.option(
    "--with",
    "with_",
    multiple=True,
    help="Platform whose items join each anchor step (repeatable).",
)
@click.option("--share", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Least share of the anchor chip a joining item covers.")
@click.option("--window", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Days between an anchor step and a joining item, at most.")
@click.option("--min-steps", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Keep the clearest N steps.")
@click.option(
    "--max-cloud", type=click.FloatRange(0, 1), help="Drop steps with a larger cloud fraction."
)
@click.option(
    "--max-nodata", type=click.FloatRange(0, 1), help="Drop steps with a larger nodata fraction."
)
@click.option(
    "--every", type=click.IntRange(min=1), help="One step per this many days, the clearest."
)
@click.option(
    "--region",
    type=float,
    nargs=4,
    metavar="W S E N",
    help="Only stacks whose anchor centre lies in [W, E) x [S, N) (lon/lat): one run per region.",
)
def stack(
    index_path,
    output,
    anchor,
    with_,
    share,
    window,
    min_steps,
    max_steps,
    max_cloud,
    max_nodata,
    every,
    region,
) -> None:
    """Group the chips of INDEX into stacks of the same place.

    A stack is an anchor chip and the chips that cover the same ground: a time series of one
    platform, or chips of other sensors (--with). `stacchip chip --stack` reads one.
    """
    from stacchip_core.core.stacks import build_stacks, write_stacks

    table = build_stacks(
        index_path,
        anchor=anchor,
        with_=with_,
        share=share,
        window=window,
        min_steps=min_steps,
        max_steps=max_steps,
        max_cloud=max_cloud,
        max_nodata=max_nodata,
        every=every,
        region=tuple(region) if region else None,
    )
    write_stacks(table, output)
    members = sum(len(v) for v in table["member_chipid"].to_pylist()) if table.num_rows else 0
    echo(f"{output}: {table.num_rows} stacks, {members} members")


@cli.command("query")
@click.argument("index_path", metavar="INDEX")
@click.option(
    "--bbox",
    type=float,
    nargs=4,
    help="west south east north in degrees (west > east crosses 180).",
)
@click.option(
    "--intersects",
    type=click.Path(exists=True, dir_okay=False),
    help="Chips meeting the geometries of this file (GeoJSON or any layer geopandas reads).",
)
@click.option(
    "--datetime", "datetime_range", help="ISO 8601 instant or interval a/b (.. for an open end)."
)
@click.option("--platform", "platforms_", multiple=True, help="Keep these platforms (repeatable).")
@click.option(
    "--max-cloud", type=click.FloatRange(0, 1), help="Keep chips with at most this cloud fraction."
)
@click.option(
    "--max-nodata",
    type=click.FloatRange(0, 1),
    help="Keep chips with at most this nodata fraction.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the chips (GeoParquet).",
)
def query_command(
    index_path, bbox, intersects, datetime_range, platforms_, max_cloud, max_nodata, output
) -> None:
    """Count (or write) the chips of INDEX that match the filters.

    INDEX is a file, a folder, or an s3:// or https:// URL. Only the row groups that may
    match are read (-v logs what was read); the line printed says how many and how many
    bytes.
    """
    from stacchip_core.core.index import write_index
    from stacchip_core.core.query import query

    area = None
    if intersects:
        import geopandas as gpd

        frame = gpd.read_file(intersects)
        if frame.crs is not None and frame.crs.to_epsg() != 4326:
            frame = frame.to_crs(4326)
        area = frame.geometry.union_all()
    result = query(index_path, bbox=bbox, intersects=area, datetime_range=datetime_range,
                   platforms=platforms_ or None, max_cloud=max_cloud, max_nodata=max_nodata)
    r = result.report
    if output:
        write_index(result.table, output)
    echo(
        f"{output or index_path}: {r.rows} chips; read {r.row_groups_read} of "
        f"{r.row_groups_total} row groups, "
        f"{r.bytes_read} bytes in {r.requests} requests, {r.seconds:.3f} s"
    )


def _indices(
    index: int | None, index_range: str | None, all_jobs: bool, count, nothing: str = "no job"
) -> tuple[list[int], bool]:
    """The job numbers to run and whether to fan them out: --job (else the array-job
    environment), --jobs a:b, or --all. ("index" names the GeoParquet chip table only; the
    earlier option names --index and --index-range remain as aliases.)"""
    from stacchip_core.pipeline.runner import INDEX_ENV_VARS, job_index_from_env, parse_range

    given = sum(x is not None and x is not False for x in (index, index_range, all_jobs or None))
    if given > 1:
        raise click.UsageError("give only one of --job, --jobs and --all")
    if index_range:
        return list(parse_range(index_range)), True
    if all_jobs:
        jobs = list(range(count()))
        if not jobs:
            raise ConfigError(f"--all: nothing to run ({nothing})")
        return jobs, True
    if index is None:
        index = job_index_from_env()
    if index is None:
        raise click.UsageError(
            f"give --job, --jobs or --all (or set one of {', '.join(INDEX_ENV_VARS)})"
        )
    return [index], False


def _finish(report, store_location: str, key: str) -> None:
    """Write the run report next to the outputs, print the summary; exit 1 on failures."""
    from stacchip_core.io.store import open_store

    url = open_store(store_location).write_bytes(key, report.to_json().encode())
    s = report.summary()
    echo(f"{s.done} of {s.tasks} jobs done, {s.failed} failed in {report.seconds:.1f} s "
               f"({report.scheduler}); report: {url}")
    for task in report.failed:
        echo(f"failed: job {task.index}: {task.error or ''}", err=True)
    if report.failed:
        raise SystemExit(1)


_SCHEDULER_HELP = (
    "Where --jobs/--all jobs run: local[:N] (a dask LocalCluster), tcp://HOST:PORT, or sync."
)


@cli.command()
@click.argument("platform")
@click.option(
    "--job",
    "--index",
    "job_index",
    type=click.IntRange(min=0),
    help=(
        "Job: the sample to process "
        "[env: AWS_BATCH_JOB_ARRAY_INDEX, JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID]."
    ),
)
@click.option(
    "--jobs",
    "--index-range",
    "index_range",
    help="Jobs (samples) a:b (b excluded), fanned out over --scheduler.",
)
@click.option(
    "--all",
    "all_samples",
    is_flag=True,
    help="Every sample of the source, fanned out over --scheduler.",
)
@click.option(
    "--sample",
    "--samples",
    "sample_source",
    envvar=["STACCHIP_SAMPLE_SOURCE", "STACCHIP_MGRS_SOURCE"],
    help="Sample locations: any layer geopandas reads [env: STACCHIP_SAMPLE_SOURCE].",
)
@click.option("--bucket", required=True, envvar="STACCHIP_BUCKET",
              help="Target: a folder or s3://bucket[/prefix] [env: STACCHIP_BUCKET].")
@click.option(
    "--stac-api",
    envvar="STACCHIP_STAC_API",
    help="STAC API URL, or a folder of item JSON (embedded catalog) [env: STACCHIP_STAC_API].",
)
@click.option("--chip-size", type=click.IntRange(min=1), help="Default: the platform's.")
@click.option("--max-nodata", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--scheduler", default="local", show_default=True, help=_SCHEDULER_HELP)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Retries of a failed job.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Samples per job: job N runs samples N*B .. N*B+B-1, their items --workers at a time.",
)
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Items processed at once within a batch (--batch-size > 1).")
def process(
    platform,
    job_index,
    index_range,
    all_samples,
    sample_source,
    bucket,
    stac_api,
    chip_size,
    max_nodata,
    scheduler,
    retries,
    batch_size,
    workers,
) -> None:
    """Process samples of PLATFORM into --bucket.

    Each job selects the items of its samples from the catalog, copies them into the bucket
    as the platform's plugin normalizes them, and indexes them. Run one job (--job, or the
    array-job environment), a range (--jobs) or all of them (--all).
    """
    from functools import partial

    from stacchip_core.pipeline.process import count_samples, process_job
    from stacchip_core.pipeline.runner import batch_count, run_tasks

    indices, fan_out = _indices(
        job_index,
        index_range,
        all_samples,
        lambda: batch_count(count_samples(platform, sample_source), batch_size),
        "the sample source has no sample",
    )
    job = partial(
        process_job,
        platform=platform,
        bucket=bucket,
        sample_source=sample_source,
        stac_api=stac_api,
        chip_size=chip_size,
        max_nodata=max_nodata,
        batch_size=batch_size,
        workers=workers,
    )
    if not fan_out:
        for r in job(indices[0]):
            echo(f"{r.item_id}: {r.status}" + (f", {r.chips} chips" if r.chips is not None else ""))
        return
    report = run_tasks(
        _LoggedJob(job, _LOG_SETTINGS), indices, scheduler, retries, command=f"process {platform}"
    )
    _finish(report, bucket, f"_runs/process-{platform}-{indices[0]}-{indices[-1] + 1}.json")


@cli.command()
@click.argument("index_path", metavar="INDEX")
@click.argument("target")
@click.option(
    "--version", "version", default="v1", show_default=True, help="Folder name for this cube set."
)
@click.option(
    "--job",
    "--index",
    "job",
    type=click.IntRange(min=0),
    help="Job number [env: AWS_BATCH_JOB_ARRAY_INDEX, JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID].",
)
@click.option(
    "--jobs",
    "--index-range",
    "index_range",
    help="Jobs a:b (b excluded), fanned out over --scheduler.",
)
@click.option(
    "--all", "all_jobs", is_flag=True, help="Every job (all cubes), fanned out over --scheduler."
)
@click.option("--scheduler", default="local", show_default=True, help=_SCHEDULER_HELP)
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--cubes-per-job", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--cube-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--platform", "platforms_", multiple=True, help="Keep these platforms (repeatable).")
@click.option("--max-nodata", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--max-cloud", type=click.FloatRange(0, 1))
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), help="First date (YYYY-MM-DD).")
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), help="Last date (YYYY-MM-DD).")
@click.option("--bbox", type=float, nargs=4, help="xmin ymin xmax ymax in lon/lat.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Parallel chip reads.",
)
@MOUNTPATH
def prechip(
    index_path,
    target,
    version,
    job,
    index_range,
    all_jobs,
    scheduler,
    retries,
    cubes_per_job,
    cube_size,
    seed,
    platforms_,
    max_nodata,
    max_cloud,
    start,
    end,
    bbox,
    workers,
    mountpath,
) -> None:
    """Cut shuffled cubes of chips from INDEX into TARGET.

    TARGET is a folder or an s3:// prefix. A run writes one job's share of the cubes (--job,
    or the array-job environment), or those of many jobs with --jobs or --all.
    """
    from dataclasses import replace
    from functools import partial

    from stacchip_core.io.keys import name
    from stacchip_core.pipeline.runner import run_tasks
    from stacchip_core.training.prechip import ChipFilter, PrechipReport, count_jobs, prechip_job

    name(version, "--version")  # a folder under TARGET, never a path out of it

    chip_filter = ChipFilter(
        tuple(platforms_) or None,
        max_nodata,
        max_cloud,
        start.date() if start else None,
        end.date() if end else None,
        tuple(bbox) if bbox else None,
    )
    indices, fan_out = _indices(
        job,
        index_range,
        all_jobs,
        lambda: count_jobs(index_path, cube_size, cubes_per_job, None, seed, chip_filter),
        f"no cube of {cube_size} chips (--cube-size) among the chips the filter keeps",
    )
    task = partial(
        prechip_job,
        index=index_path,
        target=target,
        version=version,
        cubes_per_job=cubes_per_job,
        cube_size=cube_size,
        seed=seed,
        chip_filter=chip_filter,
        workers=workers,
        mountpath=mountpath,
    )
    if fan_out:
        run = run_tasks(
            _LoggedJob(task, _LOG_SETTINGS), indices, scheduler, retries, command="prechip"
        )
        # a job whose cubes had too many failed chips failed
        run = replace(run, tasks=[replace(t, status="failed", error="; ".join(t.result.failed))
                                  if isinstance(t.result, PrechipReport) and t.result.failed else t
                                  for t in run.tasks])
        _finish(run, target, f"_runs/prechip-{version}-{indices[0]}-{indices[-1] + 1}.json")
        return
    report = task(indices[0])
    echo(
        f"{report.chips} chips kept, {report.cubes_total} cubes in all; this job: "
        f"{len(report.written)} written, {len(report.skipped)} skipped, {len(report.failed)} "
        "failed, "
        f"{len(report.failed_chips)} chips replaced"
    )
    for line in report.failed:
        echo(f"failed: {line}", err=True)
    if report.failed:
        raise SystemExit(1)


@cli.command()
@click.argument("source")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write the statistics (.json or .yaml)."
)
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True)
def stats(source, output, workers) -> None:
    """Band statistics of the cubes under SOURCE.

    Per platform and band: pixel count, mean and standard deviation (nodata left out).
    """
    from stacchip_core.training.bandstats import band_stats, dump

    result = band_stats(source, workers)
    if output:
        dump(result, output)
    echo(f"{'platform':<18}{'band':<12}{'count':>14}{'mean':>14}{'std':>14}")
    for platform, bands in result.items():
        for band, s in bands.items():
            echo(f"{platform:<18}{band:<12}{s.count:>14}{s.mean:>14.4f}{s.std:>14.4f}")


@cli.command()
@click.option(
    "-o",
    "--out",
    default="stacchip-demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the synthetic archive, the bucket and the previews.",
)
def demo(out: Path) -> None:
    """Run the whole job on an embedded synthetic archive.

    Generate a small archive of every source, process it into a local bucket, merge the
    index, stack its chips and draw previews (the PNG index map needs the viz extra).
    """
    from stacchip_core.demo.run import run_demo

    result = run_demo(out)
    echo(f"archive:  {result.archive}")
    echo(f"bucket:   {result.bucket}")
    echo(f"index:    {result.index}")
    echo(f"previews: {result.previews}")
    echo("")
    header = (
        f"{'platform':<18}{'items':>6}{'chips':>7}{'cloud mean':>12}{'cloud-free':>12}"
        f"{'nodata mean':>13}{'nodata-free':>13}"
    )
    echo(header)
    echo("-" * len(header))
    for s in result.summary:
        echo(f"{s.platform:<18}{s.items:>6}{s.chips:>7}{s.cloud_mean:>12.3f}{s.cloud_free_chips:>12}"
                   f"{s.nodata_mean:>13.3f}{s.nodata_free_chips:>13}")
    t = result.throughput  # the demo's index map and throughput
    png = f", {result.map_png}" if result.map_png else ""  # without the viz extra: the page only
    echo()
    echo(f"map:      {result.map_html} (offline page){png}")
    echo(f"indexed:  {t.chips} chips of {t.items} items in {t.process_seconds:.1f} s "
               f"({t.chips_indexed_per_second:.1f} chips/s, processing included)")
    echo(
        f"read:     {t.chips_read} chips in {t.read_seconds:.2f} s ({t.chips_read_per_second:.1f} "
        "chips/s, "
        f"{t.read_requests} requests, {t.read_fallbacks} fallbacks; previews drawn in "
        f"{t.draw_seconds:.1f} s)"
    )
    if result.stacks is not None:
        st = result.stacks
        echo(
            f"stacks:   {st.series_stacks} time series ({st.series_steps} steps previewed), "
            f"{st.pair_stacks} "
            f"{' + '.join(st.pair_platforms)} stacks: {st.series_preview}, {st.pair_preview}"
        )


def _add_plugin_authoring() -> None:
    from stacchip_core.scaffold import plugin as plugin_group  # `stacchip plugin new NAME`

    cli.add_command(plugin_group)


_add_plugin_authoring()


def register_plugin_commands() -> None:
    """Add the commands of installed plugins (their ``stacchip_register_commands`` hooks)."""
    from stacchip_core.plugins import get_plugin_manager

    get_plugin_manager().hook.stacchip_register_commands(cli=cli)


def main() -> None:
    """Entry point: load plugin commands, then run. Plugin load errors are one line too."""
    try:
        register_plugin_commands()
    except StacchipError as exc:
        echo(f"Error: {error_line(exc)}", err=True)
        sys.exit(1)
    cli(prog_name="stacchip")


def env_job(platform: str, sample_vars: tuple[str, ...] = ("STACCHIP_SAMPLE_SOURCE",)) -> None:
    """Console-script entry of the original processors: configured by environment
    variables (the job index from AWS_BATCH_JOB_ARRAY_INDEX, JOB_COMPLETION_INDEX or
    SLURM_ARRAY_TASK_ID; STACCHIP_SAMPLE_SOURCE or STACCHIP_MGRS_SOURCE, STACCHIP_BUCKET,
    STACCHIP_STAC_API). Errors are one line.

    Args:
        platform: The platform to process.
        sample_vars: Environment variables naming the sample source, first set wins.
    """
    import os

    from stacchip_core.pipeline.process import process
    from stacchip_core.pipeline.runner import INDEX_ENV_VARS, job_index_from_env

    _setup_logging(1, False)  # batch logs: INFO
    try:
        index = job_index_from_env()
        if index is None:
            raise ConfigError(f"none of {', '.join(INDEX_ENV_VARS)} is set")
        if not os.environ.get("STACCHIP_BUCKET"):  # empty counts as unset
            raise ConfigError("STACCHIP_BUCKET env var not set")
        source = next((os.environ[v] for v in sample_vars if os.environ.get(v)), None)
        results = process(platform, index, os.environ["STACCHIP_BUCKET"], source)
    except (
        Exception
    ) as exc:  # one line, whatever failed (S3 403, STAC API down…); -vv not available here
        log.debug("error", exc_info=True)
        echo(f"Error: {error_line(exc)}", err=True)
        sys.exit(1)
    for r in results:
        echo(f"{r.item_id}: {r.status}" + (f", {r.chips} chips" if r.chips is not None else ""))


# --- the original's stacchip-prechip and stacchip-stats scripts ----------------------------

ORIGINAL_CUBE_VERSION = "mode_v1_chipper_v2"  # the cube folder stacchip 0.1 wrote
ORIGINAL_CUBE_BUCKET = "clay-v1-data-cubes"  # where stacchip 0.1's stacchip-stats read cubes


def _env_value(name: str, default=None, kind=str):
    import os

    value = os.environ.get(name)
    if value in (None, ""):  # empty counts as unset
        if default is None:
            raise ConfigError(f"{name} env var not set")
        return default
    try:
        return kind(value)
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r} is not a valid {kind.__name__}") from exc


def _bucket_location(value: str) -> str:
    """stacchip 0.1 took bucket names; a URL or a path is used as it is."""
    if "://" in value or value.startswith(("/", ".")):
        return value
    return f"s3://{value}"


def env_prechip() -> None:
    """``stacchip-prechip``: stacchip 0.1's cube script, configured as it was, mapped onto
    ``stacchip prechip``: AWS_BATCH_JOB_ARRAY_INDEX (or JOB_COMPLETION_INDEX,
    SLURM_ARRAY_TASK_ID) the job, STACCHIP_INDEXPATH the merged index, STACCHIP_CHIP_BUCKET
    the target (a bucket name, an s3:// URL or a folder), STACCHIP_PLATFORM (optional, one
    platform), STACCHIP_CUBES_PER_JOB (10), STACCHIP_POOL_SIZE (10 parallel reads),
    STACCHIP_MAX_NODATA (0.05). Cubes of 128 chips go to ``mode_v1_chipper_v2/{platform}/``
    as in 0.1. STACCHIP_DATA_BUCKET is not needed: index rows carry their item's href."""
    from stacchip_core.pipeline.runner import INDEX_ENV_VARS, job_index_from_env
    from stacchip_core.training.prechip import ChipFilter, prechip_job

    _setup_logging(1, False)  # batch logs: INFO
    try:
        job = job_index_from_env()
        if job is None:
            raise ConfigError(f"none of {', '.join(INDEX_ENV_VARS)} is set")
        index = _env_value("STACCHIP_INDEXPATH")
        target = _bucket_location(_env_value("STACCHIP_CHIP_BUCKET"))
        platform = _env_value("STACCHIP_PLATFORM", "")
        chip_filter = ChipFilter(
            (platform,) if platform else None, _env_value("STACCHIP_MAX_NODATA", 0.05, float)
        )
        report = prechip_job(
            job,
            index=index,
            target=target,
            version=ORIGINAL_CUBE_VERSION,
            cubes_per_job=_env_value("STACCHIP_CUBES_PER_JOB", 10, int),
            cube_size=128,
            seed=42,
            chip_filter=chip_filter,
            workers=_env_value("STACCHIP_POOL_SIZE", 10, int),
        )
    except StacchipError as exc:
        echo(f"Error: {error_line(exc)}", err=True)
        sys.exit(1)
    echo(
        f"{len(report.written)} cubes written, {len(report.skipped)} skipped, "
        f"{len(report.failed)} failed "
        f"({report.chips} chips, {report.cubes_total} cubes in all)"
    )
    for line in report.failed:
        echo(f"failed: {line}", err=True)
    if report.failed:
        sys.exit(1)


def env_stats() -> None:
    """``stacchip-stats``: stacchip 0.1's band statistics script, mapped onto ``stacchip
    stats``: STACCHIP_PLATFORM (required) picks ``{bucket}/mode_v1_chipper_v2/{platform}``,
    the bucket is STACCHIP_CHIP_BUCKET (default ``clay-v1-data-cubes``, where 0.1 read),
    STACCHIP_POOL_SIZE (4) parallel reads. Prints the mean and std per band as 0.1 did.
    STACCHIP_MAX_CUBES is not honoured: every cube is read (0.1 read the first 4 by default)."""
    import os

    from stacchip_core.training.bandstats import band_stats

    _setup_logging(1, False)
    try:
        platform = _env_value("STACCHIP_PLATFORM")
        bucket = _bucket_location(_env_value("STACCHIP_CHIP_BUCKET", ORIGINAL_CUBE_BUCKET))
        if os.environ.get("STACCHIP_MAX_CUBES"):
            log.warning(
                "STACCHIP_MAX_CUBES is ignored: the statistics are computed over every cube"
            )
        result = band_stats(f"{bucket.rstrip('/')}/{ORIGINAL_CUBE_VERSION}/{platform}",
                            _env_value("STACCHIP_POOL_SIZE", 4, int))
    except StacchipError as exc:
        echo(f"Error: {error_line(exc)}", err=True)
        sys.exit(1)
    bands = result.get(platform, {})
    echo("-- Mean by band")
    for band, s in bands.items():
        echo(f"{band}: {s.mean}")
    echo("-- Std by band")
    for band, s in bands.items():
        echo(f"{band}: {s.std}")
