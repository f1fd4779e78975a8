"""Reading stacks (core.stacks) as model input: a time series as float32 ``(T, C, H, W)`` with
its dates, members of other sensors reprojected onto the anchor chip's window, a valid-data
mask per member, and ``StackDataset`` for torch's DataLoader (numpy samples, like ChipDataset).

All members of all stacks of a batch are fetched at once: exact members as chips of their
grid, warped members as the native window (plus a margin) of each asset that covers the
anchor footprint; both go through ``fetch``, one call of the chip read pipeline's window
reader (``core.read.read_windows``), so requests are the tiles touched, each tile is fetched
and decoded once per batch, no item JSON is read, and each batch reports its cost as chip
reads do (``StackReader.last``, a ``ReadReport``; ``StackReader.report`` adds them up). Warped
members are then reprojected in memory (rasterio.warp.reproject; nearest for auxiliary layers
such as SCL or QA, nearest or bilinear for bands).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacchip_core.core.layout import AssetLayout, decoded
from stacchip_core.core.read import (
    ReadCosts,
    ReadReport,
    ReportsCosts,
    note_fallback,
    read_windows,
    wire,
)
from stacchip_core.core.stacks import StackPixels, read_stacks
from stacchip_core.core.tiles import GridSpec, StaleLayout, TileCost, Unsupported, factor_for
from stacchip_core.core.window import crop_expand, native_window
from stacchip_core.errors import AssetError, PlatformError, StackError
from stacchip_core.io import objects
from stacchip_core.io.settings import apply_gdal_options
from stacchip_core.plugins import platforms, sign_href
from stacchip_core.training.dataset import row_numbers
from stacchip_core.training.handoff import share
from stacchip_core.training.readahead import ReadAhead
from stacchip_core.training.workers import settle

log = logging.getLogger(__name__)

MARGIN = 2  # native pixels around the anchor footprint, for the resampling kernel


@dataclass
class ChipRequest:
    """A chip ``(x, y)`` of assets ``keys`` on ``grid``."""

    layouts: dict[str, AssetLayout]
    keys: list[str]
    grid: GridSpec
    xy: tuple[int, int]


@dataclass
class WindowRequest:
    """Native pixels ``rows[0]:rows[1], cols[0]:cols[1]`` of asset ``key``."""

    layouts: dict[str, AssetLayout]
    key: str
    rows: tuple[int, int]
    cols: tuple[int, int]


@dataclass
class Window:
    """A native window: ``data`` (bands, h, w) and ``read`` (h, w), False where no pixel was
    fetched (outside the image)."""

    data: np.ndarray
    read: np.ndarray
    row0: int = 0
    col0: int = 0


def fetch(
    chips: Sequence[ChipRequest],
    windows: Sequence[WindowRequest],
    cost: TileCost | None = None,
    fallbacks: Counter | None = None,
) -> tuple[list[dict], list]:
    """Chips and native windows from layouts, all in one call of the read pipeline's window
    reader (``core.read.read_windows``): every tile of the batch fetched once (one coalesced
    request per object) and decoded once, even when a chip and a window share it.

    A chip is the window of its grid cell at the asset's expansion factor; a window is
    clipped to the image (the partial last tiles of an image are read like any other: their
    padding is cropped) and the part outside it is marked unread. A window the layout cannot
    serve (the object changed since indexing, tiles the decoders refuse, a worker forked after
    its parent used async-tiff) is read through rasterio alone, as the pipeline does; if that
    fails too (the object is gone), the layout's exception is the result.

    Args:
        chips: Chips on item grids.
        windows: Native windows of single assets.
        cost: Adds the tiles decoded and the seconds spent decoding them.
        fallbacks: Adds ``{reason: windows}`` read through rasterio instead.

    Returns:
        Per chip ``{key: array (bands, cs, cs) or exception}`` (``Unsupported`` off the
        grid's lattice or beyond the image, ``StaleLayout`` for a changed or gone object), and
        per window a ``Window`` or the exception that stopped it.

    Raises:
        AssetError: An object could not be read (not because it is gone).
    """
    lays: list[AssetLayout] = []
    spans: list[tuple[int, int, int, int]] = []
    factors: list[int] = []
    chip_out: list[dict] = [{} for _ in chips]
    where: list[tuple[int, str]] = []
    for i, c in enumerate(chips):
        cs = c.grid.chip_size
        x, y = c.xy
        for k in c.keys:
            lay = c.layouts.get(k)
            if lay is None:
                chip_out[i][k] = Unsupported(f"{k}: no layout")
                continue
            try:
                factor = factor_for(lay, c.grid)
            except Unsupported as exc:
                chip_out[i][k] = exc
                continue
            lays.append(lay)
            spans.append((y * cs, x * cs, cs, cs))
            factors.append(factor)
            where.append((i, k))
    clipped: list[tuple[int, int, int, int] | None] = []
    for w in windows:
        lay = w.layouts[w.key]
        r0, r1 = max(w.rows[0], 0), min(w.rows[1], lay.height)
        c0, c1 = max(w.cols[0], 0), min(w.cols[1], lay.width)
        if r1 <= r0 or c1 <= c0:
            clipped.append(None)
            continue
        clipped.append((r0, r1, c0, c1))
        lays.append(lay)
        spans.append((r0, c0, r1 - r0, c1 - c0))
        factors.append(1)
    results = read_windows(lays, spans, factors, cost) if lays else []
    for i, res in enumerate(results):
        if not isinstance(res, np.ndarray):  # the pipeline's rule: that asset alone via rasterio
            results[i] = _rasterio_window(lays[i], spans[i], factors[i], res, fallbacks)
    for (i, k), res in zip(where, results):
        chip_out[i][k] = res
    out_windows: list = []
    n = len(where)
    for w, box in zip(windows, clipped):
        lay = w.layouts[w.key]
        h, wd = w.rows[1] - w.rows[0], w.cols[1] - w.cols[0]
        data = np.zeros((lay.bands, h, wd), lay.dtype)
        read = np.zeros((h, wd), bool)
        if box is not None:
            got = results[n]
            n += 1
            if not isinstance(got, np.ndarray):
                out_windows.append(got)
                continue
            r0, r1, c0, c1 = box
            ys = slice(r0 - w.rows[0], r1 - w.rows[0])
            xs = slice(c0 - w.cols[0], c1 - w.cols[0])
            data[:, ys, xs] = got
            read[ys, xs] = True
        out_windows.append(Window(data, read, w.rows[0], w.cols[0]))
    return chip_out, out_windows


def _rasterio_window(
    lay: AssetLayout,
    span: tuple[int, int, int, int],
    factor: int,
    why: Exception,
    fallbacks: Counter | None,
) -> np.ndarray | Exception:
    """Grid pixels ``span`` (row0, col0, height, width) of an asset through rasterio, or
    ``why`` when rasterio cannot read it either."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window as RioWindow

    row0, col0, h, w = span
    r0, r1, c0, c1 = native_window(row0, col0, h, w, factor)
    try:
        apply_gdal_options()
        with rasterio.open(sign_href(lay.href)) as ds:
            block = ds.read(window=RioWindow(c0, r0, c1 - c0, r1 - r0))
    except RasterioError:
        return why
    note_fallback(why, lay.href, lay.key)
    if fallbacks is not None:
        kind = "stale" if isinstance(why, StaleLayout) else "undecodable"
        fallbacks[kind] += 1
    return crop_expand(block, r0, c0, row0, col0, h, w, factor)


def _member_table(stacks: list[dict]) -> list[list[dict]]:
    """Members of each stack as dicts (the list columns zipped)."""
    names = [k[len("member_") :] for k in stacks[0] if k.startswith("member_")] if stacks else []
    return [
        [dict(zip(names, vals)) for vals in zip(*(s[f"member_{n}"] for n in names))] for s in stacks
    ]


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str):
    import pyproj

    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def _native_window(
    lay: AssetLayout, anchor_t: Sequence[float], cs: int, anchor_crs: str, crs: str, margin: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Rows and cols of the asset covering the anchor window (edges sampled), plus ``margin``."""
    a, _, c, _, e, f = anchor_t
    t = np.linspace(0, cs, 17)
    px = np.r_[t, np.full(17, cs), t[::-1], np.zeros(17)]
    py = np.r_[np.zeros(17), t, np.full(17, cs), t[::-1]]
    X, Y = c + px * a, f + py * e
    if anchor_crs != crs:
        X, Y = _transformer(anchor_crs, crs).transform(X, Y)
    la, lc, le, lf = lay.transform
    cols, rows = (np.asarray(X) - lc) / la, (np.asarray(Y) - lf) / le
    r0, r1 = int(np.floor(rows.min())) - margin, int(np.ceil(rows.max())) + margin
    c0, c1 = int(np.floor(cols.min())) - margin, int(np.ceil(cols.max())) + margin
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, lay.height), min(c1, lay.width)
    if r1 <= r0 or c1 <= c0:
        return None
    return (r0, r1), (c0, c1)


class StackReader(ReportsCosts):
    """Read stacks: ``read_many(stacks)`` -> per stack a ``StackPixels`` or the ``StackError``
    that stopped it (one clear line naming the member); ``read(stack)`` raises it.

    Args:
        bands: Band names per platform (a dict) or for every platform (a list); default each
            platform's canonical bands. Auxiliary layers (``scl``, ``qa_pixel``) may be named.
        resampling: ``nearest`` (default) or ``bilinear`` for the bands of warped members;
            auxiliary layers are always nearest.
        margin: Native pixels fetched around a warped member's footprint.

    Each batch's cost is ``last`` (a ``ReadReport``: ``chips`` = members read, requests and
    bytes, tiles decoded, decode seconds, ``layout_reads`` = asset windows read); ``report``
    adds them up. Asset windows the layout cannot serve are read through rasterio
    (``rasterio_reads``, ``fallbacks`` by reason: ``stale``, ``undecodable``); a member that
    neither can read fails its stack. GDAL's own requests are not in ``requests``.

    Raises:
        StackError: ``resampling`` is neither ``nearest`` nor ``bilinear``.
    """

    def __init__(
        self,
        bands: dict[str, Sequence[str]] | Sequence[str] | None = None,
        resampling: str = "nearest",
        margin: int = MARGIN,
    ) -> None:
        if resampling not in ("nearest", "bilinear"):
            raise StackError(f"resampling must be 'nearest' or 'bilinear', got {resampling!r}")
        self.bands, self.resampling, self.margin = bands, resampling, margin
        self._costs = ReadCosts()

    def __getstate__(self) -> dict[str, Any]:
        return {"bands": self.bands, "resampling": self.resampling, "margin": self.margin}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._costs = ReadCosts()

    def band_names(self, platform: str) -> list[str]:
        """The bands read of ``platform``'s members.

        Args:
            platform: A platform name.

        Returns:
            The chosen band names, else the platform's canonical bands.

        Raises:
            PlatformError: If no band is chosen and the platform is not installed.
        """
        if isinstance(self.bands, dict):
            chosen = self.bands.get(platform)
        else:
            chosen = self.bands
        if chosen:
            return list(chosen)
        p = platforms().get(platform)
        if p is None:
            raise PlatformError(f"platform {platform!r} is not installed")
        return p.band_names

    def _sources(self, platform: str, lays: dict) -> list[tuple[str, int, bool]]:
        """(asset key, 1-based band, is auxiliary) per wanted band."""
        p = platforms().get(platform)
        if p is None:
            raise PlatformError(f"platform {platform!r} is not installed")
        lower = {k.lower(): k for k in lays}
        out = []
        for name in self.band_names(platform):
            band = p.find(name)
            keys = band.keys if band else (name,)
            key = next((lower[k.lower()] for k in keys if k.lower() in lower), None)
            if key is None:
                raise StackError(
                    f"band {name!r} of {platform} has no asset in the member's layouts "
                    f"(assets: {', '.join(lays)})"
                )
            out.append((key, band.index if band else 1, band in p.aux if band else False))
        return out

    def read(self, stack: dict) -> StackPixels:
        """One stack (a row of a stacks table as a dict); raises its ``StackError``.

        Args:
            stack: A row of a stacks table.

        Returns:
            The stack's pixels.

        Raises:
            StackError: If a member cannot be read or lacks a band.
            AssetError: If an object read fails.
        """
        result = self.read_many([stack])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def read_many(self, stacks: list[dict]) -> list[StackPixels | StackError]:
        """Stacks (rows of a stacks table as dicts), all their members fetched concurrently.

        Args:
            stacks: Rows of a stacks table (``table.to_pylist()``).

        Returns:
            Per stack its ``StackPixels``, or the ``StackError`` that stopped it (a member
            whose object is gone, a band the member lacks): one stack fails, not the batch.
        """
        try:
            return self._read_many(stacks)
        except AssetError:
            if len(stacks) == 1:
                raise
        # an object read failed in the batch: read stack by stack, so only its stacks fail
        out: list[StackPixels | StackError] = []
        total = ReadReport()
        for s in stacks:
            try:
                out.extend(self._read_many([s]))
                total = total + self.last
            except AssetError as exc:
                out.append(StackError(f"stack {s['stackid']}: {exc}"))
        self._costs.last = total  # the batch's cost: the stacks read one by one
        return out

    def _read_many(self, stacks: list[dict]) -> list[StackPixels | StackError]:
        members = _member_table(stacks)
        chips: list[ChipRequest] = []
        windows: list[WindowRequest] = []
        plans = []  # per stack: per member (kind, member, sources, request indices) or an error
        for s, ms in zip(stacks, members):
            plan: list = []
            try:
                for m in ms:
                    plan.append(self._plan(s, m, chips, windows))
            except StackError as exc:
                plan = [StackError(f"stack {s['stackid']}: {exc}")]
            plans.append(plan)
        cost = TileCost()
        fallbacks: Counter = Counter()
        with objects.tally() as spent:  # this batch's requests, not other threads'
            chip_res, win_res = fetch(chips, windows, cost, fallbacks)
        requests, nbytes = wire(spent.counters)
        self._costs.add(ReadReport(
            chips=sum(len(p) for p in plans if p and not isinstance(p[0], StackError)),
            requests=requests,
            bytes=nbytes,
            tiles=cost.tiles,
            decode_seconds=cost.decode_seconds,
            layout_reads=sum(len(c.keys) for c in chips) + len(windows) - sum(fallbacks.values()),
            rasterio_reads=sum(fallbacks.values()),
            fallbacks=tuple(sorted(fallbacks.items())),
        ))
        return [self._assemble(s, plan, chip_res, win_res) for s, plan in zip(stacks, plans)]

    def _plan(self, s: dict, m: dict, chips: list, windows: list):
        if not m["layouts"]:
            raise StackError(
                f"member {m['chipid']} has no COG layouts in the index (re-index it with layouts)"
            )
        lays = decoded.get(m["layouts"])
        sources = self._sources(m["platform"], lays)
        keys = list(dict.fromkeys(k for k, _, _ in sources))
        if m["exact"]:
            chips.append(
                ChipRequest(
                    lays,
                    keys,
                    GridSpec.from_layouts(lays, int(m["chip_size"])),
                    (int(m["chip_index_x"]), int(m["chip_index_y"])),
                )
            )
            return ("exact", m, lays, sources, len(chips) - 1)
        if s.get("transform") is None or not s.get("crs") or not m.get("crs"):
            raise StackError(
                f"member {m['chipid']}: the anchor's or the member's grid is unknown "
                "(build the stacks from an index whose layouts record grid and CRS)"
            )
        idx = {}
        for k in keys:
            win = _native_window(
                lays[k], s["transform"], int(s["chip_size"]), s["crs"], m["crs"], self.margin
            )
            if win is None:
                raise StackError(
                    f"member {m['chipid']}: asset {k} does not reach the anchor window"
                )
            windows.append(WindowRequest(lays, k, *win))
            idx[k] = len(windows) - 1
        return ("warp", m, lays, sources, idx)

    def _assemble(
        self, s: dict, plan: list, chip_res: list, win_res: list
    ) -> StackPixels | StackError:
        if plan and isinstance(plan[0], StackError):
            return plan[0]
        cs = int(s["chip_size"])
        arrays: dict[str, list[np.ndarray]] = {}
        valids: dict[str, list[np.ndarray]] = {}
        dates: dict[str, list[date]] = {}
        ids: dict[str, list[str]] = {}
        rows: dict[str, list[dict]] = {}
        for kind, m, lays, sources, req in plan:
            try:
                if kind == "exact":
                    data, valid = self._exact(m, lays, sources, chip_res[req])
                else:
                    data, valid = self._warp(
                        s, m, lays, sources, {k: win_res[i] for k, i in req.items()}, cs
                    )
            except StackError as exc:
                return StackError(f"stack {s['stackid']}: {exc}")
            arrays.setdefault(m["platform"], []).append(data)
            valids.setdefault(m["platform"], []).append(valid)
            dates.setdefault(m["platform"], []).append(m["date"])
            ids.setdefault(m["platform"], []).append(m["chipid"])
            rows.setdefault(m["platform"], []).append(
                {k: v for k, v in m.items() if k != "layouts"}
            )
        return StackPixels(
            stackid=s["stackid"],
            anchor=s["platform"],
            pixels={p: np.stack(v) for p, v in arrays.items()},
            valid={p: np.stack(v) for p, v in valids.items()},
            dates=dates,
            bands={p: self.band_names(p) for p in arrays},
            crs=s.get("crs"),
            transform=s.get("transform"),
            members=ids,
            rows=rows,
        )

    @staticmethod
    def _gone(m: dict, key: str, exc: Exception) -> StackError:
        return StackError(
            f"member {m['chipid']} ({m['platform']}, {m['date']}): asset {key!r} of item "
            f"{m['item_id']!r} cannot be read from its layout: {exc or type(exc).__name__}"
        )

    def _exact(self, m, lays, sources, res: dict) -> tuple[np.ndarray, np.ndarray]:
        for k, v in res.items():
            if not isinstance(v, np.ndarray):
                raise self._gone(m, k, v)
        data = np.stack([res[k][b - 1] for k, b, _ in sources]).astype(np.float32)
        valid = np.ones(data.shape[1:], bool)
        for (k, _, _), band in zip(sources, data):
            valid &= _valid(band, lays[k].nodata)
        return data, valid

    def _warp(self, s, m, lays, sources, wins: dict, cs: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.crs import CRS
        from rasterio.enums import Resampling
        from rasterio.warp import reproject

        for k, w in wins.items():
            if not isinstance(w, Window):
                raise self._gone(m, k, w)
        dst_t = _affine(s["transform"])
        dst_crs, src_crs = CRS.from_user_input(s["crs"]), CRS.from_user_input(m["crs"])
        out = np.full((len(sources), cs, cs), np.nan, np.float32)
        valid = np.ones((cs, cs), bool)
        masks: dict[str, np.ndarray] = {}
        for i, (k, b, aux) in enumerate(sources):
            lay, w = lays[k], wins[k]
            src_t = _affine(
                (lay.transform[0], 0.0, lay.transform[1], 0.0, lay.transform[2], lay.transform[3])
            )
            src_t = src_t @ _translation(w.col0, w.row0)
            band = w.data[b - 1].astype(np.float32)
            ok = w.read & _valid(band, lay.nodata)
            band = np.where(ok, band, np.nan).astype(np.float32)
            method = (
                Resampling.nearest if aux or self.resampling == "nearest" else Resampling.bilinear
            )
            reproject(
                band,
                out[i],
                src_transform=src_t,
                src_crs=src_crs,
                dst_transform=dst_t,
                dst_crs=dst_crs,
                src_nodata=np.nan,
                dst_nodata=np.nan,
                resampling=method,
            )
            if k not in masks:
                mask = np.zeros((cs, cs), np.uint8)
                reproject(
                    ok.astype(np.uint8),
                    mask,
                    src_transform=src_t,
                    src_crs=src_crs,
                    dst_transform=dst_t,
                    dst_crs=dst_crs,
                    src_nodata=None,
                    dst_nodata=0,
                    resampling=Resampling.nearest,
                )
                masks[k] = mask.astype(bool)
            valid &= masks[k] & np.isfinite(out[i])
        return out, valid


def _valid(band: np.ndarray, nodata) -> np.ndarray:
    ok = np.isfinite(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        ok &= band != nodata
    return ok


def _affine(t: Sequence[float]):
    from affine import Affine

    return Affine(*[float(v) for v in t[:6]])


def _translation(cols: int, rows: int):
    from affine import Affine

    return Affine.translation(cols, rows)


# --- a dataset ---------------------------------------------------------------------------------


class StackDataset:
    """``dataset[i] -> {"pixels": float32 (T, C, H, W) of the anchor platform, "valid": bool
    (T, H, W), "time": int64 (T,) days since 1970-01-01, "present": bool (T,) (False for
    padding steps), "dates": [ISO dates], "stackid", "platform", "lon", "lat"}``, plus
    ``"sensors": {platform: {"pixels", "valid", "time", "present"}}`` for
    the other platforms of multi-sensor stacks; then the optional ``transform(sample)``.

    Map-style, with ``__getitems__`` batches (all members of all stacks of a batch fetched
    at once), numpy samples (torch's default collate makes tensors). ``steps`` pads (zeros,
    invalid, time -1) or cuts every stack to that many steps, so stacks of any length batch.
    ``errors="skip"`` drops stacks that cannot be read from a batch (logged) instead of raising.

    Args:
        stacks: A stacks file or URL, or a stacks table.
        bands: Band names per platform (a dict) or for every platform (a list).
        transform: A function applied to every sample.
        steps: Steps per stack (padded or cut); None: each stack's own length.
        resampling: ``nearest`` or ``bilinear`` for the bands of warped members.
        errors: ``raise``, or ``skip`` to drop stacks that cannot be read.

    Raises:
        StackError: ``errors`` or ``resampling`` is not one of its values.
    """

    def __init__(
        self,
        stacks: str | pa.Table,
        bands: dict[str, Sequence[str]] | Sequence[str] | None = None,
        transform: Callable[[dict], dict] | None = None,
        steps: int | None = None,
        resampling: str = "nearest",
        errors: str = "raise",
    ) -> None:
        table = read_stacks(stacks) if not isinstance(stacks, pa.Table) else stacks
        if errors not in ("raise", "skip"):
            raise StackError(f"errors must be 'raise' or 'skip', got {errors!r}")
        self.table = _compact(table)
        self.transform, self.steps, self.errors = transform, steps, errors
        self.reader = StackReader(bands, resampling)
        self.platforms = np.asarray(self.table["platform"].to_pylist(), dtype=object)
        self._ahead: ReadAhead = ReadAhead()

    def __getstate__(self) -> dict[str, Any]:
        # a spawned worker maps the table from shared memory (training.handoff)
        return {**self.__dict__, "table": share(self.table)}

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:
        got = self.__getitems__([i])
        if not got:
            raise StackError(f"stack {i} could not be read")
        return got[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        settle()  # in a DataLoader worker: its inherited heap frozen (training.workers)
        rows, results = self._ahead.batch(indices, self._read_batch)
        out = []
        for row, res in zip(rows, results):
            if isinstance(res, Exception):
                if self.errors == "raise":
                    raise res
                log.warning("skipped: %s", res)
                continue
            sample = self._sample(row, res)
            out.append(self.transform(sample) if self.transform else sample)
        return out

    def read_ahead(self, indices: Sequence[int]) -> None:
        """A batch sampler's hint: ``indices`` is a batch the loader asks for soon (read in
        a background thread once this process consumes hinted batches; ``ChipDataset``'s
        ``read_ahead`` and ``training.readahead`` say more).

        Args:
            indices: Row numbers of the stacks table.
        """
        self._ahead.hint(indices, self._read_batch)

    def _read_batch(
        self, indices: Sequence[int]
    ) -> tuple[list[dict], list[StackPixels | StackError]]:
        rows = self.table.take(row_numbers(indices, len(self), "stacks").tolist()).to_pylist()
        return rows, self.reader.read_many(rows)

    def _fit(self, arr: np.ndarray, fill) -> np.ndarray:
        if self.steps is None or len(arr) == self.steps:
            return arr
        if len(arr) > self.steps:
            return arr[: self.steps]
        pad = np.full((self.steps - len(arr), *arr.shape[1:]), fill, arr.dtype)
        return np.concatenate([arr, pad])

    def _sample(self, row: dict, res: StackPixels) -> dict:
        def part(p: str) -> dict:
            days = np.array([(d - date(1970, 1, 1)).days for d in res.dates[p]], np.int64)
            return {
                "pixels": self._fit(res.pixels[p], 0),
                "valid": self._fit(res.valid[p], False),
                "time": self._fit(days, -1),
                "present": self._fit(np.ones(len(days), bool), False),
            }

        bbox = row["bbox"]
        anchor = part(res.anchor)
        sample = {
            **anchor,
            "dates": [d.isoformat() for d in res.dates[res.anchor]][: self.steps or None],
            "stackid": row["stackid"],
            "platform": row["platform"],
            "lon": (bbox["xmin"] + bbox["xmax"]) / 2,
            "lat": (bbox["ymin"] + bbox["ymax"]) / 2,
        }
        others = {p: part(p) for p in res.pixels if p != res.anchor}
        if others:
            sample["sensors"] = others
        return sample


def _compact(table: pa.Table) -> pa.Table:
    """Members' layouts held once per item in memory (dictionary-encoded lists)."""
    name = "member_layouts"
    if name not in table.column_names:
        return table
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type.value_type):
        return table
    values = pc.dictionary_encode(col.values)
    i = table.column_names.index(name)
    return table.set_column(i, name, pa.ListArray.from_arrays(col.offsets, values))
