"""Index tables handed to spawned workers through shared memory (training.handoff)."""

import gc
import multiprocessing
import os
import pickle

import numpy as np
import pyarrow as pa
import pytest

from stacchip_core.training import handoff
from stacchip_core.training.dataset import ChipDataset

LAYOUT = 200_000  # bytes of each item's layouts blob: the table is far larger than a pipe


def _table() -> pa.Table:
    """Two chunks whose dictionaries differ (an Arrow IPC *file* would refuse them), and a
    layouts column of 1.2 MB."""
    one = pa.table({
        "platform": pa.array(["s2", "s2", "naip"]).dictionary_encode(),
        "layouts": pa.array([bytes([k]) * LAYOUT for k in (1, 1, 2)]),
        "x": [1, 2, 3],
    })
    two = pa.table({
        "platform": pa.array(["landsat", "s2", "s2"]).dictionary_encode(),
        "layouts": pa.array([bytes([k]) * LAYOUT for k in (3, 4, 4)]),
        "x": [4, 5, 6],
    })
    return pa.concat_tables([one, two])


def test_outside_spawning_share_pickles_as_the_table():
    t = _table()
    blob = pickle.dumps(handoff.share(t))
    assert len(blob) > 6 * LAYOUT  # the table itself travels
    back = pickle.loads(blob)
    assert back.equals(t)
    assert back["platform"].to_pylist() == ["s2", "s2", "naip", "landsat", "s2", "s2"]
    assert id(t) not in handoff._SHARED  # no shared file made for a plain pickle


def _child(conn, ds) -> None:
    t = ds.table
    conn.send({
        "rows": t.select(["platform", "x"]).to_pylist(),
        "layouts": [(len(v), v[:1]) for v in t["layouts"].to_pylist()],
        # buffers mapped from the parent's shared file are not allocated by Arrow's pool here
        "allocated": pa.total_allocated_bytes(),
        "platforms": list(ds.platforms),
    })


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawned_worker_maps_the_table_from_shared_memory(method):
    t = _table()
    ds = ChipDataset(t)
    ctx = multiprocessing.get_context(method)
    got = []
    for _ in range(2):  # a second worker (or epoch) reuses the same shared file
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_child, args=(child, ds))
        p.start()
        assert parent.poll(60)  # a child that failed sends nothing
        got.append(parent.recv())
        p.join(60)
        assert p.exitcode == 0
    for g in got:
        assert g["rows"] == t.select(["platform", "x"]).to_pylist()
        assert g["layouts"] == [(LAYOUT, bytes([k])) for k in (1, 1, 2, 3, 4, 4)]
        assert g["platforms"] == ["s2", "s2", "naip", "landsat", "s2", "s2"]
        assert g["allocated"] < LAYOUT  # not one of the 1.2 MB of layouts copied
    fd = handoff._SHARED[id(ds.table)][1]
    made = os.fstat(fd)
    assert made.st_size > 4 * LAYOUT  # the 4 distinct layouts (ChipDataset keeps them once)
    del ds, t
    gc.collect()
    try:  # released with its table (the number may have been taken by another file since)
        assert os.fstat(fd).st_ino != made.st_ino
    except OSError:
        pass


def _echo(conn, value) -> None:
    conn.send(value)


@pytest.mark.parametrize("value", [np.arange(200_000), {"not": "weakly referable"}],
                         ids=["array", "dict"])
def test_spawned_worker_gets_other_values(value):
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(child, handoff.share(value)))
    p.start()
    assert parent.poll(60)
    got = parent.recv()
    p.join(60)
    assert type(got) is type(value)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(got, np.arange(200_000))
    else:
        assert got == {"not": "weakly referable"}
    # an array is written to a shared file (held while it lives), a dict travels in the pickle
    assert (id(value) in handoff._SHARED) == isinstance(value, np.ndarray)


def test_dataset_pickle_carries_no_platforms_or_readers():
    ds = ChipDataset(_table())
    # computed once in the parent (for the sampler) and left out of a pickle
    assert list(ds.platforms) == ["s2", "s2", "naip", "landsat", "s2", "s2"]
    state = ds.__getstate__()
    assert "platforms" not in state and state["_readers"] == {}
    back = pickle.loads(pickle.dumps(ds))
    assert back.table.equals(ds.table) and list(back.platforms) == list(ds.platforms)
