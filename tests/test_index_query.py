"""Issue 20: a merged index sorted for queries, and queries that read only what they need.

Inputs are synthetic per-item indexes with the real schema (index_synth.py): Sentinel-2- and
Landsat-like items worldwide, some across the antimeridian and near the poles."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import shapely
from index_synth import write_items

from stacchip_core.core.hilbert import bbox_centres, hilbert_keys
from stacchip_core.core.query import bbox_geometry, query
from stacchip_core.errors import ConfigError, IndexFormatError
from stacchip_core.pipeline.merge import merge

ITEMS = 40  # 62,244 chips, places revisited up to 4 times


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("items")
    _, rows = write_items(root / "index", ITEMS, seed=3, layouts=True, antimeridian=0.15, polar=0.1)
    return root / "index", rows


@pytest.fixture(scope="module")
def merged(inputs, tmp_path_factory):
    src, _ = inputs
    out = tmp_path_factory.mktemp("merged") / "all.parquet"
    merge(src, out, progress=False, row_group_rows=2000)
    return out


@pytest.fixture(scope="module")
def rows_of(merged):
    """The merged rows without their layouts (the brute-force side of the comparisons)."""
    return pq.read_table(
        merged, columns=["chipid", "platform", "datetime", "cloud_cover_percentage", "geometry"]
    )


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _keyed(table: pa.Table) -> pa.Table:
    return table.sort_by([("chipid", "ascending")])


@pytest.mark.slow  # over 5 s on two shared cores
def test_sorted_merge_holds_exactly_the_input_rows(inputs, merged):
    src, rows = inputs
    expected = pa.concat_tables([pq.read_table(p) for p in sorted(src.rglob("*.parquet"))])
    got = pq.read_table(merged)
    assert got.num_rows == rows == expected.num_rows
    assert (
        got.schema.remove_metadata() == expected.schema.remove_metadata()
    )  # layouts read back as binary
    assert _keyed(got).equals(_keyed(expected.replace_schema_metadata(got.schema.metadata)))


def test_rows_follow_the_hilbert_curve_then_time(merged):
    table = pq.read_table(merged, columns=["bbox", "datetime"])
    bbox = table["bbox"].combine_chunks()
    keys = hilbert_keys(
        *bbox_centres(*[bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")])
    )
    assert (np.diff(keys.astype(np.int64)) >= 0).all()
    when = table["datetime"].to_numpy().astype(np.int64)
    same_place = np.diff(keys.astype(np.int64)) == 0
    assert same_place.sum() > 1000  # revisits: the same chip on several dates
    assert (np.diff(when)[same_place] >= 0).all()
    meta = pq.read_metadata(merged)
    assert meta.num_row_groups == -(-meta.num_rows // 2000)
    assert meta.row_group(0).column(0).compression == "ZSTD"
    geo = json.loads(meta.metadata[b"geo"])
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert geo["columns"]["geometry"]["geometry_types"] == ["Polygon", "MultiPolygon"]


@pytest.mark.parametrize("memory_rows", [3_000, 7_000, 40_000])  # 3,000: partitions split again
def test_spilled_merges_give_the_same_bytes(inputs, merged, tmp_path, memory_rows):
    src, _ = inputs
    out = tmp_path / "spilled.parquet"
    merge(src, out, progress=False, row_group_rows=2000, memory_rows=memory_rows)
    assert _digest(out) == _digest(merged)
    assert [p.name for p in tmp_path.iterdir()] == ["spilled.parquet"]  # partitions removed


@pytest.mark.parametrize("memory_rows", [250_000, 7_000])
def test_row_groups_end_at_the_coarsest_hilbert_cell_boundary(
    inputs, merged, tmp_path, memory_rows
):
    src, rows = inputs
    out = tmp_path / "cells.parquet"
    merge(
        src,
        out,
        progress=False,
        row_group_rows=2000,
        row_group_min_rows=700,
        memory_rows=memory_rows,
    )
    meta = pq.read_metadata(out)
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == rows and all(700 <= n <= 2000 for n in sizes[:-1]) and sizes[-1] <= 2000
    assert len(set(sizes)) > 1  # not fixed-size groups
    bbox = pq.read_table(out, columns=["bbox"]).column("bbox").combine_chunks()
    keys = hilbert_keys(
        *bbox_centres(*[bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")])
    )
    bits = lambda a, b: int(
        a ^ b
    ).bit_length()  # the level of the Hilbert cell ending between a and b
    start = 0
    for n in sizes[:-1]:
        end = start + n
        best = max(bits(keys[i - 1], keys[i]) for i in range(start + 700, start + 2001))
        assert bits(keys[end - 1], keys[end]) == best  # no coarser boundary within the window
        assert all(
            bits(keys[i - 1], keys[i]) < best for i in range(end + 1, start + 2001)
        )  # the last one
        start = end
    if memory_rows < rows:  # spilled or not, the same bytes
        again = tmp_path / "again.parquet"
        merge(src, again, progress=False, row_group_rows=2000, row_group_min_rows=700)
        assert _digest(again) == _digest(out)
    # the rows are those of the fixed-size merge, in the same order
    assert pq.read_table(out).equals(pq.read_table(merged))


def test_hilbert_order_keeps_neighbours_together():
    # locality: consecutive keys of a 256 x 256 grid of points are always adjacent cells
    ys, xs = np.divmod(np.arange(256 * 256), 256)
    lon, lat = -180 + (xs + 0.5) * 360 / 256, -90 + (ys + 0.5) * 180 / 256
    order = np.argsort(hilbert_keys(lon, lat, order=8))
    steps = np.abs(np.diff(xs[order])) + np.abs(np.diff(ys[order]))
    assert (steps == 1).all()
    assert hilbert_keys(np.array([-180.0, 179.99]), np.array([-90.0, 90.0]), order=1).tolist() == [
        0,
        2,
    ]


def _brute_force(
    table: pa.Table, geometry, platforms=None, max_cloud=None, start=None, end=None
) -> set:
    keep = shapely.intersects(
        shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False)), geometry
    )
    if platforms:
        keep &= np.isin(np.asarray(table["platform"].to_pylist()), platforms)
    if max_cloud is not None:
        keep &= table["cloud_cover_percentage"].to_numpy() <= max_cloud
    when = table["datetime"].to_numpy()
    if start is not None:
        keep &= when >= np.datetime64(start.replace(tzinfo=None), "us")
    if end is not None:
        keep &= when <= np.datetime64(end.replace(tzinfo=None), "us")
    return set(np.asarray(table["chipid"].to_pylist())[keep])


def _boxes(seed: int, n: int) -> list[tuple[float, float, float, float]]:
    rng = np.random.default_rng(seed)
    boxes = [
        (179.5, -60, -179.5, 75),
        (170, -10, -170, 80),
        (-180, 80, 180, 90),
        (178, 75, -178, 90),
        (-180, -90, 180, -55),
        (-180, -90, 180, 90),
        (179.9, 0, 180, 90),
        (-180, 0, -179.9, 90),
    ]
    for _ in range(n):
        size = rng.choice([0.1, 1.0, 10.0])
        west = rng.uniform(-180, 180)
        south = rng.uniform(-90, 90 - size)
        east = west + size if west + size <= 180 else west + size - 360  # some cross 180
        boxes.append((west, south, east, south + size))
    return boxes


@pytest.mark.parametrize("box", _boxes(7, 40))
def test_query_equals_brute_force(merged, rows_of, box):
    table = rows_of
    geometry, _ = bbox_geometry(box)
    result = query(merged, bbox=box, columns=["chipid", "geometry"])
    assert set(result.table["chipid"].to_pylist()) == _brute_force(table, geometry)
    assert result.table.num_rows == result.report.rows
    assert result.report.row_groups_total == pq.read_metadata(merged).num_row_groups


def _crossing(table: pa.Table) -> np.ndarray:
    """Rows whose footprint crosses 180 degrees (a MultiPolygon split there)."""
    return (
        shapely.get_type_id(shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))) == 6
    )


def test_query_finds_chips_across_the_antimeridian(merged):
    table = pq.read_table(merged, columns=["chipid", "geometry"])
    crossing = _crossing(table)
    assert crossing.sum() > 20  # the synthetic world has them
    got = set(query(merged, bbox=(179.999, -90, -179.999, 90)).table["chipid"].to_pylist())
    assert set(np.asarray(table["chipid"].to_pylist())[crossing]) <= got


@pytest.mark.parametrize(
    "box",
    [
        (179.5, -60, -179.5, 75),
        (179.9, 0, 180, 90),
        (-180, -60, -179.95, 75),
        (170, 30, 179.99, 60),
        (-179.99, -60, -170, 0),
    ],
)
def test_rfc7946_coverings_across_180_are_found_too(merged, rows_of, tmp_path, box):
    """Indexes whose crossing chips have a covering with west > east (RFC 7946, as written
    before core.index spanned them -180..180) are queried exactly as well."""
    table = pq.read_table(
        merged,
        columns=["chipid", "platform", "datetime", "cloud_cover_percentage", "geometry", "bbox"],
    )
    crossing = _crossing(table)
    parts = shapely.get_parts(
        shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False)[crossing])
    )
    bounds = shapely.bounds(parts).reshape(-1, 2, 4)  # west part first, then east part
    bbox = table["bbox"].combine_chunks()
    xmin, xmax = bbox.field("xmin").to_numpy().copy(), bbox.field("xmax").to_numpy().copy()
    west_first = bounds[:, 0, 0] > 0
    xmin[crossing] = np.where(west_first, bounds[:, 0, 0], bounds[:, 1, 0])
    xmax[crossing] = np.where(west_first, bounds[:, 1, 2], bounds[:, 0, 2])
    rfc = pa.StructArray.from_arrays(
        [pa.array(xmin), bbox.field("ymin"), pa.array(xmax), bbox.field("ymax")],
        names=["xmin", "ymin", "xmax", "ymax"],
    )
    table = table.set_column(table.schema.get_field_index("bbox"), "bbox", rfc)
    pq.write_table(table, tmp_path / "rfc.parquet", row_group_size=2000)
    assert (xmin > xmax).sum() == crossing.sum() > 20
    result = query(tmp_path / "rfc.parquet", bbox=box, columns=["chipid"])
    assert set(result.table["chipid"].to_pylist()) == _brute_force(rows_of, bbox_geometry(box)[0])


@pytest.mark.parametrize("kwargs", [
    {"platforms": ["landsat-c2l2-sr"], "max_cloud": 0.2},
    {"datetime_range": "2021-03-01/2022-02-28"},
    {"datetime_range": "../2020-12-31", "bbox": (-180, -60, 0, 75)},
    {"datetime_range": "2023-01-01T00:00:00Z/..", "max_cloud": 0.0, "bbox": (150, -60, -150, 75)},
])
def test_attribute_filters_equal_brute_force(merged, rows_of, kwargs):
    from stacchip_core.core.query import parse_datetime_range

    table = rows_of
    start, end = parse_datetime_range(kwargs.get("datetime_range"))
    geometry = (
        bbox_geometry(kwargs["bbox"])[0] if "bbox" in kwargs else shapely.box(-180, -90, 180, 90)
    )
    expected = _brute_force(
        table, geometry, kwargs.get("platforms"), kwargs.get("max_cloud"), start, end
    )
    result = query(merged, **kwargs, columns=["chipid"])
    assert set(result.table["chipid"].to_pylist()) == expected and expected


def _groups_meeting(meta, box) -> list[int]:
    """Row groups whose covering statistics meet a box (not across 180 degrees), from the
    file's metadata alone."""
    groups = []
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        s = {rg.column(j).path_in_schema: rg.column(j).statistics for j in range(rg.num_columns)}
        if (s["bbox.xmin"].max - s["bbox.xmax"].min > 180  # may hold rows across 180 degrees
                or (s["bbox.xmin"].min <= box[2] and s["bbox.xmax"].max >= box[0])) \
                and s["bbox.ymin"].min <= box[3] and s["bbox.ymax"].max >= box[1]:
            groups.append(i)
    return groups


