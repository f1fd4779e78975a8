"""Stacks (issue 21): grouping rules on hand-built indexes, the GeoParquet output, and reading
stacks of the demo's stacks place (Sentinel-2 on six dates, Sentinel-1 once, Landsat once in
another UTM zone) against rasterio's own reads and reprojections, over local files and the
loopback Range server."""

import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.warp import reproject

from stacchip_core.core.index import SCHEMA, with_geo_metadata, write_index
from stacchip_core.core.layout import encode
from stacchip_core.core.stacks import build_stacks, read_stacks, write_stacks
from stacchip_core.errors import NotFoundError, StackError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli
from rangeserver import RangeServer

S2, S1, LS = "sentinel-2-l2a", "sentinel-1-rtc", "landsat-c2l2-sr"


def index(spec: list[dict]) -> pa.Table:
    """An index from hand-written rows: item, date, box (lon/lat), and optional platform, x,
    y, cs, cloud, nodata, grid (a, c, e, f recorded in the row's layouts)."""
    cols: dict[str, list] = {k: [] for k in SCHEMA.names}
    for r in spec:
        day = dt.date.fromisoformat(r["date"])
        x, y = r.get("x", 0), r.get("y", 0)
        cols["chipid"].append(f"{r['item']}-{x}-{y}")
        cols["platform"].append(r.get("platform", "s2"))
        cols["item_id"].append(r["item"])
        cols["item_href"].append(None)
        cols["date"].append(day)
        cols["datetime"].append(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC))
        cols["chip_index_x"].append(x)
        cols["chip_index_y"].append(y)
        cols["chip_size"].append(r.get("cs", 256))
        cols["cloud_cover_percentage"].append(r.get("cloud", 0.0))
        cols["nodata_percentage"].append(r.get("nodata", 0.0))
        geom = r["geom"] if "geom" in r else shapely.box(*r["box"])
        cols["geometry"].append(shapely.to_wkb(geom))
        cols["bbox"].append(
            dict(zip(("xmin", "ymin", "xmax", "ymax"), shapely.bounds(geom).tolist()))
        )
        cols["layouts"].append(encode([], r["grid"]) if "grid" in r else None)
    return with_geo_metadata(pa.table(cols, schema=SCHEMA))


def members(table: pa.Table, column: str = "chipid") -> list[list]:
    return table[f"member_{column}"].to_pylist()


PLACE = (0.0, 0.0, 0.02, 0.02)
ELSEWHERE = (5.0, 5.0, 5.02, 5.02)


# --- grouping ------------------------------------------------------------------------------


def test_same_grid_and_chip_form_one_series_in_date_order():
    t = index(
        [
            {"item": "a", "date": "2024-01-21", "box": PLACE},
            {"item": "b", "date": "2024-01-01", "box": PLACE},
            {"item": "c", "date": "2024-01-11", "box": PLACE},
            {"item": "d", "date": "2024-01-11", "box": ELSEWHERE},
            {"item": "e", "date": "2024-01-11", "box": PLACE, "x": 1},
        ]
    )  # another chip index: another place
    s = build_stacks(t, min_steps=2)
    assert s["stackid"].to_pylist() == ["s2-b-0-0"]
    assert members(s) == [["b-0-0", "c-0-0", "a-0-0"]]
    assert s["steps"].to_pylist() == [3]
    assert (s["start_date"][0].as_py(), s["end_date"][0].as_py()) == (
        dt.date(2024, 1, 1),
        dt.date(2024, 1, 21),
    )
    assert build_stacks(t)["steps"].to_pylist() == [3, 1, 1]


def test_zone_boundary_same_grid_numbers_in_two_zones_are_two_places():
    """Two UTM zones can give two items the same transform numbers and chip index: their
    footprints (6 degrees apart) keep them apart; the same footprint on the same grid joins."""
    import pyproj

    grid = (10.0, 499980.0, -10.0, 6400000.0)

    def footprint(epsg):
        tr = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
        xs, ys = (
            np.array([499980, 502540, 502540, 499980.0]),
            np.array([6400000, 6400000, 6397440, 6397440.0]),
        )
        return shapely.Polygon(np.column_stack(tr.transform(xs, ys)))

    t = index(
        [
            {"item": "z20a", "date": "2024-01-01", "geom": footprint(32720), "grid": grid},
            {"item": "z20b", "date": "2024-01-06", "geom": footprint(32720), "grid": grid},
            {"item": "z21", "date": "2024-01-01", "geom": footprint(32721), "grid": grid},
        ]
    )
    s = build_stacks(t)
    assert sorted(members(s)) == [["z20a-0-0", "z20b-0-0"], ["z21-0-0"]]
    # the same footprint on another grid (resolution) is another grid: not an exact series
    t2 = index(
        [
            {"item": "a", "date": "2024-01-01", "box": PLACE, "grid": grid},
            {
                "item": "b",
                "date": "2024-01-02",
                "box": PLACE,
                "grid": (20.0, 499980.0, -20.0, 6400000.0),
            },
        ]
    )
    assert build_stacks(t2)["steps"].to_pylist() == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["a-0-0", "b-0-0", "c-0-0", "d-0-0"]),
        ({"max_cloud": 0.3}, ["a-0-0", "c-0-0", "d-0-0"]),
        ({"max_nodata": 0.2}, ["a-0-0", "b-0-0", "d-0-0"]),
        ({"max_cloud": 0.3, "max_nodata": 0.2}, ["a-0-0", "d-0-0"]),
        (
            {"max_cloud": 0.3, "max_nodata": 0.2, "min_steps": 3},
            None,
        ),  # too few steps left: no stack
        ({"max_steps": 2}, ["a-0-0", "d-0-0"]),  # the two clearest, in date order
        (
            {"every": 10},
            ["a-0-0", "d-0-0"],
        ),  # one per 10-day interval from 1970-01-01: the clearest
    ],
)
def test_step_filters(kwargs, expected):
    # 2024-01-01 is day 19723: 10-day intervals [19720, 19730) holds a, b, c; [19730, 19740) holds d
    t = index(
        [
            {"item": "a", "date": "2024-01-01", "box": PLACE, "cloud": 0.1, "nodata": 0.1},
            {"item": "b", "date": "2024-01-03", "box": PLACE, "cloud": 0.5, "nodata": 0.0},
            {"item": "c", "date": "2024-01-07", "box": PLACE, "cloud": 0.2, "nodata": 0.4},
            {"item": "d", "date": "2024-01-08", "box": PLACE, "cloud": 0.0, "nodata": 0.0},
        ]
    )
    s = build_stacks(t, **kwargs)
    assert members(s) == ([expected] if expected else [])


