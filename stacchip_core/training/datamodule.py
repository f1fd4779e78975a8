"""A Lightning ``LightningDataModule`` over one or more stacchip indexes (needs the
``lightning`` extra; nothing imports this module unless you do).

- **Filters**: a ``ChipFilter`` (cloud, nodata, platform, date, bbox) on the merged rows.
- **Spatially disjoint splits**: every chip's centre falls in a block of a lon/lat grid
  (``split_block_deg``); each block goes to train, val or test by a seeded hash of its
  (column, row), so neighbouring chips share a split and a split never borders itself across
  sets. The result is the ``split`` column of ``datamodule.table`` (``write_splits`` saves it);
  an index that already has a ``split`` column keeps it, so a split is reproducible, visible
  and editable.
- **Batches of one platform** (sources differ in band count), shuffled per epoch from
  ``seed + epoch``; ``oversample=True`` repeats the chips of small platforms in training until
  every platform has as many chips as the largest (the original's recipe).
- **Sharding**: the epoch's batches are dealt round-robin to DDP ranks, then to the data-loader
  workers of each rank, so every chip is read once per epoch (``oversample`` aside) and never
  twice. Ranks get equally many batches (DDP needs equal step counts): when the batches do not
  divide evenly, the largest batches are split in two until they do, instead of padding with
  repeated chips as ``DistributedSampler`` does.

Batches are dicts: ``pixels`` float32 tensor (B, bands, cs, cs), ``chipid``/``item_id``/
``date`` lists, ``platform`` (one string), ``lon``/``lat`` tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import lightning
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from stacchip_core.errors import ConfigError
from stacchip_core.training.dataset import ChipDataset
from stacchip_core.training.prechip import ChipFilter, load_index

SPLITS = ("train", "val", "test")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64: a well-spread 64-bit hash, vectorized."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def spatial_splits(table: pa.Table, block_deg: float = 1.0, val: float = 0.1, test: float = 0.1,
                   seed: int = 0) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per row, by the lon/lat block of the chip's centre."""
    b = table["bbox"]
    lon = (pc.struct_field(b, "xmin").to_numpy() + pc.struct_field(b, "xmax").to_numpy()) / 2
    lat = (pc.struct_field(b, "ymin").to_numpy() + pc.struct_field(b, "ymax").to_numpy()) / 2
    bx = np.floor(lon / block_deg).astype(np.int64) + (1 << 20)
    by = np.floor(lat / block_deg).astype(np.int64) + (1 << 20)
    key = (bx.astype(np.uint64) << np.uint64(24)) ^ by.astype(np.uint64) ^ (np.uint64(seed) << np.uint64(48))
    u = (_mix(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < test, "test", np.where(u < test + val, "val", "train")).astype(object)


def epoch_batches(platforms: np.ndarray, batch_size: int, epoch: int, seed: int, shuffle: bool,
                  oversample: bool, world_size: int) -> list[np.ndarray]:
    """The epoch's batches (row numbers), one platform each, a multiple of ``world_size`` long."""
    rng = np.random.default_rng([seed, epoch])
    names = sorted(set(platforms.tolist()))
    groups = {n: np.flatnonzero(platforms == n) for n in names}
    target = max((len(g) for g in groups.values()), default=0)
    batches = []
    for name in names:
        rows = rng.permutation(groups[name]) if shuffle else groups[name]
        if oversample and 0 < len(rows) < target:  # whole passes, then a random remainder
            reps = [rng.permutation(groups[name]) for _ in range(target // len(rows) - 1)]
            rows = np.concatenate([rows, *reps, rng.choice(groups[name], target % len(rows), replace=False)])
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    if len(batches) and len(batches) < world_size and sum(map(len, batches)) < world_size:
        raise ConfigError(f"{sum(map(len, batches))} chips cannot feed {world_size} ranks")
    while len(batches) % world_size:  # split the largest batch rather than repeat chips
        i = max(range(len(batches)), key=lambda k: len(batches[k]))
        if len(batches[i]) < 2:
            raise ConfigError(f"{len(batches)} batches of one chip cannot be shared by {world_size} ranks")
        half = len(batches[i]) // 2
        batches[i:i + 1] = [batches[i][:half], batches[i][half:]]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class ShardedChipBatches(IterableDataset):
    """Batches of a ``ChipDataset`` for one DDP rank, dealt again to its data-loader workers.

    ``set_epoch(epoch)`` reshuffles; the data module's loaders call it for you."""

    def __init__(self, dataset: ChipDataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, oversample: bool = False, seed: int = 0) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.oversample, self.seed = shuffle, oversample, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_batches(self) -> list[np.ndarray]:
        batches = epoch_batches(self.dataset.platforms, self.batch_size, self.epoch, self.seed, self.shuffle,
                                self.oversample, self.world_size)
        return batches[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.rank_batches())

    def __iter__(self) -> Iterator[dict]:
        mine = self.rank_batches()
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id::info.num_workers]
        for rows in mine:
            samples = [self.dataset[int(i)] for i in rows]
            yield {"pixels": torch.from_numpy(np.stack([s["pixels"] for s in samples])),
                   "chipid": [s["chipid"] for s in samples], "item_id": [s["item_id"] for s in samples],
                   "date": [s["date"] for s in samples], "platform": samples[0]["platform"],
                   "lon": torch.tensor([s["lon"] for s in samples]), "lat": torch.tensor([s["lat"] for s in samples])}


class _EpochLoader(DataLoader):
    """Sets the dataset's epoch (the trainer's, else a count of passes) before each pass;
    workers are not persistent, so each pass ships them the new epoch."""

    def __init__(self, *args, epoch_fn: Callable[[], int | None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch_fn = epoch_fn
        self._passes = 0

    def __iter__(self):
        epoch = self._epoch_fn() if self._epoch_fn else None
        self.dataset.set_epoch(self._passes if epoch is None else epoch)
        self._passes += 1
        return super().__iter__()


class StacchipDataModule(lightning.LightningDataModule):
    """Train/val/test loaders over one or more indexes (paths/URLs or tables).

    Args:
        indexes: merged indexes; their rows are concatenated.
        bands: band names for every platform (list) or per platform (dict).
        chip_filter: rows to keep (default: every row).
        split_block_deg: side of the split's lon/lat blocks, degrees (ignored, like the three
            below, when the index has a ``split`` column).
        val_fraction: share of blocks in the validation split.
        test_fraction: share of blocks in the test split.
        split_seed: seed of the block hash.
        batch_size: chips per batch.
        num_workers: data-loader worker processes per rank.
        seed: shuffling seed (with the epoch).
        oversample: repeat small platforms' chips in training up to the largest platform.
        transform: ``sample -> sample`` applied to each chip (see ``ChipDataset``).
        mountpath: for bucket hrefs mounted locally.
    """

    def __init__(self, indexes: str | pa.Table | Sequence[str | pa.Table],
                 bands: Sequence[str] | dict[str, Sequence[str]] | None = None,
                 chip_filter: ChipFilter | None = None, split_block_deg: float = 1.0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, batch_size: int = 32, num_workers: int = 0,
                 seed: int = 0, oversample: bool = False, transform: Callable[[dict], dict] | None = None,
                 mountpath: str | None = None) -> None:
        super().__init__()
        if isinstance(indexes, (str, pa.Table)) or hasattr(indexes, "__fspath__"):
            indexes = [indexes]
        # a filter reads only the row groups that may match (ChipFilter.load); applied again below
        tables = [t if isinstance(t, pa.Table) else chip_filter.load(str(t)) if chip_filter else load_index(str(t))
                  for t in indexes]
        table = pa.concat_tables(tables, promote_options="default")
        if chip_filter is not None:
            table = chip_filter.apply(table)
        if "split" not in table.column_names:
            splits = spatial_splits(table, split_block_deg, val_fraction, test_fraction, split_seed)
            table = table.append_column("split", pa.array(splits.tolist(), pa.string()))
        self.table = table
        self.bands, self.transform, self.mountpath = bands, transform, mountpath
        self.batch_size, self.num_workers, self.seed, self.oversample = batch_size, num_workers, seed, oversample

    def split_table(self, split: str) -> pa.Table:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
        return self.table.filter(pc.equal(self.table["split"], split))

    def write_splits(self, path) -> None:
        """The filtered index with its ``split`` column, as GeoParquet-compatible Parquet."""
        import pyarrow.parquet as pq

        pq.write_table(self.table, str(path))

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _loader(self, split: str, train: bool) -> DataLoader:
        rank, world = self._rank()
        dataset = ChipDataset(self.split_table(split), bands=self.bands, transform=self.transform,
                              mountpath=self.mountpath)
        batches = ShardedChipBatches(dataset, self.batch_size, rank, world, shuffle=train,
                                     oversample=self.oversample and train, seed=self.seed)
        trainer = getattr(self, "trainer", None)
        epoch_fn = (lambda: trainer.current_epoch) if (train and trainer is not None) else None
        return _EpochLoader(batches, batch_size=None, num_workers=self.num_workers, epoch_fn=epoch_fn,
                            persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
