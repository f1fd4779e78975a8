"""The one read pipeline (core.read): every front end gives the same pixels for the same rows,
under every catalog's asset keys, from local files (rasterio) and over a loopback HTTP Range
server (layouts); a stale asset falls back alone; tiles shared by chips are fetched once; no
item JSON is fetched when the row has layouts; indexes written before still read."""

import gc
import json
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from rangeserver import RangeServer

from stacchip_core.core import read as read_mod
from stacchip_core.core import tiles
from stacchip_core.core.chipper import Chipper, chip_from_row
from stacchip_core.core.indexer import Indexer
from stacchip_core.core.layout import decode, encode
from stacchip_core.core.read import Reader, ReadReport, grid_for_row, read_rows, read_windows
from stacchip_core.demo import synthetic
from stacchip_core.plugin_api import hookimpl
from stacchip_core.training.chipread import ChipReader
from stacchip_core.training.dataset import ChipDataset
from stacchip_core.training.xarray import chip_dataarray

# Copernicus Data Space keys of the Earth Search scene's assets, and a coarser decoy of red
CDSE_KEYS = {
    "blue": "B02_10m",
    "green": "B03_10m",
    "red": "B04_10m",
    "nir": "B08_10m",
    "rededge1": "B05_20m",
    "rededge2": "B06_20m",
    "rededge3": "B07_20m",
    "nir08": "B8A_20m",
    "swir16": "B11_20m",
    "swir22": "B12_20m",
    "coastal": "B01_60m",
    "scl": "SCL_20m",
}


def _cdse(d: Path) -> Path:
    """The Earth Search scene with the asset keys of Copernicus Data Space, plus ``B04_60m``
    (the 60 m coastal file): red must resolve to the finest, ``B04_10m``."""
    src = synthetic.sentinel2_scene(d, 768, item_id="S2B_CDSE_TEST")
    item = json.loads(Path(src).read_text())
    item["assets"] = {CDSE_KEYS.get(k, k): a for k, a in item["assets"].items()}
    item["assets"]["B04_60m"] = dict(item["assets"]["B01_60m"])
    Path(src).write_text(json.dumps(item))
    return Path(src)


# scene builder, band names read (the finest asset first), their asset key and band index
SCENES = {
    "s2-earth-search": (
        lambda d: synthetic.sentinel2_scene(d, 768),
        ["red", "nir08", "coastal"],
        [("red", 1), ("nir08", 1), ("coastal", 1)],
    ),
    # coastal is no model input but the platform names it: B01, and B01_60m by the CDSE suffix rule
    "s2-planetary-computer": (
        lambda d: synthetic.sentinel2_scene(d, 768, naming="planetary-computer"),
        ["red", "nir08", "coastal"],
        [("B04", 1), ("B8A", 1), ("B01", 1)],
    ),
    "s2-cdse": (
        _cdse,
        ["red", "nir08", "coastal"],
        [("B04_10m", 1), ("B8A_20m", 1), ("B01_60m", 1)],
    ),
    "landsat": (
        lambda d: synthetic.landsat_scene(d, 560, 600),
        ["red", "nir08"],
        [("red", 1), ("nir08", 1)],
    ),
    "naip": (
        lambda d: synthetic.naip_scene(d, 600, 530),
        ["red", "nir"],
        [("image", 1), ("image", 4)],
    ),
    "sentinel-1-float": (
        lambda d: synthetic.sentinel1_scene(d, 600, 640),
        ["vv", "vh"],
        [("vv", 1), ("vh", 1)],
    ),
    "modis": (
        lambda d: synthetic.modis_scene(d, 520),
        ["sur_refl_b01", "sur_refl_b02"],
        [("sur_refl_b01", 1), ("sur_refl_b02", 1)],
    ),
}


@pytest.fixture(autouse=True)
def _fresh():
    read_mod._WARNED.clear()
    tiles._STALE.clear()


