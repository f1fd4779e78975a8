"""Reading the next batch while this one is used, in a loader without worker processes.

Torch's single-process loader asks a dataset for one batch at a time and only then for the
next, so each batch waits out its round trips before its tiles decode, and nothing is in
flight while the model trains on it. A batch sampler knows the order, though: given the
dataset (``PlatformBatchSampler(ds, ...)``, or the data modules with ``num_workers=0``) it
hands each batch's successor to ``ReadAhead.hint`` just before it yields the batch, and the
dataset reads the successor in a background thread. ``bench_loaders`` (2 cores, 20 ms per
request, 640 chips, batches of 16), alternating with and without, twice: RGB 178 and 190 ->
225 and 239 chips/s, the data module's speed with 2 workers in the same runs; 10 bands 63 and
67 -> 72 and 78; the same CPU and requests per chip.

Hints are only acted on once this process has been asked for a hinted batch: in a loader
with workers the sampler runs in the parent, whose dataset reads nothing, and a batch read
there would be a batch read twice. A forked child or an unpickled copy starts with no hints.
When batches read ahead go untaken twice in a row (the same dataset, read ahead in one
process before, now feeds a loader with workers), read-ahead switches off again until a
hinted batch is asked for: at most ``depth + 1`` batches are read for nothing.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

DEPTH = 2  # batches read ahead at most (each holds its decoded chips until taken)
KEPT_HINTS = 8  # hints remembered before this process is known to consume them


class ReadAhead(Generic[T]):
    """Batches read before they are asked for, in background threads.

    Each call that may start a read is given the dataset's ``read`` (row numbers in, the
    batch out; called from a background thread, so it must be thread-safe, as the readers of
    ``core.read`` are). It is not kept: a dataset holding its ``ReadAhead`` and its bound
    ``read`` held here would be a reference cycle, and a dataset dropped by its loader would
    keep its open files and threads until the cyclic collector ran.

    Args:
        depth: The most batches read ahead at once.
    """

    def __init__(self, depth: int = DEPTH) -> None:
        self.depth = depth
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._on = False  # this process consumes the hinted batches
        self._untaken = 0  # batches read ahead and dropped since one was taken
        self._hinted: OrderedDict[tuple[int, ...], None] = OrderedDict()
        self._futures: OrderedDict[tuple[int, ...], Future[T]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None

    def _here(self) -> None:
        if os.getpid() != self._pid:  # a forked child: the parent's threads are not its own
            self._reset()

    def __getstate__(self) -> dict:
        return {"depth": self.depth}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def hint(self, indices: Sequence[int], read: Callable[[list[int]], T]) -> None:
        """``indices`` is a batch the loader will ask for soon (after the ones hinted before).

        Args:
            indices: The batch's row numbers.
            read: Reads a batch.
        """
        self._here()
        key = tuple(int(i) for i in indices)
        if self._on:
            self._start(key, read)
            return
        self._hinted[key] = None
        self._hinted.move_to_end(key)  # hinted again (a new pass): its place is the newest
        while len(self._hinted) > KEPT_HINTS:
            self._hinted.popitem(last=False)

    def batch(self, indices: Sequence[int], read: Callable[[list[int]], T]) -> T:
        """The batch of ``indices``: the one read ahead if there is one, else read now.

        Args:
            indices: The batch's row numbers.
            read: Reads a batch.

        Returns:
            What ``read`` returns for them.
        """
        ahead = self.take(indices, read)
        return ahead.result() if ahead is not None else read(list(indices))

    def take(self, indices: Sequence[int], read: Callable[[list[int]], T]) -> Future[T] | None:
        """The batch of ``indices`` if it is being read ahead, else None (read it now).

        The first batch asked for that was hinted switches read-ahead on in this process,
        and starts the batches hinted after it.

        Args:
            indices: The batch's row numbers.
            read: Reads a batch (the ones hinted after it).

        Returns:
            A future of the batch, or None.
        """
        self._here()
        key = tuple(int(i) for i in indices)
        found = self._futures.pop(key, None)
        if found is not None:
            self._untaken = 0
            return found
        if key not in self._hinted:
            return None
        self._on = True
        keys = list(self._hinted)
        self._hinted.clear()
        for later in keys[keys.index(key) + 1:]:
            self._start(later, read)
        return None

    def _start(self, key: tuple[int, ...], read: Callable[[list[int]], T]) -> None:
        if key in self._futures:
            return
        if len(self._futures) >= self.depth:  # never taken: an epoch left early, or...
            self._futures.popitem(last=False)[1].cancel()
            self._untaken += 1
        if self._untaken >= 2:  # ...nobody here takes them: wait for a hinted batch again
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
            self._on, self._untaken = False, 0
            self._hinted[key] = None
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix="stacchip-ahead")
        self._futures[key] = self._pool.submit(read, list(key))
