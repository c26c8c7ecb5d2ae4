"""The search over a family's size and G: one answer per G whichever way it is asked, intervals
on the optimal G, degenerate draws counted rather than fatal."""

from __future__ import annotations

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws import get_form, krajewski_family, optimal_granularity
from moescale.laws.allocate import allocate_sizing
from moescale.laws.granularity import Sizing, optimum, stack_params
from moescale.run import Col

MOE = {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47}
NO_ROUTER = Col.PARAMS_TOTAL_NO_ROUTER


def draws(params: dict[str, float], n: int = 30, scale: float = 0.02) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    return [
        {k: v * float(np.exp(rng.normal(0, scale))) for k, v in params.items()} for _ in range(n)
    ]


def test_optimal_granularity_has_no_default_e() -> None:
    with pytest.raises(UserError, match="--experts"):
        optimal_granularity(MOE, 1e21)


@pytest.mark.parametrize("flops", ["simple", "routing_aware"])
def test_each_g_is_the_fixed_g_plan(flops: str) -> None:
    """The search's loss at G equals the plan at that fixed G: one answer for G = 1."""
    fam = krajewski_family(64)
    opt = optimal_granularity(MOE, 1e21, family=fam, flops=flops)
    for g in (1, 16):
        sz = Sizing(get_form("krajewski"), {"G": g}, fam.with_moe(granularity=g), NO_ROUTER, flops)
        assert allocate_sizing(sz, MOE, 1e21).loss == pytest.approx(opt.by_granularity[g], abs=1e-9)


def test_routing_aware_prices_large_g() -> None:
    """Without the router's routing cost, finer is (almost) always better; with it, not."""
    fam = krajewski_family(64)
    aware = optimal_granularity(MOE, 1.93e20, family=fam, flops="routing_aware")
    simple = optimal_granularity(MOE, 1.93e20, family=fam, flops="simple")
    assert aware.granularity == 16 and simple.granularity > aware.granularity
    assert aware.flops == "routing_aware_krajewski" and simple.flops == "simple_krajewski"
    assert aware.by_granularity[16] == pytest.approx(2.472, abs=0.002)


def test_optimal_g_gets_intervals() -> None:
    opt = optimal_granularity(MOE, 1e22, experts=64, samples=draws(MOE))
    lo, hi = opt.intervals["granularity"]
    assert lo <= opt.granularity <= hi
    for key in ("loss", "n_opt", "d_opt", "n_active", "n_total"):
        lo, hi = opt.intervals[key]
        assert lo < hi, key
    assert opt.intervals["loss"][0] <= opt.loss <= opt.intervals["loss"][1]
    assert opt.degenerate == 0


def test_degenerate_draws_are_counted() -> None:
    bad = [dict(MOE, beta=0.0), dict(MOE, b=0.0), dict(MOE, alpha=0.0)]
    opt = optimal_granularity(MOE, 1e22, experts=64, samples=[*draws(MOE, 10), *bad])
    assert opt.degenerate == 3
    with pytest.raises(UserError, match="beta = 0"):
        optimal_granularity(dict(MOE, beta=0.0), 1e22, experts=64)


def test_family_search_matches_closed_form_for_a_dense_law() -> None:
    """Through a dense family under 6·N·D the search lands on the closed form."""
    chin = {"E0": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
    form = get_form("chinchilla")
    p = stack_params(form, [chin])
    fam = krajewski_family().dense()
    via = optimum(Sizing(form, {}, fam, Col.PARAMS_ACTIVE, "simple"), p, 1e21)
    closed = optimum(Sizing(form, {}), p, 1e21)
    assert via.loss[0] == pytest.approx(closed.loss[0], abs=1e-9)
    assert fam.counts(fam.shape(via.s[0]))[Col.PARAMS_ACTIVE] == pytest.approx(closed.s[0], 1e-4)
