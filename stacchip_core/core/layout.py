"""COG layouts: what a reader needs to fetch any chip of an asset without opening the file.

Recorded at index time with one small ranged read per asset (the header; it also returns the
object's size), stored in the index's ``layouts`` column (one value per item, the
same on each of its rows, so Parquet's dictionary encoding stores it once per row group).

Encoding of one item's layouts: ``b"SCL1"`` + zlib(u32 JSON length + JSON ``{"grid": [a, c,
e, f], "shape": [rows, cols], "crs": "EPSG:32633", "bands": {name: [key, index]}, "hrefs":
{key: href}, "assets": [per-asset scalars]}`` + each asset's tile offsets (u64 LE) then byte
counts (u32 LE)). JSON keeps the scalars readable and versionable; the tile tables are the
bulk and stay binary. ``grid``, ``shape`` and ``crs`` are the item's chip grid as the indexer
saw it and ``bands`` where each band lies, so readers need neither derive them nor fetch the
item JSON (``shape``, ``crs``, ``bands`` and ``hrefs`` are absent in older layouts). Hrefs
are stored unsigned: they are signed (``stacchip_sign_href``) right before each read, since
signatures expire.

A layout is validated by content, never by a store's ETag (local ETags come from inodes and
mtimes, S3's from MD5s: the same file has another on every copy): ``size`` and ``digest``, a
BLAKE2b digest of the object's first ``head`` bytes, the TIFF metadata up to the first tile
(IFDs, tile offsets and byte counts, georeferencing). If those bytes are unchanged, so is the
layout, wherever the object was copied. Layouts written before digests carry an ``etag`` and
are checked by it, as they were.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from stacchip_core.errors import IndexFormatError, StacchipError
from stacchip_core.io import objects
from stacchip_core.io.urls import redact

log = logging.getLogger(__name__)

MAGIC = b"SCL1"
HEADER_PREFETCH = 65536  # S2/Landsat COG headers (all IFDs) fit in 16-40 KiB

# TIFF sample formats (1 uint, 2 int, 3 float) and bits -> numpy dtype
_DTYPES = {
    (1, 8): "uint8",
    (1, 16): "uint16",
    (1, 32): "uint32",
    (2, 8): "int8",
    (2, 16): "int16",
    (2, 32): "int32",
    (3, 32): "float32",
    (3, 64): "float64",
    (1, 64): "uint64",
    (2, 64): "int64",
}
# codecs the layout path decodes (async-tiff); anything else is read through rasterio
DEFLATE = (8, 32946)  # Adobe and old-style deflate: zlib streams with an Adler-32 checksum
SUPPORTED_COMPRESSION = {1, 5, 8, 32946, 50000}


@dataclass
class AssetLayout:
    """Where every tile of one asset's full-resolution image lies in its object, and what a
    reader needs to decode and place them.

    ``transform`` is ``(a, c, e, f)``: pixel width, x origin, pixel height, y origin.
    ``offsets`` and ``counts`` hold each tile's byte offset and length, row by row (a count
    of 0: a sparse tile). ``size`` and ``digest`` (of the object's first ``head`` bytes)
    validate the object by content; layouts written before digests carry an ``etag``.
    """

    key: str
    href: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    dtype: str
    bands: int
    planar: int
    compression: int
    predictor: int
    nodata: float | None
    size: int
    transform: tuple[
        float, float, float, float
    ]  # (a, c, e, f): pixel width, x origin, pixel height, y origin
    offsets: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    etag: str | None = None  # layouts written before digests only: the object's ETag then
    digest: str | None = None  # objects.digest of the object's first `head` bytes
    head: int = 0

    @property
    def tiles_across(self) -> int:
        """Tiles per row of the image."""
        return -(-self.width // self.tile_width)

    @property
    def supported(self) -> bool:
        """Whether the layout path decodes this asset: a supported codec and predictor, and
        interleaved bands (or one band).
        """
        return (self.compression in SUPPORTED_COMPRESSION and self.predictor in (1, 2, 3)
                and (self.planar == 1 or self.bands == 1))

    def expect(self) -> objects.Expect:
        """What every validated read of this asset checks (objects.read_ranges).

        Returns:
            The size, ETag, header digest and header length to check.
        """
        # deflate tiles verify themselves (Adler-32 and exact size; a part: its exact length, see
        # core.tiles._inflate_rows): the header is checked only when one fails to inflate
        # (core.tiles), not once per asset and process up front
        return objects.Expect(self.size, self.etag, self.digest, self.head,
                              deferred=self.compression in DEFLATE)

    def scalars(self) -> dict:
        """The layout's fields but the tile arrays, as ``encode`` stores them.

        Returns:
            The fields by name.
        """
        out = {
            k: getattr(self, k)
            for k in (
                "key",
                "href",
                "width",
                "height",
                "tile_width",
                "tile_height",
                "dtype",
                "bands",
                "planar",
                "compression",
                "predictor",
                "nodata",
                "size",
                "transform",
            )
        }
        # the ETag only where an old layout has one (it differs between copies of one file)
        out |= {"etag": self.etag} if self.etag else {"digest": self.digest, "head": self.head}
        return out | {"tiles": len(self.offsets)}


class ItemLayouts(dict):
    """``{asset key: AssetLayout}`` of one item, with what a read needs besides the tiles.

    ``grid``: the item's chip grid as ``(a, c, e, f)`` (pixel width, x origin, pixel height,
    y origin); ``shape``: the grid's (rows, cols); ``crs``: the grid's CRS as an authority
    code (``EPSG:32633``) or WKT2; ``bands``: ``{band name: (asset key, 1-based band index)}``
    of the platform's bands and layers the item has; ``hrefs``: unsigned hrefs of read assets
    that have no layout (read through rasterio). Each is None (``bands``/``hrefs``: empty)
    in layouts written before it was recorded: readers then take it from the item JSON.
    """

    grid: tuple[float, float, float, float] | None = None
    shape: tuple[int, int] | None = None
    crs: str | None = None
    bands: dict[str, tuple[str, int]] = {}  # noqa: RUF012 - replaced per instance, never mutated
    hrefs: dict[str, str] = {}  # noqa: RUF012 - replaced per instance, never mutated

    @property
    def standalone(self) -> bool:
        """True when a chip can be read from these layouts alone (grid, shape and CRS known)."""
        return self.grid is not None and self.shape is not None and self.crs is not None


def encode(
    layouts: Iterable[AssetLayout],
    grid: tuple[float, float, float, float] | None = None,
    *,
    shape: tuple[int, int] | None = None,
    crs: str | None = None,
    bands: dict[str, tuple[str, int]] | None = None,
    hrefs: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one item's layouts and read metadata (see ``ItemLayouts``).

    Args:
        layouts: The assets' layouts.
        grid: The item's chip grid transform ``(a, c, e, f)``.
        shape: The grid's ``(rows, cols)``.
        crs: The grid's CRS (authority code or WKT2).
        bands: ``(asset key, 1-based band index)`` per canonical band name.
        hrefs: Unsigned hrefs of assets stored without a layout.

    Returns:
        The encoded, zlib-compressed layouts.
    """
    layouts = list(layouts)
    doc: dict = {"grid": list(grid) if grid else None, "assets": [lay.scalars() for lay in layouts]}
    if shape is not None:
        doc["shape"] = [int(shape[0]), int(shape[1])]
    if crs is not None:
        doc["crs"] = crs
    if bands:
        doc["bands"] = {name: [key, int(index)] for name, (key, index) in bands.items()}
    if hrefs:
        doc["hrefs"] = dict(hrefs)
    meta = json.dumps(doc, separators=(",", ":")).encode()
    parts = [struct.pack("<I", len(meta)), meta]
    for lay in layouts:
        parts.append(np.asarray(lay.offsets, "<u8").tobytes())
        parts.append(np.asarray(lay.counts, "<u4").tobytes())
    return MAGIC + zlib.compress(b"".join(parts), 6)


