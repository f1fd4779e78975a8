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
    def index(self) -> int:
        """The sample's row in the sample source: the job's sample number."""

    @property
    def geometry(self) -> shapely.Geometry | None:
        """The sample's geometry in EPSG:4326, or None when the source has none."""

    @property
    def properties(self) -> Mapping[str, Any]:
        """The row's attributes (reading a missing one raises ``SampleAttributeError``)."""


@runtime_checkable
class Store(Protocol):
    """A target for a processor's outputs: a local folder or an object-store prefix.

    Keys are ``/``-separated and relative to the store's root. Writes are atomic: a reader
    sees the whole object or nothing."""

    def url(self, key: str) -> str:
        """The URL (or local path) of ``key``.

        Args:
            key: A key relative to the store's root.

        Returns:
            The object's URL.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists.

        Args:
            key: A key relative to the store's root.

        Returns:
            True if the object exists.
        """
        ...

    def read_bytes(self, key: str) -> bytes:
        """The content of ``key``.

        Args:
            key: A key relative to the store's root.

        Returns:
            The object's bytes.

        Raises:
            ObjectError: If the object does not exist or cannot be read.
        """
        ...

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` to ``key``, atomically.

        Args:
            key: A key relative to the store's root.
            data: The content.

        Returns:
            The object's URL.
        """
        ...

    def put_file(self, key: str, path: str | Path) -> str:
        """Copy the local file ``path`` to ``key``, atomically.

        Args:
            key: A key relative to the store's root.
            path: The local file.

        Returns:
            The copy's URL.
        """
        ...

    def list(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """The keys under ``prefix`` that end with ``suffix``, sorted.

        Args:
            prefix: A key prefix.
            suffix: The ending the keys must have.

        Yields:
            The matching keys, relative to the store's root.
        """
        ...

    def remove_partial(self, prefix: str) -> int:
        """Delete what killed writers left under ``prefix`` (stale temporary files).

        Args:
            prefix: A key prefix.

        Returns:
            How many objects were removed.
        """
        ...


class SearchResult(Protocol):
    """What a catalog's search returns: its items (pystac-client's ``ItemSearch`` has more)."""

    def items(self) -> Iterable[pystac.Item]:
        """The matched items.

        Returns:
            The items, in the search's order.
        """
        ...


@runtime_checkable
class Catalog(Protocol):
    """What a selection hook may ask of a catalog: pystac-client's ``search`` with the
    keywords every STAC API answers (a ``pystac_client.Client`` satisfies it, and so does
    the embedded catalog over item files)."""

    def search(self, *, collections: list[str] | None = None, datetime: str | None = None,
               intersects: Any = None, bbox: Any = None, query: dict | None = None,
               sortby: Any = None, max_items: int | None = None, **kwargs: Any) -> SearchResult:
        """Search the catalog's items.

        Args:
            collections: Collection ids to keep.
            datetime: An instant or an interval ``a/b`` (ISO 8601, ``..`` for an open end).
            intersects: A GeoJSON geometry in lon/lat.
            bbox: (west, south, east, north) in lon/lat.
            query: ``{property: {operator: value}}`` (eq, lt, lte, gt, gte).
            sortby: Sort keys (``-datetime``, ``+id``, ...).
            max_items: The most items to return.
            **kwargs: Further keywords of pystac-client's search.

        Returns:
            The search's result.
        """
        ...


class Report:
    """Base of the reports stacchip's functions return (merge counts, run reports, prechip
    and band statistics): frozen dataclasses whose fields are attributes. ``to_dict()``
    gives plain JSON-ready values; ``report["rows"]`` still reads a field, for code written
    when the reports were dicts."""

    def to_dict(self) -> dict[str, Any]:
        """The report's fields as plain JSON-ready values.

        Returns:
            The fields by name, nested dataclasses as dicts.
        """
        import dataclasses

        return dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def __getitem__(self, key: str) -> Any:
        import dataclasses

        if key not in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)
