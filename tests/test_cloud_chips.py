"""Chips from layouts (core.tiles) against exact pixels and against the rasterio path, over a
local disk, a loopback HTTP Range server and moto's S3 server."""

import logging
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from stacchip_core.core.chipper import _WARNED, Chipper
from stacchip_core.core.layout import decode, record_layouts
from stacchip_core.core.tiles import GridSpec, StaleLayout, Unsupported, plan, read_batch
from stacchip_core.errors import AssetError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli
from rangeserver import RangeServer

CS = 64  # chip size; tiles of 128 px: a chip touches 1, 2 or 4 tiles depending on where it lies
TILE = 128
W, H = 330, 330  # not multiples of the tile size: chips (4, y) and (x, 4) lie in partial edge tiles


def pattern(bands: int, h: int, w: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 1000, (bands, h, w)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(
        max(info.min, -3000), min(info.max, 3000), (bands, h, w), endpoint=True
    ).astype(dtype)


def write_tif(path: Path, data: np.ndarray, res: float = 10.0, nodata=None, predictor: int = 2,
              compress: str = "deflate", sparse_windows=None) -> Path:
    bands, h, w = data.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": bands,
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 4000000, res, res),
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": compress,
        "predictor": predictor,
        "nodata": nodata,
    }
    if sparse_windows is not None:
        profile["sparse_ok"] = True
    with rasterio.open(path, "w", **profile) as ds:
        if sparse_windows is None:
            ds.write(data)
        else:
            for win in sparse_windows:
                ds.write(
                    data[
                        :,
                        win.row_off : win.row_off + win.height,
                        win.col_off : win.col_off + win.width,
                    ],
                    window=win,
                )
    return path


def expected(data: np.ndarray, factor: int, x: int, y: int, cs: int = CS) -> np.ndarray:
    full = np.repeat(np.repeat(data, factor, axis=1), factor, axis=2)
    return full[:, y * cs:(y + 1) * cs, x * cs:(x + 1) * cs]


def chips(hrefs: dict[str, str], xys, cs: int = CS):
    lays = decode(record_layouts(hrefs))
    grid = GridSpec.from_layouts(lays, cs)
    return lays, read_batch([lays] * len(xys), [list(hrefs)] * len(xys), [grid] * len(xys), xys)


# (x, y) -> tiles touched with 128 px tiles and 64 px chips at factor 1: all chips touch one
# tile; at a 10 m grid over a 20 m asset chip (1, 0) covers native cols 32-63 (1 tile); with a
# 96 px offset (factor 1 and chip size 64 on a shifted grid) they would straddle, so straddling
# is tested with factor 3 (60 m): chip (1, 1) covers native rows/cols 21-42 (one tile) and chip
# (5, 5) native 106-127 / chip (6, 6) native 128-149, and (2,...) below with chip size 96
XYS_10M = [(0, 0), (1, 0), (3, 3), (4, 4)]  # (4, 4): the bottom-right edge tile


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("predictor", [1, 2])
def test_exact_pixels_by_dtype_and_predictor(tmp_path, dtype, predictor):
    data = pattern(1, H, W, dtype)
    href = str(write_tif(tmp_path / "a.tif", data, predictor=predictor))
    lays, res = chips({"a": href}, XYS_10M)
    assert lays["a"].dtype == dtype and lays["a"].predictor == predictor
    for (x, y), r in zip(XYS_10M, res):
        np.testing.assert_array_equal(r["a"], expected(data, 1, x, y))


