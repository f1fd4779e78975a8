"""Preview grids that show what the index measures: each chip in true colour, its cloud mask
outlined in magenta, its cloud and nodata fractions printed under it.

The masks are the demo sources' quality layers read for the chip's window and reduced as their
plugins reduce them (Sentinel-2 SCL classes 1, 3, 8, 9, 10; Landsat QA_PIXEL bits 1, 3, 4).
Tiles are pasted pixel for pixel (no resampling), so a test can find a mask's outline exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stacchip_core.core.chip import Chip
from stacchip_core.core.output import band_stack, write_png
from stacchip_core.core.read import Reader
from stacchip_core.platform import Platform

OUTLINE = (255, 0, 255)
GAP, LABEL = 6, 30  # px between tiles; px of text under each tile

# platform -> (quality layer, mask of what its plugin counts as cloud)
CLOUD_MASKS = {
    "sentinel-2-l2a": ("scl", lambda scl: np.isin(scl, (1, 3, 8, 9, 10))),
    "landsat-c2l2-sr": ("qa_pixel", lambda qa: (qa & 0b11010) > 0),
    "landsat-c2l1": ("qa_pixel", lambda qa: (qa & 0b11010) > 0),
}


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (edges of the tile excluded).

    Args:
        mask: A boolean mask (h, w).

    Returns:
        The mask's outline, boolean (h, w).
    """
    m = np.pad(mask, 1, mode="edge")
    inner = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def preview_bands(platform: Platform | None) -> list[str] | None:
    """The bands ``true_colour`` shows: red, green and blue, else the platform's first three
    (None: the default assets). Only these are read: a Sentinel-2 preview needs 3 of 10.

    Args:
        platform: The chips' platform, if installed.

    Returns:
        Three band names, or None without a platform or bands.
    """
    if platform is None or not platform.bands:
        return None
    names = platform.band_names
    return ["red", "green", "blue"] if {"red", "green", "blue"} <= set(names) else names[:3]


def read_preview_chips(rows: list[dict], platform: Platform | None,
                       reader: Reader) -> tuple[list[Chip], list[np.ndarray | None]]:
    """The chips of ``rows`` (the bands a preview shows: ``preview_bands``) and their cloud
    masks (None where the platform has no quality layer), read through ``reader`` as two
    batches.

    Args:
        rows: Index rows.
        platform: Their platform, if installed.
        reader: The reader to read them with.

    Returns:
        (chips, masks), one of each per row.
    """
    chips = reader.chips(rows, assets=preview_bands(platform))
    masks: list[np.ndarray | None] = [None] * len(rows)
    if platform is not None and platform.name in CLOUD_MASKS:
        layer, fn = CLOUD_MASKS[platform.name]
        with_layer = [
            i for i, row in enumerate(rows) if reader.source(row).key_for(layer) is not None
        ]
        if with_layer:
            qa = reader.chips([rows[i] for i in with_layer], assets=[layer])
            for i, chip in zip(with_layer, qa):
                masks[i] = fn(next(iter(chip.values()))[0])
    return chips, masks


def true_colour(
    stack: np.ndarray, names: list[str], nodata, clear: np.ndarray | None
) -> np.ndarray:
    """RGB uint8 (3, h, w): 2-98 % stretch over clear, valid pixels (clouds then saturate).

    Args:
        stack: The chip's bands (bands, h, w).
        names: The band names, in ``stack``'s order: red, green and blue are shown, else
            the first three bands.
        nodata: The nodata value, if any: pixels with it in every shown band are black.
        clear: The pixels the stretch is taken over (cloud-free), or None for all valid.

    Returns:
        The RGB tile; black where not valid.
    """
    wanted = [names.index(b) for b in ("red", "green", "blue") if b in names] or list(
        range(min(3, len(names)))
    )
    wanted += [wanted[-1]] * (3 - len(wanted))
    rgb = stack[wanted].astype(np.float64)
    valid = np.all(
        np.isfinite(rgb), axis=0
    )  # Sentinel-1 marks nodata NaN: NaN makes every percentile NaN
    if nodata is not None:
        valid &= ~np.all(stack[wanted] == nodata, axis=0)
    sample = valid & (clear if clear is not None else True)
    if sample.sum() < 16:
        sample = valid
    out = np.zeros(rgb.shape, np.uint8)
    for i in range(3):
        if not sample.any():
            break
        lo, hi = np.percentile(rgb[i][sample], [2, 98])
        hi = lo + 1.4 * (hi - lo)  # headroom: bright soil stays below cloud white
        scaled = np.clip((rgb[i] - lo) * (255.0 / (hi - lo) if hi > lo else 0.0), 0, 255)
        out[i] = np.where(valid, scaled, 0).astype(np.uint8)
    return out


def tile_origin(i: int, cols: int, cs: int) -> tuple[int, int]:
    """(row, col) of tile ``i``'s top-left pixel in a preview grid.

    Args:
        i: The tile's number, row by row.
        cols: Tiles per row.
        cs: Tile size in pixels.

    Returns:
        The pixel's (row, col) in the grid's canvas.
    """
    r, c = divmod(i, cols)
    return GAP + r * (cs + LABEL + GAP), GAP + c * (cs + GAP)


