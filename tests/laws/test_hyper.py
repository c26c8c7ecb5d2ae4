"""Hyperparameter laws recover known power laws; near-optimal filter; heatmap grids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moescale.laws.heatmap import batch_heatmap, lr_heatmap
from moescale.laws.hyper import (
    fit_hyper_laws,
    fit_power_law,
    hyper_laws_from_table,
    near_optimal_mask,
)


def sweep(seed: int = 0) -> dict[str, np.ndarray]:
    """A sweep whose loss is minimised at B = 0.292·C^0.327 and η = 0.3118·C^−0.125."""
    rng = np.random.default_rng(seed)
    rows = []
    for arch, shift in (("dense", 1.0), ("moe", 0.8)):
        for n in np.logspace(6, 8, 4):
            for d in np.logspace(8, 10, 4):
                c = 6 * n * d
                b_opt = 0.292 * c**0.327 * shift
                lr_opt = 0.3118 * c**-0.125 / shift
                base = 2.0 + 300 / n**0.3 + 800 / d**0.3
                for fb in 2.0 ** np.arange(-3, 4):
                    for fl in 2.0 ** np.arange(-3, 4):
                        loss = base * (1 + 0.01 * np.log(fb) ** 2 + 0.01 * np.log(fl) ** 2)
                        rows.append((arch, n, d, b_opt * fb, lr_opt * fl, loss))
    cols = list(zip(*rows, strict=True))
    out = {k: np.array(v) for k, v in zip(("arch", "n", "d", "b", "lr", "loss"), cols, strict=True)}
    out["loss"] = out["loss"] * np.exp(rng.normal(0, 1e-4, len(out["loss"])))
    return out


def test_power_law_recovery() -> None:
    rng = np.random.default_rng(0)
    x = 10 ** rng.uniform(15, 20, 50)
    y = 0.292 * x**0.327 * np.exp(rng.normal(0, 0.05, 50))
    pl = fit_power_law(x, y, bootstrap=500)
    assert pl.exponent == pytest.approx(0.327, abs=0.01)
    assert pl.exponent_interval[0] <= 0.327 <= pl.exponent_interval[1]
    assert pl(1e18) == pytest.approx(0.292 * 1e18**0.327, rel=0.1)


def test_near_optimal_filter_keeps_best_per_cell() -> None:
    n = np.array([1, 1, 1, 2, 2])
    d = np.array([1, 1, 1, 1, 1])
    loss = np.array([2.0, 2.004, 2.01, 3.0, 3.1])
    assert near_optimal_mask(n, d, loss).tolist() == [True, True, False, True, False]


def test_hyper_laws_per_architecture() -> None:
    s = sweep()
    laws = fit_hyper_laws(s["arch"], s["n"], s["d"], s["b"], s["lr"], s["loss"], bootstrap=200)
    assert set(laws) == {"dense", "moe"}
    dense = laws["dense"]
    assert dense.batch_vs_compute.exponent == pytest.approx(0.327, abs=0.02)
    assert dense.lr_vs_compute.exponent == pytest.approx(-0.125, abs=0.02)
    assert dense.batch_vs_compute.coef == pytest.approx(0.292, rel=0.3)
    assert dense.n_kept < dense.n_runs
    # at equal compute the MoE sweep was built with a smaller batch and a larger LR
    c = 1e17
    assert laws["moe"].batch_vs_compute(c) < dense.batch_vs_compute(c)
    assert laws["moe"].lr_vs_compute(c) > dense.lr_vs_compute(c)
    assert dense.alpha_B > 0  # bigger batches at lower loss


def test_heatmaps() -> None:
    s = sweep()
    sel = (s["arch"] == "dense") & (s["n"] == s["n"].min())
    hb = batch_heatmap(s["b"][sel], s["d"][sel], s["loss"][sel])
    assert hb.grid.shape == (len(hb.tokens), len(hb.values))
    assert np.all(np.isfinite(hb.best))
    hl = lr_heatmap(s["lr"][sel], s["d"][sel], s["loss"][sel])
    assert hl.name == "lr" and hl.grid.shape[0] == 4


def test_hyper_laws_from_table() -> None:
    s = sweep()
    table = {
        "arch": s["arch"],
        "params_active": s["n"],
        "tokens": s["d"],
        "batch_size": s["b"],
        "lr": s["lr"],
        "val_loss": s["loss"],
    }
    laws = hyper_laws_from_table(table, bootstrap=0)
    assert laws["dense"].batch_vs_compute.exponent == pytest.approx(0.327, abs=0.02)


CURVE_COLS = ("run", "arch", "experts", "granularity", "top_k", "params_active", "batch_size",
              "lr", "tokens", "loss", "schedule")  # fmt: skip


def curves(lam_b: float = 2e4, lam_lr: float = 0.05, arch: str = "dense", experts: int = 1,
           schedule: str = "constant") -> list[tuple]:  # fmt: skip
    """Constant-LR training curves whose tokens to reach loss L are smallest at
    B_opt = lam_b·L^-3 and η_opt = lam_lr·L^1.5 (one row per logged step)."""
    rows = []
    levels = np.linspace(4.5, 2.2, 400)
    t0 = ((levels - 1.5) / 20.0) ** (-1 / 0.3) * 1e3
    b_opt, lr_opt = lam_b * levels**-3.0, lam_lr * levels**1.5
    for b in 2.0 ** np.arange(4, 12):
        for lr in 10.0 ** np.arange(-2.0, 0.6, 0.25):
            t = t0 * (1 + 0.3 * np.log(b / b_opt) ** 2 + 0.3 * np.log(lr / lr_opt) ** 2)
            t = np.maximum.accumulate(t)
            grid = np.geomspace(t[0] * 1.01, t[-1], 120)
            loss = np.interp(np.log(grid), np.log(t), levels)
            name = f"{arch}-{experts}-b{b:g}-lr{lr:g}"
            rows += [(name, arch, experts, 1, 2, 1e7, b, lr, x, y, schedule)
                     for x, y in zip(grid, loss, strict=True)]  # fmt: skip
    return rows


def curve_table(rows: list[tuple]) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in zip(CURVE_COLS, zip(*rows, strict=True), strict=True)}


def test_curves_recover_wang_laws_per_architecture() -> None:
    from moescale.laws.hyper import curve_laws

    rows = curves() + curves(1e4, 0.08, "moe", 8)
    laws = curve_laws(curve_table(rows), bootstrap=100)
    assert set(laws) == {"dense", "moe E8 k2 G1"}
    dense, moe = laws["dense"], laws["moe E8 k2 G1"]
    assert dense.batch_vs_loss.exponent == pytest.approx(-3.0, abs=0.15)
    assert dense.alpha_B == pytest.approx(3.0, abs=0.15)
    assert dense.lr_vs_loss.exponent == pytest.approx(1.5, abs=0.1)
    assert dense.lr_vs_loss.coef == pytest.approx(0.05, rel=0.1)
    assert any(p["edge"] for p in dense.points)  # optima outside the sweep are not fitted
    # at equal loss the MoE sweep was built with a smaller batch and a larger LR
    assert moe.batch_vs_loss(3.0) < dense.batch_vs_loss(3.0)
    assert moe.lr_vs_loss(3.0) > dense.lr_vs_loss(3.0)


def test_cosine_curves_are_refused() -> None:
    from moescale.errors import UserError
    from moescale.laws.hyper import curve_laws

    with pytest.raises(UserError, match="cosine schedule.*has not decayed"):
        curve_laws(curve_table(curves()[:500] + curves(schedule="cosine")[:500]))


def test_cells_group_nominal_settings_and_architectures() -> None:
    """Whole optimizer steps make recorded tokens differ a little per batch size: that must not
    split a cell; two MoE designs with the same N must not share one."""
    n = np.array([1e6] * 4)
    d = np.array([1e9, 1.004e9, 0.998e9, 1.01e9])  # one nominal D
    loss = np.array([3.0, 3.05, 3.001, 3.2])
    assert near_optimal_mask(n, d, loss).tolist() == [True, False, True, False]
    arch = np.array(["moe E8 k2 G1", "moe E8 k2 G1", "moe E16 k2 G4", "moe E16 k2 G4"])
    loss = np.array([3.0, 3.001, 3.2, 3.25])
    assert near_optimal_mask(n, d, loss, arch=arch).tolist() == [True, True, True, False]


def test_band_in_n_and_d_with_holdout() -> None:
    """StepLaw's forms: η = c·N^a·D^b and B = c·D^b, checked on held-out largest cells."""
    rows = []
    for n in np.logspace(6, 8, 4):
        for d in np.logspace(8, 10, 4):
            b_opt, lr_opt = 0.58 * d**0.571, 1.79 * n**-0.713 * d**0.307
            for fb in 2.0 ** np.arange(-2, 3):
                for fl in 2.0 ** np.arange(-2, 3):
                    loss = 3.0 * (1 + 0.01 * np.log(fb) ** 2 + 0.01 * np.log(fl) ** 2)
                    steps_tokens = d * (1 + 0.003 * np.log2(fb))  # whole steps per batch size
                    rows.append((n, steps_tokens, b_opt * fb, lr_opt * fl, loss))
    n, d, b, lr, loss = (np.array(v) for v in zip(*rows, strict=True))
    laws = fit_hyper_laws(["dense"] * len(n), n, d, b, lr, loss, bootstrap=50)["dense"]
    assert laws.cells == 16 and laws.n_kept == 16
    assert laws.lr_vs_nd.exponents == pytest.approx((-0.713, 0.307), abs=0.01)
    assert laws.batch_vs_d.exponent == pytest.approx(0.571, abs=0.01)
    assert laws.holdout["lr_vs_nd"]["mean_abs_log_error"] < 0.05
    assert laws.holdout["lr_vs_nd"]["cells"] == 4


def test_hyper_json_round_trip() -> None:
    from moescale.laws.hyper import HyperLaws, curve_laws
    from moescale.laws.plan import HyperResult

    laws = curve_laws(curve_table(curves()), bootstrap=20)
    res = HyperResult("curves", laws, "sequences", 128.0)
    back = HyperResult.from_json(json.loads(json.dumps(res.to_json())), "x")
    assert isinstance(back.laws["dense"], HyperLaws)
    got = back.predict("dense", {"L": 3.0})
    assert got["batch"]["batch_vs_loss"] == pytest.approx(float(laws["dense"].batch_vs_loss(3.0)))
    assert got["batch_unit"] == "sequences"
