"""Compute-optimal allocation (N_opt, D_opt, loss) and MoE-vs-dense comparison at a budget.

Without a model family, FLOPs are C = k·N·D (k = 6, Kaplan et al. 2020; Hoffmann et al. 2022)
with N the law's N: the simple convention when N is N_active. A law that reduces to
A_E/N^α + B/D^β + const (`LawForm.power_terms`) has a closed-form optimum (docs/science.md,
"Compute-optimal allocation"); other laws are searched (`moescale.laws.granularity`), as is every
law planned through a family at its true compute.

MoE against dense at budget C (each law fitted on its own architecture, priced in its own
FLOPs per token; definitions written into every output, docs/science.md, section 3.1):
the loss gap at equal compute, the compute multiplier C_dense(L*_moe)/C, and the data
efficiency D_dense/D_moe − 1 at equal loss and equal FLOPs per token. Intervals pair the i-th
bootstrap draw of one fit with the i-th of the other; draws without an interior optimum (a zero
exponent or coefficient) are counted, not fatal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.laws.forms import LawForm, get_form
from moescale.laws.granularity import (
    Opt,
    Sizing,
    best_over,
    budget_for,
    draw_intervals,
    interval,
    search,
    stack_params,
    tokens_for,
)
from moescale.run import Col

DATA_EFFICIENCY_DEFINITION = (
    "D_dense / D_moe - 1 at equal loss and equal FLOPs per token: D_dense and L_d are the dense "
    "law's compute-optimal tokens and loss at the budget, D_moe the tokens the MoE law needs to "
    "reach L_d with a model of the same FLOPs per token as that dense model (under C = 6 N D "
    "with N_active: the same N_active); > 0: MoE needs fewer tokens"
)
DEFINITIONS = {
    "loss_gap": "L*_dense(C) - L*_moe(C): the two compute-optimal losses at the same training "
    "compute C, each model priced in its own FLOPs per token; > 0: MoE better",
    "compute_ratio": "compute multiplier C_dense / C: C_dense is the compute at which the dense "
    "compute-optimal loss equals the MoE's compute-optimal loss at C; > 1: dense needs that many "
    "times the compute for the MoE's loss",
    "token_ratio": "D_dense / D_moe, as in data_efficiency",
    "data_efficiency": DATA_EFFICIENCY_DEFINITION,
}


@dataclass
class Allocation:
    """Compute-optimal point at budget C, with 95 % intervals from bootstrap parameters.

    `n_opt` is in the law's N; through a family `n_active`, `n_total` give both counts and
    `flops` names the convention (`Sizing.label`)."""

    budget: float
    n_opt: float
    d_opt: float
    loss: float
    method: str
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)  # E, G it was computed at
    k: float = 6.0  # C = k·N·D
    flops: str = ""
    n_active: float = math.nan
    n_total: float = math.nan
    degenerate: int = 0
    n_layers: float = math.nan  # continuous depth of the optimum, through a family

    def to_json(self) -> dict[str, Any]:
        out = {
            "flops": self.flops or f"C = {self.k:g} N D",
            "method": self.method,
            "n_opt": self.n_opt,
            "d_opt": self.d_opt,
            "loss": self.loss,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "degenerate_draws": self.degenerate,
        }
        out.update({k: v for k, v in (("n_active", self.n_active), ("n_total", self.n_total))
                    if math.isfinite(v)})  # fmt: skip
        return out


def check_budget(budget: float) -> None:
    """A UserError unless `budget` is a positive, finite number of FLOPs."""
    if not (budget > 0 and math.isfinite(budget)):
        raise UserError(f"--budget must be a positive number of FLOPs, got {budget}")


def check_k(k: float) -> None:
    """A UserError unless `k` (FLOPs per parameter per token) is positive and finite."""
    if not (k > 0 and math.isfinite(k)):
        raise UserError(f"--k must be a positive number of FLOPs per parameter per token, got {k}")


def closed_form_allocation(
    a_e: float, b: float, alpha: float, beta: float, budget: float, k: float = 6.0
) -> tuple[float, float]:
    """N_opt, D_opt for A_E/N^α + B/D^β + const under C = k·N·D (docs/science.md)."""
    if not all(v > 0 and math.isfinite(v) for v in (a_e, b, alpha, beta, budget, k)):
        raise UserError(
            f"no compute-optimal split: A_E {a_e:g}, B {b:g}, alpha {alpha:g}, beta {beta:g} "
            "must all be positive"
        )
    gc = (alpha * a_e / (beta * b)) ** (1.0 / (alpha + beta))
    n = gc * (budget / k) ** (beta / (alpha + beta))
    d = (budget / k) ** (alpha / (alpha + beta)) / gc
    return n, d


def allocate_sizing(
    sz: Sizing,
    params: Mapping[str, float],
    budget: float,
    samples: Sequence[Mapping[str, float]] = (),
) -> Allocation:
    """The optimum of one priced law, with intervals over its non-degenerate draws."""
    res = search([sz], params, samples, budget)
    s, d, loss = res.point.row(0)
    out = Allocation(
        budget=budget,
        n_opt=float(sz.n_law(s)),
        d_opt=d,
        loss=loss,
        method="closed_form" if sz.closed else "brent",
        extras={k: float(v) for k, v in sz.extras.items()},
        k=sz.k,
        flops=sz.label,
        degenerate=res.degenerate,
    )
    if sz.family is not None:
        c = sz.family.counts(sz.family.shape(s))
        out.n_active, out.n_total = float(c[Col.PARAMS_ACTIVE]), float(c[Col.PARAMS_TOTAL])
        out.n_layers = s
    if res.draws is not None:
        out.intervals = draw_intervals([sz], res.draws)
    return out


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
    a = allocate_sizing(Sizing(form, dict(extras or {}), k=k, numeric=numeric), params, budget)
    return a.n_opt, a.d_opt, a.loss, a.method


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
    """Compute-optimal N, D and loss at `budget` under C = k·N·D, with intervals from bootstrap
    `samples`."""
    check_budget(budget)
    check_k(k)
    sz = Sizing(get_form(law), dict(extras or {}), k=k, numeric=numeric)
    return allocate_sizing(sz, params, budget, samples)


def budget_for_loss(
    form: LawForm,
    params: Mapping[str, float],
    target: float,
    *,
    k: float = 6.0,
    extras: Mapping[str, float] | None = None,
) -> float:
    """Compute C in [1e6, 1e40] at which the law's compute-optimal loss equals `target`."""
    sz = Sizing(form, dict(extras or {}), k=k)
    return float(budget_for([sz], stack_params(form, [params]), np.array([target]), 1e6, 1e40)[0])


