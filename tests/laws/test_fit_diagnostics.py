"""Fits that say when they cannot be trusted: warnings, unidentified parameters (never a
zero-width interval), bootstrap draws that fail or degenerate (counted, never fatal), the
compute range, hold-out by whole compute levels, and progress lines."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws import fit as fit_module
from moescale.laws import fit_law


def grid(n_sizes: int = 5, n_tokens: int = 6) -> dict[str, np.ndarray]:
    i, j = np.meshgrid(np.arange(n_sizes), np.arange(n_tokens), indexing="ij")
    return {
        "N": np.logspace(6, 8, n_sizes)[i.ravel()],
        "D": np.logspace(8, 10, n_tokens)[j.ravel()],
    }


def noisy(y: np.ndarray, sigma: float = 0.005, seed: int = 0) -> np.ndarray:
    return y * np.exp(np.random.default_rng(seed).normal(0.0, sigma, len(y)))


def codes(res) -> set[str]:
    return {w["code"] for w in res.warnings}


def assert_no_zero_width(res) -> None:
    for q, (lo, hi) in res.intervals.items():
        assert hi > lo or (hi == lo and q not in res.unidentified and res.params[q] != 0), q


def test_clean_fit_has_no_warnings() -> None:
    x = grid()
    y = noisy(1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5)
    res = fit_law("chinchilla", x, y, bootstrap_draws=20, workers=1)
    assert res.warnings == [] and res.unidentified == []
    assert set(res.intervals) == set(res.params)
    assert res.bootstrap_requested == 20 and res.bootstrap_failed == res.bootstrap_degenerate == 0
    c = 6 * x["N"] * x["D"]
    assert res.compute_range == (pytest.approx(c.min()), pytest.approx(c.max()))
    assert res.to_json()["compute_range"] == list(res.compute_range)


def test_no_size_effect_zero_coefficient_is_reported_not_fatal() -> None:
    """The loss grows a little with N: NNLS sets A = 0, and alpha is then arbitrary; draws
    with A = 0 are degenerate. They are counted, kept out of bootstrap_params, and alpha gets
    no interval."""
    x = grid()
    y = noisy((2.0 + 20000 / x["D"] ** 0.5) * (1 + 0.003 * np.log(x["N"] / 1e6)), 0.002)
    res = fit_law("chinchilla", x, y, bootstrap_draws=30, workers=1)
    assert res.params["A"] == 0.0
    assert "coefficient_zero" in codes(res)
    assert "alpha" in res.unidentified and "alpha" not in res.intervals
    assert res.bootstrap_degenerate > 0
    assert res.bootstrap_failed + res.bootstrap_degenerate + len(res.bootstrap_params) == 30
    assert all(p["A"] > 0 and p["alpha"] > 0 for p in res.bootstrap_params)
    assert_no_zero_width(res)


def test_single_size_is_unidentified() -> None:
    d = np.logspace(8, 10, 20)
    n = np.full(20, 1e8)
    y = noisy(1.0 + 2000 / n**0.5 + 20000 / d**0.5)
    res = fit_law("chinchilla", {"N": n, "D": d}, y, bootstrap_draws=20, workers=1)
    assert "single_value" in codes(res)
    assert {"A", "alpha", "E0"} <= set(res.unidentified)
    assert not {"A", "alpha", "E0"} & set(res.intervals)
    assert "same N" in " ".join(w["message"] for w in res.warnings)
    assert_no_zero_width(res)


def test_tokens_a_fixed_multiple_of_parameters_is_collinear() -> None:
    n = np.logspace(6, 9, 20)
    y = noisy(1.0 + 2000 / n**0.5 + 20000 / (20 * n) ** 0.5)
    res = fit_law("chinchilla", {"N": n, "D": 20 * n}, y, bootstrap_draws=10, workers=1)
    assert "collinear" in codes(res)
    assert {"A", "B", "alpha", "beta"} <= set(res.unidentified)
    assert "D/N = 20" in " ".join(w["message"] for w in res.warnings)


def test_exponent_at_search_bound() -> None:
    x = grid()
    y = noisy(2.0 + (3e6 / x["N"]) ** 5 + 20000 / x["D"] ** 0.5, 0.002)
    res = fit_law("chinchilla", x, y, bootstrap_draws=10, workers=1)
    assert res.params["alpha"] == pytest.approx(3.0, abs=1e-3)
    assert "exponent_at_bound" in codes(res)
    assert "alpha" in res.unidentified and "alpha" not in res.intervals


def test_few_points_per_parameter() -> None:
    x = grid(3, 4)
    y = noisy(1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5)
    res = fit_law("chinchilla", x, y, bootstrap_draws=0, holdout_frac=0)
    assert "few_points" in codes(res)
    assert "12 points for 5 parameters" in res.warnings[0]["message"]


def test_failed_draws_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A draw whose refit raises (any exception) is counted as failed; the fit goes on."""
    real = fit_module._Fitter.vector
    calls = {"n": 0}

    def flaky(self, x, y, w, start=None, n_starts=None):
        if start is not None:
            calls["n"] += 1
            if calls["n"] % 3 == 0:
                raise RuntimeError("solver blew up")
        return real(self, x, y, w, start, n_starts)

    monkeypatch.setattr(fit_module._Fitter, "vector", flaky)
    x = grid()
    y = noisy(1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5)
    res = fit_law("chinchilla", x, y, bootstrap_draws=12, workers=1)
    assert res.bootstrap_failed == 4 and len(res.bootstrap_params) == 8
    assert "bootstrap_draws" in codes(res)


