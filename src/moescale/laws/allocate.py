"""Compute-optimal allocation (N_opt, D_opt, loss) and MoE-vs-dense comparison at a budget.

Conventions:
- Simple FLOPs: C = k·N·D (k = 6, Kaplan/Chinchilla), N being the law's N. For a law
  A_E/N^α + B/D^β + const the optimum has the closed form of science.md §3; otherwise (kaplan,
  custom laws) the 1-D problem in log N is solved by bounded Brent.
- Routing-aware FLOPs (P0, Krajewski et al. 2024): F = (12·d²·c_f + d·E·G·c_r)·D·L_b with
  c_f = 6, c_r = 14, shape d = 64·L_b, N_total = d²·(8E + 4)·L_b. A P0 table entry "64×S" is
  read as: S = 12·d²·L_b, the non-embedding size of the dense model of the same shape (one
  standard expert set, i.e. N_active of the top-1, G = 1 model); the law's N is
  N_total = d²·(8E + 4)·L_b = S·(8E + 4)/12. This reading reproduces all five §5 rows: FLOPs
  within 0.5 %, loss within 0.025, optimal G equal, and the Brent optimum over S at the row's
  budget lands within 3 % of the table's S and D.

Data efficiency of MoE over dense at budget C (our definition, also written into the output):
take the dense law's compute-optimal model at C (N_d, D_d, loss L_d); D_moe = the tokens the MoE
law needs at the same N = N_d to reach L_d; data_efficiency = D_d / D_moe − 1 (> 0: MoE needs
fewer tokens for the same loss with the same N). A definition along the compute-optimal
frontiers instead (tokens at which each frontier reaches a loss) is blind to an improvement of
the N term alone, which is exactly how `wang` models MoE (A/E^γ), so it is not used; the
compute each needs for the same loss is reported as `compute_ratio` = C_dense(L_moe)/C.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from moescale.accounting import C_F, C_R, p0_flops, p0_params_total
from moescale.errors import UserError
from moescale.laws.forms import LawForm, get_form

DATA_EFFICIENCY_DEFINITION = (
    "D_dense / D_moe - 1, where N_d, D_dense are the dense law's compute-optimal size and "
    "tokens at the budget, L_d its loss, and D_moe the tokens the MoE law needs at the same N_d "
    "to reach L_d"
)
P0_CF, P0_CR = float(C_F), float(C_R)


@dataclass
class Allocation:
    """Compute-optimal point at budget C, with 95 % intervals from bootstrap parameters."""

    budget: float
    n_opt: float
    d_opt: float
    loss: float
    method: str
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)


def closed_form_allocation(
    a_e: float, b: float, alpha: float, beta: float, budget: float, k: float = 6.0
) -> tuple[float, float]:
    """N_opt, D_opt for A_E/N^α + B/D^β + const under C = k·N·D (science.md §3)."""
    gc = (alpha * a_e / (beta * b)) ** (1.0 / (alpha + beta))
    n = gc * (budget / k) ** (beta / (alpha + beta))
    d = (budget / k) ** (alpha / (alpha + beta)) / gc
    return n, d


def _power_terms(
    form: LawForm, params: Mapping[str, float], extras: Mapping[str, float]
) -> tuple[float, float, float, float, float] | None:
    """(A_E, B, alpha, beta, const) when the law reduces to A_E/N^α + B/D^β + const."""
    p = params
    if form.name == "chinchilla":
        return p["A"], p["B"], p["alpha"], p["beta"], p["E0"]
    if form.name == "wang":
        e = extras.get("E", 1.0)
        return p["A"] / e ** p["gamma"], p["B"], p["alpha"], p["beta"], p["sigma"]
    if form.name == "krajewski":
        g = extras.get("G", 1.0)
        return p["g"] / g ** p["gamma"] + p["a"], p["b"], p["alpha"], p["beta"], p["c"]
    return None


def _loss_at(
    form: LawForm, params: Mapping[str, float], n: float, d: float, extras: Mapping[str, float]
) -> float:
    x = {"N": np.array([n]), "D": np.array([d]), "C": np.array([6.0 * n * d])}
    for key in form.inputs:
        if key not in x:
            if key not in extras:
                raise UserError(f"law {form.name} needs a value for {key} (--{_flag(key)})")
            x[key] = np.array([float(extras[key])])
    return float(form.predict(x, params)[0])


def _flag(key: str) -> str:
    return {"E": "experts", "G": "granularity"}.get(key, key)


def allocate_point(
    form: LawForm,
    params: Mapping[str, float],
    budget: float,
    *,
    k: float = 6.0,
    extras: Mapping[str, float] | None = None,
    numeric: bool = False,
) -> tuple[float, float, float, str]:
    """(N_opt, D_opt, loss, method) at budget C = k·N·D; closed form unless `numeric`."""
    extras = dict(extras or {})
    terms = None if numeric else _power_terms(form, params, extras)
    if terms is not None:
        a_e, b, alpha, beta, const = terms
        n, d = closed_form_allocation(a_e, b, alpha, beta, budget, k)
        return n, d, a_e / n**alpha + b / d**beta + const, "closed_form"

    def f(logn: float) -> float:
        n = math.exp(logn)
        return _loss_at(form, params, n, budget / (k * n), extras)

    hi = math.log(budget / k)  # D >= 1 token
    res = minimize_scalar(f, bounds=(0.0, hi), method="bounded", options={"xatol": 1e-9})
    n = math.exp(float(res.x))
    return n, budget / (k * n), float(res.fun), "brent"


def _interval(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if np.isfinite(v)], float)
    if len(arr) == 0:
        return (math.nan, math.nan)
    return float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))


def allocate(
    law: str | LawForm,
    params: Mapping[str, float],
    budget: float,
    *,
    samples: Sequence[Mapping[str, float]] = (),
    k: float = 6.0,
    extras: Mapping[str, float] | None = None,
    numeric: bool = False,
) -> Allocation:
    """Compute-optimal N, D and loss at `budget`, with intervals from bootstrap `samples`."""
    form = get_form(law)
    if not (budget > 0 and math.isfinite(budget)):
        raise UserError(f"--budget must be a positive number of FLOPs, got {budget}")
    n, d, loss, method = allocate_point(form, params, budget, k=k, extras=extras, numeric=numeric)
    out = Allocation(budget=budget, n_opt=n, d_opt=d, loss=loss, method=method)
    if samples:
        pts = [
            allocate_point(form, s, budget, k=k, extras=extras, numeric=numeric) for s in samples
        ]
        out.intervals = {
            "n_opt": _interval([p[0] for p in pts]),
            "d_opt": _interval([p[1] for p in pts]),
            "loss": _interval([p[2] for p in pts]),
        }
    return out


def budget_for_loss(
    form: LawForm,
    params: Mapping[str, float],
    target: float,
    *,
    k: float = 6.0,
    extras: Mapping[str, float] | None = None,
) -> float:
    """Compute C at which the law's compute-optimal loss equals `target` (brentq in log C)."""

    def g(logc: float) -> float:
        return allocate_point(form, params, math.exp(logc), k=k, extras=extras)[2] - target

    lo, hi = math.log(1e6), math.log(1e40)
    if g(lo) < 0 or g(hi) > 0:
        return math.nan  # target above the smallest or below the irreducible loss
    return math.exp(brentq(g, lo, hi, xtol=1e-10))


