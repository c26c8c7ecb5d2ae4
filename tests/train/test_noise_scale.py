"""The two-batch-size noise-scale estimator recovers |G|^2 and tr(Sigma) of known gradients."""

from __future__ import annotations

import numpy as np
import pytest

from moescale.train.noise_scale import NoiseScaleEstimator


def test_recovers_known_noise_scale():
    rng = np.random.default_rng(0)
    dim = 50
    true_g = rng.normal(size=dim) * 0.3  # |G|^2 ~ 4.5
    sigma_diag = rng.uniform(0.5, 2.0, size=dim)  # per-sample covariance (diagonal)
    g2, tr = float(true_g @ true_g), float(sigma_diag.sum())
    b_small, b_big = 8, 64
    est = NoiseScaleEstimator(b_small, b_big, window=4000)
    for _ in range(4000):
        # mean of b per-sample gradients: covariance Sigma / b; the big batch contains the small
        samples = true_g + rng.normal(size=(b_big, dim)) * np.sqrt(sigma_diag)
        g_small = samples[:b_small].mean(0)
        g_big = samples.mean(0)
        est.update(float(g_small @ g_small), float(g_big @ g_big))
    assert est.grad_sq() == pytest.approx(g2, rel=0.05)
    assert est.trace() == pytest.approx(tr, rel=0.05)
    assert est.value() == pytest.approx(tr / g2, rel=0.08)


def test_exact_expectations_give_exact_answer():
    # E|g_b|^2 = |G|^2 + tr/b: plug the expectations in and the formulas are exact
    g2, tr = 2.0, 30.0
    est = NoiseScaleEstimator(4, 32)
    est.update(g2 + tr / 4, g2 + tr / 32)
    assert est.grad_sq() == pytest.approx(g2)
    assert est.trace() == pytest.approx(tr)
    assert est.value() == pytest.approx(15.0)


def test_no_value_before_data_and_state_roundtrip():
    est = NoiseScaleEstimator(4, 32)
    assert est.value() is None
    est.update(3.0, 2.0)
    est.update(float("nan"), 1.0)  # ignored
    other = NoiseScaleEstimator(4, 32)
    assert other.load_state_dict(est.state_dict())
    assert other.count == 1 and other.value() == est.value()
    on_two_ranks = NoiseScaleEstimator(16, 32)  # resumed with another small batch
    assert not on_two_ranks.load_state_dict(est.state_dict())
    assert on_two_ranks.count == 0
    with pytest.raises(ValueError):
        NoiseScaleEstimator(32, 4)


def test_window_forgets_early_training():
    """Early steps (large gradients) leave the estimate once they are out of the window."""
    est = NoiseScaleEstimator(4, 32, window=10)
    for _ in range(10):
        est.update(100.0 + 30.0 / 4, 100.0 + 30.0 / 32)  # |G|^2 = 100: B = 0.3
    for _ in range(10):
        est.update(2.0 + 30.0 / 4, 2.0 + 30.0 / 32)  # |G|^2 = 2: B = 15
    assert est.count == 10 and est.value() == pytest.approx(15.0)
