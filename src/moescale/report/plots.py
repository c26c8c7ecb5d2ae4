"""The report's figures of fitted laws: loss against compute, IsoFLOP profiles, N_opt(C) and
D_opt(C), and the held-out prediction error.

Each `fig_*` takes the analysis (study.json as a dict) and returns a matplotlib Figure, or a
string saying why it cannot be drawn (its analysis section was skipped); `style.draw` saves it.
Everything is read from the analysis, nothing is refitted: the report shows what study.json
says. Compute is C = 6·N_active·D throughout (the analysis's convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from moescale.report.style import (
    COLORS,
    LABELS,
    arr,
    band,
    color,
    log_axes,
    new_figure,
    panel_note,
    shade,
    split_line,
)

VARIANTS = tuple(COLORS)
C_LABEL = "training compute C = 6·N_active·D (FLOPs)"
LOSS_LABEL = "validation loss (nats/token)"


def skipped(section: Any) -> bool:
    return not section or (isinstance(section, Mapping) and "skipped" in section)


def _reason(a: Mapping[str, Any], key: str) -> str:
    why = "; ".join(
        f"{LABELS[v]}: {a[key][v]['skipped']}"
        for v in VARIANTS
        if isinstance(a[key].get(v), Mapping) and "skipped" in a[key][v]
    )
    return why or "no data"


def _budgets(ax: Axes, a: Mapping[str, Any]) -> None:
    for b in a["data"]["budgets"]:
        ax.axvline(b, color="#999999", lw=0.8, ls=":")


def _among(front: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """Where the frontier's optimum lies among the trained runs' sizes and tokens (drawn
    solid there only; older study.json files lack the key: all of it)."""
    return np.array(front.get("among_runs") or [True] * len(x), bool)


def _law_panel(ax: Axes, a: Mapping[str, Any], v: str) -> None:
    sec, front = a["laws"][v], a["frontier"][v]
    law = sec["primary"]
    fit = sec["laws"][law]
    curves = fit["size_curves"]
    for i, sc in enumerate(curves):
        ax.plot(arr(sc["compute"]), arr(sc["loss"]), color=shade(v, i, len(curves)), lw=0.9)
    pts = a["points"][v]
    ax.scatter(
        [p["compute"] for p in pts],
        [p["loss"] for p in pts],
        s=18,
        color=color(v),
        edgecolor="white",
        linewidth=0.5,
        zorder=3,
        label="runs (mean of seeds)",
    )
    cs, ys = [p["compute"] for p in pts], [p["loss"] for p in pts]
    if not skipped(front):
        x = arr(front["compute"])
        edge = front["fitted_range"][1] or x.max()
        band(ax, x, front["loss_lo"], front["loss_hi"], color(v))
        split_line(ax, x, arr(front["loss"]), edge, "#222222", "compute-optimal L*(C)",
                   among=_among(front, x))  # fmt: skip
        near = x <= max(cs) * 4
        ys += [float(y) for y in arr(front["loss_lo"])[near] if np.isfinite(y)]
    log_axes(ax)
    ax.set_xlim(min(cs) / 1.5, max(cs) * 4)  # the data; the overlay panel shows the budgets
    pad = 0.05 * (max(ys) - min(ys))
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_title(f"{LABELS[v]}: {law} law")
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.legend(loc="upper right")


def _overlay_panel(ax: Axes, a: Mapping[str, Any]) -> None:
    env = a["equal_compute"]["envelope"]
    for v in VARIANTS:
        front = a["frontier"].get(v)
        if not skipped(front):
            x = arr(front["compute"])
            band(ax, x, front["loss_lo"], front["loss_hi"], color(v), 0.15)
            split_line(ax, x, arr(front["loss"]), front["fitted_range"][1] or x.max(),
                       color(v), f"{LABELS[v]} (fit)", among=_among(front, x))  # fmt: skip
        if not skipped(env) and v in env["frontier"]:
            steps = np.array(env["frontier"][v], float)
            ax.plot(
                steps[:, 0],
                steps[:, 1],
                color=color(v),
                lw=0.8,
                alpha=0.9,
                marker="o",
                ms=3.5,
                mec="white",
                mew=0.4,
                label=f"{LABELS[v]} (measured best)",
            )
    _budgets(ax, a)
    log_axes(ax)
    ax.set_title("all architectures: data and extrapolation to the budgets")
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.legend(loc="upper right", ncol=1)


def fig_loss_vs_compute(a: Mapping[str, Any]) -> Figure | str:
    """Per architecture its runs, the fitted law along each size, the compute-optimal
    frontier with its band (dashed: extrapolated, in compute or to an optimum outside the
    trained sizes and tokens); then every frontier together."""
    have = [v for v in VARIANTS if not skipped(a["laws"].get(v)) and a["laws"][v]["primary"]]
    if not have:
        return "no law was fitted: " + _reason(a, "laws")
    fig, axes = new_figure(len(have) + 1, cols=2, height=3.9)
    for ax, v in zip(axes, have, strict=False):
        _law_panel(ax, a, v)
    _overlay_panel(axes[len(have)], a)
    return fig


def fig_isoflop(a: Mapping[str, Any]) -> Figure | str:
    """Per architecture: loss against N_active at each compute budget, the parabola in ln N
    and its minimum."""
    have = [v for v in VARIANTS if not skipped(a["isoflop"].get(v))]
    if not have:
        return _reason(a, "isoflop")
    fig, axes = new_figure(len(have), cols=min(len(have), 2), height=3.6)
    for ax, v in zip(axes, have, strict=True):
        sec = a["isoflop"][v]
        pts = sec["points"]
        n, loss, bud = arr(pts["n_active"]), arr(pts["loss"]), arr(pts["budget"])
        used = sec["budgets"]
        for i, b in enumerate(used):
            c = shade(v, i, len(used))
            sel = np.isclose(bud, b["compute"], rtol=1e-6)
            ax.scatter(n[sel], loss[sel], color=c, s=22, zorder=3,
                       label=f"C = {b['compute']:.2g}")  # fmt: skip
            grid = np.linspace(np.log(n[sel].min()) - 0.3, np.log(n[sel].max()) + 0.3, 60)
            c0, c1, c2 = b["parabola"]
            ax.plot(np.exp(grid), c0 + c1 * grid + c2 * grid**2, color=c, lw=1.2)
            ax.plot([b["n_opt"]], [b["loss"]], marker="x", color="#222222", ms=7, mew=1.6)
        ax.scatter(n[~np.isfinite(bud)], loss[~np.isfinite(bud)], color="#bbbbbb", s=12,
                   label="other runs")  # fmt: skip
        log_axes(ax)
        ax.set_title(f"{LABELS[v]}: N_opt ∝ C^{sec['params']['a']:.3g}")
        ax.set_xlabel("active parameters N_active")
        ax.set_ylabel(LOSS_LABEL)
        ax.legend(loc="upper right", fontsize=7.5)
    return fig


def fig_allocation(a: Mapping[str, Any]) -> Figure | str:
    """N_opt(C) (active parameters) and D_opt(C) with their bands, per architecture; the
    plan budgets marked; IsoFLOP minima where profiles exist. A law without an interior optimum
    (a coefficient forced to 0) has no finite N_opt: its points are left out, with a note."""
    have = [v for v in VARIANTS if not skipped(a["frontier"].get(v))]
    if not have:
        return _reason(a, "frontier")
    ok = {v: _positive(a["frontier"][v], "n_active") & _positive(a["frontier"][v], "tokens")
          for v in have}  # fmt: skip
    missing = [LABELS[v] for v in have if not ok[v].all()]
    note = (f"no interior optimum (N_opt or D_opt not finite and > 0, e.g. a coefficient forced "
            f"to 0) for {', '.join(missing)}") if missing else ""  # fmt: skip
    have = [v for v in have if ok[v].any()]
    if not have:
        return note
    fig, (ax_n, ax_d) = new_figure(2, cols=2, height=3.9)
    for v in have:
        f, sel = a["frontier"][v], ok[v]
        x = arr(f["compute"])
        edge = f["fitted_range"][1] or x.max()
        for ax, key in ((ax_n, "n_active"), (ax_d, "tokens")):
            band(ax, x[sel], arr(f[f"{key}_lo"])[sel], arr(f[f"{key}_hi"])[sel], color(v))
            split_line(ax, x[sel], arr(f[key])[sel], edge, color(v), LABELS[v])
        iso = a["isoflop"].get(v)
        if not skipped(iso):
            bs = iso["budgets"]
            ax_n.scatter([b["compute"] for b in bs], [b["n_opt"] for b in bs], color=color(v),
                         marker="D", s=22, edgecolor="black", lw=0.5, zorder=4,
                         label=f"{LABELS[v]} IsoFLOP minima")  # fmt: skip
    for ax, what in ((ax_n, "compute-optimal N_active"), (ax_d, "compute-optimal tokens D")):
        _budgets(ax, a)
        log_axes(ax, True, True)
        ax.set_xlabel(C_LABEL)
        ax.set_ylabel(what)
        ax.legend(loc="upper left")
    ax_n.set_title("N_opt(C): what size to train")
    ax_d.set_title("D_opt(C): how many tokens")
    if note:
        fig.text(0.5, 0.01, f"left out: {note}", ha="center", va="bottom", fontsize=8,
                 color="#8a5a00")  # fmt: skip
    return fig


def _positive(f: Mapping[str, Any], key: str) -> np.ndarray:
    """Where a frontier quantity can go on a log axis (finite and > 0)."""
    y = arr(f[key])
    return np.isfinite(y) & (np.nan_to_num(y) > 0)


def fig_holdout(a: Mapping[str, Any]) -> Figure | str:
    """Observed minus predicted loss of every point (in-sample, small) and of the held-out
    largest-compute points predicted by a refit without them (large, with ±2 SE bars)."""
    have = [v for v in VARIANTS if not skipped(a["laws"].get(v)) and a["laws"][v]["primary"]]
    if not have:
        return "no law was fitted: " + _reason(a, "laws")
    fig, axes = new_figure(1, height=3.8)
    ax = axes[0]
    for j, v in enumerate(have):
        f = a["laws"][v]["laws"][a["laws"][v]["primary"]]
        h = f["heldout"]
        dodge = 1.06 ** (j - (len(have) - 1) / 2)  # side by side at one compute
        c, obs, pred = arr(h["compute"]) * dodge, arr(h["observed"]), arr(h["predicted"])
        held, out = np.array(h["held_out"], bool), arr(h["holdout_predicted"])
        ax.scatter(c, obs - pred, color=color(v), s=14, alpha=0.55)
        mae = f["holdout"].get("mae")
        lab = f"{LABELS[v]} held out (MAE {mae:.3g})" if mae is not None else LABELS[v]
        ok = held & np.isfinite(out)
        se = np.nan_to_num(arr(h["loss_se"])[ok])
        ax.errorbar(c[ok], obs[ok] - out[ok], yerr=2 * se, fmt="o", ms=7, color=color(v),
                    mec="black", mew=0.6, capsize=3, label=lab)  # fmt: skip
    ax.axhline(0, color="#333333", lw=0.8)
    log_axes(ax)
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel("observed − predicted loss (nats)")
    ax.set_title("prediction error: in-sample (small) and held-out largest compute (large)")
    ax.legend(loc="best")
    return fig


def no_panel(ax: Axes, why: str) -> None:
    panel_note(ax, why)
    ax.set_axis_off()