@dataclass
class Comparison:
    """Two laws (MoE vs dense) at one budget: losses at equal compute and data efficiency."""

    budget: float
    moe: Allocation
    dense: Allocation
    loss_gap: float  # dense loss − MoE loss at equal compute (> 0: MoE better)
    d_dense: float
    d_moe: float  # tokens the MoE law needs at the dense optimum's N to reach the dense loss
    data_efficiency: float
    compute_ratio: float  # C_dense(L_moe(C)) / C: compute dense needs for MoE's optimal loss
    definition: str = DATA_EFFICIENCY_DEFINITION
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


def tokens_for_loss(
    form: LawForm,
    params: Mapping[str, float],
    n: float,
    target: float,
    extras: Mapping[str, float] | None = None,
) -> float:
    """Tokens D at which the law reaches `target` for model size N = n (nan if never)."""
    extras = dict(extras or {})

    def g(logd: float) -> float:
        return _loss_at(form, params, n, math.exp(logd), extras) - target

    lo, hi = math.log(1.0), math.log(1e30)
    if g(hi) > 0:
        return math.nan
    if g(lo) <= 0:
        return 1.0
    return math.exp(brentq(g, lo, hi, xtol=1e-12))


def _compare_point(
    moe: tuple[LawForm, Mapping[str, float], Mapping[str, float]],
    dense: tuple[LawForm, Mapping[str, float], Mapping[str, float]],
    budget: float,
    k: float,
) -> tuple[float, float, float, float]:
    """(loss gap, D_dense, D_moe, compute ratio) at one budget."""
    fm, pm, em = moe
    fd, pd, ed = dense
    l_m = allocate_point(fm, pm, budget, k=k, extras=em)[2]
    n_d, d_d, l_d, _ = allocate_point(fd, pd, budget, k=k, extras=ed)
    d_m = tokens_for_loss(fm, pm, n_d, l_d, em)
    c_d = budget_for_loss(fd, pd, l_m, k=k, extras=ed)
    return l_d - l_m, d_d, d_m, c_d / budget


