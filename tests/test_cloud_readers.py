"""The readers over object storage (issue 10): Chipper, chip_from_row, ChipReader/ChipDataset,
prechip and `stacchip chip` read chips from COG layouts, pixel-exact with the rasterio path,
over a local disk, file://, moto's S3 server and a loopback HTTP Range server."""

import json
import logging
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from conftest import run_cli
from rasterio.transform import from_origin
from rasters import write_small_tif

from stacchip_core import hookimpl, plugins
from stacchip_core.core import chipper as chipper_mod
from stacchip_core.core import tiles
from stacchip_core.core.chip import Chip
from stacchip_core.core.chipper import Chipper, chip_from_row
from stacchip_core.core.indexer import Indexer
from stacchip_core.core.layout import decode
from stacchip_core.core.output import write_chip
from stacchip_core.core.tiles import GridSpec, plan
from stacchip_core.errors import AssetError, ObjectError
from stacchip_core.io import objects
from stacchip_core.training.chipread import ChipReader
from stacchip_core.training.dataset import ChipDataset

S2 = "sentinel-2-l2a"
RGB = ["red", "green", "blue"]
# 768 px scene, 512 px tiles: chip (0, 0) of 256 px touches 1 tile at 10 m; with 200 px chips
# chip (2, 2) spans 400-599 and touches 4 tiles, chip (2, 0) 2 tiles
XYS = [(0, 0), (2, 0), (2, 2), (1, 3)]


@pytest.fixture(autouse=True)
def _fresh_warnings():
    # "one warning per asset" and known stale objects are per process: each test starts afresh
    chipper_mod._WARNED.clear()
    tiles._STALE.clear()


def _item_at(src: Path, where: str, tmp_path: Path, request) -> dict:
    """The S2 scene's item with its assets at ``where``: path, file://, s3:// (moto)."""
    item = json.loads(src.read_text())
    for asset in item["assets"].values():
        href = asset["href"]
        if not href.startswith(str(src.parent)):
            continue
        if where == "file":
            asset["href"] = f"file://{href}"
        elif where == "s3":
            bucket = request.getfixturevalue("bucket")
            boto3.client("s3").upload_file(href, bucket, f"s2/{Path(href).name}")
            asset["href"] = f"s3://{bucket}/s2/{Path(href).name}"
    return item


def _assert_same_chip(a: Chip, b: Chip) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key])
    assert a.transform == b.transform and a.crs == b.crs and a.band_names == b.band_names


