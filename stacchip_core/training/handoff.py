"""Index tables (and other large state) handed to spawned workers through shared memory
instead of the spawn pipe.

A DataLoader started with ``spawn`` or ``forkserver`` pickles its dataset, index table and
all, into a pipe for each worker. The parent writes the whole pickle at once, and the child
reads it only after it has imported the main module (torch and the training script: 1.0-1.4 s
here), so a pickle larger than the pipe (64 KiB on Linux) blocks the parent until that worker
is ready: the workers start one after another. The 640-row index of the loader benchmark
pickles to 1.35 MB (its layouts), and the second of two spawned workers started 1.4 s after
the first (measured).

While a process is being spawned, ``share(value)`` pickles as a file descriptor of an
anonymous in-memory file (written once per value and reused by every worker and every epoch):
a table as an Arrow IPC stream that the worker maps without copying, anything else (the
TorchGeo dataset's GeoDataFrame) as its pickle. Every other pickle (``copy.deepcopy``, saving
a dataset, a queue) carries the value itself, as before.
"""

from __future__ import annotations

import mmap
import os
import pickle
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


def _write(value: Any) -> tuple[int, int]:
    """An anonymous file holding ``value``, a table as an Arrow IPC stream, anything else
    pickled: (descriptor, size)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("stacchip-index", os.MFD_CLOEXEC)
    else:  # macOS: a temporary file, unlinked as it is made
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    try:
        with open(fd, "wb", closefd=False) as out:
            if isinstance(value, pa.Table):
                # a stream, not a file: chunks may carry different dictionaries (replacements)
                with pa.ipc.new_stream(out, value.schema) as writer:
                    writer.write_table(value)
            else:
                pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
            size = out.tell()
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def _shared_fd(value: Any) -> tuple[int, int]:
    with _LOCK:
        hit = _SHARED.get(id(value))
        if hit is not None and hit[0]() is value:
            return hit[1], hit[2]
        fd, size = _write(value)
        key = id(value)

        def release(key: int = key, fd: int = fd) -> None:
            with _LOCK:
                if _SHARED.get(key, (None, fd))[1] == fd:
                    _SHARED.pop(key, None)
            os.close(fd)

        _SHARED[key] = (weakref.ref(value), fd, size)
        weakref.finalize(value, release)
        return fd, size


def _load(dupfd: Any, size: int, table: bool) -> Any:
    fd = dupfd.detach()
    try:
        mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    if not table:
        with mapped:
            return pickle.loads(mapped)
    # the table's buffers point into the mapping (pages shared with the parent and the other
    # workers), which lives as long as they do
    return pa.ipc.open_stream(pa.py_buffer(mapped)).read_all()


class _Shared:
    """Pickles as the value's in-memory file while spawning, as the value otherwise."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple:
        if _spawning() is None or os.name == "nt" or not _weak(self.value):
            return (_identity, (self.value,))
        from multiprocessing import reduction

        fd, size = _shared_fd(self.value)
        return (_load, (reduction.DupFd(fd), size, isinstance(self.value, pa.Table)))


def _weak(value: Any) -> bool:
    try:
        weakref.ref(value)
    except TypeError:  # a dict or a tuple: it travels in the pickle
        return False
    return True


def _identity(value: Any) -> Any:
    return value


def share(value: Any) -> Any:
    """What a dataset's ``__getstate__`` puts in place of a large attribute: unpickles to an
    equal value, from shared memory in a spawned worker (a table mapped without a copy).

    Args:
        value: A table, or any picklable value that supports weak references (it is written
            once while it lives).

    Returns:
        An object that pickles as the value (or its shared-memory handle while spawning).
    """
    return _Shared(value)
