"""The report's figures of training curves and hyperparameters: loss against tokens, the
fine-grained vs standard MoE gap, the (batch, tokens) and (LR, tokens) heatmaps, B_opt and
η_opt against loss, and the gradient noise scale against loss.

Like `plots`, each `fig_*` returns a Figure or the reason it cannot be drawn. Curves are the
stitched ones (a WSD branch drawn from its trunk's start), smoothed for reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from moescale.report.plots import VARIANTS, skipped
from moescale.report.style import LABELS, arr, band, color, label, log_axes, new_figure, shade
from moescale.study.analysis_data import Curve

TOKENS_LABEL = "tokens trained D"
TRAIN_LABEL = "training loss (nats/token, smoothed)"


def fig_loss_vs_tokens(a: Mapping[str, Any], curves: Mapping[str, Curve]) -> Figure | str:
    """Per architecture: every ladder run's training curve, light (small) to dark (large);
    a dot marks where a WSD branch leaves its trunk."""
    have = [v for v in VARIANTS if any(p["run"] in curves for p in a["points"][v])]
    if not have:
        return "no training curves for the ladder runs"
    fig, axes = new_figure(len(have), height=3.6)
    lo = min(float(np.min(curves[p["run"]].smooth())) for v in have for p in a["points"][v]
             if p["run"] in curves)  # fmt: skip
    end = max(curves[p["run"]].tokens[-1] for v in have for p in a["points"][v]
              if p["run"] in curves)  # fmt: skip
    for ax, v in zip(axes, have, strict=True):
        pts = [p for p in a["points"][v] if p["run"] in curves]
        sizes = sorted({float(f"{p['n_active']:.2g}") for p in pts})
        experts = sorted({p["experts"] for p in pts}, reverse=True)
        styles = ("-", "--", ":", "-.")
        for p in sorted(pts, key=lambda p: (p["n_active"], p["tokens"])):
            c = curves[p["run"]]
            col = shade(v, sizes.index(float(f"{p['n_active']:.2g}")), len(sizes))
            ls = styles[experts.index(p["experts"]) % len(styles)]
            ax.plot(c.tokens, c.smooth(), color=col, lw=1.0, ls=ls)
            if c.own_from > 0:
                j = int(np.searchsorted(c.tokens, c.own_from))
                ax.plot([c.tokens[j]], [c.smooth()[j]], "o", color=col, ms=3)
        for i, n in enumerate(sizes):
            ax.plot([], [], color=shade(v, i, len(sizes)), label=f"N_active {n:.2g}")
        if len(experts) > 1:
            for e in experts:
                ax.plot([], [], color="#666666", ls=styles[experts.index(e) % len(styles)],
                        label=f"E = {e:g}")  # fmt: skip
        log_axes(ax)
        ax.set_xlim(end / 50, end * 1.1)
        early = np.median([np.interp(end / 50, curves[p["run"]].tokens, curves[p["run"]].smooth())
                           for p in pts])  # fmt: skip
        ax.set_ylim(lo - 0.05, early + 0.1)
        ax.set_title(LABELS[v])
        ax.set_xlabel(TOKENS_LABEL)
        ax.set_ylabel(TRAIN_LABEL)
        ax.legend(loc="upper right", fontsize=7.5)
    return fig


def fig_granularity_gap(a: Mapping[str, Any]) -> Figure | str:
    """Left: standard minus fine-grained MoE training loss along training, per matched pair,
    ±1.96 SE of the curves' noise. Right: the same gap between compute-optimal models of the
    fitted Krajewski law, against compute, with its paired-draw band."""
    cg, fit = a["granularity_gap"]["curves"], a["granularity_gap"]["fit"]
    if skipped(cg) and skipped(fit):
        return f"curves: {cg['skipped']}; law: {fit['skipped']}"
    fig, (left, right) = new_figure(2, cols=2, height=3.6)
    fg = "fine-grained"
    if skipped(cg):
        left.text(0.5, 0.5, cg["skipped"], ha="center", va="center", wrap=True, fontsize=8)
    else:
        for i, p in enumerate(cg["pairs"]):
            x, gap, se = arr(p["tokens"]), arr(p["gap"]), arr(p["se"])
            c = shade(fg, i, len(cg["pairs"]))
            band(left, x, gap - 1.96 * se, gap + 1.96 * se, c, 0.2)
            left.plot(x, gap, "o-", color=c, ms=3, label=f"N_active {p['n_active']:.3g}")
        log_axes(left)
        left.legend(loc="best")
    left.axhline(0, color="#333333", lw=0.8)
    left.set_xlabel(TOKENS_LABEL)
    left.set_ylabel("standard − fine-grained training loss (nats)")
    left.set_title("measured gap along training (> 0: fine-grained ahead)")
    if skipped(fit):
        right.text(0.5, 0.5, fit["skipped"], ha="center", va="center", wrap=True, fontsize=8)
    else:
        x, t = arr(fit["compute"]), np.array(fit["gap"], dtype=float)
        band(right, x, t[:, 1], t[:, 2], color(fg))
        right.plot(x, t[:, 0], color=color(fg), label=f"G = {fit['granularity']:g} vs G = 1")
        hi = a["data"].get("compute_range", [None, None])[1]
        if hi:
            right.axvline(hi, color="#999999", ls="--", lw=0.8, label="largest compute run")
        log_axes(right)
        right.legend(loc="best")
    right.axhline(0, color="#333333", lw=0.8)
    right.set_xlabel("training compute C = 6·N_active·D (FLOPs)")
    right.set_ylabel("L*(G = 1) − L*(G) (nats)")
    right.set_title("fitted gap at equal compute (Krajewski law)")
    return fig


def fig_heatmaps(a: Mapping[str, Any], axis: str) -> Figure | str:
    """Training loss over (swept value, tokens) for each swept architecture and size, with
    the value of lowest loss at each token count (the optimum line)."""
    h = a["hyper"]
    if skipped(h):
        return h.get("skipped", "no hyperparameter axes") if isinstance(h, Mapping) else "none"
    maps = [m for m in h["heatmaps"] if m["axis"] == axis]
    if not maps:
        return f"no {axis} sweep with two or more values and training curves"
    fig, axes = new_figure(len(maps), cols=min(len(maps), 2), height=3.8, colorbar=0.9)
    for ax, m in zip(axes, maps, strict=True):
        vals, toks, grid = arr(m["values"]), arr(m["tokens"]), np.array(
            [arr(r) for r in m["grid"]])  # fmt: skip
        with np.errstate(all="ignore"):
            excess = 100 * (grid / np.nanmin(grid, axis=1, keepdims=True) - 1)
        mesh = ax.pcolormesh(
            _edges(vals),
            _edges(toks),
            np.ma.masked_invalid(excess),
            cmap="viridis_r",
            norm=Normalize(0, 5),
            shading="flat",
        )
        fig.colorbar(mesh, ax=ax, label="training loss above the row's best (%)", extend="max")
        best = arr(m["best"])
        ax.plot(best, toks, color="white", lw=2.2)
        ax.plot(best, toks, color="#d62728", lw=1.2, marker="o", ms=2.5, label="lowest loss")
        log_axes(ax, True, True)
        what = "batch size (sequences)" if axis == "batch_size" else "peak learning rate"
        ax.set_xlabel(what)
        ax.set_ylabel(TOKENS_LABEL)
        ax.set_title(f"{label(m['arch'])}, N_active {m['n_active']:.3g}")
        ax.legend(loc="lower right", fontsize=7.5, framealpha=0.85, frameon=True)
    return fig


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges (n + 1,) around log-spaced centres (n,)."""
    lc = np.log(c)
    if len(lc) == 1:
        return np.exp(np.array([lc[0] - 0.5, lc[0] + 0.5]))
    mid = (lc[1:] + lc[:-1]) / 2
    return np.exp(np.concatenate([[2 * lc[0] - mid[0]], mid, [2 * lc[-1] - mid[-1]]]))


