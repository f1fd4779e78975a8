"""hookimpl_for: pluggy hands a platform's implementation exactly the arguments it names, and
only for that platform's items."""

import inspect
import types

import pluggy
import pytest

from stacchip_core import Platform, hookimpl, hookimpl_for, hookspecs

S2 = Platform(name="s2")
OTHER = Platform(name="other")


def _manager(*impls, names=None):
    pm = pluggy.PluginManager("stacchip")
    pm.add_hookspecs(hookspecs)
    module = types.ModuleType("fake_plugin")
    for i, fn in enumerate(impls):
        setattr(module, (names or {}).get(i, fn.__name__), fn)
    pm.register(module, name="fake")
    pm.check_pending()
    return pm


CALLS: list[tuple] = []


@hookimpl_for(S2)
def stacchip_chip_stats(read_asset, item):  # a subset, in another order than the spec's
    CALLS.append(("stats", read_asset, item))
    return "stats of s2"


@pytest.mark.parametrize("platform, expected", [(S2, "stats of s2"), ("s2", "stats of s2"),
                                                (OTHER, None), ("other", None)])
def test_pluggy_passes_the_named_arguments_for_the_platform_only(platform, expected):
    CALLS.clear()
    pm = _manager(stacchip_chip_stats)
    result = pm.hook.stacchip_chip_stats(platform=platform, item="ITEM", grid="GRID",
                                         read_asset="READER")
    assert result == expected
    assert CALLS == ([("stats", "READER", "ITEM")] if expected else [])


def test_one_module_answers_for_two_platforms_with_specname():
    @hookimpl_for("a", specname="stacchip_select_items")
    def select_a(sample):
        return [f"a{sample}"]

    @hookimpl_for("b", specname="stacchip_select_items")
    def select_b(platform, catalog):
        return [f"b-{platform}-{catalog}"]

    @hookimpl_for("b", "c", specname="stacchip_normalize_item")
    def normalize():
        return "normalized"

    pm = _manager(select_a, select_b, normalize)
    assert pm.hook.stacchip_select_items(platform="a", sample=7, catalog="cat") == ["a7"]
    assert pm.hook.stacchip_select_items(platform="b", sample=7, catalog="cat") == ["b-b-cat"]
    assert pm.hook.stacchip_select_items(platform="z", sample=7, catalog="cat") is None
    assert [pm.hook.stacchip_normalize_item(platform=p, item=None, store=None, prefix="x")
            for p in ("a", "b", "c")] == [None, "normalized", "normalized"]


def test_an_override_answers_first_for_its_platform():
    @hookimpl_for("s2")
    def stacchip_chip_stats():
        return "installed"

    @hookimpl_for("s2", tryfirst=True, specname="stacchip_chip_stats")
    def override(item):
        return f"override of {item}"

    pm = _manager(stacchip_chip_stats, override)
    result = pm.hook.stacchip_chip_stats(platform="s2", item="I", grid=None, read_asset=None)
    assert result == "override of I"


def test_the_wrapper_shows_the_hook_signature_and_keeps_the_implementation():
    spec = inspect.signature(hookspecs.stacchip_chip_stats)
    assert inspect.signature(stacchip_chip_stats) == spec
    assert stacchip_chip_stats.stacchip_platforms == frozenset({"s2"})
    assert stacchip_chip_stats.__name__ == "stacchip_chip_stats"
    implementation = stacchip_chip_stats.stacchip_implementation
    assert list(inspect.signature(implementation).parameters) == ["read_asset", "item"]


def _bad_argument():
    @hookimpl_for("s2")
    def stacchip_select_items(sample, colour):
        return []


def _not_a_platform_hook():
    @hookimpl_for("s2")
    def stacchip_register_commands(cli):
        return None


def _no_platform():
    @hookimpl_for()
    def stacchip_chip_stats(item):
        return None


@pytest.mark.parametrize("define, message", [
    (_bad_argument,
     "stacchip_select_items has no argument 'colour' (it has platform, sample, catalog)"),
    (_not_a_platform_hook, "stacchip_register_commands is not about one platform"),
    (_no_platform, "hookimpl_for needs at least one platform"),
])
def test_mistakes_are_named_when_the_plugin_is_imported(define, message):
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        define()


def test_a_misspelt_hook_is_left_to_pluggy_which_names_it():
    @hookimpl_for("s2")
    def stacchip_chip_stat(item):
        return None

    with pytest.raises(pluggy.PluginValidationError, match="stacchip_chip_stat"):
        _manager(stacchip_chip_stat)


def test_plain_hookimpl_is_unchanged():
    @hookimpl
    def stacchip_platforms():
        return [S2]

    assert _manager(stacchip_platforms).hook.stacchip_platforms() == [[S2]]