def _serve(src: Path, root: Path) -> Path:
    """Copies of the scene's files under ``root`` and its item with hrefs relative to it."""
    item = json.loads(src.read_text())
    root.mkdir(parents=True, exist_ok=True)
    for asset in item["assets"].values():
        if asset["href"].startswith(str(src.parent)):
            name = Path(asset["href"]).name
            if not (root / name).exists():
                shutil.copy(asset["href"], root / name)
            asset["href"] = name
    (root / "item.json").write_text(json.dumps(item))
    return root / "item.json"


def _expected(
    item_path: Path, sources: list[tuple[str, int]], x: int, y: int, cs: int, base: Path
) -> np.ndarray:
    """The chip by hand: each band's whole file read with rasterio, repeated by its pixel
    ratio to the finest (first) band, and cut at the chip's window."""
    item = json.loads(item_path.read_text())
    out, finest = [], None
    for key, index in sources:
        href = item["assets"][key]["href"]
        with rasterio.open(href if Path(href).is_absolute() else base / href) as ds:
            data, res = ds.read(index), ds.transform.a
        finest = finest or res
        k = round(res / finest)
        full = np.repeat(np.repeat(data, k, axis=0), k, axis=1)
        out.append(full[y * cs:(y + 1) * cs, x * cs:(x + 1) * cs])
    return np.stack(out).astype(np.float32)


def _pick(chip, sources) -> np.ndarray:
    return np.stack([chip[key][index - 1] for key, index in sources]).astype(np.float32)


@pytest.mark.parametrize("where", ["local", "http"])
@pytest.mark.parametrize("scene", list(SCENES))
def test_every_front_end_reads_the_same_pixels(scene, where, tmp_path):
    build, bands, sources = SCENES[scene]
    src = Path(build(tmp_path / "scene"))
    server = None
    if where == "http":
        item_path = _serve(src, tmp_path / "served")
        server = RangeServer(tmp_path / "served").start()
        item = f"{server.url}/item.json"
    else:
        item_path, item = src, str(src)
    try:
        table = Indexer(item, stats=False, chip_size=256).create_index()
        index = tmp_path / "index.parquet"
        pq.write_table(table, index)
        rows = table.to_pylist()
        lays = decode(rows[0]["layouts"])
        assert lays.standalone  # the index holds the grid, its CRS, the bands
        # every raster asset has a layout, bands of the platform or not (S2's 60 m coastal)
        assert {k for k, _ in sources} <= set(lays) and not lays.hrefs
        expected = [
            _expected(
                item_path, sources, r["chip_index_x"], r["chip_index_y"], 256, item_path.parent
            )
            for r in rows
        ]
        if server is not None:
            server.reset()
        reader = ChipReader(bands)
        got = {
            "ChipReader": reader.read_many(rows),
            "ChipDataset": [
                s["pixels"]
                for s in ChipDataset(str(index), bands=bands).__getitems__(range(len(rows)))
            ],
            "chip_from_row": [_pick(chip_from_row(r, assets=bands), sources) for r in rows],
            "read_rows": read_rows(rows, bands),
            "xarray": [chip_dataarray(r, bands).values for r in rows[:2]],
        }
        if server is not None:  # everything above read from the rows alone
            assert "/item.json" not in {p for _, p, _ in server.log}
            report = reader.report
            assert report.chips == len(rows)
            assert report.fallbacks == () and report.rasterio_reads == 0
            assert report.layout_reads == len(rows) * len({k for k, _ in sources})
            assert report.requests > 0 and report.tiles > 0
        with Chipper(item, assets=bands) as chipper:
            assert chipper.assets == list(dict.fromkeys(k for k, _ in sources))
            chips = chipper.chips([(r["chip_index_x"], r["chip_index_y"]) for r in rows])
            got["Chipper"] = [_pick(c, sources) for c in chips]
            assert [c.band_names[:1] for c in chips[:1]] == [(bands[0],)]
        for name, arrays in got.items():
            for arr, exp in zip(arrays, expected):
                assert arr.dtype == np.float32 and arr.shape == exp.shape, name
                np.testing.assert_array_equal(arr, exp, err_msg=name)
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def served_s2(synthetic_scenes, tmp_path):
    """The 768 px S2 scene behind the Range server and its index with layouts (256 px chips)."""
    item_json = _serve(Path(synthetic_scenes["s2"]), tmp_path / "served")
    with RangeServer(tmp_path / "served") as server:
        url = f"{server.url}/item.json"
        rows = Indexer(url, stats=False).create_index().to_pylist()
        server.reset()
        yield server, url, rows, item_json