def test_two_items_of_one_place_and_day_keep_the_clearest():
    """The same MGRS tile from two relative orbits on one day (or a reprocessed duplicate)."""
    t = index(
        [
            {"item": "orbit1", "date": "2024-01-01", "box": PLACE, "cloud": 0.0, "nodata": 0.4},
            {"item": "orbit2", "date": "2024-01-01", "box": PLACE, "cloud": 0.0, "nodata": 0.1},
            {"item": "later", "date": "2024-01-06", "box": PLACE, "nodata": 0.5},
        ]
    )
    assert members(build_stacks(t)) == [["orbit2-0-0", "later-0-0"]]


def _pair_index(s1_date="2024-01-06", partial_box=(0.003, 0.0, 0.02, 0.02)) -> pa.Table:
    return index(
        [
            {"item": "a", "date": "2024-01-01", "box": PLACE, "cloud": 0.1},
            {"item": "b", "date": "2024-01-11", "box": PLACE, "cloud": 0.2},
            # one S1 item whose two chips cover the place together (0.5 each)
            {"item": "s1", "platform": "s1", "date": s1_date, "box": (-0.01, -0.01, 0.01, 0.03)},
            {
                "item": "s1",
                "platform": "s1",
                "date": s1_date,
                "x": 1,
                "box": (0.01, -0.01, 0.03, 0.03),
            },
            # another covering 85 % of it
            {"item": "s1p", "platform": "s1", "date": "2024-01-02", "box": partial_box},
        ]
    )


def test_joining_items_cover_the_share_summed_over_their_chips():
    s = build_stacks(_pair_index(), anchor="s2", with_=["s1"], window=5)
    assert members(s) == [["a-0-0", "b-0-0", "s1-0-0", "s1-0-0"]]
    assert members(s, "step") == [[0, 1, 0, 1]]
    assert members(s, "exact") == [[True, True, False, False]]
    assert members(s, "coverage")[0][2:] == pytest.approx([1.0, 1.0])
    assert s["steps"].to_pylist() == [2]


@pytest.mark.parametrize(("share", "partial_joins"), [(0.9, False), (0.85, True), (0.8, True)])
def test_partial_overlap_below_the_share_is_excluded(share, partial_joins):
    """s1p covers 85 % of the place, a day after step 0 (nearer than s1, 5 days)."""
    s = build_stacks(_pair_index(), anchor="s2", with_=["s1"], window=5, share=share)
    first = members(s, "item_id")[0][2]
    assert first == ("s1p" if partial_joins else "s1")
    if partial_joins:
        assert members(s, "coverage")[0][2] == pytest.approx(0.85)


@pytest.mark.parametrize(
    ("window", "steps"), [(4, []), (5, ["a-0-0", "b-0-0"]), (6, ["a-0-0", "b-0-0"])]
)
def test_time_window_edges_are_inclusive(window, steps):
    """s1 is 5 days from both anchor steps: a window of 5 days holds it, 4 does not."""
    s = build_stacks(
        _pair_index(partial_box=(5, 5, 6, 6)), anchor="s2", with_=["s1"], window=window
    )
    assert [m[:2] for m in members(s)] == ([steps] if steps else [])


def test_steps_without_every_joining_platform_are_dropped():
    t = _pair_index(s1_date="2024-01-12", partial_box=(5, 5, 6, 6))  # s1 only near step b
    s = build_stacks(t, anchor="s2", with_=["s1"], window=2)
    assert members(s) == [["b-0-0", "s1-0-0"]]
    assert build_stacks(t, anchor="s2", with_=["s1"], window=2, min_steps=2).num_rows == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"with_": ["s1"]}, StackError, "--with needs --anchor"),
        ({"anchor": "s2", "with_": ["s2"]}, StackError, "repeats the anchor platform"),
        ({"anchor": "landsat"}, NotFoundError, "no rows of platform 'landsat'"),
        (
            {"anchor": "s2", "with_": ["landsat"]},
            NotFoundError,
            "no rows of platform(s) ['landsat']",
        ),
        ({"min_steps": 3, "max_steps": 2}, StackError, "min_steps <= max_steps"),
        ({"share": 0}, StackError, "share must be in (0, 1]"),
    ],
)
def test_contradicting_options_say_so(kwargs, error, message):
    with pytest.raises(error, match=None) as info:
        build_stacks(_pair_index(), **kwargs)
    assert message in str(info.value)


def test_output_is_geoparquet_for_geopandas_and_duckdb(tmp_path):
    import duckdb
    import geopandas as gpd

    t = index(
        [
            {"item": "a", "date": "2024-01-01", "box": PLACE},
            {"item": "b", "date": "2024-01-06", "box": PLACE},
            {"item": "c", "date": "2024-01-06", "box": ELSEWHERE},
        ]
    )
    path = write_stacks(build_stacks(t), tmp_path / "stacks.parquet")
    gdf = gpd.read_parquet(path)
    assert list(gdf.geometry.bounds.itertuples(index=False, name=None)) == [PLACE, ELSEWHERE]
    assert gdf.crs.to_string() == "OGC:CRS84"
    rows = duckdb.sql(
        f"select stackid, len(member_chipid), member_date[1] from '{path}' "
        "where bbox.xmin < 1 order by stackid"
    ).fetchall()
    assert rows == [("s2-a-0-0", 2, dt.date(2024, 1, 1))]
    assert read_stacks(path)["member_chipid"].to_pylist() == [["a-0-0", "b-0-0"], ["c-0-0"]]


