"""ruff and mypy run with the tests, so the README's test command (and CI) keeps both clean.
Both come with the dev group; their settings are in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("tool, args", [
    ("ruff", ["check", "."]),
    ("mypy", []),  # files and options from [tool.mypy]
])
def test_the_tree_is_clean(tool, args, tmp_path):
    extra = ["--cache-dir", str(tmp_path / "cache")] if tool == "mypy" else ["--no-cache"]
    result = subprocess.run(
        [sys.executable, "-m", tool, *args, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