# 64 px chips in 128 px tiles: tile (0, 0) holds chips (0..1, 0..1); its (first row, end row,
# first column, end column) that the batch's windows cover
@pytest.mark.parametrize("batch,region", [
    ([(1, 1)], (64, 128, 64, 128)),
    ([(0, 1)], (64, 128, 0, 64)),
    ([(1, 0)], (0, 64, 64, 128)),  # inflated down to row 64 only; columns 0-63 summed plainly
    ([(0, 0), (0, 1)], (0, 128, 0, 64)),
    ([(0, 1), (1, 0)], (0, 128, 0, 128)),
])
def test_only_the_rows_and_columns_windows_cover_are_undone(tmp_path, batch, region):
    """The predictor is undone on the rows and columns the batch's windows cover in a tile
    (the bounding box of their union), the tile inflated down to its last row only."""
    from stacchip_core.core.tiles import _regions, plan_window

    data = pattern(1, H, W, "uint16")
    href = str(write_tif(tmp_path / "a.tif", data, predictor=2))
    lays, res = chips({"a": href}, batch)
    for (x, y), r in zip(batch, res):
        np.testing.assert_array_equal(r["a"], expected(data, 1, x, y))
    plans = [plan_window(lays["a"], y * CS, x * CS, CS, CS) for x, y in batch]
    assert _regions(lays["a"], plans) == {(0, 0): region}


@pytest.mark.parametrize("rows", [1, 37, 64, 127, 128])
def test_tiles_inflate_in_part(rows):
    """A tile is inflated down to the last row its chips need and no further: with its
    Adler-32 checksum (the stream's last 4 bytes) broken, the top rows are still exact, and
    only the whole tile (which libdeflate checks) fails."""
    import zlib

    import deflate

    from stacchip_core.core.tiles import _inflate_rows

    tile = np.random.default_rng(rows).integers(0, 4000, (128, 96), dtype=np.uint16)
    stream = bytearray(zlib.compress(tile.tobytes()))
    stream[-1] ^= 0xFF
    row_bytes = 96 * 2
    if rows == 128:
        with pytest.raises(deflate.DeflateError):
            _inflate_rows(bytes(stream), row_bytes, rows, 128)
    else:
        raw = _inflate_rows(memoryview(bytes(stream)), row_bytes, rows, 128)
        np.testing.assert_array_equal(np.frombuffer(raw, np.uint16).reshape(rows, 96),
                                      tile[:rows])


