"""Synthetic but realistic scenes: COGs with the real layout of each source (band names,
dtypes, resolution ratios, SCL classes, QA bit flags, UTM CRS) and their STAC items.

Used by the demo, the tests and the benchmarks; pixel values follow formulas so that a
test can recompute any pixel it reads.
"""

from __future__ import annotations

import contextvars
import json
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from affine import Affine

from stacchip_core.core.output import write_cog

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

S2_BANDS_10M = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
S2_BANDS_20M = {"rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "nir08": "B8A",
                "swir16": "B11", "swir22": "B12"}
LANDSAT_BANDS = ("blue", "green", "red", "nir08", "swir16", "swir22")


def band_pattern(band: int, rows: int, cols: int, dtype=np.uint16, noise: int = 0) -> np.ndarray:
    """Deterministic, distinct per band and pixel, never 0 (0 is nodata):
    ``1000 * band + (row * (7 + band) + col * (3 + 2 * band)) % 997 + 1``, plus seeded
    uniform noise in ``[0, noise)`` when asked (realistic entropy for benchmarks: without
    it a band compresses ~100:1, real imagery ~2-3:1).

    Args:
        band: The band's number (0 for the first).
        rows: Height in pixels.
        cols: Width in pixels.
        dtype: The array's dtype.
        noise: Upper bound of the noise added (0: none).

    Returns:
        The band (rows, cols).
    """
    r = np.arange(rows, dtype=np.int32)[:, None]
    c = np.arange(cols, dtype=np.int32)[None, :]
    out = (1000 * band + (r * (7 + band) + c * (3 + 2 * band)) % 997 + 1).astype(dtype)
    if noise:
        out += np.random.default_rng(band).integers(0, noise, size=out.shape, dtype=dtype)
    return out


