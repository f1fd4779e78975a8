"""``stacchip plugin new NAME``: a new source plugin package from the template.

The template (``stacchip_core/templates/plugin``) is a complete, working plugin for a platform
called ``mysource``: a package with the ``stacchip`` entry point, the platform, statistics,
selection, normalization, a console script and tests. A new plugin is a copy with that name
replaced, so the template is itself linted, type-checked and shown in the docs' plugin tutorial.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import click

from stacchip_core.errors import ConfigError

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "templates" / "plugin"
TEMPLATE_NAME = "mysource"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SKIP = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def _replacements(name: str) -> list[tuple[str, str]]:
    dist = name.replace("_", "-")
    # longest first: the distribution and package names contain the platform name
    return [
        (f"stacchip-{TEMPLATE_NAME}", f"stacchip-{dist}"),
        (f"stacchip_{TEMPLATE_NAME}", f"stacchip_{name}"),
        (TEMPLATE_NAME, name),
    ]


def _render(text: str, name: str) -> str:
    # the template marks the sections the docs' tutorial shows (pymdownx.snippets): not copied
    text = "".join(line for line in text.splitlines(keepends=True) if "# --8<-- [" not in line)
    for old, new in _replacements(name):
        text = text.replace(old, new)
    return text


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write a new source plugin package for platform ``name`` under ``directory``.

    Args:
        name: The platform and entry-point name: lower-case letters, digits and underscores,
            starting with a letter (the package is ``stacchip_NAME``, the distribution and
            console script ``stacchip-NAME``).
        directory: Where the package's folder ``stacchip-NAME`` is created.

    Returns:
        The new package's folder.

    Raises:
        ConfigError: An invalid name, or the folder exists already.
    """
    if not _NAME.match(name):
        raise ConfigError(
            f"plugin name {name!r}: use lower-case letters, digits and underscores, "
            "starting with a letter (at most 40)"
        )
    parent = Path(directory)
    target = parent / f"stacchip-{name.replace('_', '-')}"
    if target.exists():
        raise ConfigError(f"{target} exists already")
    parent.mkdir(parents=True, exist_ok=True)
    # written beside the target, then renamed into place: a failure leaves no half package
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}~", dir=parent))
    try:
        for source in sorted(TEMPLATE.rglob("*")):
            relative = source.relative_to(TEMPLATE)
            if _SKIP.intersection(relative.parts) or source.suffix == ".pyc" or source.is_dir():
                continue
            out = staging / _render(str(relative), name)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_render(source.read_text(), name))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("plugin %s written to %s", name, target)
    return target


@click.group()
def plugin() -> None:
    """Write new plugins (`stacchip plugin new NAME`)."""


@plugin.command("new")
@click.argument("name")
@click.option(
    "-d",
    "--directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where to create the package's folder.",
)
def new(name: str, directory: str) -> None:
    """Write a new source plugin package for platform NAME.

    The package (stacchip-NAME, under --directory) has an entry point, a platform,
    statistics, selection, normalization, a console script and passing tests.
    """
    target = new_plugin(name, directory)
    click.echo(
        f"{target}\n\nnext:\n  pip install -e '{target}[test]'\n  pytest {target}/tests\n"
        "  stacchip plugins"
    )
