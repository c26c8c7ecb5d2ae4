"""A plan for a compute budget from fitted laws: what `moescale plan` computes and writes.

The compute-optimal N, D and loss of one fit (with intervals from its bootstrap draws), or, for
a law that searches its granularity (krajewski) when no G is given, the best G under
routing-aware FLOPs; optionally compared with a dense fit at the same budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moescale.laws.allocate import Allocation, Comparison, allocate, check_budget, compare
from moescale.laws.granularity import GranularityOptimum, optimal_granularity
from moescale.laws.result import FitResult

DEFAULT_EXPERTS = 64.0  # E of the routing-aware granularity search (Krajewski et al. 2024)


@dataclass
class Plan:
    """One budget's plan: `allocation` under C = k·N·D, or `granularity` (the routing-aware
    search); `comparison` against a dense fit when one was given. `draws` is the number of
    bootstrap draws the intervals come from."""

    budget: float
    law: str
    k: float
    allocation: Allocation | None = None
    granularity: GranularityOptimum | None = None
    comparison: Comparison | None = None
    draws: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"budget": self.budget, "law": self.law, "k": self.k}
        if self.granularity is not None:
            out.update(self.granularity.to_json())
        if self.allocation is not None:
            out.update(self.allocation.to_json())
        if self.comparison is not None:
            out["compare"] = self.comparison.to_json()
        return out


def make_plan(
    fit: FitResult,
    budget: float,
    *,
    k: float = 6.0,
    given: Mapping[str, float] | None = None,
    dense: FitResult | None = None,
) -> Plan:
    """Plan `budget` FLOPs with `fit` (the MoE law when `dense` is given).

    `given` holds values of extra inputs (E, G) from the user; the law's own defaults fill the
    rest (wang: E = 1, dense). A law with `granularity_search` and no given G gets the best G
    under routing-aware FLOPs (E from `given`, default 64). The dense law is evaluated at E = 1,
    G = 1.
    """
    check_budget(budget)
    form, given = fit.form(), dict(given or {})
    extras = form.extra_values(given)
    out = Plan(budget=budget, law=fit.law, k=k, draws=len(fit.bootstrap_params))
    if form.granularity_search and "G" not in given:
        experts = given.get("E") or DEFAULT_EXPERTS
        out.granularity = optimal_granularity(fit.params, budget, experts=experts, form=form)
    else:
        out.allocation = allocate(
            form, fit.params, budget, samples=fit.bootstrap_params, k=k, extras=extras
        )
    if dense is not None:
        dense_form = dense.form()
        out.comparison = compare(
            form, fit.params, dense_form, dense.params, budget,
            moe_samples=fit.bootstrap_params, dense_samples=dense.bootstrap_params, k=k,
            moe_extras=extras, dense_extras=dense_form.dense_values(),
        )  # fmt: skip
    return out
