"""merge under hostile and unlucky inputs (issue 12): its own output inside the source,
parquet that is not an index, a small $TMPDIR, many small inputs, a killed merge."""

import os
import tempfile
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stacchip_core import merge, write_index
from stacchip_core.core.index import read_index
from stacchip_core.errors import IndexFormatError

ROWS = 9 + 9 + 4 + 4


@pytest.fixture
def tree(index_tree, tmp_path):
    import shutil

    root, _ = index_tree
    shutil.copytree(root / "index", tmp_path / "index")
    return tmp_path / "index"


@pytest.mark.parametrize("form", ["path", "file", "relative"])
def test_dst_inside_src_is_not_an_input_locally(tree, form, monkeypatch):
    out = tree / "naip" / "all.parquet"
    if form == "file":
        src, dst = f"file://{tree}", f"file://{out}"
    elif form == "relative":
        monkeypatch.chdir(tree.parent)
        src, dst = "index", "index/naip/../naip/all.parquet"
    else:
        src, dst = tree, out
    for _ in range(3):
        result = merge(src, dst, progress=False)
        assert (result.files, result.rows) == (4, ROWS)
        assert pq.read_metadata(out).num_rows == ROWS


def test_dst_inside_src_is_not_an_input_on_s3(tree, bucket, s3_server):
    client = boto3.client("s3", endpoint_url=s3_server)
    for path in sorted(tree.rglob("*.parquet")):
        client.upload_file(str(path), bucket, f"v1/index/{path.relative_to(tree).as_posix()}")
    for _ in range(3):
        result = merge(
            f"s3://{bucket}/v1/index", f"s3://{bucket}/v1/index/all.parquet", progress=False
        )
        assert (result.files, result.rows) == (4, ROWS)
    body = client.get_object(Bucket=bucket, Key="v1/index/all.parquet")["Body"].read()
    assert pq.read_metadata(pa.BufferReader(body)).num_rows == ROWS
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def _not_an_index(path: Path, kind: str) -> None:
    table = read_index(min(path.parent.parent.rglob("index_*.parquet")))
    if kind == "other schema":
        table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    elif kind == "null chipids":
        table = table.set_column(0, "chipid", pa.nulls(len(table), pa.string()))
    elif kind == "null geometry":
        i = table.schema.get_field_index("geometry")
        table = table.set_column(i, "geometry", pa.nulls(len(table), pa.binary()))
    elif kind == "empty chipids":
        table = table.set_column(0, "chipid", pa.array([""] * len(table)))
    pq.write_table(table, path)


@pytest.mark.parametrize(
    "kind, message",
    [
        (
            "other schema",
            "is not a stacchip index: no column chipid, platform, item_id, item_href, chip_index_x",
        ),
        ("null chipids", "is not a stacchip index: 4 rows without chipid"),
        ("null geometry", "is not a stacchip index: 4 rows without geometry"),
        ("empty chipids", "is not a stacchip index: empty chip ids"),
    ],
)
def test_parquet_that_is_not_an_index_is_refused(tree, tmp_path, kind, message):
    bad = tree / "zzz" / "bad.parquet"
    bad.parent.mkdir()
    _not_an_index(bad, kind)
    with pytest.raises(IndexFormatError, match=message):
        merge(tree, tmp_path / "out.parquet", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["index"]  # nothing published, nothing left


def test_cli_refuses_a_foreign_parquet_in_one_line(tree, tmp_path):
    from conftest import run_cli

    pq.write_table(pa.table({"a": [1]}), tree / "foreign.parquet")
    r = run_cli("merge", tree, tmp_path / "out.parquet")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and "foreign.parquet is not a stacchip index" in r.stderr
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_merge_needs_no_tmpdir(tree, tmp_path, monkeypatch, where, request):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-such-tmpdir"))
    if where == "local":
        result = merge(tree, tmp_path / "out" / "m.parquet", progress=False)
        assert result.rows == ROWS and sorted(os.listdir(tmp_path / "out")) == ["m.parquet"]
    else:
        name = request.getfixturevalue("bucket")
        result = merge(tree, f"s3://{name}/m.parquet", progress=False)
        assert result.rows == ROWS


@pytest.mark.parametrize("size, groups", [(10, [10, 10, 6]), (26, [26]), (1000, [26])])
def test_row_groups_do_not_follow_the_inputs(tree, tmp_path, size, groups):
    merge(tree, tmp_path / "m.parquet", progress=False, row_group_rows=size)
    meta = pq.read_metadata(tmp_path / "m.parquet")
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == groups


def test_many_small_inputs_make_one_row_group(tree, tmp_path):
    one = read_index(next(tree.rglob("index_*.parquet")))
    for i in range(300):
        write_index(one, tmp_path / "many" / f"{i:04d}" / "index.parquet")
    result = merge(tmp_path / "many", tmp_path / "m.parquet", progress=False)
    assert result.to_dict() == {
        "files": 300,
        "rows": 300 * len(one),
        "output": str((tmp_path / "m.parquet").resolve()),
    }
    meta = pq.read_metadata(tmp_path / "m.parquet")
    assert meta.num_row_groups == 1 and meta.num_rows == 300 * len(one)
    # sorted by place: the 300 copies of a chip are neighbours, each chip's copies all there
    chipids = pq.read_table(tmp_path / "m.parquet")["chipid"].to_pylist()
    assert chipids == [c for c in dict.fromkeys(chipids) for _ in range(300)]
    assert sorted(dict.fromkeys(chipids)) == sorted(one["chipid"].to_pylist())
