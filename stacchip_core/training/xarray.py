"""Chips as ``xarray.DataArray``s, and model outputs written back where their chip came from.

``chip_dataarray(row)`` is a chip's pixels with dims (band, y, x), pixel-centre coordinates in
the item's CRS, a ``time`` coordinate and a CF ``spatial_ref`` coordinate (``crs_wkt`` and
``GeoTransform``, which rioxarray and GDAL read). ``prediction_dataarray`` and
``write_prediction`` georeference any array of the chip's height and width (or an integer
fraction of it, for outputs at a coarser stride), with any number of channels, on the chip's
window of the item grid. Needs the ``xarray`` extra for DataArrays; GeoTIFFs need only rasterio.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyproj
import rasterio
from affine import Affine

from stacchip_core.core.headers import item_grid
from stacchip_core.core.read import grid_for_row
from stacchip_core.errors import ShapeError
from stacchip_core.training.chipread import ChipReader


@dataclass(frozen=True)
class ChipGeoref:
    """Where a chip lies: its pixel grid (``transform`` of its top-left pixel, ``crs``,
    ``height`` x ``width``) and its acquisition ``time``."""

    transform: Affine
    crs: pyproj.CRS
    height: int
    width: int
    time: datetime | None

    def scaled(self, height: int, width: int) -> ChipGeoref:
        """The same footprint on a ``height`` x ``width`` grid (an integer fraction of it).

        Args:
            height: The new grid's rows.
            width: The new grid's columns.

        Returns:
            The georeference on the new grid (this one when the size is the same).

        Raises:
            ShapeError: If the size is not the chip's or an integer fraction of it.
        """
        if (height, width) == (self.height, self.width):
            return self
        if height < 1 or width < 1 or self.height % height or self.width % width:
            raise ShapeError(
                f"an output of {height} x {width} px does not fit a chip of "
                f"{self.height} x {self.width} px (use the chip's size or an integer fraction)"
            )
        t = self.transform @ Affine.scale(self.width / width, self.height / height)
        return ChipGeoref(t, self.crs, height, width, self.time)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre x and y coordinates (1-D, north-up grids).

        Returns:
            The x coordinates (``width``) and the y coordinates (``height``), in the CRS.
        """
        t = self.transform
        x = t.c + (np.arange(self.width) + 0.5) * t.a
        y = t.f + (np.arange(self.height) + 0.5) * t.e
        return x, y


def chip_georef(row: dict, mountpath=None, item=None) -> ChipGeoref:
    """The grid window of the chip an index row names (``chip_index_x``/``_y``, ``chip_size``)
    on its item's finest grid, as the chipper reads it: from the row's layouts when they hold
    the grid, else from ``item`` or the item JSON.

    Args:
        row: An index row.
        mountpath: A local mirror that remote hrefs map to.
        item: The row's STAC item, if already loaded.

    Returns:
        The chip's georeference and time (naive UTC).

    Raises:
        IndexFormatError: If the row needs its item JSON and has no ``item_href``.
        IndexError: If the chip is outside its item's grid.
    """
    grid = item_grid(item, int(row["chip_size"]), mountpath=mountpath) if item is not None else \
        grid_for_row(row, mountpath)
    col, row_off, w, h = grid.window(int(row["chip_index_x"]), int(row["chip_index_y"]))
    when = row.get("datetime")
    if isinstance(when, datetime) and when.tzinfo is not None:
        when = when.replace(tzinfo=None)  # numpy datetime64 is naive (UTC)
    return ChipGeoref(grid.transform @ Affine.translation(col, row_off), grid.crs, h, w, when)


def _dataarray(data: np.ndarray, geo: ChipGeoref, names: Sequence[str], attrs: dict):
    import xarray as xr

    x, y = geo.coords()
    coords = {
        "band": list(names),
        "y": y,
        "x": x,
        "spatial_ref": (
            (),
            0,
            {
                "crs_wkt": geo.crs.to_wkt(),
                "spatial_ref": geo.crs.to_wkt(),
                "GeoTransform": " ".join(str(v) for v in geo.transform.to_gdal()),
            },
        ),
    }
    if geo.time is not None:
        coords["time"] = np.datetime64(geo.time, "ns")
    da = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords=coords,
        attrs={"crs": geo.crs.to_string(), "transform": tuple(geo.transform)[:6], **attrs},
    )
    da.x.attrs.update(units="m", axis="X")
    da.y.attrs.update(units="m", axis="Y")
    return da


def chip_dataarray(
    row: dict, bands: Sequence[str] | None = None, mountpath=None, reader: ChipReader | None = None
):
    """A chip as ``xarray.DataArray`` (band, y, x) of float32, bands in the platform's
    canonical order (or ``bands``), with coordinates, CRS and time; ``attrs`` hold
    ``chipid``, ``platform``, ``item_id``, ``crs`` and ``transform``.

    Args:
        row: An index row.
        bands: Band names to read (default: the platform's canonical bands).
        mountpath: A local mirror that remote hrefs map to.
        reader: A ChipReader to reuse (its bands win over ``bands``).

    Returns:
        The chip's DataArray.

    Raises:
        PlatformError: If no bands are given and the row's platform is not installed.
    """
    reader = reader or ChipReader(list(bands) if bands else None, mountpath)
    data = reader.read(row)
    geo = chip_georef(row, mountpath)
    return _dataarray(
        data,
        geo,
        reader.band_names(row["platform"]),
        {"chipid": row["chipid"], "platform": row["platform"], "item_id": row["item_id"]},
    )


