"""Batch samplers over a chip index: which rows go together in a batch, in which order, on
which rank (needs torch; the datasets in ``dataset`` and ``stacks`` do not).

One rule makes every batch (``platform_batches``): a batch holds one platform only (sources
differ in band count); with ``shuffle``, the rows within each platform and then the order of
the batches are shuffled by a generator seeded with the pair ``(seed, epoch)``, so every
(seed, epoch) pair gets its own order (a ``seed + epoch`` seed would give seed 0's second
epoch the order of seed 1's first); ``oversample`` repeats the rows of small platforms until
every platform has as many as the largest.

- ``PlatformBatchSampler``: that rule as a torch ``batch_sampler`` (``set_epoch`` each epoch).
- ``epoch_batches``: the rule, then a batch count every DDP rank can share equally.
- ``ShardedBatchSampler``: one rank's share of ``epoch_batches``, for the data modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

from stacchip_core.errors import ConfigError


class SupportsPlatforms(Protocol):
    """A dataset a batch sampler can take: the platform of every row (``ChipDataset``)."""

    platforms: np.ndarray


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The shuffling generator of one epoch: seeded with the pair, not the sum.

    Args:
        seed: The run's seed (0 or more).
        epoch: The epoch (0 or more).

    Returns:
        A numpy generator, the same for the same pair.

    Raises:
        ConfigError: If the seed or the epoch is negative.
    """
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be 0 or more, got seed {seed}, epoch {epoch}")
    return np.random.default_rng((int(seed), int(epoch)))


