"""`stacchip plugin new NAME` writes a plugin package that installs into a fresh environment
with stacchip-core alone and passes its own tests there; `stacchip plugins` lists it. The
template is the code the docs' plugin tutorial shows."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacchip_core.cli import cli
from stacchip_core.errors import ConfigError
from stacchip_core.scaffold import TEMPLATE, new_plugin

ROOT = Path(__file__).parents[1]
UV = Path(sys.executable).with_name("uv")


def files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts
    }


def test_the_name_is_replaced_everywhere(tmp_path):
    target = new_plugin("wet_lands", tmp_path)
    assert target == tmp_path / "stacchip-wet-lands"
    written = files(target)
    assert sorted(written) == [
        "README.md",
        "pyproject.toml",
        "stacchip_wet_lands/__init__.py",
        "tests/test_wet_lands.py",
    ]
    assert not any("mysource" in text for text in written.values())
    pyproject = written["pyproject.toml"]
    assert 'name = "stacchip-wet-lands"' in pyproject
    assert 'wet_lands = "stacchip_wet_lands"' in pyproject
    assert 'stacchip-wet-lands = "stacchip_wet_lands:main"' in pyproject
    # the plugin itself imports the public plugin API only
    code = written["stacchip_wet_lands/__init__.py"]
    assert set(re.findall(r"^from (stacchip_core[\w.]*) import", code, re.MULTILINE)) == {
        "stacchip_core.plugin_api"
    }
    # a plain copy otherwise: the template is what the tutorial shows
    original = files(TEMPLATE)
    assert len(original) == len(written)


@pytest.mark.parametrize(
    "name, message",
    [
        ("My-Source", "use lower-case letters"),
        ("1source", "starting with a letter"),
        ("", "use lower-case"),
    ],
)
def test_bad_names_are_one_line(tmp_path, name, message):
    with pytest.raises(ConfigError, match=message):
        new_plugin(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "stacchip-wetlands").mkdir()
    r = CliRunner().invoke(cli, ["plugin", "new", "wetlands", "-d", str(tmp_path)])
    assert r.exit_code == 1 and "exists already" in r.output
    assert list((tmp_path / "stacchip-wetlands").iterdir()) == []


@pytest.mark.slow  # a fresh venv, two installs and the plugin's own tests: about a minute here
def test_a_generated_plugin_passes_its_tests_in_a_fresh_environment(tmp_path):
    r = CliRunner().invoke(cli, ["plugin", "new", "wetlands", "-d", str(tmp_path)])
    assert r.exit_code == 0, r.output
    plugin = tmp_path / "stacchip-wetlands"
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([str(UV), "venv", "-q", str(venv)], check=True)
    subprocess.run(
        [str(UV), "pip", "install", "-q", "--python", str(python), str(ROOT), f"{plugin}[test]"],
        check=True,
    )
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert re.search(r"\b4 passed\b", tests.stdout), tests.stdout[-500:]
    info = json.loads(
        subprocess.run(
            [str(venv / "bin" / "stacchip"), "plugins", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    assert [(row["name"], row["distribution"], row["platforms"]) for row in info] == [
        ("wetlands", "stacchip-wetlands", ["wetlands"])
    ]
