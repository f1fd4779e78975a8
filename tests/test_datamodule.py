"""StacchipDataModule: filters, spatially disjoint splits, platform batches, oversampling,
and sharding over DDP ranks and data-loader workers (a real 2-process DDP run on CPU)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stacchip_core import Indexer
from stacchip_core.training.prechip import ChipFilter

BLOCK = 0.01  # degrees: the synthetic scenes span a few blocks of this size


@pytest.fixture(scope="module")
def index_path(synthetic_scenes, tmp_path_factory):
    """S2 (two items, 18 chips), NAIP (4) and Landsat (4)."""
    tables = [
        Indexer(str(synthetic_scenes[k]), chip_max_nodata=1.0).create_index()
        for k in ("s2", "s2pc", "naip", "landsat")
    ]
    path = tmp_path_factory.mktemp("dm") / "merged.parquet"
    pq.write_table(pa.concat_tables(tables), path)
    return path


def make(index_path, **kwargs):
    from stacchip_core.training.datamodule import StacchipDataModule

    kwargs = {
        "split_block_deg": BLOCK,
        "val_fraction": 0.3,
        "test_fraction": 0.3,
        "bands": ["red", "green", "blue"],
        **kwargs,
    }
    return StacchipDataModule(
        index_path if isinstance(index_path, pa.Table) else str(index_path), **kwargs
    )


def blocks(table):
    b = table["bbox"]
    lon = (pc.struct_field(b, "xmin").to_numpy() + pc.struct_field(b, "xmax").to_numpy()) / 2
    lat = (pc.struct_field(b, "ymin").to_numpy() + pc.struct_field(b, "ymax").to_numpy()) / 2
    return list(zip(np.floor(lon / BLOCK).astype(int), np.floor(lat / BLOCK).astype(int)))


def test_splits_are_spatially_disjoint_reproducible_and_stored(lightning, index_path, tmp_path):
    dm = make(index_path, chip_filter=ChipFilter(max_nodata=1.0))
    split = dm.table["split"].to_pylist()
    by_block = {}
    for block, s in zip(blocks(dm.table), split):
        by_block.setdefault(block, set()).add(s)
    assert all(len(v) == 1 for v in by_block.values())  # a block is in one split only
    assert set(split) == {"train", "val", "test"} and len(split) == 26
    again = make(index_path, chip_filter=ChipFilter(max_nodata=1.0))
    assert again.table["split"].to_pylist() == split  # same seed, same split
    other = make(index_path, chip_filter=ChipFilter(max_nodata=1.0), split_seed=5)
    assert other.table["split"].to_pylist() != split
    # stored: an index with a split column keeps it, edits included
    dm.write_splits(tmp_path / "with_split.parquet")
    edited = pq.read_table(tmp_path / "with_split.parquet")
    edited = edited.set_column(
        edited.schema.get_field_index("split"), "split", pa.array(["test"] * 26)
    )
    assert set(make(edited).table["split"].to_pylist()) == {"test"}


@pytest.mark.parametrize(
    ("split", "rows", "same"), [("train", 26, True), ("val", 0, False), ("test", 0, False)]
)
def test_a_split_holding_every_row_is_the_table_itself(lightning, index_path, split, rows, same):
    """With no val or test share every row is in train: its dataset uses the module's table,
    not a second copy of it (the layouts of a large index are hundreds of MB)."""
    dm = make(index_path, chip_filter=ChipFilter(max_nodata=1.0), val_fraction=0.0,
              test_fraction=0.0)
    part = dm.split_table(split)
    assert len(part) == rows
    assert (part is dm.table) is same


def test_a_row_without_a_split_is_in_no_split(lightning, index_path):
    """A stored split column with a null: that row is in no split, even when every other
    row is in one (the shortcut that returns the whole table must not take it)."""
    table = make(index_path, chip_filter=ChipFilter(max_nodata=1.0)).table
    split = pa.array(["train"] * (len(table) - 1) + [None], pa.string())
    edited = table.set_column(table.schema.get_field_index("split"), "split", split)
    dm = make(edited)
    assert len(dm.split_table("train")) == len(table) - 1
    assert dm.split_table("train") is not dm.table


def test_filters_apply_before_splitting(lightning, index_path):
    dm = make(
        index_path, chip_filter=ChipFilter(max_nodata=1.0, platforms=("naip", "landsat-c2l2-sr"))
    )
    assert sorted(Counter(dm.table["platform"].to_pylist()).items()) == [
        ("landsat-c2l2-sr", 4),
        ("naip", 4),
    ]
    full = pq.read_table(index_path)
    cloudy = ChipFilter(max_nodata=1.0, max_cloud=0.2)
    assert len(make(index_path, chip_filter=cloudy).table) == int(
        pc.sum(pc.less_equal(full["cloud_cover_percentage"], 0.2)).as_py()
    )


class RecordingDataset:
    """A ChipDataset that appends "pid n-indices" to a file for every ``__getitems__`` call
    (data-loader workers are other processes: a file is what they share with the test)."""

    log: Path | None = None

    @classmethod
    def make(cls, log: Path):
        from stacchip_core.training.dataset import ChipDataset

        class Recording(ChipDataset):
            def __getitems__(self, indices):
                with open(log, "a") as fh:
                    fh.write(f"{os.getpid()} {len(indices)}\n")
                return super().__getitems__(indices)

            def __getitem__(self, i):
                raise AssertionError("the loader read one chip at a time")

        return Recording


def calls(log: Path) -> list[tuple[int, int]]:
    return (
        [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
        if log.exists()
        else []
    )


@pytest.mark.parametrize("world,workers,batch", [(1, 0, 4), (2, 2, 4), (3, 2, 2)])
def test_every_chip_once_per_epoch_over_ranks_and_persistent_workers(
    lightning, index_path, tmp_path, world, workers, batch
):
    from torch.utils.data import DataLoader

    from stacchip_core.training.datamodule import ShardedBatchSampler, collate_chips

    dm = make(
        index_path,
        chip_filter=ChipFilter(max_nodata=1.0),
        split_block_deg=100,
        val_fraction=0.0,
        test_fraction=0.0,
    )  # one block: all train
    train = dm.split_table("train")
    assert len(train) == 26
    log = tmp_path / "calls.txt"
    loaders = []
    for rank in range(world):
        ds = RecordingDataset.make(log)(train, bands=["red", "green", "blue"])
        sampler = ShardedBatchSampler(
            None, batch, platforms=ds.platforms, rank=rank, world_size=world, seed=3
        )
        kw = {"persistent_workers": True} if workers else {}
        loaders.append(
            DataLoader(
                ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate_chips, **kw
            )
        )
    orders, pids = [], []
    for epoch in (0, 1):  # no trainer, no set_epoch: the sampler counts passes
        seen, steps = [], []
        before = len(calls(log))
        for loader in loaders:
            batches = list(loader)
            steps.append(len(batches))
            for b in batches:
                assert isinstance(b["platform"], str)  # one platform per batch
                assert tuple(b["pixels"].shape[1:]) == (3, 256, 256) and len(b["chipid"]) <= batch
                seen += b["chipid"]
        assert len(set(steps)) == 1  # DDP needs equal step counts on every rank
        assert sorted(seen) == sorted(train["chipid"].to_pylist())  # each chip exactly once
        new = calls(log)[before:]
        assert (
            [n for _, n in new] and sum(n for _, n in new) == 26 and len(new) == sum(steps)
        )  # one call per batch
        pids.append({p for p, _ in new})
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled
    if workers:
        assert os.getpid() not in pids[0] and len(pids[0]) == world * workers
        assert pids[1] == pids[0]  # the same worker processes read the second epoch
    else:
        assert pids == [{os.getpid()}, {os.getpid()}]


def test_module_loader_reads_batches_in_persistent_workers(lightning, index_path, tmp_path):
    from stacchip_core.training.datamodule import StacchipDataModule

    log = tmp_path / "calls.txt"

    class Recording(StacchipDataModule):
        dataset_class = RecordingDataset.make(log)

    dm = Recording(
        str(index_path),
        chip_filter=ChipFilter(max_nodata=1.0),
        split_block_deg=100,
        val_fraction=0.0,
        test_fraction=0.0,
        bands=["red", "green", "blue"],
        batch_size=5,
        num_workers=2,
        seed=4,
    )
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.prefetch_factor == 2 and loader.num_workers == 2
    epochs = [[c for b in loader for c in b["chipid"]] for _ in range(3)]
    for seen in epochs:
        assert sorted(seen) == sorted(dm.table["chipid"].to_pylist())
    assert epochs[0] != epochs[1] != epochs[2]
    # 18 S2 chips in batches of 5 (5, 5, 5, 3), NAIP 4, Landsat 4: six batches a pass
    got = calls(log)
    assert sorted(n for _, n in got) == sorted([5, 5, 5, 3, 4, 4] * 3)
    assert len({p for p, _ in got}) == 2 and os.getpid() not in {p for p, _ in got}
    # an explicit epoch gives that epoch's order again
    loader.batch_sampler.set_epoch(1)
    assert [c for b in loader for c in b["chipid"]] == epochs[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_module_without_workers_reads_the_next_batch_ahead(lightning, index_path, workers):
    """``num_workers=0``: the sampler hints the loader's own dataset, which reads each next
    batch in the background (training.readahead); with workers it hints nothing."""
    dm = make(index_path, chip_filter=ChipFilter(max_nodata=1.0), split_block_deg=100,
              val_fraction=0.0, test_fraction=0.0, batch_size=5, num_workers=workers)
    loader = dm.train_dataloader()
    hint = loader.batch_sampler.read_ahead
    assert (hint.__self__ is loader.dataset) if workers == 0 else hint is None
    seen = [c for b in loader for c in b["chipid"]]
    assert sorted(seen) == sorted(dm.table["chipid"].to_pylist())
    assert loader.dataset._ahead._on is (workers == 0)


def test_module_batches_follow_platform_batch_sampler(lightning, index_path):
    from stacchip_core.training.datamodule import epoch_batches
    from stacchip_core.training.dataset import PlatformBatchSampler

    dm = make(
        index_path,
        chip_filter=ChipFilter(max_nodata=1.0),
        split_block_deg=100,
        val_fraction=0.0,
        test_fraction=0.0,
    )
    platforms = np.asarray(dm.split_table("train")["platform"].to_pylist(), dtype=object)
    for epoch in (0, 1, 2):
        sampler = PlatformBatchSampler(platforms.tolist(), 4, seed=7)
        sampler.set_epoch(epoch)
        assert [b.tolist() for b in epoch_batches(platforms, 4, epoch, 7, True, False, 1)] == list(
            sampler
        )
    # 5 S2 batches (4, 4, 4, 4, 2), one NAIP, one Landsat: 7 batches; 2 ranks get 4 each, the
    # first 4-chip batch in the epoch's order split in two, no chip repeated
    two = epoch_batches(platforms, 4, 0, 7, True, False, 2)
    assert len(two) == 8 and sorted(np.concatenate(two).tolist()) == list(range(26))
    assert sorted(len(b) for b in two) == [2, 2, 2, 4, 4, 4, 4, 4]


@pytest.mark.parametrize(
    "cpus,ranks,expected",
    [(2, 1, 2), (4, 1, 2), (8, 1, 4), (32, 1, 8), (32, 4, 4), (32, 8, 2), (64, 1, 8)],
)
def test_default_workers(lightning, cpus, ranks, expected):
    from stacchip_core.training.datamodule import default_workers

    assert default_workers(ranks, cpus) == expected


def test_oversampling_balances_platforms_in_training_only(lightning, index_path):
    from stacchip_core.training.datamodule import epoch_batches

    dm = make(
        index_path,
        chip_filter=ChipFilter(max_nodata=1.0),
        split_block_deg=100,
        val_fraction=0.0,
        test_fraction=0.0,
    )
    platforms = np.asarray(dm.split_table("train")["platform"].to_pylist(), dtype=object)
    rows = np.concatenate(epoch_batches(platforms, 4, 0, 0, True, True, 1))
    counts = Counter(platforms[rows].tolist())
    assert counts == {"sentinel-2-l2a": 18, "naip": 18, "landsat-c2l2-sr": 18}
    # every small-platform chip appears 4 or 5 times (4 whole passes + 2 of a fifth)
    per_chip = Counter(rows.tolist())
    assert sorted({per_chip[i] for i in np.flatnonzero(platforms == "naip")}) == [4, 5]
    assert sum(per_chip[i] for i in np.flatnonzero(platforms == "naip")) == 18
    val = make(index_path, chip_filter=ChipFilter(max_nodata=1.0), oversample=True)
    assert val.val_dataloader().batch_sampler.oversample is False
    assert val.train_dataloader().batch_sampler.oversample is True


DDP_SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[3])
from provision import import_torch_stack
import_torch_stack()
import lightning, os, torch
from stacchip_core.training.datamodule import StacchipDataModule
from stacchip_core.training.prechip import ChipFilter


class Where:
    """Which process read each chip (a transform runs where the chip is read)."""
    def __call__(self, sample):
        with open(f"{sys.argv[2]}/reads-{os.getpid()}.txt", "a") as fh:
            fh.write(sample["chipid"] + "\n")
        return sample


class Probe(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen = []

    def training_step(self, batch, i):
        self.seen.append([self.current_epoch, batch["chipid"]])
        return self.layer(batch["pixels"].mean(dim=(2, 3)) / 1000).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self):
        with open(f"{sys.argv[2]}/rank{self.global_rank}.json", "w") as fh:
            json.dump({"world": self.trainer.world_size, "seen": self.seen, "pid": os.getpid()}, fh)


dm = StacchipDataModule(sys.argv[1], bands=["red", "green", "blue"],
                        chip_filter=ChipFilter(max_nodata=1.0), split_block_deg=100,
                        val_fraction=0.0, test_fraction=0.0, batch_size=4, num_workers=2,
                        seed=1, transform=Where())
trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0)
trainer.fit(Probe(), datamodule=dm)
assert dm.train_dataloader().persistent_workers
'''


@pytest.mark.slow  # over 5 s on two shared cores (two ranks, each with workers)
def test_ddp_two_processes_see_every_chip_once_per_epoch(lightning, index_path, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PL_DISABLE_FORK": "1"}
    r = subprocess.run(
        [sys.executable, str(script), str(index_path), str(out), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    expected = sorted(pq.read_table(index_path)["chipid"].to_pylist())
    orders = []
    for epoch in (0, 1):
        per_rank = [[c for e, batch in r["seen"] if e == epoch for c in batch] for r in ranks]
        assert per_rank[0] and per_rank[1]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == expected  # every chip, exactly once
        assert len([b for e, b in ranks[0]["seen"] if e == epoch]) == len(
            [b for e, b in ranks[1]["seen"] if e == epoch]
        )
        orders.append(per_rank)
    assert orders[0] != orders[1]  # the trainer's epoch reached the sampler: a new order
    # persistent workers: two per rank read both epochs (each chip twice), none of them a rank
    reads = {int(p.stem.split("-")[1]): p.read_text().split() for p in out.glob("reads-*.txt")}
    assert len(reads) == 4 and not set(reads) & {r["pid"] for r in ranks}
    assert sorted(c for chips in reads.values() for c in chips) == sorted(expected * 2)
