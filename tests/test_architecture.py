"""The package's import contracts (pyproject [tool.importlinter]): each layer imports only
from the layers below it, and the plugins import only the public plugin API."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("stacchip-*/stacchip_*") if p.is_dir())


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                       capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", r.stdout), r.stdout
    for contract in ("stacchip layers", "grid math below the readers",
                     "plugins import only the public plugin API"):
        assert f"{contract} KEPT" in r.stdout


def test_the_plugin_contract_lists_every_plugin_of_the_repository():
    config = (ROOT / "pyproject.toml").read_text()
    block = config[config.index('name = "plugins import only the public plugin API"'):]
    sources = re.search(r"source_modules = \[(.*?)\]", block, re.DOTALL).group(1)
    assert sorted(re.findall(r'"(\w+)"', sources)) == sorted(p.name for p in PLUGINS)


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugins_import_nothing_below_the_public_api(plugin):
    # what the grep checks: no `from stacchip_core.<module>.<submodule>` in a plugin
    text = "\n".join(f.read_text() for f in plugin.rglob("*.py"))
    assert re.findall(r"from stacchip_core\.[a-z_]*\.", text) == []
    imported = set(re.findall(r"(?:from|import) (stacchip_core[\w.]*)", text))
    assert imported == {"stacchip_core.plugin_api"}
