"""Batches out of ChipDataset's samples: in the main process, a batch the reader wrote as one
array becomes the batch's tensor without a copy; anything else (a transform's new arrays, rows
reordered or left out, a worker process) is stacked in one copy, with the same values."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from stacchip_core import Indexer
from stacchip_core.core.read import _float_stacks
from stacchip_core.demo.synthetic import band_pattern
from stacchip_core.training.dataset import ChipDataset

BANDS = ["red", "green", "blue"]
NUMBER = {"blue": 0, "green": 1, "red": 2}  # the synthetic Sentinel-2 item's band numbers
ORDER = [4, 0, 7, 2]


@pytest.fixture(scope="module")
def s2(synthetic_scenes, tmp_path_factory):
    """The synthetic Sentinel-2 item (768 px at 10 m): 9 chips of 256 px."""
    path = tmp_path_factory.mktemp("collate") / "s2.parquet"
    pq.write_table(Indexer(str(synthetic_scenes["s2"]), chip_max_nodata=1.0).create_index(), path)
    return str(path)


def expected(ds: ChipDataset, indices: list[int], scale: float = 1.0) -> np.ndarray:
    """The chips' pixels as the synthetic scene was written."""
    chips = []
    for i in indices:
        row = ds.table.slice(i, 1).to_pylist()[0]
        y, x = row["chip_index_y"] * 256, row["chip_index_x"] * 256
        chips.append([band_pattern(NUMBER[b], 768, 768)[y : y + 256, x : x + 256] for b in BANDS])
    return np.asarray(chips, np.float32) * np.float32(scale)


def test_a_batch_read_as_one_array_is_taken_without_a_copy(torch, s2):
    from stacchip_core.training.collate import batch_of, collate_chips

    ds = ChipDataset(s2, bands=BANDS)
    samples = ds.__getitems__(ORDER)
    base = batch_of([s["pixels"] for s in samples])
    assert base is not None and base.shape == (4, 3, 256, 256)
    batch = collate_chips(samples)
    assert batch["pixels"].data_ptr() == samples[0]["pixels"].ctypes.data == base.ctypes.data
    np.testing.assert_array_equal(batch["pixels"].numpy(), expected(ds, ORDER))
    assert batch["chipid"] == [ds.table["chipid"][i].as_py() for i in ORDER]


@pytest.mark.parametrize("change", ["transform", "reordered", "part"])
def test_any_other_batch_is_stacked_in_a_copy(torch, s2, change):
    from stacchip_core.training.collate import batch_of, collate_chips

    double = {"transform": lambda s: {**s, "pixels": s["pixels"] * 2}}.get(change)
    ds = ChipDataset(s2, bands=BANDS, transform=double)
    samples = ds.__getitems__(ORDER)
    order = ORDER
    if change == "reordered":
        samples, order = samples[::-1], ORDER[::-1]
    elif change == "part":
        samples, order = samples[1:3], ORDER[1:3]
    assert batch_of([s["pixels"] for s in samples]) is None
    batch = collate_chips(samples)
    assert not any(np.shares_memory(batch["pixels"].numpy(), s["pixels"]) for s in samples)
    np.testing.assert_array_equal(
        batch["pixels"].numpy(), expected(ds, order, 2.0 if double else 1.0)
    )


def test_rows_of_a_reversed_view_are_not_a_batch():
    from stacchip_core.training.collate import batch_of

    base = np.arange(24, dtype=np.float32).reshape(4, 2, 3).copy()  # owns its memory
    assert batch_of(list(base)) is base
    assert batch_of(list(base[::-1])) is None  # same owner and length, other order
    assert batch_of([]) is None
    assert batch_of([np.zeros((2, 3), np.float32)] * 4) is None  # arrays of their own


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_with_the_collate_gives_the_chips(torch, s2, workers):
    from stacchip_core.training.collate import collate_chips

    ds = ChipDataset(s2, bands=BANDS)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=[ORDER, [1, 3]], num_workers=workers, collate_fn=collate_chips
    )
    got = [b["pixels"].numpy() for b in loader]
    np.testing.assert_array_equal(got[0], expected(ds, ORDER))
    np.testing.assert_array_equal(got[1], expected(ds, [1, 3]))


def test_chips_of_other_sizes_are_arrays_of_their_own():
    a = np.arange(4, dtype=np.uint16).reshape(2, 2)
    b = np.arange(9, dtype=np.int16).reshape(3, 3)
    small, large = _float_stacks([[a, a + 1], [b]])
    assert small.dtype == large.dtype == np.float32
    np.testing.assert_array_equal(small, np.stack([a, a + 1]).astype(np.float32))
    np.testing.assert_array_equal(large, b[None].astype(np.float32))
    one, two = _float_stacks([[a], [a + 5]])
    assert one.base is two.base and one.base.shape == (2, 1, 2, 2)