def preview_grid(
    rows: list[dict],
    platform: Platform | None,
    path: Path,
    cols: int = 4,
    *,
    chips: list[Chip] | None = None,
    masks: list[np.ndarray | None] | None = None,
) -> dict:
    """Write the preview PNG of index ``rows``: each chip in true colour, its cloud mask
    outlined, its fractions printed under it.

    Args:
        rows: Index rows.
        platform: Their platform, if installed.
        path: The PNG to write (its folder is created).
        cols: Tiles per row.
        chips: The chips, as ``read_preview_chips`` gives them (read here when not given).
        masks: Their cloud masks, likewise.

    Returns:
        ``path``, the tiles' ``chipids`` and ``origins``, their ``masks`` (``masks[i]``: the
        outlined cloud mask of tile i, or None), ``cols`` and ``chip_size``.
    """
    if chips is None or masks is None:
        with Reader() as reader:
            chips, masks = read_preview_chips(rows, platform, reader)
    tiles, labels = [], []
    for row, chip, mask in zip(rows, chips, masks):
        stack, names = band_stack(chip, platform)
        rgb = true_colour(
            stack, names, platform.nodata if platform else None, None if mask is None else ~mask
        )
        if mask is not None:
            edge = outline(mask)
            for b in range(3):
                rgb[b][edge] = OUTLINE[b]
        tiles.append(rgb)
        labels.append(
            f"cloud {row['cloud_cover_percentage']:.2f}  nodata {row['nodata_percentage']:.2f}"
        )
    cs = max(t.shape[1] for t in tiles)
    cols = min(cols, len(tiles))
    nrows = (len(tiles) + cols - 1) // cols
    height, width = GAP + nrows * (cs + LABEL + GAP), GAP + cols * (cs + GAP)
    canvas = np.full((height, width, 3), 255, np.uint8)
    origins = []
    for i, tile in enumerate(tiles):
        r0, c0 = tile_origin(i, cols, cs)
        canvas[r0:r0 + tile.shape[1], c0:c0 + tile.shape[2]] = tile.transpose(1, 2, 0)
        origins.append((r0, c0))
    strips = [(r0 + cs + 4, c0, text) for (r0, c0), text in zip(origins, labels)]
    canvas = _with_labels(canvas, strips, cs)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, canvas.transpose(2, 0, 1))
    return {
        "path": path,
        "chipids": [r["chipid"] for r in rows],
        "origins": origins,
        "masks": masks,
        "cols": cols,
        "chip_size": cs,
    }


# A 5 x 7 pixel font for the labels (digits, lowercase letters and the punctuation of dates,
# platform names and fractions), so that previews need no
# drawing library: a plain install of stacchip-core and one plugin runs the demo.
_GLYPHS = {
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    " ": "00000 00000 00000 00000 00000 00000 00000",
    "a": "00000 00000 01110 00001 01111 10001 01111",
    "c": "00000 00000 01110 10000 10000 10001 01110",
    "d": "00001 00001 01101 10011 10001 10001 01111",
    "l": "01100 00100 00100 00100 00100 00100 01110",
    "n": "00000 00000 10110 11001 10001 10001 10001",
    "o": "00000 00000 01110 10001 10001 10001 01110",
    "t": "01000 01000 11100 01000 01000 01001 00110",
    "u": "00000 00000 10001 10001 10001 10011 01101",
    "b": "10000 10000 10110 11001 10001 10001 11110",
    "e": "00000 00000 01110 10001 11111 10000 01110",
    "f": "00110 01001 01000 11100 01000 01000 01000",
    "g": "00000 01111 10001 10001 01111 00001 01110",
    "h": "10000 10000 10110 11001 10001 10001 10001",
    "i": "00100 00000 01100 00100 00100 00100 01110",
    "j": "00010 00000 00110 00010 00010 10010 01100",
    "k": "10000 10000 10010 10100 11000 10100 10010",
    "m": "00000 00000 11010 10101 10101 10001 10001",
    "p": "00000 00000 11110 10001 11110 10000 10000",
    "q": "00000 00000 01101 10011 01111 00001 00001",
    "r": "00000 00000 10110 11001 10000 10000 10000",
    "s": "00000 00000 01110 10000 01110 00001 11110",
    "v": "00000 00000 10001 10001 10001 01010 00100",
    "w": "00000 00000 10001 10001 10101 10101 01010",
    "x": "00000 00000 10001 01010 00100 01010 10001",
    "y": "00000 00000 10001 10001 01111 00001 01110",
    "z": "00000 00000 11111 00010 00100 01000 11111",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "/": "00001 00010 00010 00100 01000 01000 10000",
    "%": "11000 11001 00010 00100 01000 10011 00011",
}
_FONT = {ch: np.array([[c == "1" for c in row] for row in rows.split()])
         for ch, rows in _GLYPHS.items()}
TEXT = (34, 34, 34)


