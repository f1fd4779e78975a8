"""A chip's pixels with their georeferencing: what every reader returns.

A `Chip` is still a mapping of asset key -> array ``(bands, h, w)``, so code written
for the plain dicts of earlier versions keeps working (``chip["red"]``, ``dict(chip)``,
``np.savez(f, **chip)``), and it also knows where it lies: transform, CRS, bounds, the chip
id and a name for every band. ``chip.stack()`` is the band stack a model eats.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyproj
from affine import Affine

from stacchip_core.platform import Platform


def band_names(arrays: Mapping[str, np.ndarray], platform: Platform | None) -> tuple[str, ...]:
    """A name per band, across assets in order: the platform's canonical name where it
    declares one (NAIP's ``image`` asset gives red, green, blue, nir), else ``asset`` for a
    one-band asset and ``asset_N`` for band N of a multi-band one.

    Args:
        arrays: The chip's arrays by asset key, each (bands, h, w).
        platform: The chip's platform, if known.

    Returns:
        One name per band, in order.
    """
    names = []
    for key, array in arrays.items():
        count = array.shape[0]
        for index in range(1, count + 1):
            names.append(_band_name(platform, key, index, count))
    return tuple(names)


def _band_name(platform: Platform | None, key: str, index: int, count: int) -> str:
    if platform is not None:
        for band in platform.bands + platform.aux:
            # the platform's own key rule (aliases, case, CDSE's B04_10m), as readers resolve keys
            if band.index == index and platform.key_in((key,), band.name) == key:
                return band.name
    return key if count == 1 else f"{key}_{index}"


def stack_arrays(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """All bands of all assets in one ``(bands, h, w)`` array of their common dtype.

    Args:
        arrays: Arrays by asset key, each (bands, h, w).

    Returns:
        The bands, concatenated in order.
    """
    dtype = np.result_type(*[a.dtype for a in arrays.values()])
    return np.concatenate([a.astype(dtype, copy=False) for a in arrays.values()])


@dataclass(frozen=True, eq=False)
class Chip(Mapping[str, np.ndarray]):
    """The pixels of one chip: ``{asset key: (bands, h, w)}`` plus where they lie.

    ``transform`` maps the chip's own pixel (col, row) to ``crs`` coordinates (the grid's
    transform shifted to the chip's window); ``x``/``y`` are the chip's position in the
    item's grid; ``band_names`` names every band across assets, in order.
    """

    arrays: Mapping[str, np.ndarray]
    transform: Affine
    crs: pyproj.CRS
    item_id: str
    x: int
    y: int
    band_names: tuple[str, ...]
    platform: str | None = None
    datetime: str | None = None  # ISO 8601, UTC, when known
    nodata: float | int | None = None
    extra: dict = field(default_factory=dict)

    # the mapping protocol: asset key -> array, as before
    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def __repr__(self) -> str:
        assets = ", ".join(f"{k}: {a.dtype}{list(a.shape)}" for k, a in self.arrays.items())
        return f"Chip({self.chipid!r}, {{{assets}}}, crs={self.crs.to_string()!r})"

    @property
    def chipid(self) -> str:
        """``{item_id}-{x}-{y}``, as in the index."""
        return f"{self.item_id}-{self.x}-{self.y}"

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        first = next(iter(self.arrays.values()))
        return int(first.shape[-2]), int(first.shape[-1])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in ``crs``."""
        h, w = self.shape
        xs = (self.transform.c, self.transform.c + self.transform.a * w)
        ys = (self.transform.f, self.transform.f + self.transform.e * h)
        return min(xs), min(ys), max(xs), max(ys)

    def stack(self, bands: Sequence[str] | None = None) -> np.ndarray:
        """The bands as one ``(bands, h, w)`` array.

        All of them, or ``bands`` by name in that order.

        Args:
            bands: Band names to keep, in order; None: all.

        Returns:
            The stacked bands.

        Raises:
            KeyError: If the chip has no band of one of the names.
        """
        stacked = stack_arrays(self.arrays)
        if bands is None:
            return stacked
        missing = [b for b in bands if b not in self.band_names]
        if missing:
            raise KeyError(
                f"chip {self.chipid} has no band {missing} (bands: {', '.join(self.band_names)})"
            )
        return stacked[[self.band_names.index(b) for b in bands]]