def test_a_stale_asset_falls_back_alone(served_s2, caplog):
    """red rewritten after indexing: red alone is read through rasterio (its new pixels),
    green and blue still from their layouts (ranged tile reads, no header)."""
    server, _url, rows, item_json = served_s2
    red = item_json.parent / "red.tif"
    with rasterio.open(red) as ds:
        data, profile = ds.read(), ds.profile
    red.unlink()
    with rasterio.open(red, "w", **profile) as ds:
        ds.write(data[:, ::-1])
    reader = Reader()
    with caplog.at_level(logging.WARNING):
        got = reader.stacks(rows[:4], ["red", "green", "blue"])
    assert reader.last.fallbacks == (("stale", 4),)
    assert (reader.last.layout_reads, reader.last.rasterio_reads) == (8, 4)
    stale = [
        r.getMessage() for r in caplog.records if "changed since it was indexed" in r.getMessage()
    ]
    assert len(stale) == 1 and "'red'" in stale[0]
    by_file: dict[str, list] = {}
    for _, path, rng in server.log:
        by_file.setdefault(path, []).append(rng)
    assert set(by_file) == {"/red.tif", "/green.tif", "/blue.tif"}
    for name in ("/green.tif", "/blue.tif"):  # tiles only: no header read, no re-read through GDAL
        assert all(r and not r.startswith("bytes=0-") for r in by_file[name])
    for row, arr in zip(rows[:4], got):
        x, y = row["chip_index_x"], row["chip_index_y"]
        np.testing.assert_array_equal(
            arr[0], data[0, ::-1][y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256]
        )
        np.testing.assert_array_equal(
            arr[1:], _expected(item_json, [("green", 1), ("blue", 1)], x, y, 256, item_json.parent)
        )
    # a later batch: red is known stale (no layout read is tried), green still from its layout
    more = reader.stacks(rows[4:6], ["red", "green"])
    assert reader.last.fallbacks == (("stale", 2),) and reader.last.layout_reads == 2
    for row, arr in zip(rows[4:6], more):
        x, y = row["chip_index_x"], row["chip_index_y"]
        np.testing.assert_array_equal(
            arr[0], data[0, ::-1][y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256]
        )


def test_tiles_shared_by_two_chips_are_fetched_and_decoded_once(synthetic_scenes, tmp_path):
    """200 px chips (0, 0) and (1, 0) both lie in the first 512 px tile of red: one request,
    exactly that tile's bytes, one tile decoded."""
    item_json = _serve(Path(synthetic_scenes["s2"]), tmp_path / "served")
    with RangeServer(tmp_path / "served") as server:
        rows = (
            Indexer(f"{server.url}/item.json", stats=False, chip_size=200)
            .create_index()
            .to_pylist()
        )
        pair = [r for r in rows if (r["chip_index_x"], r["chip_index_y"]) in ((0, 0), (1, 0))]
        lay = decode(pair[0]["layouts"])["red"]
        server.reset()
        reader = Reader()
        got = reader.stacks(pair, ["red"])
        assert server.requests == 1 and server.bytes == int(lay.counts[0])
        assert (
            reader.last.tiles == 1
            and reader.last.requests == 1
            and reader.last.bytes == int(lay.counts[0])
        )
        assert reader.last.decode_seconds > 0
    for row, arr in zip(pair, got):
        x, y = row["chip_index_x"], row["chip_index_y"]
        np.testing.assert_array_equal(
            arr, _expected(item_json, [("red", 1)], x, y, 200, item_json.parent)
        )


