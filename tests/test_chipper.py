import gc
import shutil

import numpy as np
import pytest
from affine import Affine
from conftest import load

from stacchip_core import AssetError, Chipper, Indexer, chip_from_row
from stacchip_core.core.output import write_cog
from stacchip_core.demo.synthetic import band_pattern


def open_handles(item_path, assets) -> int:
    """File descriptors this process holds on the files of ``assets`` (from /proc: the
    handles the operating system sees, whatever keeps them)."""
    import os
    from pathlib import Path

    hrefs = {str(Path(load(item_path)["assets"][a]["href"]).resolve()) for a in assets}
    fds = Path("/proc/self/fd")
    targets = []
    for fd in os.listdir(fds):
        try:
            targets.append(os.readlink(fds / fd))
        except OSError:  # closed while listing
            continue
    return sum(t in hrefs for t in targets)


def expand(native: np.ndarray, factor: int, row0: int, col0: int, cs: int) -> np.ndarray:
    """Reference nearest-neighbour expansion: grid pixel (r, c) is native pixel (r//f, c//f)."""
    rows = (row0 + np.arange(cs)) // factor
    cols = (col0 + np.arange(cs)) // factor
    return native[np.ix_(rows, cols)]


def test_exact_pixels_10m_20m_and_60m(synthetic_scenes):
    item = str(synthetic_scenes["s2"])
    with Chipper(item, assets=["red", "swir16", "coastal"]) as chipper:
        assert len(chipper) == 9
        chip = chipper.chip(1, 2)
    # red is band 2 of the 10 m set, swir16 band 4+4=8 of the 20 m set (384 px), coastal 20 (128 px)
    np.testing.assert_array_equal(chip["red"][0], band_pattern(2, 768, 768)[512:768, 256:512])
    np.testing.assert_array_equal(
        chip["swir16"][0], expand(band_pattern(8, 384, 384), 2, 512, 256, 256)
    )
    # 256 is not a multiple of 6: a 60 m pixel straddles two chips and is read for both
    np.testing.assert_array_equal(
        chip["coastal"][0], expand(band_pattern(20, 128, 128), 6, 512, 256, 256)
    )
    assert chip["coastal"][0, 0, 0] == band_pattern(20, 128, 128)[512 // 6, 256 // 6]


def test_default_assets_are_the_platform_bands_in_canonical_order(synthetic_scenes):
    with Chipper(str(synthetic_scenes["s2"])) as chipper:
        assert chipper.assets == [
            "blue",
            "green",
            "red",
            "rededge1",
            "rededge2",
            "rededge3",
            "nir",
            "nir08",
            "swir16",
            "swir22",
        ]
    with Chipper(str(synthetic_scenes["s2pc"])) as chipper:  # Planetary Computer keys
        assert chipper.assets == [
            "B02",
            "B03",
            "B04",
            "B05",
            "B06",
            "B07",
            "B08",
            "B8A",
            "B11",
            "B12",
        ]
        chip = chipper.chip(0, 0)
    np.testing.assert_array_equal(chip["B04"][0], band_pattern(2, 768, 768)[:256, :256])


def test_canonical_names_resolve_to_planetary_computer_keys(synthetic_scenes):
    with Chipper(str(synthetic_scenes["s2pc"]), assets=["red", "scl"]) as chipper:
        assert chipper.assets == ["B04", "SCL"]


def test_multiband_naip(synthetic_scenes):
    with Chipper(str(synthetic_scenes["naip"])) as chipper:
        assert chipper.assets == ["image"]
        assert (chipper.grid.x_size, chipper.grid.y_size) == (2, 2)
        chip = chipper[3]  # row-major: x=1, y=1
    assert chip["image"].shape == (4, 256, 256) and chip["image"].dtype == np.uint8
    for b in range(4):
        np.testing.assert_array_equal(
            chip["image"][b], (band_pattern(b, 600, 530) % 251).astype(np.uint8)[256:512, 256:512]
        )


def test_sequence_protocol_and_handle_reuse(synthetic_scenes):
    item = synthetic_scenes["landsat"]
    gc.collect()  # handles of other tests' unreachable cycles are not this chipper's
    assert open_handles(item, ["red", "qa_pixel"]) == 0
    with Chipper(str(item), assets=["red", "qa_pixel"]) as chipper:
        chips = list(chipper)
        assert len(chips) == len(chipper) == 4
        np.testing.assert_array_equal(chips[-1]["red"], chipper[-1]["red"])
        # local files: every asset was opened once, however many chips were read
        assert open_handles(item, ["red", "qa_pixel"]) == 2
        with pytest.raises(IndexError):
            chipper[4]
        with pytest.raises(IndexError, match="outside grid"):
            chipper.chip(2, 0)


def test_batch_read_equals_single_reads(synthetic_scenes):
    with Chipper(str(synthetic_scenes["s2"]), assets=["red", "nir08"]) as chipper:
        xys = [(x, y) for y in range(3) for x in range(3)][::-1]
        batch = chipper.chips(xys, workers=3)
        for (x, y), chip in zip(xys, batch):
            single = chipper.chip(x, y)
            np.testing.assert_array_equal(chip["red"], single["red"])
            np.testing.assert_array_equal(chip["nir08"], single["nir08"])


def test_chipper_from_indexer_and_index_row(synthetic_scenes):
    indexer = Indexer(str(synthetic_scenes["s2"]), chip_max_nodata=1.0)
    table = indexer.create_index()
    row = table.slice(7, 1).to_pylist()[0]
    pixels = chip_from_row(row, assets=["green"])
    x, y = row["chip_index_x"], row["chip_index_y"]
    np.testing.assert_array_equal(
        pixels["green"][0],
        band_pattern(1, 768, 768)[y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256],
    )
    with Chipper(indexer, assets=["green"]) as chipper:
        np.testing.assert_array_equal(chipper.chip(x, y)["green"], pixels["green"])


def test_mountpath_maps_s3_hrefs_to_a_local_mirror(synthetic_scenes, tmp_path):
    d = load(synthetic_scenes["s2"])
    mirror = tmp_path / "mirror"
    for key, asset in d["assets"].items():
        target = mirror / "sentinel-2-l2a" / d["id"] / f"{key}.tif"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(asset["href"], target)
        asset["href"] = f"s3://clay-v1-data/sentinel-2-l2a/{d['id']}/{key}.tif"
    with Chipper(d, assets=["red"], mountpath=mirror) as chipper:
        np.testing.assert_array_equal(
            chipper.chip(2, 2)["red"][0], band_pattern(2, 768, 768)[512:, 512:]
        )


def test_reads_from_a_real_s3_endpoint(synthetic_scenes, bucket, s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    d = load(synthetic_scenes["s2"])
    for key in ("red", "swir22"):
        client.upload_file(d["assets"][key]["href"], bucket, f"scenes/{key}.tif")
        d["assets"][key]["href"] = f"s3://{bucket}/scenes/{key}.tif"
    with Chipper(d, assets=["red", "swir22"]) as chipper:
        chip = chipper.chip(1, 1)
    np.testing.assert_array_equal(chip["red"][0], band_pattern(2, 768, 768)[256:512, 256:512])
    np.testing.assert_array_equal(
        chip["swir22"][0], expand(band_pattern(9, 384, 384), 2, 256, 256, 256)
    )


def _item_with(tmp_path, data, transform, crs="EPSG:32633", extra_assets=None):
    path = write_cog(tmp_path / "main.tif", data, transform, crs)
    rows, cols = data.shape[-2:]
    d = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "bad",
        "geometry": None,
        "links": [],
        "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:code": crs},
        "assets": {
            "main": {
                "href": str(path),
                "type": "image/tiff",
                "proj:shape": [rows, cols],
                "proj:transform": list(transform)[:6],
            }
        },
    }
    d["assets"].update(extra_assets or {})
    return d


