"""A synthetic archive of every source, with choices for sample selection to make.

``build_archive(root)`` writes small scenes with each source's real layout (see
``synthetic``) for several dates and cloud levels, the items' JSON, the collections, the
sample sources (an MGRS tile layer, a point layer) and a LINZ-like source bucket of RGBA
tiles with their item JSONs. The same archive is loaded into a STAC API (pgstac) by the
tests, or searched in place by the embedded catalog (the demo).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from affine import Affine

from stacchip_core.demo import synthetic

S2_TILE = "20HNJ"
S2_ORIGIN = (499980.0, 6400000.0)  # EPSG:32720, the Earth Search fixture's tile
LANDSAT_ORIGIN = (500000.0, 6380000.0)  # inside the S2 tile, so one point serves both
NAIP_ORIGIN = (341338.2, 4749053.4)  # EPSG:26919
LINZ_PREFIX = "auckland/auckland_2022_0.075m/"
LINZ_ORIGIN = (1756000.0, 5920000.0)  # NZTM (EPSG:2193)


@dataclass
class Archive:
    """Where ``build_archive`` wrote each part of the archive.

    Attributes:
        root: The archive's folder.
        items: The folder of item JSON, one subfolder per collection (the embedded catalog
            searches it in place).
        collections: ``collections.json``: the collections, for loading into a STAC API.
        mgrs: The MGRS tile samples (name, polygon).
        points: The point samples (Landsat, NAIP).
        linz_source: A LINZ-like source bucket, as a folder.
        stack_items: The stacks place's items: Sentinel-2 on several dates, Sentinel-1 and
            Landsat once.
    """

    root: Path
    items: Path  # folder of item JSON (the embedded catalog reads it)
    collections: Path  # collections.json
    mgrs: Path  # MGRS tile samples (name, polygon)
    points: Path  # point samples (Landsat, NAIP)
    linz_source: Path  # a LINZ-like source bucket, as a folder
    stack_items: Path | None = None  # the stacks place: S2 on several dates, S1 and Landsat once


def _quarter_dates(year: int) -> list[datetime]:
    return [datetime(year, m, 15, 10, 30, tzinfo=UTC) for m in (2, 5, 8, 11)]


def _s2_years(index: int) -> list[int]:
    from random import Random

    return sorted(Random(index).sample(list(range(2018, 2024)), 2))


def build_archive(root: str | Path, scene_px: int = 512) -> Archive:
    """Write the archive under ``root`` (idempotent for the same arguments).

    Args:
        root: The folder to write into (created).
        scene_px: Width and height of the Sentinel-2 scenes in 10 m pixels.

    Returns:
        Where each part of the archive is.
    """
    root = Path(root)
    items = root / "items"
    _sentinel2(items, scene_px)
    _landsat(items)
    _naip(items)
    _sentinel1(items)
    _modis(items)
    linz = _linz_source(root / "linz-source")
    collections = root / "collections.json"
    collections.write_text(json.dumps([_collection(c) for c in
                                       ("sentinel-2-l2a", "landsat-c2l2-sr", "landsat-c2l1", "naip",
                                        "sentinel-1-rtc", "modis-09A1-061")]))
    stack_items = _stack_place(root / "stack-items")
    return Archive(
        root, items, collections, _mgrs_samples(root), _point_samples(root), linz, stack_items
    )


def _sentinel2(items: Path, px: int) -> None:
    """For sample 0's two years, per quarter: a clear-ish item, a cloudier one, and decoys
    (lowest cloud but too much nodata; another MGRS tile; above the cloud limit)."""
    n = 0
    for year in _s2_years(0):
        for q, when in enumerate(_quarter_dates(year)):
            variants = [("a", 10.0 + q + year % 10, 5.0, S2_TILE), ("b", 40.0 + q, 3.0, S2_TILE),
                        ("nodata", 1.0, 35.0, S2_TILE), ("othertile", 0.5, 0.0, "20HNK")]
            if q == 3:  # last quarter: every item of the tile is too cloudy
                variants = [("a", 80.0, 5.0, S2_TILE), ("b", 90.0, 2.0, S2_TILE)]
            for tag, cloud, nodata_pct, tile in variants:
                day = when.replace(day=10 + len(tag))
                item_id = f"S2A_{tile}_{day:%Y%m%d}_{tag}"
                path = synthetic.sentinel2_scene(
                    items / "sentinel-2-l2a",
                    px,
                    seed=n,
                    item_id=item_id,
                    when=day,
                    origin=S2_ORIGIN,
                    cloud_cover=cloud,
                    bands_10m=tuple(synthetic.S2_BANDS_10M),
                    naming="planetary-computer" if year % 2 else "earth-search",
                )
                d = json.loads(path.read_text())
                d["properties"].update(
                    {"s2:nodata_pixel_percentage": nodata_pct, "grid:code": f"MGRS-{tile}"}
                )
                path.write_text(json.dumps(d, indent=1))
                n += 1
    # a decoy outside sample 0's years
    other = next(y for y in range(2018, 2024) if y not in _s2_years(0))
    synthetic.sentinel2_scene(
        items / "sentinel-2-l2a",
        px,
        item_id=f"S2A_{S2_TILE}_{other}0615_x",
        when=datetime(other, 6, 15, tzinfo=UTC),
        origin=S2_ORIGIN,
        cloud_cover=0.0,
    )


def _landsat(items: Path) -> None:
    from random import Random

    year = Random(0).choice(list(range(2018, 2024)))  # sample 0's year
    for collection in ("landsat-c2l2-sr", "landsat-c2l1"):
        for q, when in enumerate(_quarter_dates(year)):
            for tag, cloud, sat in (
                ("l8", 30.0 - 5 * q, "LANDSAT_8"),
                ("l9", 20.0 + 3 * q, "LANDSAT_9"),
                ("l7", 1.0, "LANDSAT_7"),
                ("cloudy", 0.5 if q == 2 else 99.0, "LANDSAT_9"),
            ):
                if tag == "cloudy" and q != 2:
                    continue
                level = "L2SP" if collection.endswith("sr") else "L1TP"
                item_id = f"LC0{sat[-1]}_{level}_086107_{when:%Y%m%d}_{tag}"
                path = synthetic.landsat_scene(
                    items / collection,
                    300,
                    300,
                    item_id=item_id,
                    when=when,
                    origin=LANDSAT_ORIGIN,
                    epsg=32720,
                    collection=collection,
                    seed=q,
                )
                d = json.loads(path.read_text())
                d["properties"].update(
                    {"eo:cloud_cover": 99.0 if tag == "cloudy" else cloud, "platform": sat}
                )
                for key, asset in d["assets"].items():
                    # the public item: https hrefs that cannot be reached here, and the s3 alternate
                    asset["alternate"] = {"s3": {"href": asset["href"]}}
                    asset["href"] = f"https://landsatlook.invalid/{item_id}/{key}.TIF"
                path.write_text(json.dumps(d, indent=1))


def _naip(items: Path) -> None:
    for year in (2014, 2016, 2018, 2020, 2022):
        path = synthetic.naip_scene(
            items / "naip",
            600,
            520,
            item_id=f"m_4207009_ne_19_060_{year}0701",
            when=datetime(year, 7, 1, 16, tzinfo=UTC),
            origin=NAIP_ORIGIN,
        )
        d = json.loads(path.read_text())
        d["properties"]["naip:year"] = str(year)
        path.write_text(json.dumps(d, indent=1))


def _linz_source(root: Path, tiles: int = 12, px: int = 1200) -> Path:
    """RGBA uint8 tiles at 0.075 m with their item JSONs (no proj fields, datetime null),
    as in the LINZ imagery bucket. Each tile has a zero strip in band 1 (nodata)."""
    for i in range(tiles):
        name = f"BQ31_1000_{4701 + i:04d}"
        x0, y0 = LINZ_ORIGIN[0] + (i % 4) * px * 0.075, LINZ_ORIGIN[1] - (i // 4) * px * 0.075
        t = Affine(0.075, 0, x0, 0, -0.075, y0)
        data = np.stack(
            [(synthetic.band_pattern(b, px, px) % 250 + 1).astype(np.uint8) for b in range(3)]
            + [np.full((px, px), 255, np.uint8)]
        )
        data[:, :, : px // 4 * (i % 2)] = 0  # odd tiles: a quarter of nodata (alpha 0 too)
        tiff = synthetic.write_cog(root / LINZ_PREFIX / f"{name}.tiff", data, t, "EPSG:2193")
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": name,
            "collection": "01HQRJ",
            "geometry": None,
            "links": [{"rel": "self", "href": f"./{name}.json"}],
            "properties": {
                "start_datetime": f"2022-12-{1 + i:02d}T11:00:00Z",
                "end_datetime": f"2022-12-{1 + i:02d}T11:00:00Z",
                "datetime": None,
            },
            "assets": {
                "visual": {
                    "href": f"./{name}.tiff",
                    "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                }
            },
        }
        (root / LINZ_PREFIX / f"{name}.json").write_text(json.dumps(item, indent=1))
        assert tiff.exists()
    return root


def _mgrs_samples(root: Path) -> Path:
    import geopandas as gpd
    import pyproj
    import shapely

    transformer = pyproj.Transformer.from_crs(32720, 4326, always_xy=True)
    to_lonlat = lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    x0, y0 = S2_ORIGIN
    tile = shapely.transform(shapely.box(x0, y0 - 109800, x0 + 109800, y0), to_lonlat)
    other = shapely.transform(shapely.box(x0 + 99960, y0 - 109800, x0 + 209760, y0), to_lonlat)
    path = root / "samples" / "mgrs.geojson"
    path.parent.mkdir(parents=True, exist_ok=True)
    gpd.GeoDataFrame({"name": [S2_TILE, "20HNK"]}, geometry=[tile, other], crs=4326).to_file(
        path, driver="GeoJSON"
    )
    return path


def _point_samples(root: Path) -> Path:
    import geopandas as gpd
    import pyproj
    import shapely

    landsat = pyproj.Transformer.from_crs(32720, 4326, always_xy=True).transform(
        LANDSAT_ORIGIN[0] + 4500, LANDSAT_ORIGIN[1] - 4500
    )
    naip = pyproj.Transformer.from_crs(26919, 4326, always_xy=True).transform(
        NAIP_ORIGIN[0] + 150, NAIP_ORIGIN[1] - 150
    )
    path = root / "samples" / "points.geojson"
    path.parent.mkdir(parents=True, exist_ok=True)
    gpd.GeoDataFrame(
        {"site": ["pampa", "massachusetts"]},
        geometry=[shapely.Point(*landsat), shapely.Point(*naip)],
        crs=4326,
    ).to_file(path, driver="GeoJSON")
    return path


def _collection(cid: str) -> dict:
    return {
        "type": "Collection", "stac_version": "1.1.0", "id": cid, "description": f"synthetic {cid}",
        "license": "proprietary", "links": [],
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                   "temporal": {"interval": [["2000-01-01T00:00:00Z", None]]}},
    }


# --- Sentinel-1 RTC and MODIS ------------------------------------------------------------

S1_ORIGIN = (S2_ORIGIN[0] + 20000, S2_ORIGIN[1] - 20000)  # inside MGRS tile 20HNJ
S1_ELSEWHERE = (S2_ORIGIN[0] + 300000, S2_ORIGIN[1] - 20000)  # east of both MGRS sample tiles
MODIS_TILE = (12, 2)  # (h, v): the first tile of the MODIS plugin's list, sample 0


def s1_quarter(index: int) -> tuple[int, int]:
    """The year and quarter the Sentinel-1 plugin draws for MGRS sample ``index``.

    Args:
        index: The sample's number.

    Returns:
        (year, quarter), the quarter 0-3.
    """
    rng = random.Random(index)
    year = rng.sample(range(2018, 2024), 1)[0]
    return year, rng.sample(range(4), 1)[0]


def _sentinel1(items: Path) -> None:
    """For sample 0's quarter: the item over the tile, and newer decoys that the original
    processor could pick (one elsewhere on Earth, one HH/HV over the tile); one more item
    over the tile in another quarter."""
    year, q = s1_quarter(0)
    month = 2 + 3 * q
    cases = [
        ("in", S1_ORIGIN, month, 10, ("vv", "vh")),
        ("elsewhere", S1_ELSEWHERE, month, 20, ("vv", "vh")),
        ("polar", S1_ORIGIN, month, 25, ("hh", "hv")),
        ("otherquarter", S1_ORIGIN, 2 + 3 * ((q + 1) % 4), 10, ("vv", "vh")),
    ]
    for tag, origin, m, day, pols in cases:
        when = datetime(year, m, day, 9, 43, 50, tzinfo=UTC)
        kind = "1SDV" if pols[0] == "vv" else "1SDH"
        synthetic.sentinel1_scene(
            items / "sentinel-1-rtc",
            600,
            640,
            origin=origin,
            when=when,
            polarisations=pols,
            item_id=f"S1A_IW_GRDH_{kind}_{when:%Y%m%d}T094350_{tag}_rtc",
        )


def modis_months(h: int, v: int, year: int) -> list[int]:
    """The four months of ``year`` the MODIS plugin draws for tile (h, v).

    Args:
        h: The tile's horizontal number.
        v: The tile's vertical number.
        year: The year.

    Returns:
        Four months, 1-12, in the order drawn.
    """
    return random.Random(h * v * year).sample(range(1, 13), 4)


def _modis(items: Path) -> None:
    """Tile (12, 2), 2018 only: in each month sample 0 draws, a Terra (days 1-8) and a newer
    Aqua composite (days 9-16, selected), and a still newer one of tile (13, 2); one
    composite in a month that is not drawn."""
    h, v = MODIS_TILE
    drawn = modis_months(h, v, 2018)
    other = next(m for m in range(1, 13) if m not in drawn)
    for n, m in enumerate(drawn):
        for day, platform, tile, size in (
            (1, "terra", h, 260),
            (9, "aqua", h, 520),
            (17, "terra", h + 1, 260),
        ):
            synthetic.modis_scene(
                items / "modis-09A1-061",
                size,
                h=tile,
                v=v,
                platform=platform,
                seed=n,
                start=datetime(2018, m, day, tzinfo=UTC),
            )
    synthetic.modis_scene(
        items / "modis-09A1-061", 260, h=h, v=v, start=datetime(2018, other, 9, tzinfo=UTC)
    )
    # a composite that starts in the (undrawn) month before a drawn one and ends inside it: both
    # catalogs must find it in the drawn month (ranges overlap), where the newer Aqua one still wins
    month = next(m for m in drawn if m > 1 and m - 1 not in drawn)
    synthetic.modis_scene(items / "modis-09A1-061", 260, h=h, v=v, platform="terra",
                          start=datetime(2018, month, 1, tzinfo=UTC) - timedelta(days=4))


# --- the stacks place (issue 21): one place over time and across sensors -------------------
#
# Near the UTM zone 20/21 boundary (lon -60.08, lat -34.6), far from every sample above, in its
# own folder (no catalog search sees it): Sentinel-2 on six dates ten days apart (zone 20, tiles
# seen from two relative orbits: every other date has a nodata corner), Sentinel-1 once (zone
# 20, its vh has a NaN block over the place) and Landsat once in zone 21, as USGS projects a
# scene centred east of -60: a different grid, rotated by the meridian convergence.

STACK_S2_ORIGIN = (767780.0, 6167440.0)  # EPSG:32720, a 5.12 km scene
STACK_S2_DATES = [
    datetime(2023, 1, 5, 14, 0, tzinfo=UTC) + timedelta(days=10 * i) for i in range(6)
]
STACK_S1_DATE = datetime(2023, 2, 5, 9, 43, 50, tzinfo=UTC)  # a day after S2 step 3
STACK_LANDSAT_DATE = datetime(2023, 2, 7, 13, 50, tzinfo=UTC)  # three days after it
STACK_S1_ORIGIN = (STACK_S2_ORIGIN[0] - 1500, STACK_S2_ORIGIN[1] + 500)  # EPSG:32720
STACK_LANDSAT_ORIGIN = (216015.0, 6168825.0)  # EPSG:32721, 1.5 km around the S2 scene


def _stack_place(items: Path) -> Path:
    for i, when in enumerate(STACK_S2_DATES):
        synthetic.sentinel2_scene(
            items / "sentinel-2-l2a",
            512,
            seed=100 + i,
            item_id=f"S2B_20HQH_{when:%Y%m%d}",
            when=when,
            origin=STACK_S2_ORIGIN,
            cloud_cover=10.0 * i,
            bands_10m=tuple(synthetic.S2_BANDS_10M),
            nodata_corner=0.3 if i % 2 else 0.0,
            n_clouds=(1, 3, 0, 2, 6, 1)[i],
            land_seed=100,
        )
    synthetic.sentinel1_scene(
        items / "sentinel-1-rtc",
        800,
        800,
        origin=STACK_S1_ORIGIN,
        when=STACK_S1_DATE,
        item_id=f"S1A_IW_GRDH_1SDV_{STACK_S1_DATE:%Y%m%dT%H%M%S}_stack_rtc",
    )
    synthetic.landsat_scene(
        items / "landsat-c2l2-sr",
        320,
        384,
        seed=7,
        item_id="LC09_L2SP_225084_20230207_stack",
        when=STACK_LANDSAT_DATE,
        origin=STACK_LANDSAT_ORIGIN,
        epsg=32721,
    )
    return items
