"""Chips from layouts: the byte ranges of exactly the tiles a chip touches, fetched for all
assets (and all chips of a batch) concurrently, decoded off the event loop (libdeflate or ISA-L in
threads, or async-tiff in its Rust thread pool; all without the GIL), cropped and expanded by
the same function as the rasterio path (core.window.crop_expand). The read pipeline
(core.read) decides which assets come this way.

No item JSON and no header request: a synthetic one-IFD BigTIFF header made from the layout
lets async-tiff decode the tiles. Reads check what the layout recorded of the object
(``AssetLayout.expect()``, checked by ``objects.read_ranges``), so a changed or missing object
raises ``StaleLayout`` and the caller reads that asset through rasterio.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stacchip_core.core.layout import AssetLayout, HeaderInput
from stacchip_core.core.window import crop_expand, native_window, resolution_factor
from stacchip_core.errors import AssetError, ObjectError
from stacchip_core.io import objects
from stacchip_core.io.urls import redact

log = logging.getLogger(__name__)

_POOL = None


# The object behind a layout changed or is gone: read it through rasterio instead. Raised by
# the I/O layer's validated range reads (objects.read_ranges).
StaleLayout = objects.StaleObject


# layouts found stale in this process, by (href, etag, digest, size): later chips skip their request
_STALE: dict[tuple, StaleLayout] = {}


class Unsupported(Exception):
    """The layout path cannot read this asset for this grid (odd codec, offset grid...)."""


class Undecodable(Unsupported):
    """The tiles were fetched but the decoders refused them (not what the layout said)."""


def _pool():
    global _POOL
    if _POOL is None:
        from async_tiff import ThreadPool

        _POOL = ThreadPool(max(1, os.cpu_count() or 1))
    return _POOL


def _reset_pool() -> None:
    global _POOL, _INFLATERS
    _POOL = None
    _INFLATERS = None


_INFLATERS = None


def _inflaters():
    """Threads for libdeflate and ISA-L (both release the GIL)."""
    global _INFLATERS
    if _INFLATERS is None:
        from concurrent.futures import ThreadPoolExecutor

        _INFLATERS = ThreadPoolExecutor(
            max(1, os.cpu_count() or 1), thread_name_prefix="stacchip-inflate"
        )
    return _INFLATERS


# tile-local (first row, end row, first column, end column) of a tile that the windows of a
# batch cover
Region = tuple[int, int, int, int]


def _inflate_rows(buf, row_bytes: int, rows: int, height: int) -> bytes | bytearray:
    """The first ``rows`` rows of a deflate tile ``height`` rows high.

    A whole tile is inflated by libdeflate, which also checks its Adler-32 checksum and exact
    size. A tile whose chips end above its last row stops inflating there (ISA-L's streaming
    inflate, as fast as libdeflate per byte): a 256 px chip in the top half of a 512 px tile
    inflates half of it. Measured on the bench's Sentinel-2 tiles (512 px uint16): 1.54 ms for
    half a tile against 2.56 for all of it (libdeflate). The checksum covers the whole stream,
    so a part is checked for a valid zlib header, valid deflate blocks and its exact length,
    not for its checksum; the object itself is still checked on every response (its size) and
    on a failure (its header: ``objects.check_header``)."""
    if rows >= height:
        import deflate

        return deflate.zlib_decompress(buf, height * row_bytes)
    from isal import isal_zlib

    raw = isal_zlib.decompressobj().decompress(buf, rows * row_bytes)
    if len(raw) != rows * row_bytes:
        raise ValueError(f"tile inflated to {len(raw)} bytes, not {rows * row_bytes}")
    return raw


def _inflate_tile(buf, lay: AssetLayout, region: Region | None = None
                  ) -> tuple[np.ndarray, int, int]:
    """One deflate tile's ``region`` (default: all of it) as ``(array, first row, first
    column)``, the array ``(rows, columns, bands)``: inflated down to the region's last row
    (``_inflate_rows``), then the predictor undone in numpy.

    Predictor 2 (integers): each row holds differences from the pixel to its left, so a pixel
    is the wrapping sum of its row up to it. numpy's cumulative sum is the slow part (0.43 ms
    over 256 x 512 px, 3.3 ns a pixel), a plain wrapping sum is 20x faster a pixel: the region's
    columns are summed cumulatively, on top of one plain sum per row of the columns left of
    it. Of a 512 px tile, a 256 px chip sums 256 x 256 px whatever its place (0.2 ms).
    Predictor 3 (floats, TIFF Technical Note 3; Sentinel-1 RTC): whole rows, see
    ``_undo_float_predictor``."""
    dtype = np.dtype(lay.dtype).newbyteorder(
        "<"
    )  # layouts are recorded from little-endian TIFFs only
    th, tw, spp = lay.tile_height, lay.tile_width, lay.bands
    r0, r1, c0, c1 = region if region is not None else (0, th, 0, tw)
    row_bytes = tw * spp * dtype.itemsize
    raw = _inflate_rows(buf, row_bytes, r1, th)
    if lay.predictor == 3:  # rows are predicted apart: only the region's are undone
        part = np.frombuffer(raw, np.uint8)[r0 * row_bytes:]
        return _undo_float_predictor(part, r1 - r0, tw, spp, dtype), r0, 0
    rows = np.frombuffer(raw, dtype).reshape(r1, tw, spp)[r0:]
    if lay.predictor != 2:
        return rows[:, c0:c1], r0, c0
    arr = np.cumsum(rows[:, c0:c1], axis=1, dtype=dtype)
    if c0:  # wrapping, as the cumulative sum: both stay in the tile's dtype
        arr += np.add.reduce(rows[:, :c0], axis=1, dtype=dtype, keepdims=True)
    return arr, r0, c0


def _regions(lay: AssetLayout, plans: Sequence[ChipPlan]) -> dict[tuple[int, int], Region]:
    """Per tile, the tile-local rows and columns that the plans' windows cover (their union's
    bounding box)."""
    th, tw = lay.tile_height, lay.tile_width
    out: dict[tuple[int, int], Region] = {}
    for p in plans:
        _, _, r0, r1, c0, c1 = p.window
        for tx, ty in p.tiles:
            top, left = ty * th, tx * tw
            box = (max(r0, top) - top, min(r1, top + th) - top,
                   max(c0, left) - left, min(c1, left + tw) - left)
            have = out.get((tx, ty))
            out[(tx, ty)] = box if have is None else (
                min(have[0], box[0]), max(have[1], box[1]),
                min(have[2], box[2]), max(have[3], box[3]))
    return out


def _undo_float_predictor(
    raw: np.ndarray, th: int, tw: int, spp: int, dtype: np.dtype
) -> np.ndarray:
    """The floating-point predictor undone, vectorized. Each row of a tile holds its values'
    bytes as planes, most significant byte first (plane b: byte b of every value of the row,
    whatever the file's byte order), and each byte is stored as the difference from the byte
    ``spp`` places before it in the row. So: a wrapping uint8 cumulative sum along the row with
    stride ``spp``, then the planes put back together as little-endian values."""
    size = dtype.itemsize
    n = tw * spp  # values in a row
    row = np.cumsum(raw.reshape(th, n * size // spp, spp), axis=1, dtype=np.uint8).reshape(
        th, size, n
    )
    # planes MSB first -> each value's bytes least significant first
    values = np.ascontiguousarray(row[:, ::-1, :].transpose(0, 2, 1)).view(dtype)
    return values.reshape(th, tw, spp)


def _libdeflate_decodes(lay: AssetLayout) -> bool:
    """Deflate tiles the numpy predictors undo: integers (predictor 1, 2) and floats (1, 3),
    interleaved bands or one band. Floats matter in forked DataLoader workers: async-tiff,
    the other decoder, cannot run in a child forked after its parent used it."""
    if lay.compression not in (8, 32946) or not (lay.planar == 1 or lay.bands == 1):
        return False
    kind = np.dtype(lay.dtype).kind
    return (kind in "ui" and lay.predictor in (1, 2)) or (kind == "f" and lay.predictor in (1, 3))


os.register_at_fork(after_in_child=_reset_pool)


@dataclass(frozen=True)
class GridSpec:
    """The chip grid as the layout path needs it: resolution, origin, chip size."""

    a: float
    c: float
    e: float
    f: float
    chip_size: int

    @classmethod
    def from_grid(cls, grid) -> GridSpec:
        """The spec of a chip grid.

        Args:
            grid: A ``ChipGrid`` (or anything with its ``transform`` and ``chip_size``).

        Returns:
            Its resolution, origin and chip size.
        """
        t = grid.transform
        return cls(t.a, t.c, t.e, t.f, grid.chip_size)

    @classmethod
    def from_layouts(cls, layouts: dict[str, AssetLayout], chip_size: int) -> GridSpec:
        """The item's grid as the indexer recorded it; for older layouts, the grid of the
        finest asset (as ``ChipGrid.from_item`` takes it for items with projection metadata).

        Args:
            layouts: The item's layouts by asset key, as the index row stores them (with the
                recorded ``grid`` attribute when the indexer wrote one).
            chip_size: Chip size in grid pixels.

        Returns:
            The grid spec the layouts were recorded on.
        """
        grid = getattr(layouts, "grid", None)
        if grid:
            a, c, e, f = grid
            return cls(a, c, e, f, chip_size)
        finest = min(layouts.values(), key=lambda lay: abs(lay.transform[0]))
        a, c, e, f = finest.transform
        return cls(a, c, e, f, chip_size)


def factor_for(lay: AssetLayout, grid: GridSpec) -> int:
    """Grid pixels per asset pixel.

    Args:
        lay: The asset's layout.
        grid: The chip grid.

    Returns:
        The whole number of grid pixels an asset pixel spans along each axis.

    Raises:
        Unsupported: The asset is not on a whole, aligned multiple of the grid's lattice, or
            its compression or predictor is one the layout path does not decode.
    """
    k = resolution_factor(lay.transform, (grid.a, grid.c, grid.e, grid.f))
    if k is None:
        a, _, e, _ = lay.transform
        raise Unsupported(f"{lay.key}: off the grid's lattice (factor {abs(a) / abs(grid.a):g} x "
                          f"{abs(e) / abs(grid.e):g}, or another origin)")
    if not lay.supported:
        raise Unsupported(f"{lay.key}: compression {lay.compression}, predictor {lay.predictor}")
    return k


def _tiles(lay: AssetLayout, r0, r1, c0, c1) -> list[tuple[int, int]]:
    th, tw = lay.tile_height, lay.tile_width
    return [
        (tx, ty)
        for ty in range(r0 // th, (r1 - 1) // th + 1)
        for tx in range(c0 // tw, (c1 - 1) // tw + 1)
    ]


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def synth_header(lay: AssetLayout) -> bytes:
    """A minimal little-endian BigTIFF with one IFD describing the asset's full-resolution
    image, its tile offsets and byte counts pointing into the real object.

    Args:
        lay: The asset's layout.

    Returns:
        The header bytes (tags too long for their entry follow the IFD).
    """
    bits = np.dtype(lay.dtype).itemsize * 8
    fmt = {"u": 1, "i": 2, "f": 3}[np.dtype(lay.dtype).kind]
    spp = lay.bands
    tags = [
        (256, 4, [lay.width]),
        (257, 4, [lay.height]),
        (258, 3, [bits] * spp),
        (259, 3, [lay.compression]),
        (262, 3, [1]),
        (277, 3, [spp]),
        (284, 3, [lay.planar]),
        (317, 3, [lay.predictor]),
        (322, 4, [lay.tile_width]),
        (323, 4, [lay.tile_height]),
        (324, 16, [int(v) for v in lay.offsets]),
        (325, 16, [int(v) for v in lay.counts]),
        (339, 3, [fmt] * spp),
    ]
    ifd_size = 8 + 20 * len(tags) + 8
    extra = bytearray()
    entries = bytearray()
    base = 16 + ifd_size
    for tag, typ, values in tags:
        code, _size = _TIFF_TYPES[typ]
        data = struct.pack(f"<{len(values)}{code}", *values)
        if len(data) <= 8:
            value = data.ljust(8, b"\0")
        else:
            value = struct.pack("<Q", base + len(extra))
            extra += data
            if len(extra) % 2:
                extra += b"\0"
        entries += struct.pack("<HHQ", tag, typ, len(values)) + value
    return (
        b"II"
        + struct.pack("<HHHQ", 43, 8, 0, 16)
        + struct.pack("<Q", len(tags))
        + bytes(entries)
        + struct.pack("<Q", 0)
        + bytes(extra)
    )


@dataclass
class ChipPlan:
    """One window of one asset: the grid pixels ``height`` x ``width`` from ``(row0, col0)``
    at ``factor`` grid pixels per asset pixel, the asset pixels ``r0:r1, c0:c1`` they touch
    (``window = (row0, col0, r0, r1, c0, c1)``), and the tiles those lie in."""

    lay: AssetLayout
    factor: int
    window: tuple
    tiles: list[tuple[int, int]]
    height: int = 0
    width: int = 0


def plan_window(
    lay: AssetLayout, row0: int, col0: int, height: int, width: int, factor: int = 1
) -> ChipPlan:
    """The plan of any window: grid pixels ``height`` x ``width`` from ``(row0, col0)`` at
    ``factor`` (factor 1 and asset pixel offsets: a window in the asset's own pixels, e.g. a
    stack member reprojected by the caller).

    Args:
        lay: The asset's layout.
        row0: First grid row of the window.
        col0: First grid column of the window.
        height: Window height in grid pixels.
        width: Window width in grid pixels.
        factor: Grid pixels per asset pixel.

    Returns:
        The window's plan: its asset pixels and the tiles they lie in.

    Raises:
        Unsupported: The window reaches beyond the image.
    """
    r0, r1, c0, c1 = native_window(row0, col0, height, width, factor)
    if r0 < 0 or c0 < 0 or r1 > lay.height or c1 > lay.width:
        raise Unsupported(f"{lay.key}: window beyond the image")
    return ChipPlan(
        lay, factor, (row0, col0, r0, r1, c0, c1), _tiles(lay, r0, r1, c0, c1), height, width
    )


def plan(lay: AssetLayout, grid: GridSpec, x: int, y: int) -> ChipPlan:
    """The plan of chip (x, y) of ``grid`` in asset ``lay``.

    Args:
        lay: The asset's layout.
        grid: The chip grid.
        x: Chip column.
        y: Chip row.

    Returns:
        The chip's plan in this asset.

    Raises:
        Unsupported: The asset is off the grid's lattice, in a codec the layout path does
            not decode, or the chip reaches beyond its image.
    """
    factor = factor_for(lay, grid)
    cs = grid.chip_size
    try:
        return plan_window(lay, y * cs, x * cs, cs, cs, factor)
    except Unsupported:
        raise Unsupported(f"{lay.key}: chip ({x}, {y}) beyond the image") from None


@dataclass
class TileCost:
    """What the layout path spent: byte ranges asked for and their bytes, distinct tiles
    decoded, and CPU seconds of decoding (libdeflate: thread CPU time; async-tiff: wall)."""

    ranges: int = 0
    bytes: int = 0
    tiles: int = 0
    decode_seconds: float = 0.0


def _tile_range(lay: AssetLayout, tx: int, ty: int) -> tuple[int, int]:
    """Tile (tx, ty)'s bytes ``[start, end)`` in the object (empty for a sparse tile)."""
    i = ty * lay.tiles_across + tx
    s = int(lay.offsets[i])
    return s, s + int(lay.counts[i])


