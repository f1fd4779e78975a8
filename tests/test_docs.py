"""The docs site builds (strictly: a broken docstring reference, nav entry, link or snippet
fails), every tutorial notebook runs offline on synthetic data, the code blocks of the pages
marked runnable run, and the README stays a pitch."""

import ast
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


# --- every public function documents its parameters and its result -------------------------
#
# The API reference renders these docstrings (Google style). Public: a module-level function,
# or a method, property or constructor of a public class, whose name has no leading underscore.
# Left out: dunders other than __init__ and __call__, nested functions, overloads and click
# commands (their docstrings are --help text). A function with parameters (self, cls and
# underscored ones aside) needs an Args section naming exactly those parameters (a
# constructor's may be in its class docstring); one that returns a value (a return annotation
# other than None or, unannotated, a `return <value>`) needs Returns or Yields; a property and a
# public class need a docstring.

API_SOURCES = sorted(
    p
    for p in [*ROOT.glob("stacchip_core/**/*.py"), *ROOT.glob("plugins/*/stacchip_*/**/*.py")]
    if "tests" not in p.relative_to(ROOT).parts  # the plugin template's tests
)

# Modules other engineers were changing while the rest were documented (docstring edits there
# would have conflicted). Each is expected to fail (strict xfail: once its docstrings are
# complete, the test fails until the module leaves this list). The lead empties it after
# merging those branches.
DOCSTRING_GAPS_ALLOWED: set[str] = set()

_SECTION = re.compile(r"^(\w+):\s*$")


def _sections(doc: str | None) -> dict[str, list[str]]:
    """A Google-style docstring's sections: {title: the names its entries start with}."""
    out: dict[str, list[str]] = {}
    lines = (doc or "").splitlines()
    for k, line in enumerate(lines):
        m = _SECTION.match(line.strip())
        if not m or m[1] not in ("Args", "Arguments", "Returns", "Yields", "Raises"):
            continue
        base = len(line) - len(line.lstrip())
        names, entry = out.setdefault(m[1], []), None
        for item in lines[k + 1:]:
            if not item.strip():
                continue
            indent = len(item) - len(item.lstrip())
            if indent <= base:
                break
            entry = entry or indent
            if indent == entry:
                names.append(re.match(r"\**(\w*)", item.strip())[1])
    return out


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x]
    static = any(ast.unparse(d) == "staticmethod" for d in fn.decorator_list)
    if method and not static and names and names[0] in ("self", "cls"):
        names = names[1:]
    return [n for n in names if not n.startswith("_")]


def _returns_value(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    if fn.returns is not None:
        return ast.unparse(fn.returns) not in ("None", "NoReturn", "Never")

    def found(node: ast.AST) -> bool:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue  # a nested scope's returns are its own
            if isinstance(child, ast.Return) and child.value is not None and not (
                isinstance(child.value, ast.Constant) and child.value.value is None
            ):
                return True
            if found(child):
                return True
        return False

    return found(fn)


def _skipped(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = ast.unparse(target)
        if name.endswith((".command", ".group")) or name in ("overload", "typing.overload"):
            return True  # click commands (--help text), typing overloads
    return fn.name.startswith("_") and fn.name != "__call__"


def docstring_gaps(path: Path) -> list[str]:
    """What the public functions, methods and classes of one module lack."""
    gaps: list[str] = []

    def check(fn, where: str, method: bool, class_doc: str | None = None) -> None:
        name = f"{where}{fn.name}:{fn.lineno}"
        doc = ast.get_docstring(fn)
        if fn.name == "__init__":
            params = _params(fn, method)
            documented = _sections(doc).get("Args", _sections(class_doc).get("Args"))
            if params and sorted(documented or []) != sorted(params):
                gaps.append(f"{name}: Args {documented} in the class or __init__ docstring, "
                            f"parameters {params}")
            return
        if _skipped(fn):
            return
        if not doc:
            gaps.append(f"{name}: no docstring")
            return
        if any(ast.unparse(d).endswith(("property", ".setter")) for d in fn.decorator_list):
            return
        sections = _sections(doc)
        params = _params(fn, method)
        args = sections.get("Args", sections.get("Arguments"))
        if params and args is None:
            gaps.append(f"{name}: no Args section ({', '.join(params)})")
        elif sorted(args or []) != sorted(params):
            gaps.append(f"{name}: Args names {args}, parameters are {params}")
        if _returns_value(fn) and not ({"Returns", "Yields"} & sections.keys()):
            gaps.append(f"{name}: returns a value, no Returns section")

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            check(node, "", False)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            class_doc = ast.get_docstring(node)
            if not class_doc:
                gaps.append(f"{node.name}:{node.lineno}: no docstring")
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    item.name in ("__init__", "__call__") or not item.name.startswith("__")
                ):
                    check(item, f"{node.name}.", True, class_doc)
    return gaps


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(
            p.relative_to(ROOT).as_posix(),
            marks=pytest.mark.xfail(strict=True, reason="allowed gaps: DOCSTRING_GAPS_ALLOWED")
            if p.relative_to(ROOT).as_posix() in DOCSTRING_GAPS_ALLOWED
            else (),
        )
        for p in API_SOURCES
    ],
)
def test_public_functions_document_args_and_returns(module):
    assert docstring_gaps(ROOT / module) == []


def test_the_docstring_check_finds_gaps(tmp_path):
    """The check itself: each kind of gap is found, complete docstrings pass."""
    source = tmp_path / "m.py"
    source.write_text('''
import click

def no_doc(x): pass

def no_args(x):
    """Text."""

def stale_args(x, y):
    """Text.

    Args:
        x: One.
        z: Gone.
    """

def no_returns() -> int:
    """Text."""
    return 1

def untyped_returns():
    """Text."""
    def inner():
        return 2
    return inner

def complete(x, *rest, _private=None, **options) -> int:
    """Text.

    Args:
        x: One.
        *rest: More.
        **options: Any.

    Returns:
        One.
    """
    return 1

def _private(x): pass

@click.command()
def command(x):
    """Help text."""

class Thing:
    """A thing."""

    def __init__(self, size):
        self.size = size

    @property
    def area(self) -> int:
        return 1

    def method(self):
        """Nothing back."""

    def __len__(self): return 1

    def __call__(self, x):
        """Called."""

class Documented:
    """A thing.

    Args:
        size: Its size.
    """

    def __init__(self, size):
        self.size = size
''')
    assert docstring_gaps(source) == [
        "no_doc:4: no docstring",
        "no_args:6: no Args section (x)",
        "stale_args:9: Args names ['x', 'z'], parameters are ['x', 'y']",
        "no_returns:17: returns a value, no Returns section",
        "untyped_returns:21: returns a value, no Returns section",
        "Thing.__init__:49: Args None in the class or __init__ docstring, parameters ['size']",
        "Thing.area:53: no docstring",
        "Thing.__call__:61: no Args section (x)",
    ]


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
