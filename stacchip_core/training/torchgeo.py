"""A TorchGeo ``GeoDataset`` over a stacchip index (needs the ``torchgeo`` extra; this module
is the only one that imports torchgeo, and nothing imports it unless you do).

``StacchipGeoDataset(index)`` holds one row per chip in TorchGeo's index: a GeoDataFrame whose
geometry is the chip's exact window on its item grid (in the items' CRS) and whose index is
the acquisition time as a closed ``pd.IntervalIndex``. TorchGeo's samplers
(``RandomGeoSampler``, ``GridGeoSampler``, ...), ``IntersectionDataset``/``UnionDataset``,
``stack_samples`` and trainers work on it unchanged. A query ``[xmin:xmax:res, ymin:ymax:res,
tmin:tmax:tstep]`` returns ``{"image": float32 (bands, H, W), "bounds": query, "crs": crs}``
(TorchGeo 0.8's sample keys), mosaicked from the chips it touches (the earliest first,
nearest neighbour onto the query's pixel grid, 0 where no chip is); ``label_column`` adds
``"label"``: the pixel-weighted mean of that index column over the chips that filled the
query (e.g. ``cloud_cover_percentage`` for a cloud-fraction regression).

A TorchGeo dataset has one CRS and one resolution: chips of other CRSs or resolutions are left
out (logged); pick them with ``crs=`` or build one dataset per CRS and join them with ``|``.

Stacks (time series and multi-sensor stacks of a stacks table) are samples, not queries:
``stack_sample(pixels)`` turns a ``StackPixels`` into TorchGeo's sample dict with ``image``
(T, C, H, W), and ``StacchipStackGeoSamples`` is a map-style dataset of them for TorchGeo's
transforms and trainers (its samplers query space, which a stack already fixes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyproj
import shapely
import torch
from geopandas import GeoDataFrame
from torchgeo.datasets import GeoDataset

from stacchip_core.core.read import grid_for_row
from stacchip_core.core.stacks import StackPixels, read_stacks
from stacchip_core.errors import ConfigError, GridError, NotFoundError
from stacchip_core.training.chipread import ChipReader
from stacchip_core.training.prechip import ChipFilter, load_index
from stacchip_core.training.stacks import StackReader

log = logging.getLogger(__name__)


class StacchipGeoDataset(GeoDataset):
    """TorchGeo view of a stacchip index (a path/URL or a ``pyarrow.Table``).

    Args:
        index: the merged index.
        bands: band names to read (default: the platform's canonical bands).
        crs: keep chips in this CRS (default: the CRS of the most chips).
        chip_filter: rows to keep (a ``ChipFilter``; default: all rows).
        label_column: an index column returned as ``sample["label"]``.
        transforms: TorchGeo-style ``transforms(sample) -> sample``.
        mountpath: for bucket hrefs mounted locally.

    Raises:
        NotFoundError: no chips are left after filtering, or none in ``crs``.
        ConfigError: ``label_column`` is not a column of the index.
        GridError: an item's grid is not north-up.
    """

    def __init__(
        self,
        index: str | pa.Table,
        bands: Sequence[str] | None = None,
        crs: pyproj.CRS | str | None = None,
        chip_filter: ChipFilter | None = None,
        label_column: str | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        mountpath: str | None = None,
    ) -> None:
        if chip_filter is not None and not isinstance(index, pa.Table):
            table = chip_filter.load(str(index))  # reads only the row groups that may match
        else:
            table = load_index(index) if not isinstance(index, pa.Table) else index
            table = chip_filter.apply(table) if chip_filter is not None else table
        if not len(table):
            raise NotFoundError("no chips in the index (after filtering)")
        self.reader = ChipReader(list(bands) if bands else None, mountpath)
        self.transforms = transforms
        self.label_column = label_column
        if label_column is not None and label_column not in table.column_names:
            raise ConfigError(
                f"label column {label_column!r} is not in the index ({table.column_names})"
            )
        self.mountpath = mountpath

        # one grid per item (not per chip): each chip's window from its (x, y)
        hrefs = np.asarray(table["item_href"].to_pylist(), dtype=object)
        cx = table["chip_index_x"].to_numpy()
        cy = table["chip_index_y"].to_numpy()
        cs = table["chip_size"].to_numpy()
        boxes = np.zeros((len(table), 4))
        crss: list[Any] = [None] * len(table)  # pyproj.CRS of each chip, all set below
        res = np.zeros(len(table))
        for href in np.unique(hrefs):
            rows = np.flatnonzero(hrefs == href)
            first = table.slice(int(rows[0]), 1).to_pylist()[0]
            grid = grid_for_row(first, mountpath)  # from the row's layouts: no item JSON
            t = grid.transform
            if t.b or t.d or t.e >= 0:
                raise GridError(f"item {first['item_id']}: only north-up grids are supported")
            x0 = t.c + cx[rows] * cs[rows] * t.a
            y1 = t.f + cy[rows] * cs[rows] * t.e
            boxes[rows] = np.column_stack([x0, y1 + cs[rows] * t.e, x0 + cs[rows] * t.a, y1])
            res[rows] = t.a
            for r in rows:
                crss[r] = grid.crs
        wkts = np.asarray([c.to_wkt() for c in crss], dtype=object)
        if crs is None:
            values, counts = np.unique(wkts, return_counts=True)
            crs = pyproj.CRS(values[np.argmax(counts)])
        crs = pyproj.CRS(crs)
        keep = wkts == crs.to_wkt()
        if not keep.any():
            raise NotFoundError(f"no chips in {crs.to_string()}")
        resolution = float(np.median(res[keep]))
        keep &= np.isclose(res, resolution)
        if (~keep).any():
            log.info("%d chips in another CRS or resolution left out", int((~keep).sum()))
        rows = np.flatnonzero(keep)
        self.table = table.take(pa.array(rows))
        when = pd.to_datetime(
            self.table["datetime"].to_numpy(zero_copy_only=False), utc=True
        ).tz_localize(None)
        interval = pd.IntervalIndex.from_arrays(when, when, closed="both", name="datetime")
        self.index = GeoDataFrame({"row": np.arange(len(rows))}, index=interval,
                                  geometry=shapely.box(*boxes[rows].T), crs=crs)
        self._res = (resolution, resolution)
        self._labels = (
            np.asarray(self.table[label_column].to_numpy(zero_copy_only=False), dtype=np.float64)
            if label_column
            else None
        )

    def __getitem__(self, query) -> dict[str, Any]:
        x, y, t = self._disambiguate_slice(query)
        hits = self.index.iloc[
            self.index.index.overlaps(pd.Interval(t.start, t.stop, closed="both"))
        ]
        hits = hits.iloc[:: t.step]
        hits = hits.cx[x.start:x.stop, y.start:y.stop]
        if hits.empty:
            raise IndexError(f"query: {query} not found in index with bounds: {self.bounds}")
        xres, yres = x.step or self.res[0], y.step or self.res[1]
        width = max(1, round((x.stop - x.start) / xres))
        height = max(1, round((y.stop - y.start) / yres))
        # the query's pixel centres; each is filled from the first chip (earliest) holding it
        xs = x.start + (np.arange(width) + 0.5) * xres
        ys = y.stop - (np.arange(height) + 0.5) * yres
        # which chip fills which pixels depends on geometry alone: decide first, then read the
        # contributing chips in one batch (their tiles fetched together)
        filled = np.zeros((height, width), dtype=bool)
        parts = []
        res = self.res[0]
        order = np.argsort(hits.index.left.values, kind="stable")
        for k in order:
            r = int(hits["row"].iloc[k])
            xmin, ymin, xmax, ymax = hits.geometry.iloc[k].bounds
            cols = np.floor((xs - xmin) / res).astype(np.int64)
            rows = np.floor((ymax - ys) / res).astype(np.int64)
            ci, ri = (
                np.flatnonzero((cols >= 0) & (xs < xmax)),
                np.flatnonzero((rows >= 0) & (ys > ymin)),
            )
            if not len(ci) or not len(ri):
                continue
            todo = ~filled[np.ix_(ri, ci)]
            if not todo.any():
                continue
            filled[np.ix_(ri, ci)] |= todo
            parts.append((r, rows, cols, ri, ci, todo))
        image = None
        label_sum = 0.0
        pixels_of = (
            self.reader.read_many(self.table.take(pa.array([p[0] for p in parts])).to_pylist())
            if parts
            else []
        )
        for (r, rows, cols, ri, ci, todo), pixels in zip(parts, pixels_of):
            if image is None:
                image = np.zeros((pixels.shape[0], height, width), dtype=np.float32)
            block = pixels[:, rows[ri]][:, :, cols[ci]]
            target = image[:, ri[:, None], ci[None, :]]
            target[:, todo] = block[:, todo]
            image[:, ri[:, None], ci[None, :]] = target
            if self._labels is not None:
                label_sum += self._labels[r] * int(todo.sum())
        if image is None:
            raise IndexError(f"query: {query} holds no chip pixel")
        sample: dict[str, Any] = {
            "image": torch.from_numpy(image),
            "bounds": query,
            "crs": self.crs,
        }
        if self._labels is not None:
            sample["label"] = torch.tensor(
                label_sum / max(1, int(filled.sum())), dtype=torch.float32
            )
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def chip_query(self, i: int) -> tuple[slice, slice, slice]:
        """The query that returns exactly chip ``i`` of the dataset (its window and time).

        Args:
            i: The chip's position in the dataset.

        Returns:
            The x, y and time slices of a TorchGeo query.
        """
        xmin, ymin, xmax, ymax = self.index.geometry.iloc[i].bounds
        iv = self.index.index[i]
        return (
            slice(xmin, xmax, self.res[0]),
            slice(ymin, ymax, self.res[1]),
            slice(iv.left, iv.right, 1),
        )


def stack_sample(pixels: StackPixels, platform: str | None = None) -> dict[str, Any]:
    """A stack as TorchGeo's sample dict: one platform's members as a time series.

    Args:
        pixels: a stack read by ``StackReader``.
        platform: which platform's members (default: the anchor's).

    Returns:
        ``image`` float32 tensor (T, C, H, W) on the anchor chip's grid, ``valid`` bool
        (T, H, W), ``bounds`` the window and dates as a TorchGeo query ``(x slice, y slice,
        t slice)`` (x and y in the anchor's CRS with its resolution as step, t from the first
        to the last date), ``crs`` (pyproj), ``dates`` (ISO), ``time`` int64 (T,) days since
        1970-01-01, ``bands`` and ``stackid``.

    Raises:
        ConfigError: the stack has no such platform, or no grid (CRS, transform).
    """
    platform = platform or pixels.anchor
    if platform not in pixels.pixels:
        raise ConfigError(
            f"stack {pixels.stackid} has no {platform} members ({', '.join(pixels.pixels)})"
        )
    if pixels.crs is None or pixels.transform is None:
        raise ConfigError(
            f"stack {pixels.stackid}: its anchor grid is unknown (rebuild the stacks from an index "
            "with layouts)"
        )
    a, _, c, _, e, f = (float(v) for v in pixels.transform[:6])
    image = pixels.pixels[platform]
    h, w = image.shape[-2:]
    dates = pixels.dates[platform]
    when = pd.to_datetime([d.isoformat() for d in dates])
    bounds = (slice(c, c + w * a, a), slice(f + h * e, f, -e), slice(when.min(), when.max(), 1))
    days = np.array([(d - pd.Timestamp("1970-01-01").date()).days for d in dates], np.int64)
    return {
        "image": torch.from_numpy(image),
        "valid": torch.from_numpy(pixels.valid[platform]),
        "bounds": bounds,
        "crs": pyproj.CRS(pixels.crs),
        "dates": [d.isoformat() for d in dates],
        "time": torch.from_numpy(days),
        "bands": pixels.bands[platform],
        "stackid": pixels.stackid,
    }


class StacchipStackGeoSamples(torch.utils.data.Dataset):
    """Stacks of a stacks table as TorchGeo samples (``stack_sample``), one per row.

    Args:
        stacks: a stacks table (path or ``pyarrow.Table``).
        bands: band names per platform (dict) or for every platform (list).
        platform: which platform's members make ``image`` (default: each stack's anchor).
        resampling: ``nearest`` or ``bilinear`` for warped members' bands.
        transforms: TorchGeo-style ``transforms(sample) -> sample``.
    """

    def __init__(
        self,
        stacks: str | pa.Table,
        bands: dict[str, Sequence[str]] | Sequence[str] | None = None,
        platform: str | None = None,
        resampling: str = "nearest",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.table = stacks if isinstance(stacks, pa.Table) else read_stacks(str(stacks))
        self.reader = StackReader(bands, resampling)
        self.platform, self.transforms = platform, transforms

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = stack_sample(
            self.reader.read(self.table.slice(int(i), 1).to_pylist()[0]), self.platform
        )
        return self.transforms(sample) if self.transforms is not None else sample