def decode(blob: bytes) -> ItemLayouts:
    """``{asset key: AssetLayout}`` (with ``.grid``, ``.shape``, ``.crs``, ``.bands``,
    ``.hrefs``) from ``encode``'s bytes.

    Args:
        blob: ``encode``'s bytes.

    Returns:
        The item's layouts and read metadata.

    Raises:
        IndexFormatError: If the bytes are not a stacchip layout.
    """
    if not blob or blob[:4] != MAGIC:
        raise IndexFormatError("not a stacchip layout (unknown encoding)")
    raw = zlib.decompress(blob[4:])
    (n,) = struct.unpack_from("<I", raw)
    doc = json.loads(raw[4:4 + n])
    out = ItemLayouts()
    if isinstance(doc, list):  # written before the grid was stored
        metas = doc
    else:
        metas = doc["assets"]
        out.grid = tuple(doc["grid"]) if doc.get("grid") else None
        out.shape = tuple(doc["shape"]) if doc.get("shape") else None
        out.crs = doc.get("crs")
        out.bands = {
            name: (key, int(index)) for name, (key, index) in (doc.get("bands") or {}).items()
        }
        out.hrefs = dict(doc.get("hrefs") or {})
    pos = 4 + n
    for m in metas:
        t = m.pop("tiles")
        offsets = np.frombuffer(raw, "<u8", t, pos).astype(np.int64)
        pos += 8 * t
        counts = np.frombuffer(raw, "<u4", t, pos).astype(np.int64)
        pos += 4 * t
        m["transform"] = tuple(m["transform"])
        out[m["key"]] = AssetLayout(**m, offsets=offsets, counts=counts)
    return out


