"""Study analysis, part 6: the claims (plain sentences) of an analysis (its warnings:
analysis_warnings.py).

Why: a reader of a study wants its conclusions, and a conclusion is only as strong as its
interval. Every sentence here states a number with its 95 % interval and reads the interval,
never the point estimate: a difference whose interval includes zero is "not resolved at this
scale", and a result against a paper says so and names the paper (Krajewski et al. 2024:
fine-grained beats standard MoE at equal FLOPs, increasingly so with more tokens; Wang et al.
2024 and Ludziejewski et al. 2025: MoE beats dense at equal compute; Wang et al.: at equal
loss MoE prefers a smaller batch, a larger learning rate and has a lower noise scale).

Input is the analysis after `jsonable` (non-finite numbers are None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from moescale.study.analysis_words import (
    NAMES,
    cap,
    design_label,
    display,
    g,
    iv,
    sign,
    skipped,
)

PAPERS = {  # (the finding, who reports it)
    "moe": ("MoE beats dense at equal compute", "Wang et al. 2024; Ludziejewski et al. 2025"),
    "fine-grained": ("fine-grained MoE beats standard MoE at equal FLOPs", "Krajewski et al. 2024"),
}
MIN_DRAWS = 20  # fewer usable bootstrap draws than this give no interval worth comparing


def _verdict(t: Sequence[Any] | None, paper: str, better: str, worse: str) -> str:
    finding, who = PAPERS[paper]
    s = sign(t)
    if s == 1:
        return f"{better}, in line with the finding that {finding} ({who})"
    if s == -1:
        return f"{worse}, which contradicts the finding that {finding} ({who})"
    if s == 0:
        return "not resolved at this scale: the interval includes zero"
    return "no interval (see the warnings), so not resolved"


def _scope(a: Mapping[str, Any]) -> list[str]:
    d = a["data"]
    parts = [f"{n} {NAMES[v]}" for v, n in d["ladder_points"].items() if n]
    if not parts:
        return ["The study has no usable ladder runs, so nothing could be fitted."]
    lo, hi = d.get("compute_range", [None, None])
    es = d["experts"].get("moe") or d["experts"].get("fine-grained") or []
    gs = sorted(set(d["granularities"].get("moe", []) + d["granularities"].get("fine-grained", [])))
    extra = (f"; MoE expansion rates E = {', '.join(g(e) for e in es)}" if es else "") + (
        f", granularities G = {', '.join(g(x) for x in gs)}" if gs else ""
    )
    return [f"The study has {', '.join(parts)} ladder points from {g(lo)} to {g(hi)} FLOPs "
            f"(C = 6·N_active·D){extra}."]  # fmt: skip


def _laws(a: Mapping[str, Any]) -> list[str]:
    out = []
    for v, sec in a["laws"].items():
        if skipped(sec):
            continue
        if v == "moe" and "skipped" in sec["laws"].get("wang", {}):
            why = sec["laws"]["wang"]["skipped"].split(":")[0]
            out.append(
                f"Wang et al.'s E exponent γ is not identified by this study ({why}); "
                "standard MoE is planned with Chinchilla's law on its own points."
            )
        law = sec["primary"]
        if law is None:
            continue
        f = sec["laws"][law]
        ivs, p = f["intervals"], f["params"]
        lost = set(f.get("not_identified", []))
        exps = ", ".join(f"{q} = {iv([p[q], *(ivs.get(q) or [None, None])])}"
                         if q not in lost else f"{q} not identified"
                         for q in ("alpha", "beta", "gamma") if q in p)  # fmt: skip
        h = f["holdout"]
        held = (f"predicting the {h['n']} held-out largest-compute point(s) from the others, "
                f"its mean absolute error is {g(h['mae'], 2)} nats") if h.get("n") else (
            "it has too few points to hold any out")  # fmt: skip
        a_exp = f"; N_opt ∝ C^{iv(f['n_opt_exponent'])}" if f.get("n_opt_exponent") else ""
        out.append(cap(f"{NAMES[v]}: the {law} law fits {f['n_points']} points with {exps}"
                       f"{a_exp}; {held}."))  # fmt: skip
        out += [f"{n}." for n in sec.get("notes", [])]
    return out


def _beyond(compute: float, a: Mapping[str, Any]) -> str:
    """'within the data' or 'extrapolated X decades beyond the data'."""
    hi = (a["data"].get("compute_range") or [None, None])[1]
    if hi is None or compute <= hi * 1.01:
        return "within the data"
    return f"extrapolated {math.log10(compute / hi):.1f} decades beyond the data"


def _equal_compute(a: Mapping[str, Any]) -> list[str]:
    rows = a["equal_compute"]["fits"]
    if skipped(rows):
        return []
    out = []
    pick = [r for r in rows if not r["extrapolated"]][:1] + [r for r in rows if r["extrapolated"]][
        -1:
    ]
    for r in pick:
        for key, paper in (("moe_vs_dense", "moe"), ("fine-grained_vs_dense", "moe"),
                           ("fine-grained_vs_moe", "fine-grained")):  # fmt: skip
            t = r["gaps"].get(key)
            if not t or t[0] is None:
                continue
            new, base = key.split("_vs_")
            verdict = _verdict(t, paper, f"{NAMES[new]} is better", f"{NAMES[new]} is worse")
            laws = r.get("laws", {})
            how = (f" (both from the {laws.get('fine-grained')} law's G = 1 and G)"
                   if key == "fine-grained_vs_moe" else
                   f" ({laws.get(base)} law against {laws.get(new)})")  # fmt: skip
            out.append(f"At {g(r['compute'])} FLOPs ({_beyond(r['compute'], a)}) the fitted "
                       f"compute-optimal loss of {NAMES[base]} minus {NAMES[new]}{how} is "
                       f"{iv(t)} nats: {verdict}.{_outside_note(r, (base, new))}")  # fmt: skip
            if alt := r.get("law_sensitivity", {}).get(key):
                out[-1] += (f" With Chinchilla fitted on the {NAMES[new]} points alone, the form "
                            f"dense has, it is {iv(alt['chinchilla'])} nats: the fitted gap "
                            "depends on the law chosen.")  # fmt: skip
    return out


def _outside_note(r: Mapping[str, Any], variants: Sequence[str]) -> str:
    """A compute within the data whose optima are not: say so, so the gap is read as a law's."""
    far = [f"{NAMES[v]}'s {r['outside_data'][v]}" for v in variants
           if r.get("outside_data", {}).get(v)]  # fmt: skip
    if not far or r["extrapolated"]:  # an extrapolated compute already says as much
        return ""
    return (f" The compute is within the data, but not the optima ({'; '.join(far)}): that "
            "gap is the laws' extrapolation, not a measurement.")


