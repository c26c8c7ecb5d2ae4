"""One look for every figure of a study report: colours, sizes, saving, skipping.

Why: a reader compares architectures across eight figures, so each architecture keeps one
colour everywhere (dense blue, standard MoE orange, fine-grained MoE green), and every figure is
drawn at one size and resolution that reads at 100 % zoom in a 1100-pixel-wide page. Figures
are built on `matplotlib.figure.Figure` directly (the Agg canvas, no pyplot state), so drawing a
report never touches a global backend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

log = logging.getLogger(__name__)
COLORS = {"dense": "#2f6db5", "moe": "#e07b28", "fine-grained": "#2a9d58"}
LABELS = {"dense": "dense", "moe": "standard MoE", "fine-grained": "fine-grained MoE"}
OTHER = "#7a4fa3"
DPI = 110
WIDTH = 9.6  # inches: 1056 pixels at DPI, the page's content width
RC = {
    "font.size": 9.5, "axes.titlesize": 10.5, "axes.labelsize": 9.5, "legend.fontsize": 8.5,
    "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.6,
    "legend.frameon": False, "lines.linewidth": 1.6, "font.family": "DejaVu Sans",
}  # fmt: skip


@dataclass
class Plot:
    """One figure of the report: its file (None when skipped), title, and the caption saying
    what to read from it; `skipped` says why it was not drawn."""

    name: str
    title: str
    caption: str
    path: Path | None = None
    skipped: str = ""


def variant_of(key: str) -> str:
    """The variant of an architecture key ('moe E8 k2 G1' -> 'moe')."""
    head = key.split(" ")[0]
    return head if head in COLORS else key


def color(key: str) -> str:
    return COLORS.get(variant_of(key), OTHER)


def label(key: str) -> str:
    v = variant_of(key)
    if v == key:
        return LABELS.get(key, key)
    return f"{LABELS.get(v, v)} ({key.split(' ', 1)[1]})"


def shade(key: str, i: int, n: int) -> tuple[float, float, float]:
    """The architecture's colour from light (i = 0) to dark (i = n − 1): model sizes."""
    base = np.array(to_rgb(color(key)))
    t = 0.0 if n <= 1 else i / (n - 1)
    mix = 0.6 * (1 - t)  # towards white for small sizes, a darker colour for the largest
    rgb = (base * (1 - mix) + mix) * (1 - 0.2 * t)
    return tuple(float(c) for c in np.clip(rgb, 0, 1))  # type: ignore[return-value]


def new_figure(panels: int, *, cols: int | None = None, height: float = 3.5,
               colorbar: float = 0.0) -> tuple[Figure, list[Axes]]:  # fmt: skip
    """A figure of `panels` axes in rows of `cols` (default: up to 3 per row), `height`
    inches a row; `colorbar` inches more between panels for each panel's colour bar."""
    import matplotlib

    cols = cols or min(panels, 3)
    rows = math.ceil(panels / cols)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH, height * rows), dpi=DPI)
        axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    # fixed margins in inches (constrained layout measured every tick label: seconds a figure)
    h, gap_w, gap_h = height * rows, 0.95 + colorbar, 0.95
    axes_w = (WIDTH - 0.95 - gap_w * (cols - 1)) / cols
    fig.subplots_adjust(left=0.75 / WIDTH, right=1 - (0.2 + colorbar) / WIDTH,
                        bottom=0.55 / h, top=1 - 0.35 / h, wspace=gap_w / axes_w,
                        hspace=gap_h / (height - gap_h))  # fmt: skip
    return fig, axes


def draw(out_dir: Path, plot: Plot, build: Callable[..., Figure | str], *args: Any) -> Plot:
    """Build and save one figure under out_dir/figures; `build` returns the figure, or a
    reason to skip it. A failure to draw skips the figure with its reason (logged), so one
    figure never loses the page."""
    import matplotlib

    path = out_dir / "figures" / f"{plot.name}.png"
    path.unlink(missing_ok=True)  # a figure skipped now must not leave an old file behind
    try:
        with matplotlib.rc_context(RC):
            fig = build(*args)
            if isinstance(fig, str):
                plot.skipped = fig
                return plot
            for ax in fig.axes:
                tidy_log(ax)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=DPI, format="png")
    except Exception as exc:  # noqa: BLE001 - the page says which figure failed and why
        plot.skipped = f"drawing it failed: {type(exc).__name__}: {exc}"
        log.warning("figure %s not drawn: %s", plot.name, plot.skipped)  # one line, no traceback
        log.debug("figure %s", plot.name, exc_info=True)
        return plot
    plot.path = path
    return plot


def arr(values: Iterable[Any] | None) -> np.ndarray:
    """A JSON list (None for a missing number) as a float array with nan."""
    if values is None:
        return np.array([], dtype=float)
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _plain(v: float, _pos: int) -> str:
    return f"{v:g}"


def tidy_log(ax: Axes) -> None:
    """Readable log axes: over a narrow range plain numbers at 1, 2, 3, 5 × 10^k (not
    "4.2×10^0"), over a wide one one label per decade and no minor ticks (each tick is a
    text to lay out: dozens of decades of minor ticks cost seconds)."""
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or not (lo > 0 and hi > 0):
            continue
        decades = abs(math.log10(hi / lo))
        if decades < 1.6:
            subs = (1.0, 2.0, 3.0, 5.0) if decades < 0.8 else (1.0, 2.0, 5.0)
            axis.set_major_locator(LogLocator(subs=subs))
            axis.set_major_formatter(FuncFormatter(_plain))
            axis.set_minor_formatter(NullFormatter())
        elif decades > 4:
            axis.set_major_locator(LogLocator(numticks=12))
            axis.set_minor_locator(NullLocator())


def log_axes(ax: Axes, x: bool = True, y: bool = False) -> None:
    if x:
        ax.set_xscale("log")
    if y:
        ax.set_yscale("log")


def band(ax: Axes, x: Sequence[float], lo: Sequence[float], hi: Sequence[float], c: Any,
         alpha: float = 0.18) -> None:  # fmt: skip
    """A shaded 95 % interval where both bounds are finite."""
    x, lo, hi = arr(x), arr(lo), arr(hi)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.sum() >= 2:
        ax.fill_between(x[ok], lo[ok], hi[ok], color=c, alpha=alpha, linewidth=0)


def split_line(ax: Axes, x: np.ndarray, y: np.ndarray, edge: float, c: Any, lab: str,
               lw: float = 2.2, among: np.ndarray | None = None) -> None:  # fmt: skip
    """Solid up to `edge` (the data), dashed beyond (the extrapolation); with `among`, solid
    only where it is also true (a compute within the data whose optimum is not is dashed)."""
    inside = x <= edge * 1.0001
    if among is not None and not among[inside].all():
        solid = inside & among
        ax.plot(x, y, color=c, lw=lw, ls="--", label=None if solid.any() else lab)
        if solid.any():
            ax.plot(x, np.where(solid, y, np.nan), color=c, lw=lw, label=lab)
        return
    ax.plot(x[inside], y[inside], color=c, lw=lw, label=lab)
    if (~inside).any():
        j = max(int(inside.sum()) - 1, 0)
        ax.plot(x[j:], y[j:], color=c, lw=lw, ls="--")


def panel_note(ax: Axes, text: str) -> None:
    """A short note in the panel (e.g. why it is empty)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="#666666", wrap=True)  # fmt: skip