def test_non_integer_resolution_ratio_is_resampled(tmp_path):
    # 15 m on a 10 m grid: read through core.resample
    # (tests/test_catalogs_grids.py has exact pixels)
    t10 = Affine(10, 0, 500000, 0, -10, 4000000)
    t15 = Affine(15, 0, 500000, 0, -15, 4000000)
    odd = write_cog(tmp_path / "odd.tif", np.ones((200, 200), np.uint16), t15, "EPSG:32633")
    d = _item_with(
        tmp_path,
        np.ones((300, 300), np.uint16),
        t10,
        extra_assets={"odd": {"href": str(odd), "type": "image/tiff"}},
    )
    with Chipper(d, assets=["odd"]) as chipper:
        assert (chipper.chip(0, 0)["odd"] == 1).all()


def test_offset_asset_is_resampled_with_nodata_outside(tmp_path):
    t10 = Affine(10, 0, 500000, 0, -10, 4000000)
    shifted = write_cog(
        tmp_path / "s.tif",
        np.ones((300, 300), np.uint16),
        Affine(10, 0, 500500, 0, -10, 4000000),
        "EPSG:32633",
    )
    d = _item_with(
        tmp_path,
        np.ones((300, 300), np.uint16),
        t10,
        extra_assets={"s": {"href": str(shifted), "type": "image/tiff"}},
    )
    with Chipper(d, assets=["s"]) as chipper:
        chip = chipper.chip(0, 0)["s"][0]
    assert (chip[:, :50] == 0).all() and (chip[:, 50:] == 1).all()  # 500 m east: 50 columns outside


def test_missing_and_corrupt_assets(tmp_path):
    t10 = Affine(10, 0, 500000, 0, -10, 4000000)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 100)
    d = _item_with(
        tmp_path,
        np.ones((300, 300), np.uint16),
        t10,
        extra_assets={"c": {"href": str(corrupt), "type": "image/tiff"}},
    )
    with pytest.raises(AssetError, match="has no asset 'nope'"):
        Chipper(d, assets=["nope"])
    with Chipper(d, assets=["c"]) as chipper, pytest.raises(AssetError, match="cannot open"):
        chipper.chip(0, 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_reads_reuse_their_threads_handles(synthetic_scenes, workers):
    item, assets = synthetic_scenes["s2"], ["red", "nir08"]
    # the count is the process's: handles that earlier tests' objects hold in unreachable
    # cycles (test_torchgeo's Lightning trainer holds a dataset reading these files) close now
    gc.collect()
    assert open_handles(item, assets) == 0
    with Chipper(str(item), assets=assets, use_layouts=False) as chipper:
        xys = [(x, y) for y in range(3) for x in range(3)]
        counts = []
        for batch in (xys, xys[::-1], xys):
            chipper.chips(batch, workers=workers)
            counts.append(open_handles(item, assets))
    # one handle per asset and thread at most, kept across batches: with one worker the second
    # and third batches open nothing; with two, which thread reads what is up to the pool
    assert (
        counts == [2, 2, 2]
        if workers == 1
        else all(2 <= c <= 4 for c in counts) and counts == sorted(counts)
    )
    assert open_handles(item, assets) == 0  # closed with the chipper


def test_file_urls(synthetic_scenes):
    d = load(synthetic_scenes["s2"])
    d["assets"]["red"]["href"] = "file://" + d["assets"]["red"]["href"]
    with Chipper(d, assets=["red"]) as chipper:
        np.testing.assert_array_equal(
            chipper.chip(0, 1)["red"][0], band_pattern(2, 768, 768)[256:512, :256]
        )
