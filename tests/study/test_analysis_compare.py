"""Matched equal-compute pairs (study/analysis_compare.py) on hand-built points: each run is
compared with its partner's loss at the run's own compute, not at its token count."""

from __future__ import annotations

import math

import pytest

from moescale.study.analysis_compare import REACH, at_compute, matched
from moescale.study.analysis_data import Point


def point(variant: str, n_active: float, tokens: float, loss: float, *, group: str = "",
          g: float = 1, se: float = 0.01, run: str = "") -> Point:  # fmt: skip
    e = 1 if variant == "dense" else 8
    return Point(run=run or f"{variant}-{n_active:g}-{tokens:g}", group=group or variant,
                 variant=variant, experts=e, granularity=g, top_k=1, d_model=64, n_layers=2,
                 n_active=n_active, n_total=n_active * e, n_total_no_router=n_active * e,
                 params_router=0.0, tokens=tokens, compute=6 * n_active * tokens,
                 flops_exact=18 * n_active * tokens, loss=loss, loss_se=se, seeds=1, seq_len=128,
                 flops_routing=6 * n_active * tokens)  # fmt: skip


def dense_series(n: float = 1e5, slope: float = -0.5) -> list[Point]:
    """One dense model at three budgets, its loss linear in ln C (so reading it is exact)."""
    return [point("dense", n, d, 5.0 + slope * math.log(d / 1e5)) for d in (1e5, 2e5, 4e5)]


def test_at_compute_is_linear_in_log_compute_and_bounded() -> None:
    s = dense_series()
    c = 6 * 1e5 * 3e5
    loss, se, how = at_compute(s, c)
    assert loss == pytest.approx(5.0 - 0.5 * math.log(3)) and how == "interpolated"
    assert 0.01 <= se <= 0.02  # the two points' errors summed, weighted
    loss, _, how = at_compute(s, s[-1].compute * 1.05)
    assert loss == pytest.approx(5.0 - 0.5 * math.log(4 * 1.05)) and how == "extrapolated"
    assert at_compute(s, s[-1].compute * math.exp(REACH) * 1.01) is None
    assert at_compute(s[:1], s[0].compute) is None
    assert at_compute([s[0], s[0]], s[0].compute * 1.01) is None


def test_a_run_with_more_compute_meets_its_partner_at_that_compute() -> None:
    """The fine-grained model's router makes N_active 3 % larger at equal tokens: the dense
    partner's loss is read at the fine-grained run's compute, which shrinks the raw gap."""
    fg = point("fine-grained", 1.03e5, 2e5, 4.5, g=4)
    out = matched({"dense": dense_series(), "fine-grained": [fg]})
    (pair,) = out["fine-grained_vs_dense"]["designs"][0]["pairs"]
    raw = (5.0 - 0.5 * math.log(2)) - 4.5
    assert pair["difference"] == pytest.approx(raw - 0.5 * math.log(1.03))
    assert pair["baseline_read"] == "interpolated" and pair["baseline_tokens"] == 2e5


def test_budgets_that_differ_by_the_router_share_are_still_paired() -> None:
    """tokens: per_param gives the finer design 3 % more tokens: no pair was made at a 2 %
    token tolerance; at equal compute every run has its partner."""
    fgs = [point("fine-grained", 1.0e5, d * 1.03, 4.5, g=4) for d in (1e5, 2e5, 4e5)]
    out = matched({"dense": dense_series(), "fine-grained": fgs})
    d = out["fine-grained_vs_dense"]["designs"][0]
    assert d["n"] == 3 and d["baseline_read"] == {"extrapolated": 1, "interpolated": 2}
    want = [5.0 - 0.5 * math.log(1.03 * t / 1e5) - 4.5 for t in (1e5, 2e5, 4e5)]
    assert [p["difference"] for p in d["pairs"]] == pytest.approx(want)


def test_a_partner_of_one_budget_serves_only_at_equal_compute() -> None:
    one = dense_series()[1:2]
    same = point("moe", 1e5, 2e5, 4.9, run="same")
    more = point("moe", 1.03e5, 2e5, 4.9, run="more")
    out = matched({"dense": one, "moe": [same, more]})
    (d,) = out["moe_vs_dense"]["designs"]
    assert [p["other"] for p in d["pairs"]] == ["same"] and d["baseline_read"] == {"measured": 1}
    assert "skipped" in matched({"dense": one, "moe": [more]})["moe_vs_dense"]


def test_pairs_from_one_trunk_widen_the_interval() -> None:
    """Branches of one trunk are scored on the same windows: their errors do not average out."""
    dense = dense_series()
    fgs = [point("fine-grained", 1e5, t, 4.5, g=4) for t in (1e5, 2e5, 4e5)]
    apart = [point("fine-grained", 1e5, t, 4.5, g=4, group=f"fg{i}")
             for i, t in enumerate((1e5, 2e5, 4e5))]  # fmt: skip
    dense_apart = [point("dense", q.n_active, q.tokens, q.loss, group=f"d{i}")
                   for i, q in enumerate(dense)]  # fmt: skip

    def width(ds: list[Point], fs: list[Point]) -> float:
        m = matched({"dense": ds, "fine-grained": fs})["fine-grained_vs_dense"]["designs"][0]
        return m["mean_difference"][2] - m["mean_difference"][1]

    shared, independent = width(dense, fgs), width(dense_apart, apart)
    assert shared == pytest.approx(independent * math.sqrt(3))
