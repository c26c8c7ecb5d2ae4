"""Compute-optimal allocation: closed form vs Brent, the compute-optimal table of Krajewski et al.
(2024), MoE-vs-dense comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws import (
    allocate,
    budget_for_loss,
    compare,
    get_form,
    krajewski_n_total,
    optimal_granularity,
    routing_aware_flops,
)
from moescale.laws.allocate import allocate_point

KRAJEWSKI_MOE = {
    "a": 18.1,
    "alpha": 0.115,
    "b": 30.8,
    "beta": 0.147,
    "g": 2.1,
    "gamma": 0.58,
    "c": 0.47,
}
# Krajewski et al. (2024)'s compute-optimal table for E = 64 (see docs/science.md):
# (dense-equivalent size S of "64×S", tokens, G, FLOPs, loss)
KRAJEWSKI_ROWS = [
    (100e6, 4.37e9, 8, 2.95e18, 3.133),
    (1e9, 28.94e9, 16, 1.93e20, 2.491),
    (3e9, 72.90e9, 16, 1.41e21, 2.245),
    (7e9, 137.60e9, 32, 6.46e21, 2.076),
    (70e9, 941.07e9, 32, 4.16e23, 1.694),
]
CHIN = {"E0": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}


@pytest.mark.parametrize(("size", "tokens", "g", "flops", "loss"), KRAJEWSKI_ROWS)
def test_krajewski_rows(size: float, tokens: float, g: int, flops: float, loss: float) -> None:
    assert routing_aware_flops(size, tokens, 64, g) == pytest.approx(flops, rel=0.01)
    x = {"N": np.array([krajewski_n_total(size, 64)]), "D": np.array([tokens]), "G": np.array([g])}
    assert get_form("krajewski").predict(x, KRAJEWSKI_MOE)[0] == pytest.approx(loss, abs=0.03)
    opt = optimal_granularity(KRAJEWSKI_MOE, flops, experts=64)
    assert opt.granularity == g
    assert opt.loss == pytest.approx(loss, abs=0.03)
    # the Brent optimum lands on the table's model and tokens, too
    assert opt.size == pytest.approx(size, rel=0.05)
    assert opt.tokens == pytest.approx(tokens, rel=0.05)


@pytest.mark.parametrize("budget", [1e18, 1e21, 1e24])
@pytest.mark.parametrize(
    ("law", "params", "extras"),
    [
        ("chinchilla", CHIN, {}),
        (
            "wang",
            {"A": 477.8, "B": 2143.0, "alpha": 0.35, "beta": 0.37, "gamma": 0.2, "sigma": 1.8},
            {"E": 8.0},
        ),
        ("krajewski", KRAJEWSKI_MOE, {"G": 8.0}),
    ],
)
def test_closed_form_matches_brent(law: str, params: dict, extras: dict, budget: float) -> None:
    form = get_form(law)
    n1, d1, l1, m1 = allocate_point(form, params, budget, extras=extras)
    n2, d2, l2, m2 = allocate_point(form, params, budget, extras=extras, numeric=True)
    assert (m1, m2) == ("closed_form", "brent")
    assert n1 == pytest.approx(n2, rel=1e-3)
    assert d1 == pytest.approx(d2, rel=1e-3)
    assert l1 == pytest.approx(l2, abs=1e-9)
    assert 6 * n1 * d1 == pytest.approx(budget)


def test_kaplan_uses_brent_and_intervals() -> None:
    p = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    samples = [dict(p, alpha_N=0.076 + 0.002 * i) for i in range(-3, 4)]
    a = allocate("kaplan", p, 1e21, samples=samples)
    assert a.method == "brent"
    assert a.intervals["loss"][0] <= a.loss <= a.intervals["loss"][1]


def test_budget_for_loss_inverts_allocation() -> None:
    form = get_form("chinchilla")
    loss = allocate_point(form, CHIN, 1e22)[2]
    assert budget_for_loss(form, CHIN, loss) == pytest.approx(1e22, rel=1e-6)
    assert math.isnan(budget_for_loss(form, CHIN, 1.0))  # below E0: unreachable


def test_compare_data_efficiency() -> None:
    """wang's MoE (E = 64) has a smaller N term: lower loss at equal compute, fewer tokens."""
    p = {"A": 477.8, "B": 2143.0, "alpha": 0.35, "beta": 0.37, "gamma": 0.1, "sigma": 1.8}
    cmp = compare("wang", p, "wang", p, 1e21, moe_extras={"E": 64.0}, dense_extras={"E": 1.0})
    assert cmp.loss_gap > 0
    assert cmp.data_efficiency > 0
    assert cmp.compute_ratio > 1
    # definition check by hand: the MoE at the dense optimum's N reaches the dense loss at d_moe
    n_d, d_d, l_d, _ = allocate_point(get_form("wang"), p, 1e21, extras={"E": 1.0})
    x = {"N": np.array([n_d]), "D": np.array([cmp.d_moe]), "E": np.array([64.0])}
    assert get_form("wang").predict(x, p)[0] == pytest.approx(l_d, abs=1e-9)
    assert cmp.data_efficiency == pytest.approx(d_d / cmp.d_moe - 1)
    assert "D_dense / D_moe - 1" in cmp.definition
    dense = dict(CHIN)
    same = compare("chinchilla", dense, "chinchilla", dense, 1e21)
    assert same.data_efficiency == pytest.approx(0.0, abs=1e-6)
    assert same.loss_gap == pytest.approx(0.0, abs=1e-12)


