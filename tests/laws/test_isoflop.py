"""IsoFLOP profiles (Hoffmann et al. 2022, approach 2) on synthetic sweeps from a known law:
grouping, the exponents through the minima, warnings, the JSON and `allocate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws import IsoFLOPResult, fit_isoflop, read_any_fit, read_fit
from moescale.laws.allocate import Allocation
from moescale.laws.isoflop import group_budgets, isoflop_table
from moescale.laws.table import TableOptions

ALPHA, BETA = 0.34, 0.28  # the frontier exponent of N is BETA / (ALPHA + BETA)
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20)


def law(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return 1.69 + 406.4 / n**ALPHA + 410.7 / d**BETA


def n_opt(c: float) -> float:
    g = (ALPHA * 406.4 / (BETA * 410.7)) ** (1 / (ALPHA + BETA))
    return g * (c / 6) ** (BETA / (ALPHA + BETA))


def sweep(
    budgets=BUDGETS, sizes: int = 7, span: float = 8.0, jitter: float = 0.02, seed: int = 0
) -> dict[str, np.ndarray]:
    """Runs spread over `span` (a factor) around each budget's optimum, FLOPs off their nominal
    budget by up to `jitter`, 0.3 % loss noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for f in np.geomspace(1 / np.sqrt(span), np.sqrt(span), sizes):
            n = n_opt(c) * f
            actual = c * (1 + rng.uniform(-jitter, jitter))
            rows.append((n, actual / (6 * n), actual, c))
    n, d, c, nominal = (np.array(v) for v in zip(*rows, strict=True))
    return {"N": n, "D": d, "C": c, "budget": nominal,
            "L": law(n, d) * np.exp(rng.normal(0, 0.003, len(n)))}  # fmt: skip


def fit(s: dict[str, np.ndarray], **kw) -> IsoFLOPResult:
    return fit_isoflop(s["N"], s["D"], s["C"], s["L"], draws=kw.pop("draws", 100), **kw)


def test_recovers_the_frontier_exponents() -> None:
    res = fit(sweep())
    assert len(res.budgets) == 6 and "clustered" in res.grouping and res.left_out == 0
    assert res.params["a"] == pytest.approx(BETA / (ALPHA + BETA), abs=0.03)
    assert res.params["b"] == pytest.approx(ALPHA / (ALPHA + BETA), abs=0.03)
    for q, truth in (("a", BETA / (ALPHA + BETA)), ("b", ALPHA / (ALPHA + BETA))):
        lo, hi = res.intervals[q]
        assert lo < truth < hi and lo < res.params[q] < hi and hi - lo < 0.15
    for b in res.budgets:
        assert b.n_opt == pytest.approx(n_opt(b.compute), rel=0.15) and b.bracketed
        assert b.n_interval is not None and b.n_interval[0] < b.n_opt < b.n_interval[1]
    assert res.warnings == []


def test_allocate_gives_an_allocation_with_intervals() -> None:
    res = fit(sweep())
    a = res.allocate(1e21)
    assert isinstance(a, Allocation) and a.method == "isoflop" and a.budget == 1e21
    assert a.n_opt == pytest.approx(n_opt(1e21), rel=0.15)
    assert 6 * a.n_opt * a.d_opt == pytest.approx(1e21, rel=0.1)
    n_true = law(np.array([n_opt(1e21)]), np.array([1e21 / 6 / n_opt(1e21)]))[0]
    assert a.loss == pytest.approx(n_true, abs=0.02)
    for key in ("n_opt", "d_opt", "loss"):
        lo, hi = a.intervals[key]
        assert lo < getattr(a, key) < hi
    with pytest.raises(UserError, match="--budget"):
        res.allocate(-1.0)


def test_grouping_by_column_and_by_given_budgets() -> None:
    s = sweep(jitter=0.2)
    by_col = fit(s, nominal=s["budget"], draws=0)
    assert by_col.grouping == "by the nominal-budget column"
    assert [b.compute for b in by_col.budgets] == list(BUDGETS)
    given = fit(s, budgets=BUDGETS, tol=0.25, draws=0)
    assert [b.runs for b in given.budgets] == [7] * 6
    labels, values, how = group_budgets(s["C"], budgets=[1e18, 1e19], tol=0.25)
    assert (labels == -1).sum() == 4 * 7 and "within 25%" in how


def test_small_and_unbracketed_budgets_are_reported() -> None:
    s = sweep()
    keep = ~((s["budget"] == 3e20) & (s["N"] > n_opt(3e20) * 0.9))  # 3e20 keeps 3 small sizes
    keep &= ~((s["budget"] == 1e20) & (s["N"] > n_opt(1e20) * 1.5))  # 1e20 keeps 6 of 7
    few = {k: v[keep] for k, v in s.items()}
    few["N"][few["budget"] == 3e18] = few["N"][few["budget"] == 3e18][:2].repeat(4)[:7]
    res = fit(few, draws=20)
    codes = {w["code"] for w in res.warnings}
    assert "budget_refused" in codes  # 3e18 now has 2 sizes
    assert "unbracketed" in codes  # 3e20's best run is its largest
    assert [b.compute for b in res.budgets if not b.bracketed] == [pytest.approx(3e20, rel=0.03)]
    assert 3e18 not in [round(b.compute, -16) for b in res.budgets]


def test_too_few_budgets_is_an_error() -> None:
    s = sweep(budgets=(1e18, 1e19))
    with pytest.raises(UserError, match="at least 3 budgets"):
        fit(s)


def test_three_budgets_leave_the_loss_law_unidentified() -> None:
    res = fit(sweep(budgets=(1e18, 1e19, 1e20)))
    assert {"L_inf", "K", "gamma"} <= set(res.unidentified)
    assert not {"L_inf", "K", "gamma"} & set(res.intervals)
    assert "few_budgets" in {w["code"] for w in res.warnings}
    assert "loss" not in res.allocate(1e21).intervals


def test_json_round_trip_and_read_any_fit(tmp_path: Path) -> None:
    res = fit(sweep(), draws=20)
    data = res.to_json()
    assert data["method"] == "isoflop" and data["compute_range"] == list(res.compute_range)
    back = IsoFLOPResult.from_json(json.loads(json.dumps(data)), "iso.json")
    assert back == res and back.to_json() == data
    path = tmp_path / "iso.json"
    path.write_text(json.dumps(data))
    assert isinstance(read_any_fit(path, "--fit"), IsoFLOPResult)
    with pytest.raises(UserError, match="IsoFLOP profiles, not a fitted law"):
        read_fit(path)
    bad = dict(data, params={"a": 0.5})
    with pytest.raises(UserError, match="lacks n0"):
        IsoFLOPResult.from_json(bad, "iso.json")


def test_from_a_table_with_a_budget_column(tmp_path: Path) -> None:
    s = sweep()
    path = tmp_path / "iso.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["params_active", "tokens", "flops", "budget", "val_loss"])
        w.writerows(zip(s["N"], s["D"], s["C"], s["budget"], s["L"], strict=True))
    res = isoflop_table(path, options=TableOptions(columns={"budget": "budget"}), draws=20)
    assert res.grouping == "by the nominal-budget column" and res.columns["budget"] == "budget"
    assert res.sources == {"N": "table", "D": "table", "C": "table"}
    assert res.table == str(path) and res.n_points == len(s["N"])
