"""Read-ahead in a loader without workers (training.readahead): while a batch is used, the
next one is fetched; no batch is read twice; loaders with workers are left as they were."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

from stacchip_core.core.indexer import Indexer
from stacchip_core.training.chipread import ChipReader
from stacchip_core.training.dataset import ChipDataset
from stacchip_core.training.readahead import ReadAhead

S2 = "sentinel-2-l2a"


@pytest.fixture
def served(http_s2, tmp_path):
    """The synthetic S2 scene over the loopback server (one tile of red.tif per chip) and
    its index; the server's counters at zero."""
    server, url, root = http_s2
    pq.write_table(Indexer(url, platform=S2, stats=False).create_index(), root / "idx.parquet")
    rows = pq.read_table(root / "idx.parquet").to_pylist()
    server.reset()
    return server, f"{server.url}/idx.parquet", rows


def _batch_requests(server, index_url: str, batches: list[list[int]]) -> list[int]:
    """The requests each batch costs read alone (tiles next to each other in a file are
    fetched together, so a batch's count depends on which chips it holds)."""
    ds = ChipDataset(index_url, bands=["red"])
    counts = []
    for batch in batches:
        server.reset()
        ds.__getitems__(batch)
        counts.append(server.requests)
    server.reset()
    return counts


def _requests_reach(server, n: int, seconds: float) -> int:
    """The server's request count once it reaches ``n``, or after ``seconds``."""
    end = time.monotonic() + seconds
    while server.requests < n and time.monotonic() < end:
        time.sleep(0.01)
    return server.requests


@pytest.mark.parametrize("given", ["dataset", "platforms"])
def test_a_loader_without_workers_fetches_the_next_batch_while_one_is_used(
    served, torch, given
):
    from torch.utils.data import DataLoader

    from stacchip_core.training.samplers import PlatformBatchSampler

    server, index_url, rows = served
    ds = ChipDataset(index_url, bands=["red"])
    sampler = PlatformBatchSampler(ds if given == "dataset" else ds.platforms, 2, seed=4)
    batches = list(sampler)
    assert len(batches) >= 3 and (sampler.read_ahead is not None) == (given == "dataset")
    costs = _batch_requests(server, index_url, batches)
    ahead = given == "dataset"
    seen = []
    for k, batch in enumerate(DataLoader(ds, batch_sampler=sampler, num_workers=0)):
        # while batch k is held: batch k + 1 is fetched too, with read-ahead only
        upto = min(k + 1 + ahead, len(batches))
        expected = sum(costs[:upto])
        assert _requests_reach(server, expected, 10 if ahead else 0.3) == expected, k
        seen.append(batch)
    assert server.requests == sum(costs)  # no batch was read twice
    slow = ChipReader(bands=["red"], use_layouts=False)
    got = [(cid, px) for b in seen for cid, px in zip(b["chipid"], b["pixels"].numpy())]
    assert [c for c, _ in got] == [rows[i]["chipid"] for b in batches for i in b]
    for (_, px), i in zip(got, [i for b in batches for i in b]):
        np.testing.assert_array_equal(px, slow.read(rows[i]))


def test_an_epoch_left_early_then_a_full_one(served, torch):
    from torch.utils.data import DataLoader

    from stacchip_core.training.samplers import PlatformBatchSampler

    server, index_url, rows = served
    ds = ChipDataset(index_url, bands=["red"])
    sampler = PlatformBatchSampler(ds, 2, seed=4)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    left = sum(_batch_requests(server, index_url, first[:2]))
    full = sum(_batch_requests(server, index_url, second))
    for _ in loader:
        break  # batch 0 read, batch 1 already on its way
    assert _requests_reach(server, left, 10) == left
    sampler.set_epoch(1)
    got = [cid for b in loader for cid in b["chipid"]]
    assert got == [rows[i]["chipid"] for b in second for i in b]
    assert server.requests == left + full


@pytest.mark.parametrize("before", ["a sample", "an epoch without workers"])
def test_hints_in_a_loader_with_workers_read_nothing_in_the_parent(served, torch, before):
    """The sampler runs in the parent and hints its dataset there. A parent that read a
    sample first is never asked for a hinted batch and reads nothing more; one that read an
    epoch ahead itself first reads at most 3 batches for nothing, then stops."""
    from torch.utils.data import DataLoader

    from stacchip_core.training.samplers import PlatformBatchSampler

    server, index_url, rows = served
    ds = ChipDataset(index_url, bands=["red"])
    sampler = PlatformBatchSampler(ds, 2, seed=4)
    if before == "a sample":
        ds[0]
    else:
        assert len([b for b in DataLoader(ds, batch_sampler=sampler)]) == len(sampler)
        sampler.set_epoch(1)
    costs = _batch_requests(server, index_url, list(sampler))
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, multiprocessing_context="fork")
    assert sorted(cid for b in loader for cid in b["chipid"]) == sorted(
        r["chipid"] for r in rows
    )
    if before == "a sample":
        assert server.requests == sum(costs)
    else:
        assert sum(costs) <= server.requests <= sum(costs) + sum(sorted(costs)[-3:])
        assert not ds._ahead._on