def _old_blob(blob: bytes, oldest: bool) -> bytes:
    """The layouts as indexes wrote them before: with the grid only, or (oldest) a bare list."""
    lays = decode(blob)
    if not oldest:
        return encode(lays.values(), lays.grid)
    import struct
    import zlib

    new = zlib.decompress(encode(lays.values())[4:])
    (n,) = struct.unpack_from("<I", new)
    meta = json.dumps(json.loads(new[4:4 + n])["assets"], separators=(",", ":")).encode()
    return b"SCL1" + zlib.compress(struct.pack("<I", len(meta)) + meta + new[4 + n:])


@pytest.mark.parametrize("form", ["grid-only", "list", "no-layouts-column"])
def test_an_index_written_before_still_reads(served_s2, tmp_path, form):
    server, _url, rows, item_json = served_s2
    table = pa.Table.from_pylist(rows)
    i = table.column_names.index("layouts")
    if form == "no-layouts-column":
        table = table.remove_column(i)
    else:
        old = [_old_blob(b, form == "list") for b in table["layouts"].to_pylist()]
        table = table.set_column(i, "layouts", pa.array(old, pa.binary()))
        assert not decode(old[0]).standalone and (decode(old[0]).grid is None) == (form == "list")
    index = tmp_path / "old.parquet"
    pq.write_table(table, index)
    old_rows = pq.read_table(index).to_pylist()
    server.reset()
    got = ChipDataset(str(index), bands=["red", "nir08"]).__getitems__([0, 4, 8])
    chip = chip_from_row(old_rows[4], assets=["red"])
    assert "/item.json" in {p for _, p, _ in server.log}  # the grid comes from the item, as before
    assert grid_for_row(old_rows[4]).transform == Affine(10, 0, 499980, 0, -10, 6400000)
    for j, sample in zip([0, 4, 8], got):
        x, y = old_rows[j]["chip_index_x"], old_rows[j]["chip_index_y"]
        np.testing.assert_array_equal(
            sample["pixels"],
            _expected(item_json, [("red", 1), ("nir08", 1)], x, y, 256, item_json.parent),
        )
    np.testing.assert_array_equal(
        chip["red"][0],
        _expected(
            item_json,
            [("red", 1)],
            old_rows[4]["chip_index_x"],
            old_rows[4]["chip_index_y"],
            256,
            item_json.parent,
        )[0],
    )


def test_layouts_record_what_a_read_needs(served_s2):
    _server, _url, rows, _item_json = served_s2
    lays = decode(rows[0]["layouts"])
    assert lays.crs == "EPSG:32720" and lays.shape == (768, 768)
    assert lays.grid == (10.0, 499980.0, -10.0, 6400000.0)
    assert lays.bands["red"] == ("red", 1) and lays.bands["scl"] == ("scl", 1)
    # every raster asset by layout, the platform's bands and layers and the rest (coastal)
    assert set(lays) == {
        "coastal",
        "blue",
        "green",
        "red",
        "rededge1",
        "rededge2",
        "rededge3",
        "nir",
        "nir08",
        "swir16",
        "swir22",
        "scl",
    }
    assert (
        not lays.hrefs
        and lays["coastal"].href.endswith("/coastal.tif")
        and lays["coastal"].width == 128
    )
    again = decode(
        encode(
            lays.values(),
            lays.grid,
            shape=lays.shape,
            crs=lays.crs,
            bands=lays.bands,
            hrefs=lays.hrefs,
        )
    )
    assert (again.crs, again.shape, again.bands, again.hrefs) == (
        lays.crs,
        lays.shape,
        lays.bands,
        lays.hrefs,
    )


