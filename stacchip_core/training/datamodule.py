"""A Lightning ``LightningDataModule`` over one or more stacchip indexes (needs the
``lightning`` extra; nothing imports this module unless you do).

- **Filters**: a ``ChipFilter`` (cloud, nodata, platform, date, bbox) on the merged rows.
- **Spatially disjoint splits**: every chip's centre falls in a block of a lon/lat grid
  (``split_block_deg``); each block goes to train, val or test by a seeded hash of its
  (column, row), so neighbouring chips share a split and a split never borders itself across
  sets. The result is the ``split`` column of ``datamodule.table`` (``write_splits`` saves it);
  an index that already has a ``split`` column keeps it, so a split is reproducible, visible
  and editable.
- **Batches of one platform** (sources differ in band count), the one rule of ``samplers``
  (``PlatformBatchSampler``'s; shuffled per epoch from the pair ``(seed, epoch)``);
  ``oversample=True`` repeats the chips of small platforms in training until every platform
  has as many chips as the largest (the original's recipe).
- **Sharding**: the epoch's batches are dealt round-robin to DDP ranks
  (``samplers.ShardedBatchSampler``, in the main process; importable from here too), and the
  loader hands a rank's batches to its workers in turn, so every chip is read once per epoch
  (``oversample`` aside) and never twice. Ranks get equally many batches (DDP needs equal step
  counts): when the batches do not divide evenly, the largest batches are split in two until
  they do, instead of padding with repeated chips as ``DistributedSampler`` does.
- **Fast reads**: a worker reads a whole batch with ``ChipDataset.__getitems__`` (every tile of
  every chip in flight at once); workers persist across epochs (the epoch's order is decided in
  the main process, so they need no state of their own) and each keeps ``prefetch_factor``
  batches queued. ``num_workers=None`` picks ``default_workers`` (2 on 2 cores, up to 8).

Batches are dicts: ``pixels`` float32 tensor (B, bands, cs, cs), ``chipid``/``item_id``/
``date`` lists, ``platform`` (one string), ``lon``/``lat`` tensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import lightning
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader

from stacchip_core.core.stacks import read_stacks
from stacchip_core.errors import ConfigError, StackError
from stacchip_core.io import objects
from stacchip_core.training.collate import collate_chips, collate_stacks
from stacchip_core.training.dataset import ChipDataset
from stacchip_core.training.prechip import ChipFilter, load_filtered
from stacchip_core.training.samplers import (  # noqa: F401 - epoch_batches re-exported
    ShardedBatchSampler,
    epoch_batches,
)
from stacchip_core.training.stacks import StackDataset

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
    """``"train"``/``"val"``/``"test"`` per row, by the lon/lat block of the chip's centre.

    Args:
        table: An index or stacks table with a ``bbox`` column.
        block_deg: Side of the lon/lat blocks, degrees.
        val: Share of blocks in the validation split.
        test: Share of blocks in the test split.
        seed: Seed of the block hash.

    Returns:
        The split of every row, an object array.
    """
    b = table["bbox"]
    lon = (pc.struct_field(b, "xmin").to_numpy() + pc.struct_field(b, "xmax").to_numpy()) / 2
    lat = (pc.struct_field(b, "ymin").to_numpy() + pc.struct_field(b, "ymax").to_numpy()) / 2
    bx = np.floor(lon / block_deg).astype(np.int64) + (1 << 20)
    by = np.floor(lat / block_deg).astype(np.int64) + (1 << 20)
    key = (
        (bx.astype(np.uint64) << np.uint64(24))
        ^ by.astype(np.uint64)
        ^ (np.uint64(seed) << np.uint64(48))
    )
    u = (_mix(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < test, "test", np.where(u < test + val, "val", "train")).astype(object)


def default_workers(ranks_per_node: int = 1, cpus: int | None = None) -> int:
    """Data-loader workers per rank: half the rank's share of the CPUs, at least 2, at most 8.

    Each worker reads a whole batch at once (all its tiles in flight together) and inflates it
    on a thread per CPU, so workers are not needed for CPU parallelism: two already overlap one
    batch's round trip with another's decoding (2 cores: 2 workers). More help on large machines
    until decoding saturates the cores; each also holds its own caches (see the training-at-scale
    docs page).

    Args:
        ranks_per_node: training processes on this machine (devices per node).
        cpus: CPUs this process may use (default: its affinity mask).

    Returns:
        The number of workers for each rank's loaders.
    """
    if cpus is None:
        cpus = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    return max(2, min(8, cpus // max(1, ranks_per_node) // 2))


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
        batch_size: chips per batch (all of a batch's tiles are fetched at once).
        num_workers: data-loader worker processes per rank; None: ``default_workers`` for this
            machine and the trainer's devices per node; 0: read in the training process.
        seed: shuffling seed (with the epoch).
        oversample: repeat small platforms' chips in training up to the largest platform.
        transform: ``sample -> sample`` applied to each chip (see ``ChipDataset``).
        mountpath: for bucket hrefs mounted locally.
        prefetch_factor: batches queued per worker (torch's ``prefetch_factor``).
        persistent_workers: keep workers (and their open connections and caches) across epochs.
        multiprocessing_context: worker start method (torch's default: fork on Linux).

    Raises:
        IndexFormatError: An index is not a readable Parquet index.
        ObjectError: An index file cannot be read.
    """

    dataset_class: Any = ChipDataset  # a subclass may extend how a batch is read
    collate_fn: Callable[[list[dict]], dict | None] = staticmethod(collate_chips)

    def __init__(
        self,
        indexes: str | pa.Table | Sequence[str | pa.Table],
        bands: Sequence[str] | dict[str, Sequence[str]] | None = None,
        chip_filter: ChipFilter | None = None,
        split_block_deg: float = 1.0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int | None = None,
        seed: int = 0,
        oversample: bool = False,
        transform: Callable[[dict], dict] | None = None,
        mountpath: str | None = None,
        prefetch_factor: int = 2,
        persistent_workers: bool = True,
        multiprocessing_context: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(indexes, (str, pa.Table)) or hasattr(indexes, "__fspath__"):
            indexes = [indexes]
        tables = [load_filtered(t, chip_filter) for t in indexes]
        table = pa.concat_tables(tables, promote_options="default")
        if "split" not in table.column_names:
            splits = spatial_splits(table, split_block_deg, val_fraction, test_fraction, split_seed)
            table = table.append_column("split", pa.array(splits.tolist(), pa.string()))
        objects.release_arrow_memory()  # before the workers fork: each would count the pages
        self.table = table
        self.bands, self.transform, self.mountpath = bands, transform, mountpath
        self.batch_size, self.num_workers, self.seed, self.oversample = (
            batch_size,
            num_workers,
            seed,
            oversample,
        )
        self.prefetch_factor, self.persistent_workers = prefetch_factor, persistent_workers
        self.multiprocessing_context = multiprocessing_context

    def split_table(self, split: str) -> pa.Table:
        """The rows of one split.

        Args:
            split: ``train``, ``val`` or ``test``.

        Returns:
            The split's rows of the table.

        Raises:
            ConfigError: If ``split`` is not one of the three.
        """
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
        keep = pc.equal(self.table["split"], split)
        # one split holds every row: the table itself, not a copy (a null split is no row's:
        # filter drops it, so it must not count as a match here)
        if pc.all(keep, skip_nulls=False).as_py():
            return self.table
        return self.table.filter(keep)

    def write_splits(self, path) -> None:
        """The filtered index with its ``split`` column, as GeoParquet-compatible Parquet.

        Args:
            path: The Parquet file to write.
        """
        import pyarrow.parquet as pq

        pq.write_table(self.table, str(path))

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        trainer = getattr(self, "trainer", None)
        return default_workers(getattr(trainer, "num_devices", 1) if trainer is not None else 1)

    def _dataset(self, split: str) -> Any:
        """The map-style dataset of a split (with ``platforms`` and ``__getitems__``)."""
        return self.dataset_class(
            self.split_table(split),
            bands=self.bands,
            transform=self.transform,
            mountpath=self.mountpath,
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        rank, world = self._rank()
        dataset = self._dataset(split)
        workers = self._workers()
        trainer = getattr(self, "trainer", None)
        epoch_fn = (lambda: trainer.current_epoch) if (train and trainer is not None) else None
        sampler = ShardedBatchSampler(
            None,
            self.batch_size,
            platforms=dataset.platforms,
            rank=rank,
            world_size=world,
            shuffle=train,
            oversample=self.oversample and train,
            seed=self.seed,
            epoch_fn=epoch_fn,
            # without workers, the next batch is read while this one trains
            read_ahead=None if workers else getattr(dataset, "read_ahead", None),
        )
        extra: dict[str, Any] = {}
        if workers > 0:
            extra = {
                "prefetch_factor": self.prefetch_factor,
                "persistent_workers": self.persistent_workers,
                "multiprocessing_context": self.multiprocessing_context,
            }
        # ChipDataset is map-style without importing torch (duck-typed Dataset)
        return DataLoader(
            cast(Any, dataset),
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=self.collate_fn,
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        """The training loader: shuffled per epoch, this rank's share.

        Returns:
            The data loader.
        """
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        """The validation loader: in order, this rank's share.

        Returns:
            The data loader.
        """
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        """The test loader: in order, this rank's share.

        Returns:
            The data loader.
        """
        return self._loader("test", False)


# --- stacks ------------------------------------------------------------------------------


class StacchipStackDataModule(StacchipDataModule):
    """Train/val/test loaders over a stacks table (``stacchip stack``'s output; a path or table).

    A sibling of ``StacchipDataModule`` rather than a mode of it: a stacks table has no chip
    columns for a ``ChipFilter`` (filter the table before), its samples need a fixed step count
    and their own collate, and its reader has no ``mountpath``. Everything else is shared: the
    spatially disjoint splits (by the anchor chip's centre; a ``split`` column is kept), the
    batching rule (one anchor platform per batch, ``ShardedBatchSampler`` over
    ``StackDataset.platforms``, shuffled per epoch, dealt to DDP ranks), ``oversample``, and
    persistent workers reading whole batches through ``StackDataset.__getitems__`` (all members
    of all stacks of a batch fetched at once).

    Batches are ``collate_stacks``'s dicts: ``pixels`` (B, T, C, H, W) with T = ``steps``.

    Args:
        stacks: the stacks table.
        bands: band names per platform (dict) or for every platform (list).
        steps: steps per stack; shorter stacks are padded (zeros, ``valid`` and ``present``
            False, time -1), longer ones cut to their first ``steps``. Default: the longest
            stack of the table, so no stack is cut and every split has the same T.
        resampling: ``nearest`` or ``bilinear`` for warped members' bands.
        errors: ``raise``, or ``skip`` to drop stacks that cannot be read (logged).
        split_block_deg: side of the split's lon/lat blocks, degrees.
        val_fraction: share of blocks in the validation split.
        test_fraction: share of blocks in the test split.
        split_seed: seed of the block hash.
        batch_size: stacks per batch.
        num_workers: data-loader worker processes per rank (None: ``default_workers``).
        seed: shuffling seed (with the epoch).
        oversample: repeat small anchor platforms' stacks in training up to the largest.
        transform: ``sample -> sample`` applied to each stack (see ``StackDataset``).
        prefetch_factor: batches queued per worker.
        persistent_workers: keep workers across epochs.
        multiprocessing_context: worker start method.

    Raises:
        StackError: ``steps`` below 1, or an unknown ``errors``/``resampling``.
    """

    dataset_class: Any = StackDataset
    collate_fn = staticmethod(collate_stacks)

    def __init__(
        self,
        stacks: str | pa.Table,
        bands: Sequence[str] | dict[str, Sequence[str]] | None = None,
        steps: int | None = None,
        resampling: str = "nearest",
        errors: str = "raise",
        split_block_deg: float = 1.0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 8,
        num_workers: int | None = None,
        seed: int = 0,
        oversample: bool = False,
        transform: Callable[[dict], dict] | None = None,
        prefetch_factor: int = 2,
        persistent_workers: bool = True,
        multiprocessing_context: str | None = None,
    ) -> None:
        lightning.LightningDataModule.__init__(self)
        table = stacks if isinstance(stacks, pa.Table) else read_stacks(str(stacks))
        if "split" not in table.column_names:
            splits = spatial_splits(table, split_block_deg, val_fraction, test_fraction, split_seed)
            table = table.append_column("split", pa.array(splits.tolist(), pa.string()))
        if steps is None:
            steps = int(pc.max(table["steps"]).as_py() or 1) if len(table) else 1
        if steps < 1:
            raise StackError(f"steps must be at least 1, got {steps}")
        if errors not in ("raise", "skip") or resampling not in ("nearest", "bilinear"):
            raise StackError(
                f"errors must be 'raise' or 'skip' and resampling 'nearest' or 'bilinear', "
                f"got {errors!r}, {resampling!r}"
            )
        self.table, self.steps, self.resampling, self.errors = table, steps, resampling, errors
        self.bands, self.transform, self.mountpath = bands, transform, None
        self.batch_size, self.num_workers, self.seed, self.oversample = (
            batch_size,
            num_workers,
            seed,
            oversample,
        )
        self.prefetch_factor, self.persistent_workers = prefetch_factor, persistent_workers
        self.multiprocessing_context = multiprocessing_context

    def _dataset(self, split: str) -> StackDataset:
        return self.dataset_class(
            self.split_table(split),
            bands=self.bands,
            transform=self.transform,
            steps=self.steps,
            resampling=self.resampling,
            errors=self.errors,
        )