@pytest.mark.parametrize("chip_size", [256, 200])
@pytest.mark.parametrize("where", ["path", "file", "s3", "http"])
def test_chipper_layouts_equal_rasterio(synthetic_scenes, tmp_path, request, where, chip_size):
    """10 m, 20 m and 60 m assets; chips touching 1, 2 and 4 tiles; the same Chip either way."""
    if where == "http":
        _, url, _ = request.getfixturevalue("http_s2")
        item = url
    else:
        item = _item_at(Path(synthetic_scenes["s2"]), where, tmp_path, request)
    xys = [(x, y) for x, y in XYS if x < 768 // chip_size and y < 768 // chip_size]
    assets = ["red", "nir08", "coastal", "scl"]  # 10 m, 20 m, 60 m (uint16), 20 m uint8
    with Chipper(item, chip_size=chip_size, assets=assets) as fast, \
            Chipper(item, chip_size=chip_size, assets=assets, use_layouts=False) as slow:
        lays = fast.layouts()
        if where in ("path", "file"):  # a Chipper reads local files through its open handles
            assert lays == {}
            lays = decode(Indexer(item, platform=S2, stats=False).asset_layouts())
        else:
            assert set(lays) == set(assets)
        if chip_size == 200:
            spec = GridSpec.from_grid(fast.grid)
            assert sorted({len(plan(lays["red"], spec, x, y).tiles) for x, y in xys}) == [1, 2, 4]
        batch = fast.chips(xys)
        for (x, y), chip in zip(xys, batch):
            assert isinstance(chip, Chip) and (chip.x, chip.y) == (x, y)
            _assert_same_chip(chip, slow.chip(x, y))
            assert chip.transform == fast.grid.transform @ Affine.translation(
                x * chip_size, y * chip_size
            )


def _http_index(url: str, tmp_path: Path, **kwargs) -> Path:
    out = tmp_path / "idx.parquet"
    pq.write_table(Indexer(url, platform=S2, stats=False, **kwargs).create_index(), out)
    return out


def test_http_reads_fetch_only_tiles_of_the_requested_bands(http_s2, tmp_path):
    """ChipReader on rows with layouts: no item JSON, no header, only the RGB objects, no more
    requests than tiles touched, exactly those tiles' bytes."""
    server, url, _ = http_s2
    rows = pq.read_table(_http_index(url, tmp_path)).to_pylist()
    lays = decode(rows[0]["layouts"])
    grid = GridSpec.from_layouts(lays, 256)
    server.reset()
    reader = ChipReader(bands=RGB)
    got = reader.read_many(rows)
    assert len(got) == 9 and got[0].shape == (3, 256, 256) and got[0].dtype == np.float32
    touched = {(k, t) for r in rows for k in RGB
               for t in plan(lays[k], grid, r["chip_index_x"], r["chip_index_y"]).tiles}
    paths = {p for _, p, _ in server.log}
    assert paths == {f"/{Path(lays[k].href).name}" for k in RGB}  # no item.json, no nir/swir
    assert server.requests <= len(touched)
    tiles_bytes = sum(
        int(lays[k].counts[ty * lays[k].tiles_across + tx]) for k, (tx, ty) in touched
    )
    # coalesced ranges hold nothing else but the 4-byte leader and trailer GDAL's COG driver
    # writes around each tile (measured: 9 gaps of 8 bytes between 3 assets' 4 tiles)
    assert tiles_bytes <= server.bytes <= tiles_bytes + 8 * len(touched)
    assert all(rng and not rng.startswith("bytes=0-") for _, _, rng in server.log)  # no header read
    # the rasterio path gives the same pixels
    slow = ChipReader(bands=RGB, use_layouts=False)
    for row, arr in zip(rows, got):
        np.testing.assert_array_equal(arr, slow.read(row))


def test_dataset_batches_equal_single_reads(http_s2, tmp_path):
    _, url, _ = http_s2
    index = _http_index(url, tmp_path)
    ds = ChipDataset(str(index), bands=["red", "nir", "swir16"])
    batch = ds.__getitems__([8, 0, 4, 4])
    singles = [ds[i] for i in (8, 0, 4, 4)]
    for a, b in zip(batch, singles):
        assert a["chipid"] == b["chipid"]
        np.testing.assert_array_equal(a["pixels"], b["pixels"])
    row = pq.read_table(index).slice(8, 1).to_pylist()[0]
    with Chipper(url, chip_size=256, use_layouts=False) as slow:
        ref = slow.chip(row["chip_index_x"], row["chip_index_y"])
    np.testing.assert_array_equal(
        batch[0]["pixels"], np.concatenate([ref["red"], ref["nir"], ref["swir16"]])
    )


def test_chip_from_row_over_http(http_s2, tmp_path):
    _server, url, _ = http_s2
    row = pq.read_table(_http_index(url, tmp_path)).slice(5, 1).to_pylist()[0]
    chip = chip_from_row(row, assets=["red"])
    assert chip.chipid == row["chipid"] and list(chip) == ["red"]
    with Chipper(url, assets=["red"], use_layouts=False) as slow:
        _assert_same_chip(chip, slow.chip(row["chip_index_x"], row["chip_index_y"]))


@pytest.mark.parametrize("change", ["rewritten", "missing"])
def test_stale_layouts_fall_back_with_one_warning_per_asset(http_s2, tmp_path, caplog, change):
    _server, url, root = http_s2
    rows = pq.read_table(_http_index(url, tmp_path)).to_pylist()
    red = root / "red.tif"
    if change == "rewritten":  # another size and ETag: the same scene written with other tiles
        with rasterio.open(red) as ds:
            data, profile = ds.read(), ds.profile
        profile.update(blockxsize=256, blockysize=256, compress="lzw")
        red.unlink()
        with rasterio.open(red, "w", **profile) as ds:
            ds.write(data[:, ::-1])  # flipped: the fallback must read the new pixels
    else:
        red.unlink()
    reader = ChipReader(bands=["red", "green"])
    with caplog.at_level(logging.WARNING):
        if change == "missing":
            with pytest.raises(AssetError, match=r"red") as err:
                reader.read_many(rows[:3])
            assert str(err.value).count("\n") == 0
        else:
            got = reader.read_many(rows[:3]) + reader.read_many(rows[3:5])
    stale = [
        r.getMessage() for r in caplog.records if "changed since it was indexed" in r.getMessage()
    ]
    assert len(stale) == 1 and "'red'" in stale[0]
    if change == "rewritten":
        for row, arr in zip(rows[:5], got):
            x, y = row["chip_index_x"], row["chip_index_y"]
            np.testing.assert_array_equal(
                arr[0], data[0, ::-1][y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256]
            )


def test_prechip_from_an_http_index(http_s2, tmp_path):
    from stacchip_core.training.prechip import prechip

    _, url, _ = http_s2
    index = _http_index(url, tmp_path)
    report = prechip(str(index), str(tmp_path / "cubes"), cube_size=4, spares=1, workers=2)
    assert len(report["written"]) == 1 and not report["failed_chips"]
    cube = np.load(tmp_path / "cubes" / report["written"][0])
    rows = {r["chipid"]: r for r in pq.read_table(index).to_pylist()}
    slow = ChipReader(use_layouts=False)
    for chipid, pixels in zip(cube["chipids"], cube["pixels"]):
        np.testing.assert_array_equal(pixels, slow.read(rows[str(chipid)]))


def test_no_layouts_index_reads_through_rasterio(http_s2, tmp_path):
    server, url, _ = http_s2
    index = _http_index(url, tmp_path, layouts=False)
    rows = pq.read_table(index).to_pylist()
    assert all(r["layouts"] is None for r in rows)
    ds = ChipDataset(str(index), bands=["red"])
    server.reset()
    sample = ds[3]
    assert "/item.json" in {p for _, p, _ in server.log}  # the slow path reads the item
    with Chipper(url, assets=["red"], use_layouts=False) as slow:
        ref = slow.chip(rows[3]["chip_index_x"], rows[3]["chip_index_y"])["red"]
    np.testing.assert_array_equal(sample["pixels"][0], ref[0])


def test_merged_index_carries_layouts(synthetic_scenes, tmp_path):
    from stacchip_core.pipeline.merge import merge

    parts = tmp_path / "parts"
    parts.mkdir()
    blobs, items = {}, {}
    for name in ("s2", "s2pc"):
        table = Indexer(str(synthetic_scenes[name]), stats=False).create_index()
        item_id = table["item_id"][0].as_py()
        blobs[item_id], items[item_id] = table["layouts"][0].as_py(), str(synthetic_scenes[name])
        pq.write_table(table, parts / f"{name}.parquet")
    merge(str(parts), str(tmp_path / "all.parquet"), progress=False)
    merged = pq.read_table(tmp_path / "all.parquet").to_pylist()
    assert {r["item_id"] for r in merged} == set(blobs)
    assert all(r["layouts"] == blobs[r["item_id"]] for r in merged)
    ds = ChipDataset(str(tmp_path / "all.parquet"), bands=["red"])
    for i in (0, len(merged) - 1):  # one chip of each item
        row = merged[i]
        with Chipper(items[row["item_id"]], assets=["red"], use_layouts=False) as slow:
            ref = slow.chip(row["chip_index_x"], row["chip_index_y"])
        np.testing.assert_array_equal(ds[i]["pixels"], ref.stack().astype(np.float32))


class _Signer:
    @hookimpl
    def stacchip_sign_href(self, href, asset):
        if href.startswith("http://127.0.0.1") and href.endswith(".tif"):
            return f"{href}?sv=2024&sig=S3CRETSIG"
        return None


def test_hrefs_are_signed_at_read_time_and_stored_unsigned(http_s2, tmp_path):
    server, url, _ = http_s2
    plugins.get_plugin_manager().register(_Signer(), name="test-signer")
    rows = pq.read_table(_http_index(url, tmp_path)).to_pylist()
    assert all("sig" not in lay.href for lay in decode(rows[0]["layouts"]).values())
    assert b"S3CRETSIG" not in rows[0]["layouts"]
    tifs = [p for _, p, _ in server.log if ".tif" in p]
    assert tifs and all(
        p.endswith("?sv=2024&sig=S3CRETSIG") for p in tifs
    )  # the header reads were signed
    server.reset()
    ChipReader(bands=["red"]).read(rows[0])
    assert server.log and all(p == "/red.tif?sv=2024&sig=S3CRETSIG" for _, p, _ in server.log)


def test_offset_assets_are_resampled_exact_ones_read_from_layouts(tmp_path, caplog):
    from rangeserver import RangeServer

    """An asset off the grid's lattice (20 m, origin 5 m off) takes the resampled rasterio read;
    the exact one the layout path. Both equal a Chipper without layouts."""
    rng = np.random.default_rng(3)
    exact = rng.integers(0, 5000, (1, 256, 256)).astype("uint16")
    offset = rng.integers(0, 5000, (1, 128, 128)).astype("uint16")
    for name, data, res, x0 in (("exact", exact, 10, 500000), ("offset", offset, 20, 499995)):
        with rasterio.open(
            tmp_path / f"{name}.tif",
            "w",
            driver="GTiff",
            width=data.shape[2],
            height=data.shape[1],
            count=1,
            dtype="uint16",
            crs="EPSG:32633",
            transform=from_origin(x0, 4000000, res, res),
            tiled=True,
            blockxsize=128,
            blockysize=128,
            compress="deflate",
        ) as ds:
            ds.write(data)
    server = RangeServer(tmp_path)  # started below
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "off",
        "geometry": None,
        "links": [],
        "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:epsg": 32633},
        "assets": {
            "exact": {
                "href": f"{server.url}/exact.tif",
                "type": "image/tiff",
                "proj:shape": [256, 256],
                "proj:transform": [10, 0, 500000, 0, -10, 4000000],
            },
            "offset": {
                "href": f"{server.url}/offset.tif",
                "type": "image/tiff",
                "proj:shape": [128, 128],
                "proj:transform": [20, 0, 499995, 0, -20, 4000000],
            },
        },
    }
    with (
        caplog.at_level(logging.DEBUG, logger="stacchip_core.core.read"),
        server,
        Chipper(item, chip_size=64) as fast,
        Chipper(item, chip_size=64, use_layouts=False) as slow,
    ):
        assert set(fast.layouts()) == {"exact", "offset"}
        for x, y in [(0, 0), (3, 2)]:
            _assert_same_chip(fast.chip(x, y), slow.chip(x, y))
        np.testing.assert_array_equal(fast.chip(3, 2)["exact"], exact[:, 128:192, 192:256])
        # three chips: 'exact' from its layout each time, 'offset' resampled by rasterio
        assert (fast.report.chips, fast.report.layout_reads, fast.report.rasterio_reads) == (
            3,
            3,
            3,
        )
        assert fast.report.fallbacks == (("unsupported", 3),)
    rasterio_reads = {r.args[0] for r in caplog.records if "read with rasterio" in r.getMessage()}
    assert rasterio_reads == {"offset"}