def _taken(ahead: ReadAhead) -> tuple:
    return ahead.take([1, 2], _double) is None, ahead._on


def _double(indices: list[int]) -> list[int]:
    return [2 * i for i in indices]


@pytest.mark.parametrize("copy", ["pickled", "forked"])
def test_a_copy_starts_without_hints(copy):
    ahead = ReadAhead()
    ahead.hint([1, 2], _double)
    ahead.hint([3], _double)
    if copy == "pickled":
        assert _taken(pickle.loads(pickle.dumps(ahead))) == (True, False)
    else:
        context = multiprocessing.get_context("fork")  # the child inherits, nothing pickled
        answer = context.SimpleQueue()
        child = context.Process(target=lambda: answer.put(_taken(ahead)))
        child.start()
        child.join(30)
        assert answer.get() == (True, False)
    # here: asking for the hinted batch switches read-ahead on and starts the next one
    assert ahead.take([1, 2], _double) is None and ahead._on
    assert ahead.take([3], _double).result(timeout=10) == [6]


def test_hints_before_the_first_hinted_batch_are_dropped_and_depth_is_kept():
    ahead = ReadAhead(depth=2)
    for batch in ([0], [1], [2]):
        ahead.hint(batch, _double)
    assert ahead.take([1], _double) is None  # [0] never asked for; [2] started
    assert [ahead.take([2], _double).result(timeout=10)] == [[4]]
    for batch in ([3], [4], [5]):  # three hints, depth 2: the oldest is dropped
        ahead.hint(batch, _double)
    assert ahead.take([3], _double) is None
    assert [ahead.take([i], _double).result(timeout=10) for i in (4, 5)] == [[8], [10]]


def test_threads_sharing_a_reader_each_count_their_own_requests(served):
    """Two batches in flight at once through one reader (as with read-ahead): each batch's
    report holds its own requests (a tally per read, not the process's counters), and the
    total is what the server saw."""
    server, index_url, rows = served
    batches = [[0, 1, 2], [4, 5, 6, 7, 8]]
    costs = _batch_requests(server, index_url, batches)
    server.delay = 0.1  # both batches wait on the server together
    reader = ChipReader(bands=["red"])
    together = threading.Barrier(2)

    def read(batch: list[int]) -> int:
        together.wait()
        reader.read_many([rows[i] for i in batch])
        return reader.last_report.requests

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(read, batches)) == costs
    assert reader.report.requests == server.requests == sum(costs)


class _Counting:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, indices: list[int]) -> list[int]:
        with self.lock:
            self.calls.append(indices)
        return indices


def test_batches_left_untaken_switch_read_ahead_off():
    """Read ahead in this process, then hinted by a sampler whose batches go elsewhere (a
    loader with workers over the same dataset): at most depth + 1 batches are read for
    nothing, then hints wait for a hinted batch to be asked for again."""
    read = _Counting()
    ahead = ReadAhead(depth=2)
    ahead.hint([0], read)
    ahead.hint([1], read)
    assert ahead.take([0], read) is None and ahead.take([1], read).result(timeout=10) == [1]
    for k in range(2, 12):  # never taken here
        ahead.hint([k], read)
    assert not ahead._on
    # 2, 3 and 4 started; 4 may be cancelled before a thread picks it up
    assert sorted(c[0] for c in read.calls) in ([1, 2, 3], [1, 2, 3, 4])
    # asked for a hinted batch again: on again, from the batches hinted after it
    assert ahead.take([10], read) is None and ahead._on
    assert ahead.take([11], read).result(timeout=10) == [11]


def test_a_dataset_read_ahead_is_freed_with_its_last_reference(served, torch):
    """No reference cycle through the read-ahead: a dataset dropped after an epoch read ahead
    is freed at once (its open files and readers with it), not when the cyclic collector
    next runs."""
    from torch.utils.data import DataLoader

    from stacchip_core.training.samplers import PlatformBatchSampler

    _, index_url, _ = served
    ds = ChipDataset(index_url, bands=["red"])
    sampler = PlatformBatchSampler(ds, 2, seed=4)
    assert len([b for b in DataLoader(ds, batch_sampler=sampler)]) == len(sampler)
    assert ds._ahead._on
    gone = weakref.ref(ds)
    gc.disable()
    try:
        del ds, sampler
        assert gone() is None
    finally:
        gc.enable()
