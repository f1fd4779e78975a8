import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from stacchip_core import plugins
from stacchip_core.core.output import write_cog

DATA = Path(__file__).parent / "data"
PLUGIN_SOURCES = Path(__file__).parent / "plugins"

S2_ITEM = DATA / "sentinel-2-l2a-S2A_T20HNJ_20240311T140636_L2A.json"
PC_S2_ITEM = DATA / "pc-S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458.json"
LANDSAT_ITEM = DATA / "landsat-c2l2-sr-LC09_L2SR_086107_20240311_20240312_02_T2_SR.json"
NAIP_ITEM = DATA / "naip_m_4207009_ne_19_060_20211024.json"
LINZ_ITEM = DATA / "linz-BQ25_10000_0305.json"
TEST_ITEM = DATA / "stacchip_test_item.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Every test sees the plugins of its own environment."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(scope="session", autouse=True)
def pc_sas_endpoint():
    """Planetary Computer's SAS token API as a loopback stand-in for the whole run (the
    planetary-computer package's own setting, PC_SDK_SAS_URL, inherited by subprocesses).
    Items with Planetary Computer hrefs get signed without the internet; without it the real
    endpoint's client retries for minutes before it fails. Yields the paths it was asked for."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.path)
            body = json.dumps(
                {"msft:expiry": "2999-01-01T00:00:00Z", "token": "st=1&se=2&sig=loopback"}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    before = os.environ.get("PC_SDK_SAS_URL")
    os.environ["PC_SDK_SAS_URL"] = f"http://127.0.0.1:{httpd.server_port}/api/sas/v1/token"
    _reset_pc_sdk()
    yield asked
    httpd.shutdown()
    if before is None:
        os.environ.pop("PC_SDK_SAS_URL", None)
    else:
        os.environ["PC_SDK_SAS_URL"] = before
    _reset_pc_sdk()


def _reset_pc_sdk() -> None:
    """planetary-computer caches its settings and tokens per process."""
    try:
        import planetary_computer.sas
        import planetary_computer.settings
    except ImportError:
        return
    planetary_computer.settings.Settings.get.cache_clear()
    planetary_computer.sas.TOKEN_CACHE.clear()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, env=None) -> CliResult:
    """Run the ``stacchip`` command in-process (as its entry point does: plugin commands
    registered first). A new process costs seconds of imports here; see run_script."""
    from click.testing import CliRunner

    from stacchip_core.cli import cli, register_plugin_commands

    register_plugin_commands()
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def run_script_named(name: str, *args, env=None) -> subprocess.CompletedProcess:
    """Run another installed console script (a plugin's) in a new process."""
    exe = Path(sys.executable).with_name(name)
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)


