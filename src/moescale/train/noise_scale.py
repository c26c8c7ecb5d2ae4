"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) from two batch
sizes, over a sliding window of recent steps (docs/science.md).

With gradient accumulation both batch sizes come for free: the first micro-batch's gradient is
an estimate at b_small (its tokens) and the accumulated step gradient one at b_big (the step's
tokens). For an unbiased gradient estimate g_b over b samples, E|g_b|^2 = |G|^2 + tr(Sigma)/b,
so two batch sizes give two equations in |G|^2 and tr(Sigma):

    |G|^2     ~ (b_big |g_big|^2 - b_small |g_small|^2) / (b_big - b_small)
    tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1/b_small - 1/b_big)

The gradients are the raw ones of the optimised loss (cross-entropy plus the MoE balancing and
z-losses), before clipping and before Adam's preconditioning. Each per-step estimate is very
noisy (and often negative), and the ratio of two noisy numbers is biased, so |g|^2 is averaged
over the last `window` steps before the ratio is taken. The noise scale changes as the loss
falls, so a window (not an average since step 1, which early training dominates) is what can be
compared between architectures at equal loss. Batch sizes are in tokens, so B_simple is too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class NoiseScaleEstimator:
    b_small: float  # tokens behind the small-batch gradient
    b_big: float  # tokens behind the big-batch gradient
    window: int = 100  # steps the estimate averages over
    small_sq: list[float] = field(default_factory=list)  # |g_small|^2 of the window's steps
    big_sq: list[float] = field(default_factory=list)  # |g_big|^2 of the window's steps
    losses: list[float] = field(default_factory=list)  # the window's training losses

    def __post_init__(self) -> None:
        if not 0 < self.b_small < self.b_big:
            raise ValueError(f"need 0 < b_small < b_big, got {self.b_small}, {self.b_big}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1 step, got {self.window}")

    @property
    def count(self) -> int:
        return len(self.small_sq)

    def update(self, small_sq: float, big_sq: float, loss: float = math.nan) -> None:
        if math.isfinite(small_sq) and math.isfinite(big_sq):
            for values, v in ((self.small_sq, small_sq), (self.big_sq, big_sq),
                              (self.losses, loss)):  # fmt: skip
                values.append(v)
                del values[: -self.window]

    def loss(self) -> float | None:
        """Mean training loss over the window: the loss the noise scale belongs to."""
        finite = [v for v in self.losses if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else None

    def _means(self) -> tuple[float, float]:
        return sum(self.small_sq) / self.count, sum(self.big_sq) / self.count

    def grad_sq(self) -> float:
        """|G|^2: squared norm of the true gradient, from the window's averages."""
        s, b = self._means()
        return (self.b_big * b - self.b_small * s) / (self.b_big - self.b_small)

    def trace(self) -> float:
        """tr(Sigma): total per-token gradient variance, from the window's averages."""
        s, b = self._means()
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

    def load_state_dict(self, state: dict) -> bool:
        """Continue the saved window; False (and an empty window) when it was measured at other
        batch sizes, e.g. by a run resumed on another number of ranks: mixing them is biased."""
        if (state.get("b_small"), state.get("b_big")) != (self.b_small, self.b_big):
            return False
        self.small_sq, self.big_sq = list(state["small_sq"]), list(state["big_sq"])
        self.losses = list(state["losses"])
        return True
