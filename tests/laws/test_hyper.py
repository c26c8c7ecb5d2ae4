"""Hyperparameter laws recover known power laws; near-optimal filter; heatmap grids."""

from __future__ import annotations

import numpy as np
import pytest

from moescale.laws.hyper import (
    batch_heatmap,
    fit_hyper_laws,
    fit_power_law,
    hyper_laws_from_table,
    lr_heatmap,
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