def test_cli_writes_the_stacks(tmp_path):
    write_index(_pair_index(), tmp_path / "index.parquet")
    r = run_cli(
        "stack",
        tmp_path / "index.parquet",
        "-o",
        tmp_path / "stacks.parquet",
        "--anchor",
        "s2",
        "--with",
        "s1",
        "--window",
        "5",
        "--max-cloud",
        "0.15",
    )
    assert r.returncode == 0, r.stderr
    assert members(read_stacks(tmp_path / "stacks.parquet")) == [["a-0-0", "s1-0-0"]]
    assert "1 stacks" in r.stdout
    r = run_cli("stack", tmp_path / "index.parquet", "-o", tmp_path / "x.parquet", "--with", "s1")
    assert r.returncode == 1 and r.stderr.strip().endswith(
        "--with needs --anchor: members of other sensors join an anchor platform's chips"
    )


# --- reading the demo's stacks place --------------------------------------------------------


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """The stacks place (pattern pixels), indexed with layouts: S2 and S1 at 256 px chips,
    Landsat at 128 px (an anchor chip then straddles several of its chips)."""
    from stacchip_core.core.indexer import Indexer
    from stacchip_core.demo.archive import _stack_place

    root = _stack_place(tmp_path_factory.mktemp("place"))
    tables = [
        Indexer(
            str(p), chip_size=128 if "landsat" in p.parts[-3] else 256, chip_max_nodata=1.0
        ).create_index()
        for p in sorted(root.rglob("*.json"))
    ]
    return root, pa.concat_tables(tables)


def _item(root: Path, item_id: str) -> dict:
    return json.loads(next(root.rglob(f"{item_id}.json")).read_text())


def test_series_pixels_are_the_exact_chip_windows(place):
    from stacchip_core.training.stacks import StackReader

    root, idx = place
    s = build_stacks(idx, anchor=S2, min_steps=6)
    assert s.num_rows == 4 and s["steps"].to_pylist() == [6] * 4
    reader = StackReader(["red", "nir", "swir16"])
    stacks = s.to_pylist()
    got = reader.read_many(stacks)
    for stack, px in zip(stacks, got):
        assert px.series.shape == (6, 3, 256, 256) and px.series.dtype == np.float32
        assert px.dates[S2] == [dt.date(2023, 1, 5) + dt.timedelta(days=10 * i) for i in range(6)]
        x, y = stack["chip_index_x"], stack["chip_index_y"]
        for t, item_id in enumerate(stack["member_item_id"]):
            assets = _item(root, item_id)["assets"]
            with rasterio.open(assets["red"]["href"]) as ds:
                red = ds.read(1, window=((y * 256, y * 256 + 256), (x * 256, x * 256 + 256)))
            with rasterio.open(assets["swir16"]["href"]) as ds:  # 20 m: each pixel twice
                sw = ds.read(1, window=((y * 128, y * 128 + 128), (x * 128, x * 128 + 128)))
            np.testing.assert_array_equal(px.series[t, 0], red)
            np.testing.assert_array_equal(px.series[t, 2], np.repeat(np.repeat(sw, 2, 0), 2, 1))
        assert px.valid[S2].all()  # pattern pixels are never 0 (nodata)


def _reference(href: str, stack: dict, band: int, resampling: Resampling) -> np.ndarray:
    """GDAL's reprojection of the member's whole raster onto the anchor window."""
    with rasterio.open(href) as ds:
        src = ds.read(band).astype(np.float32)
        nod = ds.nodata
        if nod is not None:
            src[src == nod] = np.nan
        dst = np.full((256, 256), np.nan, np.float32)
        reproject(
            src,
            dst,
            src_transform=ds.transform,
            src_crs=ds.crs,
            dst_transform=rasterio.Affine(*stack["transform"]),
            dst_crs=stack["crs"],
            src_nodata=np.nan,
            dst_nodata=np.nan,
            resampling=resampling,
        )
    return dst


@pytest.mark.parametrize(("resampling", "tolerance"), [("nearest", 0.0), ("bilinear", 1e-3)])
def test_warped_members_equal_gdal_reprojection_of_the_member_raster(place, resampling, tolerance):
    """S1 (same zone, a grid offset by 1500 m x 500 m) and Landsat (zone 21, 30 m) onto each
    S2 anchor window: nearest is exact; bilinear within ``tolerance`` (relative), as GDAL warps
    a window instead of the whole raster."""
    from stacchip_core.training.stacks import StackReader

    root, idx = place
    s = build_stacks(idx, anchor=S2, with_=[S1, LS], window=3)
    assert s.num_rows == 4
    assert set(s["member_crs"].to_pylist()[0]) == {"EPSG:32720", "EPSG:32721"}
    reader = StackReader(
        {S2: ["red"], S1: ["vv", "vh"], LS: ["red", "nir08"]}, resampling=resampling
    )
    method = Resampling.nearest if resampling == "nearest" else Resampling.bilinear
    compared = 0
    for stack, px in zip(s.to_pylist(), reader.read_many(s.to_pylist())):
        assert isinstance(px, object) and not isinstance(px, Exception), px
        assert px.dates == {
            S2: [dt.date(2023, 2, 4)],
            S1: [dt.date(2023, 2, 5)],
            LS: [dt.date(2023, 2, 7)],
        }
        for platform, names in ((S1, ["vv", "vh"]), (LS, ["red", "nir08"])):
            item_id = stack["member_item_id"][stack["member_platform"].index(platform)]
            assets = _item(root, item_id)["assets"]
            for b, name in enumerate(names):
                ref = _reference(assets[name]["href"], stack, 1, method)
                got = px.pixels[platform][0, b]
                valid = px.valid[platform][0]
                assert (
                    valid == (np.isfinite(ref) & valid)
                ).all()  # valid pixels have a reference value
                np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
                if tolerance == 0:
                    np.testing.assert_array_equal(got, ref)
                else:
                    np.testing.assert_allclose(got, ref, rtol=tolerance, equal_nan=True)
                compared += int(np.isfinite(ref).sum())
    assert compared > 4 * 4 * 256 * 256 * 0.9