def tokens_for_loss(
    form: LawForm,
    params: Mapping[str, float],
    n: float,
    target: float,
    extras: Mapping[str, float] | None = None,
) -> float:
    """Tokens D at which the law reaches `target` for model size N = n (nan if never)."""
    sz = Sizing(form, dict(extras or {}))
    p = stack_params(form, [params])
    return float(tokens_for(sz, p, np.array([float(n)]), np.array([target]))[0])


@dataclass
class Comparison:
    """Two laws (MoE vs dense) at one budget: losses at equal compute and data efficiency."""

    budget: float
    moe: Allocation
    dense: Allocation
    loss_gap: float  # dense loss − MoE loss at equal compute (> 0: MoE better)
    d_dense: float
    d_moe: float  # tokens the MoE needs, at the dense optimum's FLOPs per token, for its loss
    data_efficiency: float
    compute_ratio: float  # C_dense(L_moe(C)) / C: compute dense needs for MoE's optimal loss
    definition: str = DATA_EFFICIENCY_DEFINITION
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    token_ratio: float = math.nan
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    draws: int = 0
    pairing: str = ""
    degenerate: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "moe_loss": self.moe.loss,
            "dense_loss": self.dense.loss,
            "loss_gap": self.loss_gap,
            "d_moe": self.d_moe,
            "d_dense": self.d_dense,
            "compute_ratio": self.compute_ratio,
            "token_ratio": self.token_ratio,
            "data_efficiency": self.data_efficiency,
            "definition": self.definition,
            "definitions": dict(self.definitions),
            "moe": self.moe.to_json(),
            "dense": self.dense.to_json(),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "draws": self.draws,
            "pairing": self.pairing,
            "degenerate_draws": self.degenerate,
        }