def platform_batches(
    platforms: Sequence[str] | np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    oversample: bool = False,
) -> list[np.ndarray]:
    """The batches of one epoch (row numbers), each of one platform.

    Args:
        platforms: The platform of every row.
        batch_size: The most rows per batch.
        seed: The shuffling seed.
        epoch: The epoch (seeds the shuffle with ``seed``).
        shuffle: Shuffle the rows within each platform, then the order of the batches.
        drop_last: Drop each platform's last, incomplete batch.
        oversample: Repeat the rows of smaller platforms up to the largest platform's count:
            whole extra passes (each shuffled), then a random remainder without repeats.

    Returns:
        The batches' row numbers, int64 arrays.

    Raises:
        ConfigError: If ``batch_size`` is below 1, or the seed or the epoch is negative.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    rng = epoch_rng(seed, epoch)
    platforms = np.asarray(platforms, dtype=object)
    names = sorted(set(platforms.tolist()))
    groups = {n: np.flatnonzero(platforms == n) for n in names}
    target = max((len(g) for g in groups.values()), default=0) if oversample else 0
    batches: list[np.ndarray] = []
    for name in names:
        group = groups[name]
        rows = rng.permutation(group) if shuffle else group
        if 0 < len(rows) < target:
            passes = [rng.permutation(group) for _ in range(target // len(group) - 1)]
            rest = rng.choice(group, target % len(group), replace=False)
            rows = np.concatenate([rows, *passes, rest])
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            if len(batch) == batch_size or not drop_last:
                batches.append(batch.astype(np.int64))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class PlatformBatchSampler:
    """Batches of indices that each hold one platform only (``platform_batches``' rule).

    Shuffled from ``(seed, epoch)`` (call ``set_epoch`` each epoch): indices within each
    platform, then the order of the batches. A torch ``batch_sampler``.

    Given the dataset itself rather than its platforms, it also tells the dataset which
    batch comes next (its ``read_ahead``, if it has one) just before it yields a batch: in a
    loader without worker processes the next batch is then read while this one is used
    (``training.readahead``). With workers it changes nothing.

    Args:
        platforms: The platform of every sample, in dataset order; or a dataset with a
            ``platforms`` attribute (``ChipDataset``).
        batch_size: The most indices per batch.
        shuffle: Shuffle the indices and the batches.
        seed: The base seed of the shuffle.
        drop_last: Drop each platform's last, incomplete batch.
    """

    def __init__(
        self,
        platforms: Sequence[str] | np.ndarray | SupportsPlatforms,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.read_ahead: Callable[[Sequence[int]], None] | None = None
        if hasattr(platforms, "platforms"):
            self.read_ahead = getattr(platforms, "read_ahead", None)
            platforms = platforms.platforms
        self.platforms = np.asarray(platforms, dtype=object)
        self.batch_size, self.shuffle, self.seed, self.drop_last = (
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle with ``(seed, epoch)`` from now on.

        Args:
            epoch: The epoch about to start.
        """
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        return [
            b.tolist()
            for b in platform_batches(
                self.platforms,
                self.batch_size,
                seed=self.seed,
                epoch=self.epoch,
                shuffle=self.shuffle,
                drop_last=self.drop_last,
            )
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return with_hints(self._batches(), self.read_ahead)

    def __len__(self) -> int:
        return len(self._batches())


def with_hints(
    batches: list[list[int]], read_ahead: Callable[[Sequence[int]], None] | None
) -> Iterator[list[int]]:
    """The batches, each one's successor handed to ``read_ahead`` just before it is yielded.

    Args:
        batches: The epoch's batches, in order.
        read_ahead: The dataset's hint (``ChipDataset.read_ahead``), or None.

    Returns:
        An iterator over ``batches``.
    """
    if read_ahead is None:
        return iter(batches)

    def hinted() -> Iterator[list[int]]:
        for i, batch in enumerate(batches):
            if i == 0:
                read_ahead(batch)
            if i + 1 < len(batches):
                read_ahead(batches[i + 1])
            yield batch

    return hinted()


def epoch_batches(platforms: np.ndarray, batch_size: int, epoch: int, seed: int, shuffle: bool,
                  oversample: bool, world_size: int) -> list[np.ndarray]:
    """The epoch's batches (row numbers), one platform each, a multiple of ``world_size`` long.

    ``platform_batches``' batches (without ``oversample``, exactly ``PlatformBatchSampler``'s),
    then the largest batches are split in two until every rank gets as many batches (DDP needs
    equal step counts); no chip is repeated to get there.

    Args:
        platforms: The platform of every row.
        batch_size: The most rows per batch.
        epoch: The epoch (seeds the shuffle with ``seed``).
        seed: The shuffling seed.
        shuffle: Shuffle within platforms and the order of batches.
        oversample: Repeat small platforms' rows up to the largest platform.
        world_size: The number of ranks.

    Returns:
        The batches' row numbers.

    Raises:
        ConfigError: If the rows are too few to give every rank a batch.
    """
    batches = platform_batches(
        platforms, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, oversample=oversample
    )
    if len(batches) and len(batches) < world_size and sum(map(len, batches)) < world_size:
        raise ConfigError(f"{sum(map(len, batches))} chips cannot feed {world_size} ranks")
    while len(batches) % world_size:  # split the largest batch rather than repeat chips
        i = max(range(len(batches)), key=lambda k: len(batches[k]))
        if len(batches[i]) < 2:
            raise ConfigError(
                f"{len(batches)} batches of one chip cannot be shared by {world_size} ranks"
            )
        half = len(batches[i]) // 2
        batches[i:i + 1] = [batches[i][:half], batches[i][half:]]
    return batches


class ShardedBatchSampler(BatchSampler):
    """The epoch's platform batches for one DDP rank: a torch ``batch_sampler``.

    It runs in the main process (data-loader workers receive the batches' indices and read
    each through the dataset's ``__getitems__``), so persistent workers need no epoch of their
    own: each pass asks ``epoch_fn`` (the trainer's epoch), else takes the last ``set_epoch``,
    else counts passes. The loader deals batches to its workers in order, so each chip of the
    rank's share is read once per epoch. A subclass of torch's ``BatchSampler`` so that
    Lightning can create it again with its own ``DistributedSampler`` under DDP.

    Args:
        sampler: ignored unless it is a ``DistributedSampler`` (Lightning injects one under
            DDP): then its rank and replica count are used.
        batch_size: chips per batch (a batch never mixes platforms).
        drop_last: must be False (kept for the ``BatchSampler`` interface).
        platforms: the dataset's platform per row (``ChipDataset.platforms``).
        rank: this process's rank.
        world_size: number of ranks.
        shuffle: shuffle within platforms and the order of batches, per epoch.
        oversample: repeat small platforms' chips up to the largest platform.
        seed: shuffling seed (with the epoch).
        epoch_fn: the current epoch (e.g. the trainer's), asked at the start of each pass.
        read_ahead: the dataset's hint of the next batch (``ChipDataset.read_ahead``), for a
            loader without workers (``with_hints``).

    Raises:
        ConfigError: ``drop_last`` is True, or ``rank`` is not in 0..world_size - 1.
    """

    def __init__(
        self,
        sampler: Sampler | None = None,
        batch_size: int = 32,
        drop_last: bool = False,
        *,
        platforms: Sequence[str] | np.ndarray,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        oversample: bool = False,
        seed: int = 0,
        epoch_fn: Callable[[], int | None] | None = None,
        read_ahead: Callable[[Sequence[int]], None] | None = None,
    ) -> None:
        if drop_last:
            raise ConfigError("drop_last is not supported: every chip is read once per epoch")
        super().__init__(
            sampler if sampler is not None else range(len(platforms)), batch_size, False
        )
        if isinstance(sampler, DistributedSampler):
            rank, world_size = sampler.rank, sampler.num_replicas
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..{world_size - 1}")
        self.platforms = np.asarray(platforms, dtype=object)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.oversample, self.seed = shuffle, oversample, seed
        self.epoch_fn, self.read_ahead = epoch_fn, read_ahead
        self.epoch: int | None = None
        self._passes = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next passes (when there is no ``epoch_fn``).

        Args:
            epoch: The epoch.
        """
        self.epoch = epoch

    def current_epoch(self) -> int:
        """The epoch the next pass shuffles with.

        Returns:
            ``epoch_fn()``, else the last ``set_epoch``, else the number of passes so far.
        """
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self.epoch if self.epoch is not None else self._passes
        return int(epoch)

    def rank_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """This rank's batches (row numbers) of ``epoch`` (default: the current one).

        Args:
            epoch: The epoch; None: ``current_epoch()``.

        Returns:
            The batches of this rank.

        Raises:
            ConfigError: If the rows are too few to give every rank a batch.
        """
        epoch = self.current_epoch() if epoch is None else epoch
        if (
            self._cache is None or self._cache[0] != epoch
        ):  # len() and iter() of one epoch shuffle once
            batches = epoch_batches(
                self.platforms,
                self.batch_size,
                epoch,
                self.seed,
                self.shuffle,
                self.oversample,
                self.world_size,
            )
            self._cache = (epoch, batches[self.rank::self.world_size])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the epoch is taken when the pass starts, not when iter() is called
        # (torch's multiprocessing iterator calls iter() twice on its first pass)
        mine = self.rank_batches()
        self._passes += 1
        yield from with_hints([rows.tolist() for rows in mine], self.read_ahead)

    def __len__(self) -> int:
        return len(self.rank_batches())