def test_the_s1_nan_block_and_edge_wedge_are_invalid(place):
    """vh has NaN in its upper right quarter (rows < 200, cols >= 600 of the S1 scene: east of
    x0 + 4500 m, north of y0 - 1500 m over the S2 grid); vv is valid there."""
    from stacchip_core.training.stacks import StackReader

    _, idx = place
    s = build_stacks(idx, anchor=S2, with_=[S1], window=3)
    top_right = next(r for r in s.to_pylist() if (r["chip_index_x"], r["chip_index_y"]) == (1, 0))
    px = StackReader({S2: ["red"], S1: ["vv", "vh"]}).read(top_right)
    valid = px.valid[S1][0]
    # S2 chip (1, 0) spans x0 + 2560 .. 5120 m, y0 .. y0 - 2560 m:
    # the block is its cols >= 194, rows < 150
    expected = np.ones((256, 256), bool)
    expected[:150, 194:] = False
    np.testing.assert_array_equal(valid, expected)
    assert np.isnan(px.pixels[S1][0, 1][~expected]).all() and np.isfinite(px.pixels[S1][0, 0]).all()


@pytest.fixture
def served_place(place, tmp_path):
    """The place's files behind the Range server, indexed with http hrefs."""
    from stacchip_core.core.indexer import Indexer

    root, _ = place
    served = tmp_path / "served"
    shutil.copytree(root, served)
    with RangeServer(served) as server:
        tables = []
        for p in sorted(served.rglob("*.json")):
            d = json.loads(p.read_text())
            for a in d["assets"].values():
                a["href"] = f"{server.url}/{Path(a['href']).relative_to(root).as_posix()}"
            p.write_text(json.dumps(d))
            tables.append(
                Indexer(
                    str(p), chip_size=128 if "landsat" in p.parts[-3] else 256, chip_max_nodata=1.0
                ).create_index()
            )
        server.reset()
        yield server, served, pa.concat_tables(tables)


def test_a_batch_fetches_each_tile_once_and_no_item_json(served_place):
    """Four 6-step series of 3 bands (red, green at 10 m, swir16 at 20 m): every asset is one
    512 px tile holding all four chips, so the batch is one request per (date, asset): 18."""
    from stacchip_core.training.stacks import StackReader

    server, _, idx = served_place
    s = build_stacks(idx, anchor=S2, min_steps=6)
    reader = StackReader({S2: ["red", "green", "swir16"]})
    got = reader.read_many(s.to_pylist())
    assert [px.series.shape if hasattr(px, "series") else str(px) for px in got] == [
        (6, 3, 256, 256)
    ] * 4
    assert server.requests == 6 * 3
    # the pipeline's report of the batch: 24 members, 18 requests, 18 tiles, 24 x 3 windows
    last = reader.last
    assert (last.chips, last.requests, last.tiles, last.layout_reads) == (24, 18, 18, 72)
    assert last.bytes > 0 and last.fallbacks == () and last.rasterio_reads == 0
    assert all(
        method == "GET" and rng and path.endswith(".tif") for method, path, rng in server.log
    )
    server.reset()
    for row in s.to_pylist():  # one stack at a time: each stack fetches the same tiles again
        reader.read(row)
    assert server.requests == 4 * 6 * 3
    assert (reader.report.chips, reader.report.requests) == (2 * 24, 18 + 4 * 18)


def test_a_gone_member_fails_its_stack_only_and_names_it(served_place):
    from stacchip_core.training.stacks import StackDataset, StackReader

    _server, served, idx = served_place
    pairs = build_stacks(idx, anchor=S2, with_=[S1, LS], window=3)
    series = build_stacks(idx, anchor=S2, min_steps=6)
    landsat_id = pairs["member_item_id"].to_pylist()[0][2]
    (next(served.rglob(f"{landsat_id}.json")).parent / "red.tif").unlink()
    rows = series.to_pylist()[:2] + pairs.to_pylist()[:1]
    got = StackReader({S2: ["red"], S1: ["vv"], LS: ["red"]}).read_many(rows)
    assert [type(g).__name__ for g in got] == ["StackPixels", "StackPixels", "StackError"]
    assert str(got[2]) == (
        f"stack {rows[2]['stackid']}: member {rows[2]['member_chipid'][2]} "
        f"(landsat-c2l2-sr, 2023-02-07): asset 'red' of item '{landsat_id}' cannot be read "
        "from its layout: not found"
    )
    ds = StackDataset(
        pa.concat_tables([series.slice(0, 2), pairs.slice(0, 1)]),
        bands={S2: ["red"], S1: ["vv"], LS: ["red"]},
        errors="skip",
    )
    assert [x["stackid"] for x in ds.__getitems__([0, 1, 2])] == [r["stackid"] for r in rows[:2]]
    with pytest.raises(StackError, match="cannot be read from its layout: not found"):
        StackDataset(pairs, bands={S2: ["red"], S1: ["vv"], LS: ["red"]})[0]


def test_stack_dataset_samples_batch_with_padding(place):
    from stacchip_core.training.stacks import StackDataset

    _, idx = place
    s = build_stacks(idx, anchor=S2, with_=[S1], window=3)
    ds = StackDataset(s, bands={S2: ["red", "nir"], S1: ["vv"]}, steps=2)
    batch = ds.__getitems__([0, 3])
    first = batch[0]
    assert first["pixels"].shape == (2, 2, 256, 256) and first["valid"].shape == (2, 256, 256)
    assert first["time"].tolist() == [(dt.date(2023, 2, 4) - dt.date(1970, 1, 1)).days, -1]
    assert not first["valid"][1].any() and not first["pixels"][1].any()
    assert first["sensors"][S1]["pixels"].shape == (2, 1, 256, 256)
    assert first["dates"] == ["2023-02-04"] and len(ds) == 4
    assert ds.__getitems__([-4])[0]["stackid"] == first["stackid"]  # from the end
    with pytest.raises(IndexError, match=r"^index 4 out of range for 4 stacks$"):
        ds.__getitems__([0, 4])
    with pytest.raises(IndexError, match=r"^index -5 out of range for 4 stacks$"):
        ds.__getitems__([-5, 0])  # named as given