def test_row_groups_are_pruned_by_their_statistics(merged):
    meta = pq.read_metadata(merged)
    table = pq.read_table(merged, columns=["bbox"]).column("bbox").combine_chunks()
    i = int(np.argmax(table.field("xmin").to_numpy() > -170))
    x, y = table.field("xmin")[i].as_py(), table.field("ymin")[i].as_py()
    box = (x, y, x + 1, y + 1)
    result = query(merged, bbox=box)
    expected = _groups_meeting(meta, box)
    assert result.report.row_groups_read == len(expected)
    assert 1 <= len(expected) <= meta.num_row_groups // 5  # of 32: the sort makes groups compact
    assert result.report.rows > 0
    # what was read: the footer (64 kB, or all of a longer one), the covering columns of those
    # groups, then the other columns of the groups where some row's covering meets the box
    footer = max(min(os.path.getsize(merged), 65536), meta.serialized_size + 8)
    pf = pq.ParquetFile(merged)
    hits = []
    for g in expected:
        b = pf.read_row_group(g, columns=["bbox"]).column("bbox").combine_chunks()
        x0, y0, x1, y1 = (b.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax"))
        if ((x0 <= box[2]) & (x1 >= box[0]) & (y0 <= box[3]) & (y1 >= box[1])).any():
            hits.append(g)
    size = lambda g, j: meta.row_group(g).column(j).total_compressed_size
    covering = [
        j
        for j in range(meta.num_columns)
        if meta.row_group(0).column(j).path_in_schema.startswith("bbox.")
    ]
    chunks = sum(size(g, j) for g in expected for j in covering)
    chunks += sum(size(g, j) for g in hits for j in range(meta.num_columns) if j not in covering)
    assert hits and result.report.bytes_read == footer + chunks
    # the footer's last 64 KiB (which say the size), then each pass (counted exactly over
    # http below)
    assert result.report.requests >= 3
    # and without the order: rows from everywhere in each row group (as input order gives
    # once a row group holds many items) prune nothing, and the answer is the same
    unsorted = merged.parent / "unsorted.parquet"
    table = pq.read_table(merged)
    pq.write_table(
        table.take(np.random.default_rng(0).permutation(len(table))), unsorted, row_group_size=2000
    )
    before = query(unsorted, bbox=box)
    assert before.report.row_groups_read == meta.num_row_groups
    assert set(before.table["chipid"].to_pylist()) == set(result.table["chipid"].to_pylist())


def _small_pages(merged, out, page_index: bool):
    pf = pq.ParquetFile(merged)
    with pq.ParquetWriter(out, pf.schema_arrow, compression="zstd", data_page_size=2048,
                          write_batch_size=50, write_page_index=page_index,
                          use_dictionary=["platform", "item_id", "item_href", "layouts"]) as w:
        for g in range(pf.metadata.num_row_groups):
            w.write_table(pf.read_row_group(g), row_group_size=1 << 30)
    return out


@pytest.fixture(scope="module")
def paged(merged, tmp_path_factory):
    """The merged index with the same row groups written in small data pages (many per
    chunk, as geometry has in a full-size merge)."""
    return _small_pages(merged, tmp_path_factory.mktemp("paged") / "paged.parquet", True)


@pytest.fixture(scope="module")
def paged_no_index(merged, tmp_path_factory):
    """The same pages without the page index: the chunks are fetched whole."""
    return _small_pages(merged, tmp_path_factory.mktemp("paged") / "no-index.parquet", False)


def _corrupt_offset_indexes(path, out):
    """A copy of ``path`` with the offset index of every geometry chunk overwritten."""
    from stacchip_core.core import pages

    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    footer = bytes(data[-8 - int.from_bytes(data[-8:-4], "little"):-8])
    j = meta.schema.to_arrow_schema().names.index("geometry")
    for g in range(meta.num_row_groups):
        where = pages.offset_index_at(footer, meta.row_group(g).column(j).data_page_offset)
        assert where is not None
        data[where[0]:where[0] + where[1]] = b"\x19\x1c" + b"\xff" * (where[1] - 2)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("where", [*_boxes(11, 0), 0, 20_000, 40_000, 61_000])
def test_rows_decoded_by_pages_equal_whole_chunks(merged, paged, where, monkeypatch):
    from stacchip_core.core import query as q

    if isinstance(where, int):  # a 0.2 degree box at the corner of that row's chip
        b = pq.read_table(merged, columns=["bbox"]).column("bbox").combine_chunks()
        x, y = b.field("xmin")[where].as_py(), b.field("ymin")[where].as_py()
        box = (x - 0.1, y - 0.1, x + 0.1, y + 0.1)
    else:
        box = where
    whole = query(merged, bbox=box)
    assert whole.report.pages_total == 0  # 2,000-row groups: no chunk reaches PAGED_BYTES
    monkeypatch.setattr(q, "PAGED_BYTES", 0)  # every flat column of a kept group by pages
    got = query(paged, bbox=box)
    assert got.table.schema == whole.table.schema
    assert _keyed(got.table).equals(_keyed(whole.table))
    assert got.report.row_groups_read == whole.report.row_groups_read
    if whole.report.rows:
        assert 0 < got.report.pages_decoded <= got.report.pages_total
    if isinstance(where, int):  # a few chips: a few pages of each chunk
        assert 0 < whole.report.rows < 1000
        assert got.report.pages_decoded < got.report.pages_total / 2


@pytest.mark.parametrize("where", [0, 20_000, 40_000, 61_000])
def test_only_the_pages_holding_kept_rows_are_fetched(merged, paged, paged_no_index, where,
                                                      monkeypatch, tmp_path):
    from stacchip_core.core import query as q

    b = pq.read_table(merged, columns=["bbox"]).column("bbox").combine_chunks()
    x, y = b.field("xmin")[where].as_py(), b.field("ymin")[where].as_py()
    box = (x - 0.1, y - 0.1, x + 0.1, y + 0.1)
    from stacchip_core.io import objects

    monkeypatch.setattr(q, "PAGED_BYTES", 0)
    # pages of 2 kB lie closer than the 64 kB that merges ranges into one request: without
    # merging, the bytes count what was asked for
    monkeypatch.setattr(objects, "COALESCE_GAP", 0)
    by_index = query(paged, bbox=box)
    by_headers = query(paged_no_index, bbox=box)
    broken = query(_corrupt_offset_indexes(paged, tmp_path / "broken.parquet"), bbox=box)
    assert 0 < by_index.report.rows < 1000
    for other in (by_headers, broken):
        assert _keyed(other.table).equals(_keyed(by_index.table))
        assert other.report.pages_decoded == by_index.report.pages_decoded
    # the page index's own bytes are in the footer's neighbourhood, not in the chunks: the
    # fetched chunk bytes are what shrink. Without a page index (or with a broken one for
    # geometry) every paged chunk comes whole
    chunk_bytes = _second_pass_chunk_bytes(paged_no_index, by_index)
    assert by_index.report.bytes_read < by_headers.report.bytes_read - chunk_bytes / 2
    assert by_index.report.bytes_read < broken.report.bytes_read


def _second_pass_chunk_bytes(path, result) -> int:
    """The compressed bytes of the chunks of the kept rows' row groups, but the first pass's."""
    meta = pq.ParquetFile(path).metadata
    ids = set(result.table["chipid"].to_pylist())
    chips = pq.read_table(path, columns=["chipid"])
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    hit = np.flatnonzero([c in ids for c in chips["chipid"].to_pylist()])
    groups = sorted(set(np.searchsorted(starts, hit, side="right") - 1))
    names = [meta.row_group(0).column(j).path_in_schema for j in range(meta.num_columns)]
    return sum(meta.row_group(g).column(j).total_compressed_size for g in groups
               for j, n in enumerate(names) if n in ("geometry", "chipid"))


def test_pages_that_pyarrow_refuses_are_decoded_whole(merged, paged, monkeypatch):
    from stacchip_core.core import pages
    from stacchip_core.core import query as q

    def refuse(*args, **kwargs):
        raise pa.ArrowInvalid("a writer quirk")

    box = (-180, 80, 180, 90)
    whole = query(merged, bbox=box)
    monkeypatch.setattr(q, "PAGED_BYTES", 0)
    monkeypatch.setattr(pages, "read_pages", refuse)
    got = query(paged, bbox=box)
    assert _keyed(got.table).equals(_keyed(whole.table)) and whole.report.rows > 0
    assert got.report.pages_decoded == got.report.pages_total > 0  # every page: whole chunks


def test_a_rewritten_index_is_not_answered_from_its_parsed_metadata(merged, tmp_path):
    # the query keeps each file's parsed metadata; a file rewritten at the same path with the
    # same size (other rows, other row groups) is read anew: the key has the footer's digest
    import shutil

    path = tmp_path / "idx.parquet"
    shutil.copy(merged, path)
    box = (-180, -90, 180, 90)
    before = query(path, bbox=box)
    assert before.report.row_groups_total == pq.read_metadata(merged).num_row_groups
    table = pq.read_table(merged)
    landsat = table.filter(pc.equal(table["platform"], "landsat-c2l2-sr")).drop_columns("layouts")
    # the same size as before (padded key-value metadata): only the footer tells them apart
    pad = 0
    for _ in range(4):
        with pq.ParquetWriter(path, landsat.schema, store_schema=False) as writer:
            writer.write_table(landsat, row_group_size=1000)
            writer.add_key_value_metadata({"geo": landsat.schema.metadata[b"geo"].decode(),
                                           "pad": "x" * pad})
        pad += os.path.getsize(merged) - os.path.getsize(path)
    assert os.path.getsize(path) == os.path.getsize(merged)
    after = query(path, bbox=box)
    assert after.report.row_groups_total == pq.read_metadata(path).num_row_groups == -(
        -landsat.num_rows // 1000
    )
    expected = [c for c, p in zip(before.table["chipid"].to_pylist(),
                                  before.table["platform"].to_pylist()) if p == "landsat-c2l2-sr"]
    assert expected and sorted(after.table["chipid"].to_pylist()) == sorted(expected)


def test_query_over_s3_reads_ranges_only(merged, bucket, s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).upload_file(str(merged), bucket, "idx/all.parquet")
    box = (-20, -20, 40, 40)
    local = query(merged, bbox=box, max_cloud=0.3)
    remote = query(f"s3://{bucket}/idx/all.parquet", bbox=box, max_cloud=0.3)
    assert remote.table.equals(local.table)
    assert remote.report.bytes_read == local.report.bytes_read < os.path.getsize(merged)
    # a prefix of files is a partitioned index: each file queried
    assert query(f"s3://{bucket}/idx/", bbox=box, max_cloud=0.3).table.equals(local.table)


def test_query_over_http_counts_its_requests(merged, tmp_path):
    import shutil

    from rangeserver import RangeServer

    shutil.copy(merged, tmp_path / "all.parquet")
    with RangeServer(tmp_path) as server:
        result = query(f"{server.url}/all.parquet", bbox=(10, 10, 11, 11))
        # the footer as a suffix range (no HEAD: its response says the size), then the
        # needed column chunks: what the report says, and no more
        assert server.requests == result.report.requests >= 2
        assert server.log[0] == ("GET", "/all.parquet", f"bytes=-{64 * 1024}")
        assert "HEAD" not in [m for m, _, _ in server.log]
        assert server.bytes == result.report.bytes_read < os.path.getsize(merged) / 2
        assert all(r is not None for m, _, r in server.log if m == "GET")  # never the whole object
        assert result.table.equals(query(merged, bbox=(10, 10, 11, 11)).table)


def test_pages_over_http_are_ranges_the_report_counts(merged, paged, paged_no_index,
                                                      monkeypatch):
    import shutil
    from pathlib import Path

    from rangeserver import RangeServer

    from stacchip_core.core import query as q
    from stacchip_core.io import objects

    monkeypatch.setattr(q, "PAGED_BYTES", 0)
    monkeypatch.setattr(objects, "COALESCE_GAP", 0)
    folder = Path(paged).parent
    shutil.copy(paged_no_index, folder / "no-index.parquet")
    b = pq.read_table(merged, columns=["bbox"]).column("bbox").combine_chunks()
    x, y = b.field("xmin")[20_000].as_py(), b.field("ymin")[20_000].as_py()
    box = (x - 0.1, y - 0.1, x + 0.1, y + 0.1)
    with RangeServer(folder) as server:
        got = {}
        for name in ("paged.parquet", "no-index.parquet"):
            before = (server.requests, server.bytes)
            got[name] = query(f"{server.url}/{name}", bbox=box)
            assert (server.requests - before[0], server.bytes - before[1]) == (
                got[name].report.requests, got[name].report.bytes_read)
        assert all(r is not None for m, _, r in server.log if m == "GET")
    local = query(merged, bbox=box)
    assert local.report.rows > 0
    for result in got.values():
        assert _keyed(result.table).equals(_keyed(local.table))
    assert got["paged.parquet"].report.bytes_read < got["no-index.parquet"].report.bytes_read


@pytest.mark.parametrize("content", [b"", b"PAR1", b"not parquet at all" * 10_000])
def test_an_index_that_is_not_parquet_is_one_clear_error(tmp_path, content):
    from rangeserver import RangeServer

    (tmp_path / "bad.parquet").write_bytes(content)
    with RangeServer(tmp_path) as server:
        for url in (tmp_path / "bad.parquet", f"{server.url}/bad.parquet"):
            with pytest.raises(IndexFormatError, match="is not a readable index"):
                query(url, bbox=(0, 0, 1, 1))


@pytest.mark.parametrize("kwargs, message", [
    ({"bbox": (0, 10, 1, 5)}, "out of range"),
    ({"bbox": (0, 1, 2)}, "four numbers"),
    ({"datetime_range": "2021-13-01/.."}, "not an ISO 8601"),
    ({"datetime_range": "2022-01-01/2021-01-01"}, "ends before it starts"),
    ({"max_cloud": 2}, "fraction"),
    ({"columns": ["nope"]}, "has no column nope"),
])
def test_bad_filters_are_one_clear_error(merged, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        query(merged, **kwargs)


def test_cli_query_writes_what_the_api_returns(merged, tmp_path):
    from conftest import run_cli

    area = tmp_path / "area.geojson"
    area.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": shapely.geometry.mapping(shapely.box(-20, -20, 40, 40)),
                    }
                ],
            }
        )
    )
    r = run_cli(
        "query",
        merged,
        "--intersects",
        area,
        "--platform",
        "sentinel-2-l2a",
        "--max-cloud",
        "0.5",
        "-o",
        tmp_path / "out.parquet",
    )
    assert r.returncode == 0, r.stderr
    api = query(
        merged, intersects=shapely.box(-20, -20, 40, 40), platforms="sentinel-2-l2a", max_cloud=0.5
    )
    assert (
        pq.read_table(tmp_path / "out.parquet")["chipid"].to_pylist()
        == api.table["chipid"].to_pylist()
    )
    assert (
        f"{api.report.rows} chips; read {api.report.row_groups_read} of "
        f"{api.report.row_groups_total}"
        in r.stdout
    )


