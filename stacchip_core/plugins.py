"""The one place that loads plugins: entry points of the group ``stacchip``.

``STACCHIP_PLUGINS`` restricts which entry points load: a comma-separated list of
entry-point names (``sentinel2,naip``); an empty value loads none. Unset loads all.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pluggy

from stacchip_core import hookspecs
from stacchip_core.builtin_plugins import BUILTINS
from stacchip_core.errors import PlatformError, PluginError
from stacchip_core.platform import Platform

if TYPE_CHECKING:
    import pystac

log = logging.getLogger(__name__)

GROUP = "stacchip"
BUILTIN_PLUGINS = frozenset(BUILTINS)  # listed by `stacchip plugins --all` only
ALLOW_ENV = "STACCHIP_PLUGINS"

# entry-point name -> (distribution, version) of the plugins loaded
_DISTRIBUTIONS: dict[str, tuple[str, str]] = {}


def _allowed() -> set[str] | None:
    value = os.environ.get(ALLOW_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use.

    Returns:
        The plugin manager, with the built-in and the allowed installed plugins.

    Raises:
        PluginError: If a plugin fails to load or implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    for name, module in BUILTINS.items():  # by module name, like entry points: no static import
        pm.register(importlib.import_module(module), name=name)
    allowed = _allowed()
    for ep in importlib.metadata.entry_points(group=GROUP):
        if allowed is not None and ep.name not in allowed:
            log.debug("plugin %s not loaded (%s=%s)", ep.name, ALLOW_ENV, os.environ[ALLOW_ENV])
            continue
        if pm.get_plugin(ep.name) is not None:
            continue  # the same distribution seen twice on sys.path
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must name itself
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        pm.register(module, name=ep.name)
        _DISTRIBUTIONS[ep.name] = (ep.dist.name, ep.dist.version) if ep.dist else (ep.value, "?")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc} (misspelt hook name? see stacchip_core/hookspecs.py)") from exc
    return pm


def reset() -> None:
    """Forget loaded plugins (after changing STACCHIP_PLUGINS or installing one)."""
    get_plugin_manager.cache_clear()
    platforms.cache_clear()
    _DISTRIBUTIONS.clear()


@lru_cache(maxsize=1)
def platforms() -> dict[str, Platform]:
    """All declared platforms by name.

    Returns:
        The platforms of every loaded plugin, by name.

    Raises:
        PluginError: If two plugins declare the same platform name.
    """
    found: dict[str, Platform] = {}
    for declared in get_plugin_manager().hook.stacchip_platforms():
        for platform in declared or ():
            if platform.name in found:
                raise PluginError(f"platform {platform.name!r} is declared by two plugins")
            found[platform.name] = platform
    return found


def _installed() -> str:
    names = sorted(platforms())
    return ", ".join(names) if names else "none (install a source plugin, e.g. stacchip-sentinel2)"


def get_platform(name: str) -> Platform:
    """The platform called ``name``; a clear error naming the installed ones otherwise.

    Args:
        name: The platform's name.

    Returns:
        The platform.

    Raises:
        PlatformError: If no installed plugin declares it.
    """
    try:
        return platforms()[name]
    except KeyError as exc:
        raise PlatformError(
            f"unknown platform {name!r}; installed platforms: {_installed()}"
        ) from exc


def find_platform(name: str | None) -> Platform | None:
    """The installed platform called ``name``, or None (unknown, or no name).

    Args:
        name: The platform's name, or None.

    Returns:
        The platform, or None.
    """
    return platforms().get(name) if name else None


def platform_for_item(item: pystac.Item) -> Platform:
    """The platform whose collections include the item's collection.

    Args:
        item: The STAC item.

    Returns:
        The first installed platform that claims the item's collection.

    Raises:
        PlatformError: If none does.
    """
    collection = item.collection_id
    for platform in platforms().values():
        if collection and collection in platform.collections:
            return platform
    raise PlatformError(
        f"no installed platform claims collection {collection!r} of item {item.id!r}; "
        f"name one with --platform (installed platforms: {_installed()}) or ask for no statistics"
    )


def plugin_info(builtins: bool = False) -> list[dict]:
    """Installed plugins: name, distribution, version, platforms and implemented hooks;
    with ``builtins``, stacchip-core's own hook implementations too.

    Args:
        builtins: Also list stacchip-core's built-in plugins.

    Returns:
        One dict per plugin: ``name``, ``distribution``, ``version``, ``platforms``, ``hooks``.
    """
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or (name in BUILTIN_PLUGINS and not builtins):
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        declared = []
        if hasattr(plugin, "stacchip_platforms"):
            declared = [p.name for p in plugin.stacchip_platforms() or []]
        dist, version = _DISTRIBUTIONS.get(name, (name, "?"))
        if name in BUILTIN_PLUGINS:
            dist, version = "stacchip-core", importlib.metadata.version("stacchip-core")
        rows.append(
            {
                "name": name,
                "distribution": dist,
                "version": version,
                "platforms": declared,
                "hooks": hooks,
            }
        )
    return rows


def sign_href(href: str, asset: pystac.Asset | None = None) -> str:
    """``href`` as the ``stacchip_sign_href`` hook rewrites it (signed, redirected), or
    unchanged when no installed plugin answers. Call it right before an href is opened or
    copied, never earlier: signatures expire, and items keep their unsigned hrefs.

    Args:
        href: The href about to be opened or copied.
        asset: The asset it belongs to, if any.

    Returns:
        The href to use.

    Raises:
        PluginError: If a hook returns something other than a string.
    """
    signed = get_plugin_manager().hook.stacchip_sign_href(href=href, asset=asset)
    if signed is None or signed == href:
        return href
    if not isinstance(signed, str):
        raise PluginError(f"stacchip_sign_href returned {type(signed).__name__}, not a str")
    log.debug("href of asset %s rewritten by a stacchip_sign_href hook", _asset_name(asset))
    return signed


def sign_href_at_once(href: str) -> str | None:
    """``href`` as ``sign_href`` would return it, when that is known without calling anything
    that may block: only the built-in signer is installed and it needs no token request (not
    a Planetary Computer href, or its token is cached). None otherwise: call ``sign_href``,
    off the event loop (io.objects.sign does).

    Args:
        href: The unsigned href.

    Returns:
        The signed href, or None when signing it may block.
    """
    impls = get_plugin_manager().hook.stacchip_sign_href.get_hookimpls()
    if any(impl.plugin_name not in BUILTINS for impl in impls):
        return None
    for impl in impls:  # the built-in signers say what they know without blocking
        builtin: Any = impl.plugin  # a built-in signer module: it has sign_cached
        signed = builtin.sign_cached(href)
        if signed is None:
            return None
        href = signed
    return href


def _asset_name(asset: pystac.Asset | None) -> str:
    if asset is None or asset.owner is None:
        return "(none)"
    owner_id = getattr(asset.owner, "id", None)  # an item or a collection
    for key, value in getattr(asset.owner, "assets", {}).items():
        if value is asset:
            return f"{key!r} of {owner_id!r}"
    return f"of {owner_id!r}"