def test_xarray_and_written_stacks_hold_the_members(place, tmp_path):
    from stacchip_core.core.output import write_chip
    from stacchip_core.training.stacks import StackReader
    from stacchip_core.training.xarray import stack_dataarray

    _, idx = place
    pairs = build_stacks(idx, anchor=S2, with_=[S1], window=3)
    series = build_stacks(idx, anchor=S2, min_steps=6)
    reader = StackReader({S2: ["red", "nir"], S1: ["vv", "vh"]})
    pair, ts = reader.read(pairs.to_pylist()[1]), reader.read(series.to_pylist()[0])
    da = stack_dataarray(ts)  # an exact series built without CRS: the first item says it
    assert da.dims == ("time", "band", "y", "x") and da.shape == (6, 2, 256, 256)
    assert [str(t)[:10] for t in da.time.values] == [d.isoformat() for d in ts.dates[S2]]
    assert da.band.values.tolist() == ["red", "nir"] and "32720" in da.attrs["crs"]
    assert float(da.x[0]) == 767785.0 and float(da.y[0]) == 6167435.0
    np.testing.assert_array_equal(da.values, ts.series)
    s1 = stack_dataarray(pair, S1)
    assert s1.shape == (1, 2, 256, 256) and float(s1.x[0]) == 767780.0 + 2560 + 5
    np.testing.assert_array_equal(np.isnan(s1.values[0, 1]), ~pair.valid[S1][0])

    npz = write_chip(tmp_path / "pair.npz", pair)
    with np.load(npz) as z:
        np.testing.assert_array_equal(z[S1], pair.pixels[S1])
        np.testing.assert_array_equal(z[f"{S1}_valid"], pair.valid[S1])
        assert z[f"{S1}_dates"].tolist() == ["2023-02-05"] and z[f"{S2}_bands"].tolist() == [
            "red",
            "nir",
        ]
    tif = write_chip(tmp_path / "pair.tif", pair)
    with rasterio.open(tif) as ds:
        assert ds.descriptions == (
            f"{S2} 2023-02-04 red",
            f"{S2} 2023-02-04 nir",
            f"{S1} 2023-02-05 vv",
            f"{S1} 2023-02-05 vh",
        )
        assert ds.crs.to_epsg() == 32720 and ds.transform == rasterio.Affine(
            *pairs["transform"].to_pylist()[1]
        )
        np.testing.assert_array_equal(
            ds.read(3), np.where(pair.valid[S1][0], pair.pixels[S1][0, 0], np.nan)
        )


def test_cli_chip_writes_a_stack(place, tmp_path):
    _, idx = place
    write_stacks(
        build_stacks(idx, anchor=S2, with_=[S1, LS], window=3), tmp_path / "stacks.parquet"
    )
    stackid = read_stacks(tmp_path / "stacks.parquet")["stackid"][0].as_py()
    r = run_cli(
        "chip",
        tmp_path / "stacks.parquet",
        "--stack",
        stackid,
        "--assets",
        "red,green,blue",
        "-o",
        tmp_path / "s.npz",
    )
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "s.npz") as z:
        assert (
            z[S2].shape == (1, 3, 256, 256)
            and z[S1].shape == (1, 2, 256, 256)
            and z[LS].shape == (1, 6, 256, 256)
        )
    r = run_cli("chip", tmp_path / "stacks.parquet", "--stack", "nope", "-o", tmp_path / "n.npz")
    assert r.returncode == 1 and "stack 'nope' is not in" in r.stderr


@pytest.mark.slow  # over 5 s on two shared cores (the demo's archive, its stacks drawn)
def test_demo_stacks_and_their_previews(tmp_path):
    """The demo's stacks place as the demo writes it (land appearance): 4 six-step series and 4
    S2 + S1 + Landsat stacks; the series strip shows each step's pixels, black exactly where the
    step has no data (the nodata corner of every other date: the tile seen from two orbits)."""
    from stacchip_core.demo import synthetic
    from stacchip_core.demo.archive import _stack_place
    from stacchip_core.demo.previews import GAP, LABEL
    from stacchip_core.demo.run import run_stacks
    from stacchip_core.training.stacks import StackReader

    with synthetic.land_appearance():
        items = _stack_place(tmp_path / "items")
    report = run_stacks(items, tmp_path / "stacks", tmp_path / "previews")
    assert (report.series_stacks, report.series_steps, report.pair_stacks) == (4, 6, 4)
    series = read_stacks(report.series)
    clouds = series["member_cloud"].to_pylist()
    pick = int(np.argmax([max(c) - min(c) for c in clouds]))
    ts = StackReader({S2: ["red", "green", "blue"]}).read(series.to_pylist()[pick])
    with rasterio.open(report.series_preview) as ds:
        png = ds.read()
    assert png.shape == (3, GAP + 256 + LABEL + GAP, GAP + 6 * (256 + GAP))
    for t in range(6):
        tile = png[:, GAP : GAP + 256, GAP + t * (256 + GAP) : GAP + t * (256 + GAP) + 256]
        black = (tile == 0).all(axis=0)
        invalid = ~ts.valid[S2][t]
        assert black[invalid].all()
        assert invalid.any() == bool(t % 2)  # odd dates: the nodata corner
    with rasterio.open(report.pair_preview) as ds:
        assert ds.width == GAP + 3 * (256 + GAP)


def test_place_hash_collisions_fall_back_to_exact_grouping(monkeypatch, caplog):
    """Every hash equal (a forced collision): the grouping is still exact."""
    from stacchip_core.core import stacks

    t = index(
        [
            {"item": "a", "date": "2024-01-01", "box": PLACE},
            {"item": "b", "date": "2024-01-06", "box": PLACE},
            {"item": "c", "date": "2024-01-06", "box": ELSEWHERE},
            {"item": "d", "date": "2024-01-09", "box": PLACE, "x": 1},
        ]
    )
    expected = members(build_stacks(t))
    assert expected == [["a-0-0", "b-0-0"], ["c-0-0"], ["d-1-0"]]
    monkeypatch.setattr(stacks, "_mix", lambda h: h * np.uint64(0))
    assert members(build_stacks(t)) == expected
    assert "hash collision" in caplog.text


