"""Compute-optimal allocation (N_opt, D_opt, loss) and MoE-vs-dense comparison at a budget.

FLOPs are C = k·N·D (k = 6, Kaplan et al. 2020; Hoffmann et al. 2022), N being the law's N.
For a law that reduces to A_E/N^α + B/D^β + const (`LawForm.power_terms`) the optimum has a
closed form (docs/science.md, "Compute-optimal allocation"); otherwise (kaplan, custom laws)
the 1-D problem in log N is solved by bounded Brent. Routing-aware FLOPs and the optimal
granularity of Krajewski et al. (2024) are in `moescale.laws.granularity`.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from moescale.errors import UserError
from moescale.laws.forms import EXTRA_INPUTS, LawForm, get_form

DATA_EFFICIENCY_DEFINITION = (
    "D_dense / D_moe - 1, where N_d, D_dense are the dense law's compute-optimal size and "
    "tokens at the budget, L_d its loss, and D_moe the tokens the MoE law needs at the same N_d "
    "to reach L_d"
)


@dataclass
class Allocation:
    """Compute-optimal point at budget C, with 95 % intervals from bootstrap parameters."""

    budget: float
    n_opt: float
    d_opt: float
    loss: float
    method: str
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)  # E, G it was computed at
    k: float = 6.0  # C = k·N·D

    def to_json(self) -> dict[str, Any]:
        return {
            "flops": f"C = {self.k:g} N D",
            "method": self.method,
            "n_opt": self.n_opt,
            "d_opt": self.d_opt,
            "loss": self.loss,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
        }


def check_budget(budget: float) -> None:
    """A UserError unless `budget` is a positive, finite number of FLOPs."""
    if not (budget > 0 and math.isfinite(budget)):
        raise UserError(f"--budget must be a positive number of FLOPs, got {budget}")


def closed_form_allocation(
    a_e: float, b: float, alpha: float, beta: float, budget: float, k: float = 6.0
) -> tuple[float, float]:
    """N_opt, D_opt for A_E/N^α + B/D^β + const under C = k·N·D (docs/science.md)."""
    gc = (alpha * a_e / (beta * b)) ** (1.0 / (alpha + beta))
    n = gc * (budget / k) ** (beta / (alpha + beta))
    d = (budget / k) ** (alpha / (alpha + beta)) / gc
    return n, d


def _loss_at(
    form: LawForm, params: Mapping[str, float], n: float, d: float, extras: Mapping[str, float]
) -> float:
    x = {"N": np.array([n]), "D": np.array([d]), "C": np.array([6.0 * n * d])}
    for key in form.inputs:
        if key not in x:
            if key not in extras:
                flag = EXTRA_INPUTS[key].plan_flag if key in EXTRA_INPUTS else f"--{key}"
                raise UserError(f"law {form.name} needs a value for {key} ({flag})")
            x[key] = np.array([float(extras[key])])
    return float(form.predict(x, params)[0])


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
    terms = None if numeric else form.power_terms(params, extras)
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
    check_budget(budget)
    n, d, loss, method = allocate_point(form, params, budget, k=k, extras=extras, numeric=numeric)
    out = Allocation(
        budget=budget, n_opt=n, d_opt=d, loss=loss, method=method, extras=dict(extras or {}), k=k
    )
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

    def to_json(self) -> dict[str, Any]:
        return {
            "moe_loss": self.moe.loss,
            "dense_loss": self.dense.loss,
            "loss_gap": self.loss_gap,
            "d_moe": self.d_moe,
            "d_dense": self.d_dense,
            "compute_ratio": self.compute_ratio,
            "data_efficiency": self.data_efficiency,
            "definition": self.definition,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
        }


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