def _ranges(p: ChipPlan) -> list[tuple[int, int]]:
    return [r for r in (_tile_range(p.lay, tx, ty) for tx, ty in p.tiles) if r[1] > r[0]]


async def _asset_chips(lay: AssetLayout, plans: list[ChipPlan], cost: TileCost) -> list[np.ndarray]:
    """All windows of one asset in a batch: one fetch (coalesced), one decode per distinct tile.

    libdeflate's tiles are inflated and the windows assembled in the inflater threads, one job
    per asset (or per share of its tiles, when it has many): a job per tile cost a thread
    hand-off and a wake-up of the I/O loop per tile, and the assembly ran on the loop."""
    libdeflate = _libdeflate_decodes(lay)
    if not libdeflate and not objects.async_tiff_usable():
        objects.use_async_tiff()  # raises NoTransport before any byte is fetched for nothing
    ranges = sorted({r for p in plans for r in _ranges(p)})
    data = await objects.read_ranges(lay.href, ranges, lay.expect()) if ranges else {}
    cost.ranges += len(ranges)
    cost.bytes += sum(e - s for s, e in ranges)
    tpr = lay.tiles_across
    wanted = sorted({t for p in plans for t in p.tiles if lay.counts[t[1] * tpr + t[0]]})
    cost.tiles += len(wanted)
    loop = asyncio.get_running_loop()
    if wanted and libdeflate:
        n = min(_SHARES, max(1, len(wanted) // _TILES_PER_SHARE))
        pieces = [[(xy, data[_tile_range(lay, *xy)]) for xy in wanted[k::n]] for k in range(n)]
        try:
            if len(pieces) == 1:  # inflate and assemble in one job
                out, seconds = await loop.run_in_executor(
                    _inflaters(), _inflate_assemble, lay, pieces[0], plans
                )
                cost.decode_seconds += seconds
                return out
            regions = _regions(lay, plans)
            shares = await asyncio.gather(*(
                loop.run_in_executor(_inflaters(), _inflate_many, lay, piece, regions)
                for piece in pieces
            ))
        except Exception as exc:  # noqa: BLE001 - not what the layout promised (a corrupt tile...): async-tiff's turn
            log.debug("libdeflate could not decode %s: %s", redact(lay.href), exc)
            # a changed object: its header says so (StaleObject: the caller falls back)
            await objects.check_header(lay.href, lay.expect())
        else:
            decoded: dict[tuple[int, int], tuple[np.ndarray, int, int]] = {}
            for share, seconds in shares:
                decoded.update(share)
                cost.decode_seconds += seconds
            return await loop.run_in_executor(_inflaters(), _assemble, lay, plans, decoded)
    decoded = {}
    if wanted:
        from async_tiff import TIFF  # here: libdeflate's assets (most) never need it

        t0 = time.perf_counter()
        header = synth_header(lay)
        # signed off the loop (a hook may ask a token endpoint); the tiles are prefetched, so
        # the URL is read only if async-tiff asks for bytes the layout did not name
        url = await objects.sign(lay.href)
        tiff = await TIFF.open("x", store=HeaderInput(url, header, data), prefetch=len(header))
        try:
            tiles = await tiff.fetch_tiles(wanted, 0)
            pixels = await asyncio.gather(*(t.decode(pool=_pool()) for t in tiles))
        except Exception:
            await objects.check_header(lay.href, lay.expect())  # changed: StaleObject instead
            raise
        th, tw = lay.tile_height, lay.tile_width
        for xy, tile_pixels in zip(wanted, pixels):
            decoded[xy] = (np.asarray(tile_pixels).reshape(th, tw, lay.bands), 0, 0)
        cost.decode_seconds += time.perf_counter() - t0
    return _assemble(lay, plans, decoded)


_SHARES = max(1, os.cpu_count() or 1)  # an asset's tiles are split over the inflater threads...
_TILES_PER_SHARE = 4  # ...when it has at least this many per thread


def _inflate_many(lay: AssetLayout, pieces: list, regions: dict) -> tuple[dict, float]:
    """Tiles ``[(xy, bytes)]`` inflated (their ``regions``), and the thread CPU seconds it
    took."""
    t0 = time.thread_time()
    decoded = {xy: _inflate_tile(buf, lay, regions.get(xy)) for xy, buf in pieces}
    return decoded, time.thread_time() - t0


def _inflate_assemble(lay: AssetLayout, pieces: list, plans: list[ChipPlan]):
    decoded, seconds = _inflate_many(lay, pieces, _regions(lay, plans))
    return _assemble(lay, plans, decoded), seconds


def _assemble(lay: AssetLayout, plans: list[ChipPlan], decoded: dict) -> list[np.ndarray]:
    """Each plan's window ``(bands, height, width)`` from the decoded tiles: only the asset
    pixels the window covers are copied (a 256 px chip in a 512 px tile: a quarter of it),
    then expanded to grid pixels (at factor 1: the window itself, no second copy). A tile the
    file leaves out (sparse: offset and byte count 0) reads as nodata, or 0, as GDAL's do."""
    fill = lay.nodata if lay.nodata is not None and not np.isnan(lay.nodata) else (
        np.nan if lay.nodata is not None else 0)
    th, tw, nb = lay.tile_height, lay.tile_width, lay.bands
    out = []
    for p in plans:
        row0, col0, r0, r1, c0, c1 = p.window
        block = np.empty((nb, r1 - r0, c1 - c0), lay.dtype)
        for tx, ty in p.tiles:
            top, left = ty * th, tx * tw
            a0, a1 = max(r0, top), min(r1, top + th)
            b0, b1 = max(c0, left), min(c1, left + tw)
            view = block[:, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
            tile = decoded.get((tx, ty))
            if tile is None:
                view[...] = fill
            else:  # (rows from first..., columns from col..., bands): see _inflate_tile
                arr, first, col = tile
                part = arr[a0 - top - first : a1 - top - first,
                           b0 - left - col : b1 - left - col]
                view[...] = np.moveaxis(part, 2, 0)
        out.append(crop_expand(block, r0, c0, row0, col0, p.height, p.width, p.factor))
    return out


async def read_plans_async(plans: Sequence[ChipPlan], cost: TileCost | None = None) -> list:
    """The pixels of each plan, ``(bands, height, width)`` in the asset's dtype, or the
    exception that sends it to the rasterio path (``StaleLayout``); plans of the same object
    share one coalesced fetch and one decode per tile. An object found stale once in this
    process is not asked again.

    Args:
        plans: The windows to read, of any assets.
        cost: Counters to add this read's ranges, bytes, tiles and decode time to.

    Returns:
        Per plan, in order: the array, or the ``StaleLayout`` or ``Undecodable`` exception
        whose plans the caller reads through rasterio.

    Raises:
        AssetError: An object could not be read (access denied, network...); a changed
            or missing object is a ``StaleLayout`` result instead.
    """
    cost = cost if cost is not None else TileCost()
    results: list = [None] * len(plans)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(plans):
        groups.setdefault(
            (p.lay.href, p.lay.etag, getattr(p.lay, "digest", None), p.lay.size), []
        ).append(i)

    async def group(gk, members):
        lay = plans[members[0]].lay
        try:
            known = _STALE.get(gk)
            if known is not None:  # found stale before: no request, straight to the fallback
                raise known
            arrays = await _asset_chips(lay, [plans[i] for i in members], cost)
        except StaleLayout as exc:
            _STALE[gk] = exc
            if len(_STALE) > 10_000:  # bounded over a long epoch
                _STALE.pop(next(iter(_STALE)))
            for i in members:
                results[i] = exc
            return
        except ObjectError as exc:
            raise AssetError(f"asset {lay.key!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - tiles the decoders refuse: this asset goes to rasterio
            log.debug("cannot decode tiles of %s: %s", redact(lay.href), exc)
            for i in members:
                results[i] = Undecodable(f"{lay.key}: {exc}")
            return
        for i, arr in zip(members, arrays):
            results[i] = arr

    await asyncio.gather(*(group(gk, members) for gk, members in groups.items()))
    return results


def read_plans(plans: Sequence[ChipPlan], cost: TileCost | None = None) -> list:
    """``read_plans_async`` from sync code, on the I/O layer's event loop.

    Args:
        plans: The windows to read, of any assets.
        cost: Counters to add this read's ranges, bytes, tiles and decode time to.

    Returns:
        Per plan, in order: the array, or the exception that sends it to rasterio.

    Raises:
        AssetError: An object could not be read (access denied, network...); a changed
            or missing object is a ``StaleLayout`` result instead.
    """
    return objects.run(read_plans_async(plans, cost))


async def read_batch_async(layouts: Sequence[dict[str, AssetLayout]], keys: Sequence[Sequence[str]],
                           grids: Sequence[GridSpec], xys: Sequence[tuple[int, int]]) -> list[dict]:
    """Chips ``xys[i]`` of assets ``keys[i]`` described by ``layouts[i]`` on ``grids[i]``.

    Chips of the same object share one coalesced fetch and one decode per tile.

    Args:
        layouts: Per chip, the layouts of its item by asset key.
        keys: Per chip, the asset keys to read.
        grids: Per chip, its item's grid.
        xys: Per chip, its (x, y) on that grid.

    Returns:
        Per chip ``{key: array (bands, cs, cs)}``, or ``{key: exception}`` entries for
        assets the caller must read through rasterio (``StaleLayout``, ``Unsupported``).

    Raises:
        AssetError: An object could not be read (access denied, network...); a changed
            or missing object is a ``StaleLayout`` result instead.
    """
    results: list[dict] = [{} for _ in xys]
    plans: list[ChipPlan] = []
    where: list[tuple[int, str]] = []
    for i, (lay_map, ks, grid, (x, y)) in enumerate(zip(layouts, keys, grids, xys)):
        for k in ks:
            lay = lay_map.get(k)
            if lay is None:
                results[i][k] = Unsupported(f"{k}: no layout")
                continue
            try:
                plans.append(plan(lay, grid, x, y))
            except Unsupported as exc:
                results[i][k] = exc
                continue
            where.append((i, k))
    for (i, k), arr in zip(where, await read_plans_async(plans)):
        results[i][k] = arr
    return results


def read_batch(layouts, keys, grids, xys) -> list[dict]:
    """``read_batch_async`` from sync code, on the I/O layer's event loop.

    Args:
        layouts: Per chip, the layouts of its item by asset key.
        keys: Per chip, the asset keys to read.
        grids: Per chip, its item's grid.
        xys: Per chip, its (x, y) on that grid.

    Returns:
        Per chip ``{key: array}``, or ``{key: exception}`` for assets to read through
        rasterio.

    Raises:
        AssetError: An object could not be read (access denied, network...); a changed
            or missing object is a ``StaleLayout`` result instead.
    """
    return objects.run(read_batch_async(layouts, keys, grids, xys))