def test_footprint_overlap_areas_equal_shapely():
    """The vectorized clipping of chip footprints (rotated, either orientation, disjoint,
    nested, touching) against shapely's intersections; other geometries go to shapely."""
    from stacchip_core.core.stacks import intersection_areas

    rng = np.random.default_rng(3)
    n = 3000
    base = np.array([[-1, -1], [1, -1], [1.2, 1], [-0.8, 1.1]])
    ang = rng.uniform(0, np.pi, (n, 1))
    scale = rng.uniform(0.01, 0.3, (n, 1, 1))
    rot = (
        np.stack(
            [
                np.cos(ang) * base[:, 0] - np.sin(ang) * base[:, 1],
                np.sin(ang) * base[:, 0] + np.cos(ang) * base[:, 1],
            ],
            -1,
        )
        * scale
    )
    quads = shapely.polygons(rng.uniform(0, 1, (n, 1, 2)) + rot)
    a, b = (
        quads,
        np.where(rng.random(n) < 0.5, np.roll(quads, 1), shapely.reverse(np.roll(quads, 1))),
    )
    special = [
        shapely.box(0, 0, 1, 1),
        shapely.box(0.2, 0.2, 0.4, 0.4),
        shapely.box(1, 0, 2, 1),
        shapely.MultiPolygon([shapely.box(0, 0, 0.5, 1), shapely.box(0.6, 0, 1, 1)]),
    ]
    a = np.r_[a, special[0], special[0], special[0], special[3]]
    b = np.r_[b, special[1], special[2], special[0], special[0]]
    got = intersection_areas(a, b)
    ref = shapely.area(shapely.intersection(a, b))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)
    assert (ref > 0).sum() > n // 10 and got[-4:].tolist() == pytest.approx([0.04, 0.0, 1.0, 0.9])


@pytest.mark.parametrize(
    ("rows", "cols", "tiles"),
    [
        ((100, 400), (300, 700), 4),  # whole tiles only
        ((900, 1000), (100, 400), 2),  # the partial last tile row, to the image's last row
        ((-5, 40), (990, 1010), 1),  # past the top and right edges: clipped, the rest unread
        ((995, 1003), (-3, 5), 1),  # the bottom-left corner: 5 x 5 px inside
    ],
)
def test_native_windows_equal_the_file_and_mark_outside_the_image_unread(
    tmp_path, rows, cols, tiles
):
    """A 1000 px image in 256 px tiles (its last tile row and column are 232 px of a padded
    tile): every pixel of a window inside the image reads as the file holds it, the image's
    edge strips included; pixels outside the image are unread; each tile is decoded once."""
    from rasterio.transform import from_origin

    from stacchip_core.core.layout import decode, record_layouts
    from stacchip_core.core.tiles import TileCost
    from stacchip_core.training.stacks import WindowRequest, fetch

    data = np.random.default_rng(1).integers(1, 60000, (1, 1000, 1000)).astype(np.uint16)
    path = tmp_path / "a.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=1000,
        height=1000,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 10, 10),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    ) as ds:
        ds.write(data)
    lays = decode(record_layouts({"a": str(path)}))
    cost = TileCost()
    _, (win,) = fetch([], [WindowRequest(lays, "a", rows, cols)], cost)
    assert cost.tiles == tiles
    r = np.arange(rows[0], rows[1])[:, None]
    c = np.arange(cols[0], cols[1])[None, :]
    inside = (r >= 0) & (r < 1000) & (c >= 0) & (c < 1000)
    np.testing.assert_array_equal(win.read, inside)
    padded = np.zeros((1, 1020, 1020), np.uint16)  # 10 px of zeros around the image
    padded[:, 10:1010, 10:1010] = data
    expected = padded[:, rows[0] + 10 : rows[1] + 10, cols[0] + 10 : cols[1] + 10]
    np.testing.assert_array_equal(win.data, expected)


@pytest.mark.parametrize("with_", [(), ("s1",)])
def test_regions_that_tile_an_area_give_each_stack_once(tmp_path, with_):
    """Places at 0, 0.01 and 5 degrees; regions split at 0.01 (half-open: the place whose centre
    is 0.01 + 0.01 falls east) and at 3; an S1 item across the split still joins (a margin)."""
    spec = [
        {"item": "a", "date": "2024-01-01", "box": PLACE},
        {"item": "b", "date": "2024-01-06", "box": PLACE},
        {"item": "e", "date": "2024-01-06", "box": (0.01, 0.0, 0.03, 0.02), "x": 1},
        {"item": "c", "date": "2024-01-06", "box": ELSEWHERE},
        {"item": "s1", "platform": "s1", "date": "2024-01-04", "box": (-0.01, -0.01, 5.1, 5.1)},
    ]
    write_index(index(spec), tmp_path / "index.parquet")
    kw = {"anchor": "s2", "with_": with_, "window": 5}
    full = build_stacks(tmp_path / "index.parquet", **kw)
    regions = [(-180, -90, 0.015, 90), (0.015, -90, 3, 90), (3, -90, 180, 90), (100, 0, 101, 1)]
    parts = [build_stacks(tmp_path / "index.parquet", region=r, **kw) for r in regions]
    assert [p["stackid"].to_pylist() for p in parts] == [
        ["s2-a-0-0"],
        ["s2-e-1-0"],
        ["s2-c-0-0"],
        [],
    ]
    got = {k: v for p in parts for k, v in zip(p["stackid"].to_pylist(), members(p))}
    assert got == dict(zip(full["stackid"].to_pylist(), members(full)))
    assert all(m[-1] == "s1-0-0" for m in got.values()) == bool(with_)
    r = run_cli(
        "stack",
        tmp_path / "index.parquet",
        "-o",
        tmp_path / "r.parquet",
        "--anchor",
        "s2",
        "--region",
        "3",
        "-90",
        "180",
        "90",
    )
    assert r.returncode == 0, r.stderr
    assert read_stacks(tmp_path / "r.parquet")["stackid"].to_pylist() == ["s2-c-0-0"]