class _Decoded:
    """A small LRU of decoded layout blobs: an epoch touches each item's blob many times."""

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self._d: OrderedDict[bytes, ItemLayouts] = OrderedDict()

    def get(self, blob: bytes) -> ItemLayouts:
        hit = self._d.get(blob)
        if hit is None:
            hit = self._d[blob] = decode(blob)
            if len(self._d) > self.maxsize:
                self._d.popitem(last=False)
        else:
            self._d.move_to_end(blob)
        return hit


decoded = _Decoded()


class HeaderInput:
    """An obspec input for async-tiff: bytes it already has (a header, prefetched tiles) are
    served from memory; anything else is read from the object through the I/O layer.

    Args:
        url: The object's URL (signed, if it needs it).
        header: The bytes from the object's start that are held.
        tiles: Prefetched byte ranges, ``{(start, end): bytes}``.

    Raises:
        NoTransport: async-tiff cannot run in this process (a child forked after its
            parent used it).
    """

    def __init__(self, url: str, header: bytes, tiles: dict | None = None) -> None:
        objects.use_async_tiff()  # NoTransport in a child forked after its parent used async-tiff
        self.url, self.header = url, header
        self.tiles = tiles if tiles is not None else {}
        self.read_to = len(
            header
        )  # the end of the furthest byte read: what a layout's digest covers

    async def get_range_async(self, path, *, start, end=None, length=None):
        """Bytes ``[start, end)`` of the object (obspec's ``get_range_async``).

        Args:
            path: The path async-tiff asks for (ignored: this input serves one object).
            start: First byte.
            end: Byte after the last (or give ``length``).
            length: Bytes to read from ``start``.

        Returns:
            The bytes: from the header or the prefetched tiles when held, else read.
        """
        end = start + length if end is None else end
        if end <= len(self.header):
            return self.header[start:end]
        hit = self.tiles.get((start, end))
        if hit is not None:
            return hit
        self.read_to = max(self.read_to, end)
        return (await objects.get_ranges_async(self.url, [start], [end]))[0]

    async def get_ranges_async(self, path, *, starts, ends=None, lengths=None):
        """Several byte ranges of the object (obspec's ``get_ranges_async``).

        Args:
            path: The path async-tiff asks for (ignored).
            starts: First bytes.
            ends: Bytes after the last (or give ``lengths``).
            lengths: Bytes to read from each start.

        Returns:
            The bytes of each range, in order.
        """
        ends = [s + n for s, n in zip(starts, lengths)] if ends is None else ends
        return [await self.get_range_async(path, start=s, end=e) for s, e in zip(starts, ends)]


_NO_LAYOUT_WARNED: set[str] = set()


def _first_tile(tiff) -> int | None:
    """Where the first tile (or strip) of any image of the file starts: in a COG everything
    before it is metadata."""
    starts = [
        int(np.min(offsets[offsets > 0]))
        for ifd in tiff.ifds
        for offsets in [
            np.asarray(
                ifd.tile_offsets if ifd.tile_offsets is not None else (ifd.strip_offsets or ()),
                np.int64,
            )
        ]
        if (offsets > 0).any()
    ]
    return min(starts) if starts else None


