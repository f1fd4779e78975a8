"""Issue 20: many items indexed at once in one process, `stacchip index` over many items or a
catalog search, processors running a batch of samples per job."""

import io

import pyarrow.parquet as pq
import pytest

from stacchip_core.core.index import index_bytes
from stacchip_core.core.indexer import Indexer, build_indexes
from stacchip_core.errors import ConfigError
from stacchip_core.pipeline.process import index_many, process, process_job
from stacchip_core.pipeline.runner import batch_count, batch_range

S2 = "sentinel-2-l2a"


def _item_paths(archive, collections=("sentinel-2-l2a", "landsat-c2l2-sr", "naip")):
    # not the decoys whose assets live on hosts that do not resolve
    return [p for c in collections for p in sorted((archive.items / c).rglob("*.json"))
            if ".invalid/" not in p.read_text()]


@pytest.mark.parametrize("workers", [2, 6])
def test_concurrent_builds_equal_sequential_ones_byte_for_byte(archive, workers):
    paths = _item_paths(archive)
    alone = [index_bytes(Indexer(str(p)).create_index()) for p in paths]
    assert len(paths) > 12
    sequential = list(build_indexes([str(p) for p in paths], workers=1))
    concurrent = list(build_indexes(iter([str(p) for p in paths]), workers=workers))
    for results in (sequential, concurrent):
        assert [index_bytes(r.table) for r in results] == alone
    assert [r.item.id for r in concurrent] == [r.item.id for r in sequential]


def test_a_failing_item_is_reported_and_the_rest_indexed(archive, tmp_path):
    paths = [str(p) for p in _item_paths(archive, ("naip",))]
    results = list(build_indexes([paths[0], str(tmp_path / "missing.json"), paths[1]], workers=3))
    assert [r.table is not None for r in results] == [True, False, True]
    assert results[1].error == f"no such item file: {tmp_path / 'missing.json'}"


def test_cli_index_many_items_into_a_folder_then_merge(archive, tmp_path):
    from conftest import run_cli

    paths = _item_paths(archive, ("naip", "landsat-c2l2-sr"))
    out = tmp_path / "out"
    r = run_cli("index", *paths, "-o", out, "--workers", "3")
    assert r.returncode == 0, r.stderr
    files = sorted((out / "index").rglob("*.parquet"))
    assert len(files) == len(paths)
    chips = sum(pq.read_metadata(f).num_rows for f in files)
    assert (
        f"{out}: {chips} chips of {len(paths)} items in " in r.stdout
        and "items/s, 3 at once); 0 failed" in r.stdout
    )
    for f in files:  # each file what the item gives alone
        item_id = f.parent.name
        path = next(p for p in paths if p.stem == item_id or item_id in p.read_text()[:400])
        assert f.read_bytes() == index_bytes(Indexer(str(path)).create_index())
    m = run_cli("merge", out / "index", tmp_path / "all.parquet")
    assert m.returncode == 0 and f"{chips} chips from {len(paths)} index files" in m.stdout


def test_cli_index_a_catalog_search(archive, tmp_path):
    from conftest import run_cli

    out = tmp_path / "out"
    r = run_cli(
        "index", "--catalog", archive.items, "--collections", S2, "--max-items", "3", "-o", out
    )
    assert r.returncode == 0, r.stderr
    assert len(list((out / "index" / S2).rglob("*.parquet"))) == 3


def test_items_without_a_self_link_are_written_beside_their_index(archive, tmp_path, bucket):
    import json

    import boto3

    dicts = [json.loads(p.read_text()) for p in _item_paths(archive, ("naip",))]
    for d in dicts:
        d["links"] = [link for link in d.get("links", []) if link.get("rel") != "self"]
    report = index_many(dicts, f"s3://{bucket}/v1", workers=2)
    assert (report.done, report.failed) == (len(dicts), 0)
    client = boto3.client("s3")
    first = dicts[0]["id"]
    body = client.get_object(Bucket=bucket, Key=f"v1/index/naip/{first}/index_{first}.parquet")[
        "Body"
    ].read()
    table = pq.read_table(io.BytesIO(body))
    assert table["item_href"][0].as_py() == f"s3://{bucket}/v1/naip/{first}/stac_item.json"
    item = json.loads(
        client.get_object(Bucket=bucket, Key=f"v1/naip/{first}/stac_item.json")["Body"].read()
    )
    assert item["id"] == first