def text_mask(text: str, width: int) -> np.ndarray:
    """The pixels of ``text`` in the built-in font, at twice its size when that fits in
    ``width`` (else at its size; characters past ``width`` are cut). Unknown characters are
    blank.

    Args:
        text: The text.
        width: The most pixels it may take across.

    Returns:
        A boolean mask (7 or 14 px high), True where the text is drawn.
    """
    for scale in (2, 1):
        advance = 5 * scale + 1
        if len(text) * advance - scale <= width or scale == 1:
            break
    mask = np.zeros((7 * scale, max(len(text) * advance, 1)), bool)
    for i, ch in enumerate(text):
        glyph = _FONT.get(ch, _FONT[" "])
        mask[:, i * advance:i * advance + 5 * scale] = np.kron(glyph, np.ones((scale, scale), bool))
    return mask[:, :width]


def _with_labels(canvas: np.ndarray, labels: list[tuple[int, int, str]], width: int) -> np.ndarray:
    """Text drawn into the white strips under the tiles; the tiles stay untouched pixel for
    pixel (the text never leaves its strip)."""
    out = canvas.copy()
    for row, col, text in labels:
        mask = text_mask(text, width)
        rows = min(mask.shape[0], out.shape[0] - row)
        out[row:row + rows, col:col + mask.shape[1]][mask[:rows]] = TEXT
    return out


def stack_strip(tiles: list[np.ndarray], labels: list[str], path: Path) -> dict:
    """Write tiles (3, h, w) uint8 in one row, each with its label under it, as a PNG.

    Args:
        tiles: The tiles.
        labels: One label per tile.
        path: The PNG to write (its folder is created).

    Returns:
        ``path``, the tiles' ``origins`` and the ``chip_size``.
    """
    cs = max(t.shape[1] for t in tiles)
    height, width = GAP + cs + LABEL + GAP, GAP + len(tiles) * (cs + GAP)
    canvas = np.full((height, width, 3), 255, np.uint8)
    origins = []
    for i, tile in enumerate(tiles):
        r0, c0 = tile_origin(i, len(tiles), cs)
        canvas[r0:r0 + tile.shape[1], c0:c0 + tile.shape[2]] = tile.transpose(1, 2, 0)
        origins.append((r0, c0))
    canvas = _with_labels(
        canvas, [(r0 + cs + 4, c0, text) for (r0, c0), text in zip(origins, labels)], cs
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, canvas.transpose(2, 0, 1))
    return {"path": path, "origins": origins, "chip_size": cs}


def _rgb(pixels: np.ndarray, valid: np.ndarray, names: list[str], top: float = 75) -> np.ndarray:
    """Colour of members (T, C, h, w) of one platform, one stretch for all steps (so dates
    compare): red, green, blue, else log backscatter in grey; black where not valid."""
    data = np.where(valid[:, None], pixels, np.nan)
    if "red" in names:
        data = data[:, [names.index(b) for b in ("red", "green", "blue") if b in names]]
    else:
        data = np.log10(np.where(data[:, :1] > 0, data[:, :1], np.nan))
    data = np.repeat(data, 3 // data.shape[1], axis=1) if data.shape[1] < 3 else data[:, :3]
    out = np.zeros(data.shape, np.uint8)
    for b in range(3):
        values = data[:, b][np.isfinite(data[:, b])]
        if not values.size:
            continue
        lo, hi = np.percentile(
            values, [2, top]
        )  # 75: clouds (the brightest quarter at most) saturate
        hi = lo + 1.3 * (hi - lo)
        out[:, b] = np.nan_to_num(
            np.clip((data[:, b] - lo) * (255.0 / (hi - lo) if hi > lo else 0.0), 0, 255)
        )
    return out


def series_preview(stack, clouds: list[float], path: Path) -> dict:
    """Write a time series (``StackPixels``) as a strip of colour tiles, date and cloud
    fraction under each step, invalid pixels black.

    Args:
        stack: The stack's pixels, as ``StackReader.read`` returns them.
        clouds: The cloud fraction of each step.
        path: The PNG to write.

    Returns:
        As ``stack_strip``.
    """
    p = stack.anchor
    tiles = list(_rgb(stack.pixels[p], stack.valid[p], stack.bands[p]))
    labels = [f"{d.isoformat()}  cloud {c:.2f}" for d, c in zip(stack.dates[p], clouds)]
    return stack_strip(tiles, labels, path)


def pair_preview(stack, path: Path) -> dict:
    """Write a multi-sensor stack's first step: each platform's member on the anchor window,
    side by side (radar in grey), platform and date under each.

    Args:
        stack: The stack's pixels, as ``StackReader.read`` returns them.
        path: The PNG to write.

    Returns:
        As ``stack_strip``.
    """
    tiles, labels = [], []
    for p, px in stack.pixels.items():
        tiles.append(_rgb(px[:1], stack.valid[p][:1], stack.bands[p], top=90)[0])
        labels.append(f"{p} {stack.dates[p][0].isoformat()}")
    return stack_strip(tiles, labels, path)
