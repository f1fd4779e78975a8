"""One cold batch through the read pipeline: CPU milliseconds per chip of the reading process.

A 1536 px synthetic Sentinel-2 scene (noise 300, so tiles compress as real ones do; 512 px
tiles, deflate) is served by tests/rangeserver.py in its own process, so the server's CPU is
not counted. The scene is indexed (layouts in the index), then one ``ChipReader`` reads the
first 32 chips, RGB, in one ``read_many``: every item is new to the process (cold). Printed:
client CPU per chip (``time.process_time``, all threads), wall time, requests and bytes (from
the server). ``--keys cdse`` serves the item under Copernicus Data Space keys (``B04_10m``).

    python benchmarks/bench_read.py                 # Earth Search keys
    python benchmarks/bench_read.py --keys cdse     # CDSE keys
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
CDSE = {
    "blue": "B02_10m",
    "green": "B03_10m",
    "red": "B04_10m",
    "nir": "B08_10m",
    "rededge1": "B05_20m",
    "rededge2": "B06_20m",
    "rededge3": "B07_20m",
    "nir08": "B8A_20m",
    "swir16": "B11_20m",
    "swir22": "B12_20m",
    "scl": "SCL_20m",
}


def scene(root: Path, keys: str) -> Path:
    from stacchip_core.demo import synthetic

    served = root / f"served-{keys}"
    if (served / "item.json").exists():
        return served
    src = Path(synthetic.sentinel2_scene(root / "scene", 1536, noise=300)) if not (
        root / "scene").exists() else next((root / "scene").rglob("*.json"))
    item = json.loads(src.read_text())
    served.mkdir(parents=True)
    assets = {}
    for key, asset in item["assets"].items():
        if asset["href"].startswith(str(src.parent)):
            shutil.copy(asset["href"], served / Path(asset["href"]).name)
            asset["href"] = Path(asset["href"]).name
        assets[CDSE.get(key, key) if keys == "cdse" else key] = asset
    item["assets"] = assets
    (served / "item.json").write_text(json.dumps(item))
    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", choices=["earth-search", "cdse"], default="earth-search")
    parser.add_argument("--root", default="/tmp/stacchip-bench-read")
    parser.add_argument("--chips", type=int, default=32)
    args = parser.parse_args()
    served = scene(Path(args.root), args.keys)
    server = subprocess.Popen(
        [sys.executable, str(HERE.parent / "tests" / "rangeserver.py"), str(served)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]

        def stats() -> dict:
            return json.loads(urllib.request.urlopen(f"{url}/_stats").read())

        from stacchip_core.core.indexer import Indexer
        from stacchip_core.training.chipread import ChipReader

        rows = (
            Indexer(f"{url}/item.json", platform="sentinel-2-l2a", stats=False)
            .create_index()
            .to_pylist()
        )
        rows = rows[:args.chips]
        before = stats()
        reader = ChipReader(bands=["red", "green", "blue"])
        c0, w0 = time.process_time(), time.perf_counter()
        out = reader.read_many(rows)
        c1, w1 = time.process_time(), time.perf_counter()
        after = stats()
        print(
            f"{args.keys}: {len(out)} chips, client CPU {1000 * (c1 - c0) / len(out):.2f} ms/chip, "
            f"wall {1000 * (w1 - w0):.0f} ms, {after['requests'] - before['requests']} requests, "
            f"{(after['bytes'] - before['bytes']) / 1024:.0f} KiB"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
