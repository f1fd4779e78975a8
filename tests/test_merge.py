import hashlib

import boto3
import geopandas as gpd
import pyarrow.parquet as pq
import pytest
from conftest import copy_tree

from stacchip_core import StacchipError, merge
from stacchip_core.pipeline.merge import MergeReport


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_merge_local_keeps_all_rows_and_geo_metadata(index_tree, tmp_path):
    root, counts = index_tree
    result = merge(root / "index", tmp_path / "merged.parquet", progress=False)
    assert result.files == 4 and result.rows == sum(counts.values()) == 9 + 9 + 4 + 4
    gdf = gpd.read_parquet(tmp_path / "merged.parquet")
    assert gdf.groupby("item_id").size().to_dict() == counts
    assert set(gdf.platform) == {"sentinel-2-l2a", "landsat-c2l2-sr", "naip"}
    assert gdf.crs.to_string() == "OGC:CRS84"


def test_merge_is_idempotent(index_tree, tmp_path):
    root, counts = index_tree
    merge(root / "index", tmp_path / "m.parquet", progress=False)
    first = digest(tmp_path / "m.parquet")
    merge(root / "index", tmp_path / "m.parquet", progress=False)
    assert digest(tmp_path / "m.parquet") == first
    # merging into the source tree does not swallow the previous output (on a copy: the tree
    # is shared by other tests)
    tree = copy_tree(root / "index", tmp_path / "index")
    merge(tree, tree / "all.parquet", progress=False)
    again = merge(tree, tree / "all.parquet", progress=False)
    assert again.files == 4 and again.rows == sum(counts.values())
    assert digest(tree / "all.parquet") == first  # the same rows in the same order


def test_merge_between_s3_buckets(index_tree, bucket, s3_server, tmp_path):
    root, counts = index_tree
    client = boto3.client("s3", endpoint_url=s3_server)
    for path in sorted((root / "index").rglob("*.parquet")):
        client.upload_file(str(path), bucket, f"v1/{path.relative_to(root).as_posix()}")
    result = merge(f"s3://{bucket}/v1/index", f"s3://{bucket}/merged/all.parquet", progress=False)
    assert result == MergeReport(files=4, rows=sum(counts.values()), output=f"s3://{bucket}/merged/all.parquet")
    client.download_file(bucket, "merged/all.parquet", str(tmp_path / "all.parquet"))
    assert pq.read_table(tmp_path / "all.parquet").num_rows == sum(counts.values())


def test_merge_of_nothing_is_an_error(tmp_path):
    with pytest.raises(StacchipError, match="no .parquet index files"):
        merge(tmp_path, tmp_path / "out.parquet")


def test_local_store_removes_what_a_killed_writer_left(tmp_path):
    from stacchip_core.io.store import LocalStore

    store = LocalStore(tmp_path)
    store.write_bytes("p/item/a.tif", b"done")
    (tmp_path / "p" / "item" / ".b.tif.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "p" / "item" / "sub").mkdir()
    (tmp_path / "p" / "item" / "sub" / ".c.json.zz.tmp").write_bytes(b"half")
    assert store.remove_partial("p/item") == 2
    assert sorted(p.name for p in (tmp_path / "p").rglob("*") if p.is_file()) == ["a.tif"]
    assert store.remove_partial("p/missing") == 0
