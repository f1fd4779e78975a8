"""Index tables handed to spawned workers through shared memory instead of the spawn pipe.

A DataLoader started with ``spawn`` or ``forkserver`` pickles its dataset, index table and
all, into a pipe for each worker. The parent writes the whole pickle at once, and the child
reads it only after it has imported the main module (torch and the training script: 1.0-1.4 s
here), so a pickle larger than the pipe (64 KiB on Linux) blocks the parent until that worker
is ready: the workers start one after another. The 640-row index of the loader benchmark
pickles to 1.35 MB (its layouts), and the second of two spawned workers started 1.4 s after
the first (measured).

While a process is being spawned, ``share(table)`` pickles as a file descriptor of an
anonymous in-memory file holding the table as an Arrow IPC stream (written once per table and
reused by every worker and every epoch), and the worker maps it without copying. Every other
pickle (``copy.deepcopy``, saving a dataset, a queue) carries the table itself, as before.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import weakref
from typing import Any

import pyarrow as pa

# one in-memory file per table, kept while the table lives: workers of later epochs reuse it
_SHARED: dict[int, tuple[weakref.ref, int, int]] = {}
_LOCK = threading.Lock()


def _spawning() -> Any:
    # multiprocessing sets this while it pickles a process object for spawn or forkserver: the
    # only time a file descriptor can travel inside a pickle (reduction.DupFd)
    from multiprocessing import context

    return context.get_spawning_popen()


def _write(table: pa.Table) -> tuple[int, int]:
    """An anonymous file holding ``table`` as an Arrow IPC stream: (descriptor, size)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("stacchip-index", os.MFD_CLOEXEC)
    else:  # macOS: a temporary file, unlinked as it is made
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    try:
        with open(fd, "wb", closefd=False) as out:
            # a stream, not a file: chunks may carry different dictionaries (replacements)
            with pa.ipc.new_stream(out, table.schema) as writer:
                writer.write_table(table)
            size = out.tell()
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def _shared_fd(table: pa.Table) -> tuple[int, int]:
    with _LOCK:
        hit = _SHARED.get(id(table))
        if hit is not None and hit[0]() is table:
            return hit[1], hit[2]
        fd, size = _write(table)
        key = id(table)

        def release(key: int = key, fd: int = fd) -> None:
            with _LOCK:
                if _SHARED.get(key, (None, fd))[1] == fd:
                    _SHARED.pop(key, None)
            os.close(fd)

        _SHARED[key] = (weakref.ref(table), fd, size)
        weakref.finalize(table, release)
        return fd, size


def _load(dupfd: Any, size: int) -> pa.Table:
    fd = dupfd.detach()
    try:
        mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    # the table's buffers point into the mapping (pages shared with the parent and the other
    # workers), which lives as long as they do
    return pa.ipc.open_stream(pa.py_buffer(mapped)).read_all()


class _Shared:
    """Pickles as the table's in-memory file while spawning, as the table otherwise."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __reduce__(self) -> tuple:
        if _spawning() is None or os.name == "nt":
            return (_identity, (self.table,))
        from multiprocessing import reduction

        fd, size = _shared_fd(self.table)
        return (_load, (reduction.DupFd(fd), size))


def _identity(table: pa.Table) -> pa.Table:
    return table


def share(table: pa.Table) -> Any:
    """What a dataset's ``__getstate__`` puts in place of ``table``: unpickles to an equal
    table, mapped from shared memory in a spawned worker.

    Args:
        table: The table a dataset holds.

    Returns:
        An object that pickles as the table (or its shared-memory handle while spawning).
    """
    return _Shared(table)