def test_batch_ranges():
    assert [batch_range(j, 3, 8) for j in range(3)] == [range(3), range(3, 6), range(6, 8)]
    assert batch_count(8, 3) == 3 and batch_count(9, 3) == 3 and batch_count(1, 5) == 1
    with pytest.raises(ConfigError, match="past the last sample"):
        batch_range(3, 3, 8)


def test_a_batch_job_equals_its_samples_run_one_by_one(archive, tmp_path):
    from stacchip_core.pipeline.process import count_samples

    assert count_samples(S2, archive.mgrs) >= 2
    one_by_one = process(S2, 0, tmp_path / "a", archive.mgrs, str(archive.items)) + \
        process(S2, 1, tmp_path / "a", archive.mgrs, str(archive.items))
    batch = process_job(0, platform=S2, bucket=str(tmp_path / "b"), sample_source=archive.mgrs,
                        stac_api=str(archive.items), batch_size=2, workers=3)
    assert sorted({r.item_id for r in one_by_one}) == sorted(r.item_id for r in batch)
    assert all(r.status == "done" for r in batch)
    for r in batch:  # the same chips; hrefs name each bucket
        a = pq.read_table(tmp_path / "a" / "index" / S2 / r.item_id / f"index_{r.item_id}.parquet")
        b = pq.read_table(tmp_path / "b" / "index" / S2 / r.item_id / f"index_{r.item_id}.parquet")
        drop = ["item_href", "layouts"]
        assert a.drop_columns(drop).equals(b.drop_columns(drop)) and a.num_rows == r.chips


def test_cli_index_a_stac_api_search_equals_the_item_files(s3_archive, stac_api, tmp_path):
    """`stacchip index --catalog <STAC API>` searches a real stac-fastapi-pgstac (paged: more
    items than a page) and builds, per item, the index its JSON file gives: equal column by
    column, layouts included, but for item_href (the API's item URL against the file)."""
    import json

    from conftest import run_cli

    files = sorted((s3_archive / S2).rglob("*.json"))
    ids = {json.loads(p.read_text())["id"]: p for p in files}
    assert len(ids) > 20  # more than stac-fastapi's default page of 10
    api_out, file_out = tmp_path / "api", tmp_path / "files"
    r = run_cli("index", "--catalog", stac_api, "--collections", S2, "-o", api_out,
                "--workers", "4")
    assert r.returncode == 0, r.stderr
    assert f"of {len(ids)} items in " in r.stdout and "; 0 failed" in r.stdout
    r = run_cli("index", *files, "-o", file_out, "--workers", "4")
    assert r.returncode == 0, r.stderr
    built = {p.parent.name: p for p in (api_out / "index" / S2).rglob("*.parquet")}
    assert set(built) == set(ids)
    for item_id, path in ids.items():
        api = pq.read_table(built[item_id])
        own = pq.read_table(file_out / "index" / S2 / item_id / f"index_{item_id}.parquet")
        assert len(api) == len(own) > 0
        assert api.drop(["item_href"]).equals(own.drop(["item_href"]))
        assert api.schema.metadata == own.schema.metadata
        assert set(api["item_href"].to_pylist()) == {
            f"{stac_api}/collections/{S2}/items/{item_id}"}
        assert set(own["item_href"].to_pylist()) == {str(path)}
    assert len({x for p in built.values() for x in pq.read_table(p)["cloud_cover_percentage"]
                .to_pylist()}) > 10  # real statistics, not zeros
