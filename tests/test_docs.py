"""The docs site builds (strictly: a broken docstring reference, nav entry, link or snippet
fails), every tutorial notebook runs offline on synthetic data, the code blocks of the pages
marked runnable run, and the README stays a pitch."""

import html
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIALS = DOCS / "tutorials"
PAGES = sorted(DOCS.rglob("*.md"))
RUN = "<!-- test: run -->"
FENCE = re.compile(
    r"(?P<mark><!-- test: run -->\n)?```(?P<lang>[a-z]*)[^\n]*\n(?P<code>.*?)```", re.DOTALL
)
SNIPPET = re.compile(r'--8<-- "(?P<path>[^":]+)(?::(?P<section>[a-z_]+))?"')


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    mkdocs = Path(sys.executable).with_name("mkdocs")
    # cwd: the notebook plugin's cache goes to the temp dir, not the checkout
    r = subprocess.run(
        [str(mkdocs), "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    api = (site / "api" / "training" / "index.html").read_text()
    for name in (
        "StacchipGeoDataset",
        "StacchipDataModule",
        "chip_dataarray",
        "write_prediction",
        "ChipDataset",
    ):
        assert name in api
    for page in ("01_index_an_item", "02_train", "03_scale_out"):
        assert "stacchip" in (site / "tutorials" / page / "index.html").read_text()
    assert "EmbeddedCatalog" in (site / "api" / "io" / "index.html").read_text()
    plugin = html.unescape(
        re.sub(r"<[^>]+>", "", (site / "writing-a-plugin" / "index.html").read_text())
    )
    # the tutorial shows the template's code, sections and all, without the section markers
    for code in (
        "MASK_CLOUD_CLASSES",
        "stacchip_chip_stats",
        "stacchip_select_items",
        "stacchip_normalize_item",
        "env_job(PLATFORM.name)",
        "def quality_layer",
        "test_a_processing_job_selects_copies_and_indexes",
        "stacchip-mysource",
    ):
        assert code in plugin, code
    assert "bench_cloud" in (site / "benchmarks" / "index.html").read_text()
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "--8&lt;--" not in text and "--8<--" not in text, page
        assert not re.search(r":(?:func|class|meth|mod|data|attr):`", text), page


def blocks(page: Path) -> list[tuple[bool, str, str]]:
    """The fenced code blocks of a page: (marked runnable, language, code)."""
    return [(bool(m["mark"]), m["lang"], m["code"]) for m in FENCE.finditer(page.read_text())]


RUNNABLE = [p for p in PAGES if RUN in p.read_text()]


def test_the_pages_with_runnable_blocks():
    assert [p.relative_to(DOCS).as_posix() for p in RUNNABLE] == ["getting-started.md"]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_runnable_blocks_run(page, tmp_path):
    """The blocks marked runnable run in order in one fresh interpreter, in an empty folder."""
    code = "\n".join(code for run, _, code in blocks(page) if run)
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        r.stdout.splitlines()[0] == "3 3"
    )  # the first print of getting-started.md: the 3 x 3 chips


@pytest.mark.parametrize("page", ["getting-started.md", "writing-a-plugin.md"])
def test_every_python_block_of_the_tutorials_runs_in_a_test(page):
    """Getting started: every Python block is marked runnable. Writing a plugin: every block
    is the template's code (tests/test_plugin_template.py runs it in a fresh environment),
    or shell commands and file trees that test does."""
    for run, lang, code in blocks(DOCS / page):
        if lang == "python":
            assert run or SNIPPET.fullmatch(code.strip()), code[:200]
        elif page == "writing-a-plugin.md":
            assert lang in ("bash", "text", "toml"), lang
            assert lang != "toml" or SNIPPET.fullmatch(code.strip())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_snippets_name_existing_sections(page):
    for m in SNIPPET.finditer(page.read_text()):
        source = ROOT / m["path"]
        assert source.is_file(), m["path"]
        if m["section"]:
            text = source.read_text()
            for edge in ("start", "end"):
                assert f"--8<-- [{edge}:{m['section']}]" in text, (m["path"], m["section"])


def test_the_readme_is_a_pitch_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10_240
    lines = readme.splitlines()
    assert lines[3].startswith(
        "python3 -m pip install uv && python3 -m uv run --all-packages --locked stacchip demo"
    )
    assert lines[4].startswith(
        "python3 -m pip install uv && python3 -m uv run --all-packages --locked --inexact pytest"
    )


def test_no_sphinx_roles_in_docstrings():
    sources = [
        *ROOT.glob("stacchip_core/**/*.py"),
        *ROOT.glob("plugins/*/stacchip_*/**/*.py"),
        *ROOT.glob("compat/stacchip/stacchip/**/*.py"),
    ]
    found = [
        f"{p.relative_to(ROOT)}:{m.group()}"
        for p in sources
        for m in re.finditer(r":(?:func|class|meth|mod|data|attr|exc|obj):`[^`]*`", p.read_text())
    ]
    assert found == []


def run_notebook(path: Path, preamble: str | None = None):
    nb = nbformat.read(path, as_version=4)
    if preamble:
        nb.cells.insert(0, nbformat.v4.new_code_cell(preamble))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    return nb


def outputs(nb) -> str:
    return "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,expected",
    [
        (
            "01_index_an_item.ipynb",
            [
                "42 42 1764 chips of 256 px at 10 m",
                "S2A_T20HNJ_20240311T140636_L2A-0-0",
                "ndvi.tif",
            ],
        ),
        ("03_scale_out.ipynb", ["not supported by pgstac", "MergeReport(files="]),
    ],
)
def test_tutorial_runs_offline(name, expected):
    text = outputs(run_notebook(TUTORIALS / name))
    for e in expected:
        assert e in text


@pytest.mark.slow
def test_training_tutorial_runs_on_cpu(torchgeo):
    # the kernel is a new process: it needs the same torchvision
    # fix as the tests (tests/provision.py)
    preamble = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from provision import import_torch_stack\nimport_torch_stack()"
    )
    text = outputs(run_notebook(TUTORIALS / "02_train.ipynb", preamble))
    assert "StacchipGeoDataset Dataset" in text and "'split': 'train'" in text