def test_a_tile_cut_short_does_not_inflate_in_part():
    """A stream that ends before the rows a chip needs is an error, not a short array."""
    import zlib

    from stacchip_core.core.tiles import _inflate_rows

    tile = np.random.default_rng(0).integers(0, 4000, (128, 96), dtype=np.uint16)
    stream = zlib.compress(tile.tobytes())
    with pytest.raises(ValueError, match="not 12288"):
        _inflate_rows(stream[: len(stream) // 4], 96 * 2, 64, 128)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bands", [1, 3])
@pytest.mark.parametrize("predictor", [1, 3])
def test_floating_point_predictor(tmp_path, dtype, bands, predictor):
    """Deflate float tiles (Sentinel-1 RTC: float32, predictor 3) decoded by libdeflate and
    numpy, not async-tiff: bit for bit what rasterio reads, NaN included."""
    from stacchip_core.core.tiles import _libdeflate_decodes

    data = pattern(bands, H, W, dtype)
    data[:, :7, :9] = np.nan
    href = str(write_tif(tmp_path / "a.tif", data, predictor=predictor))
    with rasterio.open(href) as ds:
        ref = ds.read()
    lays, res = chips({"a": href}, XYS_10M)
    assert lays["a"].predictor == predictor and _libdeflate_decodes(lays["a"])
    for (x, y), r in zip(XYS_10M, res):
        want = np.ascontiguousarray(expected(ref, 1, x, y))
        assert r["a"].dtype == dtype and np.ascontiguousarray(r["a"]).tobytes() == want.tobytes()


@pytest.mark.parametrize("compress", ["lzw", "zstd"])
def test_other_codecs(tmp_path, compress):
    data = pattern(1, H, W, "uint16")
    href = str(write_tif(tmp_path / "a.tif", data, compress=compress))
    _, res = chips({"a": href}, XYS_10M)
    for (x, y), r in zip(XYS_10M, res):
        np.testing.assert_array_equal(r["a"], expected(data, 1, x, y))


def test_10_20_60m_assets_and_1_2_4_tiles(tmp_path):
    """A 10 m grid with 20 m and 60 m assets; chip size 96 so chips straddle tile edges:
    chip (1, 0) at 10 m spans cols 96-191 (tiles 0 and 1: 2 tiles), chip (1, 1) 4 tiles."""
    cs = 96
    b10 = pattern(1, 384, 384, "uint16", 1)
    b20 = pattern(1, 192, 192, "uint16", 2)
    b60 = pattern(1, 64, 64, "uint16", 3)
    hrefs = {
        "b10": str(write_tif(tmp_path / "b10.tif", b10, 10)),
        "b20": str(write_tif(tmp_path / "b20.tif", b20, 20)),
        "b60": str(write_tif(tmp_path / "b60.tif", b60, 60)),
    }
    xys = [(0, 0), (1, 0), (1, 1), (3, 3)]
    lays, res = chips(hrefs, xys, cs)
    grid = GridSpec.from_layouts(lays, cs)
    assert [len(plan(lays["b10"], grid, x, y).tiles) for x, y in xys] == [1, 2, 4, 1]
    for (x, y), r in zip(xys, res):
        np.testing.assert_array_equal(r["b10"], expected(b10, 1, x, y, cs))
        np.testing.assert_array_equal(r["b20"], expected(b20, 2, x, y, cs))
        np.testing.assert_array_equal(r["b60"], expected(b60, 6, x, y, cs))


def test_naip_like_4_band_pixel_interleaved(tmp_path):
    data = pattern(4, H, W, "uint8")
    href = str(write_tif(tmp_path / "naip.tif", data, predictor=2))
    lays, res = chips({"image": href}, XYS_10M)
    assert lays["image"].bands == 4 and lays["image"].planar == 1
    for (x, y), r in zip(XYS_10M, res):
        assert r["image"].shape == (4, CS, CS)
        np.testing.assert_array_equal(r["image"], expected(data, 1, x, y))


@pytest.mark.parametrize("nodata", [None, 7])
def test_sparse_tiles_read_as_nodata_or_zero_like_gdal(tmp_path, nodata):
    from rasterio.windows import Window

    data = pattern(1, H, W, "uint16")
    href = str(
        write_tif(
            tmp_path / "s.tif", data, nodata=nodata, sparse_windows=[Window(0, 0, TILE, TILE)]
        )
    )
    lays, res = chips({"s": href}, [(0, 0), (4, 4)])
    assert lays["s"].counts[0] > 0 and lays["s"].counts[-1] == 0 and lays["s"].offsets[-1] == 0
    assert lays["s"].nodata == (None if nodata is None else float(nodata))
    np.testing.assert_array_equal(res[0]["s"], expected(data, 1, 0, 0))
    with rasterio.open(href) as ds:  # GDAL's reading of the sparse tile, the reference
        ref = ds.read(window=Window(4 * CS, 4 * CS, CS, CS))
    np.testing.assert_array_equal(res[1]["s"], ref)
    assert np.all(ref == (nodata or 0))


def test_strips_and_offset_grids_are_left_to_rasterio(tmp_path):
    data = pattern(1, H, W, "uint16")
    striped = tmp_path / "strips.tif"
    with rasterio.open(
        striped,
        "w",
        driver="GTiff",
        width=W,
        height=H,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 10, 10),
        compress="deflate",
    ) as ds:
        ds.write(data)
    assert record_layouts({"s": str(striped)}) is None
    href = str(write_tif(tmp_path / "a.tif", data))
    lays = decode(record_layouts({"a": href}))
    shifted = GridSpec(10, 500005, -10, 4000000, CS)  # half a pixel off
    (res,) = read_batch([lays], [["a"]], [shifted], [(0, 0)])
    assert isinstance(res["a"], Unsupported)


# --- over servers -------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path):
    data = pattern(1, H, W, "uint16")
    write_tif(tmp_path / "a.tif", data)
    with RangeServer(tmp_path) as server:
        yield server, data, tmp_path


def test_http_chips_fetch_only_the_tiles_touched(served):
    server, data, _ = served
    lays = decode(record_layouts({"a": f"{server.url}/a.tif"}))
    assert server.requests == 1  # one ranged read recorded the layout
    server.reset()
    grid = GridSpec.from_layouts(lays, CS)
    xys = [(0, 0), (3, 3)]
    res = read_batch([lays] * 2, [["a"]] * 2, [grid] * 2, xys)
    for (x, y), r in zip(xys, res):
        np.testing.assert_array_equal(r["a"], expected(data, 1, x, y))
    # tile (0, 0) and tile (1, 1): two requests, exactly their bytes
    tiles = [0, lays["a"].tiles_across + 1]
    assert server.requests == 2
    assert server.bytes == sum(int(lays["a"].counts[t]) for t in tiles)
    assert all(method == "GET" and rng for method, _, rng in server.log)


def test_http_transient_errors_are_retried(served):
    server, data, _ = served
    lays = decode(record_layouts({"a": f"{server.url}/a.tif"}))
    server.faults["/a.tif"] = [503, 503]
    (res,) = read_batch([lays], [["a"]], [GridSpec.from_layouts(lays, CS)], [(0, 0)])
    np.testing.assert_array_equal(res["a"], expected(data, 1, 0, 0))
    assert server.faults["/a.tif"] == []


@pytest.mark.parametrize("fault,reason", [(403, "access denied"), ("truncate", "cannot read")])
def test_http_errors_name_asset_and_redacted_url(served, fault, reason):
    server, _, _ = served
    url = f"{server.url}/a.tif?sig=SECRETSIG&se=2030"
    lays = decode(record_layouts({"a": url}))
    server.faults["/a.tif"] = [fault] * 20
    with pytest.raises(AssetError, match=reason) as err:
        read_batch([lays], [["a"]], [GridSpec.from_layouts(lays, CS)], [(0, 0)])
    text = str(err.value)
    assert (
        "'a'" in text
        and f"{server.url}/a.tif" in text
        and "SECRETSIG" not in text
        and "\n" not in text
    )


def test_http_timeout_is_one_clear_error(served, monkeypatch):
    server, _, _ = served
    lays = decode(record_layouts({"a": f"{server.url}/a.tif"}))
    monkeypatch.setenv("STACCHIP_IO_TIMEOUT", "1")
    monkeypatch.setenv("STACCHIP_IO_RETRIES", "0")  # stores built before are not reused
    # every request stalls, however many attempts the client makes: once, in a run of many test
    # files under load, this read succeeded with a single stall (cause not found; retries are 0)
    server.faults["/a.tif"] = ["stall"] * 4
    try:
        with pytest.raises(AssetError, match="timed out"):
            read_batch([lays], [["a"]], [GridSpec.from_layouts(lays, CS)], [(0, 0)])
    finally:
        server.faults.pop("/a.tif", None)


def test_stale_layout_falls_back_with_one_warning(served, caplog):
    server, _data, root = served
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "it",
        "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:epsg": 32633},
        "geometry": None,
        "links": [],
        "assets": {
            "a": {
                "href": f"{server.url}/a.tif",
                "type": "image/tiff; application=geotiff",
                "proj:shape": [H, W],
                "proj:transform": [10, 0, 500000, 0, -10, 4000000],
            }
        },
    }
    blob = record_layouts({"a": f"{server.url}/a.tif"})
    newer = pattern(1, H, W, "uint16", seed=9)
    write_tif(root / "a.tif", newer)  # the object changed after indexing
    _WARNED.clear()
    with caplog.at_level(logging.WARNING), Chipper(item, chip_size=CS, layouts=blob) as chipper:
        first = chipper.chip(0, 0)["a"]
        second = chipper.chip(1, 1)["a"]
    np.testing.assert_array_equal(first, expected(newer, 1, 0, 0))
    np.testing.assert_array_equal(second, expected(newer, 1, 1, 1))
    stale = [r for r in caplog.records if "changed since it was indexed" in r.getMessage()]
    assert len(stale) == 1 and "'a'" in stale[0].getMessage()


