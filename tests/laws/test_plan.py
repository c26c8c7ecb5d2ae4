"""A plan from fitted laws: the same numbers as the allocation functions, in a typed result."""

from __future__ import annotations

import pytest

from moescale.errors import UserError
from moescale.laws import FitResult, allocate, compare, make_plan, optimal_granularity
from moescale.laws.allocate import Allocation

WANG = {"A": 477.8, "B": 2143.0, "alpha": 0.35, "beta": 0.37, "gamma": 0.2, "sigma": 1.8}
CHIN = {"E0": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
MOE = {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47}


def fit_of(law: str, params: dict[str, float]) -> FitResult:
    return FitResult.from_json({"law": law, "params": params}, law)


def test_allocation_and_comparison() -> None:
    plan = make_plan(fit_of("wang", WANG), 1e21, given={"E": 8.0}, dense=fit_of("chinchilla", CHIN))
    ref = allocate("wang", WANG, 1e21, extras={"E": 8.0})
    cmp = compare("wang", WANG, "chinchilla", CHIN, 1e21, moe_extras={"E": 8.0})
    assert isinstance(plan.allocation, Allocation) and plan.granularity is None
    assert (plan.allocation.n_opt, plan.allocation.loss) == (ref.n_opt, ref.loss)
    assert plan.comparison is not None and plan.comparison.loss_gap == cmp.loss_gap
    data = plan.to_json()
    assert data["flops"] == "C = 6 N D" and data["method"] == "closed_form"
    assert data["compare"]["data_efficiency"] == cmp.data_efficiency


def test_wang_defaults_to_dense() -> None:
    plan = make_plan(fit_of("wang", WANG), 1e21)
    assert plan.allocation is not None and plan.allocation.extras == {"E": 1.0}


def test_krajewski_searches_granularity_unless_given() -> None:
    fit = fit_of("krajewski", MOE)
    plan = make_plan(fit, 1.41e21, given={"E": 64})
    assert plan.allocation is None and plan.granularity is not None
    assert plan.granularity == optimal_granularity(MOE, 1.41e21, experts=64)
    assert plan.to_json()["granularity"] == 16
    fixed = make_plan(fit, 1.41e21, given={"G": 16})
    assert fixed.allocation is not None and fixed.allocation.extras == {"G": 16.0}


def test_bad_budget() -> None:
    with pytest.raises(UserError, match="--budget"):
        make_plan(fit_of("chinchilla", CHIN), float("inf"))