def test_read_windows_reads_any_native_window(served_s2):
    """The lower-level entry point: a window in the asset's own pixels (20 m nir08), and one
    of grid pixels expanded by 2, equal the file's pixels."""
    _server, _url, rows, item_json = served_s2
    lays = decode(rows[0]["layouts"])
    with rasterio.open(item_json.parent / "nir08.tif") as ds:
        nir = ds.read(1)
    native, expanded, beyond = read_windows(
        [lays["nir08"]] * 3, [(10, 300, 50, 70), (20, 600, 4, 6), (380, 0, 10, 10)], [1, 2, 1]
    )
    np.testing.assert_array_equal(native[0], nir[10:60, 300:370])
    np.testing.assert_array_equal(
        expanded[0], np.repeat(np.repeat(nir[10:12, 300:303], 2, 0), 2, 1)
    )
    assert isinstance(beyond, tiles.Unsupported)


def test_read_report_adds_up():
    a = ReadReport(
        chips=2,
        requests=3,
        bytes=10,
        tiles=2,
        decode_seconds=0.5,
        layout_reads=4,
        rasterio_reads=1,
        fallbacks=(("stale", 1),),
    )
    b = ReadReport(
        chips=1,
        requests=1,
        bytes=5,
        tiles=1,
        decode_seconds=0.25,
        layout_reads=1,
        rasterio_reads=2,
        fallbacks=(("no layout", 1), ("stale", 1)),
    )
    total = a + b
    assert total == ReadReport(
        chips=3,
        requests=4,
        bytes=15,
        tiles=3,
        decode_seconds=0.75,
        layout_reads=5,
        rasterio_reads=3,
        fallbacks=(("no layout", 1), ("stale", 2)),
    )
    assert total.fallback_count == 3


def test_torchgeo_dataset_is_built_and_read_from_the_rows_alone(torchgeo, served_s2):
    """Construction takes each item's grid from the layouts: no item JSON over the wire; a
    chip's query returns exactly its pixels, read through the pipeline."""
    from stacchip_core.training.torchgeo import StacchipGeoDataset

    server, _url, rows, item_json = served_s2
    ds = StacchipGeoDataset(pa.Table.from_pylist(rows), bands=["red", "nir08"])
    assert len(ds) == 9 and ds.crs.to_epsg() == 32720
    sample = ds[ds.chip_query(4)]
    assert "/item.json" not in {p for _, p, _ in server.log}
    row = rows[int(ds.index["row"].iloc[4])]
    x, y = row["chip_index_x"], row["chip_index_y"]
    np.testing.assert_array_equal(
        sample["image"].numpy(),
        _expected(item_json, [("red", 1), ("nir08", 1)], x, y, 256, item_json.parent),
    )


def test_cli_chip_reads_from_the_row_alone(served_s2, tmp_path):
    """`stacchip chip` on an index with layouts: the chip's tiles only, no item JSON."""
    from conftest import run_cli

    server, _url, rows, item_json = served_s2
    index = tmp_path / "idx.parquet"
    pq.write_table(pa.Table.from_pylist(rows), index)
    out = tmp_path / "chip.tif"
    server.reset()
    result = run_cli("chip", index, "--row", 4, "--assets", "red,nir08", "-o", out)
    assert result.returncode == 0, result.stderr
    assert {p for _, p, _ in server.log} == {"/red.tif", "/nir08.tif"}
    x, y = rows[4]["chip_index_x"], rows[4]["chip_index_y"]
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(
            ds.read().astype(np.float32),
            _expected(item_json, [("red", 1), ("nir08", 1)], x, y, 256, item_json.parent),
        )
        assert ds.transform == Affine(10, 0, 499980 + x * 2560, 0, -10, 6400000 - y * 2560)