def _matched(a: Mapping[str, Any]) -> list[str]:
    out = []
    for key, sec in a["equal_compute"]["matched"].items():
        if skipped(sec):
            continue
        new, base = key.split("_vs_")
        for d in sec["designs"]:
            t = d["mean_difference"]
            verdict = _verdict(t, "fine-grained" if base == "moe" else "moe",
                               f"{NAMES[new]} is better", f"{NAMES[new]} is worse")  # fmt: skip
            design = design_label(d)
            claim = (f"Measured on {d['n']} pair(s) of runs with equal N_active and compute "
                     f"({NAMES[new]} with {design} lower in {d['wins']} of {d['n']}), "
                     f"{NAMES[base]} minus {NAMES[new]} validation loss is {iv(t)} nats (95 % "
                     f"from the runs' standard errors): {verdict}.")  # fmt: skip
            claim += _read(d, NAMES[base])
            ratio = d.get("routing_aware_ratio")
            if ratio and max(abs(r - 1.0) for r in ratio) >= 0.005:
                lo, hi = (100 * (r - 1.0) for r in ratio)
                span = f"{lo:+.1f} %" if abs(hi - lo) < 0.05 else f"{lo:+.1f} to {hi:+.1f} %"
                claim += (f" Counted with Krajewski et al.'s routing-aware FLOPs, the {NAMES[new]} "
                          f"runs spent {span} compute against their partners.")  # fmt: skip
            out.append(claim)
    return out


