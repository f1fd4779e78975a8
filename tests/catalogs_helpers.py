"""Helpers for the real-catalog tests (tests/test_catalogs_*.py): real items from tests/data,
paired with synthetic rasters of their exact shape, transform and CRS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

DATA = Path(__file__).parent / "data"
CDSE_S2_ITEM = DATA / "cdse-S2B_MSIL2A_20200322T074609_N0500_R135_T36NYH_20230612T214223.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def sparse_tiff(path: Path, shape: tuple[int, int], transform: Affine, crs: str, dtype: str,
                blocks: dict[tuple[int, int], np.ndarray], nodata=0, count: int = 1) -> Path:
    """A tiled GeoTIFF of the full ``shape`` in which only ``blocks`` ({(row, col): array})
    are written (SPARSE_OK): a 10980 x 10980 band costs a few kB and milliseconds, and
    every other pixel reads as ``nodata``."""
    profile = {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "sparse_ok": True,
    }
    with rasterio.open(path, "w", **profile) as dst:
        for (row, col), data in blocks.items():
            data = data if data.ndim == 3 else data[None]
            dst.write(data, window=Window(col, row, data.shape[2], data.shape[1]))
    return path


def pattern(rows: int, cols: int, seed: int, dtype=np.uint16) -> np.ndarray:
    """Distinct, nonzero pixel values, so that a wrong offset or band shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, np.iinfo(dtype).max, size=(rows, cols), dtype=dtype)


class TokenServer:
    """A loopback HTTP server for one directory that answers only requests carrying
    ``?token=<token>`` (403 otherwise), with HEAD and Range support as GDAL needs: a stand-in
    for a signed-URL store (Planetary Computer SAS) that never leaves 127.0.0.1."""

    def __init__(self, root: Path, token: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _target(self):
                url = urlsplit(self.path)
                server.requests.append(url.path)
                if parse_qs(url.query).get("token") != [token]:
                    self.send_error(403, "token required")
                    return None
                path = root / url.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return None
                return path.read_bytes()

            def do_HEAD(self):
                data = self._target()
                if data is not None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Accept-Ranges", "bytes")
                    self.end_headers()

            def do_GET(self):
                data = self._target()
                if data is None:
                    return
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start, _, end = rng[6:].partition("-")
                    start, end = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
                    body = data[start:end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(body)

        self.requests: list[str] = []
        self.root = root
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
