"""Running many jobs: the array-job index from the environment, index ranges, and fanning
jobs out over a dask.distributed cluster (an existing engine; stacchip has no scheduler).

One failing job never aborts the others: results, failures (with reasons) and retries are
collected into a run report.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from tqdm import tqdm

from stacchip_core.errors import ConfigError
from stacchip_core.io.urls import redact_text
from stacchip_core.types import Report

log = logging.getLogger(__name__)

# checked in this order: AWS Batch array jobs, Kubernetes indexed jobs, Slurm job arrays
INDEX_ENV_VARS = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")


def job_index_from_env() -> int | None:
    """The array-job index of this process, from the first of ``INDEX_ENV_VARS`` that is set.

    Returns:
        The index, or None when none of them is set (an empty value counts as unset).

    Raises:
        ConfigError: The variable's value is not an integer.
    """
    for var in INDEX_ENV_VARS:
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as exc:
                raise ConfigError(f"{var}={value!r} is not a job index") from exc
    return None


def parse_range(text: str) -> range:
    """``a:b`` -> indices a .. b-1.

    Args:
        text: The range, ``a:b`` with 0 <= a < b.

    Returns:
        The indices.

    Raises:
        ConfigError: Not of the form ``a:b``, or empty or negative.
    """
    try:
        a, b = (int(part) for part in text.split(":"))
    except ValueError as exc:
        raise ConfigError(f"index range {text!r} is not of the form a:b") from exc
    if not 0 <= a < b:
        raise ConfigError(f"index range {text!r} is empty or negative")
    return range(a, b)


def batch_range(job: int, batch_size: int, total: int | None = None) -> range:
    """The samples of job ``job`` when each job runs ``batch_size`` of them: ``job*B`` to
    ``job*B + B`` (B = batch_size), cut at ``total`` samples.

    Args:
        job: The job's number.
        batch_size: Samples per job.
        total: How many samples there are, if known.

    Returns:
        The job's sample indices.

    Raises:
        ConfigError: a batch size below 1, or a job past the last sample.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    start = job * batch_size
    stop = start + batch_size if total is None else min(start + batch_size, total)
    if job < 0 or stop <= start:
        raise ConfigError(
            f"job {job} is past the last sample ({total} samples in batches of {batch_size})"
        )
    return range(start, stop)


