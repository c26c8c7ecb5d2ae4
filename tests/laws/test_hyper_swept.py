"""The band method reads an optimum only where the hyperparameter was swept: a study's ladder
runs share one batch size and LR, and each is the best of its own cell by default. Degenerate
inputs are skipped with a reason that counts what matters (distinct values), and no fitted law
reports an interval that misses its own estimate."""

from __future__ import annotations

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws.hyper import fit_hyper_laws, fit_loglinear

B0, LR0 = 32.0, 1e-3


def ladder(swept_at: tuple[tuple[float, float], ...]) -> tuple[np.ndarray, ...]:
    """A ladder of 4 sizes x 4 token budgets at B0 and LR0, plus a 3 x 3 grid of batch and LR
    in the cells `swept_at`, whose optima follow B = 0.3·C^0.3 and η = 300·C^-0.4."""
    rows = []
    for n in (1e6, 2e6, 4e6, 8e6):
        for d in (1e8, 2e8, 4e8, 8e8):
            base = 2.0 + 300 / n**0.3 + 800 / d**0.3
            b_opt, lr_opt = 0.3 * (6 * n * d) ** 0.3, 300 * (6 * n * d) ** -0.4
            values = [(B0, LR0)]
            if (n, d) in swept_at:
                values += [(b_opt * fb, lr_opt * fl) for fb in (0.5, 1, 2) for fl in (0.5, 1, 2)]
            for b, lr in values:
                pen = 0.01 * (np.log(b / b_opt) ** 2 + np.log(lr / lr_opt) ** 2)
                rows.append((n, d, b, lr, base * (1 + pen)))
    return tuple(np.array(v) for v in zip(*rows, strict=True))


def fit(swept_at: tuple[tuple[float, float], ...], bootstrap: int = 200):  # noqa: ANN201
    n, d, b, lr, loss = ladder(swept_at)
    return fit_hyper_laws(["dense"] * len(n), n, d, b, lr, loss, bootstrap=bootstrap)["dense"]


def test_unswept_cells_are_not_optima() -> None:
    """One swept cell among 16: nothing to fit, where single-run cells used to give
    lr = 0.001·C^(−2e−16) with a held-out error of 1e−15."""
    h = fit(((1e6, 1e8),))
    assert h.laws() == {}
    assert set(h.skipped) == {"batch_vs_compute", "lr_vs_compute", "batch_vs_loss",
                              "lr_vs_loss", "lr_vs_nd", "batch_vs_d"}  # fmt: skip
    assert "batch was swept (two or more values) in 1 of 16 cells" in h.skipped["batch_vs_d"]
    assert "lr was swept (two or more values) in 1 of 16 cells" in h.skipped["lr_vs_compute"]
    assert h.n_kept == 0 and h.holdout == {}


def test_swept_cells_give_the_law_and_ladder_runs_do_not_bias_it() -> None:
    cells = ((1e6, 1e8), (2e6, 4e8), (4e6, 2e8), (8e6, 8e8))
    h = fit(cells)
    assert h.batch_vs_compute.exponent == pytest.approx(0.3, abs=0.03)
    assert h.lr_vs_compute.exponent == pytest.approx(-0.4, abs=0.03)
    assert h.n_kept == 4  # the optimum of each swept cell; no ladder run
    for law in h.laws().values():
        est = {"coef": law.coef, **dict(zip(law.inputs, law.exponents, strict=True))}
        for k, (lo, hi) in law.intervals.items():
            assert lo <= est[k] <= hi, (law.output, law.inputs, k)


def test_distinct_values_are_counted_not_points() -> None:
    """Three points but one value of D: the message said 'needs at least 3 ... it has 3'."""
    xs = {"N": np.array([1e6, 2e6, 4e6]), "D": np.array([1e9, 1e9, 1e9])}
    with pytest.raises(UserError, match=r"it has 3, distinct values: N 3, D 1"):
        fit_loglinear(xs, np.array([1e-3, 2e-3, 3e-3]))


def test_a_constant_output_is_refused_not_fitted_to_rounding_noise() -> None:
    """Before: exponent ~1e-16 with an interval [6.7e-15, 1.2e-13] that excludes it."""
    c = np.array([1e17, 3e17, 1e18, 3e18, 1e19])
    with pytest.raises(UserError, match="lr is 0.001 at all 5 points"):
        fit_loglinear({"C": c}, np.full(5, 1e-3), output="lr")


def test_intervals_contain_the_estimate_at_large_inputs() -> None:
    """log C near 40 is nearly collinear with the intercept; centring the logs keeps the draws'
    rounding far below a tiny real slope."""
    c = np.geomspace(1e17, 1e21, 12)
    y = 1e-3 * c**1e-6 * np.exp(np.random.default_rng(0).normal(0, 1e-9, 12))
    law = fit_loglinear({"C": c}, y, bootstrap=500)
    lo, hi = law.intervals["C"]
    assert lo <= law.exponent <= hi and hi - lo < 1e-8
    assert law.intervals["coef"][0] <= law.coef <= law.intervals["coef"][1]


@pytest.mark.parametrize("frac", [-1.0, 1.0, 1.5, float("nan")])
def test_holdout_frac_out_of_range_is_refused(frac: float) -> None:
    """A negative fraction held out no cell and crashed (zero-size array to reduction)."""
    n, d, b, lr, loss = ladder(((1e6, 1e8), (8e6, 8e8)))
    with pytest.raises(UserError, match=r"holdout_frac \(--holdout-frac\) must be in \[0, 1\)"):
        fit_hyper_laws(["dense"] * len(n), n, d, b, lr, loss, bootstrap=0, holdout_frac=frac)
