"""A model family (`moescale.laws.family.Family`) read back from a variant's ladder rows.

Why: the laws engine plans a law whose N is N_total (Krajewski et al.'s, fitted on
`params_total_no_router`) only through a family that says what a model of a given size costs per
token (docs/science.md §3), and with one it also says what to build (d_model, n_layers, E, G, k).
A study's results rows carry no config, but their parameter counts pin the template down
(docs/conventions.md, "Parameter counts"): per MoE layer the router is d·E·G, so the number of
MoE layers is params_router / (d·E·G); N_total − N_active = n_moe·(E − k)·3·d·d_ff gives d_ff;
what N_active holds beyond attention, norms, dense FFNs and the k routed experts is shared
experts. The template is the median of those ratios over the variant's design (E, G, k), and it
is checked against every row: a ladder whose rows one template cannot reproduce within
`TOLERANCE` gets no family (the reason says which row), never a silently wrong one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from moescale.laws.family import Family, Shape
from moescale.run import Col
from moescale.study.analysis_data import Point

TOLERANCE = 0.05  # relative mismatch of N_active or N_total a template may leave


def _head_dim(d_models: Sequence[float]) -> int:
    """The largest power of two up to 64 that divides every d_model (the rounding of `build`)."""
    for h in (64, 32, 16, 8, 4, 2):
        if all(float(d) % h == 0 for d in d_models):
            return h
    return 1


def _layout(p: Point) -> tuple[float, float, float]:
    """(MoE layers, d_ff, shared experts) of one row's counts (module doc)."""
    d, n = p.d_model, p.n_layers
    base = n * (4 * d * d + 2 * d) + d
    if p.variant == "dense" or p.params_router <= 0:
        return 0.0, (p.n_active - base) / (3 * d * n), 0.0
    n_moe = p.params_router / (d * p.experts * p.granularity)
    d_ff = (p.n_total - p.n_active) / (n_moe * (p.experts - p.top_k) * 3 * d)
    ffn = 3 * d * d_ff
    shared = (p.n_active - p.params_router - base - (n - n_moe) * ffn) / (n_moe * ffn) - p.top_k
    return n_moe, d_ff, shared


def family_from_points(points: Sequence[Point], name: str) -> Family | str:
    """The family of `points` (one design: same E, G, k), or why there is none."""
    if not points:
        return "no points"
    p0 = points[0]
    need = ("d_model", "n_layers", "n_active", "n_total")
    if any(not (getattr(p, k) > 0) for p in points for k in need):
        return "rows lack d_model, n_layers, params_active or params_total"
    moe = p0.variant != "dense" and p0.params_router > 0
    if moe and p0.experts <= p0.top_k:
        return f"E = {p0.experts:g} is not above k = {p0.top_k:g}: d_ff cannot be read off"
    layouts = np.array([_layout(p) for p in points])
    if not np.all(np.isfinite(layouts)) or np.any(layouts[:, 1] <= 0):
        return "the parameter counts give no positive d_ff"
    ratio = np.median([lay[1] / p.d_model for lay, p in zip(layouts, points, strict=True)])
    every = (
        max(
            1,
            round(
                float(
                    np.median([p.n_layers / lay[0] for lay, p in zip(layouts, points, strict=True)])
                )
            ),
        )
        if moe
        else 0
    )
    fam = Family(
        name=name, aspect=float(np.median([p.d_model / p.n_layers for p in points])),
        ffn_ratio=float(ratio), experts=p0.experts if moe else 1.0,
        top_k=p0.top_k if moe else 1.0, granularity=p0.granularity if moe else 1.0,
        shared_experts=max(0.0, round(float(np.median(layouts[:, 2])), 3)) if moe else 0.0,
        moe_every=every, seq_len=int(p0.seq_len) if p0.seq_len > 0 else None,
        head_dim=_head_dim([p.d_model for p in points]),
        source="the study's ladder rows", sets=("E", "G", "k") if moe else (),
    )  # fmt: skip
    worst = check(fam, points)
    if worst[0] > TOLERANCE:
        return (f"one template (d_ff = {ratio:.3g}·d_model) misses run {worst[1]}'s parameter "
                f"counts by {worst[0]:.1%}")  # fmt: skip
    return fam


def check(fam: Family, points: Sequence[Point]) -> tuple[float, str]:
    """The largest relative error of N_active or N_total that `fam` makes on the points'
    own shapes (d_model, n_layers), and the run where it does."""
    worst = (0.0, "")
    for p in points:
        n_moe = math.ceil(p.n_layers / fam.moe_every) if fam.moe else 0.0
        s = Shape(p.d_model, p.n_layers, fam.ffn_ratio * p.d_model, n_moe)
        c = fam.counts(s)
        err = max(abs(c[Col.PARAMS_ACTIVE] / p.n_active - 1),
                  abs(c[Col.PARAMS_TOTAL] / p.n_total - 1))  # fmt: skip
        if err > worst[0]:
            worst = (float(err), p.run)
    return worst