def test_holdout_keeps_compute_levels_whole() -> None:
    """Five runs share each budget: a 10 % hold-out of 20 points takes the whole top budget
    (5 points), not the 2 that come last in file order."""
    c = np.repeat([1e18, 1e19, 1e20, 1e21], 5)
    n = np.tile(np.logspace(-1, 1, 5), 4) * np.sqrt(c / 120)
    d = c / (6 * n)
    y = noisy(1.0 + 2000 / n**0.5 + 20000 / d**0.5)
    res = fit_law("chinchilla", {"N": n, "D": d}, y, bootstrap_draws=0, holdout_frac=0.1)
    assert res.holdout["n"] == 5


def test_progress_lines(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr(fit_module, "PROGRESS_EVERY", 0.0)
    x = grid()
    y = noisy(1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5)
    with caplog.at_level(logging.INFO, logger="moescale"):
        fit_law("chinchilla", x, y, bootstrap_draws=8, workers=1)
    lines = [r.getMessage() for r in caplog.records]
    assert any("draws, about" in m for m in lines), lines
    assert any("usable of 8" in m for m in lines)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"seed": -1}, "--seed must be >= 0, got -1"),
        ({"workers": 0}, "--workers must be >= 1, got 0"),
        ({"delta": 0.0}, "--huber-delta must be a positive number, got 0.0"),
        ({"bootstrap_draws": -3}, "--bootstrap must be >= 0, got -3"),
        ({"method": "lbfgs"}, "unknown --method 'lbfgs'"),
    ],
)
def test_bad_options_are_one_line_errors(option: dict, message: str) -> None:
    x = grid()
    y = 1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5
    with pytest.raises(UserError) as exc:
        fit_law("chinchilla", x, y, **option)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_too_few_points_message_is_plural_right() -> None:
    with pytest.raises(UserError, match="5 parameters but only 1 point remain"):
        fit_law("chinchilla", {"N": [1e6, 2e6], "D": [1e9, 2e9]}, [3.0, 2.9], drop_outliers=1)


def test_too_few_resampling_units_give_no_interval() -> None:
    """Draws resample whole groups (a study's trunks): three give at most 10 distinct
    resamples, whose percentiles are no interval. None is given, and the fit says why; five
    groups are enough to try."""
    x = grid()
    y = noisy(1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5)
    sizes = np.unique(x["N"], return_inverse=True)[1]  # one trunk per model size
    three = fit_law("chinchilla", x, y, bootstrap_draws=20, workers=1, groups=sizes % 3)
    assert three.intervals == {} and three.bootstrap_params == []
    (w,) = [w for w in three.warnings if w["code"] == "few_bootstrap_units"]
    assert "only 3: at most 10 distinct resamples" in w["message"]
    five = fit_law("chinchilla", x, y, bootstrap_draws=20, workers=1, groups=sizes)
    assert "few_bootstrap_units" not in codes(five) and set(five.intervals) == set(five.params)


def test_draws_that_never_move_a_parameter_give_it_no_interval() -> None:
    """A parameter every draw leaves at one value (its start, not a bound) is not known
    exactly: the resamples do not inform it. No zero-width interval."""
    from moescale.laws.forms import get_form
    from moescale.laws.problem import Problem
    from moescale.laws.result import diagnose

    x = grid()
    y = noisy(1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5)
    prob = Problem(get_form("chinchilla"), x, y, np.ones_like(y), "squared", None)
    fit = fit_law("chinchilla", x, y, bootstrap_draws=0, workers=1)
    order = prob.form.linear + prob.form.nonlinear
    v = np.array([fit.params[q] for q in order])
    rng = np.random.default_rng(0)
    moved = [q for q in fit.params if q != "beta"]
    samples = [{**fit.params, **{q: fit.params[q] * (1 + 0.01 * rng.normal()) for q in moved}}
               for _ in range(20)]  # fmt: skip
    warnings, unidentified, intervals = diagnose(prob, v, samples, requested=20)
    assert "beta" not in intervals and "beta" in unidentified
    assert any("every bootstrap draw leaves beta at" in w["message"] for w in warnings)
    at_bound = [{**s, "alpha": 3.0} for s in samples[:10]] + samples[10:]
    warnings, _, intervals = diagnose(prob, v, at_bound, requested=20)
    (w,) = [w for w in warnings if w["code"] == "draws_at_bound"]
    assert w["message"].startswith("10 of 20 bootstrap draws put alpha at a bound")
    assert intervals["alpha"][1] == pytest.approx(3.0)
