"""A map-style dataset over a chip index, for torch's DataLoader or any other loader.

Torch is not imported: items are numpy arrays and plain metadata, which the DataLoader's
default collate turns into tensors. Each worker process keeps its own open datasets (the
cache starts empty after a fork and is not pickled for spawn). The batch samplers (one
platform per batch) are in ``samplers``; ``PlatformBatchSampler`` is still importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from stacchip_core.io import objects
from stacchip_core.training.chipread import ChipReader
from stacchip_core.training.handoff import share
from stacchip_core.training.prechip import ChipFilter, load_filtered
from stacchip_core.training.readahead import ReadAhead
from stacchip_core.training.workers import settle

# the columns of an index row that a read (core.read) and a sample need
ROW_COLUMNS = ("chipid", "platform", "item_id", "item_href", "date", "chip_index_x",
               "chip_index_y", "chip_size", "bbox", "layouts")


class ChipDataset:
    """``dataset[i] -> {"pixels": float32 (bands, cs, cs), "chipid", "platform", "item_id",
    "date", "lon", "lat"}``, after the optional ``transform(sample) -> sample``.

    ``bands`` selects bands by name for every platform (a list) or per platform (a dict);
    default: each platform's canonical bands. ``chip_filter`` keeps rows of the index
    (default: all rows).

    Args:
        index: An index file, folder or URL, or an index table.
        bands: Band names for every platform (a list) or per platform (a dict).
        transform: A function applied to every sample.
        chip_filter: The rows of the index to keep.
        mountpath: A local mirror that remote hrefs map to.

    Raises:
        IndexFormatError: If the index is not a readable Parquet index.
        ObjectError: If the index file cannot be read.
    """

    def __init__(
        self,
        index: str | pa.Table,
        bands: Sequence[str] | dict[str, Sequence[str]] | None = None,
        transform: Callable[[dict], dict] | None = None,
        chip_filter: ChipFilter | None = None,
        mountpath=None,
    ) -> None:
        table = load_filtered(index, chip_filter)
        if "layouts" in table.column_names and not pa.types.is_dictionary(
            table.schema.field("layouts").type
        ):
            # one layout per item, repeated on its rows: held once per item in memory
            import pyarrow.compute as pc

            i = table.column_names.index("layouts")
            table = table.set_column(i, "layouts", pc.dictionary_encode(table.column(i)))
            objects.release_arrow_memory()  # the dense column, freed
        self.table = table
        self._names = set(table.column_names)
        self.transform = transform
        self._bands = bands
        self._readers: dict[str, ChipReader] = {}
        self.mountpath = mountpath
        self._ahead: ReadAhead = ReadAhead()

    @cached_property
    def platforms(self) -> np.ndarray:
        """The platform of every row (what ``PlatformBatchSampler`` groups by)."""
        return np.asarray(self.table["platform"].to_pylist(), dtype=object)

    def __getstate__(self) -> dict[str, Any]:
        # a spawned worker maps the table from shared memory (training.handoff) and needs
        # neither the platforms nor the parent's readers
        state = {**self.__dict__, "table": share(self.table), "_readers": {}}
        state.pop("platforms", None)
        return state

    def _reader(self, platform: str) -> ChipReader:
        reader = self._readers.get(platform)
        if reader is None:
            bands = self._bands.get(platform) if isinstance(self._bands, dict) else self._bands
            # setdefault: a read-ahead thread may be creating the same one
            reader = self._readers.setdefault(
                platform, ChipReader(list(bands) if bands else None, self.mountpath)
            )
        return reader

    def __len__(self) -> int:
        return len(self.table)

    def _rows(self, indices: Sequence[int]) -> list[dict]:
        fixed = row_numbers(indices, len(self), "chips")
        # Arrow indices from the buffer, and only the columns a read and a sample use: pa.array()
        # and a timezone-aware datetime's to_pylist() import pandas, 1.0 s of CPU in every fresh
        # DataLoader worker (measured), and the geometry is not needed here
        take = pa.Array.from_buffers(pa.int64(), len(fixed), [None, pa.py_buffer(fixed)])
        columns = [c for c in ROW_COLUMNS if c in self._names]
        return self.table.select(columns).take(take).to_pylist()

    def _sample(self, row: dict, pixels: np.ndarray) -> dict:
        bbox = row["bbox"]
        sample = {
            "pixels": pixels,
            "chipid": row["chipid"], "platform": row["platform"], "item_id": row["item_id"],
            "date": row["date"].isoformat(),
            "lon": (bbox["xmin"] + bbox["xmax"]) / 2, "lat": (bbox["ymin"] + bbox["ymax"]) / 2,
        }
        return self.transform(sample) if self.transform else sample

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A batch of samples (torch's DataLoader calls this with a batch of indices): the
        tiles of all its chips are fetched concurrently, per platform.

        Args:
            indices: Row numbers of the index (negative ones count from the end).

        Returns:
            The samples, in the order of ``indices``.

        Raises:
            IndexError: If an index is out of range.
        """
        settle()  # in a DataLoader worker: its inherited heap frozen (training.workers)
        rows, pixels = self._ahead.batch(indices, self._read_batch)
        return [self._sample(row, px) for row, px in zip(rows, pixels)]

    def read_ahead(self, indices: Sequence[int]) -> None:
        """A batch sampler's hint: ``indices`` is a batch the loader asks for soon.

        In a loader without worker processes, once it has asked for a hinted batch, each
        hint starts reading its batch in a background thread (``training.readahead``), so
        its round trips overlap the use of the batch before. ``PlatformBatchSampler(ds, ...)``
        and the data modules with ``num_workers=0`` give the hints.

        Args:
            indices: Row numbers of the index.
        """
        self._ahead.hint(indices, self._read_batch)

    def _read_batch(self, indices: Sequence[int]) -> tuple[list[dict], list[np.ndarray]]:
        rows = self._rows(indices)
        pixels: list = [None] * len(rows)
        by_platform: dict[str, list[int]] = {}
        for j, row in enumerate(rows):
            by_platform.setdefault(row["platform"], []).append(j)
        for name, js in by_platform.items():
            for j, arr in zip(js, self._reader(name).read_many([rows[j] for j in js])):
                pixels[j] = arr
        return rows, pixels


def row_numbers(indices: Sequence[int], n: int, noun: str) -> np.ndarray:
    """A batch's indices as row numbers of a table of ``n`` rows (negative ones count from the
    end), vectorized.

    Args:
        indices: The indices a loader asked for.
        n: Rows of the table.
        noun: What a row is, for the message ("chips", "stacks").

    Returns:
        The row numbers, int64.

    Raises:
        IndexError: An index is out of range (named as it was given).
    """
    given = np.asarray(indices, dtype=np.int64).reshape(-1)
    fixed = np.where(given < 0, given + n, given)
    bad = (fixed < 0) | (fixed >= n)
    if bad.any():
        raise IndexError(f"index {int(given[bad][0])} out of range for {n} {noun}")
    return fixed


def __getattr__(name: str) -> Any:
    # PlatformBatchSampler moved to samplers (which needs torch): still importable from here,
    # without importing torch for ChipDataset alone
    if name == "PlatformBatchSampler":
        from stacchip_core.training.samplers import PlatformBatchSampler

        return PlatformBatchSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