def test_open_files_stay_bounded_over_many_items(synthetic_scenes):
    """A Reader keeps the handles of its last ``max_sources`` items: reading one chip of each
    of four local items with room for two leaves only the last two items' files open."""
    names = ["s2", "s2pc", "landsat", "naip"]
    rows = [
        Indexer(str(synthetic_scenes[n]), stats=False).create_index().to_pylist()[0] for n in names
    ]
    folders = [str(Path(synthetic_scenes[n]).parent) for n in names]

    def open_in(folder: str) -> int:
        fds = Path("/proc/self/fd")
        return sum(
            1 for fd in fds.iterdir() if str(fd.resolve(strict=False)).startswith(folder + "/")
        )

    # handles other tests left to the cyclic collector (test_torchgeo's Lightning trainer
    # keeps its dataset in a cycle) are not this reader's: collected first, and none counted
    gc.collect()
    assert [open_in(f) for f in folders] == [0, 0, 0, 0]
    # rasterio's handles are under test: a cold local item would be read through its layouts
    with Reader(max_sources=2, workers=1, use_layouts=False) as reader:
        for row in rows:  # one batch per item, as an epoch over a shuffled index goes
            reader.stacks([row], ["red"] if row["platform"] != "naip" else ["red", "nir"])
        assert [open_in(f) > 0 for f in folders] == [False, False, True, True]
    assert [open_in(f) for f in folders] == [0, 0, 0, 0]


# --- async-tiff's tiles: signed off the loop ------------------------------------------------

def _tiled(path: Path, data: np.ndarray, **kw) -> None:
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 10, 10),
        tiled=True,
        blockxsize=64,
        blockysize=64,
        **kw,
    ) as ds:
        ds.write(data)


class _ThreadSigner:
    """A plugin's signer that notes the thread each href was signed in."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    @hookimpl
    def stacchip_sign_href(self, href, asset):
        import threading

        self.threads.append(threading.current_thread().name)
        return f"{href}?sig=T" if href.startswith("http://127.0.0.1") else None


def test_tiles_async_tiff_decodes_are_signed_off_the_io_loop(tmp_path):
    """An LZW asset (decoded by async-tiff): its href is signed in the signing threads, never
    on the I/O loop's thread, and every request carries the signature."""
    from stacchip_core import plugins
    from stacchip_core.core.layout import record_layouts
    from stacchip_core.core.tiles import GridSpec, read_batch

    data = np.arange(128 * 128, dtype="uint16").reshape(1, 128, 128)
    _tiled(tmp_path / "a.tif", data, compress="lzw")
    signer = _ThreadSigner()
    plugins.get_plugin_manager().register(signer, name="thread-signer")
    with RangeServer(tmp_path) as server:
        lays = decode(record_layouts({"a": f"{server.url}/a.tif"}))
        server.reset()
        signer.threads.clear()
        got = read_batch([lays], [["a"]], [GridSpec.from_layouts(lays, 64)], [(1, 1)])[0]["a"]
        log = list(server.log)
    np.testing.assert_array_equal(got, data[:, 64:, 64:])
    assert signer.threads and all(t.startswith("stacchip-sign") for t in signer.threads), (
        signer.threads
    )
    assert log and all(p == "/a.tif?sig=T" for _, p, _ in log)


# --- what a forked child reads from layouts, and how it says what it cannot ------------------

_FORKED_SOURCE: list = []  # inherited by a forked child (a Source does not pickle)