async def read_layout(key: str, href: str) -> AssetLayout | None:
    """The layout of one asset from one ranged read (more only if its header is larger);
    None (and a log line) when it is not a tiled TIFF that the layout path can read, or
    cannot be read (a warning; one per distinct cause, so a token endpoint that is down
    says so once, not once per asset).

    Args:
        key: The asset's key.
        href: The asset's unsigned href.

    Returns:
        The asset's layout, or None.
    """
    from async_tiff import TIFF

    try:
        signed = await objects.sign(
            href
        )  # at read time, off the loop; the layout keeps ``href`` unsigned
        header, meta = await objects.get_head_async(signed, HEADER_PREFETCH)
        store = HeaderInput(signed, header)
    except objects.NoTransport as exc:  # forked after the parent used obstore or async-tiff
        log.info("no layout for asset %r: %s", key, exc)
        return None
    except StacchipError as exc:  # best effort: chips of this asset then open the file
        if str(exc) not in _NO_LAYOUT_WARNED:
            if len(_NO_LAYOUT_WARNED) > 10_000:  # bounded over a long run
                _NO_LAYOUT_WARNED.clear()
            _NO_LAYOUT_WARNED.add(str(exc))
            log.warning("no layout for asset %r: %s", key, exc)
        else:
            log.debug("no layout for asset %r: %s", key, exc)
        return None
    if header[:2] != b"II":  # chips are decoded as little-endian (the synthetic header says so)
        log.info("no layout for %s: not a little-endian TIFF", redact(href))
        return None
    try:
        tiff = await TIFF.open("x", store=store, prefetch=len(header))
    except Exception as exc:  # noqa: BLE001 - not a TIFF (a JP2, a PNG...): rasterio reads it
        log.info("no layout for %s: %s", redact(href), exc)
        return None
    ifd = tiff.ifds[0]
    if ifd.tile_offsets is None or ifd.tile_width is None or ifd.tile_height is None:
        log.info("no layout for %s: not tiled", redact(href))
        return None
    fmt = int(ifd.sample_format[0]) if ifd.sample_format else 1
    dtype = _DTYPES.get((fmt, int(ifd.bits_per_sample[0])))
    scale, tie = ifd.model_pixel_scale, ifd.model_tiepoint
    if dtype is None or not scale or not tie:
        log.info("no layout for %s: unsupported sample type or no georeferencing", redact(href))
        return None
    # the digest covers the metadata: all bytes before the first tile, or all that was read
    # when the metadata did not fit in the prefetch (then read once more, in one request)
    first = _first_tile(tiff)
    head = min(len(header), first) if first and store.read_to <= len(header) else store.read_to
    if head > len(header):
        try:
            header, _ = await objects.get_head_async(signed, head)
        except StacchipError as exc:
            log.warning("no layout for asset %r: %s", key, exc)
            return None
    a, e = float(scale[0]), -float(scale[1])
    c, f = float(tie[3]) - tie[0] * a, float(tie[4]) - tie[1] * e
    nodata = ifd.gdal_nodata
    layout = AssetLayout(
        key=key,
        href=href,
        width=int(ifd.image_width),
        height=int(ifd.image_height),
        tile_width=int(ifd.tile_width),
        tile_height=int(ifd.tile_height),
        dtype=dtype,
        bands=int(ifd.samples_per_pixel),
        planar=int(ifd.planar_configuration),
        compression=int(ifd.compression),
        predictor=int(ifd.predictor or 1),
        nodata=float(nodata) if nodata not in (None, "") else None,
        size=meta.size,
        transform=(a, c, e, f),
        offsets=np.asarray(ifd.tile_offsets, np.int64),
        counts=np.asarray(ifd.tile_byte_counts, np.int64),
        digest=objects.digest(header[:head]),
        head=head,
    )
    objects.note_checked(href, layout.expect(), meta.etag)  # this process need not check it again
    return layout


_FORK_NOTED: int | None = None


async def _read_all(hrefs: dict[str, str]) -> list[AssetLayout | None]:
    return await asyncio.gather(*(read_layout(k, h) for k, h in hrefs.items()))


def record_layouts(hrefs: dict[str, str], grid: tuple[float, float, float, float] | None = None, *,
                   shape: tuple[int, int] | None = None, crs: str | None = None,
                   bands: dict[str, tuple[str, int]] | None = None,
                   other_hrefs: dict[str, str] | None = None) -> bytes | None:
    """The encoded layouts of ``{asset key: unsigned href}``, read concurrently, with the
    item's chip ``grid`` ``(a, c, e, f)`` and, when given, the grid's ``shape`` and ``crs``
    and the platform's ``bands`` (what a read needs without the item JSON; the hrefs of
    assets without a layout are kept too, and ``other_hrefs``: assets stored by href only,
    such as quality layers); None if no asset has a layout.

    Args:
        hrefs: Unsigned href per asset key.
        grid: The item's chip grid transform ``(a, c, e, f)``.
        shape: The grid's ``(rows, cols)``.
        crs: The grid's CRS (authority code or WKT2).
        bands: ``(asset key, 1-based band index)`` per canonical band name.
        other_hrefs: Unsigned hrefs of assets stored by href only.

    Returns:
        The encoded layouts, or None.
    """
    if not hrefs:
        return None
    if not objects.async_tiff_usable():  # it parses the headers; it would hang here
        global _FORK_NOTED
        if _FORK_NOTED != os.getpid():
            _FORK_NOTED = os.getpid()
            log.warning(
                "process %d was forked after its parent parsed COG headers with async-tiff, which "
                "cannot run here: its indexes get no layouts (start it with 'spawn' or "
                "'forkserver')",
                os.getpid(),
            )
        return None
    found = [lay for lay in objects.run(_read_all(hrefs)) if lay is not None]
    if not found:
        return None
    with_layout = {lay.key for lay in found}
    return encode(
        found,
        grid,
        shape=shape,
        crs=crs,
        bands=bands,
        hrefs={k: h for k, h in {**hrefs, **(other_hrefs or {})}.items() if k not in with_layout},
    )