def run_script(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed ``stacchip`` console script in a new process, as a user would."""
    exe = Path(sys.executable).with_name("stacchip")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(exe), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory) -> Path:
    """The test plugins, pip-installed into a directory of their own: their real entry
    points are found when it is on the path, and the main environment stays untouched."""
    target = tmp_path_factory.mktemp("site")
    for name in ("stacchip-example", "stacchip-broken"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--target", str(target), str(PLUGIN_SOURCES / name)],
            check=True,
        )
    return target


@pytest.fixture
def with_example_plugin(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setenv("STACCHIP_PLUGINS", "sentinel2,landsat,naip,linz,example")
    plugins.reset()
    return plugin_dir


# --- synthetic rasters for the real fixture items -------------------------------------

S2_SCL_CLASSES = np.array([4, 8, 5, 9, 3, 10, 1, 6, 4, 11], dtype=np.uint8)


def scl_blocks(rows: int, cols: int) -> np.ndarray:
    """An SCL layer whose classes change every 40 rows and 56 cols (chips see mixtures),
    with a nodata triangle below the diagonal ``row > col + rows / 3``, as at a swath edge."""
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    scl = S2_SCL_CLASSES[((r // 40) * 3 + c // 56) % len(S2_SCL_CLASSES)]
    scl[r > c + rows // 3] = 0
    return scl


def qa_blocks(rows: int, cols: int) -> np.ndarray:
    """QA_PIXEL values cycling through fill, clear, dilated, cloud, shadow, and combinations."""
    values = np.array(
        [1, 1 << 6, (1 << 1) | (1 << 8), (1 << 3) | (3 << 8), 1 << 4, 1 << 6, (1 << 2) | (1 << 6)],
        dtype=np.uint16,
    )
    r = np.arange(rows)[:, None] // 50
    c = np.arange(cols)[None, :] // 70
    return values[(r * 2 + c) % len(values)]


def _with_local_asset(item: dict, key: str, path: Path) -> dict:
    item = json.loads(json.dumps(item))
    item["assets"][key]["href"] = str(path)
    return item


def _with_synthetic_layer(tmp_path_factory, item_path: Path, key: str, crs: str, layer: np.ndarray,
                          nodata: int, transform_from: str = "asset"):
    """A real fixture item whose ``key`` asset is a full-size synthetic COG of ``layer``."""
    d = tmp_path_factory.mktemp(item_path.stem[:20])
    item = load(item_path)
    fields = item["assets"][key] if transform_from == "asset" else item["properties"]
    path = write_cog(
        d / f"{key}.tif", layer, Affine(*fields["proj:transform"][:6]), crs, nodata=nodata
    )
    return _with_local_asset(item, key, path), layer


@pytest.fixture(scope="session")
def s2_fixture(tmp_path_factory):
    """The Earth Search S2 item with a full-size synthetic SCL (5490 x 5490 at 20 m)."""
    return _with_synthetic_layer(
        tmp_path_factory, S2_ITEM, "scl", "EPSG:32720", scl_blocks(5490, 5490), 0
    )


@pytest.fixture(scope="session")
def pc_s2_fixture(tmp_path_factory):
    """The Planetary Computer S2 item (B04/SCL keys) with a full-size synthetic SCL."""
    layer = scl_blocks(5490, 5490)[::-1].copy()
    return _with_synthetic_layer(tmp_path_factory, PC_S2_ITEM, "SCL", "EPSG:32647", layer, 0)


@pytest.fixture(scope="session")
def landsat_fixture(tmp_path_factory):
    """The USGS Landsat item with a full-size synthetic qa_pixel (8271 x 8331 at 30 m)."""
    return _with_synthetic_layer(
        tmp_path_factory,
        LANDSAT_ITEM,
        "qa_pixel",
        "EPSG:3031",
        qa_blocks(8271, 8331),
        1,
        transform_from="item",
    )


@pytest.fixture(scope="session")
def synthetic_scenes(tmp_path_factory):
    """Small synthetic scenes of three sources, written once."""
    from stacchip_core.demo import synthetic

    d = tmp_path_factory.mktemp("scenes")
    return {
        "s2": synthetic.sentinel2_scene(d, 768),
        "s2pc": synthetic.sentinel2_scene(
            d, 768, naming="planetary-computer", item_id="S2B_PC_TEST"
        ),
        "landsat": synthetic.landsat_scene(d, 560, 600),
        "naip": synthetic.naip_scene(d, 600, 530),
    }


# --- a real S3 endpoint on loopback ----------------------------------------------------

@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, with the environment boto3 and GDAL need."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "STACCHIP_S3_ENDPOINT": endpoint,
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket (unique per test: GDAL caches objects by URL within a process)."""
    import boto3

    name = f"test-{request.node.name.lower().replace('_', '-')[:40]}-{os.getpid()}".strip("-")
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")[:63]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def per_chip_mean(mask: np.ndarray, block: int, ny: int, nx: int) -> np.ndarray:
    """The reference for per-chip fractions: a plain loop over chips."""
    return np.array([[mask[y * block:(y + 1) * block, x * block:(x + 1) * block].mean()
                      for x in range(nx)] for y in range(ny)], dtype=np.float64)


@pytest.fixture(scope="session")
def torch():
    """torch (CPU build), installed on first use by tests/provision.py."""
    from provision import ensure_optional_packages

    ensure_optional_packages()
    import torch

    return torch


# --- torchgeo / lightning (issue 14: integrations) -------------------------------------

@pytest.fixture(scope="session")
def torchgeo(torch):
    """torchgeo (and lightning, torchvision), installed on first use by tests/provision.py."""
    from provision import import_torch_stack

    import_torch_stack()
    import torchgeo

    return torchgeo


@pytest.fixture(scope="session")
def lightning(torchgeo):
    import lightning

    return lightning


# --- the synthetic archive of every source, its S3 copy, a STAC API over it, index trees ---
# (shared by the processing, hostile-input, scale, plugin and merge tests)

@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """The synthetic archive of every source (scenes, item JSONs, sample sources), built once."""
    from stacchip_core.demo.archive import build_archive

    return build_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="session")