def test_missing_object_is_stale_too(served):
    server, _, root = served
    lays = decode(record_layouts({"a": f"{server.url}/a.tif"}))
    (root / "a.tif").unlink()
    (res,) = read_batch([lays], [["a"]], [GridSpec.from_layouts(lays, CS)], [(0, 0)])
    assert isinstance(res["a"], StaleLayout)


def test_s3_chips_equal_local(tmp_path, bucket):
    data = pattern(1, H, W, "int16")
    path = write_tif(tmp_path / "a.tif", data)
    boto3.client("s3").upload_file(str(path), bucket, "x/a.tif")
    lays, res = chips({"a": f"s3://{bucket}/x/a.tif"}, XYS_10M)
    assert (
        lays["a"].etag is None
        and len(lays["a"].digest) == 32
        and lays["a"].size == path.stat().st_size
    )
    for (x, y), r in zip(XYS_10M, res):
        np.testing.assert_array_equal(r["a"], expected(data, 1, x, y))


def test_index_of_an_http_item_chips_through_the_cli(tmp_path, http_s2):
    """`stacchip index` of an item served over http, then `stacchip chip`: the same pixels as
    the rasterio path."""
    import pyarrow.parquet as pq

    _server, url, _ = http_s2
    result = run_cli("index", url, "-o", tmp_path / "idx.parquet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "chip.npz"
    result = run_cli("chip", tmp_path / "idx.parquet", "--row", 0, "--assets", "red", "-o", out)
    assert result.returncode == 0, result.stderr
    row = pq.read_table(tmp_path / "idx.parquet").slice(0, 1).to_pylist()[0]
    assert row["layouts"] and row["item_href"] == url
    with Chipper(url, assets=["red"], use_layouts=False) as chipper:
        ref = chipper.chip(row["chip_index_x"], row["chip_index_y"])["red"]
    np.testing.assert_array_equal(np.load(out)["red"], ref)


def test_big_endian_tiffs_are_left_to_rasterio(tmp_path):
    path = tmp_path / "be.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=W,
        height=H,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 10, 10),
        tiled=True,
        blockxsize=TILE,
        blockysize=TILE,
        compress="deflate",
        ENDIANNESS="BIG",
    ) as ds:
        ds.write(pattern(1, H, W, "uint16"))
    assert path.read_bytes()[:2] == b"MM"
    assert record_layouts({"a": str(path)}) is None