def batch_count(samples: int, batch_size: int) -> int:
    """How many jobs ``samples`` samples make in batches of ``batch_size``.

    Args:
        samples: How many samples there are.
        batch_size: Samples per job (below 1 counts as 1).

    Returns:
        The number of jobs, the last one possibly short.
    """
    return -(-samples // max(1, batch_size))


@dataclass(frozen=True)
class TaskResult(Report):
    """One job of a run: ``done`` with the job's ``result``, or ``failed`` with a one-line,
    redacted ``error``; ``seconds`` it took (done jobs)."""

    index: int
    status: str  # "done" or "failed"
    result: object = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class RunSummary(Report):
    """How many jobs a run had, and how many of them were done and failed."""

    tasks: int
    done: int
    failed: int


@dataclass(frozen=True)
class RunReport(Report):
    """A run of many jobs: the ``command``, where it ran (``scheduler``), when it
    ``started`` (ISO 8601, UTC), how long it took and each job's result, by index."""

    command: str
    scheduler: str
    started: str
    seconds: float = 0.0
    tasks: list[TaskResult] = field(default_factory=list)

    @property
    def failed(self) -> list[TaskResult]:
        """The jobs that failed, by index."""
        return [t for t in self.tasks if t.status == "failed"]

    def summary(self) -> RunSummary:
        """How many jobs were done and failed.

        Returns:
            The counts.
        """
        failed = len(self.failed)
        return RunSummary(len(self.tasks), len(self.tasks) - failed, failed)

    def to_dict(self) -> dict:
        """The report as plain data, with its summary.

        Returns:
            The report's fields and ``summary``.
        """
        return {**asdict(self), "summary": asdict(self.summary())}

    def to_json(self) -> str:
        """The report as the JSON file the CLI writes next to a run's outputs.

        Returns:
            ``to_dict()`` as indented JSON (values JSON has no type for as strings).
        """
        return json.dumps(self.to_dict(), indent=1, default=str)


def _timed(fn: Callable, index: int):
    start = time.perf_counter()
    return fn(index), time.perf_counter() - start


def local_workers(scheduler: str) -> int | None:
    """The worker processes of a ``local`` or ``local:N`` scheduler, None for ``sync`` and
    ``tcp://HOST:PORT``.

    Args:
        scheduler: The scheduler setting.

    Returns:
        N (``local``: one per core), or None.

    Raises:
        ConfigError: If the setting is none of those (``localhost:8786``, ``local:abc``,
            ``local:0``...).
    """
    if scheduler in ("sync",) or (scheduler.startswith("tcp://") and len(scheduler) > 6):
        return None
    if scheduler == "local":
        return os.cpu_count() or 1
    name, _, n = scheduler.partition(":")
    if name == "local" and n.isdigit() and int(n) > 0:
        return int(n)
    raise ConfigError(
        f"unknown scheduler {scheduler!r}: use sync, local, local:N (N > 0) or tcp://HOST:PORT"
    )


def run_tasks(fn: Callable[[int], object], indices: Iterable[int], scheduler: str = "local",
              retries: int = 2, command: str = "") -> RunReport:
    """Run ``fn(index)`` for every index and collect a report.

    ``scheduler``: ``sync`` (in this process, one after the other), ``local`` or
    ``local:N`` (a dask LocalCluster of N worker processes, default one per core, on
    127.0.0.1), or ``tcp://HOST:PORT`` (an existing dask scheduler). ``fn`` must be
    picklable (a module-level function or a functools.partial of one). Failed tasks are
    retried ``retries`` times by dask before they count as failed.

    Args:
        fn: The job, called with its index; its return value is the task's ``result``.
        indices: The job indices to run.
        scheduler: Where to run them (see above).
        retries: Retries of a failed job (dask schedulers; ``sync`` runs each job once).
        command: What the run is, for the report, the progress bar and the dask task keys.

    Returns:
        The run's report: every job, done or failed, in index order.

    Raises:
        ConfigError: An unknown scheduler.
    """
    indices = list(indices)
    started = datetime.now(UTC).isoformat()
    tasks: list[TaskResult] = []
    start = time.perf_counter()
    local = local_workers(scheduler)  # a bad value: ConfigError before anything runs
    bar = tqdm(total=len(indices), desc=command or "jobs", unit="job", disable=None)
    if scheduler == "sync":
        for index in indices:
            tasks.append(_run_one(fn, index))
            bar.update()
            _log_task(tasks[-1])
    else:
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None
        address: LocalCluster | str
        if local is not None:
            cluster = LocalCluster(n_workers=local, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
            address = cluster
        else:
            address = scheduler
        try:
            with Client(address) as client:
                futures = {
                    client.submit(
                        _timed,
                        fn,
                        i,
                        retries=retries,
                        pure=False,
                        key=f"{command}-{i}-{time.time_ns()}",
                    ): i
                    for i in indices
                }
                for future in as_completed(futures):
                    index = futures[future]
                    if future.status == "error":
                        exc = future.exception()
                        task = TaskResult(index, "failed", error=_error(exc))
                    else:
                        value, seconds = future.result()
                        task = TaskResult(index, "done", value, seconds=round(seconds, 3))
                    tasks.append(task)
                    bar.update()
                    _log_task(task)
        finally:
            if cluster is not None:
                cluster.close()
    bar.close()
    tasks.sort(key=lambda t: t.index)
    return RunReport(command, scheduler, started, round(time.perf_counter() - start, 3), tasks)


def _run_one(fn, index) -> TaskResult:
    try:
        value, seconds = _timed(fn, index)
        return TaskResult(index, "done", value, seconds=round(seconds, 3))
    except Exception as exc:  # noqa: BLE001 - one failing job never aborts the others
        log.debug("job %d failed:\n%s", index, traceback.format_exc())
        return TaskResult(index, "failed", error=_error(exc))


def _error(exc: BaseException) -> str:
    # reports are shared files: no credentials, one line per error
    return redact_text(f"{type(exc).__name__}: {str(exc).strip()}")


def _log_task(task: TaskResult) -> None:
    if task.status == "failed":
        log.warning("job %d failed: %s", task.index, task.error)
    else:
        log.info("job %d done in %.1f s", task.index, task.seconds)
