"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) from two batch
sizes (docs/science.md).

With gradient accumulation both batch sizes come for free: the first micro-batch's gradient is
an estimate at b_small (its tokens) and the accumulated step gradient one at b_big (the step's
tokens). For an unbiased gradient estimate g_b over b samples, E|g_b|^2 = |G|^2 + tr(Sigma)/b,
so two batch sizes give two equations in |G|^2 and tr(Sigma):

    |G|^2     ~ (b_big |g_big|^2 - b_small |g_small|^2) / (b_big - b_small)
    tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1/b_small - 1/b_big)

Each per-step estimate is very noisy (and often negative), and the ratio of two noisy numbers is
biased, so we keep running sums of |g_small|^2 and |g_big|^2 over steps and take the ratio of
the averaged estimates. Batch sizes are in tokens, so B_simple is in tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class NoiseScaleEstimator:
    b_small: float  # tokens behind the small-batch gradient
    b_big: float  # tokens behind the big-batch gradient
    sum_small_sq: float = 0.0  # running sum of |g_small|^2
    sum_big_sq: float = 0.0  # running sum of |g_big|^2
    count: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.b_small < self.b_big:
            raise ValueError(f"need 0 < b_small < b_big, got {self.b_small}, {self.b_big}")

    def update(self, small_sq: float, big_sq: float) -> None:
        if math.isfinite(small_sq) and math.isfinite(big_sq):
            self.sum_small_sq += small_sq
            self.sum_big_sq += big_sq
            self.count += 1

    def grad_sq(self) -> float:
        """|G|^2: squared norm of the true gradient, from the averaged estimates."""
        s, b = self.sum_small_sq / self.count, self.sum_big_sq / self.count
        return (self.b_big * b - self.b_small * s) / (self.b_big - self.b_small)

    def trace(self) -> float:
        """tr(Sigma): total per-token gradient variance, from the averaged estimates."""
        s, b = self.sum_small_sq / self.count, self.sum_big_sq / self.count
        return (s - b) / (1.0 / self.b_small - 1.0 / self.b_big)

    def value(self) -> float | None:
        """B_simple in tokens; None until there is data, or while |G|^2 is not yet positive."""
        if self.count == 0:
            return None
        g2 = self.grad_sq()
        if g2 <= 0:
            return None
        return self.trace() / g2

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key in ("sum_small_sq", "sum_big_sq", "count"):
            setattr(self, key, state[key])
