"""Decoding only the data pages of a Parquet column chunk that hold given rows.

pyarrow 26 decodes whole column chunks (it has no read of a row range: Arrow C++ GH-45284,
GH-38865), so a query that keeps 1,000 rows of a 92,000-row group decoded all nine 1 MiB pages
of its ``geometry`` and all five of ``chipid``. Here the pages of a fetched chunk are found
from their headers, and pyarrow decodes only those holding the kept rows, as a small Parquet
file made of them (plus the dictionary page) with a footer written for it. Data pages are
self-contained, so any subset of a chunk's pages is a valid chunk.

Only those pages are fetched when the file has a page index (the merge writes one): the
chunk's offset index gives each page's offset, size and first row. pyarrow's metadata says
whether a chunk has one, not where, and parsing the whole footer's Thrift in Python to learn
it took 75 ms (190 kB, the 10M-chip index), so ``offset_index_at`` finds the one chunk's entry
in the footer's bytes by its ``data_page_offset`` instead. Files without a page index have
their chunks fetched whole and split by the page headers (``chunk_pages``).

Used for top-level columns without repetition (every column of a stacchip index but the
``bbox`` covering, which a query's first pass decodes whole anyway).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# --- Thrift compact protocol: a struct is {field id: (type, value)} --------------------------

_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(buf: bytes, pos: int, t: int) -> tuple[Any, int]:
    if t in (_TRUE, _FALSE):  # an element of a list: one byte
        return buf[pos] == 1, pos + 1
    if t == _BYTE:
        return struct.unpack_from("b", buf, pos)[0], pos + 1
    if t in (_I16, _I32, _I64):
        n, pos = _varint(buf, pos)
        return _unzigzag(n), pos
    if t == _DOUBLE:
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if t == _BINARY:
        n, pos = _varint(buf, pos)
        return bytes(buf[pos:pos + n]), pos + n
    if t in (_LIST, _SET):
        head = buf[pos]
        pos += 1
        size, et = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        items = []
        for _ in range(size):
            v, pos = _value(buf, pos, et)
            items.append(v)
        return (et, items), pos
    if t == _MAP:
        size, pos = _varint(buf, pos)
        if not size:
            return (0, 0, []), pos
        kt, vt = buf[pos] >> 4, buf[pos] & 0x0F
        pos += 1
        pairs = []
        for _ in range(size):
            k, pos = _value(buf, pos, kt)
            v, pos = _value(buf, pos, vt)
            pairs.append((k, v))
        return (kt, vt, pairs), pos
    if t == _STRUCT:
        return _struct(buf, pos)
    raise ValueError(f"unknown Thrift compact type {t}")


def _struct(buf: bytes, pos: int, last: int = 0) -> tuple[dict[int, tuple[int, Any]], int]:
    """A struct's fields from ``pos`` to its stop byte; ``last`` is the field id read
    before ``pos`` (0 at the struct's start)."""
    fields: dict[int, tuple[int, Any]] = {}
    while True:
        head = buf[pos]
        pos += 1
        if head == _STOP:
            return fields, pos
        delta, t = head >> 4, head & 0x0F
        if delta:
            fid = last + delta
        else:
            n, pos = _varint(buf, pos)
            fid = _unzigzag(n)
        if t in (_TRUE, _FALSE):
            fields[fid] = (_TRUE, t == _TRUE)
        else:
            v, pos = _value(buf, pos, t)
            fields[fid] = (t, v)
        last = fid


def _put_varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _put_value(out: bytearray, t: int, v: Any) -> None:
    if t in (_TRUE, _FALSE):
        out.append(1 if v else 2)
    elif t == _BYTE:
        out += struct.pack("b", v)
    elif t in (_I16, _I32, _I64):
        _put_varint(out, _zigzag(v))
    elif t == _DOUBLE:
        out += struct.pack("<d", v)
    elif t == _BINARY:
        _put_varint(out, len(v))
        out += v
    elif t in (_LIST, _SET):
        et, items = v
        if len(items) < 15:
            out.append(len(items) << 4 | et)
        else:
            out.append(0xF0 | et)
            _put_varint(out, len(items))
        for item in items:
            _put_value(out, et, item)
    elif t == _MAP:
        kt, vt, pairs = v
        _put_varint(out, len(pairs))
        if pairs:
            out.append(kt << 4 | vt)
            for k, item in pairs:
                _put_value(out, kt, k)
                _put_value(out, vt, item)
    elif t == _STRUCT:
        _put_struct(out, v)
    else:
        raise ValueError(f"unknown Thrift compact type {t}")


def _put_struct(out: bytearray, fields: dict[int, tuple[int, Any]]) -> None:
    last = 0
    for fid in sorted(fields):
        t, v = fields[fid]
        wire = (_TRUE if v else _FALSE) if t in (_TRUE, _FALSE) else t
        if 0 < fid - last <= 15:
            out.append((fid - last) << 4 | wire)
        else:
            out.append(wire)
            _put_varint(out, _zigzag(fid))
        if t not in (_TRUE, _FALSE):
            _put_value(out, t, v)
        last = fid
    out.append(_STOP)


def encode(fields: dict[int, tuple[int, Any]]) -> bytes:
    """A Thrift compact struct's bytes (``decode``'s inverse).

    Args:
        fields: ``{field id: (type, value)}``, as ``decode`` gives.

    Returns:
        The struct's bytes.
    """
    out = bytearray()
    _put_struct(out, fields)
    return bytes(out)


def decode(buf: bytes) -> dict[int, tuple[int, Any]]:
    """A Thrift compact struct as ``{field id: (type, value)}``.

    Args:
        buf: Bytes that begin with the struct.

    Returns:
        Its fields (a struct's value is such a dict, a list's ``(element type, items)``).

    Raises:
        ValueError: An unknown type.
        IndexError: The bytes end inside the struct.
    """
    return _struct(buf, 0)[0]


# --- pages of a chunk ----------------------------------------------------------------------

# parquet.thrift field ids and enums
_FMD_VERSION, _FMD_SCHEMA, _FMD_ROWS, _FMD_GROUPS, _FMD_CREATED = 1, 2, 3, 4, 6
_SE_REPETITION, _SE_NAME, _SE_CHILDREN = 3, 4, 5
_RG_COLUMNS, _RG_BYTES, _RG_ROWS = 1, 2, 3
_PH_TYPE, _PH_COMPRESSED, _PH_V1, _PH_V2 = 1, 3, 5, 8
_DATA, _DICTIONARY, _DATA_V2 = 0, 2, 3
_REPEATED = 2
_PHYSICAL = {"BOOLEAN": 0, "INT32": 1, "INT64": 2, "INT96": 3, "FLOAT": 4, "DOUBLE": 5,
             "BYTE_ARRAY": 6, "FIXED_LEN_BYTE_ARRAY": 7}
_ENCODINGS = {"PLAIN": 0, "PLAIN_DICTIONARY": 2, "RLE": 3, "BIT_PACKED": 4,
              "DELTA_BINARY_PACKED": 5, "DELTA_LENGTH_BYTE_ARRAY": 6, "DELTA_BYTE_ARRAY": 7,
              "RLE_DICTIONARY": 8, "BYTE_STREAM_SPLIT": 9}
_CODECS = {"UNCOMPRESSED": 0, "SNAPPY": 1, "GZIP": 2, "LZO": 3, "BROTLI": 4, "LZ4": 5,
           "ZSTD": 6, "LZ4_RAW": 7}


def flat_columns(footer: bytes) -> dict[str, dict[int, tuple[int, Any]]]:
    """The top-level columns without repetition, with their schema elements, from a
    footer's Thrift bytes: only the schema is parsed (it comes before the row groups).

    Args:
        footer: The file metadata's bytes (without the length and magic after them).

    Returns:
        ``{column name: schema element}``, and the root element under ``""``.

    Raises:
        KeyError: The footer has no schema.
        IndexError: The bytes end inside it.
    """
    fields: dict[int, tuple[int, Any]] = {}
    pos, last = 0, 0
    while True:  # version (1) and schema (2), then stop
        head = footer[pos]
        pos += 1
        if head == _STOP or (head >> 4) == 0:
            break
        fid, t = last + (head >> 4), head & 0x0F
        if fid > _FMD_SCHEMA:
            break
        v, pos = _value(footer, pos, t)
        fields[fid] = (t, v)
        last = fid
    schema = fields[_FMD_SCHEMA][1][1]
    out: dict[str, dict[int, tuple[int, Any]]] = {}
    i = 1
    for _ in range(schema[0].get(_SE_CHILDREN, (0, 0))[1]):
        element = schema[i]
        children = element.get(_SE_CHILDREN, (0, 0))[1]
        if not children and element.get(_SE_REPETITION, (0, 0))[1] != _REPEATED:
            out[element[_SE_NAME][1].decode()] = element
        i += 1
        stack = children
        while stack:  # a group's subtree (the covering): its leaves are not served
            stack += schema[i].get(_SE_CHILDREN, (0, 0))[1] - 1
            i += 1
    out[""] = schema[0]  # the root, for the files made here
    return out


@dataclass(frozen=True)
class ChunkPages:
    """The pages of one fetched column chunk: the dictionary page (bytes, or None) and each
    data page's bytes and first row."""

    dictionary: bytes | None
    pages: tuple[bytes, ...]  # b"" for a page that was not fetched
    first_rows: np.ndarray  # int64, one per data page, then the chunk's rows

    def pages_of(self, rows: np.ndarray) -> np.ndarray:
        """The data pages holding ``rows``.

        Args:
            rows: Sorted row numbers within the chunk.

        Returns:
            The page numbers, sorted and unique.
        """
        return pages_holding(self.first_rows, rows)


def pages_holding(first_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The data pages of a chunk that hold ``rows``.

    Args:
        first_rows: Each page's first row, then the chunk's rows.
        rows: Sorted row numbers within the chunk.

    Returns:
        The page numbers, sorted and unique.
    """
    return np.unique(np.searchsorted(first_rows, rows, side="right") - 1)


def chunk_pages(chunk: bytes) -> ChunkPages | None:
    """The pages of a flat column chunk from their headers.

    Args:
        chunk: The chunk's bytes, from its dictionary page (or first data page) on.

    Returns:
        Its pages, or None when a page is neither a data page nor a dictionary page (then
        the chunk is decoded whole).

    Raises:
        IndexError: The bytes end inside a page header.
    """
    pos, dictionary, rows = 0, None, 0
    pages: list[bytes] = []
    first: list[int] = []
    while pos < len(chunk):
        header, end = _struct(chunk, pos)
        size = end + header[_PH_COMPRESSED][1]
        kind = header[_PH_TYPE][1]
        if kind == _DICTIONARY and not pages and dictionary is None:
            dictionary = chunk[pos:size]
        elif kind in (_DATA, _DATA_V2):
            # a flat column: a v1 page holds one value (or null) per row
            n = header[_PH_V1][1][1][1] if kind == _DATA else header[_PH_V2][1][3][1]
            pages.append(chunk[pos:size])
            first.append(rows)
            rows += n
        else:
            return None
        pos = size
    return ChunkPages(dictionary, tuple(pages), np.array([*first, rows], np.int64))


# ColumnMetaData.data_page_offset (field 9, i64) follows total_compressed_size (7), or
# key_value_metadata (8) when a writer adds it: its field header is one of these bytes
_DATA_PAGE_OFFSET_HEADS = (0x26, 0x16)
_CMD_DATA_PAGE_OFFSET = 9
_CC_META, _CC_OFFSET_INDEX, _CC_OFFSET_INDEX_LENGTH = 3, 4, 5
_OI_PAGES, _PL_OFFSET, _PL_SIZE, _PL_FIRST_ROW = 1, 1, 2, 3


def _encoded_i64(n: int) -> bytes:
    out = bytearray()
    _put_varint(out, _zigzag(n))
    return bytes(out)


def offset_index_at(footer: bytes, data_page_offset: int,
                    near: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """Where the offset index of one column chunk lies, found in the footer's Thrift without
    parsing the row groups before it.

    A chunk's ``data_page_offset`` is a position in the file, so its encoding occurs once or
    twice in the footer (``file_offset`` may hold the same value). At each occurrence after a
    field-9 header the rest of the chunk's ColumnMetaData is parsed, then the ColumnChunk's
    fields after it (4 and 5: the offset index's offset and length). Parsing the whole footer
    instead took 75 ms for 1,111 row groups (100M chips); a search is under 1 ms. The caller
    checks what it reads there (``offset_index``'s first page must start the chunk).

    Args:
        footer: The file metadata's Thrift bytes.
        data_page_offset: The chunk's first data page, from pyarrow's metadata.
        near: ``(start, end)``: footer bytes to search first (row group ``g`` of ``n`` lies
            near ``g / n`` of a footer); the whole footer is searched when it is not there.
            Searching all of a 1.9 MB footer (100M chips) took 0.5 ms per chunk.

    Returns:
        ``(offset, length)`` of the chunk's offset index, or None when it has none or it
        cannot be told.
    """
    pattern = _encoded_i64(data_page_offset)
    if near is not None:
        found = _offset_index_in(footer, pattern, data_page_offset, max(1, near[0]), near[1])
        if found is not None:
            return found
    return _offset_index_in(footer, pattern, data_page_offset, 1, len(footer))


def _offset_index_in(footer: bytes, pattern: bytes, data_page_offset: int, start: int,
                     end: int) -> tuple[int, int] | None:
    at = footer.find(pattern, start, end)
    while at > 0:
        if footer[at - 1] in _DATA_PAGE_OFFSET_HEADS:
            try:
                _, meta_end = _struct(footer, at + len(pattern), _CMD_DATA_PAGE_OFFSET)
                chunk, _ = _struct(footer, meta_end, _CC_META)
            except (IndexError, ValueError, struct.error):
                chunk = {}
            offset = chunk.get(_CC_OFFSET_INDEX)
            length = chunk.get(_CC_OFFSET_INDEX_LENGTH)
            if (offset is not None and length is not None and offset[0] == _I64
                    and length[0] == _I32 and offset[1] > data_page_offset and length[1] > 0):
                return offset[1], length[1]
        at = footer.find(pattern, at + 1, end)
    return None


def offset_index(buf: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The data pages of a column chunk, from its offset index.

    Args:
        buf: The offset index's bytes.

    Returns:
        Each page's offset in the file, size (its header included) and first row, as int64.

    Raises:
        KeyError: The struct has no page locations.
        ValueError: Not a well-formed offset index (no pages, or rows or offsets not
            increasing).
        IndexError: The bytes end inside it.
    """
    pages = decode(buf)[_OI_PAGES][1][1]
    rows = [(p[_PL_OFFSET][1], p[_PL_SIZE][1], p[_PL_FIRST_ROW][1]) for p in pages]
    out = np.array(rows, np.int64).reshape(-1, 3)
    offsets, sizes, first = out[:, 0], out[:, 1], out[:, 2]
    if (not len(out) or first[0] != 0 or (np.diff(first) <= 0).any() or (sizes <= 0).any()
            or (offsets[1:] < offsets[:-1] + sizes[:-1]).any()):
        raise ValueError("not a well-formed offset index")
    return offsets, sizes, first


def pages_file(columns: dict[str, dict[int, tuple[int, Any]]], name: str, chunk: Any,
               created_by: str, pages: ChunkPages, chosen: np.ndarray) -> tuple[bytes, int]:
    """A Parquet file holding only the ``chosen`` data pages of a column chunk (and its
    dictionary page).

    Args:
        columns: ``flat_columns`` of the file.
        name: The column.
        chunk: pyarrow's metadata of the chunk (types, encodings, codec).
        created_by: The file's writer (readers adjust to known writers' quirks).
        pages: The chunk's pages.
        chosen: Sorted page numbers.

    Returns:
        The file's bytes and its number of rows.
    """
    body = bytearray(b"PAR1")
    meta: dict[int, tuple[int, Any]] = {
        1: (_I32, _PHYSICAL[chunk.physical_type]),
        2: (_LIST, (_I32, [_ENCODINGS[e] for e in chunk.encodings if e in _ENCODINGS])),
        3: (_LIST, (_BINARY, [name.encode()])),
        4: (_I32, _CODECS[chunk.compression]),
    }
    if pages.dictionary is not None:
        meta[11] = (_I64, len(body))
        body += pages.dictionary
    meta[9] = (_I64, len(body))
    for p in chosen:
        body += pages.pages[p]
    rows = int((pages.first_rows[chosen + 1] - pages.first_rows[chosen]).sum())
    meta[5] = (_I64, rows)
    meta[6] = (_I64, chunk.total_uncompressed_size)
    meta[7] = (_I64, len(body) - 4)
    root = {**columns[""], _SE_CHILDREN: (_I32, 1)}
    footer = {
        _FMD_VERSION: (_I32, 1),
        _FMD_SCHEMA: (_LIST, (_STRUCT, [root, columns[name]])),
        _FMD_ROWS: (_I64, rows),
        _FMD_GROUPS: (_LIST, (_STRUCT, [{
            _RG_COLUMNS: (_LIST, (_STRUCT, [{2: (_I64, 4), 3: (_STRUCT, meta)}])),
            _RG_BYTES: (_I64, len(body) - 4),
            _RG_ROWS: (_I64, rows),
        }])),
        _FMD_CREATED: (_BINARY, created_by.encode()),
    }
    tail = encode(footer)
    body += tail + len(tail).to_bytes(4, "little") + b"PAR1"
    return bytes(body), rows


def read_pages(blob: bytes, name: str, dictionary: bool) -> pa.ChunkedArray:
    """The column of a file made by ``pages_file``.

    Args:
        blob: The file's bytes.
        name: The column.
        dictionary: Read it as a dictionary array.

    Returns:
        The column's values.
    """
    pf = pq.ParquetFile(pa.BufferReader(blob), read_dictionary=[name] if dictionary else None)
    return pf.read(columns=[name]).column(0)
