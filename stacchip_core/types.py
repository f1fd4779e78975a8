"""The protocols a plugin sees: what a sample, a store and a catalog can do.

Plugins import them from the package root (``from stacchip_core import Catalog, Sample, Store``)
to type their hook implementations; stacchip's own classes satisfy them structurally.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pystac
    import shapely


@runtime_checkable
class Sample(Protocol):
    """One sample location of a processing job: row ``index`` of the sample source, its
    ``geometry`` in EPSG:4326 (None when the source has none) and its ``properties``."""

    @property
    def index(self) -> int: ...
    @property
    def geometry(self) -> shapely.Geometry | None: ...
    @property
    def properties(self) -> Mapping[str, Any]: ...


@runtime_checkable
class Store(Protocol):
    """A target for a processor's outputs: a local folder or an object-store prefix.

    Keys are ``/``-separated and relative to the store's root. Writes are atomic: a reader
    sees the whole object or nothing."""

    def url(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> str: ...
    def put_file(self, key: str, path: str | Path) -> str: ...
    def list(self, prefix: str = "", suffix: str = "") -> Iterator[str]: ...
    def remove_partial(self, prefix: str) -> int: ...


class SearchResult(Protocol):
    def items(self) -> Iterable[pystac.Item]: ...


@runtime_checkable
class Catalog(Protocol):
    """What a selection hook may ask of a catalog: pystac-client's ``search`` with the
    keywords every STAC API answers (a ``pystac_client.Client`` satisfies it, and so does
    the embedded catalog over item files)."""

    def search(self, *, collections: list[str] | None = None, datetime: str | None = None,
               intersects: Any = None, bbox: Any = None, query: dict | None = None,
               sortby: Any = None, max_items: int | None = None, **kwargs: Any) -> SearchResult: ...


class Report:
    """Base of the reports stacchip's functions return (merge counts, run reports, prechip
    and band statistics): frozen dataclasses whose fields are attributes. ``to_dict()``
    gives plain JSON-ready values; ``report["rows"]`` still reads a field, for code written
    when the reports were dicts."""

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def __getitem__(self, key: str) -> Any:
        import dataclasses

        if key not in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)
