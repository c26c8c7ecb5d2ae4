"""Hyperparameter laws: optimal batch size and learning rate vs compute and vs loss.

Forms (docs/science.md, "Hyperparameter laws"): B_opt = b·C^β_B and η_opt = c·C^β_η
(DeepSeek-AI 2024, "DeepSeek LLM"), and in terms of loss B_opt = λ_B / L^α_B,
η_opt = λ_η · L^α_η (Wang et al. 2024), fitted per architecture. Sweeps give
many (batch, lr) runs per (N, D) cell; only near-optimal runs — within 0.25 % of the best loss in
their cell — carry information about the optimum, so those are kept and regressed in log space
(ordinary least squares on log-log). Intervals come from a row bootstrap of the kept runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moescale.errors import UserError
from moescale.laws.table import numeric_column
from moescale.run import Col

NEAR_OPTIMAL_TOL = 0.0025


@dataclass
class PowerLaw:
    """y = coef · x^exponent fitted in log space, with 95 % bootstrap intervals."""

    coef: float
    exponent: float
    coef_interval: tuple[float, float] = (float("nan"), float("nan"))
    exponent_interval: tuple[float, float] = (float("nan"), float("nan"))
    n: int = 0

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return self.coef * np.asarray(x, float) ** self.exponent


@dataclass
class HyperLaws:
    """Per-architecture hyperparameter laws.

    `batch_vs_loss` stores B = λ_B · L^(−α_B) as PowerLaw(coef=λ_B, exponent=−α_B), and
    `lr_vs_loss` η = λ_η · L^α_η as PowerLaw(coef=λ_η, exponent=α_η); `alpha_B`/`alpha_eta`
    give the exponents with the sign convention of docs/science.md.
    """

    arch: str
    batch_vs_compute: PowerLaw
    lr_vs_compute: PowerLaw
    batch_vs_loss: PowerLaw
    lr_vs_loss: PowerLaw
    n_runs: int
    n_kept: int
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def alpha_B(self) -> float:  # noqa: N802 - symbol of the paper
        return -self.batch_vs_loss.exponent

    @property
    def alpha_eta(self) -> float:
        return self.lr_vs_loss.exponent


def near_optimal_mask(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, tol: float = NEAR_OPTIMAL_TOL
) -> np.ndarray:
    """True for runs within `tol` (relative) of the best loss of their (N, D) cell."""
    n, d, loss = (np.asarray(a, float) for a in (n, d, loss))
    keep = np.zeros(len(loss), bool)
    cells = np.unique(np.stack([n, d], axis=1), axis=0)
    for cn, cd in cells:
        idx = np.flatnonzero((n == cn) & (d == cd))
        best = loss[idx].min()
        keep[idx[loss[idx] <= best * (1.0 + tol)]] = True
    return keep


def fit_power_law(
    x: np.ndarray, y: np.ndarray, *, bootstrap: int = 1000, seed: int = 0
) -> PowerLaw:
    """OLS of log y on log x; percentile intervals from `bootstrap` row resamples."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise UserError("a hyperparameter law needs at least two distinct x values")
    slope, icpt = np.polyfit(lx, ly, 1)
    out = PowerLaw(coef=float(np.exp(icpt)), exponent=float(slope), n=len(lx))
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(lx), (bootstrap, len(lx)))
        bx, by = lx[idx], ly[idx]
        mx, my = bx.mean(axis=1, keepdims=True), by.mean(axis=1, keepdims=True)
        var = np.sum((bx - mx) ** 2, axis=1)
        ok = var > 0
        slopes = np.sum((bx - mx) * (by - my), axis=1)[ok] / var[ok]
        icpts = my[ok, 0] - slopes * mx[ok, 0]
        out.exponent_interval = (
            float(np.percentile(slopes, 2.5)),
            float(np.percentile(slopes, 97.5)),
        )
        coefs = np.exp(icpts)
        out.coef_interval = (float(np.percentile(coefs, 2.5)), float(np.percentile(coefs, 97.5)))
    return out