@pytest.mark.parametrize("suffix", [".npz", ".tif", ".png"])
def test_write_chip_exact_pixels_and_georeferencing(synthetic_scenes, tmp_path, suffix):
    with Chipper(str(synthetic_scenes["s2"]), assets=["red", "green", "blue", "nir08"]) as chipper:
        chip = chipper.chip(2, 1)
    path = write_chip(tmp_path / f"c{suffix}", chip)
    if suffix == ".npz":
        saved = np.load(path)
        for key in chip:
            np.testing.assert_array_equal(saved[key], chip[key])
        assert str(saved["meta_chipid"]) == chip.chipid
    elif suffix == ".tif":
        with rasterio.open(path) as ds:
            np.testing.assert_array_equal(ds.read(), chip.stack())
            assert (
                ds.transform
                == chip.transform
                == Affine(10, 0, 499980 + 512 * 10, 0, -10, 6400000 - 256 * 10)
            )
            assert ds.crs.to_epsg() == 32720
            assert ds.descriptions == chip.band_names == ("red", "green", "blue", "nir08")
            assert ds.tags()["chipid"] == chip.chipid
    else:
        with rasterio.open(path) as ds:
            assert (ds.count, ds.dtypes[0], ds.shape) == (3, "uint8", (256, 256))


def test_cli_chip_of_an_http_index_writes_a_georeferenced_tif(http_s2, tmp_path):
    _server, url, _ = http_s2
    index = _http_index(url, tmp_path)
    out = tmp_path / "chip.tif"
    result = run_cli("chip", index, "--row", 4, "--assets", "red,nir08", "-o", out)
    assert result.returncode == 0, result.stderr
    row = pq.read_table(index).slice(4, 1).to_pylist()[0]
    with Chipper(url, assets=["red", "nir08"], use_layouts=False) as slow:
        ref = slow.chip(row["chip_index_x"], row["chip_index_y"])
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), ref.stack())
        assert ds.transform == ref.transform and ds.crs.to_epsg() == 32720