def scl_layer(rows: int, cols: int, seed: int = 0, nodata_corner: float = 0.3,
              n_clouds: int = 4) -> np.ndarray:
    """An SCL-like uint8 layer: a nodata triangle in the lower-left corner (a swath edge),
    cloud blobs (classes 8, 9), their shadows (3), cirrus (10), the rest vegetation (4)
    or bare soil (5).

    Args:
        rows: Height in pixels.
        cols: Width in pixels.
        seed: Places the cloud blobs.
        nodata_corner: Size of the nodata triangle, as a fraction of rows + cols (0: none).
        n_clouds: Number of cloud blobs.

    Returns:
        The layer (rows, cols), uint8.
    """
    rng = np.random.default_rng(seed)
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    scl = np.where((r + c) % 2 == 0, 4, 5).astype(np.uint8)
    radius = max(rows, cols) / 12
    for _ in range(n_clouds):
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        d2 = (r - cy) ** 2 + (c - cx) ** 2
        scl[(r - cy - radius / 2) ** 2 + (c - cx - radius / 2) ** 2 < radius**2] = 3
        scl[d2 < radius**2] = 8
        scl[d2 < (radius / 2) ** 2] = 9
    scl[: rows // 10, : cols // 10] = 10
    if nodata_corner > 0:
        scl[(rows - 1 - r) + c < nodata_corner * (rows + cols)] = 0
    return scl


def qa_pixel_layer(rows: int, cols: int, seed: int = 0, n_clouds: int = 3) -> np.ndarray:
    """A Landsat C2 QA_PIXEL-like uint16 layer with real bit values: fill (bit 0) at the
    left and right margins of a tilted scene, clear (bit 6) elsewhere, cloud (bit 3) with
    high confidence (bits 8-9), dilated cloud (bit 1) rings and cloud shadow (bit 4).

    Args:
        rows: Height in pixels.
        cols: Width in pixels.
        seed: Places the clouds.
        n_clouds: Number of clouds.

    Returns:
        The layer (rows, cols), uint16.
    """
    FILL, DILATED, CLOUD, SHADOW, CLEAR = 1, 1 << 1, 1 << 3, 1 << 4, 1 << 6
    HIGH_CONF = 3 << 8
    rng = np.random.default_rng(seed)
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    qa = np.full((rows, cols), CLEAR | (1 << 8), np.uint16)
    radius = max(rows, cols) / 14
    for _ in range(n_clouds):
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        d2 = (r - cy) ** 2 + (c - cx) ** 2
        sd2 = (r - cy - radius) ** 2 + (c - cx - radius) ** 2
        qa[sd2 < radius**2] = SHADOW | (1 << 8)
        qa[d2 < (1.3 * radius) ** 2] = DILATED | (1 << 8)
        qa[d2 < radius**2] = CLOUD | DILATED | HIGH_CONF
    # the scene is a parallelogram inside its bounding grid: fill outside
    shift = (r * cols) // (4 * rows)
    qa[(c < cols // 8 - shift) | (c > cols - cols // 8 - shift)] = FILL
    return qa


# --- scenes that look like land (the demo's appearance) ----------------------------------
#
# By default scenes carry ``band_pattern`` values (tests recompute them pixel by pixel). Inside
# ``with land_appearance():`` the same functions write land instead: terrain-like texture, water
# in the valleys, forest on the heights, rectangular fields between, in each band's typical
# reflectance; clouds, cirrus and shadows drawn exactly where the scene's SCL / QA_PIXEL layer
# marks them, so a preview shows what the index's fractions measure. Masks are unchanged.

_APPEARANCE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "stacchip_synthetic_appearance", default="pattern"
)

# typical surface reflectance x 10000 per cover class: water,
# forest, green crop, ripe crop, bare soil
_COVER = ("water", "forest", "crop", "ripe", "soil")
_REFLECTANCE = {
    "coastal": (700, 250, 350, 700, 1100),
    "blue": (600, 300, 400, 800, 1200),
    "green": (500, 550, 800, 1100, 1500),
    "red": (300, 300, 500, 1300, 1800),
    "rededge1": (250, 900, 1300, 1700, 2000),
    "rededge2": (200, 2200, 2800, 2200, 2200),
    "rededge3": (180, 2700, 3400, 2500, 2300),
    "nir": (150, 3000, 4000, 2700, 2500),
    "nir08": (140, 3100, 4100, 2800, 2600),
    "swir16": (60, 1500, 1900, 2600, 3000),
    "swir22": (40, 800, 1000, 1900, 2600),
}


@contextmanager
def land_appearance():
    """Scenes written inside look like land, with clouds and shadows where their masks say."""
    token = _APPEARANCE.set("land")
    try:
        yield
    finally:
        _APPEARANCE.reset(token)


def terrain(rows: int, cols: int, seed: int = 0, octaves: int = 5) -> np.ndarray:
    """Fractal value noise in [0, 1]: octaves of seeded random lattices, bilinearly upsampled
    (the same seed gives the same landscape at any size, so 10 m and 20 m bands agree).

    Args:
        rows: Height in pixels.
        cols: Width in pixels.
        seed: Picks the landscape.
        octaves: Lattices summed, each twice as fine and 0.55 times as strong as the last.

    Returns:
        The noise (rows, cols), float64, stretched to [0, 1].
    """
    rng = np.random.default_rng(seed + 7919)
    out = np.zeros((rows, cols))
    for o in range(octaves):
        n = 2 ** (o + 2)
        lattice = rng.random((n + 1, n + 1))
        y = np.linspace(0, n, rows, endpoint=False) + n / rows / 2
        x = np.linspace(0, n, cols, endpoint=False) + n / cols / 2
        y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
        fy, fx = (y - y0)[:, None], (x - x0)[None, :]
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no lattice creases
        a, b = lattice[y0][:, x0], lattice[y0][:, x0 + 1]
        c, d = lattice[y0 + 1][:, x0], lattice[y0 + 1][:, x0 + 1]
        out += 0.55 ** o * ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy)
    return (out - out.min()) / max(out.max() - out.min(), 1e-9)


def land_cover(rows: int, cols: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cover class index into ``_COVER``, terrain) of a landscape: water below 0.3, forest
    above 0.68, fields (a seeded crop per rectangle of a tilted grid) between.

    Args:
        rows: Height in pixels.
        cols: Width in pixels.
        seed: Picks the landscape and the crops.

    Returns:
        (cover, terrain), both (rows, cols).
    """
    t = terrain(rows, cols, seed)
    r = np.arange(rows)[:, None] / rows
    c = np.arange(cols)[None, :] / cols
    field = ((r * 9 + c * 2).astype(int) * 31 + (c * 7 - r * 1.5 + 2).astype(int) * 17 + seed) % 5
    crops = np.array([2, 3, 4, 2, 3])[field]
    cover = np.where(t < 0.3, 0, np.where(t > 0.68, 1, crops))
    return cover, t


def land_band(name: str, rows: int, cols: int, seed: int = 0, dtype=np.uint16, scale: float = 1.0,
              clouds: np.ndarray | None = None, shadows: np.ndarray | None = None,
              haze: np.ndarray | None = None) -> np.ndarray:
    """One band of the landscape (``name``: a canonical band; reflectance x 10000 x ``scale``),
    with opaque ``clouds``, semi-transparent ``haze`` (cirrus, dilated cloud edges) and dark
    ``shadows`` (boolean masks of the band's shape). Never 0 (0 is nodata).

    Args:
        name: The canonical band name (an unknown one reflects as red).
        rows: Height in pixels.
        cols: Width in pixels.
        seed: Picks the landscape (``land_cover``).
        dtype: The band's dtype (values are clipped to its range).
        scale: Factor on reflectance x 10000 (e.g. ``255 / 6000`` for uint8 imagery).
        clouds: Where opaque cloud is.
        shadows: Where cloud shadow is.
        haze: Where semi-transparent cloud is.

    Returns:
        The band (rows, cols).
    """
    cover, t = land_cover(rows, cols, seed)
    base = np.asarray(_REFLECTANCE.get(name, _REFLECTANCE["red"]), dtype=np.float64)[cover]
    detail = terrain(rows, cols, seed + 1, octaves=3)
    value = base * (0.8 + 0.25 * t + 0.15 * detail)
    bright = 7000 + 2500 * terrain(rows, cols, seed + 2, octaves=4)
    if haze is not None:
        value = np.where(haze, 0.55 * value + 0.45 * bright, value)
    if clouds is not None:
        value = np.where(clouds, bright, value)
    if shadows is not None:
        value = np.where(shadows, 0.35 * value, value)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.inf
    return np.clip(value * scale, 1, top).astype(dtype)


def _scl_masks(scl: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "clouds": np.isin(scl, (8, 9)),
        "haze": scl == 10,
        "shadows": scl == 3,
        "nodata": scl == 0,
    }


def _qa_masks(qa: np.ndarray) -> dict[str, np.ndarray]:
    return {"clouds": (qa & (1 << 3)) > 0, "haze": ((qa & (1 << 1)) > 0) & ((qa & (1 << 3)) == 0),
            "shadows": (qa & (1 << 4)) > 0}


def _expand(mask: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(mask, factor, 0), factor, 1) if factor > 1 else mask


def _band_data(i: int, name: str, rows: int, cols: int, seed: int, noise: int,
               masks: dict[str, np.ndarray] | None = None, factor: int = 1) -> np.ndarray:
    """``band_pattern`` (the default) or, in ``land_appearance``, the land band with the
    masks (given at 1/``factor`` of this band's resolution... or finer: see callers)."""
    if _APPEARANCE.get() != "land":
        return band_pattern(i, rows, cols, noise=noise)
    masks = {k: _expand(v, factor)[:rows, :cols] for k, v in (masks or {}).items()}
    nodata = masks.pop("nodata", None)
    data = land_band(
        name,
        rows,
        cols,
        seed,
        clouds=masks.get("clouds"),
        shadows=masks.get("shadows"),
        haze=masks.get("haze"),
    )
    if nodata is not None:
        data[nodata] = 0
    return data


def _asset(href: Path, shape, transform: Affine, roles=("data",), **extra) -> dict:
    return {
        "href": str(Path(href).resolve()),
        "type": COG_MEDIA_TYPE,
        "roles": list(roles),
        "proj:shape": [int(shape[0]), int(shape[1])],
        "proj:transform": list(transform)[:6],
        **extra,
    }


def _item(item_id, collection, when, epsg, transform, shape, assets, properties) -> dict:
    import pyproj

    from stacchip_core.core.grid import ChipGrid  # footprint in lon/lat from the grid math

    grid = ChipGrid(
        (shape[0], shape[1]), transform, pyproj.CRS(f"EPSG:{epsg}"), chip_size=min(shape)
    )
    polygons, bounds = grid.footprints()
    ring = [list(p) for p in polygons[0].exterior.coords]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "id": item_id,
        "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [float(v) for v in bounds[0]],
        "properties": {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "proj:code": f"EPSG:{epsg}",
            **properties,
        },
        "links": [],
        "assets": assets,
    }


def _write_item(item: dict, outdir: Path) -> Path:
    path = outdir / f"{item['id']}.json"
    path.write_text(json.dumps(item, indent=1))
    return path


def sentinel2_scene(
    outdir: str | Path,
    size: int = 1024,
    *,
    seed: int = 0,
    item_id: str = "S2A_T20HNJ_20240311T140636_L2A",
    naming: str = "earth-search",
    when: datetime = datetime(2024, 3, 11, 14, 11, 54, tzinfo=UTC),
    origin: tuple[float, float] = (499980.0, 6400000.0),
    epsg: int = 32720,
    bands_10m=tuple(S2_BANDS_10M),
    bands_20m=tuple(S2_BANDS_20M),
    blocksize: int = 512,
    cloud_cover: float = 18.4,
    noise: int = 0,
    nodata_corner: float = 0.3,
    n_clouds: int = 4,
    land_seed: int | None = None,
) -> Path:
    """A Sentinel-2 L2A scene of ``size`` px a side at 10 m: 10 m bands, 20 m bands and SCL
    at ``size/2``, a 60 m coastal band at ``size/6`` (when divisible). ``naming`` picks the
    asset keys of Earth Search (``red``, ``scl``) or Planetary Computer (``B04``, ``SCL``).
    ``nodata_corner`` and ``n_clouds`` shape the SCL layer (``scl_layer``); ``land_seed`` (default
    ``seed``) picks the landscape, so scenes of one place on several dates can share it.

    Args:
        outdir: The folder the item's folder is written into.
        size: Width and height in 10 m pixels.
        seed: Places the clouds (and picks the landscape unless ``land_seed`` does).
        item_id: The item's id.
        naming: ``"earth-search"`` or ``"planetary-computer"`` asset keys.
        when: The item's datetime.
        origin: Upper-left corner in the CRS.
        epsg: The CRS's EPSG code.
        bands_10m: The 10 m bands to write (names of ``S2_BANDS_10M``).
        bands_20m: The 20 m bands to write (names of ``S2_BANDS_20M``).
        blocksize: COG tile size in pixels.
        cloud_cover: The item's ``eo:cloud_cover``.
        noise: Noise added to the band patterns (see ``band_pattern``).
        nodata_corner: The SCL layer's nodata triangle (see ``scl_layer``).
        n_clouds: The SCL layer's cloud blobs.
        land_seed: Picks the landscape (default: ``seed``).

    Returns:
        The item JSON's path, ``outdir/item_id/item_id.json``.
    """
    outdir = Path(outdir) / item_id
    pc = naming == "planetary-computer"
    t10 = Affine(10, 0, origin[0], 0, -10, origin[1])
    t20 = Affine(20, 0, origin[0], 0, -20, origin[1])
    crs = f"EPSG:{epsg}"
    assets = {}
    half = size // 2
    scl = scl_layer(half, half, seed, nodata_corner=nodata_corner, n_clouds=n_clouds)
    land = seed if land_seed is None else land_seed
    masks = _scl_masks(scl)
    for i, name in enumerate(bands_10m):
        key = S2_BANDS_10M[name] if pc else name
        data = _band_data(i, name, size, size, land, noise, masks, 2)
        path = write_cog(outdir / f"{key}.tif", data, t10, crs, nodata=0, blocksize=blocksize)
        assets[key] = _asset(path, (size, size), t10, gsd=10)
    for i, name in enumerate(bands_20m, start=len(bands_10m)):
        key = S2_BANDS_20M[name] if pc else name
        data = _band_data(i, name, half, half, land, noise, masks, 1)
        path = write_cog(outdir / f"{key}.tif", data, t20, crs, nodata=0, blocksize=blocksize)
        assets[key] = _asset(path, (half, half), t20, gsd=20)
    scl_key = "SCL" if pc else "scl"
    path = write_cog(outdir / f"{scl_key}.tif", scl, t20, crs, nodata=0, blocksize=blocksize)
    assets[scl_key] = _asset(path, (half, half), t20, gsd=20)
    if size % 6 == 0:
        t60 = Affine(60, 0, origin[0], 0, -60, origin[1])
        key = "B01" if pc else "coastal"
        sixth = size // 6
        data = (
            band_pattern(20, sixth, sixth)
            if _APPEARANCE.get() != "land"
            else _band_data(
                20, "coastal", sixth, sixth, land, 0, {k: v[1::3, 1::3] for k, v in masks.items()}
            )
        )
        path = write_cog(outdir / f"{key}.tif", data, t60, crs, nodata=0, blocksize=blocksize)
        assets[key] = _asset(path, (size // 6, size // 6), t60, gsd=60)
    properties = {
        "eo:cloud_cover": cloud_cover,
        "platform": "sentinel-2a",
        "s2:nodata_pixel_percentage": 12.0,
        "grid:code": "MGRS-20HNJ",
    }
    item = _item(item_id, "sentinel-2-l2a", when, epsg, t10, (size, size), assets, properties)
    return _write_item(item, outdir)


def landsat_scene(
    outdir: str | Path,
    rows: int = 800,
    cols: int = 820,
    *,
    seed: int = 0,
    item_id: str = "LC09_L2SR_086107_20240311_20240312_02_T2_SR",
    when: datetime = datetime(2024, 3, 11, 23, 34, 56, tzinfo=UTC),
    origin: tuple[float, float] = (1517085.0, -1811685.0),
    epsg: int = 3031,
    blocksize: int = 512,
    collection: str = "landsat-c2l2-sr",
    noise: int = 0,
) -> Path:
    """A Landsat C2 scene at 30 m: six uint16 reflectance bands and ``qa_pixel``, shape
    and transform at item level as USGS publishes them; a ``landsat-c2l1`` item also has
    ``pan`` (15 m, its own shape and transform) and ``lwir11``/``lwir12``.

    Args:
        outdir: The folder the item's folder is written into.
        rows: Height in pixels.
        cols: Width in pixels.
        seed: Places the clouds (``qa_pixel_layer``) and picks the landscape.
        item_id: The item's id.
        when: The item's datetime.
        origin: Upper-left corner in the CRS.
        epsg: The CRS's EPSG code.
        blocksize: COG tile size in pixels.
        collection: The item's collection (``landsat-c2l1`` adds pan and thermal bands).
        noise: Noise added to the band patterns (see ``band_pattern``).

    Returns:
        The item JSON's path, ``outdir/item_id/item_id.json``.
    """
    outdir = Path(outdir) / item_id
    t = Affine(30, 0, origin[0], 0, -30, origin[1])
    crs = f"EPSG:{epsg}"
    qa = qa_pixel_layer(rows, cols, seed)
    fill = (qa & 1) == 1
    assets = {}
    masks = _qa_masks(qa)
    for i, name in enumerate(LANDSAT_BANDS):
        data = _band_data(i, name, rows, cols, seed, noise, masks)
        data[fill] = 0
        path = write_cog(outdir / f"{name}.tif", data, t, crs, nodata=0, blocksize=blocksize)
        assets[name] = {"href": str(path.resolve()), "type": COG_MEDIA_TYPE, "roles": ["data"]}
    if collection == "landsat-c2l1":
        # Level 1 also holds the 15 m panchromatic band (its own grid, twice as fine) and the
        # two thermal bands, which the platform reads with the six: an item without them
        # cannot be chipped with the platform's bands
        t15 = Affine(15, 0, origin[0], 0, -15, origin[1])
        pan = _band_data(len(LANDSAT_BANDS), "pan", 2 * rows, 2 * cols, seed, noise, masks, 2)
        pan[_expand(fill, 2)] = 0
        path = write_cog(outdir / "pan.tif", pan, t15, crs, nodata=0, blocksize=blocksize)
        assets["pan"] = _asset(path, (2 * rows, 2 * cols), t15, gsd=15)
        for i, name in enumerate(("lwir11", "lwir12"), start=len(LANDSAT_BANDS) + 1):
            data = _band_data(i, name, rows, cols, seed, noise, masks)
            data[fill] = 0
            path = write_cog(outdir / f"{name}.tif", data, t, crs, nodata=0, blocksize=blocksize)
            assets[name] = {"href": str(path.resolve()), "type": COG_MEDIA_TYPE, "roles": ["data"]}
    path = write_cog(outdir / "qa_pixel.tif", qa, t, crs, nodata=1, blocksize=blocksize)
    assets["qa_pixel"] = {
        "href": str(path.resolve()),
        "type": COG_MEDIA_TYPE,
        "roles": ["cloud", "cloud-shadow"],
    }
    properties = {"eo:cloud_cover": 22.3, "platform": "LANDSAT_9", "proj:shape": [rows, cols],
                  "proj:transform": list(t)[:6]}
    item = _item(item_id, collection, when, epsg, t, (rows, cols), assets, properties)
    return _write_item(item, outdir)


def naip_scene(
    outdir: str | Path,
    rows: int = 900,
    cols: int = 700,
    *,
    item_id: str = "m_4207009_ne_19_060_20211024",
    when: datetime = datetime(2021, 10, 24, 12, 33, 5, tzinfo=UTC),
    origin: tuple[float, float] = (341338.2, 4749053.4),
    epsg: int = 26919,
    blocksize: int = 512,
) -> Path:
    """A NAIP scene at 0.6 m: one 4-band uint8 ``image`` asset (red, green, blue, nir).

    Args:
        outdir: The folder the item's folder is written into.
        rows: Height in pixels.
        cols: Width in pixels.
        item_id: The item's id.
        when: The item's datetime.
        origin: Upper-left corner in the CRS.
        epsg: The CRS's EPSG code.
        blocksize: COG tile size in pixels.

    Returns:
        The item JSON's path, ``outdir/item_id/item_id.json``.
    """
    outdir = Path(outdir) / item_id
    t = Affine(0.6, 0, origin[0], 0, -0.6, origin[1])
    if _APPEARANCE.get() == "land":
        data = np.stack(
            [
                land_band(n, rows, cols, 3, np.uint8, 255 / 6000)
                for n in ("red", "green", "blue", "nir")
            ]
        )
    else:
        data = np.stack([(band_pattern(i, rows, cols) % 251).astype(np.uint8) for i in range(4)])
    path = write_cog(outdir / "image.tif", data, t, f"EPSG:{epsg}", blocksize=blocksize)
    assets = {"image": _asset(path, (rows, cols), t)}
    properties = {"naip:year": str(when.year), "naip:state": "ma", "gsd": 0.6}
    item = _item(item_id, "naip", when, epsg, t, (rows, cols), assets, properties)
    return _write_item(item, outdir)


# --- Sentinel-1 RTC and MODIS ----------------------------------------------------------

S1_NODATA = -32768.0
MODIS_FILL = -28672
MODIS_STATE_FILL = 65535
MODIS_PIXEL = (
    463.31271652791656  # 500 m grid of the sinusoidal tiles (4800 px / 2 per 1111950.5197665 m)
)
MODIS_TILE = 1111950.5197665
MODIS_ORIGIN = (-20015109.355798, 10007554.677899)  # upper left of tile h00v00
MODIS_SINUSOIDAL = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs +type=crs"


def s1_backscatter(band: int, rows: int, cols: int) -> np.ndarray:
    """gamma0-like float32 backscatter, exactly ``band_pattern / 20000`` (0.05 .. 0.45).

    Args:
        band: The band's number (0: vv, 1: vh).
        rows: Height in pixels.
        cols: Width in pixels.

    Returns:
        The band (rows, cols), float32.
    """
    return (band_pattern(band, rows, cols).astype(np.float32) / np.float32(20000.0)).astype(
        np.float32
    )


def s1_nodata_masks(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Where vv and vh carry no signal: both lose a swath-edge wedge on the left (-32768);
    vh also has a NaN block in its upper right quarter (a non-finite pixel is nodata too).

    Args:
        rows: Height in pixels.
        cols: Width in pixels.

    Returns:
        (edge, nan_block): boolean masks (rows, cols).
    """
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    edge = c < (cols // 5) - r // 6
    nan_block = (r < rows // 4) & (c >= cols - cols // 4)
    return edge, nan_block


def sentinel1_scene(
    outdir: str | Path,
    rows: int = 600,
    cols: int = 640,
    *,
    item_id: str = "S1A_IW_GRDH_1SDV_20240311T094350_20240311T094415_052930_06687D_rtc",
    when: datetime = datetime(2024, 3, 11, 9, 43, 50, tzinfo=UTC),
    origin: tuple[float, float] = (499980.0, 6400000.0),
    epsg: int = 32720,
    polarisations: tuple[str, ...] = ("vv", "vh"),
    collection: str = "sentinel-1-rtc",
    blocksize: int = 512,
) -> Path:
    """A Sentinel-1 RTC scene as Planetary Computer publishes it: float32 gamma0 ``vv`` and
    ``vh`` at 10 m in UTM, nodata -32768 where there is no signal (and NaN in vh, see
    ``s1_nodata_masks``), projection fields at item level, ``raster:bands`` nodata per asset.
    ``polarisations=("hh", "hv")`` writes a polar-mode scene.

    Args:
        outdir: The folder the item's folder is written into.
        rows: Height in pixels.
        cols: Width in pixels.
        item_id: The item's id.
        when: The item's datetime (and its start and end).
        origin: Upper-left corner in the CRS.
        epsg: The CRS's EPSG code.
        polarisations: The two assets' keys, co-polarised first.
        collection: The item's collection.
        blocksize: COG tile size in pixels.

    Returns:
        The item JSON's path, ``outdir/item_id/item_id.json``.
    """
    outdir = Path(outdir) / item_id
    t = Affine(10, 0, origin[0], 0, -10, origin[1])
    edge, nan_block = s1_nodata_masks(rows, cols)
    assets = {}
    for i, pol in enumerate(polarisations):
        data = s1_backscatter(i, rows, cols)
        data[edge] = S1_NODATA
        if i == 1:
            data[nan_block] = np.nan
        path = write_cog(
            outdir / f"{pol}.tif", data, t, f"EPSG:{epsg}", nodata=S1_NODATA, blocksize=blocksize
        )
        assets[pol] = {
            "href": str(path.resolve()),
            "type": COG_MEDIA_TYPE,
            "roles": ["data"],
            "title": f"{pol.upper()}: gamma0 backscatter",
            "raster:bands": [
                {"nodata": S1_NODATA, "data_type": "float32", "spatial_resolution": 10.0}
            ],
        }
    properties = {
        "platform": "SENTINEL-1A",
        "constellation": "Sentinel-1",
        "sar:instrument_mode": "IW",
        "sar:polarizations": [p.upper() for p in polarisations],
        "sar:product_type": "GRD",
        "sar:frequency_band": "C",
        "sat:orbit_state": "descending",
        "start_datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "end_datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "proj:shape": [rows, cols],
        "proj:transform": list(t)[:6],
    }
    item = _item(item_id, collection, when, epsg, t, (rows, cols), assets, properties)
    return _write_item(item, outdir)


def modis_tile_origin(h: int, v: int) -> tuple[float, float]:
    """Upper-left corner of sinusoidal tile (h, v) in metres.

    Args:
        h: The tile's horizontal number.
        v: The tile's vertical number.

    Returns:
        (x, y) in the MODIS sinusoidal CRS.
    """
    return MODIS_ORIGIN[0] + h * MODIS_TILE, MODIS_ORIGIN[1] - v * MODIS_TILE


def modis_state_layer(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """``sur_refl_state_500m``-like uint16 flags with real bit values: land (bits 3-5 = 001)
    and clear everywhere, then cloud blobs (cloud state 01 cloudy, rims 10 mixed), shadows
    (bit 2), internal-algorithm cloud (bit 10) in a band, 'not set, assumed clear' (11) and
    cirrus (bits 8-9, not counted as cloud) patches.

    Args:
        rows: Height in pixels.
        cols: Width in pixels.
        seed: Places the cloud blobs.

    Returns:
        The layer (rows, cols), uint16.
    """
    LAND = 1 << 3
    rng = np.random.default_rng(seed)
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    state = np.full((rows, cols), LAND, np.uint16)
    radius = max(rows, cols) / 10
    for _ in range(3):
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        d2 = (r - cy) ** 2 + (c - cx) ** 2
        state[(r - cy - radius) ** 2 + (c - cx - radius) ** 2 < radius**2] = LAND | (1 << 2)
        state[d2 < (1.2 * radius) ** 2] = LAND | 2
        state[d2 < radius**2] = LAND | 1
    state[(r[:, 0] // 40) % 7 == 3] |= np.uint16(1 << 10)
    state[: rows // 8, : cols // 8] = LAND | 3
    state[-(rows // 8):, : cols // 8] = LAND | (2 << 8)
    return state


def modis_fill_mask(rows: int, cols: int) -> np.ndarray:
    """Pixels without observation (fill): a strip along the bottom right.

    Args:
        rows: Height in pixels.
        cols: Width in pixels.

    Returns:
        A boolean mask (rows, cols).
    """
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    return (r > rows - rows // 6) & (c > cols // 3)


def modis_scene(outdir: str | Path, size: int = 520, *, h: int = 12, v: int = 4,
                item_id: str | None = None, start: datetime = datetime(2018, 3, 6, tzinfo=UTC),
                platform: str = "terra", seed: int = 0, blocksize: int = 512) -> Path:
    """A MODIS 09A1 (8-day, 500 m) scene as Planetary Computer publishes it: int16
    ``sur_refl_b01`` .. ``b07`` (fill -28672), uint16 ``sur_refl_state_500m`` (fill 65535),
    uint32 ``sur_refl_qc_500m`` (MODLAND bits 10 where cloudy), the upper-left ``size`` px of
    tile (h, v) in the sinusoidal CRS given as ``proj:wkt2`` only, ``datetime`` null with an
    8-day ``start_datetime``/``end_datetime``, ``modis:horizontal-tile``/``vertical-tile``.

    Args:
        outdir: The folder the item's folder is written into.
        size: Width and height in 500 m pixels.
        h: The tile's horizontal number.
        v: The tile's vertical number.
        item_id: The item's id (default: as the MODIS archive names them, from ``platform``,
            ``start`` and the tile).
        start: The composite's first day.
        platform: ``"terra"`` (MOD09A1) or ``"aqua"`` (MYD09A1).
        seed: Places the cloud blobs (``modis_state_layer``).
        blocksize: COG tile size in pixels.

    Returns:
        The item JSON's path, ``outdir/item_id/item_id.json``.
    """
    import pyproj

    from stacchip_core.core.grid import ChipGrid

    prefix = "MOD09A1" if platform == "terra" else "MYD09A1"
    item_id = item_id or f"{prefix}.A{start:%Y%j}.h{h:02d}v{v:02d}.061.synthetic"
    outdir = Path(outdir) / item_id
    x0, y0 = modis_tile_origin(h, v)
    t = Affine(MODIS_PIXEL, 0, x0, 0, -MODIS_PIXEL, y0)
    crs = pyproj.CRS(MODIS_SINUSOIDAL)
    wkt = crs.to_wkt()
    fill = modis_fill_mask(size, size)
    state = modis_state_layer(size, size, seed)
    state[fill] = MODIS_STATE_FILL
    cloudy = ((state & 3) == 1) & ~fill
    qc = np.where(cloudy, 2, 0).astype(np.uint32) | np.uint32(
        3 << 30
    )  # bits 30-31: corrections done
    qc[fill] = 3
    assets = {}
    layers = [
        (f"sur_refl_b{i + 1:02d}", band_pattern(i, size, size).astype(np.int16), MODIS_FILL)
        for i in range(7)
    ]
    for key, data, nodata in layers:
        data[fill] = nodata
        path = write_cog(outdir / f"{key}.tif", data, t, wkt, nodata=nodata, blocksize=blocksize)
        assets[key] = {"href": str(path.resolve()), "type": COG_MEDIA_TYPE, "roles": ["data"],
                       "raster:bands": [{"nodata": nodata, "data_type": "int16", "scale": 0.0001}]}
    qa_layers: list[tuple[str, np.ndarray, int | None]] = [(STATE_KEY, state, MODIS_STATE_FILL),
                                                          (QC_KEY, qc, None)]
    for key, layer, fill_value in qa_layers:
        path = write_cog(
            outdir / f"{key}.tif", layer, t, wkt, nodata=fill_value, blocksize=blocksize
        )
        assets[key] = {"href": str(path.resolve()), "type": COG_MEDIA_TYPE, "roles": ["data"]}
    grid = ChipGrid((size, size), t, crs, chip_size=size)
    polygons, bounds = grid.footprints()
    end = start.replace(hour=23, minute=59, second=59) + (
        datetime(2000, 1, 8) - datetime(2000, 1, 1)
    )
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "id": item_id,
        "collection": "modis-09A1-061",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[list(p) for p in polygons[0].exterior.coords]],
        },
        "bbox": [float(b) for b in bounds[0]],
        "properties": {
            "datetime": None,
            "start_datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": platform,
            "instruments": ["modis"],
            "modis:horizontal-tile": h,
            "modis:vertical-tile": v,
            "modis:tile-id": f"5{h:02d}0{v:02d}",
            "proj:wkt2": wkt,
            "proj:shape": [size, size],
            "proj:transform": list(t)[:6],
        },
        "links": [],
        "assets": assets,
    }
    return _write_item(item, outdir)


STATE_KEY = "sur_refl_state_500m"
QC_KEY = "sur_refl_qc_500m"
