"""core.pages: the data pages of a column chunk that hold given rows, decoded alone."""

import io
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stacchip_core.core import pages

N = 5000


def _table() -> pa.Table:
    rng = np.random.default_rng(5)
    nulls = rng.random(N) < 0.1
    return pa.table({
        "chipid": pa.array([f"chip-{i:06d}" for i in range(N)]),
        # many values: its dictionary indices span several pages too
        "platform": pa.array([f"item-{k}" for k in rng.integers(0, 1000, N)]).dictionary_encode(),
        "date": pa.array([date(2024, 1, 1 + i % 28) for i in range(N)]),
        "datetime": pa.array([datetime(2024, 1, 1, i % 24, tzinfo=UTC) for i in range(N)],
                             pa.timestamp("us", tz="UTC")),
        "x": pa.array(np.arange(N, dtype=np.int32)),
        "cloud": pa.array(np.where(nulls, np.nan, rng.random(N)), mask=nulls, type=pa.float32()),
        "geometry": pa.array([bytes(rng.integers(0, 255, 40, dtype=np.uint8)) for _ in range(N)]),
        "bbox": pa.array([{"xmin": float(i), "ymin": 0.0} for i in range(N)]),
    })


@pytest.fixture(scope="module")
def parquet():
    out = io.BytesIO()
    # small pages: every chunk has many, as geometry has in a merged index's row groups
    pq.write_table(_table(), out, row_group_size=2000, data_page_size=512, write_batch_size=100,
                   compression="zstd", use_dictionary=["platform"], write_page_index=True)
    return out.getvalue()


def _footer(data: bytes) -> bytes:
    n = int.from_bytes(data[-8:-4], "little")
    return data[-8 - n:-8]


def test_thrift_codec_round_trips_a_real_footer(parquet):
    footer = _footer(parquet)
    assert pages.encode(pages.decode(footer)) == footer


def test_flat_columns_leave_out_groups(parquet):
    flat = pages.flat_columns(_footer(parquet))
    assert sorted(flat) == ["", "chipid", "cloud", "date", "datetime", "geometry", "platform", "x"]


@pytest.mark.parametrize("column", ["chipid", "platform", "date", "datetime", "x", "cloud",
                                    "geometry"])
@pytest.mark.parametrize("pick", ["one", "spread", "last", "all"])
def test_rows_by_pages_equal_the_whole_chunk(parquet, column, pick):
    pf = pq.ParquetFile(pa.BufferReader(parquet), read_dictionary=["platform"])
    meta, flat = pf.metadata, pages.flat_columns(_footer(parquet))
    group = 1  # rows 2000-3999
    rg = meta.row_group(group)
    j = [rg.column(k).path_in_schema for k in range(rg.num_columns)].index(column)
    chunk = rg.column(j)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    found = pages.chunk_pages(parquet[start:start + chunk.total_compressed_size])
    assert found is not None and found.first_rows[-1] == 2000 and len(found.pages) > 3
    assert (found.dictionary is not None) == (column == "platform")
    rows = {"one": np.array([7]), "spread": np.array([0, 1, 900, 1500, 1999]),
            "last": np.array([1999]), "all": np.arange(2000)}[pick]
    chosen = found.pages_of(rows)
    blob, n = pages.pages_file(flat, column, chunk, meta.created_by, found, chosen)
    assert n == int((found.first_rows[chosen + 1] - found.first_rows[chosen]).sum())
    values = pages.read_pages(blob, column, column == "platform")
    base = np.concatenate([[0], np.cumsum(found.first_rows[chosen + 1] - found.first_rows[chosen])])
    page = np.searchsorted(found.first_rows, rows, side="right") - 1
    local = base[np.searchsorted(chosen, page)] + rows - found.first_rows[page]
    whole = pf.read_row_group(group, columns=[column]).column(0)
    assert values.type == whole.type
    assert values.take(pa.array(local)).to_pylist() == whole.take(pa.array(rows)).to_pylist()
    if pick == "one":
        assert len(chosen) == 1


def _chunks(data: bytes):
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    return [meta.row_group(g).column(j) for g in range(meta.num_row_groups)
            for j in range(meta.num_columns)]


def test_the_offset_index_of_every_chunk_is_found_and_tiles_it(parquet):
    footer = _footer(parquet)
    chunks = _chunks(parquet)
    assert len(chunks) == 3 * 9 and all(c.has_offset_index for c in chunks)
    for chunk in chunks:
        where = pages.offset_index_at(footer, chunk.data_page_offset)
        assert where is not None
        # a window to search first that misses the chunk: the whole footer is searched
        assert pages.offset_index_at(footer, chunk.data_page_offset, (0, 8)) == where
        assert pages.offset_index_at(footer, chunk.data_page_offset, (0, len(footer))) == where
        offsets, sizes, first = pages.offset_index(parquet[where[0]:where[0] + where[1]])
        start = (chunk.dictionary_page_offset if chunk.has_dictionary_page
                 else chunk.data_page_offset)
        assert offsets[0] == chunk.data_page_offset
        assert offsets[-1] + sizes[-1] == start + chunk.total_compressed_size
        assert (offsets[1:] == offsets[:-1] + sizes[:-1]).all()  # pages follow each other
        if chunk.path_in_schema in pages.flat_columns(footer):  # the same pages as the headers
            found = pages.chunk_pages(parquet[start:start + chunk.total_compressed_size])
            assert found is not None
            assert first.tolist() == found.first_rows[:-1].tolist()
            assert sizes.tolist() == [len(p) for p in found.pages]


def test_a_file_without_a_page_index_has_no_offset_index(parquet):
    out = io.BytesIO()
    pq.write_table(_table(), out, row_group_size=2000, data_page_size=512, write_batch_size=100,
                   write_page_index=False)
    data = out.getvalue()
    footer = _footer(data)
    assert [pages.offset_index_at(footer, c.data_page_offset) for c in _chunks(data)] == [
        None] * 27


@pytest.mark.parametrize("buf, error", [
    (b"", IndexError),
    (b"\x00", KeyError),  # a struct without page locations
    (b"\x19\x0c\x00", ValueError),  # no pages
    # two pages whose first rows go down: 0 then 0
    (b"\x19\x2c\x16\x08\x15\x04\x16\x00\x00\x16\x0c\x15\x04\x16\x00\x00\x00", ValueError),
])
def test_a_malformed_offset_index_is_refused(buf, error):
    with pytest.raises(error):
        pages.offset_index(buf)


def test_an_offset_index_gives_offsets_sizes_and_first_rows():
    # two pages: at 4 (2 bytes, rows from 0) and at 6 (2 bytes, rows from 1)
    buf = b"\x19\x2c\x16\x08\x15\x04\x16\x00\x00\x16\x0c\x15\x04\x16\x02\x00\x00"
    offsets, sizes, first = pages.offset_index(buf)
    assert (offsets.tolist(), sizes.tolist(), first.tolist()) == ([4, 6], [2, 2], [0, 1])