def compare(
    moe_law: str | LawForm,
    moe_params: Mapping[str, float],
    dense_law: str | LawForm,
    dense_params: Mapping[str, float],
    budget: float,
    *,
    moe_samples: Sequence[Mapping[str, float]] = (),
    dense_samples: Sequence[Mapping[str, float]] = (),
    k: float = 6.0,
    moe_extras: Mapping[str, float] | None = None,
    dense_extras: Mapping[str, float] | None = None,
) -> Comparison:
    """Loss at equal compute and data efficiency (module doc) of MoE over dense at budget C.

    Intervals pair the i-th bootstrap sample of each law (draws are independent, so pairing by
    index is a valid joint resample) and use as many pairs as the shorter list.
    """
    fm, fd = get_form(moe_law), get_form(dense_law)
    em, ed = dict(moe_extras or {}), dict(dense_extras or {})
    a_m = allocate(fm, moe_params, budget, samples=moe_samples, k=k, extras=em)
    a_d = allocate(fd, dense_params, budget, samples=dense_samples, k=k, extras=ed)
    gap, d_d, d_m, ratio = _compare_point((fm, moe_params, em), (fd, dense_params, ed), budget, k)
    out = Comparison(
        budget=budget,
        moe=a_m,
        dense=a_d,
        loss_gap=gap,
        d_dense=d_d,
        d_moe=d_m,
        data_efficiency=d_d / d_m - 1.0,
        compute_ratio=ratio,
    )
    pairs = list(zip(moe_samples, dense_samples, strict=False))
    if pairs:
        pts = [_compare_point((fm, s, em), (fd, t, ed), budget, k) for s, t in pairs]
        out.intervals = {
            "loss_gap": _interval([p[0] for p in pts]),
            "data_efficiency": _interval([p[1] / p[2] - 1.0 for p in pts]),
            "compute_ratio": _interval([p[3] for p in pts]),
        }
    return out


# ---------------- routing-aware FLOPs and P0's optimal granularity ----------------


def p0_shape(size: float) -> tuple[float, float]:
    """(d, L_b) of P0's shape rule d = 64·L_b for a dense-equivalent size S = 12·d²·L_b."""
    n_layers = (size / (12.0 * 64.0**2)) ** (1.0 / 3.0)
    return 64.0 * n_layers, n_layers


def p0_n_total(size: float, experts: float) -> float:
    """N_total = d²·(8E + 4)·L_b for dense-equivalent size S (so N_total = S·(8E + 4)/12)."""
    return p0_params_total(*p0_shape(size), experts)


def routing_aware_flops(
    size: float,
    tokens: float,
    experts: float,
    granularity: float,
    c_f: float = P0_CF,
    c_r: float = P0_CR,
) -> float:
    """P0's F = (12·d²·c_f + d·E·G·c_r)·D·L_b for a model of dense-equivalent size S."""
    return p0_flops(*p0_shape(size), experts, granularity, tokens, c_f=c_f, c_r=c_r)


@dataclass
class GranularityOptimum:
    """Compute-optimal model under routing-aware FLOPs, optimal G included."""

    budget: float
    granularity: int
    size: float  # dense-equivalent size S = 12·d²·L_b ("64×S" in P0's table)
    n_total: float
    tokens: float
    loss: float
    by_granularity: dict[int, float] = field(default_factory=dict)  # G -> optimal loss


def optimal_granularity(
    params: Mapping[str, float],
    budget: float,
    *,
    experts: float = 64,
    granularities: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
    loss_fn: Callable[[float, float, float], float] | None = None,
) -> GranularityOptimum:
    """For each G, Brent over log S with D = budget / FLOPs-per-token; keep the best G.

    `params` are krajewski's (a, b, g, c, alpha, beta, gamma); N in the law is N_total.
    """
    form = get_form("krajewski")

    def law(n_total: float, tokens: float, g: float) -> float:
        if loss_fn is not None:
            return loss_fn(n_total, tokens, g)
        x = {"N": np.array([n_total]), "D": np.array([tokens]), "G": np.array([g])}
        return float(form.predict(x, params)[0])

    best: GranularityOptimum | None = None
    losses: dict[int, float] = {}
    for g in granularities:

        def f(logs: float, g: float = g) -> float:
            s = math.exp(logs)
            tokens = budget / routing_aware_flops(s, 1.0, experts, g)
            return law(p0_n_total(s, experts), tokens, g)

        hi = math.log(budget / 72.0)  # at least ~1 token
        res = minimize_scalar(
            f, bounds=(math.log(1e3), hi), method="bounded", options={"xatol": 1e-9}
        )
        s = math.exp(float(res.x))
        losses[int(g)] = float(res.fun)
        if best is None or res.fun < best.loss:
            best = GranularityOptimum(
                budget=budget,
                granularity=int(g),
                size=s,
                n_total=p0_n_total(s, experts),
                tokens=budget / routing_aware_flops(s, 1.0, experts, g),
                loss=float(res.fun),
            )
    assert best is not None
    best.by_granularity = losses
    return best
