"""The chip index: its schema, its GeoParquet 1.1 metadata, reading and writing it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from stacchip_core.core.grid import CRS84
from stacchip_core.errors import IndexFormatError, NotFoundError

GEOPARQUET_VERSION = "1.1.0"

BBOX_TYPE = pa.struct(
    [("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]
)

SCHEMA = pa.schema(
    [
        ("chipid", pa.string()),
        ("platform", pa.string()),
        ("item_id", pa.string()),
        ("item_href", pa.string()),  # where the item JSON lives: the chipper finds pixels from here
        ("date", pa.date32()),
        ("datetime", pa.timestamp("us", tz="UTC")),
        ("chip_index_x", pa.int32()),
        ("chip_index_y", pa.int32()),
        ("chip_size", pa.int32()),
        ("cloud_cover_percentage", pa.float32()),  # a fraction 0-1; name kept from stacchip 0.1
        ("nodata_percentage", pa.float32()),  # a fraction 0-1
        ("geometry", pa.binary()),  # WKB polygon, OGC:CRS84
        ("bbox", BBOX_TYPE),  # GeoParquet 1.1 covering column
        # the item's COG layouts (core.layout): the same value on each of its rows, stored once
        # per row group by Parquet's dictionary encoding; null when not recorded
        ("layouts", pa.binary()),
    ]
)


def covering(bounds: np.ndarray) -> np.ndarray:
    """The bbox covering of chips with RFC 7946 ``bounds`` (n, 4): a chip that crosses the
    antimeridian (west > east) is covered by longitudes -180 to 180.

    GeoParquet readers (geopandas' ``bbox=``, DuckDB, pyarrow filters, row-group statistics)
    compare the covering columns as plain numbers: an xmin greater than xmax matches no box,
    and all 44 crossing chips of a real UTM zone 1 tile went missing that way. A covering that
    spans every longitude is always found; the geometry (split at 180 degrees) says exactly
    where the chip is, and the project's own filters test it.

    Args:
        bounds: Chip bounds (west, south, east, north), shape (n, 4).

    Returns:
        The coverings, float64 of shape (n, 4).
    """
    out = np.array(bounds, dtype=np.float64).reshape(-1, 4)
    crossing = out[:, 0] > out[:, 2]
    out[crossing, 0], out[crossing, 2] = -180.0, 180.0
    return out


def overall_bbox(bounds: np.ndarray) -> list[float]:
    """The file-level bbox: the union of the rows' coverings (so [-180, south, 180, north]
    when any chip crosses the antimeridian). It agrees with the covering columns and their
    statistics, so a reader that skips files by their bbox never skips a crossing chip.

    Args:
        bounds: Chip bounds (west, south, east, north), shape (n, 4).

    Returns:
        [west, south, east, north], or an empty list for no rows.
    """
    if not len(bounds):
        return []
    cover = covering(bounds)
    return [float(cover[:, 0].min()), float(cover[:, 1].min()), float(cover[:, 2].max()),
            float(cover[:, 3].max())]


def geo_metadata(bounds: np.ndarray, crossing: bool | None = None) -> dict:
    """The GeoParquet ``geo`` metadata for a table of chip footprints with ``bounds`` (n, 4).

    Footprints that cross the antimeridian are MultiPolygons. ``crossing`` says whether any
    does; by default any row whose bounds have west > east (RFC 7946 bounds, or coverings
    written before the coverings spanned -180 to 180).

    Args:
        bounds: Chip bounds or coverings, shape (n, 4).
        crossing: Whether any footprint is a MultiPolygon; None: judged from ``bounds``.

    Returns:
        The ``geo`` metadata, a JSON-ready dict.
    """
    bbox = overall_bbox(bounds)
    if crossing is None:
        crossing = bool(len(bounds) and (bounds[:, 0] > bounds[:, 2]).any())
    types = ["Polygon", "MultiPolygon"] if crossing else ["Polygon"]
    column = {
        "encoding": "WKB",
        "geometry_types": types,
        "crs": CRS84.to_json_dict(),
        "orientation": "counterclockwise",
        "edges": "planar",
        "covering": {
            "bbox": {
                "xmin": ["bbox", "xmin"],
                "ymin": ["bbox", "ymin"],
                "xmax": ["bbox", "xmax"],
                "ymax": ["bbox", "ymax"],
            }
        },
    }
    if bbox:
        column["bbox"] = bbox
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": column},
    }


def with_geo_metadata(table: pa.Table, bounds: np.ndarray | None = None) -> pa.Table:
    """Attach ``geo`` metadata, computing the overall bbox from the covering column if needed.

    Args:
        table: An index table.
        bounds: The rows' bounds, shape (n, 4); None: read from the ``bbox`` column.

    Returns:
        The table with its schema's ``geo`` metadata replaced.
    """
    crossing = None
    if bounds is None:
        bbox = table.column("bbox").combine_chunks()
        bounds = (
            np.stack(
                [
                    bbox.field(k).to_numpy(zero_copy_only=False)
                    for k in ("xmin", "ymin", "xmax", "ymax")
                ],
                axis=1,
            )
            if len(table)
            else np.empty((0, 4))
        )
        crossing = _has_multipolygons(table.column("geometry")) if len(table) else False
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(geo_metadata(bounds, crossing)).encode()
    return table.replace_schema_metadata(meta)


def _has_multipolygons(wkb: pa.ChunkedArray) -> bool:
    """Whether any WKB value is a MultiPolygon (type 6), read from the 5-byte WKB header of
    either byte order without parsing the geometries."""
    head = pc.binary_slice(wkb, 0, 5)
    multi = pa.array([b"\x01\x06\x00\x00\x00", b"\x00\x00\x00\x00\x06"], pa.binary())
    return bool(pc.any(pc.is_in(head, multi)).as_py())


def build_table(
    *,
    item_id: str,
    item_href: str | None,
    platform: str,
    when: datetime,
    xs: np.ndarray,
    ys: np.ndarray,
    chip_size: int,
    cloud: np.ndarray,
    nodata: np.ndarray,
    polygons: np.ndarray,
    bounds: np.ndarray,
    layouts: bytes | None = None,
) -> pa.Table:
    """One row per chip, from arrays; no per-chip Python work but the chip id strings.

    Args:
        item_id: The item's id.
        item_href: Where the item's JSON lies, if anywhere.
        platform: The platform's name.
        when: The item's datetime (naive means UTC).
        xs: The chips' columns in the grid.
        ys: The chips' rows in the grid.
        chip_size: Chip side in pixels.
        cloud: Per chip, the cloud fraction.
        nodata: Per chip, the nodata fraction.
        polygons: Per chip, the footprint in OGC:CRS84.
        bounds: Per chip, RFC 7946 bounds, shape (n, 4).
        layouts: The item's encoded COG layouts, if recorded.

    Returns:
        The index table, with ``geo`` metadata.
    """
    n = len(xs)
    cover = covering(bounds)  # crossing chips span -180..180: see covering()
    # numpy datetimes: converting Python datetime objects would make pyarrow import pandas
    utc = (when.astimezone(UTC) if when.tzinfo else when).replace(tzinfo=None)
    stamp = np.datetime64(utc, "us")
    xs_str = xs.astype(str)
    ys_str = ys.astype(str)
    chipids = np.char.add(np.char.add(np.char.add(f"{item_id}-", xs_str), "-"), ys_str)
    columns = {
        "chipid": pa.array(chipids.tolist() if n else [], pa.string()),
        "platform": pa.array([platform] * n, pa.string()),
        "item_id": pa.array([item_id] * n, pa.string()),
        "item_href": pa.array([item_href] * n, pa.string()),
        "date": pa.array(np.full(n, stamp.astype("datetime64[D]"))).cast(pa.date32()),
        "datetime": pa.array(np.full(n, stamp)).cast(pa.timestamp("us", tz="UTC")),
        "chip_index_x": pa.array(xs, pa.int32()),
        "chip_index_y": pa.array(ys, pa.int32()),
        "chip_size": pa.array(np.full(n, chip_size), pa.int32()),
        "cloud_cover_percentage": pa.array(cloud, pa.float32()),
        "nodata_percentage": pa.array(nodata, pa.float32()),
        "geometry": pa.array(shapely.to_wkb(polygons).tolist() if n else [], pa.binary()),
        "bbox": pa.StructArray.from_arrays(
            [pa.array(cover[:, i], pa.float64()) for i in range(4)], fields=list(BBOX_TYPE)
        ),
        "layouts": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([layouts], pa.binary())
        ).cast(pa.binary())
        if n
        else pa.array([], pa.binary()),
    }
    table = pa.table(columns, schema=SCHEMA)
    return with_geo_metadata(table, bounds)


def index_bytes(table: pa.Table) -> bytes:
    """An index table as GeoParquet file contents.

    Args:
        table: An index table; ``geo`` metadata is added when missing.

    Returns:
        The zstd-compressed Parquet file's bytes.
    """
    if b"geo" not in (table.schema.metadata or {}):
        table = with_geo_metadata(table)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_index(table: pa.Table, path: str | Path) -> Path:
    """Write an index table as a GeoParquet file, atomically (temp file, then rename).

    Args:
        table: An index table.
        path: The file to write.

    Returns:
        ``path``.
    """
    from stacchip_core.io.store import LocalStore

    path = Path(path)
    LocalStore(path.parent).write_bytes(path.name, index_bytes(table))
    return path


def read_index(path: str | Path, **kwargs) -> pa.Table:
    """Read an index (a file, or a folder of files) as one pyarrow Table.

    Args:
        path: An index file or a folder of index files.
        **kwargs: Passed to ``pyarrow.parquet.read_table`` (columns, filters...).

    Returns:
        The index table.
    """
    return pq.read_table(path, **kwargs)


def find_row(path: str | Path, row: int | None = None, chipid: str | None = None) -> dict:
    """One row of an index (by row number or chip id) as a dict.

    Args:
        path: An index file or a folder of index files.
        row: The row number (used when ``chipid`` is None).
        chipid: The chip's id.

    Returns:
        The row's values by column name.

    Raises:
        IndexFormatError: If ``path`` is not a readable index.
        NotFoundError: If the chip id is not in the index or the row is out of range.
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexFormatError(f"{path} is not a readable index: {exc}") from exc
    if chipid is not None:
        table = table.filter(pc.equal(table.column("chipid"), chipid))
        if len(table) == 0:
            raise NotFoundError(f"chip {chipid!r} is not in {path}")
        return table.slice(0, 1).to_pylist()[0]
    if row is None or not 0 <= row < len(table):
        raise NotFoundError(f"row {row} is out of range: {path} has {len(table)} rows")
    return table.slice(row, 1).to_pylist()[0]
