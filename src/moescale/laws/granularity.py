"""Routing-aware FLOPs and the compute-optimal granularity of Krajewski et al. (2024),
"Scaling Laws for Fine-Grained Mixture of Experts".

Their model family has shape d = 64·L_b, N_total = d²·(8E + 4)·L_b (router and embedding
excluded), and training FLOPs F = (12·d²·c_f + d·E·G·c_r)·D·L_b with c_f = 6, c_r = 14 (see
`moescale.accounting` and docs/conventions.md). A table entry "64×S" of their paper is read as
E = 64 and S = 12·d²·L_b, the non-embedding size of the dense model of the same shape (one
standard expert set, i.e. N_active of the top-1, G = 1 model); the law's N is
N_total = S·(8E + 4)/12. This reading reproduces all five rows of their compute-optimal table:
FLOPs within 0.5 %, loss within 0.025, the same optimal G, and the Brent optimum over S at a
row's budget within 3 % of the row's S and D (tests/laws/test_allocate.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from moescale.accounting import C_F, C_R, krajewski_flops, krajewski_params_total
from moescale.laws.forms import LawForm, krajewski

KRAJEWSKI_CF, KRAJEWSKI_CR = float(C_F), float(C_R)


def krajewski_shape(size: float) -> tuple[float, float]:
    """(d, L_b) of the shape rule d = 64·L_b for a dense-equivalent size S = 12·d²·L_b."""
    n_layers = (size / (12.0 * 64.0**2)) ** (1.0 / 3.0)
    return 64.0 * n_layers, n_layers


def krajewski_n_total(size: float, experts: float) -> float:
    """N_total = d²·(8E + 4)·L_b for dense-equivalent size S (so N_total = S·(8E + 4)/12)."""
    return krajewski_params_total(*krajewski_shape(size), experts)


def routing_aware_flops(
    size: float,
    tokens: float,
    experts: float,
    granularity: float,
    c_f: float = KRAJEWSKI_CF,
    c_r: float = KRAJEWSKI_CR,
) -> float:
    """F = (12·d²·c_f + d·E·G·c_r)·D·L_b for a model of dense-equivalent size S."""
    return krajewski_flops(*krajewski_shape(size), experts, granularity, tokens, c_f=c_f, c_r=c_r)


@dataclass
class GranularityOptimum:
    """Compute-optimal model under routing-aware FLOPs, optimal G included."""

    budget: float
    granularity: int
    size: float  # dense-equivalent size S = 12·d²·L_b ("64×S" in Krajewski et al.'s table)
    n_total: float
    tokens: float
    loss: float
    by_granularity: dict[int, float] = field(default_factory=dict)  # G -> optimal loss
    experts: float = 64.0

    def to_json(self) -> dict[str, Any]:
        return {
            "flops": "routing_aware_krajewski",
            "experts": self.experts,
            "granularity": self.granularity,
            "size": self.size,
            "n_opt": self.n_total,
            "d_opt": self.tokens,
            "loss": self.loss,
            "loss_by_granularity": dict(self.by_granularity),
        }


def optimal_granularity(
    params: Mapping[str, float],
    budget: float,
    *,
    experts: float = 64,
    granularities: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
    loss_fn: Callable[[float, float, float], float] | None = None,
    form: LawForm | None = None,
) -> GranularityOptimum:
    """For each G, Brent over log S with D = budget / FLOPs-per-token; keep the best G.

    `params` are those of `form` (default krajewski: a, b, g, c, alpha, beta, gamma), a law
    of N = N_total, D and G; `loss_fn(n_total, tokens, g)` replaces the law altogether.
    """
    law_form = form or krajewski()

    def law(n_total: float, tokens: float, g: float) -> float:
        if loss_fn is not None:
            return loss_fn(n_total, tokens, g)
        x = {"N": np.array([n_total]), "D": np.array([tokens]), "G": np.array([g])}
        return float(law_form.predict(x, params)[0])

    best: GranularityOptimum | None = None
    losses: dict[int, float] = {}
    for g in granularities:

        def f(logs: float, g: float = g) -> float:
            s = math.exp(logs)
            tokens = budget / routing_aware_flops(s, 1.0, experts, g)
            return law(krajewski_n_total(s, experts), tokens, g)

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
                n_total=krajewski_n_total(s, experts),
                tokens=budget / routing_aware_flops(s, 1.0, experts, g),
                loss=float(res.fun),
                experts=float(experts),
            )
    assert best is not None
    best.by_granularity = losses
    return best
