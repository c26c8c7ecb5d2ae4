"""Training one model: `train(cfg)` writes a run directory and returns its summary.

Importing this package is cheap (no torch): the CLI imports it to build its parser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moescale.config import Config
    from moescale.train.trainer import TokenData


def train(
    cfg: Config,
    data: TokenData | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Train `cfg` into `cfg.train.out_dir` (resuming if possible); see `trainer.train`."""
    from moescale.train.trainer import train as _train

    return _train(cfg, data=data, log=log, force=force)


__all__ = ["train"]