def test_chip_filter_loads_what_it_keeps(merged):
    from stacchip_core.training.prechip import ChipFilter, load_index

    f = ChipFilter(
        ("sentinel-2-l2a",),
        0.3,
        0.5,
        datetime(2021, 1, 1).date(),
        datetime(2023, 6, 30).date(),
        (-20, -20, 40, 40),
    )
    assert f.load(str(merged)).equals(f.apply(load_index(str(merged))))


MEMORY_CHILD = textwrap.dedent("""
    import resource, sys
    import pyarrow, numpy, shapely  # noqa: F401 - loaded before the cap is measured
    from stacchip_core.pipeline.merge import merge
    def vm():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    cap = vm() + int(sys.argv[3]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    merge(sys.argv[1], sys.argv[2], progress=False, memory_rows=int(sys.argv[4]))
    print("merged")
""")


@pytest.mark.slow  # 7-14 s on two shared cores (a merge in a child under RLIMIT_AS)
@pytest.mark.parametrize("items, rows", [(120, 176_040), (600, 888_516)])
def test_merge_of_many_inputs_stays_under_a_memory_cap(tmp_path, items, rows):
    # 6 kB layouts per item: 1.1 GB (120 items) and 5x that if the layouts were held per row.
    # The same cap holds 5x the rows: merge memory depends on memory_rows, not on the rows
    # (one spill file per partition and spill; with 64 open writers, whose row-group
    # metadata grew with every spill, the 600 items needed more)
    src = tmp_path / "index"
    assert write_items(src, items, seed=5, layouts=True) == (items, rows)
    # malloc, one arena: address space then follows the data (+125 MB of threads and buffers
    # for any merge here; +205 MB when all 176,040 rows are sorted at once)
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"}
    run = lambda memory_rows, cap: subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_CHILD,
            str(src),
            str(tmp_path / "m.parquet"),
            str(cap),
            str(memory_rows),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    bounded = run(20_000, 165)
    assert bounded.returncode == 0 and "merged" in bounded.stdout, bounded.stderr[-2000:]
    assert pq.read_metadata(tmp_path / "m.parquet").num_rows == rows
    if items == 120:  # all rows sorted at once do not fit where the bounded merge did
        everything = run(10**9, 165)
        assert everything.returncode != 0 and "merged" not in everything.stdout


def test_datetime_ranges_parse_as_stac_does():
    from stacchip_core.core.query import parse_datetime_range

    assert parse_datetime_range("2021-01-01/2021-01-31") == (
        datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert parse_datetime_range("../2021-01-31T10:00:00+02:00") == (
        None,
        datetime(2021, 1, 31, 8, tzinfo=UTC),
    )
    assert parse_datetime_range("2021-05-05") == (
        datetime(2021, 5, 5, tzinfo=UTC),
        datetime(2021, 5, 5, 23, 59, 59, 999999, tzinfo=UTC),
    )