def _pair(
    moe_rows: Sequence[Mapping[str, float]], dense_rows: Sequence[Mapping[str, float]]
) -> tuple[list[Mapping[str, float]], list[Mapping[str, float]], str]:
    """Row 0 the fitted values, then the i-th draw of one fit with the i-th of the other (draws
    are independent, so this is a joint resample); a fit without draws stays at its values."""
    dm, dd = list(moe_rows[1:]), list(dense_rows[1:])
    if dm and dd:
        n, how = min(len(dm), len(dd)), "i-th MoE draw with i-th dense draw"
        return [moe_rows[0], *dm[:n]], [dense_rows[0], *dd[:n]], how
    n = max(len(dm), len(dd))
    how = "" if n == 0 else ("MoE draws, dense at its fitted values" if dm else
                             "dense draws, MoE at its fitted values")  # fmt: skip
    return ([moe_rows[0], *dm] if dm else [moe_rows[0]] * (n + 1),
            [dense_rows[0], *dd] if dd else [dense_rows[0]] * (n + 1), how)  # fmt: skip


def _allocation_row(sizings: Sequence[Sizing], o: Opt, budget: float) -> Allocation:
    sz = sizings[int(o.g[0])]
    s, d, loss = o.row(0)
    method = "closed_form" if sz.closed else "golden"
    return Allocation(budget, float(sz.n_law(s)), d, loss, method,
                      extras=dict(sz.extras), k=sz.k, flops=sz.label)  # fmt: skip


def compare_sizings(
    moe: Sequence[Sizing],
    moe_rows: Sequence[Mapping[str, float]],
    dense: Sizing,
    dense_rows: Sequence[Mapping[str, float]],
    budget: float,
) -> Comparison:
    """MoE (best of `moe`, one sizing per G) against dense at `budget`; rows[0] are each fit's
    values, rows[1:] its bootstrap draws."""
    rm, rd, how = _pair(moe_rows, dense_rows)
    pm, pd = stack_params(moe[0].form, rm), stack_params(dense.form, rd)
    bm, bd = best_over(moe, pm, budget), best_over([dense], pd, budget)
    if not (bm.ok[0] and bd.ok[0]):
        raise UserError(f"no compute-optimal model at {budget:.3g} FLOPs for one of the two fits")
    gap = bd.loss - bm.loss
    c_d = budget_for([dense], pd, bm.loss, budget * 1e-12, budget * 1e12)
    fpt = dense.fpt(bd.s)
    d_m = np.full(len(gap), np.nan)
    for j, sz in enumerate(moe):
        if np.any(bm.g == j):
            d_j = tokens_for(sz, pm, sz.size_for_fpt(fpt), bd.loss)
            d_m = np.where(bm.g == j, d_j, d_m)
    ratio = bd.d / d_m
    out = Comparison(
        budget=budget,
        moe=_allocation_row(moe, bm, budget),
        dense=_allocation_row([dense], bd, budget),
        loss_gap=float(gap[0]),
        d_dense=float(bd.d[0]),
        d_moe=float(d_m[0]),
        data_efficiency=float(ratio[0] - 1.0),
        compute_ratio=float(c_d[0] / budget),
        token_ratio=float(ratio[0]),
        draws=len(gap) - 1,
        pairing=how,
    )
    if len(gap) > 1:
        ok = bm.ok[1:] & bd.ok[1:]
        out.degenerate = int((~ok).sum())
        for key, v in (("loss_gap", gap), ("compute_ratio", c_d / budget), ("token_ratio", ratio),
                       ("data_efficiency", ratio - 1.0), ("moe_loss", bm.loss),
                       ("dense_loss", bd.loss), ("dense_d_opt", bd.d),
                       ("dense_n_opt", dense.n_law(bd.s)), ("moe_d_opt", bm.d)):  # fmt: skip
            out.intervals[key] = interval(v[1:][ok])
        out.dense.intervals = {k: out.intervals[f"dense_{k}"] for k in ("loss", "d_opt", "n_opt")}
    return out


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
    """Loss at equal compute, compute multiplier and data efficiency (module doc) of MoE over
    dense at budget C, both under C = k·N·D with each law's N."""
    check_budget(budget)
    check_k(k)
    sm = Sizing(get_form(moe_law), dict(moe_extras or {}), k=k)
    sd = Sizing(get_form(dense_law), dict(dense_extras or {}), k=k)
    return compare_sizings([sm], [moe_params, *moe_samples], sd, [dense_params, *dense_samples],
                           budget)  # fmt: skip
