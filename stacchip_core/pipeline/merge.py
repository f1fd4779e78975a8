"""Merge many per-item index files into one GeoParquet file.

Integrity rules (what a careless or hostile input meets):

- ``dst`` inside ``src`` (as a path, ``file://`` or ``s3://``) is never an input: reruns
  give the same file, not twice the rows.
- every input must be a stacchip index: the columns in `REQUIRED` present, and no
  null in `NOT_NULL` (a parquet file of something else is an IndexFormatError naming
  the file, before anything is published).
- the output is streamed once: locally into a temporary sibling of ``dst`` renamed into
  place; on S3 as a multipart upload that is completed only when the file is whole (and
  aborted otherwise). Nothing is staged in ``$TMPDIR``.
- rows are written in row groups of `ROW_GROUP_ROWS` whatever the number of inputs
  (one row group per input made a 2,000-file merge 190x slower to read: 1.7 s vs 0.009 s).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from stacchip_core.core.index import SCHEMA, with_geo_metadata
from stacchip_core.errors import IndexFormatError, NotFoundError, OutputError
from stacchip_core.io.store import LocalStore, S3Store, open_store
from stacchip_core.io.urls import redact_text
from stacchip_core.types import Report

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 128 * 1024
# the columns without which a row is not a chip, and those that must have a value
REQUIRED = ("chipid", "platform", "item_id", "item_href", "chip_index_x", "chip_index_y", "chip_size", "geometry")
NOT_NULL = ("chipid", "platform", "item_href", "chip_index_x", "chip_index_y", "chip_size", "geometry")
_PART_BYTES = 16 * 1024 * 1024  # S3 multipart: parts of 16 MiB (the minimum is 5 MiB)


@dataclass(frozen=True)
class MergeReport(Report):
    """What a merge wrote: ``rows`` chips from ``files`` index files into ``output`` (a URL)."""

    files: int
    rows: int
    output: str


def merge(src: str | Path, dst: str | Path, progress: bool | None = None,
          row_group_rows: int = ROW_GROUP_ROWS) -> MergeReport:
    """Combine every ``*.parquet`` under ``src`` (a folder or ``s3://bucket/prefix``) into one
    GeoParquet file ``dst`` (local or s3://).

    Files are read in sorted key order and streamed, so reruns give the same file and memory
    stays at one row group; ``dst`` is published only when complete (see the module doc).
    ``progress=None`` shows a bar on terminals only. Returns the counts and the output URL.
    """
    source = open_store(src)
    dst = str(dst)
    parent, _, name = dst.rstrip("/").rpartition("/")
    if not name:
        raise OutputError(f"merge output {dst!r} names no file")
    target = open_store(parent or ".")
    keys = [k for k in source.list("", ".parquet") if not _same_object(source, k, target, name)]
    if not keys:
        raise NotFoundError(f"no .parquet index files under {src}")
    schema = _merged_schema(source, keys[0])
    # the overall bbox is optional in GeoParquet: leave it out and stream in one pass
    geo_schema = with_geo_metadata(schema.empty_table(), np.empty((0, 4))).schema
    rows = 0
    bar = tqdm(keys, desc="merge", unit="file", disable=None if progress is None else not progress)
    with _output(target, name) as sink, pq.ParquetWriter(sink, geo_schema, compression="zstd") as writer:
        pending: list[pa.Table] = []
        buffered = 0
        for key in bar:
            table = _conform(_read(source, key), schema, source.url(key))
            rows += len(table)
            pending.append(table)
            buffered += len(table)
            if buffered >= row_group_rows:
                buffered = _flush(writer, pending, row_group_rows, final=False)
        _flush(writer, pending, row_group_rows, final=True)
    url = target.url(name)
    log.info("merged %d rows from %d files into %s", rows, len(keys), url)
    return MergeReport(len(keys), rows, url)


def _flush(writer: pq.ParquetWriter, pending: list[pa.Table], size: int, final: bool) -> int:
    """Write whole row groups of ``size`` rows from ``pending`` (all of it when ``final``);
    what is left stays in ``pending``. Returns the rows still buffered."""
    if not pending:
        return 0
    table = pa.concat_tables(pending)
    pending.clear()
    whole = len(table) if final else len(table) // size * size
    if whole:
        writer.write_table(table.slice(0, whole), row_group_size=size)
    if whole < len(table):
        pending.append(table.slice(whole))
    return len(table) - whole


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
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.key)
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Key"] == self.key:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload["UploadId"])
        self._upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
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
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload,
                                                  MultipartUpload={"Parts": self._parts})
        else:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload)
        super().close()
        return False


def _read(store, key: str) -> pa.Table:
    try:
        if isinstance(store, LocalStore):
            return pq.read_table(store.path(key))
        return pq.read_table(io.BytesIO(store.read_bytes(key)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(redact_text(f"{store.url(key)} is not a readable parquet file: {exc}")) from exc


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
            columns.append(pa.nulls(len(table), field.type))
            continue
        col = table.column(field.name)
        try:
            columns.append(col if col.type == field.type else col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise IndexFormatError(f"{where}: column {field.name!r} is {col.type}, expected {field.type}: {exc}") from exc
    if pc.any(pc.equal(columns[schema.get_field_index("chipid")], "")).as_py():
        raise IndexFormatError(f"{where} is not a stacchip index: empty chip ids")
    return pa.Table.from_arrays(columns, schema=schema)
