"""What a plugin declares about one imagery platform."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pystac

# Copernicus Data Space names assets by band and resolution: B04_10m, B04_20m, SCL_20m, SCL_60m
_RESOLUTION_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<res>\d+(?:\.\d+)?)m$", re.IGNORECASE)


@dataclass(frozen=True)
class Band:
    """One canonical band (or auxiliary layer) of a platform.

    ``aliases`` are the other asset keys that catalogs use for it (Earth Search calls
    the Sentinel-2 red band ``red``, Planetary Computer ``B04``). ``index`` is the
    1-based band inside the asset, for multi-band assets such as NAIP's ``image``.
    """

    name: str
    aliases: tuple[str, ...] = ()
    index: int = 1
    asset: str | None = None  # asset key when it differs from the band name (multi-band assets)

    @property
    def keys(self) -> tuple[str, ...]:
        """Asset keys to try, in order."""
        first = (self.asset,) if self.asset else (self.name,)
        return first + tuple(k for k in self.aliases if k not in first)


@dataclass(frozen=True)
class Platform:
    """A platform a plugin provides.

    ``name`` names folders in buckets and the ``platform`` column of the index.
    ``collections`` are the STAC collection ids whose items belong to it.
    ``bands`` are the model input bands in canonical order; ``aux`` are layers that are
    read for statistics but are not model input (SCL, QA); ``named`` are other bands a reader
    may ask for by name, neither model input nor masks (Sentinel-2's 60 m ``coastal`` is
    ``B01`` on Planetary Computer and CDSE). ``nodata`` is the pixel value
    that marks missing data in the bands (None when the data has none).
    """

    name: str
    collections: tuple[str, ...] = ()
    bands: tuple[Band, ...] = ()
    aux: tuple[Band, ...] = ()
    nodata: float | int | None = None
    chip_size: int = 256
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    named: tuple[Band, ...] = ()

    @property
    def band_names(self) -> list[str]:
        """The model bands' canonical names, in order."""
        return [b.name for b in self.bands]

    def find(self, name: str) -> Band | None:
        """The band, aux layer or other named band called ``name`` (canonical name or any alias).

        Args:
            name: A canonical band name or an alias.

        Returns:
            The band, or None if the platform declares none of that name.
        """
        for band in self.bands + self.aux + self.named:
            if name == band.name or name in band.keys:
                return band
        return None

    def asset_key(self, item: pystac.Item, name: str) -> str | None:
        """The key under which ``item`` holds band/layer ``name`` (see ``key_in``).

        Args:
            item: The STAC item.
            name: A canonical band name, an alias, or an asset key.

        Returns:
            The matching asset key, or None.
        """
        return self.key_in(item.assets, name)

    def key_in(self, keys: Iterable[str], name: str) -> str | None:
        """The one of ``keys`` (an item's asset keys, or those an index recorded) that holds
        band/layer ``name``, trying every alias: the one band resolver of every reader.

        Unknown names are looked up as plain asset keys. Matching ignores case, since
        catalogs disagree (``scl`` vs ``SCL``). When no key matches exactly, keys with a
        resolution suffix match (Copernicus Data Space: ``B04_10m``, ``SCL_20m``), the
        finest resolution of a band first.

        Args:
            keys: the asset keys to choose from.
            name: a canonical band name, an alias, or an asset key.

        Returns:
            The matching key, or None.
        """
        keys = list(keys)
        band = self.find(name)
        candidates = band.keys if band else (name,)
        present = set(keys)
        lower = {k.lower(): k for k in keys}
        for key in candidates:
            if key in present:
                return key
            if key.lower() in lower:
                return lower[key.lower()]
        # resolution-suffixed keys (CDSE: B04_10m, B04_20m, B04_60m): the finest of a band wins
        suffixed = resolution_suffixed(keys)
        for key in candidates:
            found = suffixed.get(key.lower())
            if found:
                return found
        return None

    def asset_keys(self, item: pystac.Item) -> dict[str, str]:
        """Canonical band name -> asset key, for the bands this item has.

        Args:
            item: The STAC item.

        Returns:
            The asset key of each of the platform's bands that ``item`` holds.
        """
        found = {}
        for band in self.bands:
            key = self.asset_key(item, band.name)
            if key is not None:
                found[band.name] = key
        return found


def resolution_suffixed(keys) -> dict[str, str]:
    """``{base key lowercased: finest-resolution key}`` for keys like ``B04_10m``/``B04_20m``.

    Args:
        keys: Asset keys; those without a resolution suffix are ignored.

    Returns:
        The finest-resolution key of each lowercased base key.
    """
    best: dict[str, tuple[float, str]] = {}
    for key in keys:
        m = _RESOLUTION_SUFFIX.match(key)
        if m:
            base, res = m["base"].lower(), float(m["res"])
            if base not in best or res < best[base][0]:
                best[base] = (res, key)
    return {base: key for base, (_, key) in best.items()}


def unresolved_bands_message(item: pystac.Item, platform: Platform | None) -> str:
    """One line saying that no band of ``platform`` resolves in ``item``, with its asset keys.

    Args:
        item: The STAC item.
        platform: The platform whose bands were looked for, if any.

    Returns:
        The message, one line.
    """
    what = (
        f"none of platform {platform.name!r}'s bands ({', '.join(platform.band_names)})"
        if platform and platform.bands
        else "no raster asset"
    )
    return (
        f"item {item.id!r}: {what} resolves to an asset; its asset keys are: "
        f"{', '.join(item.assets) or '(none)'}; name assets explicitly or add aliases in the plugin"
    )
