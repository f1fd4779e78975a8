"""What the plugins' selection must find in the demo's synthetic archive (the archive plants
these items, stacchip_core.demo.archive; the tests check the selection against them)."""

from datetime import datetime

from stacchip_core.demo.archive import MODIS_TILE, modis_months, s1_quarter


def s1_expected(index: int = 0) -> list[str]:
    """The Sentinel-1 item sample ``index`` selects: the one over the tile in its quarter."""
    year, q = s1_quarter(index)
    return [f"S1A_IW_GRDH_1SDV_{year}{2 + 3 * q:02d}10T094350_in_rtc"]


def modis_expected() -> list[str]:
    """The MODIS items sample 0 selects: the newer Aqua composite of each drawn month."""
    h, v = MODIS_TILE
    return [f"MYD09A1.A{datetime(2018, m, 9):%Y%j}.h{h:02d}v{v:02d}.061.synthetic"
            for m in modis_months(h, v, 2018)]