def _as_chw(output) -> np.ndarray:
    data = np.asarray(output.detach().cpu().numpy() if hasattr(output, "detach") else output)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ShapeError(
            "a prediction must be (height, width) or (channels, height, width), got shape "
            f"{data.shape}"
        )
    return data


def prediction_dataarray(output, row: dict, names: Sequence[str] | None = None, mountpath=None,
                         georef: ChipGeoref | None = None):
    """A model's output for the chip of ``row`` (``(C, H, W)`` or ``(H, W)``, numpy or torch;
    H x W the chip's size or an integer fraction of it) as a georeferenced DataArray.

    Args:
        output: The model's output, numpy or torch.
        row: The chip's index row.
        names: One name per channel (default: ``channel_0``, ...).
        mountpath: A local mirror that remote hrefs map to.
        georef: The chip's georeference, if already known.

    Returns:
        The output as a DataArray (band, y, x) on the chip's footprint.

    Raises:
        ShapeError: If the output is not 2-D or 3-D, does not fit the chip, or the names do
            not match the channels.
    """
    data = _as_chw(output)
    geo = (georef or chip_georef(row, mountpath)).scaled(data.shape[1], data.shape[2])
    names = list(names) if names is not None else [f"channel_{i}" for i in range(data.shape[0])]
    if len(names) != data.shape[0]:
        raise ShapeError(f"{len(names)} channel names for {data.shape[0]} channels")
    return _dataarray(data, geo, names, {"chipid": row["chipid"]})


def write_prediction(
    path: str | Path,
    output,
    row: dict,
    names: Sequence[str] | None = None,
    mountpath=None,
    georef: ChipGeoref | None = None,
    nodata=None,
) -> Path:
    """Write a model's output for the chip of ``row`` as a GeoTIFF on the chip's window
    (atomically: a temporary name, then renamed). Channel names become band descriptions.

    Args:
        path: The GeoTIFF to write; its parent folders are created.
        output: The model's output, numpy or torch, ``(C, H, W)`` or ``(H, W)``.
        row: The chip's index row.
        names: One name per channel, written as band descriptions.
        mountpath: A local mirror that remote hrefs map to.
        georef: The chip's georeference, if already known.
        nodata: The nodata value, if any.

    Returns:
        ``path``.

    Raises:
        ShapeError: If the output is not 2-D or 3-D or does not fit the chip.
    """
    data = _as_chw(output)
    geo = (georef or chip_georef(row, mountpath)).scaled(data.shape[1], data.shape[2])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.tif")
    try:
        with rasterio.open(
            tmp,
            "w",
            driver="GTiff",
            count=data.shape[0],
            height=data.shape[1],
            width=data.shape[2],
            dtype=data.dtype,
            crs=geo.crs.to_wkt(),
            transform=geo.transform,
            nodata=nodata,
            compress="deflate",
        ) as dst:
            dst.write(data)
            for i, name in enumerate(names or [], start=1):
                dst.set_band_description(i, name)
            dst.update_tags(chipid=row["chipid"])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def stack_dataarray(stack, platform: str | None = None, mountpath=None):
    """A stack's members of one platform (default: the anchor's) as ``xarray.DataArray``
    ``(time, band, y, x)`` of float32, NaN where not valid, with the members' dates as ``time``,
    pixel-centre coordinates and the CRS of the anchor window; ``attrs`` hold ``stackid``,
    ``platform`` and ``chipids``.

    Args:
        stack: A ``StackPixels`` (``StackReader.read``).
        platform: Which platform's members (the anchor's by default).
        mountpath: Where item hrefs map to, when the stack does not know its CRS and the first
            member's item JSON must say it.

    Returns:
        The DataArray.

    Raises:
        ShapeError: The stack has no member of ``platform``.
    """
    import xarray as xr

    name = platform or stack.anchor
    if name not in stack.pixels:
        raise ShapeError(
            f"stack {stack.stackid} has no member of {name!r} (it has {', '.join(stack.pixels)})"
        )
    data = np.where(stack.valid[name][:, None], stack.pixels[name], np.nan).astype(np.float32)
    _, _, h, w = data.shape
    if stack.crs and stack.transform:
        geo = ChipGeoref(
            Affine(*stack.transform[:6]), pyproj.CRS.from_user_input(stack.crs), h, w, None
        )
    else:  # an exact series built without CRS: its first member's item says where it lies
        geo = chip_georef(stack.rows[stack.anchor][0], mountpath)
    one = _dataarray(data[0], geo, stack.bands[name], {})
    times = np.array([np.datetime64(d, "ns") for d in stack.dates[name]])
    da = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={
            "time": times,
            "band": one.band,
            "y": one.y,
            "x": one.x,
            "spatial_ref": one.spatial_ref,
        },
        attrs={
            **one.attrs,
            "stackid": stack.stackid,
            "platform": name,
            "chipids": list(stack.members.get(name, [])),
        },
    )
    return da
