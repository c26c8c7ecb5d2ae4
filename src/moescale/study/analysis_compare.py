"""Study analysis, part 4: what the runs themselves say, without a fitted law.

Why: a law extrapolates; a matched pair of runs does not. Three readings:

- `matched`: dense vs MoE, dense vs fine-grained and MoE vs fine-grained (same E and k) at equal
  N_active (within 5 %) and equal compute C = 6·N_active·D. Equal N_active and tokens is not
  quite equal compute: N_active counts the router, which grows with E·G (3 % of a 2-layer
  quickstart model at G = 4), so at equal tokens the finer design trains on more FLOPs. Each
  run is therefore compared with its partner's loss *at the run's own compute*, read off the
  partner model's token budgets (linear in ln C between the two nearest, at most 10 % beyond
  the last); a partner of one budget serves only where the computes agree within 0.5 %. The
  errors are the points' standard errors (the validation set's, plus the seed spread where a
  point has several seeds: analysis_data.seed_point); pairs from one trunk and its branches
  are scored on the same windows, so their errors are summed, not added in quadrature;
- `envelope`: each architecture's best measured loss at compute ≤ C (its measured frontier),
  at the compute values all architectures span;
- `curve_gap`: for matched fine-grained and standard-MoE runs, the training-loss gap at several
  token counts (does fine-grained's advantage grow with tokens, as Krajewski et al. 2024
  report?) and the tokens each needs to reach the standard MoE's final loss. Its errors are the
  noise of the smoothed curves, not seed-to-seed variation: a gap inside them is not resolved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moescale.study.analysis_data import (
    Curve,
    Point,
    at_tokens,
    first_reach,
    skipped,
)

PAIRS = (("dense", "moe"), ("dense", "fine-grained"), ("moe", "fine-grained"))
N_TOL, D_TOL = 0.05, 0.02
C_TOL = 0.005  # computes this close need no reading along the partner's budgets
REACH = math.log(1.1)  # how far (in ln C) a partner's loss is extended past its budgets
Z95 = 1.959964


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a / b - 1.0) <= tol


def _sized_like(p: Point, others: Sequence[Point], same_design: bool) -> list[Point]:
    """The other architecture's points of p's N_active (within N_TOL) and, MoE against MoE,
    of p's E and k."""
    return [q for q in others if _close(q.n_active, p.n_active, N_TOL)
            and (not same_design or (q.experts == p.experts and q.top_k == p.top_k))]  # fmt: skip


def _nearest_size(p: Point, hits: Sequence[Point]) -> Point:
    return min(hits, key=lambda q: abs(math.log(q.n_active / p.n_active)))


def _partner(p: Point, others: Sequence[Point], same_design: bool) -> Point | None:
    """p's partner at equal N_active and tokens (the curves compare along tokens)."""
    hits = [q for q in _sized_like(p, others, same_design) if _close(q.tokens, p.tokens, D_TOL)]
    return _nearest_size(p, hits) if hits else None


def _mean_interval(diffs: np.ndarray, ses: np.ndarray, groups: Sequence[Any] = ()) -> list[float]:
    """[mean, lo, hi]: the mean difference and its 95 % interval from the points' errors
    (nan bounds when an error is missing). Errors of one group (pairs scored on the same
    validation windows from one trunk) are summed before the groups add in quadrature."""
    m = float(np.mean(diffs))
    if not np.all(np.isfinite(ses)):
        return [m, math.nan, math.nan]
    by_group: dict[Any, float] = {}
    for i, se in enumerate(ses):
        key = groups[i] if len(groups) else i
        by_group[key] = by_group.get(key, 0.0) + float(se)
    se_mean = math.sqrt(sum(v * v for v in by_group.values())) / len(ses)
    return [m, m - Z95 * se_mean, m + Z95 * se_mean]