def _read(d: Mapping[str, Any], base: str) -> str:
    """How many partners' losses were read between their token budgets (at the other run's
    compute, which its router makes larger at equal tokens), and how many past the last."""
    read = d.get("baseline_read", {})
    moved = read.get("interpolated", 0) + read.get("extrapolated", 0)
    if not moved:
        return ""
    past = read.get("extrapolated", 0)
    return (f" For {moved} of {d['n']} the {base} loss was read at the other run's compute "
            f"between its token budgets" + (f" ({past} just beyond them)" if past else "") + ".")


def _swept_point(name: str, p: Mapping[str, Any], best: bool) -> str:
    """'dense 5.904 (batch 8)': a loss where the sweep ran, with the setting when swept."""
    how = ("" if not best else " (the base)" if p["axis"] == "base" else
           f" (batch {g(p['batch_size'])})" if p["axis"] == "batch_size" else
           f" (LR {g(p['lr'])})")  # fmt: skip
    return f"{name} {p['loss']:.3f}{how}"


def best_swept(a: Mapping[str, Any]) -> list[str]:
    """The comparison where batch size and LR were swept: at the shared base, and each
    architecture at its best swept point (analysis_hyper.at_best_swept)."""
    sec = None if skipped(a["hyper"]) else a["hyper"].get("at_best_swept")
    out = []
    for c in [] if skipped(sec) else sec["cells"]:
        vs = [k.split(" ")[0] for k in c["archs"]]
        name = {k: NAMES[v] if vs.count(v) == 1 else display(k)
                for k, v in zip(c["archs"], vs, strict=True)}  # fmt: skip
        at = {w: ", ".join(_swept_point(name[k], c["archs"][k][w], w == "best")
                           for k in c[f"order_{w}"]) for w in ("base", "best")}  # fmt: skip
        b = c["archs"][c["order_base"][0]]["base"]
        flips = "; ".join(f"{name[x]} against {name[y]}" for x, y in c["reversed"])
        out.append(f"Where batch size and LR were swept ({g(c['n_layers'])} layers, d_model "
                   f"{g(c['d_model'])}, {c['tokens']:,.0f} tokens), the shared base (batch "
                   f"{g(b['batch_size'])}, LR {g(b['lr'])}) gives {at['base']}; each "
                   f"architecture at its best swept point gives {at['best']}" + (
                       f": {flips} reverses (resolved at both), so the equal-compute comparison "
                       "at the base measures the shared hyperparameters too." if flips else
                       ": no resolved difference reverses, so the shared base does not decide "
                       "the order here."))  # fmt: skip
    return out


