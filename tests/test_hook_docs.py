"""The hook docs live once, in the docstrings of stacchip_core.hookspecs, rendered into the
docs site's plugin page: every hook has a docstring and its exact signature is on the
rendered page (a rendering that drops annotations, or a hook left off the page, fails)."""

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stacchip_core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted((name, fn) for name, fn in vars(hookspecs).items()
               if name.startswith("stacchip_") and inspect.isfunction(fn))


def signature_text(name: str, fn) -> str:
    """``name(arg: Type, ...) -> Return`` as written in hookspecs.py (its annotations are
    strings: the module uses ``from __future__ import annotations``)."""
    sig = inspect.signature(fn)
    params = ", ".join(
        p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {p.annotation}"
        for p in sig.parameters.values()
    )
    ret = "" if sig.return_annotation is inspect.Signature.empty else f" -> {sig.return_annotation}"
    return f"{name}({params}){ret}"


class _TaggedLoader(yaml.SafeLoader):
    """mkdocs.yml with its tags (``!relative``) read as plain values.

    The page needs none of them.
    """


_TaggedLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))


@pytest.fixture(scope="module")
def plugin_page(tmp_path_factory) -> str:
    """The text of docs/api/plugins.md as mkdocs renders it, with the site's mkdocstrings
    settings (a one-page site: the notebooks are not needed for it)."""
    tmp = tmp_path_factory.mktemp("hookdocs")
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_TaggedLoader)
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "index.md").write_text((ROOT / "docs" / "api" / "plugins.md").read_text())
    mkdocstrings = next(p for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)
    mkdocstrings["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    config.update(docs_dir=str(docs), site_dir=str(tmp / "site"), nav=[{"Plugins": "index.md"}],
                  plugins=[mkdocstrings])
    (tmp / "mkdocs.yml").write_text(yaml.safe_dump(config))
    mkdocs = Path(sys.executable).with_name("mkdocs")
    r = subprocess.run([str(mkdocs), "build", "--strict", "-q", "-f", str(tmp / "mkdocs.yml")],
                       capture_output=True, text=True, cwd=tmp, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp / "site" / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    return re.sub(r"\s+", " ", text)


def test_the_hooks_are_the_ones_documented():
    assert [name for name, _ in HOOKS] == [
        "stacchip_chip_stats",
        "stacchip_normalize_item",
        "stacchip_platforms",
        "stacchip_register_commands",
        "stacchip_select_items",
        "stacchip_sign_href",
    ]


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_has_a_docstring(name, fn):
    doc = inspect.getdoc(fn)
    assert doc and len(doc.split()) >= 20, name  # a manual entry, not a placeholder
    hookspec = getattr(fn, "stacchip_spec", None)
    assert hookspec is not None, f"{name} is not a @hookspec"
    if hookspec.get("firstresult"):
        assert "*first result*" in doc, name


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_signature_is_on_the_rendered_plugin_page(plugin_page, name, fn):
    assert signature_text(name, fn) in plugin_page
    summary = " ".join(inspect.getdoc(fn).split("\n\n")[0].split())
    assert re.sub(r"[`*]", "", summary) in plugin_page  # as rendered: markdown markup gone


def test_the_signature_check_can_fail(plugin_page):
    """The check is exact: a changed annotation is not on the page."""
    text = signature_text("stacchip_sign_href", hookspecs.stacchip_sign_href)
    assert text in plugin_page
    assert text.replace("href: str", "href: bytes") not in plugin_page


def test_the_hook_reference_is_written_once():
    # the README is a pitch and the tutorial names the hooks it uses: neither repeats the reference
    readme = (ROOT / "README.md").read_text()
    tutorial = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    for text in (readme, tutorial):
        assert not re.search(r"^#+ `stacchip_", text, re.MULTILINE)  # no per-hook sections
    for name, _ in HOOKS:
        assert f"`{name}" in tutorial
    assert "(api/plugins.md)" in tutorial
