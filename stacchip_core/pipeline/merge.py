"""Merge many per-item index files into one GeoParquet file built for queries.

What the merged file looks like (docs/index-format.md):

- rows sorted by the Hilbert key of the chip centre (core.hilbert; lon/lat, 2**24 cells a
  side), then by ``datetime``, then by input file and row (a total order: reruns give the
  same bytes). Consecutive rows are close on the ground, so each row group covers a compact
  region and the statistics of the bbox covering columns prune row groups for readers that
  push a box down (pyarrow, DuckDB, GDAL, the project's query).
- row groups of ``row_group_min_rows`` to ``row_group_rows`` rows (default 50,000 to
  131,072) and at most about ``ROW_GROUP_BYTES`` of data, each ending where the Hilbert key
  changes in its highest bit within that window: a row group is then a run of whole
  Hilbert cells, close to a square on the ground, and a small box meets fewer of them;
  zstd, statistics and page indexes for the columns queries filter on
  (``STATISTICS``); the ``layouts`` column is dictionary encoded (one blob per
  item and row group).

With ``partition_rows`` the output is a partitioned index instead: a folder (or ``s3://``
prefix) of files ``part-00000.parquet``, ... in the same global order, each at most
``partition_rows`` rows, cut at the coarsest Hilbert cell boundary of level CELL_LEVEL in
the window of half to all of those rows (so a file is a compact region), each a whole index
as above, and the manifest ``_partitions.parquet`` written last (one row per file: rows,
row groups, bbox, datetime span, platforms; core.query prunes files by it). The cuts come
from the rows per cell, counted while the inputs are read.

Integrity rules (what a careless or hostile input meets):

- ``dst`` inside ``src`` (as a path, ``file://`` or ``s3://``) is never an input: reruns
  give the same file, not twice the rows.
- every input must be a stacchip index: the columns in `REQUIRED` present, and no
  null in `NOT_NULL` (a parquet file of something else is an IndexFormatError naming
  the file, before anything is published).
- the output is streamed once: locally into a temporary sibling of ``dst`` renamed into
  place; on S3 as a multipart upload that is completed only when the file is whole (and
  aborted otherwise). Nothing is staged in ``$TMPDIR`` (but spilled partitions of a merge
  into S3, see below).

Memory is bounded by ``memory_rows``, whatever the number of rows: up to ``memory_rows``
rows are sorted in memory; past that, every ``memory_rows`` rows are spilled into 64
Hilbert-range partitions, one temporary Parquet file per partition and spill, closed at once
(in a hidden folder beside a local ``dst``, or under ``workdir``), and each partition is then
sorted on its own, split again by the next bits of the key when it is still too large. At
most about three copies of ``memory_rows`` rows are held at once, plus the output's footer
(docs/index-format.md has the measured peaks). Small merges need no temporary files at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from tqdm import tqdm

from stacchip_core.core.hilbert import BITS, bbox_centres, hilbert_keys
from stacchip_core.core.index import SCHEMA, geo_metadata
from stacchip_core.core.query import MANIFEST  # what each file holds; written last
from stacchip_core.errors import ConfigError, IndexFormatError, NotFoundError, OutputError
from stacchip_core.io.store import LocalStore, S3Store, open_store
from stacchip_core.io.urls import redact_text
from stacchip_core.types import Report

log = logging.getLogger(__name__)

# Row groups end at the coarsest Hilbert cell boundary within 50,000-131,072 rows (the
# GeoParquet guidance is 50k-150k). On the worldwide 10M-chip bench_index rows, 300 random 1
# degree boxes met a median of 2 of 108 such groups (89% of boxes at most 2%); fixed groups of
# 65,536 rows met a median of 3 of 154, and of 131,072 rows 3 of 77.
ROW_GROUP_ROWS = 128 * 1024
ROW_GROUP_MIN_ROWS = 50_000
ROW_GROUP_BYTES = 128 * 1024 * 1024  # of Arrow data (layouts counted once per item)
MEMORY_ROWS = 250_000  # rows sorted in memory at once (1M rows peaked at 1 GB RSS, bench_index)
PARTITION_BITS = 6  # each spill splits the key range into 64 partitions
# the columns without which a row is not a chip, and those that must have a value
REQUIRED = (
    "chipid",
    "platform",
    "item_id",
    "item_href",
    "chip_index_x",
    "chip_index_y",
    "chip_size",
    "geometry",
)
NOT_NULL = (
    "chipid",
    "platform",
    "item_href",
    "chip_index_x",
    "chip_index_y",
    "chip_size",
    "geometry",
)
_PART_BYTES = 16 * 1024 * 1024  # S3 multipart: parts of 16 MiB (the minimum is 5 MiB)
# helper columns of the sort, dropped before writing
_KEY, _FILE, _ROW = "__hilbert", "__file", "__row"
_SORT = [(_KEY, "ascending"), ("datetime", "ascending"), (_FILE, "ascending"), (_ROW, "ascending")]
_DICTIONARY = ["platform", "item_id", "item_href", "layouts"]  # few distinct values per row group
# statistics (row groups and page indexes) of the columns queries filter on; those of
# chipid, geometry and layouts prune nothing and made the footer 6x larger (min/max blobs)
STATISTICS = [
    "platform",
    "item_id",
    "date",
    "datetime",
    "cloud_cover_percentage",
    "nodata_percentage",
    "bbox.xmin",
    "bbox.ymin",
    "bbox.xmax",
    "bbox.ymax",
]


@dataclass(frozen=True)
class MergeReport(Report):
    """What a merge wrote: ``rows`` chips from ``files`` index files into ``output`` (a URL)."""

    files: int
    rows: int
    output: str


def merge(
    src: str | Path,
    dst: str | Path,
    progress: bool | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    memory_rows: int = MEMORY_ROWS,
    workdir: str | Path | None = None,
    row_group_min_rows: int = ROW_GROUP_MIN_ROWS,
    partition_rows: int | None = None,
) -> MergeReport:
    """Combine every ``*.parquet`` under ``src`` into one GeoParquet index ``dst``, sorted
    for spatial queries (see the module doc).

    Args:
        src: a folder or ``s3://bucket/prefix`` of per-item index files.
        dst: the output file, local or ``s3://``; published only when complete.
        progress: a progress bar (None: on terminals only).
        row_group_rows: the most rows in a row group.
        memory_rows: the most rows sorted in memory at once; more are spilled to disk.
        workdir: where spilled partitions go (default: a hidden folder beside a local
            ``dst``, the system temporary folder for an S3 ``dst``); removed afterwards.
        row_group_min_rows: the fewest rows in a row group but the last (at most
            ``row_group_rows``); each group ends at the coarsest Hilbert cell boundary
            between the two.
        partition_rows: write a partitioned index instead: ``dst`` is then a folder (or
            ``s3://`` prefix) of files ``part-00000.parquet``, ... of at most this many rows
            each, cut at Hilbert cell boundaries, and the manifest ``_partitions.parquet``
            (see `write_partitioned`).

    Returns:
        The counts and the output URL.

    Raises:
        NotFoundError: ``src`` holds no .parquet file.
        IndexFormatError: an input is not a stacchip index.
        OutputError: ``dst`` names no file or cannot be written.
        ConfigError: ``partition_rows`` is not positive.
    """
    source = open_store(src)
    dst = str(dst)
    parent, _, name = dst.rstrip("/").rpartition("/")
    if not name:
        raise OutputError(f"merge output {dst!r} names no file")
    target = open_store(parent or ".")
    if partition_rows is not None:
        if partition_rows < 1:
            raise ConfigError(f"partition_rows must be a positive row count, got {partition_rows}")
        folder = open_store(dst.rstrip("/"))
        if isinstance(folder, LocalStore) and folder.root.is_file():
            raise OutputError(f"merge output {dst!r} is a file, not a folder for partitions")
        keys = [k for k in source.list("", ".parquet") if not _inside(source, k, folder)]
    else:
        keys = [k for k in source.list("", ".parquet")
                if not _same_object(source, k, target, name)]
    if not keys:
        raise NotFoundError(f"no .parquet index files under {src}")
    schema = _merged_schema(source, keys[0])
    bar = tqdm(keys, desc="merge", unit="file", disable=None if progress is None else not progress)
    sorter = _Sorter(schema, memory_rows, lambda: _workdir(workdir, target, name))
    cells = _CellCounts()
    rows = 0
    try:
        for number, key in enumerate(bar):
            table = _conform(_read(source, key), schema, source.url(key))
            rows += len(table)
            table = _with_sort_columns(table, number)
            if partition_rows is not None:
                cells.add(table.column(_KEY).to_numpy())
            sorter.add(table)
        if partition_rows is not None:
            cuts = partition_cuts(cells.cells(), cells.counts(), partition_rows)
            files = write_partitioned(folder, sorter.sorted(), schema, cuts, row_group_rows,
                                      row_group_min_rows)
            url = folder.url("")
            log.info("merged %d rows from %d files into %d partitions under %s%s", rows,
                     len(keys), files, url, ", spilled to disk" if sorter.spilled else "")
            return MergeReport(len(keys), rows, url)
        with _output(target, name) as sink:
            writer = _GroupWriter(sink, schema, row_group_rows, row_group_min_rows)
            with writer:
                for table in sorter.sorted():
                    writer.add(table)
    finally:
        sorter.close()
    url = target.url(name)
    log.info("merged %d rows from %d files into %s (%d row groups%s)", rows, len(keys), url,
             writer.groups, ", spilled to disk" if sorter.spilled else "")
    return MergeReport(len(keys), rows, url)


PART = "part-{:05d}.parquet"  # the files of a partitioned index, in Hilbert order
_PART_NAME = re.compile(r"part-\d{5,}\.parquet")
# files end at Hilbert cell boundaries of this level (4**10 cells over the world, about
# 0.35 x 0.18 degrees each): the merge counts the rows per cell (8 MiB) before it writes
CELL_LEVEL = 10
LON_BINS = 36_000  # the manifest's longitudes, rounded outwards to 0.01 degree
MANIFEST_SCHEMA = pa.schema([
    pa.field("file", pa.string(), False),
    pa.field("rows", pa.int64(), False),
    pa.field("row_groups", pa.int64(), False),
    pa.field("xmin", pa.float64()),
    pa.field("ymin", pa.float64()),
    pa.field("xmax", pa.float64()),
    pa.field("ymax", pa.float64()),
    pa.field("datetime_min", pa.timestamp("us", tz="UTC")),
    pa.field("datetime_max", pa.timestamp("us", tz="UTC")),
    pa.field("platforms", pa.list_(pa.string())),
])


class _CellCounts:
    """Rows per Hilbert cell of level CELL_LEVEL, counted as the inputs are read (keys are
    buffered up to about a million, then binned)."""

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []
        self._buffered = 0
        self._counts = np.zeros(4**CELL_LEVEL, np.int64)

    def add(self, keys: np.ndarray) -> None:
        self._keys.append((keys >> np.uint64(BITS - 2 * CELL_LEVEL)).astype(np.int64))
        self._buffered += len(keys)
        if self._buffered >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        if self._keys:
            self._counts += np.bincount(np.concatenate(self._keys), minlength=4**CELL_LEVEL)
        self._keys, self._buffered = [], 0

    def cells(self) -> np.ndarray:
        self._flush()
        return np.flatnonzero(self._counts)

    def counts(self) -> np.ndarray:
        self._flush()
        return self._counts[self._counts > 0]


def partition_cuts(cells: np.ndarray, counts: np.ndarray, rows: int) -> list[int]:
    """Where the files of a partitioned merge start (row positions in the sort order): each
    file holds ``rows // 2`` to ``rows`` rows (the last may hold fewer) and ends at the
    coarsest Hilbert cell boundary in that window, the last of the best (fewer files), so a
    file is a run of whole cells, a compact region. A window inside one cell (more than
    ``rows // 2`` rows in a cell of level CELL_LEVEL) is cut at ``rows``.

    Args:
        cells: The non-empty cells of level CELL_LEVEL, in Hilbert order.
        counts: The rows of each of ``cells``.
        rows: The most rows in a file.

    Returns:
        The positions of the first row of every file but the first.
    """
    ends = np.cumsum(counts)  # the position after each cell
    total = int(ends[-1]) if len(ends) else 0
    inner = ends[:-1]  # the boundaries between cells
    # the bit length of c ^ next: the higher, the larger the cell that ends there
    score = np.frexp((cells[:-1] ^ cells[1:]).astype(np.float64))[1]
    least = max(1, rows // 2)
    cuts: list[int] = []
    start = 0
    while total - start > rows:
        lo = int(np.searchsorted(inner, start + least, side="left"))
        hi = int(np.searchsorted(inner, start + rows, side="right"))
        if hi > lo:
            window = score[lo:hi]
            start = int(inner[lo + len(window) - 1 - int(np.argmax(window[::-1]))])
        else:
            start += rows
        cuts.append(start)
    return cuts


def write_partitioned(folder, tables: Iterator[pa.Table], schema: pa.Schema, cuts: list[int],
                      row_group_rows: int = ROW_GROUP_ROWS,
                      row_group_min_rows: int = ROW_GROUP_MIN_ROWS) -> int:
    """Write sorted rows as a partitioned index: file ``PART.format(k)`` holds the rows from
    ``cuts[k - 1]`` to ``cuts[k]``, each a whole index (row groups, covering, zstd, geo
    metadata), one open at a time. The manifest ``MANIFEST`` is written last, one row per
    file (``MANIFEST_SCHEMA``: name, rows, the bbox of its chips' coverings, its min and
    max datetime, its platforms); then the part files an earlier merge left beyond these
    are removed. A reader that goes by the manifest never meets a missing file.

    Args:
        folder: The output store (a local folder or an S3 prefix).
        tables: Sorted tables with the sort columns (from the merge's sorter).
        schema: The index schema to write.
        cuts: Where each file but the first starts (`partition_cuts`).
        row_group_rows: The most rows in a row group.
        row_group_min_rows: The fewest rows in a row group but a file's last.

    Returns:
        The number of files written.

    Raises:
        OutputError: a file cannot be written.
    """
    ends = [*cuts, None]
    records: list[dict] = []
    position = 0
    stack: contextlib.ExitStack | None = None
    writer: _GroupWriter | None = None

    def close() -> None:
        nonlocal stack, writer
        assert stack is not None and writer is not None
        stack.close()
        records.append(writer.summary(PART.format(len(records))))
        stack, writer = None, None

    try:
        for table in tables:
            while len(table):
                if writer is None:
                    stack = contextlib.ExitStack()
                    sink = stack.enter_context(_output(folder, PART.format(len(records))))
                    writer = stack.enter_context(
                        _GroupWriter(sink, schema, row_group_rows, row_group_min_rows)
                    )
                end = ends[len(records)]
                take = len(table) if end is None else min(len(table), end - position)
                writer.add(table.slice(0, take))
                position += take
                table = table.slice(take)
                if position == end:
                    close()
        if writer is not None:
            close()
    except BaseException:
        if stack is not None:
            stack.__exit__(*sys.exc_info())  # the open file is removed (or its upload aborted)
        raise
    manifest = pa.Table.from_pylist(records, schema=MANIFEST_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(manifest, buffer, compression="zstd", store_schema=False)
    folder.write_bytes(MANIFEST, buffer.getvalue())
    names = {r["file"] for r in records}
    for key in list(folder.list("", ".parquet")):
        if _PART_NAME.fullmatch(key) and key not in names:
            _remove(folder, key)
    return len(records)


def _inside(source, key: str, folder) -> bool:
    """Whether input ``key`` of ``source`` lies in the output ``folder`` (an earlier
    partitioned merge into a folder under ``src``)."""
    if isinstance(source, LocalStore) and isinstance(folder, LocalStore):
        return source.path(key).resolve().is_relative_to(folder.root.resolve())
    if isinstance(source, S3Store) and isinstance(folder, S3Store):
        return source.bucket == folder.bucket and (
            not folder.prefix or source.key(key).startswith(folder.prefix + "/")
        )
    return False


def _remove(store, key: str) -> None:
    if isinstance(store, LocalStore):
        store.path(key).unlink(missing_ok=True)
    else:
        store.client.delete_object(Bucket=store.bucket, Key=store.key(key))


def _with_sort_columns(table: pa.Table, number: int) -> pa.Table:
    """The table with its sort keys: the Hilbert key of each chip's bbox centre, the input
    file's number and the row's number in it (ties broken by input order)."""
    bbox = table.column("bbox").combine_chunks()
    parts = [bbox.field(k).to_numpy(zero_copy_only=False) for k in ("xmin", "ymin", "xmax", "ymax")]
    lon, lat = bbox_centres(*parts)
    n = len(table)
    return (table.append_column(_KEY, pa.array(hilbert_keys(lon, lat), pa.uint64()))
            .append_column(_FILE, pa.array(np.full(n, number, np.int32)))
            .append_column(_ROW, pa.array(np.arange(n, dtype=np.int32))))


def _workdir(workdir: str | Path | None, target, name: str) -> Path:
    if workdir is not None:
        return Path(tempfile.mkdtemp(prefix=".stacchip-merge-", dir=workdir))
    if isinstance(target, LocalStore):
        target.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{name}.merge-", dir=target.root))
    return Path(tempfile.mkdtemp(prefix="stacchip-merge-"))


class _Sorter:
    """Rows in, rows out in sort order; in memory up to ``memory_rows`` rows, else through
    Hilbert-range partition files (an external sort by distribution)."""

    def __init__(self, schema: pa.Schema, memory_rows: int, make_dir) -> None:
        self.memory_rows = max(1, memory_rows)
        self._make_dir = make_dir
        self._dir: Path | None = None
        self._pending: list[pa.Table] = []
        self._buffered = 0
        self._parts: _Partitions | None = None

    @property
    def spilled(self) -> bool:
        return self._parts is not None

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._buffered += len(table)
        if self._buffered > self.memory_rows:
            if self._parts is None:
                self._dir = self._make_dir()
                self._parts = _Partitions(self._dir / "p", 0)
            self._parts.add(pa.concat_tables(self._pending))
            self._pending, self._buffered = [], 0

    def sorted(self) -> Iterator[pa.Table]:
        if self._parts is None:
            if self._pending:
                yield pa.concat_tables(self._pending).sort_by(_SORT)
            self._pending = []
            return
        if self._pending:
            self._parts.add(pa.concat_tables(self._pending))
            self._pending = []
        yield from self._parts.drain(self.memory_rows)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


class _Partitions:
    """Partitions by the next ``PARTITION_BITS`` bits of the Hilbert key after ``shift``
    bits, in key order when drained. Each spill writes one file per partition it has rows
    for, ``{folder}/{k}/{spill}.parquet``, closed at once: nothing about the spilled rows but
    a row count per partition stays in memory. (Open writers, one per partition, kept every
    row group's metadata: 16 kB each, 40 MiB for a 10M-row merge and 10x that at 100M.)"""

    def __init__(self, folder: Path, shift: int) -> None:
        self.folder, self.shift = folder, shift
        self.bits = min(PARTITION_BITS, BITS - shift)
        self.rows = np.zeros(1 << self.bits, np.int64)
        self.spills = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, table: pa.Table) -> None:
        keys = table.column(_KEY).to_numpy()
        part = (keys >> np.uint64(BITS - self.shift - self.bits)) & np.uint64((1 << self.bits) - 1)
        order = np.argsort(part, kind="stable")
        ordered = table.take(pa.array(order))
        bounds = np.searchsorted(part[order], np.arange((1 << self.bits) + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            chunk = ordered.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k]))
            # only the layouts its rows use: a partition's files together then hold each
            # item's blob about once, not once per spill
            i = chunk.schema.get_field_index("layouts")
            if i >= 0 and pa.types.is_dictionary(chunk.schema.field(i).type):
                chunk = chunk.set_column(i, "layouts", _compact(chunk.column(i)))
            folder = self.folder / str(k)
            folder.mkdir(exist_ok=True)
            # lz4, dictionary layouts: temporary files cost little to write and read back
            pq.write_table(chunk, folder / f"{self.spills:08d}.parquet", compression="lz4",
                           use_dictionary=_DICTIONARY, write_statistics=False)
            self.rows[k] += len(chunk)
        self.spills += 1

    def _files(self, k: int) -> list[Path]:
        return sorted((self.folder / str(k)).glob("*.parquet"))  # in spill order

    def drain(self, memory_rows: int) -> Iterator[pa.Table]:
        for k in np.flatnonzero(self.rows):
            files = self._files(int(k))
            if self.rows[k] <= memory_rows or self.shift + self.bits >= BITS:
                yield pa.concat_tables(
                    [pq.read_table(f, read_dictionary=_DICTIONARY) for f in files]
                ).sort_by(_SORT)
            else:  # still too large: split it by the next bits of the key, a quarter of
                # memory_rows at a time (few, large sub-partition files; the split's copies
                # of these rows stay well under those of a sort)
                sub = _Partitions(self.folder / f"{k}.d", self.shift + self.bits)
                pending: list[pa.Table] = []
                for f in files:
                    pending.append(pq.read_table(f, read_dictionary=_DICTIONARY))
                    f.unlink()
                    if sum(len(t) for t in pending) >= max(1, memory_rows // 4):
                        sub.add(pa.concat_tables(pending))
                        pending = []
                if pending:
                    sub.add(pa.concat_tables(pending))
                yield from sub.drain(memory_rows)
            shutil.rmtree(self.folder / str(k), ignore_errors=True)
            shutil.rmtree(self.folder / f"{k}.d", ignore_errors=True)


class _GroupWriter:
    """Sorted tables in, row groups of ``min_rows`` to ``rows`` rows (at most ROW_GROUP_BYTES)
    out, cut at the coarsest Hilbert cell boundary in that window. Cuts depend only on the
    rows' keys and value sizes, not on how the sorted rows arrived (in memory or through
    partitions): the bytes are the same."""

    def __init__(
        self, sink, schema: pa.Schema, rows: int, min_rows: int = ROW_GROUP_MIN_ROWS
    ) -> None:
        self.rows = max(1, rows)
        self.min_rows = max(1, min(min_rows, self.rows))
        self.schema = schema
        self.groups = 0
        self._pending: list[pa.Table] = []
        self._sizes: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._buffered = 0
        self._bounds: list[np.ndarray] = []  # per row group: the rows the overall bbox needs
        self._multi = False
        self._written = 0
        self._times: list = []  # per row group: min and max datetime (None: a null)
        self._platforms: set[str] = set()
        self.bbox: list[float] = []
        self._lons = np.zeros(LON_BINS, bool)  # the longitudes the footprints cover
        self._writer = pq.ParquetWriter(sink, _dictionary_schema(schema), compression="zstd",
                                        use_dictionary=_DICTIONARY, write_page_index=True,
                                        write_statistics=STATISTICS, store_schema=False)

    def __enter__(self):
        return self

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._sizes.append(_row_bytes(table))
        self._keys.append(table.column(_KEY).to_numpy())
        self._buffered += len(table)
        while self._buffered and (size := self._group_rows(final=False)):
            self._write(size)
        # the rows left for the next group are a slice of ``table``: copied, so the rest of
        # it (a whole sorted partition, up to memory_rows rows) is freed before the next
        if self._pending and len(self._pending[-1]) < len(table):
            rest = pa.concat_tables(self._pending)
            self._pending = [rest.take(pa.array(np.arange(len(rest))))]

    def _group_rows(self, final: bool) -> int:
        """The rows of the next row group, or 0 when more rows may still join it."""
        sizes = np.concatenate(self._sizes) if len(self._sizes) > 1 else self._sizes[0]
        keys = np.concatenate(self._keys) if len(self._keys) > 1 else self._keys[0]
        self._sizes, self._keys = [sizes], [keys]
        over = int(np.searchsorted(np.cumsum(sizes), ROW_GROUP_BYTES, side="right"))
        most = max(1, min(self.rows, over))
        if len(sizes) <= most:  # the next group may still grow (or these are the last rows)
            return len(sizes) if final else 0
        least = min(self.min_rows, most)
        # a cut before row i scores the bit length of key[i-1] ^ key[i]: the higher, the
        # larger the Hilbert cell that ends there; the last of the best cuts (fewer groups)
        change = keys[least - 1:most] ^ keys[least:most + 1]
        score = np.frexp(change.astype(np.float64))[1]  # keys < 2**48: exact as floats
        return least + len(score) - 1 - int(np.argmax(score[::-1]))

    def _write(self, size: int) -> None:
        table = pa.concat_tables(self._pending)
        group, rest = table.slice(0, size), table.slice(size)
        self._pending = [rest] if len(rest) else []
        self._sizes = [self._sizes[0][size:]]
        self._keys = [self._keys[0][size:]]
        self._buffered = len(rest)
        group = group.drop_columns([_KEY, _FILE, _ROW])
        bbox = group.column("bbox").combine_chunks()
        b = np.stack(
            [
                bbox.field(k).to_numpy(zero_copy_only=False)
                for k in ("xmin", "ymin", "xmax", "ymax")
            ],
            1,
        )
        self._multi = self._multi or _multipolygons(group.column("geometry"))
        self._bounds.append(_partial_bounds(b))
        self._written += len(group)
        self._lons |= _longitudes(b, group.column("geometry"))
        when = group.column("datetime")
        if when.null_count:
            self._times.append(None)
        else:
            span = pc.min_max(when)
            self._times.append((span["min"].as_py(), span["max"].as_py()))
        platform = group.column("platform")
        if pa.types.is_dictionary(platform.type):
            platform = platform.cast(platform.type.value_type)
        self._platforms.update(pc.unique(platform).to_pylist())
        columns = [_compact(group.column(f.name)) if f.name in _DICTIONARY else group.column(f.name)
                   for f in self.schema]
        self._writer.write_table(
            pa.Table.from_arrays(columns, schema=self._writer.schema), row_group_size=size
        )
        self.groups += 1

    def __exit__(self, kind, value, tb):
        if kind is None:
            while self._buffered:
                self._write(self._group_rows(final=True))
            bounds = np.concatenate(self._bounds) if self._bounds else np.empty((0, 4))
            meta = geo_metadata(bounds)
            self.bbox = meta["columns"]["geometry"].get("bbox", [])
            meta["columns"]["geometry"]["geometry_types"] = (
                ["Polygon", "MultiPolygon"] if self._multi else ["Polygon"]
            )
            self._writer.add_key_value_metadata({"geo": json.dumps(meta)})
        self._writer.close()
        return False


    def summary(self, name: str) -> dict:
        """The manifest row of the file written (after it is closed): its name, rows, row
        groups, bbox (latitudes those of its geo metadata; longitudes the shortest arc that
        holds every footprint, west > east across 180 degrees), datetime span (None when a
        row has none: the file is then never pruned by time) and platforms."""
        bbox: list[float | None] = [*self.bbox] if self.bbox else [None] * 4
        if self.bbox:  # the shortest arc of longitudes: west > east across 180 degrees
            bbox[0], bbox[2] = _arc(self._lons)
        times = self._times if self._times and None not in self._times else None
        return {
            "file": name,
            "rows": self._written,
            "row_groups": self.groups,
            **dict(zip(("xmin", "ymin", "xmax", "ymax"), bbox)),
            "datetime_min": min(t[0] for t in times) if times else None,
            "datetime_max": max(t[1] for t in times) if times else None,
            "platforms": sorted(self._platforms),
        }


def _longitudes(b: np.ndarray, geometry: pa.ChunkedArray) -> np.ndarray:
    """Which of LON_BINS longitude bins the rows' footprints cover, rounded outwards. A
    covering across 180 degrees is [west, 180] and [-180, east] (RFC 7946), or spans -180 to
    180 (core.index.covering): those few rows' footprints are parsed for their parts'
    bounds, so that a file holding chips on the antimeridian does not span the world."""
    xmin, xmax = b[:, 0], b[:, 2]
    world = (xmin <= -180) & (xmax >= 180)
    wrapped = xmin > xmax
    plain = ~world & ~wrapped
    starts = [xmin[plain], xmin[wrapped], np.full(int(wrapped.sum()), -180.0)]
    ends = [xmax[plain], np.full(int(wrapped.sum()), 180.0), xmax[wrapped]]
    if world.any():
        wkb = geometry.take(pa.array(np.flatnonzero(world))).to_numpy(zero_copy_only=False)
        parts = shapely.bounds(shapely.get_parts(shapely.from_wkb(wkb)))
        starts.append(parts[:, 0])
        ends.append(parts[:, 2])
    start, end = np.concatenate(starts), np.concatenate(ends)
    valid = np.isfinite(start) & np.isfinite(end)
    lo, hi = (np.clip(np.floor((v[valid] + 180) / 360 * LON_BINS), 0, LON_BINS - 1).astype(np.int64)
              for v in (start, end))
    # +1 where a footprint's bins start, -1 after they end: covered where the sum is positive
    steps = np.bincount(lo, minlength=LON_BINS + 1) - np.bincount(hi + 1, minlength=LON_BINS + 1)
    return np.cumsum(steps[:LON_BINS]) > 0


def _arc(covered: np.ndarray) -> tuple[float, float]:
    """(west, east) of the shortest arc holding every covered bin: the complement of the
    largest gap, west > east when it crosses 180 degrees (not when it need not)."""
    bins = np.flatnonzero(covered)
    width = 360 / LON_BINS
    if not len(bins):
        return -180.0, 180.0
    gaps = np.diff(bins) - 1
    around = bins[0] + LON_BINS - bins[-1] - 1  # the gap across 180 degrees
    if not len(gaps) or around >= gaps.max():
        west, east = bins[0], bins[-1]
    else:
        k = int(np.argmax(gaps))
        west, east = bins[k + 1], bins[k]
    # a hair outwards: a footprint's edge on a bin's edge is inside whatever the rounding
    return (max(-180.0, -180 + west * width - 1e-9), min(180.0, -180 + (east + 1) * width + 1e-9))


def _row_bytes(table: pa.Table) -> np.ndarray:
    """Each row's size in the written file before compression, roughly: fixed-width values
    plus string and binary lengths (dictionary columns cost little per row and are left out)."""
    sizes = np.zeros(len(table), np.int64)
    for field in table.schema:
        if field.name in _DICTIONARY or field.name.startswith("__"):
            continue
        if pa.types.is_binary(field.type) or pa.types.is_string(field.type):
            lengths = pc.binary_length(table.column(field.name)).fill_null(0)
            sizes += lengths.to_numpy().astype(np.int64)
        elif pa.types.is_struct(field.type):
            sizes += sum(f.type.bit_width // 8 for f in field.type)
        else:
            sizes += max(field.type.bit_width // 8, 1)
    return sizes


def _partial_bounds(b: np.ndarray) -> np.ndarray:
    """The few rows of ``b`` whose overall bbox (core.index.overall_bbox, which needs only
    extremes) equals that of all of ``b``: the file's bbox without keeping every row's."""
    if not len(b):
        return b
    crossing = b[:, 0] > b[:, 2]
    west = np.where(b[:, 0] >= 0, b[:, 0], b[:, 0] + 360)
    east = np.where(crossing | (b[:, 2] < 0), b[:, 2] + 360, b[:, 2])
    keep = {int(np.argmin(b[:, 1])), int(np.argmax(b[:, 3])), int(np.argmin(b[:, 0])),
            int(np.argmax(b[:, 2])), int(np.argmin(west)), int(np.argmax(east))}
    return b[sorted(keep)]


def _multipolygons(geometry: pa.ChunkedArray) -> bool:
    """Whether any WKB value is not a Polygon (shapely writes little-endian WKB: byte 0 is
    1 and byte 1 the type; anything else counts as not a Polygon)."""
    head = pc.binary_slice(geometry, 0, 2)
    return bool(pc.any(pc.not_equal(head, pa.scalar(b"\x01\x03", pa.binary()))).as_py() or False)


def _dictionary_schema(schema: pa.Schema) -> pa.Schema:
    """The written schema: dictionary-encoded columns as dictionaries in memory, so a row
    group holds each item's layouts once (store_schema=False: readers see plain columns)."""
    fields = [
        pa.field(f.name, pa.dictionary(pa.int32(), f.type), f.nullable)
        if f.name in _DICTIONARY
        else f
        for f in schema
    ]
    return pa.schema(fields)


def _compact(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """One dictionary array holding only the values its rows use, in the order they first
    appear (so the bytes do not depend on how the rows were buffered)."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    indices = array.indices
    valid = indices.is_valid().to_numpy(zero_copy_only=False)
    values = indices.fill_null(0).to_numpy(zero_copy_only=False)
    used, first, inverse = np.unique(values[valid], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # dictionary entries by first appearance
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    remapped = np.zeros(len(values), np.int32)
    remapped[valid] = rank[inverse]
    mask = ~valid if not valid.all() else None
    return pa.DictionaryArray.from_arrays(pa.array(remapped, pa.int32(), mask=mask),
                                          array.dictionary.take(pa.array(used[order], pa.int64())))


def _same_object(source, key: str, target, name: str) -> bool:
    """Whether input ``key`` of ``source`` is the output ``name`` of ``target``."""
    if isinstance(source, LocalStore) and isinstance(target, LocalStore):
        return source.path(key).resolve() == target.path(name).resolve()
    if isinstance(source, S3Store) and isinstance(target, S3Store):
        return source.bucket == target.bucket and source.key(key) == target.key(name)
    return False


class _output:
    """The sink the writer streams into: a temporary sibling renamed into place, or an S3
    multipart upload; published on success, removed (aborted) on any error."""

    def __init__(self, store, name: str) -> None:
        self.store, self.name = store, name

    def __enter__(self):
        if isinstance(self.store, LocalStore):
            from stacchip_core.io.files import publishing, remove_stale

            target = self.store.path(self.name)
            if target.parent.is_dir():
                remove_stale(target.parent, recursive=False)  # what a killed merge left beside dst
            self._ctx = publishing(target)
            return str(self._ctx.__enter__())  # the parquet writer opens and closes it
        if isinstance(self.store, S3Store):
            self._ctx = _MultipartUpload(self.store, self.name)
            return self._ctx.__enter__()
        raise OutputError(f"cannot write a merged index to {self.store!r}")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class _MultipartUpload(io.RawIOBase):
    """A writable file that is an S3 multipart upload: parts go up as they fill, the object
    appears only when the upload completes (a killed merge leaves no object; a rerun aborts
    the incomplete uploads an earlier run of the same key left)."""

    def __init__(self, store: S3Store, name: str) -> None:
        super().__init__()
        self.client, self.bucket, self.key = store.client, store.bucket, store.key(name)
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self._size = 0
        self._upload = None

    def __enter__(self):
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.key
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Key"] == self.key:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=self.key, UploadId=upload["UploadId"]
                    )
        self._upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)[
            "UploadId"
        ]
        return self

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, data) -> int:
        self._buffer += data
        self._size += len(data)
        if len(self._buffer) >= _PART_BYTES:
            self._send()
        return len(data)

    def _send(self) -> None:
        number = len(self._parts) + 1
        part = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload,
                                       PartNumber=number, Body=bytes(self._buffer))
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})
        self._buffer.clear()

    def close(self) -> None:  # the parquet writer closes its sink; completing waits for __exit__
        pass

    def __exit__(self, kind, value, tb):
        if kind is None:
            if self._buffer or not self._parts:
                self._send()
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload,
                MultipartUpload={"Parts": self._parts},
            )
        else:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload
            )
        super().close()
        return False


def _read(store, key: str) -> pa.Table:
    try:
        if isinstance(store, LocalStore):
            return pq.read_table(store.path(key), read_dictionary=["layouts"])
        return pq.read_table(io.BytesIO(store.read_bytes(key)), read_dictionary=["layouts"])
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(
            redact_text(f"{store.url(key)} is not a readable parquet file: {exc}")
        ) from exc


def _merged_schema(store, first_key: str) -> pa.Schema:
    # the index schema, plus any extra columns a plugin added (taken from the first file)
    fields = {f.name: f for f in SCHEMA}
    for field in _read(store, first_key).schema:
        fields.setdefault(field.name, field)
    return pa.schema(list(fields.values()))


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing:
        raise IndexFormatError(f"{where} is not a stacchip index: no column {', '.join(missing)}")
    for name in NOT_NULL:
        nulls = table.column(name).null_count
        if nulls:
            raise IndexFormatError(f"{where} is not a stacchip index: {nulls} rows without {name}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            empty = pa.nulls(len(table), field.type)
            columns.append(pc.dictionary_encode(empty) if field.name == "layouts" else empty)
            continue
        col = table.column(field.name)
        if field.name == "layouts":  # kept dictionary encoded: one blob per item in memory
            columns.append(
                col
                if pa.types.is_dictionary(col.type)
                else pc.dictionary_encode(col.cast(field.type))
            )
            continue
        try:
            columns.append(col if col.type == field.type else col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise IndexFormatError(
                f"{where}: column {field.name!r} is {col.type}, expected {field.type}: {exc}"
            ) from exc
    if pc.any(pc.equal(columns[schema.get_field_index("chipid")], "")).as_py():
        raise IndexFormatError(f"{where} is not a stacchip index: empty chip ids")
    return pa.Table.from_arrays(columns, names=schema.names)
