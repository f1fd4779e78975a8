"""Per-platform, per-band statistics over prechip cubes (``stacchip stats``).

Each cube gives exact per-band moments (count, mean, sum of squared deviations, two-pass
in float64); cubes are merged with Chan et al.'s pairwise update, which is numerically
stable (no sum-of-squares cancellation). Pixels equal to the platform's nodata value are
left out. Cubes are read in parallel.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stacchip_core.errors import ConfigError, CubeError, NotFoundError, OutputError
from stacchip_core.io.store import open_store
from stacchip_core.plugins import platforms
from stacchip_core.types import Report


@dataclass
class Moments:
    """Per-band pixel count, mean and sum of squared deviations: mergeable, so that chips,
    batches or processes can be summed in any order (Chan et al.)."""

    count: np.ndarray  # (bands,) int64
    mean: np.ndarray  # (bands,) float64
    m2: np.ndarray  # (bands,) float64: sum of squared deviations from the mean

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of pixels together (Chan et al.'s parallel update).

        Args:
            other: The moments of other pixels of the same bands.

        Returns:
            The combined moments.
        """
        n = self.count + other.count
        safe = np.where(n == 0, 1, n)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / safe
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        """The population standard deviation per band (0 for a band without pixels)."""
        return np.sqrt(self.m2 / np.where(self.count == 0, 1, self.count))


def moments(pixels: np.ndarray, nodata=None) -> Moments:
    """Exact moments per band of (N, bands, h, w) pixels, nodata left out.

    Args:
        pixels: The pixels, shape (N, bands, h, w).
        nodata: The nodata value, if any.

    Returns:
        Count, mean and sum of squared deviations per band.
    """
    bands = pixels.shape[1]
    count, mean, m2 = np.zeros(bands, np.int64), np.zeros(bands), np.zeros(bands)
    for b in range(bands):
        values = pixels[:, b].astype(np.float64).ravel()
        if nodata is not None:
            values = values[values != nodata]
        count[b] = values.size
        if values.size:
            mean[b] = values.mean()
            m2[b] = ((values - mean[b]) ** 2).sum()
    return Moments(count, mean, m2)


@dataclass(frozen=True)
class BandStats(Report):
    """One band of one platform over the cubes: ``count`` pixels (nodata left out), their
    ``mean`` and (population) ``std``."""

    count: int
    mean: float
    std: float


def band_stats(source: str | Path, workers: int = 4) -> dict[str, dict[str, BandStats]]:
    """{platform: {band: BandStats}} over every cube_*.npz under ``source``, platforms and
    (within one) bands in order.

    Args:
        source: A folder or ``s3://`` prefix of cubes.
        workers: Threads reading cubes.

    Returns:
        The statistics by platform and band.

    Raises:
        NotFoundError: If there is no cube under ``source``.
        CubeError: If cubes of one platform disagree on their bands.
    """
    store = open_store(source)
    keys = [k for k in store.list("", ".npz") if Path(k).name.startswith("cube_")]
    if not keys:
        raise NotFoundError(f"no cube_*.npz under {source}")
    declared = platforms()

    def one(key):
        with np.load(io.BytesIO(store.read_bytes(key))) as cube:
            platform = str(cube["platform"])
            nodata = declared[platform].nodata if platform in declared else None
            return platform, [str(b) for b in cube["bands"]], moments(cube["pixels"], nodata)

    totals: dict[str, tuple[list[str], Moments]] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for platform, bands, m in pool.map(one, keys):  # merged in key order: deterministic
            if platform in totals:
                known, acc = totals[platform]
                if known != bands:
                    raise CubeError(f"cubes of {platform} disagree on bands: {known} vs {bands}")
                totals[platform] = (known, acc.merge(m))
            else:
                totals[platform] = (bands, m)
    return {
        platform: {band: BandStats(int(m.count[i]), float(m.mean[i]), float(m.std[i]))
                   for i, band in enumerate(bands)}
        for platform, (bands, m) in sorted(totals.items())
    }


def stats_dict(stats: dict[str, dict[str, BandStats]]) -> dict[str, dict[str, dict]]:
    """The statistics as plain values, as JSON and YAML write them.

    Args:
        stats: Statistics by platform and band.

    Returns:
        The same, each band's statistics a dict.
    """
    return {p: {b: s.to_dict() if isinstance(s, BandStats) else dict(s) for b, s in bands.items()}
            for p, bands in stats.items()}


def dump(stats: dict[str, dict[str, BandStats]], path: str | Path) -> None:
    """Write stats as JSON, or YAML for a .yaml/.yml path (needs PyYAML).

    Args:
        stats: Statistics by platform and band.
        path: The file to write, atomically.

    Raises:
        ConfigError: If a YAML path is given and PyYAML is not installed.
        OutputError: If the file cannot be written.
    """
    path = Path(path)
    plain = stats_dict(stats)
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(
                "writing YAML needs PyYAML (pip install pyyaml); or use .json"
            ) from exc
        text = yaml.safe_dump(plain, sort_keys=False)
    else:
        text = json.dumps(plain, indent=2)
    from stacchip_core.io.files import publishing, remove_stale

    remove_stale(path.parent, recursive=False)  # what an earlier, killed or failed dump left
    try:
        with publishing(path) as tmp:  # atomic; on a full disk nothing is left behind
            tmp.write_text(text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