def s3_archive(archive, s3_server, tmp_path_factory):
    """The archive uploaded to a source bucket; item JSONs whose hrefs point there."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket="source-archive")
    for path in sorted(archive.root.rglob("*")):
        if path.is_file() and path.suffix in (".tif", ".tiff", ".json"):
            client.upload_file(
                str(path), "source-archive", path.relative_to(archive.root).as_posix()
            )
    items = tmp_path_factory.mktemp("items-s3")
    for path in sorted(archive.items.rglob("*.json")):
        d = json.loads(path.read_text())
        for asset in d["assets"].values():
            for holder in (asset, asset.get("alternate", {}).get("s3", {})):
                if holder.get("href", "").startswith(str(archive.root)):
                    holder["href"] = (
                        "s3://source-archive/"
                        + Path(holder["href"]).relative_to(archive.root).as_posix()
                    )
        target = items / path.relative_to(archive.items)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(d))
    return items


@pytest.fixture(scope="session")
def stac_api(archive, s3_archive):
    """stac-fastapi-pgstac on loopback, loaded with the S3 copy of the archive's items."""
    from provision import ensure_postgis
    from services import StacApi

    ensure_postgis()
    api = StacApi()
    try:  # a failure while starting or loading still stops PostgreSQL
        api.start()
        items = [json.loads(p.read_text()) for p in sorted(s3_archive.rglob("*.json"))]
        api.load(json.loads(archive.collections.read_text()), items)
        yield api.url
    finally:
        api.stop()


def s2_expected(archive) -> list[str]:
    """By construction: sample 0's two years, quarters 1-3 pick the 'a' item (lowest cloud of
    the tile with <= 20 % nodata); quarter 4 has only items above 75 % cloud."""
    years = sorted(random.Random(0).sample(list(range(2018, 2024)), 2))
    return [f"S2A_20HNJ_{y}{m:02d}11_a" for y in years for m in (2, 5, 8)]


def landsat_expected(collection: str) -> list[str]:
    year = random.Random(0).choice(list(range(2018, 2024)))
    level = "L2SP" if collection == "landsat-c2l2-sr" else "L1TP"
    # l8 cloud 30, 25, 20, 15; l9 20, 23, 26, 29; l7 (1 %) and 'cloudy' (99 %) never qualify
    winners = ["9", "9", "8", "8"]
    return [f"LC0{w}_{level}_086107_{year}{m:02d}15_l{w}" for w, m in zip(winners, (2, 5, 8, 11))]


def naip_expected() -> list[str]:
    older = [2014, 2016, 2018, 2020]
    return [f"m_4207009_ne_19_060_{y}0701" for y in (2022, random.Random(1).choice(older))]


@pytest.fixture(scope="session")
def index_tree(synthetic_scenes, tmp_path_factory):
    """Per-item index files laid out as the processors do.

    index/{platform}/{item}/index_{item}.parquet and the chips per item. Shared: a test that
    writes into it works on a copy (copy_tree)."""
    from stacchip_core import Indexer, write_index

    root = tmp_path_factory.mktemp("indexes")
    counts = {}
    for name in ("s2", "s2pc", "landsat", "naip"):
        indexer = Indexer(str(synthetic_scenes[name]), chip_max_nodata=1.0)
        table = indexer.create_index()
        write_index(
            table,
            root
            / "index"
            / indexer.platform_name
            / indexer.item.id
            / f"index_{indexer.item.id}.parquet",
        )
        counts[indexer.item.id] = len(table)
    return root, counts


# --- items over a loopback HTTP object server (issue 10: cloud chips) -------------------

@pytest.fixture
def http_s2(synthetic_scenes, tmp_path):
    """The synthetic S2 scene behind ``tests/rangeserver.py``: ``(server, item URL, folder)``.
    Assets are copies (tests may rewrite or delete them) and the item's hrefs relative, so
    they resolve against the item's URL; the server's counters start at zero."""
    from rangeserver import RangeServer

    src = Path(synthetic_scenes["s2"])
    item = json.loads(src.read_text())
    root = tmp_path / "served"
    root.mkdir()
    for asset in item["assets"].values():
        if asset["href"].startswith(str(src.parent)):
            shutil.copy(asset["href"], root / Path(asset["href"]).name)
            asset["href"] = Path(asset["href"]).name
    (root / "item.json").write_text(json.dumps(item))
    with RangeServer(root) as server:
        yield server, f"{server.url}/item.json", root