def at_compute(series: Sequence[Point], c: float) -> tuple[float, float, str] | None:
    """(loss, standard error, how) of one model's runs (its token budgets) at compute `c`:
    linear in ln C between the two nearest budgets, or along the end segment at most REACH
    beyond; the error bound sums the two points' (they share validation windows). None with
    fewer than two budgets or out of reach."""
    pts = sorted(series, key=lambda q: q.compute)
    xs = [math.log(q.compute) for q in pts]
    x = math.log(c)
    if len(pts) < 2 or not xs[0] - REACH <= x <= xs[-1] + REACH:
        return None
    i = min(max(int(np.searchsorted(xs, x)), 1), len(xs) - 1)
    lo, hi = pts[i - 1], pts[i]
    if xs[i] == xs[i - 1]:  # two points of one compute (other seq_len, say): no slope to read
        return None
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    loss = (1.0 - w) * lo.loss + w * hi.loss
    se = abs(1.0 - w) * lo.loss_se + abs(w) * hi.loss_se
    return loss, se, "interpolated" if 0.0 <= w <= 1.0 else "extrapolated"


def _baseline(p: Point, others: Sequence[Point], same_design: bool):
    """p's partner of the first architecture at p's compute: (partner run nearest in compute,
    its loss and error there, how it was read), or None (module doc)."""
    hits = _sized_like(p, others, same_design)
    if not hits:
        return None
    size = _nearest_size(p, hits).n_active
    series = [q for q in hits if q.n_active == size]
    q = min(series, key=lambda q: abs(math.log(q.compute / p.compute)))
    if _close(q.compute, p.compute, C_TOL):
        return q, q.loss, q.loss_se, "measured"
    read = at_compute(series, p.compute)
    return None if read is None else (q, *read)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A design's pairs: mean difference with its interval, wins, and the range of the second
    architecture's routing-aware compute over its partner's (equal under C = 6·N_active·D, not
    under Krajewski et al.'s count, which charges routing more: a reader weighs a win with it)."""
    diffs = np.array([r["difference"] for r in rows])
    ses = np.array([r["se"] for r in rows])
    ratios = [r["routing_aware_ratio"] for r in rows if math.isfinite(r["routing_aware_ratio"])]
    read = [r["baseline_read"] for r in rows]
    return {"experts": rows[0]["experts"], "granularity": rows[0]["granularity"],
            "pairs": rows, "n": len(rows), "wins": int(np.sum(diffs > 0)),
            "mean_difference": _mean_interval(diffs, ses, [r["groups"] for r in rows]),
            "baseline_read": {k: read.count(k) for k in sorted(set(read))},
            "routing_aware_ratio": [min(ratios), max(ratios)] if ratios else None}  # fmt: skip


def matched(points: Mapping[str, Sequence[Point]]) -> dict[str, Any]:
    """Measured equal-compute pairs (module doc), per design (E, G) of the second
    architecture: loss of the first at the second's compute minus the second's, > 0 when the
    second is better."""
    out: dict[str, Any] = {}
    for a, b in PAIRS:
        designs: dict[tuple[float, float], list[dict[str, Any]]] = {}
        for p in points.get(b, []):
            hit = _baseline(p, points.get(a, []), same_design=(a == "moe"))
            if hit is None:
                continue
            q, loss, se, how = hit
            scale = p.compute / q.compute  # the partner's FLOPs, moved to p's compute
            designs.setdefault((p.experts, p.granularity), []).append({
                "baseline": q.run, "other": p.run, "n_active": p.n_active, "tokens": p.tokens,
                "compute": p.compute, "experts": p.experts, "granularity": p.granularity,
                "baseline_tokens": q.tokens, "baseline_compute": q.compute,
                "baseline_read": how, "baseline_loss": loss, "other_loss": p.loss,
                "difference": loss - p.loss, "se": math.hypot(se, p.loss_se),
                "groups": f"{q.group}|{p.group}",
                "routing_aware_ratio": p.flops_routing / (q.flops_routing * scale)})  # fmt: skip
        key = f"{b}_vs_{a}"
        if not designs:
            out[key] = skipped(f"no {b} run has a {a} partner of its N_active (within "
                               f"{N_TOL:.0%}) whose runs reach its compute")  # fmt: skip
            continue
        out[key] = {"designs": [_summary(designs[k]) for k in sorted(designs)],
                    "definition": f"val_loss({a}) at the compute of the {b} run (read along "
                    f"the {a} model's token budgets) minus val_loss({b}), at equal N_active; "
                    f"> 0: {b} better"}  # fmt: skip
    return out


def envelope(points: Mapping[str, Sequence[Point]]) -> dict[str, Any]:
    """Each architecture's measured frontier: the best loss among its points of compute ≤ C,
    at the compute values (any architecture's) inside the range every one of them spans."""
    have = {v: pts for v, pts in points.items() if pts}
    if len(have) < 2:
        return skipped("fewer than two architectures have ladder points")
    lo = max(min(p.compute for p in pts) for pts in have.values())
    hi = min(max(p.compute for p in pts) for pts in have.values())
    grid = sorted({round(p.compute, -int(math.floor(math.log10(p.compute))) + 3)
                   for pts in have.values() for p in pts if lo <= p.compute <= hi})  # fmt: skip
    if not grid:
        return skipped("the architectures' compute ranges do not overlap")
    best = {v: [min((p.loss for p in pts if p.compute <= c * 1.01), default=math.nan)
                for c in grid] for v, pts in have.items()}  # fmt: skip
    steps = {v: sorted((p.compute, p.loss) for p in pts) for v, pts in have.items()}
    frontier = {v: [[c, min(loss for cc, loss in s if cc <= c)] for c, _ in s]
                for v, s in steps.items()}  # fmt: skip
    return {
        "compute": grid,
        "loss": best,
        "frontier": frontier,
        "definition": "best measured val_loss among runs of compute <= C",
    }


def _curve_pairs(points: Mapping[str, Sequence[Point]],
                 curves: Mapping[str, Curve]) -> list[tuple[Point, Point]]:  # fmt: skip
    """(standard MoE, fine-grained) runs of one size, E, k and token budget that both have a
    curve; per size only the longest pair (the most tokens to read a trend over)."""
    pairs: dict[float, tuple[Point, Point]] = {}
    for p in points.get("fine-grained", []):
        q = _partner(p, points.get("moe", []), same_design=True)
        if q is None or p.run not in curves or q.run not in curves:
            continue
        key = round(q.n_active, -3)
        if key not in pairs or pairs[key][0].tokens < q.tokens:
            pairs[key] = (q, p)
    return [pairs[k] for k in sorted(pairs)]


def curve_gap(points: Mapping[str, Sequence[Point]], curves: Mapping[str, Curve],
              n_grid: int = 6) -> dict[str, Any]:  # fmt: skip
    """The fine-grained vs standard MoE gap along training (module doc)."""
    pairs = _curve_pairs(points, curves)
    if not pairs:
        return skipped("no fine-grained run has a standard-MoE partner (same E, k, N_active and "
                       "tokens) with training curves for both")  # fmt: skip
    rows, changes, ses = [], [], []
    for q, p in pairs:
        cq, cp = curves[q.run], curves[p.run]
        end = min(cq.tokens[-1], cp.tokens[-1])
        grid = np.geomspace(max(0.15 * end, cq.tokens[0], cp.tokens[0]), end, n_grid)
        lq, sq = at_tokens(cq, grid)
        lp, sp = at_tokens(cp, grid)
        gap, se = lq - lp, np.hypot(sq, sp)
        target = float(np.min(cq.smooth()))  # the standard MoE's final (smoothed) loss
        t_moe, t_fg = first_reach(cq.tokens, cq.smooth(), target), first_reach(
            cp.tokens, cp.smooth(), target)  # fmt: skip
        rows.append({"moe_run": q.run, "fine_grained_run": p.run, "n_active": q.n_active,
                     "experts": q.experts, "granularity": p.granularity, "tokens": grid,
                     "moe_loss": lq, "fine_grained_loss": lp, "gap": gap, "se": se,
                     "target_loss": target, "tokens_moe": t_moe, "tokens_fine_grained": t_fg,
                     "token_ratio": t_fg / t_moe if t_moe > 0 else math.nan})  # fmt: skip
        changes.append(float(gap[-1] - gap[0]))
        ses.append(float(math.hypot(se[0], se[-1])))
    change = _mean_interval(np.array(changes), np.array(ses))
    first = _mean_interval(np.array([r["gap"][0] for r in rows]),
                           np.array([r["se"][0] for r in rows]))  # fmt: skip
    last = _mean_interval(np.array([r["gap"][-1] for r in rows]),
                          np.array([r["se"][-1] for r in rows]))  # fmt: skip
    return {"pairs": rows, "gap_first": first, "gap_last": last, "gap_change": change,
            "definition": "training loss (smoothed) of standard MoE minus fine-grained at equal "
            "tokens; > 0: fine-grained ahead. gap_change: last minus first token count, mean "
            "over pairs, 95 % interval from the curves' noise"}  # fmt: skip