def fig_hyper_laws(a: Mapping[str, Any]) -> Figure | str:
    """Log–log B_opt and η_opt against training loss per architecture: the curve method's
    optima (hollow: at the edge of the sweep, not fitted) and the fitted power law."""
    h = a["hyper"]
    if skipped(h):
        return h.get("skipped", "no hyperparameter axes") if isinstance(h, Mapping) else "none"
    laws = h["curve_laws"]
    if skipped(laws):
        return f"the curve laws were not fitted: {laws['skipped']}"
    if not any(sec.get("points") for sec in laws.values() if isinstance(sec, Mapping)):
        return (
            "no optimum to draw: on every training curve the best batch size and learning "
            "rate lie at an end of the sweep (see the heatmaps); widen the hyper axes"
        )
    fig, axes = new_figure(2, cols=2, height=3.7)
    for ax, hyper, name in ((axes[0], "batch", "batch_vs_loss"), (axes[1], "lr", "lr_vs_loss")):
        if not any(p["hyper"] == hyper for sec in laws.values() for p in sec.get("points", [])):
            ax.text(0.5, 0.5, f"no {hyper} optima on the curves", ha="center",
                    transform=ax.transAxes)  # fmt: skip
            continue
        for arch, sec in laws.items():
            pts = [p for p in sec["points"] if p["hyper"] == hyper]
            if not pts:
                continue
            c = color(arch)
            inner = [p for p in pts if not p["edge"]]
            edge = [p for p in pts if p["edge"]]
            ax.scatter([p["loss"] for p in inner], [p["value"] for p in inner], color=c, s=16,
                       label=f"{label(arch)}")  # fmt: skip
            ax.scatter([p["loss"] for p in edge], [p["value"] for p in edge], facecolor="none",
                       edgecolor=c, s=16)  # fmt: skip
            law = sec["laws"].get(name)
            if law:
                ls = np.geomspace(min(p["loss"] for p in pts), max(p["loss"] for p in pts), 30)
                e = law["exponents"]["L"]
                ax.plot(ls, law["coef"] * ls**e, color=c, lw=1.4)
        ax.scatter([], [], facecolor="none", edgecolor="#666666", s=16,
                   label="edge of the sweep (not fitted)")  # fmt: skip
        log_axes(ax, True, True)
        ax.set_xlabel("training loss L (nats)")
        ax.set_ylabel("optimal batch (sequences)" if hyper == "batch" else "optimal peak LR")
        ax.set_title("B_opt(L)" if hyper == "batch" else "η_opt(L)")
        ax.legend(loc="best")
    return fig


