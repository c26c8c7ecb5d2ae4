"""The study report: one self-contained HTML page and its figures.

    write_report(out_dir, results, curves, analysis)  ->  out_dir/report.html, out_dir/figures/

Why self-contained: a report is mailed, archived and opened years later, so the page embeds
its figures as base64 PNG data URIs, its CSS inline, and loads nothing (no scripts, fonts or
images from elsewhere). The PNGs are also written to figures/ for slides.

The page reads top-down as a reader asks: the claims (what the study shows, each with its
interval), the plan for each budget, the comparisons behind the claims, the fitted laws, the
figures with a caption saying what to read from each, the warnings, and the results table.
A figure whose analysis section was skipped is replaced by the reason.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_text
from moescale.report import plots, plots_curves, tables
from moescale.report.style import Plot, draw
from moescale.study.analysis_data import stitched_curves

CSS = """
:root{--fg:#1d2330;--muted:#5b6473;--line:#e3e6ec;--bg:#fbfbfc;--accent:#2f6db5}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.55 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:32px 22px 64px}
h1{font-size:28px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:20px;margin:40px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:24px 0 8px}
.meta{color:var(--muted);font-size:13px;margin:0 0 18px}
.claims{background:#fff;border:1px solid var(--line);border-left:4px solid var(--accent);
border-radius:6px;padding:10px 18px 10px 34px;margin:0 0 8px}
.claims li{margin:6px 0}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff;margin:8px 0 4px;
font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600;position:sticky;top:0}
.iv{color:var(--muted);font-size:12px;white-space:nowrap}
.chip{display:inline-block;width:10px;height:10px;border-radius:2px;background:var(--c);
margin-right:6px;vertical-align:baseline}
.skipped{color:#8a5a00}
figure{margin:18px 0 26px;background:#fff;border:1px solid var(--line);border-radius:6px;
padding:12px}
figure img{width:100%;height:auto;display:block}
figcaption{color:var(--fg);font-size:14px;margin-top:8px}
figcaption b{display:block;margin-bottom:2px}
.results-wrap{overflow:auto;max-height:640px;border:1px solid var(--line)}
table.results{font-size:12px;margin:0}
table.results td{white-space:nowrap}
ul.warnings{font-size:13px}ul.warnings code{color:var(--muted)}
ul.defs{font-size:12.5px;color:var(--muted)}
small{color:var(--muted)}
"""

CAPTIONS: dict[str, tuple[str, str]] = {
    "loss_vs_compute": (
        "Loss against compute",
        "Each panel is one architecture: its runs (dots), the fitted law along each model size "
        "(thin lines, light to dark with size) and the compute-optimal frontier L*(C) with its "
        "95 % bootstrap band, dashed where it extrapolates past the largest run. The last "
        "panel puts the frontiers and the measured best loss at each compute together: where "
        "two bands separate, one architecture is better at equal compute; dotted verticals are "
        "the plan budgets."),
    "isoflop": (
        "IsoFLOP profiles",
        "Runs of (nearly) equal compute against model size, with the parabola in ln N each "
        "budget's minimum is read from (crosses). A minimum at the edge of a budget's sizes is "
        "not bracketed; the exponent in the title is the IsoFLOP route to N_opt ∝ C^a, to be "
        "compared with the parametric fit's in the laws table."),
    "allocation": (
        "Compute-optimal size and tokens",
        "N_opt(C) (active parameters) and D_opt(C) of each architecture's law, 95 % bands, "
        "dashed beyond the data. The band's width at a budget is how well the study pins the "
        "plan: a band that fans out by orders of magnitude says the budget is too far from the "
        "runs. Diamonds are IsoFLOP minima."),
    "holdout": (
        "Prediction error",
        "Observed minus predicted loss. Small dots: the full fit on its own points. Large "
        "markers: the largest-compute runs predicted by a refit that never saw them, with ±2 "
        "standard errors of their validation loss; this is the error to expect one step of "
        "extrapolation beyond the data, and it should be compared with the differences between "
        "architectures."),
    "loss_vs_tokens": (
        "Training curves",
        "Training loss (smoothed) against tokens for every ladder run, light to dark with model "
        "size; WSD branches are drawn from their trunk's start and a dot marks the branch "
        "point. Curves of one size should nest by token budget; a curve that crosses its "
        "neighbours points to a run worth checking."),
    "granularity_gap": (
        "Fine-grained against standard MoE",
        "Left: the measured training-loss gap between matched fine-grained and standard MoE "
        "runs (same size, E, k and tokens) along training; a gap rising to the right is "
        "Krajewski et al.'s 'the advantage grows with tokens'. The band is the curves' noise "
        "only. Right: the same gap between compute-optimal models of the fitted law against "
        "compute, paired bootstrap band."),
    "heatmap_batch": (
        "Loss over batch size and tokens",
        "Training loss of the batch-size sweep at each token count, as the percentage above the "
        "best batch at that token count (the absolute losses are in study.json), and the batch "
        "of lowest loss (red line). Wang et al. read B_opt at each loss level from such maps: "
        "an optimum moving to larger batches as training proceeds is the critical batch "
        "growing as the loss falls."),
    "heatmap_lr": (
        "Loss over learning rate and tokens",
        "Training loss of the learning-rate sweep at each token count, as the percentage above "
        "the best LR at that token count, and the LR of lowest loss (red line); an optimum on "
        "the edge of the sweep means the sweep did not bracket it."),
    "hyper_laws": (
        "Optimal batch size and learning rate against loss",
        "Log–log B_opt(L) and η_opt(L) per architecture from the curves (hollow: optima at the "
        "edge of the sweep, not fitted) and the fitted power laws. Wang et al. (2024) find "
        "MoE's batch smaller and its LR larger than dense at equal loss: compare the lines at "
        "one loss."),
    "accuracy": (
        "Downstream accuracy against compute",
        "Accuracy of every ladder run on each evaluated task (lm-eval, the run's final "
        "checkpoint) against its training compute, ±95 % from the task's standard error. The "
        "fine-grained paper compares architectures on such benchmarks as well as on loss; at "
        "small scale most tasks sit near chance, where a difference means little."),
    "noise_scale": (
        "Gradient noise scale",
        "B_simple (tokens) against the training loss of its window: runs' final estimates, "
        "their trajectories (faint) and the log–log fit per architecture. Architectures are "
        "compared at one loss (diamonds with 95 % intervals), not at one step, since B_simple "
        "grows as the loss falls."),
}  # fmt: skip


def _figures(out_dir: Path, a: Mapping[str, Any], curves: Mapping[str, Any],
             results: Sequence[Mapping[str, Any]] = ()) -> list[Plot]:  # fmt: skip
    builds: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
        ("loss_vs_compute", plots.fig_loss_vs_compute, (a,)),
        ("isoflop", plots.fig_isoflop, (a,)),
        ("allocation", plots.fig_allocation, (a,)),
        ("holdout", plots.fig_holdout, (a,)),
        ("loss_vs_tokens", plots_curves.fig_loss_vs_tokens, (a, curves)),
        ("granularity_gap", plots_curves.fig_granularity_gap, (a,)),
        ("heatmap_batch", plots_curves.fig_heatmaps, (a, "batch_size")),
        ("heatmap_lr", plots_curves.fig_heatmaps, (a, "lr")),
        ("hyper_laws", plots_curves.fig_hyper_laws, (a,)),
        ("noise_scale", plots_curves.fig_noise_scale, (a,)),
        ("accuracy", plots_curves.fig_accuracy, (results,)),
    ]
    out = []
    for name, build, args in builds:
        title, caption = CAPTIONS[name]
        out.append(draw(out_dir, Plot(name, title, caption), build, *args))
    return out


def _figure_html(p: Plot) -> str:
    if p.path is None:
        return (f'<figure><figcaption><b>{escape(p.title)}</b><span class="skipped">Not drawn: '
                f"{escape(p.skipped)}</span></figcaption></figure>")  # fmt: skip
    data = base64.b64encode(p.path.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{p.name}"><img alt="{escape(p.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{escape(p.title)}</b>'
            f"{escape(p.caption)}</figcaption></figure>")  # fmt: skip


def _meta(a: Mapping[str, Any], meta: Mapping[str, Any] | None) -> str:
    d = a["data"]
    items = {"generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
             "runs": f"{d['usable_runs']} usable of {d['result_rows']} rows "
             f"({d['hyper_runs']} on hyperparameter axes)",
             "compute": d["flops_definition"], **dict(meta or {})}  # fmt: skip
    return " · ".join(f"{escape(str(k))}: {escape(str(v))}" for k, v in items.items())


def render(a: Mapping[str, Any], results: Sequence[Mapping[str, Any]], figs: Sequence[Plot],
           title: str, meta: Mapping[str, Any] | None) -> str:  # fmt: skip
    """The page's HTML (module doc)."""
    groups = a.get("claim_groups") or [{"topic": "Claims", "claims": a["claims"]}]
    claims = "".join(f"<h3>{escape(grp['topic'])}</h3><ul class=claims>"
                     + "".join(f"<li>{escape(c)}</li>" for c in grp["claims"]) + "</ul>"
                     for grp in groups)  # fmt: skip
    body = [
        f"<h1>{escape(title)}</h1><p class=meta>{_meta(a, meta)}</p>",
        f"<h2>What the study shows</h2>{claims}",
        "<h2>Plan</h2><p>Compute-optimal model per architecture and budget, from its planned "
        "law, with 95 % bootstrap intervals; C = 6·N_active·D.</p>" + tables.plan_table(a),
        "<h2>Architectures at equal compute</h2><h3>From the fits</h3>"
        + tables.equal_compute_table(a) + "<h3>Measured (equal N_active and compute)</h3>"
        + tables.matched_table(a) + "<h3>MoE over dense at the budgets</h3>"
        + tables.efficiency_table(a),
        "<h2>Fitted laws</h2>" + tables.laws_table(a),
        "<h2>Figures</h2>" + "".join(_figure_html(p) for p in figs),
        "<h2>Warnings</h2>" + tables.warnings_list(a) + tables.problems_list(a),
        f"<h2>Results</h2><p>{len(results)} rows, as collected.</p>"
        f'<div class="results-wrap">{tables.results_table(results)}</div>',
    ]  # fmt: skip
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>"
    )


def write_report(
    out_dir: str | Path,
    results: Sequence[Mapping[str, Any]],
    curves: Sequence[Mapping[str, Any]],
    analysis: Mapping[str, Any],
    title: str = "moescale study report",
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write out_dir/report.html and out_dir/figures/*.png from a study's tables and its
    analysis (`moescale.study.analyze.analyze`); return the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stitched = stitched_curves(list(curves), list(results))
    figs = _figures(out, analysis, stitched, results)
    path = out / "report.html"
    atomic_write_text(path, render(analysis, results, figs, title, meta))
    return path
