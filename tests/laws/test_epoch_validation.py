"""The fitter reproduces the analysis of Besiroglu et al. (2024) on Epoch AI's digitised Chinchilla
points (the numbers of docs/science.md); skips when the points are absent (see conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from moescale.laws import fit_law

HUBER_REF = {"A": 477.8, "B": 2143.0, "E0": 1.8172, "alpha": 0.3473, "beta": 0.3672}
SQUARED_REF = {"E0": 1.9051, "A": 511.1, "B": 14134.0, "alpha": 0.3511, "beta": 0.4587}
HOFFMANN = {"E0": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def check(params: dict[str, float], ref: dict[str, float]) -> None:
    for q in ("E0", "alpha", "beta"):
        assert abs(params[q] - ref[q]) < 0.002, (q, params[q], ref[q])
    for q in ("A", "B"):
        assert abs(params[q] / ref[q] - 1) < 0.05, (q, params[q], ref[q])


def test_drop_outliers_leaves_240(epoch_points: dict[str, np.ndarray]) -> None:
    x = {"N": epoch_points["N"], "D": epoch_points["D"]}
    res = fit_law(
        "chinchilla",
        x,
        epoch_points["L"],
        drop_outliers=5,
        bootstrap_draws=0,
        holdout_frac=0,
        loss="huber",
    )
    assert res.n_points == 240 and len(res.dropped) == 5
    check(res.params, HUBER_REF)
    assert res.objective == pytest.approx(1.0183e-3, rel=1e-3)


def test_epoch_grid_fit(epoch_240: dict[str, np.ndarray]) -> None:
    """Epoch's LSE/Huber fit (best 60 of its 4,500 grid starts, to keep the suite fast)."""
    x = {"N": epoch_240["N"], "D": epoch_240["D"]}
    res = fit_law(
        "chinchilla",
        x,
        epoch_240["L"],
        method="epoch",
        n_starts=60,
        bootstrap_draws=0,
        holdout_frac=0,
    )
    assert res.loss == "huber"
    check(res.params, HUBER_REF)
    assert res.objective == pytest.approx(1.0183e-3, rel=1e-3)
    vp = fit_law("chinchilla", x, epoch_240["L"], loss="huber", bootstrap_draws=0, holdout_frac=0)
    assert vp.objective <= res.objective * (1 + 1e-9)


def test_squared_error_below_1e21(epoch_240: dict[str, np.ndarray]) -> None:
    m = epoch_240["C"] < 1e21
    assert m.sum() == 217
    x = {"N": epoch_240["N"][m], "D": epoch_240["D"][m]}
    res = fit_law("chinchilla", x, epoch_240["L"][m], bootstrap_draws=0, holdout_frac=0)
    check(res.params, SQUARED_REF)
    assert res.objective == pytest.approx(0.062414, rel=1e-4)


def test_heldout_largest_compute(epoch_240: dict[str, np.ndarray]) -> None:
    """Huber fit on C < 1e21 predicts the 23 points with C ≥ 1e21 to MAE ≈ 0.024."""
    m = epoch_240["C"] < 1e21
    x = {"N": epoch_240["N"][m], "D": epoch_240["D"][m]}
    res = fit_law(
        "chinchilla", x, epoch_240["L"][m], loss="huber", bootstrap_draws=0, holdout_frac=0
    )
    pred = res.predict({"N": epoch_240["N"][~m], "D": epoch_240["D"][~m]})
    assert (~m).sum() == 23
    assert np.mean(np.abs(pred - epoch_240["L"][~m])) == pytest.approx(0.024, abs=0.002)


def test_hoffmann_values_not_recovered(epoch_240: dict[str, np.ndarray]) -> None:
    x = {"N": epoch_240["N"], "D": epoch_240["D"]}
    res = fit_law("chinchilla", x, epoch_240["L"], loss="huber", bootstrap_draws=0, holdout_frac=0)
    assert abs(res.params["beta"] - HOFFMANN["beta"]) > 0.05
    assert abs(res.params["E0"] - HOFFMANN["E0"]) > 0.05


def test_squared_on_all_245_collapses(epoch_points: dict[str, np.ndarray]) -> None:
    x = {"N": epoch_points["N"], "D": epoch_points["D"]}
    res = fit_law("chinchilla", x, epoch_points["L"], bootstrap_draws=0, holdout_frac=0)
    assert res.params["beta"] > 0.6


def test_bootstrap_intervals_match_epoch(epoch_240: dict[str, np.ndarray]) -> None:
    """200 draws (Epoch used more): intervals near α 0.317–0.373, β 0.331–0.415."""
    x = {"N": epoch_240["N"], "D": epoch_240["D"]}
    res = fit_law(
        "chinchilla", x, epoch_240["L"], loss="huber", bootstrap_draws=200, holdout_frac=0, seed=1
    )
    lo, hi = res.intervals["alpha"]
    assert abs(lo - 0.317) < 0.01 and abs(hi - 0.373) < 0.01
    lo, hi = res.intervals["beta"]
    assert abs(lo - 0.331) < 0.015 and abs(hi - 0.415) < 0.015
    share = [p["beta"] / (p["alpha"] + p["beta"]) for p in res.bootstrap_params]
    assert np.mean(share) == pytest.approx(0.513, abs=0.01)


def test_huber_fit_has_no_warnings(epoch_240: dict[str, np.ndarray]) -> None:
    """A well-posed fit raises none of the fit-quality warnings, and records its compute."""
    x = {"N": epoch_240["N"], "D": epoch_240["D"]}
    res = fit_law(
        "chinchilla", x, epoch_240["L"], loss="huber", bootstrap_draws=20, holdout_frac=0.1
    )
    assert res.warnings == [] and res.unidentified == []
    assert res.compute_range == (epoch_240["C"].min(), pytest.approx(epoch_240["C"].max()))


HOFFMANN_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)


def test_isoflop_profiles_on_hoffmanns_budgets(epoch_points: dict[str, np.ndarray]) -> None:
    """Hoffmann et al.'s nine IsoFLOP budgets (their Figure 3), runs within 20 % of one: N_opt
    and D_opt grow about as C^0.5, as their approach 2 found (a = 0.49, b = 0.51)."""
    from moescale.laws import fit_isoflop

    p = epoch_points
    res = fit_isoflop(p["N"], p["D"], p["C"], p["L"], budgets=HOFFMANN_BUDGETS, tol=0.2, draws=50)
    assert len(res.budgets) == 9 and res.n_points == 165
    assert res.params["a"] == pytest.approx(0.507, abs=0.005)
    assert res.params["b"] == pytest.approx(0.498, abs=0.005)
    lo, hi = res.intervals["a"]
    assert lo < 0.49 < hi
    assert {w["code"] for w in res.warnings} == {"runs_left_out"}