def _granularity(a: Mapping[str, Any]) -> list[str]:
    out = []
    cg = a["granularity_gap"]["curves"]
    if not skipped(cg):
        t = cg["gap_change"]
        s = sign(t)
        trend = ("it grows with tokens, as Krajewski et al. (2024) report" if s == 1 else
                 "it shrinks with tokens, which contradicts Krajewski et al. (2024), who report "
                 "that it grows" if s == -1 else
                 "whether it grows with tokens (Krajewski et al. 2024) is not resolved at this "
                 "scale: the change's interval includes zero")  # fmt: skip
        first, last = cg["pairs"][0]["tokens"][0], cg["pairs"][0]["tokens"][-1]
        out.append(f"Along training ({len(cg['pairs'])} matched pair(s) of equal size, E and k),"
                   f" standard minus fine-grained MoE training loss is {iv(cg['gap_first'])} "
                   f"nats at the first token count read (about {g(first, 2)} tokens) and "
                   f"{iv(cg['gap_last'])} at the last (about {g(last, 2)}), a change of "
                   f"{iv(t)} (intervals from the curves' noise): {trend}.")  # fmt: skip
        ratios = [p["token_ratio"] for p in cg["pairs"] if p["token_ratio"] is not None]
        missed = len(cg["pairs"]) - len(ratios)
        if ratios:
            never = f"; in {missed} pair(s) it never does" if missed else ""
            out.append(
                f"Fine-grained MoE reaches the standard MoE's final training loss on "
                f"{', '.join(g(r, 2) for r in ratios)} times the standard MoE's tokens "
                f"(one number per matched pair, smallest size first; single runs, so no "
                f"interval){never}."
            )
        elif missed:
            out.append(
                "Fine-grained MoE never reaches the standard MoE's final training loss "
                "in the matched pairs."
            )
    fit = a["granularity_gap"]["fit"]
    if not skipped(fit) and len(fit["gap"]) >= 2:
        lo_c, hi_c = fit["compute"][0], fit["compute"][-1]
        out.append(
            f"Krajewski et al.'s law fitted here puts fine-grained MoE (G = "
            f"{g(fit['granularity'])}) ahead of standard MoE by {iv(fit['gap'][0])} nats "
            f"at {g(lo_c)} FLOPs and by {iv(fit['gap'][-1])} at {g(hi_c)} FLOPs "
            f"({_beyond(hi_c, a)}; compute-optimal models, paired draws)."
        )
    return out


def _efficiency(a: Mapping[str, Any]) -> list[str]:
    out = []
    for v, rows in a["data_efficiency"].items():
        if skipped(rows):
            continue
        parts = []
        for r in rows:
            ivs = r["intervals"]
            de = [r["data_efficiency"], *(ivs.get("data_efficiency") or [None, None])]
            cm = [r["compute_ratio"], *(ivs.get("compute_ratio") or [None, None])]
            parts.append(
                f"at {g(r['budget'])} FLOPs {iv(de)} (compute multiplier {iv(cm)})"
                if de[0] is not None
                else f"at {g(r['budget'])} FLOPs undefined "
                "(the MoE law never reaches the dense loss at that size)"
            )
        out.append(f"{cap(NAMES[v])}'s data efficiency over dense (D_dense/D_moe − 1 at equal "
                   f"loss and equal FLOPs per token, docs/science.md §3.1) is "
                   f"{'; '.join(parts)}; these budgets lie beyond the data, so read them as "
                   f"the laws' extrapolation.")  # fmt: skip
    return out


def _plans(a: Mapping[str, Any]) -> list[str]:
    out = []
    for v in NAMES:
        plans = a["plans"].get(v)
        if skipped(plans):
            continue
        ok = [p for p in plans if "skipped" not in p]
        if not ok:
            continue
        p = ok[-1]
        n = p["numbers"]
        out.append(f"Plan for {g(p['budget'])} FLOPs ({_beyond(p['budget'], a)}), "
                   f"{NAMES[v]}: N_active {iv(n['n_active'])}, D {iv(n['tokens'])} tokens, "
                   f"predicted loss {iv(n['loss'])}.")  # fmt: skip
    return out


def _isoflop(a: Mapping[str, Any]) -> list[str]:
    out = []
    for v, sec in a["isoflop"].items():
        if skipped(sec) or skipped(a["laws"].get(v)):
            continue
        law = a["laws"][v]["primary"]
        par = a["laws"][v]["laws"].get(law, {}).get("n_opt_exponent") if law else None
        t = [sec["params"]["a"], *(sec["intervals"].get("a") or [None, None])]
        if sec.get("bootstrap_draws", 0) < MIN_DRAWS:
            t = [t[0], None, None]
            agree = (f": too few usable bootstrap draws ({sec.get('bootstrap_draws', 0)}) to "
                     "compare the two routes")  # fmt: skip
        elif par and None not in par and None not in t:
            overlap = t[1] <= par[2] and par[1] <= t[2]
            agree = (
                ": the two routes agree within their intervals"
                if overlap
                else ": the two routes disagree (the intervals do not overlap)"
            )
        else:
            agree = ""
        out.append(
            f"{cap(NAMES[v])} IsoFLOP profiles ({len(sec['budgets'])} budgets) give "
            f"N_opt ∝ C^{iv(t)}, the parametric fit C^{iv(par) if par else '?'}{agree}."
        )
    return out


