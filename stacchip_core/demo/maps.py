"""Maps of an index: every chip's footprint coloured by its cloud fraction.

``index_map_html`` writes one self-contained page (inline SVG and a few lines of script; no
tiles, scripts or styles fetched from anywhere, so it opens offline): one ``<path class="chip">``
per chip with its chipid and fractions as a tooltip, wheel to zoom, drag to pan, a button per
platform to jump to its chips. ``index_map_png`` draws the same as a static figure, one panel
per platform (sources lie continents apart).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely

log = logging.getLogger(__name__)



# viridis at 17 even stops (matplotlib's colormap data), interpolated in between: the page and
# the previews need no plotting library
_VIRIDIS = np.array([[int(c[k:k + 2], 16) for k in (1, 3, 5)] for c in (
    "#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e",
    "#21918c", "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219",
    "#fde725")], float)


# 256 levels, as matplotlib's colormaps have: the static map's colour bar shows every colour
# a chip can have
_AT = np.linspace(0, len(_VIRIDIS) - 1, 256)
_STOPS = np.arange(len(_VIRIDIS))
_LEVELS = np.rint(
    np.stack([np.interp(_AT, _STOPS, _VIRIDIS[:, b]) for b in range(3)], axis=-1)
).astype(int)


def cloud_colours(cloud: np.ndarray) -> list[str]:
    """Hex colours of cloud fractions 0..1 (viridis in 256 levels: clear is purple, cloudy
    yellow).

    Args:
        cloud: Cloud fractions, any shape (clipped to 0..1).

    Returns:
        One ``#rrggbb`` colour per fraction, in flattened order.
    """
    level = np.minimum((np.clip(np.asarray(cloud, dtype=float), 0, 1) * 256).astype(int), 255)
    return ["#{:02x}{:02x}{:02x}".format(*c) for c in _LEVELS[level.reshape(-1)].tolist()]


def _footprints(table: pa.Table) -> np.ndarray:
    return shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))


def _svg_path(geom) -> str:
    parts = []
    polys = geom.geoms if hasattr(geom, "geoms") else [geom]
    for poly in polys:
        coords = np.asarray(poly.exterior.coords)[:-1]
        parts.append("M" + "L".join(f"{x:.6f},{-y:.6f}" for x, y in coords) + "Z")
    return "".join(parts)


def _by_cloud(table: pa.Table) -> pa.Table:
    """Least cloudy first: where chips of several dates overlap, the cloudiest is drawn on top."""
    order = np.argsort(table["cloud_cover_percentage"].to_numpy(), kind="stable")
    return table.take(pa.array(order))


def index_map_html(table: pa.Table, path: str | Path, title: str = "stacchip index") -> Path:
    """Write the index's interactive map: one self-contained HTML page that opens offline.

    Args:
        table: Index rows (geometry, chipid, platform and the cloud and nodata fractions).
        path: The page to write (its folder is created; written through a temporary file).
        title: The page's title and heading.

    Returns:
        ``path``.
    """
    path = Path(path)
    table = _by_cloud(table)
    geoms = _footprints(table)
    cloud = table["cloud_cover_percentage"].to_numpy()
    nodata = table["nodata_percentage"].to_numpy()
    colours = cloud_colours(cloud)
    platforms = table["platform"].to_pylist()
    chipids = table["chipid"].to_pylist()
    views = {}
    for name in sorted(set(platforms)):
        sel = [g for g, p in zip(geoms, platforms) if p == name]
        xmin, ymin, xmax, ymax = shapely.total_bounds(sel)
        pad = max(xmax - xmin, ymax - ymin) * 0.08 + 1e-6
        views[name] = [xmin - pad, -ymax - pad, xmax - xmin + 2 * pad, ymax - ymin + 2 * pad]
    first = max(views, key=lambda n: platforms.count(n))
    paths = "\n".join(
        f'<path class="chip" d="{_svg_path(g)}" fill="{c}" data-platform="{html.escape(p)}" '
        f'data-chipid="{html.escape(i)}" data-cloud="{cl:.4f}"><title>{html.escape(i)}\n'
        f'{html.escape(p)}: cloud {cl:.3f}, nodata {nd:.3f}</title></path>'
        for g, c, p, i, cl, nd in zip(geoms, colours, platforms, chipids, cloud, nodata))
    buttons = " ".join(
        f'<button data-view="{html.escape(n)}">{html.escape(n)} ({platforms.count(n)})</button>'
        for n in views
    )
    legend = "".join(f'<span style="background:{c}">{v:.1f}</span>' for v, c in
                     zip(np.linspace(0, 1, 6), cloud_colours(np.linspace(0, 1, 6))))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ margin: 0; font: 13px sans-serif; background: #f4f4f4; }}
header {{ padding: 6px 10px; }}
header span {{ display: inline-block; width: 34px; color: #fff; text-align: center; }}
svg {{ width: 100vw; height: calc(100vh - 70px); background: #dde6ee; cursor: grab;
  display: block; }}
path.chip {{ stroke: #222; stroke-width: 1px; vector-effect: non-scaling-stroke; fill-opacity: 1; }}
path.chip:hover {{ stroke: #f0f; stroke-width: 3px; }}
</style></head>
<body><header><b>{html.escape(title)}</b>: {len(chipids)} chips coloured by cloud fraction {legend}
<br>{buttons}</header>
<svg id="map" viewBox="{" ".join(f"{v:.6f}" for v in views[first])}"
 preserveAspectRatio="xMidYMid meet"
 xmlns="http://www.w3.org/2000/svg">
{paths}
</svg>
<script>
const svg = document.getElementById("map"), views = {json.dumps(views)};
let vb = svg.viewBox.baseVal;
function set(v) {{ vb.x = v[0]; vb.y = v[1]; vb.width = v[2]; vb.height = v[3]; }}
document.querySelectorAll("button[data-view]").forEach(
  b => b.onclick = () => set(views[b.dataset.view]));
svg.addEventListener("wheel", e => {{
  e.preventDefault();
  const k = e.deltaY > 0 ? 1.2 : 1 / 1.2, r = svg.getBoundingClientRect();
  const px = vb.x + (e.clientX - r.left) / r.width * vb.width,
    py = vb.y + (e.clientY - r.top) / r.height * vb.height;
  set([px - (px - vb.x) * k, py - (py - vb.y) * k, vb.width * k, vb.height * k]);
}}, {{passive: false}});
let drag = null;
svg.addEventListener("mousedown", e => drag = [e.clientX, e.clientY, vb.x, vb.y]);
window.addEventListener("mouseup", () => drag = null);
window.addEventListener("mousemove", e => {{
  if (!drag) return;
  const r = svg.getBoundingClientRect(), s = Math.max(vb.width / r.width, vb.height / r.height);
  vb.x = drag[2] - (e.clientX - drag[0]) * s; vb.y = drag[3] - (e.clientY - drag[1]) * s;
}});
</script></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path


def index_map_png(table: pa.Table, path: str | Path) -> Path | None:
    """A static map: one panel per platform, chips filled by cloud fraction, a shared colour
    bar. Drawn with matplotlib (the ``viz`` extra); None, with one log line, without it.

    Args:
        table: Index rows (geometry, platform and the cloud fraction).
        path: The PNG to write (its folder is created).

    Returns:
        ``path``, or None when matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("index_map.png not drawn: it needs matplotlib "
                    "(pip install 'stacchip-core[viz]'); index_map.html shows the same")
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon

    path = Path(path)
    table = _by_cloud(table)
    geoms = _footprints(table)
    cloud = table["cloud_cover_percentage"].to_numpy()
    platforms = np.asarray(table["platform"].to_pylist(), dtype=object)
    names = sorted(set(platforms.tolist()))
    fig = Figure(figsize=(3.4 * len(names) + 0.8, 3.6), dpi=100)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colours = cloud_colours(cloud)
    for ax, name in zip(axes, names):
        for k in np.flatnonzero(platforms == name):
            polys = geoms[k].geoms if hasattr(geoms[k], "geoms") else [geoms[k]]
            for poly in polys:
                ax.add_patch(
                    Polygon(
                        np.asarray(poly.exterior.coords),
                        facecolor=colours[k],
                        edgecolor="#222",
                        linewidth=0.4,
                    )
                )
        xmin, ymin, xmax, ymax = shapely.total_bounds(geoms[platforms == name])
        pad = max(xmax - xmin, ymax - ymin) * 0.05 + 1e-6
        ax.set_xlim(xmin - pad, xmax + pad)
        ax.set_ylim(ymin - pad, ymax + pad)
        ax.set_aspect(1 / max(np.cos(np.radians((ymin + ymax) / 2)), 0.05))
        ax.set_title(f"{name} ({int((platforms == name).sum())})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(useOffset=False)
    cmap = ListedColormap(_LEVELS / 255)
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap), ax=list(axes), label="cloud fraction", fraction=0.03
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path
