"""Pre-cut, shuffled training cubes from a merged index (``stacchip prechip``).

The kept chips of each platform are put in a seeded random permutation (each chip once).
Cube ``k`` of a platform owns the permutation block ``[k*B, (k+1)*B)`` with
``B = cube_size + spares``: its first ``cube_size`` chips that read, so a chip that fails is
replaced by the next chip of the same block. Cubes never share chips, so jobs are
independent and reruns give the same cubes; the unused spares (``spares / B`` of the
chips, 6 % by default) are not used. A cube whose block has too many failures is reported
and not written. Cubes are ``{version}/{platform}/cube_{k:06d}.npz`` with:

- ``pixels`` float32 (N, bands, cs, cs), bands in the platform's canonical order (``bands``)
- ``lat_norm``, ``lon_norm``: (N, 2) sin and cos of the chip centre's latitude / longitude
- ``week_norm``, ``hour_norm``: (N, 2) sin and cos of the ISO week (/52) and hour (/24);
  noon for items without a time of day
- ``chipids``, ``platform``, ``bands``: every pixel is traceable to its source chip
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pyarrow as pa

from stacchip_core.errors import CubeError, IndexFormatError, StacchipError
from stacchip_core.io import keys
from stacchip_core.io.store import open_store
from stacchip_core.training.chipread import ChipReader
from stacchip_core.types import Report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChipFilter:
    """Which rows of an index to keep: platforms, at most this nodata and cloud fraction,
    a date window (inclusive) and a lon/lat box the chips intersect. ``load`` pushes it
    down into the Parquet read (core.query); ``apply`` filters a table already in memory."""

    platforms: tuple[str, ...] | None = None
    max_nodata: float = 0.05
    max_cloud: float | None = None
    start: date | None = None
    end: date | None = None
    bbox: tuple[float, float, float, float] | None = None  # lon/lat, chips intersecting it

    def apply(self, table: pa.Table) -> pa.Table:
        """The rows of ``table`` this filter keeps.

        Args:
            table: An index table.

        Returns:
            The kept rows.
        """
        # here, not at import: a DataLoader worker loads this module and filters nothing
        # (pyarrow.compute, shapely and the catalog's pystac: 0.1 s of CPU)
        import pyarrow.compute as pc
        import shapely

        from stacchip_core.io.catalog import bbox_candidates

        mask = pc.less_equal(table["nodata_percentage"], self.max_nodata)
        if self.max_cloud is not None:
            mask = pc.and_(mask, pc.less_equal(table["cloud_cover_percentage"], self.max_cloud))
        if self.platforms:
            mask = pc.and_(mask, pc.is_in(table["platform"], pa.array(list(self.platforms))))
        if self.start is not None:
            mask = pc.and_(
                mask, pc.greater_equal(table["date"], pa.scalar(self.start, pa.date32()))
            )
        if self.end is not None:
            mask = pc.and_(mask, pc.less_equal(table["date"], pa.scalar(self.end, pa.date32())))
        if self.bbox is None:
            return table.filter(mask)
        # the covering narrows the candidates, the footprints decide: a chip that crosses the
        # antimeridian is covered by -180..180 and kept only if its geometry meets the box
        table = table.filter(mask)
        b = table["bbox"].combine_chunks()
        bounds = np.stack([b.field(k).to_numpy(zero_copy_only=False)
                           for k in ("xmin", "ymin", "xmax", "ymax")], axis=1).reshape(-1, 4)
        cand = np.flatnonzero(bbox_candidates(bounds, self.bbox))
        geoms = shapely.from_wkb(
            table["geometry"].take(pa.array(cand, pa.int64())).to_numpy(zero_copy_only=False)
        )
        return table.take(
            pa.array(cand[shapely.intersects(geoms, shapely.box(*self.bbox))], pa.int64())
        )

    def load(self, location: str) -> pa.Table:
        """The rows of the index at ``location`` this filter keeps, reading only the row
        groups whose statistics allow a match (core.query): a region of a large index
        costs that region. The same rows as ``apply(load_index(location))``.

        Args:
            location: An index file, or a folder or prefix of index files.

        Returns:
            The kept rows.

        Raises:
            NotFoundError: If there is no index at ``location``.
            ConfigError: If the filter's box or dates are out of range.
        """
        from stacchip_core.core.query import query

        when = (self.start, self.end) if self.start is not None or self.end is not None else None
        result = query(location, bbox=self.bbox, datetime_range=when, platforms=self.platforms,
                       max_cloud=self.max_cloud, max_nodata=self.max_nodata, footprints=False)
        return self.apply(result.table)


@dataclass(frozen=True)
class Cube:
    """One output cube of prechip: ``rows`` of the index (a block of the platform's
    shuffled rows), written as cube ``number`` of ``platform``."""

    platform: str
    number: int  # k: the cube's number within its platform
    rows: np.ndarray  # the row numbers of its permutation block, in order


def load_index(location: str) -> pa.Table:
    """The index at ``location`` as one table (never through obstore: see io.objects).

    Args:
        location: An index file, local or remote.

    Returns:
        The index table.

    Raises:
        IndexFormatError: If the file is not a readable index.
        ObjectError: If the file cannot be read.
    """
    from stacchip_core.io.objects import read_table

    try:  # never through obstore: workers forked after this keep its fast path (io.objects)
        return read_table(location)
    except pa.ArrowInvalid as exc:
        raise IndexFormatError(f"{location} is not a readable index: {exc}") from exc


def load_filtered(index, chip_filter: ChipFilter | None = None) -> pa.Table:
    """The rows of an index that ``chip_filter`` keeps (all rows without one).

    Args:
        index: An index file, folder or URL, or an index table.
        chip_filter: The rows to keep; on a file, folder or URL it reads only the row groups
            (and partition files) that may match (``ChipFilter.load``).

    Returns:
        The kept rows.

    Raises:
        IndexFormatError: If the file is not a readable index.
        ObjectError: If the file cannot be read.
    """
    if isinstance(index, pa.Table):
        return chip_filter.apply(index) if chip_filter is not None else index
    return chip_filter.load(str(index)) if chip_filter is not None else load_index(str(index))


def plan_cubes(
    table: pa.Table, cube_size: int = 128, spares: int | None = None, seed: int = 42
) -> list[Cube]:
    """Every cube of every platform (platforms by name, then cube number).

    Args:
        table: The filtered index.
        cube_size: Chips per cube.
        spares: Extra chips per cube that replace failed ones (default: cube_size // 16).
        seed: The seed of the chips' permutation.

    Returns:
        The cubes; a platform's chips that fill no whole block make no cube.
    """
    spares = max(1, cube_size // 16) if spares is None else spares
    block = cube_size + spares
    platform_col = np.asarray(table["platform"].to_pylist(), dtype=object)
    cubes = []
    for name in sorted(set(platform_col)):
        rows = np.flatnonzero(platform_col == name)
        # chips in id order first, so the permutation does not depend on file order
        ids = np.asarray(table["chipid"].take(pa.array(rows)).to_pylist(), dtype=object)
        rows = rows[np.argsort(ids, kind="stable")]
        order = rows[np.random.default_rng([seed, _stable_hash(name)]).permutation(len(rows))]
        for k in range(len(order) // block):
            cubes.append(Cube(name, k, order[k * block:(k + 1) * block]))
    return cubes


def _stable_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def cube_key(version: str, cube: Cube) -> str:
    """The store key of ``cube``: ``{version}/{platform}/cube_{number:06d}.npz``.

    Args:
        version: The cubes' folder (a plain name).
        cube: The cube.

    Returns:
        The key.

    Raises:
        UnsafeKeyError: If ``version`` is not a plain name.
    """
    # the version is an option (refused when unsafe), the platform comes from the index (encoded)
    return keys.join(keys.name(version, "--version"), keys.segment(cube.platform, "platform"),
                     f"cube_{cube.number:06d}.npz")


def _norms(rows: list[dict]) -> dict[str, np.ndarray]:
    import shapely

    centres = shapely.centroid(shapely.from_wkb([r["geometry"] for r in rows]))
    lon, lat = np.radians(shapely.get_x(centres)), np.radians(shapely.get_y(centres))
    weeks, hours = [], []
    for r in rows:
        when = r.get("datetime")
        if isinstance(when, datetime):
            hours.append(when.hour + when.minute / 60)
            day = when.date()
        else:
            day = r["date"]
            hours.append(12.0)
        weeks.append(day.isocalendar()[1])
    week = 2 * np.pi * np.asarray(weeks, float) / 52
    hour = 2 * np.pi * np.asarray(hours, float) / 24
    pair = lambda a: np.stack([np.sin(a), np.cos(a)], axis=1).astype(np.float32)
    return {
        "lat_norm": pair(lat),
        "lon_norm": pair(lon),
        "week_norm": pair(week),
        "hour_norm": pair(hour),
    }


def build_cube(
    table: pa.Table, cube: Cube, cube_size: int, reader: ChipReader, workers: int = 4
) -> tuple[dict, list[str]]:
    """Read a cube's chips (in parallel); returns (arrays, failed chip ids).

    Args:
        table: The filtered index.
        cube: The cube to read.
        cube_size: Chips per cube.
        reader: The reader of the chips.
        workers: Threads when chips are read one by one (after a failure).

    Returns:
        The cube's arrays (``pixels``, norms, ``chipids``, ``platform``, ``bands``) and one
        line per failed chip.

    Raises:
        CubeError: If more chips failed than the cube has spares.
    """
    rows = table.take(pa.array(cube.rows)).to_pylist()

    def read(row):
        try:
            return reader.read(row), None
        except Exception as exc:  # noqa: BLE001 - any read failure: report it, use a spare
            return None, f"{row['chipid']}: {exc}"

    try:  # the whole cube at once: all its tiles fetched concurrently (rows with COG layouts)
        results = [(pixels, None) for pixels in reader.read_many(rows)]
    except Exception:  # noqa: BLE001 - some chip failed: read one by one to learn which, spares replace them
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(pool.map(read, rows))
    kept: list[tuple[dict, np.ndarray]] = []
    failed: list[str] = []
    for row, (pixels, error) in zip(rows, results):
        if error:
            failed.append(error)
            log.warning("chip failed, replaced by a spare: %s", error)
        elif len(kept) < cube_size:
            kept.append((row, pixels))
    if len(kept) < cube_size:
        raise CubeError(f"cube {cube.platform}/{cube.number}: {len(failed)} chips failed, "
                        f"more than its {len(rows) - cube_size} spares")
    chosen = [r for r, _ in kept]
    arrays = {"pixels": np.stack([p for _, p in kept]), **_norms(chosen),
              "chipids": np.asarray([r["chipid"] for r in chosen]),
              "platform": np.asarray(cube.platform),
              "bands": np.asarray(reader.band_names(cube.platform))}
    return arrays, failed


@dataclass(frozen=True)
class PrechipReport(Report):
    """What one prechip job did: ``chips`` in the filtered index and ``cubes_total`` cubes
    planned in all; this job's cube keys ``written``, ``skipped`` (there already) and
    ``failed`` (one line each, why); ``failed_chips``: chips replaced by spares."""

    chips: int
    cubes_total: int
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    failed_chips: list[str] = field(default_factory=list)


def prechip(
    index: str,
    target: str,
    *,
    version: str = "v1",
    job: int = 0,
    cubes_per_job: int = 1,
    cube_size: int = 128,
    spares: int | None = None,
    seed: int = 42,
    chip_filter: ChipFilter = ChipFilter(),
    workers: int = 4,
    mountpath=None,
) -> PrechipReport:
    """Write the cubes of job ``job`` (cubes ``job*cubes_per_job`` .. ``+cubes_per_job``).

    Args:
        index: The index file, or a folder or prefix of index files.
        target: The store to write to (folder or ``s3://`` prefix).
        version: The cubes' folder in the store (a plain name).
        job: The job's number.
        cubes_per_job: Cubes each job writes.
        cube_size: Chips per cube.
        spares: Extra chips per cube that replace failed ones.
        seed: The seed of the chips' permutation.
        chip_filter: The index rows to use.
        workers: Threads when chips are read one by one.
        mountpath: A local mirror that remote hrefs map to.

    Returns:
        What the job wrote, skipped and failed.

    Raises:
        UnsafeKeyError: If ``version`` is not a plain name.
        ConfigError: If the target store's location is not supported.
    """
    keys.name(version, "--version")  # before any work
    table = chip_filter.load(index)
    cubes = plan_cubes(table, cube_size, spares, seed)
    mine = cubes[job * cubes_per_job:(job + 1) * cubes_per_job]
    store = open_store(target)
    store.remove_partial(version)  # cubes a killed job was writing (io.files: only stale ones)
    reader = ChipReader(mountpath=mountpath)
    report = PrechipReport(len(table), len(cubes))  # its lists fill as the cubes go
    for cube in mine:
        key = cube_key(version, cube)
        if store.exists(key):
            report.skipped.append(key)
            continue
        try:
            arrays, failed = build_cube(table, cube, cube_size, reader, workers)
        except StacchipError as exc:
            report.failed.append(f"{key}: {exc}")
            log.error("%s", exc)
            continue
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        store.write_bytes(key, buffer.getvalue())
        report.written.append(key)
        report.failed_chips.extend(failed)
        log.info("wrote %s (%d chips, %d replaced)", key, cube_size, len(failed))
    reader.close()
    return report


def prechip_job(job: int, **kwargs) -> PrechipReport:
    """One prechip job, picklable for a cluster.

    Args:
        job: The job's number.
        **kwargs: The keywords of ``prechip``, ``index`` and ``target`` included.

    Returns:
        The job's report.
    """
    return prechip(kwargs.pop("index"), kwargs.pop("target"), job=job, **kwargs)


def count_jobs(index: str, cube_size: int, cubes_per_job: int, spares: int | None, seed: int,
               chip_filter: ChipFilter) -> int:
    """How many prechip jobs cover every cube of the filtered index.

    Args:
        index: The index file, or a folder or prefix of index files.
        cube_size: Chips per cube.
        cubes_per_job: Cubes each job writes.
        spares: Extra chips per cube that replace failed ones.
        seed: The seed of the chips' permutation.
        chip_filter: The index rows to use.

    Returns:
        The number of jobs.
    """
    cubes = len(plan_cubes(chip_filter.load(index), cube_size, spares, seed))
    return -(-cubes // cubes_per_job)
