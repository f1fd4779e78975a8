"""The docs site builds (strictly: a broken docstring reference or nav entry fails) and every
tutorial notebook runs offline on synthetic data."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    mkdocs = Path(sys.executable).with_name("mkdocs")
    # cwd: the notebook plugin's cache goes to the temp dir, not the checkout
    r = subprocess.run([str(mkdocs), "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    api = (site / "api" / "training" / "index.html").read_text()
    for name in ("StacchipGeoDataset", "StacchipDataModule", "chip_dataarray", "write_prediction", "ChipDataset"):
        assert name in api
    for page in ("01_index_an_item", "02_train", "03_scale_out"):
        assert "stacchip" in (site / "tutorials" / page / "index.html").read_text()
    assert "EmbeddedCatalog" in (site / "api" / "io" / "index.html").read_text()


def run_notebook(path: Path, preamble: str | None = None):
    nb = nbformat.read(path, as_version=4)
    if preamble:
        nb.cells.insert(0, nbformat.v4.new_code_cell(preamble))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def outputs(nb) -> str:
    return "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name,expected", [
    ("01_index_an_item.ipynb", ["42 42 1764 chips of 256 px at 10 m", "S2A_T20HNJ_20240311T140636_L2A-0-0", "ndvi.tif"]),
    ("03_scale_out.ipynb", ["not supported by pgstac", "MergeReport(files="]),
])
def test_tutorial_runs_offline(name, expected):
    text = outputs(run_notebook(TUTORIALS / name))
    for e in expected:
        assert e in text


@pytest.mark.slow
def test_training_tutorial_runs_on_cpu(torchgeo):
    # the kernel is a new process: it needs the same torchvision fix as the tests (tests/provision.py)
    preamble = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\nfrom provision import import_torch_stack\nimport_torch_stack()"
    text = outputs(run_notebook(TUTORIALS / "02_train.ipynb", preamble))
    assert "StacchipGeoDataset Dataset" in text and "'split': 'train'" in text
