"""Loss over (hyperparameter, tokens) grids, for the training-curve method of
`moescale.laws.hyper` and the report's heatmaps: which value reaches each token count at the
lowest loss (Wang et al. 2024, their batch-size and learning-rate heatmaps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moescale.run import Col


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
