"""The one read pipeline (core.read): every front end gives the same pixels for the same rows,
under every catalog's asset keys, from local files (rasterio) and over a loopback HTTP Range
server (layouts); a stale asset falls back alone; tiles shared by chips are fetched once; no
item JSON is fetched when the row has layouts; indexes written before still read."""

import json
import logging
import shutil
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
    # coastal is no platform band: named by its key there (CDSE:
    # B01 finds B01_60m by the suffix rule)
    "s2-planetary-computer": (
        lambda d: synthetic.sentinel2_scene(d, 768, naming="planetary-computer"),
        ["red", "nir08", "B01"],
        [("B04", 1), ("B8A", 1), ("B01", 1)],
    ),
    "s2-cdse": (_cdse, ["red", "nir08", "B01"], [("B04_10m", 1), ("B8A_20m", 1), ("B01_60m", 1)]),
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
        # assets of no platform band (S2's 60 m coastal) are in the
        # index by href: rasterio reads them
        by_href = {k for k, _ in sources if k not in lays}
        assert by_href == (
            {"B01_60m" if scene == "s2-cdse" else "B01" if "planetary" in scene else "coastal"}
            if scene.startswith("s2")
            else set()
        )
        assert by_href <= set(lays.hrefs)
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
            assert report.fallbacks == (
                (("no layout", len(rows) * len(by_href)),) if by_href else ()
            )
            assert report.layout_reads == len(rows) * len({k for k, _ in sources} - by_href)
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
    # the platform's bands and layers by layout; other rasters by href (read through rasterio)
    assert set(lays) == {
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
    assert set(lays.hrefs) == {"coastal"} and lays.hrefs["coastal"].endswith("/coastal.tif")
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

    with Reader(max_sources=2, workers=1) as reader:
        for row in rows:  # one batch per item, as an epoch over a shuffled index goes
            reader.stacks([row], ["red"] if row["platform"] != "naip" else ["red", "nir"])
        assert [open_in(f) > 0 for f in folders] == [False, False, True, True]
    assert [open_in(f) for f in folders] == [0, 0, 0, 0]