def fit_hyper_laws(
    arch: Sequence[str] | np.ndarray,
    n: np.ndarray,
    d: np.ndarray,
    batch: np.ndarray,
    lr: np.ndarray,
    loss: np.ndarray,
    *,
    compute: np.ndarray | None = None,
    tol: float = NEAR_OPTIMAL_TOL,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, HyperLaws]:
    """Per-architecture batch and LR laws from a sweep table (one row per run).

    `compute` defaults to 6·N·D. Batch size is in whatever unit the table uses (the DeepSeek
    coefficients are in tokens per step; the results table's batch size is sequences).
    """
    arch = np.asarray(arch).astype(str)
    n, d, batch, lr, loss = (np.asarray(a, float) for a in (n, d, batch, lr, loss))
    c = 6.0 * n * d if compute is None else np.asarray(compute, float)
    named = [("N", n), ("D", d), (Col.BATCH_SIZE, batch), (Col.LR, lr), ("loss", loss)]
    for name, arr in named:
        bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
        if len(bad):
            raise UserError(f"column {name} must be finite and > 0; row {int(bad[0]) + 1} is not")
    out: dict[str, HyperLaws] = {}
    for a in sorted(set(arch)):
        sel = arch == a
        keep = near_optimal_mask(n[sel], d[sel], loss[sel], tol)
        cc, bb, ll, ee = c[sel][keep], batch[sel][keep], loss[sel][keep], lr[sel][keep]
        out[a] = HyperLaws(
            arch=a,
            batch_vs_compute=fit_power_law(cc, bb, bootstrap=bootstrap, seed=seed),
            lr_vs_compute=fit_power_law(cc, ee, bootstrap=bootstrap, seed=seed + 1),
            batch_vs_loss=fit_power_law(ll, bb, bootstrap=bootstrap, seed=seed + 2),
            lr_vs_loss=fit_power_law(ll, ee, bootstrap=bootstrap, seed=seed + 3),
            n_runs=int(sel.sum()),
            n_kept=int(keep.sum()),
        )
    return out


@dataclass
class Heatmap:
    """Loss over (hyperparameter, tokens): grid[i, j] = loss at tokens[i], values[j] (nan: no
    run); `best` is the loss-minimising value per token row (the optimum line)."""

    values: np.ndarray
    tokens: np.ndarray
    grid: np.ndarray
    best: np.ndarray
    name: str


def heatmap(values: np.ndarray, tokens: np.ndarray, loss: np.ndarray, name: str) -> Heatmap:
    """Grid of loss over (values, tokens) for one architecture and size; min over duplicates."""
    values, tokens, loss = (np.asarray(a, float) for a in (values, tokens, loss))
    uv, ut = np.unique(values), np.unique(tokens)
    grid = np.full((len(ut), len(uv)), np.nan)
    iv, it = np.searchsorted(uv, values), np.searchsorted(ut, tokens)
    for i, j, v in zip(it, iv, loss, strict=True):
        grid[i, j] = v if np.isnan(grid[i, j]) else min(grid[i, j], v)
    filled = np.where(np.isnan(grid), np.inf, grid)
    best = np.where(np.all(np.isnan(grid), axis=1), np.nan, uv[np.argmin(filled, axis=1)])
    return Heatmap(values=uv, tokens=ut, grid=grid, best=best, name=name)


def batch_heatmap(batch: np.ndarray, tokens: np.ndarray, loss: np.ndarray) -> Heatmap:
    """Loss over (batch size, tokens) with the optimal-batch line."""
    return heatmap(batch, tokens, loss, Col.BATCH_SIZE)


def lr_heatmap(lr: np.ndarray, tokens: np.ndarray, loss: np.ndarray) -> Heatmap:
    """Loss over (learning rate, tokens) with the optimal-LR line."""
    return heatmap(lr, tokens, loss, Col.LR)


def hyper_laws_from_table(
    table: Mapping[str, np.ndarray],
    *,
    arch_col: str = Col.ARCH,
    n_col: str = Col.PARAMS_ACTIVE,
    d_col: str = Col.TOKENS,
    flops_col: str | None = Col.FLOPS,
    batch_col: str = Col.BATCH_SIZE,
    lr_col: str = Col.LR,
    loss_col: str = Col.VAL_LOSS,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, HyperLaws]:
    """`fit_hyper_laws` on a results table (see `moescale.laws.table.read_table`).

    Compute comes from `flops_col` when the table has it, else 6·N·D. Without an `arch` column
    every row is one architecture named "all".
    """
    n = numeric_column(table, n_col, "n_col")
    d = numeric_column(table, d_col, "d_col")
    c = numeric_column(table, flops_col, "flops_col") if flops_col in table else None
    arch = table[arch_col].astype(str) if arch_col in table else np.full(len(n), "all")
    return fit_hyper_laws(
        arch,
        n,
        d,
        numeric_column(table, batch_col, "batch_col"),
        numeric_column(table, lr_col, "lr_col"),
        numeric_column(table, loss_col, "loss_col"),
        compute=c,
        bootstrap=bootstrap,
        seed=seed,
    )
