"""Merge many per-item index files into one GeoParquet file."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from stacchip_core.errors import StacchipError
from stacchip_core.core.index import SCHEMA, with_geo_metadata
from stacchip_core.io.store import LocalStore, open_store

log = logging.getLogger(__name__)


def merge(src: str | Path, dst: str | Path, progress: bool | None = None) -> dict:
    """Combine every ``*.parquet`` under ``src`` (a folder or ``s3://bucket/prefix``) into one
    GeoParquet file ``dst`` (local or s3://).

    Files are read in sorted key order and streamed, so reruns give the same file and memory
    stays at one input's size; ``dst`` is published only when complete (rename, or one S3
    PUT). ``progress=None`` shows a bar on terminals only. Returns counts and the output URL.
    """
    source = open_store(src)
    dst = str(dst)
    keys = list(source.list("", ".parquet"))
    if isinstance(source, LocalStore):  # a merged file written inside src is not an input
        keys = [k for k in keys if source.path(k).resolve() != Path(dst).resolve()]
    if not keys:
        raise StacchipError(f"no .parquet index files under {src}")
    parent, _, name = dst.rstrip("/").rpartition("/")
    target = open_store(parent or ".")
    schema = _merged_schema(source, keys[0])
    rows = 0
    with tempfile.TemporaryDirectory(prefix="stacchip-merge-") as tmpdir:
        tmp = Path(tmpdir) / name
        # the overall bbox is optional in GeoParquet: leave it out and stream in one pass
        geo_schema = with_geo_metadata(schema.empty_table(), np.empty((0, 4))).schema
        with pq.ParquetWriter(tmp, geo_schema, compression="zstd") as writer:
            bar = tqdm(keys, desc="merge", unit="file", disable=None if progress is None else not progress)
            for key in bar:
                table = _conform(_read(source, key), schema, source.url(key))
                rows += len(table)
                writer.write_table(table)
        url = target.put_file(name, tmp)
    log.info("merged %d rows from %d files into %s", rows, len(keys), url)
    return {"files": len(keys), "rows": rows, "output": url}


def _read(store, key: str) -> pa.Table:
    try:
        if isinstance(store, LocalStore):
            return pq.read_table(store.path(key))
        return pq.read_table(io.BytesIO(store.read_bytes(key)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise StacchipError(f"{store.url(key)} is not a readable parquet file: {exc}") from None


def _merged_schema(store, first_key: str) -> pa.Schema:
    # the index schema, plus any extra columns a plugin added (taken from the first file)
    fields = {f.name: f for f in SCHEMA}
    for field in _read(store, first_key).schema:
        fields.setdefault(field.name, field)
    return pa.schema(list(fields.values()))


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(len(table), field.type))
            continue
        col = table.column(field.name)
        try:
            columns.append(col if col.type == field.type else col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise StacchipError(f"{where}: column {field.name!r} is {col.type}, expected {field.type}: {exc}") from None
    return pa.Table.from_arrays(columns, schema=schema)