@pytest.mark.parametrize("url,kind,config,path", [
    ("gs://bkt/a/b.tif", "GCSStore", {"bucket": "bkt"}, "a/b.tif"),
    ("az://cont/a/b.tif", "AzureStore", {"container_name": "cont"}, "a/b.tif"),
    ("s3://bkt/k%20x.tif", "S3Store", {"bucket": "bkt"}, "k x.tif"),
])
def test_cloud_urls_resolve_to_their_store(monkeypatch, url, kind, config, path):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("STACCHIP_ANONYMOUS", "1")
    store, key = objects.locate(url)
    assert type(store).__name__ == kind and key == path
    assert config.items() <= store.config.items()
    assert store.config.get("skip_signature") in (True, "true")  # anonymous


@pytest.mark.parametrize("url,variable", [
    ("az://cont/a.tif", "AZURE_STORAGE_ACCOUNT_NAME"),
    ("s3://bkt/a.tif", "AWS_REGION"),
    ("s3://bkt/a.tif", "STACCHIP_IO_TIMEOUT"),
    ("https://example.com/a.tif", "HTTPS_PROXY"),
])
def test_a_changed_setting_gives_a_new_store(monkeypatch, url, variable):
    """Stores are kept per bucket or host, but one built before a setting it reads changed is
    not reused (test_az_url_without_account_is_one_clear_error shows what that changes)."""
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "first")
    first, _ = objects.locate(url)
    assert objects.locate(url)[0] is first  # kept while nothing changes
    monkeypatch.setenv(variable, "7" if variable == "STACCHIP_IO_TIMEOUT" else "http://127.0.0.1:9")
    second, _ = objects.locate(url)
    assert second is not first
    monkeypatch.setenv("UNRELATED_SETTING", "1")  # a variable no store reads changes nothing
    assert objects.locate(url)[0] is second


