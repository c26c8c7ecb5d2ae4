"""Training one model: `train(cfg)` writes a run directory and returns its `RunSummary`.

Modules: `trainer` (the orchestrator), `step` (one optimizer step), `checkpoint` (state, format,
restore), `device` (device, precision, RNG, peak FLOP/s), `optim` (AdamW and schedules),
`evaluate` (validation loss), `metrics` (metrics.jsonl, TensorBoard, the console line),
`noise_scale` (gradient noise scale). Importing this package is cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moescale.config import Config
    from moescale.run import RunSummary
    from moescale.train.trainer import TokenData


def train(cfg: Config, data: TokenData | None = None, force: bool = False) -> RunSummary:
    """Train `cfg` into `cfg.train.out_dir` (resuming if possible); see `trainer.train`."""
    from moescale.train.trainer import train as _train

    return _train(cfg, data=data, force=force)


__all__ = ["train"]