def _child_reads(xys):
    """Chips of the inherited source read by a Reader in this (forked) process; its report,
    and the warnings it logged."""
    source = _FORKED_SOURCE[0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger("stacchip_core").addHandler(handler)
    try:
        reader = Reader()
        got = reader.read([read_mod.ChipRequest(source, x, y, ("f", "l")) for x, y in xys])
    finally:
        logging.getLogger("stacchip_core").removeHandler(handler)
    from stacchip_core.io import objects

    return got, reader.report, records, objects.async_tiff_usable()


def test_a_forked_child_reads_float_tiles_from_layouts_and_names_what_it_cannot(tmp_path):
    """A child forked after its parent ran async-tiff: the float32 predictor-3 deflate asset
    (Sentinel-1 RTC's kind) is still read from its layout (libdeflate and numpy, no rasterio),
    the LZW one (async-tiff's alone) falls back with the report kind and words of a forked
    process, not "changed since it was indexed"."""
    import multiprocessing

    import pystac

    from stacchip_core.core.layout import record_layouts

    rng = np.random.default_rng(7)
    f = rng.normal(0, 1000, (1, 128, 128)).astype("float32")
    f[0, :3, :5] = np.nan
    lzw = np.arange(128 * 128, dtype="uint16").reshape(1, 128, 128)
    _tiled(tmp_path / "f.tif", f, compress="deflate", predictor=3)
    _tiled(tmp_path / "l.tif", lzw, compress="lzw")
    with RangeServer(tmp_path) as server:
        hrefs = {"f": f"{server.url}/f.tif", "l": f"{server.url}/l.tif"}
        lays = decode(record_layouts(hrefs))  # the parent runs async-tiff here
        assert lays["f"].predictor == 3 and lays["f"].dtype == "float32"
        item = pystac.Item.from_dict(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": "fl",
                "geometry": None,
                "links": [],
                "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:epsg": 32633},
                "assets": {
                    k: {
                        "href": h,
                        "type": "image/tiff; application=geotiff",
                        "proj:shape": [128, 128],
                        "proj:transform": [10, 0, 500000, 0, -10, 4000000],
                    }
                    for k, h in hrefs.items()
                },
            }
        )
        _FORKED_SOURCE[:] = [read_mod.Source.from_item(item, chip_size=64, layouts=lays)]
        xys = [(0, 0), (1, 1)]
        server.reset()
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got, report, warned, usable = pool.apply_async(_child_reads, (xys,)).get(timeout=60)
        f_requests = [rng for _, p, rng in server.log if p == "/f.tif"]
    assert not usable  # async-tiff is out of reach in the child
    for (x, y), chip in zip(xys, got):
        np.testing.assert_array_equal(chip["f"], f[:, y * 64:(y + 1) * 64, x * 64:(x + 1) * 64])
        np.testing.assert_array_equal(chip["l"], lzw[:, y * 64:(y + 1) * 64, x * 64:(x + 1) * 64])
    assert (report.layout_reads, report.rasterio_reads) == (2, 2)
    assert report.fallbacks == ((read_mod.FORKED, 2),)
    # f: its two tiles (one per chip) in one coalesced ranged read, no header read, nothing else
    lay = lays["f"]
    first, last = int(lay.offsets[0]), int(lay.offsets[3] + lay.counts[3])
    assert (
        report.tiles == 2 and report.requests == 1 and f_requests == [f"bytes={first}-{last - 1}"]
    )
    assert warned == [
        "asset 'l' (" + hrefs["l"] + ") cannot be read from its layout in this process (async-tiff "
        "cannot run in a process forked after its parent used it); reading it, and the like, with "
        "rasterio. Start workers with 'forkserver' or 'spawn' to keep the fast path"
    ]


@pytest.mark.parametrize(
    ("reason", "kind", "words"),
    [
        (
            tiles.StaleLayout("size 10 != 12"),
            "stale",
            (
                "asset 'k' (http://h/a.tif) changed since it was indexed (size 10 != 12); "
                "reading it with rasterio"
            ),
        ),
        (
            read_mod.objects.NoTransport("gs:// has no fork-safe transport"),
            read_mod.FORKED,
            (
                "asset 'k' (http://h/a.tif) cannot be read from its layout in this process (gs:// "
                "has no fork-safe "
                "transport); reading it, and the like, with rasterio. Start workers with "
                "'forkserver' or 'spawn' to keep "
                "the fast path"
            ),
        ),
        (tiles.Undecodable("k: bad tile"), "undecodable", None),
    ],
)
def test_each_fallback_reason_has_its_own_kind_and_words(reason, kind, words, caplog):
    read_mod._FORK_NOTED.clear()
    assert read_mod.fallback_kind(reason) == kind
    with caplog.at_level(logging.WARNING):
        read_mod.note_fallback(reason, "http://h/a.tif", "k")
        read_mod.note_fallback(reason, "http://h/a.tif", "k")  # once
    assert [r.getMessage() for r in caplog.records] == ([words] if words else [])


