"""Signed links: the stacchip_sign_href hook rewrites hrefs right before a read or a copy.

Item: tests/data/pgstac-pc-naip-m_3008506_nw_16_1_20110825.json, a Planetary Computer NAIP item
(hrefs on naipeuwest.blob.core.windows.net, which needs a SAS token). The signer under test is a
local plugin that rewrites those hrefs to a loopback server requiring ``?token=``: nothing
leaves 127.0.0.1."""

import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from affine import Affine
from catalogs_helpers import DATA, TokenServer, load, pattern, sparse_tiff

from stacchip_core import hookimpl, plugins
from stacchip_core.core.chipper import Chipper
from stacchip_core.errors import AssetError
from stacchip_core.io.store import LocalStore

PC_NAIP = DATA / "pgstac-pc-naip-m_3008506_nw_16_1_20110825.json"
TOKEN = "s3cr3t-sas-token"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    """The item's image (7618 x 6674, 4 bands, EPSG:26916).

    Chip (1, 2) written, served at its PC path.
    """
    root = tmp_path_factory.mktemp("blob")
    item = load(PC_NAIP)
    path = root / urlparse(item["assets"]["image"]["href"]).path.lstrip("/")
    path.parent.mkdir(parents=True)
    pixels = np.stack([pattern(256, 256, seed, np.uint8) for seed in range(4)])
    p = item["properties"]
    sparse_tiff(
        path,
        tuple(p["proj:shape"]),
        Affine(*p["proj:transform"][:6]),
        "EPSG:26916",
        "uint8",
        {(512, 256): pixels},
        nodata=None,
        count=4,
    )
    server = TokenServer(root, TOKEN)
    yield server, pixels
    server.stop()


def _signer(base: str, token: str):
    class LoopbackSigner:
        """Rewrites Planetary Computer blob hrefs to the loopback server, with a token."""

        @hookimpl
        def stacchip_sign_href(self, href, asset):
            url = urlparse(href)
            if url.hostname == "naipeuwest.blob.core.windows.net":
                return f"{base}{url.path}?token={token}"
            return None

    return LoopbackSigner()


@pytest.fixture
def signer(token_server):
    server, _ = token_server
    plugins.get_plugin_manager().register(_signer(server.url, TOKEN), name="loopback-signer")
    return server


def test_signed_read_gives_the_exact_pixels(signer, token_server):
    _, pixels = token_server
    before = len(signer.requests)
    with Chipper(load(PC_NAIP), platform="naip") as chipper:
        chip = chipper.chip(1, 2)
    np.testing.assert_array_equal(chip["image"], pixels)
    assert len(signer.requests) > before  # read over the loopback server, not from anywhere else


def test_a_rejected_token_never_reaches_the_message(token_server):
    server, _ = token_server
    plugins.get_plugin_manager().register(
        _signer(server.url, "wrong-token-value"), name="bad-signer"
    )
    with pytest.raises(AssetError) as err:
        Chipper(load(PC_NAIP), platform="naip").chip(0, 0)
    assert "wrong-token-value" not in str(err.value) and "127.0.0.1" in str(err.value)


@pytest.fixture
def sas_endpoint(pc_sas_endpoint):
    """The run's loopback SAS endpoint (conftest), with fresh token caches and request log."""
    from conftest import _reset_pc_sdk

    _reset_pc_sdk()
    pc_sas_endpoint.clear()
    return pc_sas_endpoint


def test_planetary_computer_hrefs_are_signed_by_the_built_in_signer(sas_endpoint):
    href = load(PC_NAIP)["assets"]["image"]["href"]
    assert plugins.sign_href(href) == f"{href}?st=1&se=2&sig=loopback"
    assert sas_endpoint == ["/api/sas/v1/token/naipeuwest/naip"]


def test_unsigned_planetary_computer_href_asks_for_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # the extra not installed
    with pytest.raises(
        AssetError,
        match=r"naipeuwest.blob.core.windows.net \(Planetary Computer\) needs "
        r"signed hrefs: install 'stacchip-core\[planetary-computer\]'",
    ):
        Chipper(load(PC_NAIP), platform="naip").chip(0, 0)


def test_naip_normalize_copies_from_the_signed_href(signer, token_server, tmp_path):
    from stacchip_core.core.indexer import load_item

    server, _ = token_server
    platform = plugins.get_platform("naip")
    out = plugins.get_plugin_manager().hook.stacchip_normalize_item(
        platform=platform,
        item=load_item(load(PC_NAIP)),
        store=LocalStore(tmp_path),
        prefix="naip/x",
    )
    copy = Path(out.assets["image"].href)
    assert copy == tmp_path / "naip/x/m_3008506_nw_16_1_20110825.tif"
    served = server.root / urlparse(load(PC_NAIP)["assets"]["image"]["href"]).path.lstrip("/")
    assert copy.read_bytes() == served.read_bytes()
    assert TOKEN not in out.assets["image"].href and list(out.assets) == ["image"]


@pytest.mark.parametrize(
    "href",
    [
        # requester pays
        "s3://usgs-landsat/collection02/level-2/standard/oli-tirs/2024/086/107/x_SR_B4.TIF",
        "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/20/H/NJ/2024/3/B04.tif",
        # signed already
        "https://naipeuwest.blob.core.windows.net/naip/v002/x.tif?st=1&se=2&sig=abc",
        "/data/local.tif",
    ],
)
def test_other_hrefs_pass_unchanged(href):
    assert plugins.sign_href(href) == href