def _without_crs(idx: pa.Table) -> pa.Table:
    """The index as written before layouts held the grid's CRS."""
    from stacchip_core.core.layout import decode, encode

    blobs = {}
    for blob in idx["layouts"].to_pylist():
        if blob not in blobs:
            lays = decode(blob)
            blobs[blob] = encode(lays.values(), lays.grid)
    column = pa.array([blobs[b] for b in idx["layouts"].to_pylist()], pa.binary())
    return idx.set_column(idx.column_names.index("layouts"), "layouts", column)


@pytest.mark.parametrize("layouts_crs", [True, False], ids=["crs-in-layouts", "older-layouts"])
def test_a_series_is_written_where_its_item_lies(place, tmp_path, layouts_crs):
    """An exact series: the GeoTIFF takes the member grid (CRS from the layouts, or from the
    first member's item for layouts written before they held it); its pixels are the series'
    steps, band by band."""
    from stacchip_core.core.output import write_chip
    from stacchip_core.training.stacks import StackReader

    _, idx = place
    if not layouts_crs:
        idx = _without_crs(idx)
    row = build_stacks(idx, anchor=S2, min_steps=6).to_pylist()[3]
    assert row["crs"] == ("EPSG:32720" if layouts_crs else None)
    ts = StackReader({S2: ["red"]}).read(row)
    tif = write_chip(tmp_path / "series.tif", ts)
    with rasterio.open(tif) as ds:
        x, y = row["chip_index_x"], row["chip_index_y"]
        assert ds.crs.to_epsg() == 32720 and ds.count == 6
        assert ds.transform == rasterio.Affine(10, 0, 767780 + 2560 * x, 0, -10, 6167440 - 2560 * y)
        np.testing.assert_array_equal(ds.read(), ts.series[:, 0])
        assert ds.descriptions[5] == f"{S2} 2023-02-24 red"


# --- training on stacks: the Lightning data module and TorchGeo -----------------------------

BANDS = {S2: ["red", "nir"], S1: ["vv"], LS: ["red"]}


@pytest.mark.parametrize("workers", [2, 0])
def test_stack_data_module_epoch_in_two_workers_sees_every_stack_once(lightning, place, workers):
    """19 stacks of every platform (S2: 4 of 6 steps; S1: 9 and Landsat: 6 of one step, the
    Landsat ones on 128 px chips): batches of one anchor platform, padded to the longest
    stack's 6 steps, read in two persistent workers, or in the main process with each next
    batch read ahead; pixels equal StackReader's."""
    from stacchip_core.training.datamodule import StacchipStackDataModule
    from stacchip_core.training.stacks import StackReader

    _, idx = place
    s = build_stacks(idx)
    dm = StacchipStackDataModule(
        s, bands=BANDS, split_block_deg=100, val_fraction=0.0, test_fraction=0.0,
        batch_size=4, num_workers=workers, seed=1,
    )
    assert dm.steps == 6
    loader = dm.train_dataloader()
    assert loader.num_workers == workers and loader.persistent_workers == (workers > 0)
    batches = list(loader)
    assert loader.dataset._ahead._on is (workers == 0)
    # S2 4 -> (4); S1 9 -> (4, 4, 1); Landsat 6 -> (4, 2)
    assert sorted((b["platform"], len(b["stackid"])) for b in batches) == sorted(
        [(S2, 4), (S1, 4), (S1, 4), (S1, 1), (LS, 4), (LS, 2)]
    )
    seen = [sid for b in batches for sid in b["stackid"]]
    assert sorted(seen) == sorted(s["stackid"].to_pylist())  # every stack exactly once
    shape = {S2: (6, 2, 256, 256), S1: (6, 1, 256, 256), LS: (6, 1, 128, 128)}
    steps = dict(zip(s["stackid"].to_pylist(), s["steps"].to_pylist()))
    rows = {r["stackid"]: r for r in s.to_pylist()}
    reader = StackReader(BANDS)
    for b in batches:
        n = len(b["stackid"])
        assert tuple(b["pixels"].shape) == (n, *shape[b["platform"]])
        assert str(b["pixels"].dtype) == "torch.float32"
        assert tuple(b["valid"].shape) == (n, 6, *shape[b["platform"]][2:])
        assert b["present"].sum(1).tolist() == [steps[i] for i in b["stackid"]]
        assert [len(d) for d in b["dates"]] == [steps[i] for i in b["stackid"]]
        assert "sensors" not in b
        i = n - 1  # the batch's last stack against a reading of its row alone
        px = reader.read(rows[b["stackid"][i]])
        t = steps[b["stackid"][i]]
        np.testing.assert_array_equal(b["pixels"][i, :t].numpy(), px.series)
        np.testing.assert_array_equal(b["valid"][i, :t].numpy(), px.valid[px.anchor])
        assert not b["pixels"][i, t:].any() and not b["valid"][i, t:].any()
        assert (b["time"][i, t:] == -1).all() and b["dates"][i] == [
            d.isoformat() for d in px.dates[px.anchor]
        ]
    # the second epoch: the same stacks, another order
    again = [sid for b in loader for sid in b["stackid"]]
    assert sorted(again) == sorted(seen) and again != seen