def fig_noise_scale(a: Mapping[str, Any]) -> Figure | str:
    """B_simple (tokens) against the loss of its window: runs' final windows (points), their
    trajectories (faint), the log–log fit and its value at the common loss (±95 %)."""
    ns = a["noise_scale"]
    if skipped(ns):
        return ns["skipped"]
    fig, axes = new_figure(1, height=3.8)
    ax = axes[0]
    top = 1.25 * max(max(arr(s["loss"])) for s in ns["archs"].values())
    for v, traj in ns["trajectories"].items():
        for t in traj:
            loss, b = arr(t["loss"]), arr(t["noise_scale"])
            ax.plot(loss[loss <= top], b[loss <= top], color=color(v), lw=0.6, alpha=0.3)
    level = ns["common_loss"]
    for v, sec in sorted(ns["archs"].items(), key=lambda kv: _order(kv[0])):
        c = color(v)
        loss, b = arr(sec["loss"]), arr(sec["noise_scale"])
        ax.scatter(loss, b, color=c, s=16, label=LABELS.get(v, v))
        at = sec["at_common"]
        ls = np.geomspace(loss.min(), loss.max(), 30)
        ax.plot(ls, at["value"] * (ls / level) ** at["exponent"], color=c, lw=1.4)
        lo, hi = at["interval"] or (at["value"], at["value"])
        # an interval may miss its estimate by rounding (1e-15): a bar is never negative
        err = np.clip([[at["value"] - lo], [hi - at["value"]]], 0.0, None)
        ax.errorbar([level], [at["value"]], yerr=err, fmt="D", color=c, mec="black", ms=6,
                    capsize=3)  # fmt: skip
    ax.axvline(level, color="#999999", ls=":", lw=0.8)
    log_axes(ax, True, True)
    ax.set_xlabel("training loss over the estimate's window (nats)")
    ax.set_ylabel("gradient noise scale B_simple (tokens)")
    ax.set_title(f"noise scale against loss (diamonds: at the common loss {level:.3g})")
    ax.legend(loc="best")
    return fig


def _order(key: str) -> int:
    """Architectures in the report's order (dense, standard MoE, fine-grained)."""
    head = key.split(" ")[0]
    return VARIANTS.index(head) if head in VARIANTS else len(VARIANTS)


def fig_accuracy(results: Sequence[Mapping[str, Any]]) -> Figure | str:
    """Downstream accuracy against training compute per architecture, one panel per task
    (`eval_<task>_acc` columns, written when the study file has `eval: {tasks: [...]}`)."""
    cols = sorted({k for r in results for k in r if k.startswith("eval_") and k.endswith("_acc")})
    if not cols:
        return "no downstream evaluation in this study (add eval: {tasks: [...]} to the study file)"
    fig, axes = new_figure(len(cols), height=3.6)
    for ax, col in zip(axes, cols, strict=False):
        err = col + "_stderr"
        for v in VARIANTS:
            rows = sorted((r for r in results if r.get("variant") == v and r.get(col) is not None
                           and not r.get("hyper")), key=lambda r: r["flops_simple"])  # fmt: skip
            if not rows:
                continue
            x = [r["flops_simple"] for r in rows]
            y = [r[col] for r in rows]
            e = [1.96 * (r.get(err) or 0.0) for r in rows]
            ax.errorbar(x, y, yerr=e, fmt="o", ms=4, color=color(v), label=label(v), alpha=0.85)
        log_axes(ax, True, False)
        ax.set_xlabel("training compute C = 6·N_active·D (FLOPs)")
        ax.set_ylabel("accuracy (±95 %)")
        ax.set_title(col.removeprefix("eval_").removesuffix("_acc"))
        ax.legend(loc="best")
    return fig
