"""A plan from fitted laws: the same numbers as the allocation functions, in a typed result."""

from __future__ import annotations

import pytest

from moescale.errors import UserError
from moescale.laws import (
    FitResult,
    allocate,
    compare,
    krajewski_family,
    make_plan,
    optimal_granularity,
)
from moescale.laws.allocate import Allocation

WANG = {"A": 477.8, "B": 2143.0, "alpha": 0.35, "beta": 0.37, "gamma": 0.2, "sigma": 1.8}
CHIN = {"E0": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
MOE = {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47}


def fit_of(law: str, params: dict[str, float], **more: object) -> FitResult:
    return FitResult.from_json({"law": law, "params": params, **more}, law)


# Krajewski et al.'s N is N_total without router, priced through their family, routing-aware
PAPER = {"columns": {"N": "params_total_no_router"}}
KRAJEWSKI = {"family": krajewski_family(), "flops": "routing_aware"}


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


def test_wang_dense_when_told() -> None:
    plan = make_plan(fit_of("wang", WANG), 1e21, given={"E": 1.0})
    assert plan.allocation is not None and plan.allocation.extras == {"E": 1.0}


def test_krajewski_searches_granularity_unless_given() -> None:
    fit = fit_of("krajewski", MOE, **PAPER)
    plan = make_plan(fit, 1.41e21, given={"E": 64}, **KRAJEWSKI)
    assert plan.allocation is None and plan.granularity is not None
    assert plan.granularity == optimal_granularity(MOE, 1.41e21, experts=64)
    assert plan.to_json()["granularity"] == 16
    fixed = make_plan(fit, 1.41e21, given={"G": 16, "E": 64}, **KRAJEWSKI)
    assert fixed.allocation is not None and fixed.allocation.extras == {"G": 16.0}


def test_bad_budget() -> None:
    with pytest.raises(UserError, match="--budget"):
        make_plan(fit_of("chinchilla", CHIN), float("inf"))


DENSE = {"E0": 0.47, "A": 16.3, "alpha": 0.126, "B": 26.7, "beta": 0.127}  # Krajewski et al.'s


def test_fine_grained_moe_at_its_true_compute() -> None:
    """Krajewski et al.'s own coefficients at 1.93e20 FLOPs and G 16: the MoE (64×1B, 28.94B
    tokens, loss 2.491 in their table) beats dense; charging every expert to every token, as
    C = 6·N_total·D does, inverted that (MoE 3.003 against dense 2.903)."""
    moe, dense = fit_of("krajewski", MOE, **PAPER), fit_of("chinchilla", DENSE)
    plan = make_plan(moe, 1.93e20, given={"E": 64, "G": 16}, dense=dense, **KRAJEWSKI)
    a, c = plan.allocation, plan.comparison
    assert a is not None and c is not None
    assert a.loss == pytest.approx(2.472, abs=0.002) and a.loss < c.dense.loss
    assert a.d_opt == pytest.approx(28.94e9, rel=0.05)
    assert c.loss_gap > 0.4 and c.compute_ratio > 1 and c.data_efficiency > 0
    assert plan.design is not None and plan.design.experts * plan.design.granularity == 1024
    assert plan.design.params_active < plan.design.params_total / 30
    data = plan.to_json()
    assert data["flops"] == "routing_aware_krajewski" and data["family"]["name"] == "krajewski"
    assert any("E = 64 (--experts)" in s for s in data["assumptions"])


def test_no_hidden_defaults() -> None:
    moe = fit_of("krajewski", MOE, **PAPER)
    with pytest.raises(UserError, match="--family"):  # N_total priced as 6·N·D: refused
        make_plan(moe, 1e21, given={"G": 1})
    with pytest.raises(UserError, match="--experts"):  # no E = 64 assumed
        make_plan(moe, 1e21, family=krajewski_family())
    with pytest.raises(UserError, match="--experts E"):  # wang is not silently dense
        make_plan(fit_of("wang", WANG), 1e21)
    with pytest.raises(UserError, match="--experts does not apply"):
        make_plan(fit_of("chinchilla", CHIN), 1e21, given={"E": 8})
    # E recorded in the fit JSON counts as given, and says so
    plan = make_plan(fit_of("krajewski", MOE, experts=64, **PAPER), 1e21, recorded={"E": 64},
                     given={"G": 1}, **KRAJEWSKI)  # fmt: skip
    assert "E = 64 (recorded in the fit JSON)" in plan.assumptions


def test_one_answer_for_g_1() -> None:
    moe = fit_of("krajewski", MOE, **PAPER)
    search = make_plan(moe, 1e21, given={"E": 64}, **KRAJEWSKI)
    fixed = make_plan(moe, 1e21, given={"E": 64, "G": 1}, **KRAJEWSKI)
    assert search.granularity is not None and fixed.allocation is not None
    assert fixed.allocation.loss == pytest.approx(search.granularity.by_granularity[1], abs=1e-9)


def test_compare_refuses_a_moe_dense_side() -> None:
    moe = fit_of("krajewski", MOE, **PAPER)
    with pytest.raises(UserError, match="fine-grained/MoE"):
        make_plan(moe, 1e21, given={"E": 64}, dense=moe, **KRAJEWSKI)
    with pytest.raises(UserError, match="fine-grained/MoE"):
        make_plan(moe, 1e21, given={"E": 64}, dense=fit_of("chinchilla", CHIN),
                  dense_recorded={"E": 8}, **KRAJEWSKI)  # fmt: skip
    plan = make_plan(fit_of("wang", WANG), 1e21, given={"E": 8}, dense=fit_of("wang", WANG))
    assert plan.comparison is not None and plan.comparison.dense.extras == {"E": 1.0}


def test_zero_parameters_and_far_budgets() -> None:
    with pytest.raises(UserError, match="beta = 0"):
        make_plan(fit_of("chinchilla", dict(CHIN, beta=0.0)), 1e21)
    with pytest.raises(UserError, match="--k"):
        make_plan(fit_of("chinchilla", CHIN), 1e21, k=0.0)
    fit = fit_of("chinchilla", CHIN, compute_range=[1e17, 1e19],
                 bootstrap_params=[CHIN, dict(CHIN, alpha=0.0)])  # fmt: skip
    plan = make_plan(fit, 1e22)
    assert any("3.0 decades beyond" in w for w in plan.warnings)
    assert any("1 of 2 bootstrap draws" in w for w in plan.warnings)
    assert plan.to_json()["warnings"] == plan.warnings


class _IsoFLOP:
    """Stands in for `moescale.laws.isoflop.IsoFLOPResult`: N_opt(C) and no law."""

    columns = {"N": "params_active"}
    compute_range = (1e17, 1e19)
    bootstrap_params: list[dict[str, float]] = []

    def allocate(self, budget: float) -> Allocation:
        return Allocation(budget, 1e9, budget / 6e9, 2.5, method="isoflop")


def test_isoflop_fit_plans_without_a_law() -> None:
    plan = make_plan(_IsoFLOP(), 1e21, family=krajewski_family().dense())
    assert plan.allocation is not None and plan.allocation.method == "isoflop"
    assert plan.design is not None
    assert plan.design.params_active == pytest.approx(1e9, rel=0.3)
    with pytest.raises(UserError, match="isoflop"):
        make_plan(_IsoFLOP(), 1e21, dense=fit_of("chinchilla", CHIN))


def test_custom_law_with_g_takes_the_flag() -> None:
    law = "E0 + A / (N**alpha * G**gamma) + B / D**beta"
    fit = fit_of(law, dict(CHIN, gamma=0.1))
    plan = make_plan(fit, 1e21, given={"G": 4})
    ref = make_plan(fit_of("chinchilla", dict(CHIN, A=CHIN["A"] / 4**0.1)), 1e21)
    assert plan.allocation is not None and ref.allocation is not None
    assert plan.allocation.loss == pytest.approx(ref.allocation.loss, abs=1e-6)
    assert "G = 4 (--granularity)" in plan.assumptions


def test_no_search_over_g_when_the_fit_cannot_identify_its_g_term() -> None:
    """Two trained G fix g/G^gamma at two points only: gamma is unidentified, and an optimal G
    would be the search grid's. A fixed, trained G still plans."""
    fit = fit_of("krajewski", MOE, unidentified=["gamma"], **PAPER)
    with pytest.raises(UserError, match="the fit leaves gamma unidentified .* --granularity G"):
        make_plan(fit, 1.41e21, given={"E": 64}, **KRAJEWSKI)
    fixed = make_plan(fit, 1.41e21, given={"G": 4, "E": 64}, **KRAJEWSKI)
    assert fixed.allocation is not None and fixed.allocation.extras == {"G": 4.0}


def test_an_optimum_below_the_familys_smallest_model_is_said() -> None:
    """At a tiny budget the optimal N needs less than one layer: the plan builds the family's
    one-layer model and says it is off the optimum, instead of quietly pricing it."""
    fam = krajewski_family().dense()
    tiny = make_plan(fit_of("chinchilla", CHIN), 1e9, family=fam)  # 0.34 layers
    assert tiny.design is not None and tiny.design.n_layers == 1
    assert any("layers of family" in w and "off the optimum" in w for w in tiny.warnings)
    big = make_plan(fit_of("chinchilla", CHIN), 1e21, family=fam)
    assert not any("off the optimum" in w for w in big.warnings)