def test_stack_data_module_passes_sensors_through_and_skips_gone_stacks(lightning, place):
    from stacchip_core.training.datamodule import StacchipStackDataModule, collate_stacks
    from stacchip_core.training.stacks import StackReader

    _, idx = place
    pairs = build_stacks(idx, anchor=S2, with_=[S1], window=3)
    dm = StacchipStackDataModule(
        pairs, bands=BANDS, steps=2, split_block_deg=100, val_fraction=0.0,
        test_fraction=0.0, batch_size=4, num_workers=0, errors="skip",
    )
    assert dm.train_dataloader().dataset.errors == "skip"
    (batch,) = list(dm.train_dataloader())
    assert tuple(batch["pixels"].shape) == (4, 2, 2, 256, 256)
    s1 = batch["sensors"][S1]
    assert tuple(s1["pixels"].shape) == (4, 2, 1, 256, 256)
    assert s1["present"].tolist() == [[True, False]] * 4
    row = {r["stackid"]: r for r in pairs.to_pylist()}[batch["stackid"][0]]
    px = StackReader(BANDS).read(row)
    np.testing.assert_array_equal(s1["pixels"][0, :1].numpy(), px.pixels[S1])
    np.testing.assert_array_equal(s1["valid"][0, :1].numpy(), px.valid[S1])
    assert collate_stacks([]) is None  # every stack of a batch skipped


def test_a_changed_member_object_is_read_through_rasterio_and_reported(tmp_path):
    """An S2 asset rewritten after indexing (same pixels, other tiling: its size changed) is
    stale: that window alone is read through rasterio, with the same pixels, and the batch's
    report says so."""
    from stacchip_core.core.indexer import Indexer
    from stacchip_core.demo.archive import _stack_place
    from stacchip_core.training.stacks import StackReader

    root = _stack_place(tmp_path)  # its own copy: the items' hrefs are absolute
    items = sorted(p for p in root.rglob("*.json") if S2 in p.parts[-3])
    idx = pa.concat_tables([Indexer(str(p), chip_max_nodata=1.0).create_index() for p in items])
    s = build_stacks(idx, anchor=S2, min_steps=6).slice(0, 1)
    reader = StackReader({S2: ["red", "nir"]})
    before = reader.read(s.to_pylist()[0])
    assert reader.last.fallbacks == () and reader.last.layout_reads == 12
    red = items[2].parent / "red.tif"
    with rasterio.open(red) as ds:
        data, profile = ds.read(), ds.profile
    profile.update(tiled=True, blockxsize=64, blockysize=64, compress=None)
    red.unlink()
    with rasterio.open(red, "w", **profile) as ds:
        ds.write(data)
    after = reader.read(s.to_pylist()[0])
    np.testing.assert_array_equal(after.series, before.series)
    np.testing.assert_array_equal(after.valid[S2], before.valid[S2])
    assert reader.last.fallbacks == (("stale", 1),) and reader.last.rasterio_reads == 1
    assert reader.last.layout_reads == 11


@pytest.mark.parametrize("platform", [None, S1])
def test_torchgeo_stack_sample_equals_the_stack_reader(torchgeo, place, platform):
    import pandas as pd
    import pyproj

    from stacchip_core.training.stacks import StackReader
    from stacchip_core.training.torchgeo import StacchipStackGeoSamples

    _, idx = place
    s = build_stacks(idx, anchor=S2, with_=[S1], window=3)
    ds = StacchipStackGeoSamples(s, bands=BANDS, platform=platform)
    assert len(ds) == 4
    sample = ds[1]
    px = StackReader(BANDS).read(s.to_pylist()[1])
    name = platform or S2
    assert tuple(sample["image"].shape) == (1, 2 if name == S2 else 1, 256, 256)
    np.testing.assert_array_equal(sample["image"].numpy(), px.pixels[name])
    np.testing.assert_array_equal(sample["valid"].numpy(), px.valid[name])
    a, _, c, _, e, f = px.transform
    x, y, t = sample["bounds"]
    assert (x.start, x.stop, x.step) == (c, c + 256 * a, a) and (y.start, y.stop) == (
        f + 256 * e,
        f,
    )
    assert t.start == t.stop == pd.Timestamp(px.dates[name][0].isoformat())
    assert sample["crs"] == pyproj.CRS(px.crs) and sample["dates"] == [
        px.dates[name][0].isoformat()
    ]
    assert sample["time"].tolist() == [(px.dates[name][0] - dt.date(1970, 1, 1)).days]


STACK_DDP_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[3])
from provision import import_torch_stack
import_torch_stack()
import lightning, torch
from stacchip_core.training.datamodule import StacchipStackDataModule


class Probe(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen = []

    def training_step(self, batch, i):
        self.seen.append([self.current_epoch, batch["stackid"], list(batch["pixels"].shape)])
        return (batch["pixels"].mean() / 1000 * self.w).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self):
        with open(f"{sys.argv[2]}/rank{self.global_rank}.json", "w") as fh:
            json.dump({"world": self.trainer.world_size, "seen": self.seen}, fh)


bands = {"sentinel-2-l2a": ["red"], "sentinel-1-rtc": ["vv"], "landsat-c2l2-sr": ["red"]}
dm = StacchipStackDataModule(sys.argv[1], bands=bands, split_block_deg=100, val_fraction=0.0,
                             test_fraction=0.0, batch_size=4, num_workers=0, seed=1)
trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
                            logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0)
trainer.fit(Probe(), datamodule=dm)
"""


@pytest.mark.slow  # over 5 s on two shared cores (two ranks, each with workers)
def test_stack_data_module_under_ddp_two_processes_see_every_stack_once(lightning, place, tmp_path):
    import os
    import subprocess

    _, idx = place
    s = build_stacks(idx)
    write_stacks(s, tmp_path / "stacks.parquet")
    script = tmp_path / "ddp_stacks.py"
    script.write_text(STACK_DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "stacks.parquet"), str(out),
         str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
        env={**os.environ, "PL_DISABLE_FORK": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [x["world"] for x in ranks] == [2, 2]
    for epoch in (0, 1):
        per_rank = [[b for e, b, _ in x["seen"] if e == epoch] for x in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == 3  # 6 batches (4 S2, 4+4+1 S1, 4+2 LS)
        got = [sid for batches in per_rank for b in batches for sid in b]
        assert sorted(got) == sorted(s["stackid"].to_pylist())  # every stack once per epoch
    shapes = {tuple(shape[1:]) for x in ranks for _, _, shape in x["seen"]}
    assert shapes == {(6, 1, 256, 256), (6, 1, 128, 128)}