def _compare_indep(x: Sequence[Any], y: Sequence[Any]) -> int | None:
    """+1 when x's interval lies above y's, −1 below, 0 when they overlap."""
    if not x or not y or x[1] is None or y[1] is None:
        return None
    return 1 if x[1] > y[2] else -1 if x[2] < y[1] else 0


def _at_loss(name: str, unit: str, level: float, archs: Mapping[str, Any], want: int,
             paper: str) -> list[str]:  # fmt: skip
    """Sentences comparing each MoE architecture's value at a common loss with dense's."""
    vals = {k: [v["value"], *(v["interval"] or [None, None])] for k, v in archs.items()}
    dense = next((vals[k] for k in vals if k.startswith("dense")), None)
    out = []
    for k, t in vals.items():
        if k.startswith("dense") or dense is None:
            continue
        s = _compare_indep(t, dense)
        verdict = ("not resolved at this scale: the intervals overlap" if s == 0 else
                   f"in line with {paper}" if s == want else f"which contradicts {paper}"
                   if s is not None else "no intervals, so not resolved")  # fmt: skip
        out.append(f"At loss {g(level)}, {name} is {iv(t)}{unit} for {display(k)} against "
                   f"{iv(dense)}{unit} for dense: {verdict}.")  # fmt: skip
    return out


def _hyper_noise(a: Mapping[str, Any]) -> list[str]:
    out = []
    h = a["hyper"]
    if not skipped(h) and not skipped(h.get("at_common_loss")):
        for hyper, want, what in (("batch", -1, "a smaller batch"), ("lr", 1, "a larger LR")):
            sec = h["at_common_loss"].get(hyper)
            if not skipped(sec):
                paper = f"Wang et al. (2024), who find MoE prefers {what} at equal loss"
                unit = " sequences" if hyper == "batch" else ""
                name = "the optimal batch" if hyper == "batch" else "the optimal peak LR"
                out += _at_loss(name, unit, sec["loss"], sec["archs"], want, paper)
    ns = a["noise_scale"]
    if not skipped(ns):
        archs = {k: v["at_common"] for k, v in ns["archs"].items()}
        paper = "Wang et al. (2024), who relate MoE's smaller optimal batch to a lower noise scale"
        out += _at_loss("the gradient noise scale B_simple", " tokens", ns["common_loss"], archs,
                        -1, paper)  # fmt: skip
    return out


TOPICS = (
    ("The study", (_scope,)),
    ("Architectures at equal compute", (_equal_compute, _matched, best_swept)),
    ("Fine-grained against standard MoE", (_granularity,)),
    ("Batch size, learning rate and noise scale", (_hyper_noise,)),
    ("Plans and data efficiency", (_plans, _efficiency)),
    ("Fitted laws", (_laws, _isoflop)),
)


def claim_groups(a: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The analysis's conclusions by topic, most important first, each sentence with its
    interval (module doc); topics without a sentence are left out."""
    out = []
    for topic, parts in TOPICS:
        sentences = [c for part in parts for c in part(a)]
        if sentences:
            out.append({"topic": topic, "claims": sentences})
    return out


def claims(a: Mapping[str, Any]) -> list[str]:
    """Every claim of `claim_groups`, in order."""
    return [c for grp in claim_groups(a) for c in grp["claims"]]
