"""Issue 20: a partitioned index (a folder of files by region plus a manifest) from the merge,
and queries that open only the files whose manifest row can match.

Inputs are the synthetic per-item indexes of test_index_query.py (index_synth.py): Sentinel-2-
and Landsat-like items worldwide, some across the antimeridian and near the poles."""

import hashlib
import shutil
from collections import Counter
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import shapely
from index_synth import write_items

from stacchip_core.core.hilbert import bbox_centres, hilbert_keys
from stacchip_core.core.index import overall_bbox
from stacchip_core.core.query import bbox_geometry, index_files, query
from stacchip_core.errors import ConfigError, IndexFormatError, NotFoundError, ObjectError
from stacchip_core.pipeline.merge import CELL_LEVEL, merge

ITEMS = 40  # 62,244 chips
ROWS = 6_000  # the most rows in a partition file
BITS = 48


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("items")
    _, rows = write_items(root / "index", ITEMS, seed=3, layouts=True, antimeridian=0.15, polar=0.1)
    return root / "index", rows


@pytest.fixture(scope="module")
def merged(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "all.parquet"
    merge(inputs[0], out, progress=False, row_group_rows=2000)
    return out


@pytest.fixture(scope="module")
def parts(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("parts") / "world"
    merge(inputs[0], out, progress=False, row_group_rows=2000, partition_rows=ROWS)
    return out


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _manifest(folder) -> pa.Table:
    return pq.read_table(folder / "_partitions.parquet")


def _keys(table: pa.Table) -> np.ndarray:
    bbox = table["bbox"].combine_chunks()
    return hilbert_keys(
        *bbox_centres(*[bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")])
    )


def test_partitions_hold_exactly_the_input_rows(inputs, merged, parts):
    src, rows = inputs
    manifest = _manifest(parts)
    names = manifest["file"].to_pylist()
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))]
    assert sorted(p.name for p in parts.iterdir()) == sorted(names + ["_partitions.parquet"])
    assert index_files(parts) == [f"{parts.resolve()}/{n}" for n in names]  # not the manifest
    tables = [pq.read_table(parts / n) for n in names]
    sizes = [t.num_rows for t in tables]
    assert manifest["rows"].to_pylist() == sizes and sum(sizes) == rows == 62_244
    assert all(ROWS // 2 <= n <= ROWS for n in sizes[:-1]) and 0 < sizes[-1] <= ROWS
    assert manifest["row_groups"].to_pylist() == [
        pq.read_metadata(parts / n).num_row_groups for n in names
    ]
    # the multiset of input rows, and in files order the rows of the single-file merge
    expected = pa.concat_tables([pq.read_table(p) for p in sorted(src.rglob("*.parquet"))])
    got = pa.concat_tables(tables)
    assert Counter(got["chipid"].to_pylist()) == Counter(expected["chipid"].to_pylist())
    assert got.equals(pq.read_table(merged))
    for name, table in zip(names, tables):  # each file a whole index
        meta = pq.read_metadata(parts / name)
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert all(meta.row_group(i).num_rows <= 2000 for i in range(meta.num_row_groups))
        assert b"geo" in meta.metadata


def _area(bounds: np.ndarray) -> float:
    west, south, east, north = overall_bbox(bounds)
    return (east - west) * (north - south)


def test_the_manifest_says_what_each_file_holds(inputs, parts):
    manifest = _manifest(parts).to_pylist()
    crossing_files = 0
    for row in manifest:
        table = pq.read_table(parts / row["file"],
                              columns=["bbox", "datetime", "platform", "geometry"])
        bbox = table["bbox"].combine_chunks()
        bounds = np.stack([bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], 1)
        # latitudes: those of the coverings
        assert [row["ymin"], row["ymax"]] == overall_bbox(bounds)[1::2]
        # longitudes: the shortest arc holding every footprint's parts, to 0.01 degree
        lon = shapely.bounds(shapely.get_parts(
            shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
        ))[:, [0, 2]]
        west, east = row["xmin"], row["xmax"]
        if west <= east:
            assert ((lon[:, 0] >= west) & (lon[:, 1] <= east)).all()
        else:  # across 180 degrees: each part on one side
            assert ((lon[:, 0] >= west) | (lon[:, 1] <= east)).all()
            crossing_files += 1
        assert np.abs(lon[:, 0] - west).min() < 0.0101 and np.abs(lon[:, 1] - east).min() < 0.0101
        assert (west, east) != (-180, 180)  # no file spans the world
        span = pc.min_max(table["datetime"])
        assert (row["datetime_min"], row["datetime_max"]) == (
            span["min"].as_py(), span["max"].as_py()
        )
        assert row["platforms"] == sorted(set(table["platform"].to_pylist()))
    assert 0 < crossing_files < len(manifest)  # chips across 180 degrees widen their file only
    # the files are compact regions: their boxes cover a small share of what files of the
    # same sizes cut from the rows in input order cover
    areas = [(r["xmax"] - r["xmin"]) * (r["ymax"] - r["ymin"]) for r in manifest]
    rows = pa.concat_tables(
        [pq.read_table(p, columns=["bbox"]) for p in sorted(inputs[0].rglob("*.parquet"))]
    )["bbox"].combine_chunks()
    bounds = np.stack([rows.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], 1)
    ends = np.cumsum([r["rows"] for r in manifest])
    unsorted = [_area(b) for b in np.split(bounds, ends[:-1])]
    assert np.median(areas) < np.median(unsorted) / 10, (sorted(areas), sorted(unsorted))


def test_files_end_at_the_coarsest_hilbert_cell_boundary(parts):
    names = _manifest(parts)["file"].to_pylist()
    sizes = [pq.read_metadata(parts / n).num_rows for n in names]
    keys = _keys(pa.concat_tables([pq.read_table(parts / n, columns=["bbox"]) for n in names]))
    cells = keys >> np.uint64(BITS - 2 * CELL_LEVEL)

    def bits(i: int) -> int:  # the level of the cell boundary before row i (0: inside a cell)
        return int(cells[i - 1] ^ cells[i]).bit_length()

    start = 0
    for n in sizes[:-1]:
        end = start + n
        window = range(start + ROWS // 2, start + ROWS + 1)
        best = max(bits(i) for i in window)
        assert best > 0 and bits(end) == best  # a cell boundary, the coarsest in the window
        assert all(bits(i) < best for i in window if i > end)  # the last of those
        start = end


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


def _brute_force(table: pa.Table, geometry) -> set:
    keep = shapely.intersects(
        shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False)), geometry
    )
    return set(np.asarray(table["chipid"].to_pylist())[keep])


@pytest.mark.parametrize("box", _boxes(11, 30))
def test_query_over_partitions_equals_the_single_file(merged, parts, box):
    single = query(merged, bbox=box)
    split = query(parts, bbox=box)
    assert split.table.equals(single.table)  # the same rows in the same order
    rows = pq.read_table(merged, columns=["chipid", "geometry"])
    assert set(split.table["chipid"].to_pylist()) == _brute_force(rows, bbox_geometry(box)[0])
    manifest = _manifest(parts)
    assert split.report.files_total == manifest.num_rows
    assert split.report.files == split.report.files_read <= manifest.num_rows
    assert split.report.row_groups_total == sum(manifest["row_groups"].to_pylist())


def _files_meeting(manifest: pa.Table, box) -> list[str]:
    """The files whose manifest bbox meets a box (not across 180 degrees), by plain numbers."""
    return [r["file"] for r in manifest.to_pylist()
            if r["xmin"] <= box[2] and r["xmax"] >= box[0] and r["ymin"] <= box[3]
            and r["ymax"] >= box[1]]


def test_files_are_pruned_by_the_manifest(merged, parts):
    manifest = _manifest(parts)
    first = pq.read_table(parts / "part-00002.parquet", columns=["bbox"])["bbox"].combine_chunks()
    x, y = first.field("xmin")[0].as_py(), first.field("ymin")[0].as_py()
    box = (x, y, x + 1, y + 1)
    result = query(parts, bbox=box)
    expected = _files_meeting(manifest, box)
    assert "part-00002.parquet" in expected
    assert result.report.files_read == len(expected) < manifest.num_rows // 2
    assert result.report.rows == query(merged, bbox=box).report.rows > 0
    # attributes prune files too: a platform no file holds opens none
    none = query(parts, platforms=["naip"], columns=["chipid", "platform"])
    assert (none.report.files_read, none.report.rows, none.table.column_names) == (
        0, 0, ["chipid", "platform"]
    )
    # a datetime window: the files whose span meets it
    window = ("2020-01-01T00:00:00Z", "2020-03-31T00:00:00Z")
    when = query(parts, datetime_range=window)
    start, end = (pa.scalar(datetime.fromisoformat(v), pa.timestamp("us", tz="UTC"))
                  for v in window)
    meeting = pc.and_(pc.less_equal(manifest["datetime_min"], end),
                      pc.greater_equal(manifest["datetime_max"], start))
    assert when.report.files_read == pc.sum(meeting).as_py() < manifest.num_rows
    assert when.table.equals(query(merged, datetime_range=window).table)


def test_a_folder_without_manifest_is_queried_file_by_file(merged, parts, tmp_path):
    plain = shutil.copytree(parts, tmp_path / "plain")
    (plain / "_partitions.parquet").unlink()
    box = (170, -10, -170, 80)
    result = query(plain, bbox=box)
    files = len(list(plain.iterdir()))
    assert (result.report.files_total, result.report.files_read) == (files, files)
    assert result.table.equals(query(merged, bbox=box).table)


def test_partitioned_merges_are_deterministic_and_reruns_replace(inputs, parts, tmp_path):
    src, _ = inputs
    first = _digests(parts)
    out = tmp_path / "world"
    # spilled through partitions (3,000 rows split again), the same bytes
    merge(src, out, progress=False, row_group_rows=2000, partition_rows=ROWS, memory_rows=3_000)
    assert _digests(out) == first
    # a rerun with larger files replaces the folder's content: no file of the first is left
    (out / "notes.txt").write_text("kept")
    merge(src, out, progress=False, row_group_rows=2000, partition_rows=3 * ROWS)
    manifest = _manifest(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        manifest["file"].to_pylist() + ["_partitions.parquet", "notes.txt"]
    )
    assert manifest.num_rows < len(first) - 1
    merge(src, out, progress=False, row_group_rows=2000, partition_rows=ROWS)
    assert {k: v for k, v in _digests(out).items() if k != "notes.txt"} == first
    assert [p.name for p in tmp_path.iterdir()] == ["world"]  # spilled partitions removed


def test_a_partitioned_merge_into_its_source_skips_its_own_files(inputs, tmp_path):
    src, rows = inputs
    tree = shutil.copytree(src, tmp_path / "index")
    merge(tree, tree / "merged", progress=False, partition_rows=ROWS)
    again = merge(tree, tree / "merged", progress=False, partition_rows=ROWS)
    assert (again.files, again.rows) == (ITEMS, rows)


def test_partitioned_merge_and_query_over_s3(inputs, merged, parts, bucket, s3_server, tmp_path):
    import boto3

    src, rows = inputs
    client = boto3.client("s3", endpoint_url=s3_server)
    for path in sorted(src.rglob("*.parquet")):
        client.upload_file(str(path), bucket, f"v1/{path.relative_to(src).as_posix()}")
    result = merge(f"s3://{bucket}/v1", f"s3://{bucket}/world", progress=False,
                   row_group_rows=2000, partition_rows=ROWS)
    assert (result.files, result.rows) == (ITEMS, rows)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="world/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(f"world/{p.name}" for p in parts.iterdir())
    for o in listed:  # the same bytes as the local merge
        body = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        assert body == (parts / o["Key"].removeprefix("world/")).read_bytes()
    box = (179.5, -60, -179.5, 75)
    remote = query(f"s3://{bucket}/world", bbox=box, max_cloud=0.3)
    local = query(parts, bbox=box, max_cloud=0.3)
    assert remote.table.equals(local.table) and remote.table.equals(
        query(merged, bbox=box, max_cloud=0.3).table
    )
    assert (remote.report.files_read, remote.report.bytes_read) == (
        local.report.files_read, local.report.bytes_read
    )


def test_cli_merge_partitions(inputs, parts, tmp_path):
    from conftest import run_cli

    src, rows = inputs
    out = tmp_path / "world"
    run = run_cli("merge", str(src), str(out), "--partition-rows", str(ROWS))
    assert f"{rows} chips from {ITEMS} index files" in run.stdout
    # the same files as the API's (their row groups differ: the CLI writes the default size)
    assert _manifest(out)["rows"].to_pylist() == _manifest(parts)["rows"].to_pylist()
    assert _manifest(out)["row_groups"].to_pylist() == [1] * _manifest(parts).num_rows


def test_bad_partition_rows_is_one_clear_error(inputs, tmp_path):
    with pytest.raises(ConfigError, match="partition_rows must be a positive row count"):
        merge(inputs[0], tmp_path / "world", progress=False, partition_rows=0)


@pytest.mark.parametrize("name, message", [
    ("../all.parquet", "names a file outside its folder"),
    ("part-00099.parquet", "no such file|cannot"),
])
def test_a_bad_manifest_is_one_clear_error(parts, tmp_path, name, message):
    folder = shutil.copytree(parts, tmp_path / "world")
    manifest = _manifest(folder)
    files = manifest["file"].to_pylist()
    files[0] = name
    manifest = manifest.set_column(0, manifest.schema.field(0), pa.array(files))
    pq.write_table(manifest, folder / "_partitions.parquet")
    with pytest.raises((IndexFormatError, ObjectError), match=message):
        query(folder, bbox=(-180, -90, 180, 90))


def test_a_manifest_of_no_files_is_one_clear_error(parts, tmp_path):
    folder = shutil.copytree(parts, tmp_path / "world")
    pq.write_table(_manifest(folder).slice(0, 0), folder / "_partitions.parquet")
    with pytest.raises(NotFoundError, match="names no index file"):
        query(folder, bbox=(0, 0, 1, 1))
