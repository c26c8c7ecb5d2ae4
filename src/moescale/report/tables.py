"""The report's tables, as HTML fragments built from the analysis (study.json).

Why a module apart from the page: each table decides which numbers a reader needs next to each
other (a plan's N_active, tokens and loss with their intervals; a law's parameters with theirs;
a comparison's value, interval and definition), and the page only arranges them. Every number
that has an interval is printed with it, as `value [lo, hi]`; a missing number is "–".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from moescale.report.style import LABELS, color

VARIANTS = tuple(LABELS)
RESULT_COLUMNS = (
    ("run", "run"), ("variant", "variant"), ("experts", "E"), ("granularity", "G"),
    ("top_k", "k"), ("d_model", "d_model"), ("n_layers", "layers"),
    ("params_active", "N_active"), ("params_total", "N_total"), ("tokens", "tokens D"),
    ("flops_simple", "C (6ND)"), ("flops", "FLOPs exact"), ("batch_size", "batch"),
    ("lr", "LR"), ("schedule", "schedule"), ("seed", "seed"), ("hyper", "axis"),
    ("branch_of", "branch of"), ("val_loss", "val loss"), ("val_loss_se", "± SE"),
    ("noise_scale", "B_simple"), ("status", "status"),
)  # fmt: skip


def num(v: Any, digits: int = 3) -> str:
    """A number for a table cell: 3 significant digits, '–' when missing."""
    if v is None or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int) and abs(v) < 1e6:
        return str(v)
    if isinstance(v, int | float):
        return f"{v:.{digits}g}"
    return escape(str(v))


def triple(t: Sequence[Any] | None) -> str:
    """'value [lo, hi]' of a [value, lo, hi] list, the interval set smaller."""
    if not t:
        return "–"
    ivl = ""
    if len(t) >= 3 and t[1] is not None and t[2] is not None:
        ivl = f' <span class="iv">[{num(t[1])}, {num(t[2])}]</span>'
    return f"{num(t[0])}{ivl}"


def with_iv(value: Any, interval: Sequence[Any] | None) -> str:
    return triple([value, *(interval or [None, None])])


def chip(v: str) -> str:
    """An architecture's name with its colour (the figures' colour)."""
    return (f'<span class="chip" style="--c:{color(v)}"></span>'
            f"{escape(LABELS.get(v, v))}")  # fmt: skip


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text before)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def skipped_note(why: str) -> str:
    return f'<p class="skipped">Not available: {escape(why)}</p>'


def _design(p: Mapping[str, Any]) -> str:
    d = p.get("design")
    if not d:
        return "–"
    moe = f", E {num(d['experts'])}, k {num(d['top_k'])}" if d["experts"] > 1 else ""
    g = f", G {num(d['granularity'])}" if d["experts"] > 1 and d["granularity"] > 1 else ""
    return f"d_model {d['d_model']} × {d['n_layers']} layers{moe}{g}"


def plan_table(a: Mapping[str, Any]) -> str:
    """One row per budget and architecture: N_active, N_total, tokens, loss, what to build."""
    rows = []
    for b in a["data"]["budgets"]:
        for v in VARIANTS:
            plans = a["plans"].get(v)
            if not isinstance(plans, list):
                continue
            p = next((q for q in plans if q["budget"] == b), None)
            if p is None:
                continue
            if "skipped" in p:
                rows.append([num(b), chip(v), f'<span class="skipped">{escape(p["skipped"])}'
                             "</span>", "", "", "", "", ""])  # fmt: skip
                continue
            n = p["numbers"]
            rows.append([num(b), chip(v), escape(p["law"]), triple(n["n_active"]),
                         triple(n["n_total"]), triple(n["tokens"]), triple(n["loss"]),
                         _design(p)])  # fmt: skip
    if not rows:
        return skipped_note("no architecture could be planned")
    head = [
        "budget (FLOPs)",
        "architecture",
        "law",
        "N_active",
        "N_total",
        "tokens D",
        "predicted loss",
        "what to build",
    ]
    return table(head, rows, "plan")


def laws_table(a: Mapping[str, Any]) -> str:
    """Every fitted law: its points, parameters with intervals, N_opt exponent, hold-out."""
    rows = []
    for v in VARIANTS:
        sec = a["laws"].get(v)
        if not sec or "skipped" in sec:
            rows.append([chip(v), "–", skipped_note(sec["skipped"] if sec else "none"), "", "",
                         ""])  # fmt: skip
            continue
        for law, f in sec["laws"].items():
            if "skipped" in f:
                rows.append([chip(v), escape(law), skipped_note(f["skipped"]), "", "", ""])
                continue
            lost = set(f.get("not_identified", [])) | set(f.get("unidentified", []))
            params = "<br>".join(
                f"{escape(q)} = " + ("not identified" if q in lost else
                                     with_iv(val, f["intervals"].get(q)))
                for q, val in f["params"].items())  # fmt: skip
            h = f["holdout"]
            held = (f"MAE {num(h['mae'])}, max {num(h['max_abs'])} on {h['n']} point(s)"
                    if h.get("n") else "none held out")  # fmt: skip
            primary = " <b>(planned)</b>" if law == sec["primary"] else ""
            rows.append([chip(v), f"{escape(law)}{primary}<br><small>{escape(f['expression'])}"
                         f"<br>N = {escape(f['n_column'])}</small>",
                         f"{f['n_points']}<br><small>{escape(f['points'])}</small>", params,
                         triple(f.get("n_opt_exponent")), held])  # fmt: skip
    head = ["architecture", "law", "points", "parameters [95 %]", "N_opt ∝ C^a", "held-out error"]
    return table(head, rows, "laws")


def equal_compute_table(a: Mapping[str, Any]) -> str:
    """Fitted compute-optimal losses and gaps at the largest common compute and the budgets."""
    rows_in = a["equal_compute"]["fits"]
    if not isinstance(rows_in, list) or not rows_in:
        return skipped_note(rows_in.get("skipped", "no fits") if isinstance(rows_in, Mapping)
                            else "no fits")  # fmt: skip
    gaps = ("moe_vs_dense", "fine-grained_vs_dense", "fine-grained_vs_moe")
    rows = []
    for r in rows_in:
        where = ("extrapolated" if r["extrapolated"] else
                 "in the data's compute; optima outside the runs" if r.get("outside_data") else
                 "within the data")  # fmt: skip
        rows.append([f"{num(r['compute'])}<br><small>{where}</small>",
                     *[triple(r["loss"].get(v)) for v in VARIANTS],
                     *[triple(r["gaps"].get(k)) for k in gaps]])  # fmt: skip
    head = [
        "compute (FLOPs)",
        *[f"L* {chip(v)}" for v in VARIANTS],
        "dense − MoE",
        "dense − fine-grained",
        "MoE − fine-grained",
    ]
    return table(head, rows, "compact")


def matched_table(a: Mapping[str, Any]) -> str:
    """Measured pairs at equal N_active and compute, per design."""
    rows = []
    for key, sec in a["equal_compute"]["matched"].items():
        new, base = key.split("_vs_")
        if "skipped" in sec:
            rows.append(
                [
                    f"{chip(base)} − {chip(new)}",
                    "–",
                    "–",
                    "–",
                    f'<span class="skipped">{escape(sec["skipped"])}</span>',
                ]
            )
            continue
        for d in sec["designs"]:
            design = f"E {num(d['experts'])}, G {num(d['granularity'])}"
            rows.append(
                [
                    f"{chip(base)} − {chip(new)}",
                    design,
                    str(d["n"]),
                    f"{d['wins']} of {d['n']}",
                    triple(d["mean_difference"]),
                ]
            )
    head = ["loss difference", "design", "pairs", "second better in", "mean [95 %] (nats)"]
    return table(head, rows, "compact")


def efficiency_table(a: Mapping[str, Any]) -> str:
    """MoE over dense at the budgets: loss gap, compute multiplier, data efficiency."""
    rows, defs = [], {}
    for v, sec in a["data_efficiency"].items():
        if "skipped" in sec:
            rows.append([chip(v), "–", skipped_note(sec["skipped"]), "", ""])
            continue
        for r in sec:
            ivs = r["intervals"]
            defs.update(r.get("definitions", {}))
            rows.append(
                [
                    chip(v),
                    num(r["budget"]),
                    with_iv(r["loss_gap"], ivs.get("loss_gap")),
                    with_iv(r["compute_ratio"], ivs.get("compute_ratio")),
                    with_iv(r["data_efficiency"], ivs.get("data_efficiency")),
                ]
            )
    head = [
        "architecture",
        "budget (FLOPs)",
        "loss gap (dense − MoE)",
        "compute multiplier",
        "data efficiency",
    ]
    notes = "".join(f"<li><b>{escape(k)}</b>: {escape(d)}</li>" for k, d in defs.items())
    return table(head, rows, "compact") + (f'<ul class="defs">{notes}</ul>' if notes else "")


def results_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The results table itself (the columns a reader checks), sorted by variant and size."""
    cols = [(k, h) for k, h in RESULT_COLUMNS if any(k in r for r in results)]
    order = sorted(
        results,
        key=lambda r: (
            str(r.get("variant", "")),
            str(r.get("hyper", "")),
            _f(r.get("params_active")),
            _f(r.get("tokens")),
        ),
    )
    rows = [[num(r.get(k)) if k != "run" else f"<code>{escape(str(r.get(k, '')))}</code>"
             for k, _ in cols] for r in order]  # fmt: skip
    return table([escape(h) for _, h in cols], rows, "results")


def _f(v: Any) -> float:
    """A sort key: the number, or +inf for a missing one (nan would not sort)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.inf
    return x if math.isfinite(x) else math.inf


def warnings_list(a: Mapping[str, Any]) -> str:
    ws = a.get("warnings", [])
    if not ws:
        return "<p>None.</p>"
    items = "".join(f"<li><code>{escape(w.get('section', ''))}</code> {escape(w['message'])}</li>"
                    for w in ws)  # fmt: skip
    return f'<ul class="warnings">{items}</ul>'


def problems_list(a: Mapping[str, Any]) -> str:
    """Run directories the collector could not use (the study driver records them)."""
    probs = a.get("problems") or []
    if not probs:
        return ""
    items = "".join(
        f"<li><code>{escape(str(p.get('path', '')))}</code> {escape(str(p.get('reason', '')))}</li>"
        for p in probs
    )
    return f'<h3>Runs not collected</h3><ul class="warnings">{items}</ul>'
