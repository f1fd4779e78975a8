"""Degenerate grids (issue 12): empty rasters, chips larger than the scene, absurd sizes,
zero, rotated or non-square pixels are clear errors, with or without statistics."""

import json

import pytest
from conftest import TEST_ITEM, load, run_cli

from stacchip_core.core.grid import MAX_CHIPS, MAX_PIXELS, ChipGrid
from stacchip_core.errors import GridError


def item_with(tmp_path, shape, transform, name="item.json"):
    d = load(TEST_ITEM)
    d["properties"]["proj:shape"] = shape
    d["properties"]["proj:transform"] = transform
    d["properties"].pop("proj:bbox", None)
    path = tmp_path / name
    path.write_text(json.dumps(d))
    return path


GOOD = [1, 0, 342000.0, 0, -1, 4741800.0]
CASES = {
    "empty": ([0, 0], GOOD, "has an empty raster (proj:shape [0, 0])"),
    "no rows": ([0, 1000], GOOD, "has an empty raster (proj:shape [0, 1000])"),
    "chip larger than the scene": (
        [800, 1000],
        GOOD,
        "no whole chip of 1024 px fits its 800 x 1000 px raster",
    ),
    "huge": (
        [10_000_000, 10_000_000],
        GOOD,
        f"has 100000000000000 pixels, more than the limit of {MAX_PIXELS}",
    ),
    "zero transform": ([800, 1000], [0, 0, 342000.0, 0, 0, 4741800.0], "has a pixel size of 0"),
    "rotated": (
        [800, 1000],
        [0.866, 0.5, 342000.0, 0.5, -0.866, 4741800.0],
        "is rotated or sheared",
    ),
    "non-square": (
        [800, 1000],
        [1, 0, 342000.0, 0, -2, 4741800.0],
        "has non-square pixels (1 x 2)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("stats", [True, False])
def test_degenerate_grids_are_one_clear_line(tmp_path, case, stats):
    shape, transform, message = CASES[case]
    item = item_with(tmp_path, shape, transform)
    args = [
        "index",
        item,
        "-o",
        tmp_path / "i.parquet",
        "--chip-size",
        1024 if "larger" in case else 256,
    ]
    r = run_cli(*args, *([] if stats else ["--no-stats"]), "--platform", "naip")
    assert r.returncode == 1, r.stdout
    assert (
        r.stderr.startswith("Error: item 'm_4207009_ne_19_060_20211024.tif'")
        and message in r.stderr
    )
    assert len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "i.parquet").exists()


def test_too_many_chips(tmp_path):
    # 40,000 x 40,000 px is within the pixel limit; at 16 px a chip it is 6.25 million chips
    item = item_with(tmp_path, [40_000, 40_000], GOOD)
    with pytest.raises(
        GridError, match=f"6250000 chips of 16 px, more than the limit of {MAX_CHIPS}"
    ):
        ChipGrid.from_item(__import__("pystac").Item.from_file(str(item)), chip_size=16)


def test_a_grid_at_the_limits_is_fine(tmp_path):
    import pystac

    item = pystac.Item.from_file(str(item_with(tmp_path, [800, 1000], GOOD)))
    grid = ChipGrid.from_item(item, chip_size=800)
    assert (grid.x_size, grid.y_size) == (1, 1)
    south_up = pystac.Item.from_file(
        str(item_with(tmp_path, [800, 1000], [1, 0, 342000.0, 0, 1, 4741000.0], "s.json"))
    )
    assert ChipGrid.from_item(south_up, chip_size=256).size == 3 * 3
