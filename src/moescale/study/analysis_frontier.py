"""Study analysis, part 3: compute-optimal frontiers, plans, and architectures at equal compute.

Everything here is the laws engine's (`moescale.laws`): `allocate_sizing` for N_opt(C), D_opt(C)
and L*(C) along a compute grid, `make_plan` for the budgets, `compare_sizings` for MoE against
dense (docs/science.md §3.1), `optimum` for fine-grained against standard MoE inside Krajewski
et al.'s law, and `fit_isoflop` for Chinchilla's approach 2. All of it in one
FLOP convention, C = 6·N_active·D, so that the three architectures are priced alike: a law whose
N is N_total goes through the architecture's family (`analysis_family`), as the engine requires.

Intervals are the engine's: 95 % percentiles over the fit's bootstrap draws; a gap between two
fits pairs the i-th draw of one with the i-th of the other, and fine-grained against standard
MoE evaluates one Krajewski draw at both G, so the gap's interval is not two intervals added.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.laws import fit_isoflop, make_plan
from moescale.laws.allocate import Allocation, allocate_sizing, compare_sizings
from moescale.laws.granularity import Sizing, interval, optimum, stack_params
from moescale.laws.isoflop import group_budgets
from moescale.run import Col
from moescale.study.analysis_data import FLOPS_CONVENTION, Point, column, skipped
from moescale.study.analysis_fits import ArchFits

log = logging.getLogger(__name__)
ISOFLOP_TOL = 0.3  # runs within 30 % of one another's compute form one IsoFLOP budget
NAN3 = [math.nan, math.nan, math.nan]


def sizing(fits: ArchFits, law: str, granularity: float | None = None) -> Sizing:
    """How `law` of an architecture is priced under C = 6·N_active·D: a law on N_active
    directly (the engine's closed form), a law on N_total through the architecture's family
    (the engine requires one: a token pays for N_active); E and G at the design's values."""
    fit, spec = fits.fits[law], fits.specs[law]
    form = fit.form()
    extras = {}
    if "E" in form.inputs:
        extras["E"] = fits.design["E"]
    if "G" in form.inputs:
        extras["G"] = float(granularity or fits.design["G"])
    if spec.n_column == Col.PARAMS_ACTIVE:
        return Sizing(form, extras, None, n_column=spec.n_column, k=6.0)
    if fits.family is None:
        raise UserError(
            f"law {law} is fitted on {spec.n_column} and needs the architecture's "
            f"model family to price it, but there is none: {fits.family_note}"
        )
    fam = fits.family.with_moe(granularity=extras.get("G"))
    return Sizing(form, extras, fam, n_column=spec.n_column, convention=FLOPS_CONVENTION, k=6.0)


def comparison(fits: ArchFits, dense: ArchFits, budget: float,
               law: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The engine's MoE-vs-dense comparison (`compare_sizings`, docs/science.md §3.1) of the
    primary laws (or the MoE side's `law`) at `budget`, draws paired; dense is priced by its
    law's N_active, which under C = 6·N_active·D is what a family's dense model would cost too."""
    law = law or fits.primary
    fit = fits.fits.get(law) if law else None
    if fit is None or dense.fit is None or dense.primary is None:
        return skipped("needs a fitted law on both sides")
    ours = [fit.params, *fit.bootstrap_params]
    theirs = [dense.fit.params, *dense.fit.bootstrap_params]
    if len(ours) == 1 or len(theirs) == 1:  # one side's draws alone would call the other exact
        ours, theirs = ours[:1], theirs[:1]
    try:
        c = compare_sizings([sizing(fits, law)], ours, sizing(dense, dense.primary), theirs, budget)
    except UserError as exc:
        return skipped(str(exc))
    return {"budget": budget, **c.to_json()}


def _triple(value: float, iv: Any) -> list[float]:
    lo, hi = iv if iv is not None else (math.nan, math.nan)
    return [float(value), float(lo), float(hi)]


def numbers(a: Any, n_column: str) -> dict[str, list[float]]:
    """[value, lo, hi] of N_active, N_total, D and loss of an allocation (or the JSON of a plan
    or of its allocation): N_active from the family when there is one, else the law's N when
    that is N_active."""
    d = a if isinstance(a, Mapping) else vars(a)
    ivs = d.get("intervals") or {}
    n_active, n_total = d.get("n_active"), d.get("n_total")
    out = {"tokens": _triple(d["d_opt"], ivs.get("d_opt")),
           "loss": _triple(d["loss"], ivs.get("loss"))}  # fmt: skip
    if n_active is not None and math.isfinite(n_active):
        out["n_active"] = _triple(n_active, ivs.get("n_active"))
    elif n_column == Col.PARAMS_ACTIVE:
        out["n_active"] = _triple(d["n_opt"], ivs.get("n_opt"))
    else:
        out["n_active"] = list(NAN3)
    if n_total is not None and math.isfinite(n_total):
        out["n_total"] = _triple(n_total, ivs.get("n_total"))
    else:
        out["n_total"] = list(NAN3)
    out["n_law"] = _triple(d["n_opt"], ivs.get("n_opt"))
    return out


def compute_grid(points: Sequence[Point], budgets: Sequence[float], n: int = 25) -> np.ndarray:
    """From the smallest compute measured to the largest of the data and the budgets."""
    c = column(points, "compute")
    hi = max(float(c.max()), *budgets) if budgets else float(c.max())
    return np.geomspace(float(c.min()), hi, n)


RUNS_SLACK = 1.25  # an optimum this close to the trained sizes and tokens counts as among them


def outside_runs(n_active: float, tokens: float, points: Sequence[Any]) -> str:
    """'' when a compute-optimal N_active and D lie among the trained ones (within RUNS_SLACK),
    else what lies outside: a compute inside the data can still put its optimum at a size or a
    token count no run had, and the loss there is the law's form, not a measurement."""
    far = []
    for value, attr, what in ((n_active, "n_active", "N_opt"), (tokens, "tokens", "D_opt")):
        have = [getattr(p, attr) for p in points]
        if not (have and math.isfinite(value)):
            continue
        lo, hi = min(have), max(have)
        if not lo / RUNS_SLACK <= value <= hi * RUNS_SLACK:
            far.append(f"{what} {value:.3g} (trained {lo:.3g} to {hi:.3g})")
    return ", ".join(far)


def frontier(fits: ArchFits, grid: np.ndarray) -> dict[str, Any]:
    """N_opt(C), D_opt(C) and L*(C) of the primary law along `grid`, with intervals; a
    budget without an interior optimum is nan (and counted)."""
    fit, law = fits.fit, fits.primary
    if fit is None or law is None:
        return skipped("no law could be fitted: " + "; ".join(fits.skipped.values()))
    sz = sizing(fits, law)
    keys = ("n_active", "n_total", "n_law", "tokens", "loss")
    cols: dict[str, list[list[float]]] = {k: [] for k in keys}
    failed = 0
    for c in grid:
        try:
            row = numbers(allocate_sizing(sz, fit.params, float(c), fit.bootstrap_params),
                          fits.specs[law].n_column)  # fmt: skip
        except UserError:
            failed, row = failed + 1, {k: list(NAN3) for k in keys}
        for k in keys:
            cols[k].append(row[k])
    lo, hi = fit.compute_range or (math.nan, math.nan)
    out: dict[str, Any] = {
        "law": law,
        "compute": grid,
        "fitted_range": [lo, hi],
        "family": sz.family.name if sz.family else None,
        "failed": failed,
    }
    for k, rows in cols.items():
        arr = np.array(rows)
        out[k], out[f"{k}_lo"], out[f"{k}_hi"] = arr[:, 0], arr[:, 1], arr[:, 2]
    out["among_runs"] = [math.isfinite(n + d) and not outside_runs(n, d, fits.points)
                         for n, d in zip(out["n_active"], out["tokens"], strict=True)]  # fmt: skip
    return out


def plan_at(fits: ArchFits, budget: float) -> dict[str, Any]:
    """`make_plan` of the primary law at `budget` through the architecture's family when it
    has one (then it says what to build), as its JSON plus `numbers`; a plan the engine
    refuses is skipped with its reason."""
    fit, law = fits.fit, fits.primary
    if fit is None or law is None:
        return skipped("no law fitted for this architecture")
    spec = fits.specs[law]
    given = {} if fits.family else {k: v for k, v in fits.design.items()
                                    if k in fit.form().inputs}  # fmt: skip
    if spec.n_column != Col.PARAMS_ACTIVE and fits.family is None:
        return skipped(
            f"law {law} (N = {spec.n_column}) needs a model family to be planned at "
            f"true compute, and none was read from the runs: {fits.family_note}"
        )
    try:
        plan = make_plan(fit, budget, given=given, family=fits.family, flops=FLOPS_CONVENTION)
    except UserError as exc:
        return skipped(str(exc))
    out = plan.to_json()
    out["numbers"] = numbers(out, spec.n_column)
    return out


def granularity_plan(fits: ArchFits, budget: float) -> dict[str, Any]:
    """The compute-optimal G among the G values the study trained (Krajewski et al.'s law),
    at `budget`: only a search within what was measured."""
    fit = fits.fits.get("krajewski")
    if fit is None or fits.family is None:
        why = fits.skipped.get("krajewski") or fits.family_note
        return skipped(f"needs Krajewski et al.'s law and a model family: {why}")
    gs = tuple(sorted({int(p.granularity) for p in fits.specs["krajewski"].points}))
    try:
        plan = make_plan(fit, budget, family=fits.family, flops=FLOPS_CONVENTION, search_g=True,
                         granularities=gs)  # fmt: skip
    except UserError as exc:
        return skipped(str(exc))
    g = plan.granularity
    assert g is not None
    return {
        "budget": budget,
        "searched": list(gs),
        "granularity": g.granularity,
        "interval": g.intervals.get("granularity"),
        "loss_by_granularity": g.by_granularity,
    }


def granularity_gap(fits: ArchFits, computes: Sequence[float]) -> dict[str, Any]:
    """L*(G = 1) − L*(G_design) at each compute, both from one Krajewski fit, each bootstrap
    draw evaluated at both G (paired): > 0 means fine-grained is better at equal compute."""
    fit = fits.fits.get("krajewski")
    if fit is None:
        return skipped(fits.skipped.get("krajewski", "Krajewski et al.'s law was not fitted"))
    s1, sg = sizing(fits, "krajewski", 1.0), sizing(fits, "krajewski")
    rows = stack_params(fit.form(), [fit.params, *fit.bootstrap_params])
    gap, l1, lg = [], [], []
    for c in computes:
        o1, og = optimum(s1, rows, float(c)), optimum(sg, rows, float(c))
        d = o1.loss - og.loss
        ok = (o1.ok & og.ok)[1:]
        gap.append([float(d[0]), *interval(d[1:][ok])])
        l1.append([float(o1.loss[0]), *interval(o1.loss[1:][ok])])
        lg.append([float(og.loss[0]), *interval(og.loss[1:][ok])])
    return {"compute": list(computes), "granularity": fits.design["G"], "gap": gap,
            "loss_g1": l1, "loss_g": lg, "draws": len(fit.bootstrap_params),
            "definition": "L*(G = 1) - L*(G) at equal compute C = 6 N_active D, one Krajewski "
            "fit, paired draws; > 0: fine-grained better"}  # fmt: skip


def isoflop(fits: ArchFits, budgets: Sequence[float], draws: int, seed: int) -> dict[str, Any]:
    """IsoFLOP profiles of the design's points (N = N_active, C = 6·N_active·D), with N_opt,
    D_opt at the budgets; skipped (the engine's reason) when the budgets have too few sizes."""
    pts = [p for p in fits.points if p.experts == fits.design.get("E", p.experts)
           and p.granularity == fits.design.get("G", p.granularity)]  # fmt: skip
    if len(pts) < 9:
        return skipped(f"{len(pts)} points: IsoFLOP profiles need at least 3 budgets with 3 or "
                       "more model sizes each (9 runs); a ladder of sizes x token budgets rarely "
                       "puts 3 sizes at one compute")  # fmt: skip
    n, d, c, y = (column(pts, k) for k in ("n_active", "tokens", "compute", "loss"))
    try:
        res = fit_isoflop(n, d, c, y, tol=ISOFLOP_TOL, draws=draws, seed=seed)
    except UserError as exc:
        return skipped(str(exc))
    out = res.to_json()
    out.pop("bootstrap_params", None)
    labels, values, _ = group_budgets(c, tol=ISOFLOP_TOL)
    out["points"] = {"n_active": n, "tokens": d, "loss": y,
                     "budget": [values[i] if i >= 0 else math.nan for i in labels]}  # fmt: skip
    at = []
    for b in budgets:
        a: Allocation = res.allocate(b)
        at.append({"budget": b, **numbers(a, Col.PARAMS_ACTIVE)})
    out["at_budgets"] = at
    return out