@pytest.mark.parametrize("header_changed", [True, False], ids=["header-changed", "tile-corrupt"])
def test_deflate_tiles_are_checked_by_inflating(served, header_changed):
    """Deflate tiles carry a checksum: a clean read makes no header check (one request per
    tile), and a tile that fails to inflate sends the header check that tells a changed object
    (stale: read elsewhere) from a corrupt tile (undecodable) — same object size either way.
    Chip (0, 1) ends at the last row of tile (0, 0), so the tile is inflated whole and its
    checksum checked (a chip ending above it inflates a part: test_tiles_inflate_in_part)."""
    from stacchip_core.core.tiles import Undecodable
    from stacchip_core.io import objects

    server, _data, root = served
    lays = decode(record_layouts({"a": f"{server.url}/a.tif"}))
    lay, grid = lays["a"], GridSpec.from_layouts(lays, CS)
    objects.forget_verified()  # as in a process that did not index the object
    server.reset()
    before = objects.counters()
    (res,) = read_batch([lays], [["a"]], [grid], [(0, 1)])
    spent = objects.counters() - before
    assert (
        isinstance(res["a"], np.ndarray)
        and spent.checks == 0
        and server.requests == spent.requests == 1
    )
    raw = bytearray((root / "a.tif").read_bytes())
    start = int(lay.offsets[0])
    raw[start + int(lay.counts[0]) // 2] ^= 0xFF  # tile (0, 0) no longer inflates
    if header_changed:
        raw[lay.head - 1] ^= 0xFF  # and the bytes before the first tile differ
    (root / "a.tif").write_bytes(bytes(raw))
    before = objects.counters()
    (res,) = read_batch([lays], [["a"]], [grid], [(0, 1)])
    spent = objects.counters() - before
    assert spent.checks == 1
    if header_changed:
        assert isinstance(res["a"], StaleLayout) and spent.stale == 1
    else:
        assert isinstance(res["a"], Undecodable) and spent.stale == 0