def test_az_url_without_account_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    objects.locate("az://cont/x.tif")  # a store for this container, while the account was set
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)
    with pytest.raises(
        ObjectError, match=r"^cannot open az://cont/x.tif: .*AZURE_STORAGE_ACCOUNT_NAME\)$"
    ):
        objects.locate("az://cont/x.tif")


@pytest.mark.parametrize("header", ["same", "changed"])
@pytest.mark.parametrize("where", ["http", "s3"])
def test_same_size_rewrites_after_the_check(tmp_path, request, caplog, where, header):
    """An object rewritten with other pixels and the same size after its layout was checked
    (here, recorded): its ETag changes, so If-Match fails and the header is checked again.
    Same header (uncompressed tiles at the same offsets): the layout is still right and reads
    the new pixels, no warning. Another header (here its nodata tag): stale, one warning."""
    from stacchip_core.io import objects

    rng = np.random.default_rng(5)
    first, second = (rng.integers(0, 60000, (1, 128, 128)).astype("uint16") for _ in range(2))
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "etag", "geometry": None, "links": [],
            "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:epsg": 32633},
            "assets": {"a": {"type": "image/tiff", "proj:shape": [128, 128],
                             "proj:transform": [10, 0, 500000, 0, -10, 4000000]}}}
    path = tmp_path / "a.tif"

    def write(data, nodata):  # uncompressed: the same size whatever the pixels
        write_small_tif(path, data, nodata)

    write(first, 1)
    size, old = path.stat().st_size, path.read_bytes()
    if where == "s3":
        bucket = request.getfixturevalue("bucket")
        boto3.client("s3").upload_file(str(path), bucket, "e/a.tif")
        item["assets"]["a"]["href"] = f"s3://{bucket}/e/a.tif"
        context = None
    else:
        from rangeserver import RangeServer

        context = RangeServer(tmp_path).start()
        item["assets"]["a"]["href"] = f"{context.url}/a.tif"
    try:
        blob = Indexer(item, chip_size=64, stats=False).asset_layouts()
        n = decode(blob)["a"].head  # the bytes before the first tile: the TIFF's metadata
        assert 8 < n < 1024
        write(second, 1 if header == "same" else 2)
        new = path.read_bytes()
        assert len(new) == size and new != old and (new[:n] == old[:n]) == (header == "same")
        if where == "s3":
            boto3.client("s3").upload_file(str(path), bucket, "e/a.tif")
        before = objects.counters()
        with caplog.at_level(logging.WARNING), Chipper(item, chip_size=64, layouts=blob) as chipper:
            np.testing.assert_array_equal(chipper.chip(1, 1)["a"], second[:, 64:, 64:])
            np.testing.assert_array_equal(chipper.chip(0, 0)["a"], second[:, :64, :64])
        spent = objects.counters() - before
        stale = [
            r.getMessage()
            for r in caplog.records
            if "changed since it was indexed" in r.getMessage()
        ]
        if header == "same":
            assert not stale and spent.checks == 1 and spent.stale == 0
        else:
            assert len(stale) == 1 and "'a'" in stale[0] and spent.checks == 1 and spent.stale == 1
    finally:
        if context is not None:
            context.stop()
