"""The hooks a stacchip plugin can implement: each hook's arguments, return value and contract.

These docstrings are the reference; the docs site's "Writing a plugin" page is the tutorial
(a complete source, from ``stacchip plugin new``). Hooks about one platform (statistics,
selection, normalization) are marked ``@hookimpl_for(PLATFORM)`` and called for that
platform's items only; hooks about the plugin as a whole (platforms, commands) use
``@hookimpl``. An implementation may accept any subset of a hook's arguments, by name. Hooks
marked *first result* stop at the first implementation that returns something other than
``None``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    import click
    import pystac

    from stacchip_core.core.chipstats import ChipStats
    from stacchip_core.core.grid import ChipGrid
    from stacchip_core.core.raster import AssetReader
    from stacchip_core.platform import Platform
    from stacchip_core.types import Catalog, Sample, Store

hookspec = pluggy.HookspecMarker("stacchip")
hookimpl = pluggy.HookimplMarker("stacchip")

F = TypeVar("F", bound=Callable[..., Any])


def hookimpl_for(*platforms: Platform | str, tryfirst: bool = False, trylast: bool = False,
                 specname: str | None = None) -> Callable[[F], F]:
    """Mark a hook implementation that answers for ``platforms`` only.

    The implementation keeps its own arguments (any subset of the hook's); stacchip calls it
    only when the hook's ``platform`` is one of these, and the other platforms' plugins never
    see it. ``specname`` lets one module implement a hook twice, for example for two
    platforms. It marks functions of a plugin module (or of any object whose attributes are
    plain functions), not methods.

    Args:
        *platforms: `Platform` objects or platform names.
        tryfirst: pluggy's: call this implementation before the others.
        trylast: pluggy's: call this implementation after the others.
        specname: The hook's name when the function is named otherwise.

    Returns:
        A decorator that registers the function as the hook's implementation.

    Raises:
        TypeError: No platform given, a hook without a ``platform`` argument, or an argument
            the hook does not have.
    """
    names = frozenset(p if isinstance(p, str) else p.name for p in platforms)
    if not names:
        raise TypeError("hookimpl_for needs at least one platform")
    marker = hookimpl(tryfirst=tryfirst, trylast=trylast, specname=specname)

    def decorate(fn: F) -> F:
        hook = specname or fn.__name__
        spec: Callable[..., Any] | None = globals().get(hook)
        if spec is None or not hasattr(spec, "stacchip_spec"):  # pluggy names a misspelt hook
            return marker(fn)
        spec_params = list(inspect.signature(spec).parameters)
        if "platform" not in spec_params:
            raise TypeError(f"{hook} is not about one platform: mark {fn.__qualname__} "
                            "with @hookimpl")
        params = list(inspect.signature(fn).parameters)
        unknown = [p for p in params if p not in spec_params]
        if unknown:
            missing = ", ".join(map(repr, unknown))
            raise TypeError(f"{fn.__qualname__}: {hook} has no argument {missing} "
                            f"(it has {', '.join(spec_params)})")

        # pluggy passes an implementation the arguments it names, positionally in that order:
        # the wrapper names all of the hook's (the spec's signature), checks the platform and
        # hands the implementation its own subset by name.
        platform_at = spec_params.index("platform")

        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            platform = args[platform_at]
            if getattr(platform, "name", platform) not in names:
                return None
            given = dict(zip(spec_params, args, strict=True))
            return fn(**{p: given[p] for p in params})

        # pluggy < 1.7 reads the names through inspect.signature, pluggy 1.7 from the code of
        # the function inspect.unwrap reaches: both find the spec's
        wrapper.__signature__ = inspect.signature(spec)  # type: ignore[attr-defined]
        wrapper.__wrapped__ = spec  # type: ignore[attr-defined]
        wrapper.stacchip_platforms = names  # type: ignore[attr-defined]
        wrapper.stacchip_implementation = fn  # type: ignore[attr-defined]
        return marker(wrapper)  # type: ignore[return-value]

    return decorate


@hookspec
def stacchip_platforms() -> list[Platform]:
    """Declare the platforms this plugin provides.

    Return a list of `stacchip_core.Platform`: the platform ``name`` (it names
    bucket folders and the index's ``platform`` column), the STAC ``collections`` whose
    items belong to it (the indexer picks an item's platform from its collection), the
    model ``bands`` in canonical order with the asset-key ``aliases`` catalogs use for them
    (``Band("red", ("B04",))``; ``Band("red", index=1, asset="image")`` for band 1 of a
    multi-band asset), auxiliary layers read for statistics only (``aux``, e.g. a cloud
    mask), the ``nodata`` pixel value and the default ``chip_size``. Platform names must be
    unique across installed plugins.

    Returns:
        The plugin's platforms.
    """


@hookspec(firstresult=True)
def stacchip_chip_stats(
    platform: Platform, item: pystac.Item, grid: ChipGrid, read_asset: AssetReader
) -> ChipStats | None:
    """Cloud and nodata fractions for every chip of ``item`` at once (*first result*).

    Called once per item, never once per chip. ``grid`` is the item's chip grid on its
    finest asset. The fast way: ``read_asset.chip_fractions(name, {"cloud": fn, ...})``
    resolves ``name`` through the platform's aliases, reads the band at its **native**
    resolution in strips on several threads, applies each ``fn(data) -> bool array`` and
    reduces it per chip, returning ``{"cloud": float32 (y_size, x_size), ...}``: decoding
    overlaps with the mask work and the band is never held whole. For anything else,
    ``read_asset(name)`` returns the whole band as ``NativeBand(data, factor)``, where
    ``factor`` is how many grid pixels one native pixel spans (2 for a 20 m layer on a 10 m
    grid); reduce masks with ``grid.chip_fractions(mask, factor)``. Build masks with
    `stacchip_core.class_mask` / `stacchip_core.bit_mask`.

    Return `stacchip_core.ChipStats` with arrays of shape
    ``(grid.y_size, grid.x_size)``, or ``None`` to leave the item to another implementation.

    Args:
        platform: The item's platform.
        item: The STAC item.
        grid: The item's chip grid.
        read_asset: Reads a band at native resolution, whole or reduced per chip.

    Returns:
        The per-chip fractions, or None.
    """


@hookspec(firstresult=True)
def stacchip_select_items(
    platform: Platform, sample: Sample, catalog: Catalog | None
) -> list[pystac.Item] | None:
    """The STAC items to process for one sample location (*first result*).

    ``sample`` is a `stacchip_core.Sample`: ``index`` (the job's sample
    number), ``geometry`` (shapely, EPSG:4326; None without a sample source) and
    ``properties`` (the row's attributes). ``catalog`` answers pystac-client's
    ``search(collections=, datetime=, intersects=, query=, sortby=, max_items=)``: a
    ``pystac_client.Client`` for a STAC API, or the embedded catalog over item files (None
    when no STAC API is configured, for sources that list a bucket instead). Use only the
    query operators every STAC API has (eq, lt, lte, gt, gte: pgstac has no ``in``). Seed
    any randomness from ``sample.index`` so that a rerun selects the same items. Return a
    list of ``pystac.Item``, or ``None`` to leave the sample to another implementation.
    Used by the processors (``stacchip process``).

    Args:
        platform: The platform being processed.
        sample: The sample location.
        catalog: The catalog to search, or None.

    Returns:
        The items to process, or None.
    """


@hookspec(firstresult=True)
def stacchip_normalize_item(
    platform: Platform, item: pystac.Item, store: Store, prefix: str
) -> pystac.Item | None:
    """Bring one selected item into the target store (*first result*).

    Keep the assets the platform needs, copy (or resample) them into ``store`` under
    ``prefix`` (``{platform}/{item_id}``) and return a copy of ``item`` whose hrefs point at
    the copies. ``store`` is a `stacchip_core.Store`: a local folder or an object-store
    prefix behind one interface (``exists``, ``url``, ``read_bytes``, ``write_bytes``,
    ``put_file``, ``list``); `stacchip_core.plugin_api.copy_assets` does the common
    case in one call. Must be idempotent: objects already in the store are not copied
    again, so a rerun finishes a half-done item.

    Args:
        platform: The item's platform.
        item: The selected STAC item.
        store: The target store.
        prefix: The key prefix of the item's copies.

    Returns:
        The normalized copy of the item, or None.
    """


@hookspec(firstresult=True)
def stacchip_sign_href(href: str, asset: pystac.Asset | None) -> str | None:
    """Sign or rewrite an asset href just before stacchip reads or copies it (*first result*).

    Called with the href about to be opened (``s3://``, ``https://``, or a local path when a
    mount path maps it) and the `pystac.Asset` it belongs to (``asset.owner`` is its
    item), or ``None`` when the href has no asset. Return the href to use instead (a URL with
    a SAS token or a presigned query, a mirror, a local cache path), or ``None`` to leave it
    to the next implementation and finally unchanged. Called for every open and copy, so
    cache tokens rather than fetching one per call; never log the signed href (stacchip
    redacts it in its own messages). `stacchip_core.plugins.sign_href` applies the hook
    in every read and copy (``asset_href`` and ``copy_assets`` of ``stacchip_core.plugin_api``);
    items keep their unsigned hrefs. stacchip itself signs Planetary Computer blob hrefs
    with the ``planetary-computer`` package
    (``stacchip_core.builtin_plugins.planetary_computer``, extra
    ``stacchip-core[planetary-computer]``) as the last resort (``trylast``): a user's
    signer answers first. A user's own signer is a plugin like any other: an entry point,
    or ``plugins.get_plugin_manager().register(obj)`` for an object with a ``@hookimpl``
    method.

    Args:
        href: The href about to be opened.
        asset: The asset it belongs to, or None.

    Returns:
        The href to use instead, or None.
    """


@hookspec
def stacchip_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``stacchip`` command line.

    ``cli`` is the top-level `click.Group`; call ``cli.command()`` or
    ``cli.add_command()`` on it. Raise a `stacchip_core.StacchipError` (one of its
    subclasses in `stacchip_core.errors`, e.g. ``ConfigError`` for a bad option) for
    bad input so that the user sees one clear line instead of a traceback.

    Args:
        cli: The top-level command group.
    """