WANG = {"A": 477.8, "B": 2143.0, "alpha": 0.35, "beta": 0.37, "gamma": 0.1, "sigma": 1.8}


def test_compare_closed_forms_for_one_wang_fit() -> None:
    """docs/science.md: for wang, compute multiplier E^(γ/α) and data efficiency
    (1 + (β/α)(1 − E^−γ))^(1/β) − 1 at every budget; each quantity carries its definition."""
    p, e = WANG, 64.0
    for budget in (1e19, 1e23):
        cmp = compare("wang", p, "wang", p, budget, moe_extras={"E": e}, dense_extras={"E": 1.0})
        assert cmp.compute_ratio == pytest.approx(e ** (p["gamma"] / p["alpha"]), rel=1e-6)
        want = (1 + p["beta"] / p["alpha"] * (1 - e ** -p["gamma"])) ** (1 / p["beta"]) - 1
        assert cmp.data_efficiency == pytest.approx(want, rel=1e-6)
        assert cmp.token_ratio == pytest.approx(1 + want, rel=1e-6)
    data = cmp.to_json()
    assert set(data["definitions"]) == {
        "loss_gap",
        "compute_ratio",
        "token_ratio",
        "data_efficiency",
    }
    assert "compute multiplier" in data["definitions"]["compute_ratio"]


def test_zero_exponent_or_coefficient_never_divides_by_zero() -> None:
    bad = [dict(CHIN, beta=0.0), dict(CHIN, B=0.0), dict(CHIN, alpha=0.0, beta=0.0)]
    a = allocate("chinchilla", CHIN, 1e21, samples=[CHIN, *bad])
    assert a.degenerate == 3 and a.intervals["loss"][0] == pytest.approx(a.loss)
    for p in bad:
        with pytest.raises(UserError, match="no compute-optimal model"):
            allocate("chinchilla", p, 1e21)
    with pytest.raises(UserError, match="--k"):
        allocate("chinchilla", CHIN, 1e21, k=0.0)
    cmp = compare("chinchilla", CHIN, "chinchilla", CHIN, 1e21, moe_samples=[CHIN, *bad],
                  dense_samples=[CHIN] * 4)  # fmt: skip
    assert cmp.degenerate == 3 and cmp.draws == 4


def test_compare_pairs_draws_with_the_other_fits_values() -> None:
    samples = [dict(CHIN, A=CHIN["A"] * f) for f in (0.9, 1.0, 1.1)]
    cmp = compare("chinchilla", CHIN, "chinchilla", CHIN, 1e21, moe_samples=samples)
    assert cmp.draws == 3 and "dense at its fitted values" in cmp.pairing
    lo, hi = cmp.intervals["loss_gap"]
    assert lo < 0 < hi