def test_local_chips_of_a_cold_item_come_from_layouts_then_from_open_handles(synthetic_scenes):
    """Local files with layouts: an item's first LOCAL_LAYOUT_CHIPS chips through the layouts
    (no GDAL open), the later ones through rasterio's open handles; neither is a fallback."""
    item_json = Path(synthetic_scenes["s2"])
    rows = Indexer(str(item_json), stats=False).create_index().to_pylist()
    assert len(rows) == 9 and read_mod.LOCAL_LAYOUT_CHIPS == 4
    reader = Reader()
    backends = []
    for row in rows[:6]:  # one chip at a time, as a DataLoader's __getitem__
        arr = reader.stacks([row], ["red", "nir08", "coastal"])[0]
        backends.append(
            (reader.last.layout_reads, reader.last.rasterio_reads, reader.last.fallbacks)
        )
        x, y = row["chip_index_x"], row["chip_index_y"]
        np.testing.assert_array_equal(
            arr,
            _expected(
                item_json, [("red", 1), ("nir08", 1), ("coastal", 1)], x, y, 256, item_json.parent
            ),
        )
    assert backends == [(3, 0, ())] * 4 + [(0, 3, ())] * 2
    assert reader.report.tiles > 0 and reader.report.requests > 0


# --- what a reader costs beyond the pixels ---------------------------------------------------

def test_threads_sharing_a_reader_each_see_their_batch_and_the_total_loses_none(served_s2):
    """Two threads read through one Reader at once: ``last`` is each thread's own batch (3 and
    5 chips), and ``report`` holds both (8 chips, 8 x 3 layout reads) whatever the timing."""
    _server, _url, rows, _item_json = served_s2
    reader = Reader()
    seen: dict[int, tuple[int, int]] = {}
    start = threading.Barrier(2)

    def read(n: int) -> None:
        start.wait()
        for _ in range(3):
            reader.stacks(rows[:n], ["red", "green", "blue"])
        seen[n] = (reader.last.chips, reader.last.layout_reads)

    threads = [threading.Thread(target=read, args=(n,)) for n in (3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {3: (3, 9), 5: (5, 15)}
    assert (reader.report.chips, reader.report.layout_reads) == (24, 72)
    assert reader.last.chips == 0  # this thread read nothing


# what a process that reads chips through layouts must not import: pyarrow's read_table, pa.array
# and a timezone-aware datetime's to_pylist import pandas and pyarrow.dataset (1 s of CPU per
# DataLoader worker); rasterio (with boto3), pystac and shapely are for the GDAL fallback,
# items without layouts and indexing (0.4 s together, measured, paid by every spawned worker)
NOT_FOR_READS = ("pandas", "pyarrow.dataset", "rasterio", "boto3", "pystac", "shapely", "click")


def test_a_fresh_process_reads_a_chip_importing_only_what_reads_need(served_s2, tmp_path):
    """Loading an index and reading a chip through layouts in a new process (a spawned
    DataLoader worker's life) imports none of ``NOT_FOR_READS``, the plugins included."""
    _server, _url, rows, _item_json = served_s2
    assert all(r["layouts"] for r in rows)
    index = tmp_path / "index.parquet"
    pq.write_table(pa.Table.from_pylist(rows), index)
    code = (
        "import sys\n"
        "from stacchip_core.training.dataset import ChipDataset\n"
        f"ds = ChipDataset({str(index)!r}, bands=['red'])\n"
        "sample = ds[2]\n"
        "print(sample['pixels'].shape, sample['date'])\n"
        "print(ds._reader('sentinel-2-l2a').report.layout_reads)\n"
        f"print(sorted(m for m in {NOT_FOR_READS!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    assert out == [f"(1, 256, 256) {rows[2]['date'].isoformat()}", "1", "[]"]


@pytest.mark.parametrize("name", ["Chipper", "Indexer", "ChipGrid", "merge", "read_index"])
def test_the_package_root_gives_its_lazy_names(name):
    """The root's readers and indexer load on first use, and are the modules' own objects."""
    import importlib

    import stacchip_core

    assert name in dir(stacchip_core) and name in stacchip_core.__all__
    module = importlib.import_module(stacchip_core._LAZY[name])
    assert getattr(stacchip_core, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        stacchip_core.Nope  # noqa: B018
