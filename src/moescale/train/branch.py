"""WSD decay branches: one long run, several token budgets (Hägele et al. 2024).

A trunk run (`schedule: wsd`, `warmup_tokens` set, `branch_tokens: [D1, D2, ...]`) keeps, never
pruned, the checkpoint at each step where a run of budget D would start its decay
(`moescale.train.optim.decay_start_step`). A branch is a fresh run directory with
`train.tokens: D` and `train.init_from:` that checkpoint: it starts from the trunk's model,
optimizer, RNG and counters at step s and trains s+1..steps(D) on its own schedule, so its
losses are those of a run of budget D from scratch, for the FLOPs of the decay alone.

A checkpoint continues a run only when its config is the same run's but for the keys that
set the budget or where and how it is logged (INIT_FROM_INDEPENDENT), and when its step is at
most this run's decay start (wsd; the decay begins with the next step) or before its last step
(other schedules): anything else would not be the same schedule.
Torch-free at import, so a study driver can call `branch_checkpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moescale.errors import ConfigError
from moescale.run import RUN_INDEPENDENT, config_diff
from moescale.train.checkpoint import checkpoint_path, load_checkpoint
from moescale.train.optim import decay_start_step, total_steps

if TYPE_CHECKING:
    from moescale.config import Config

logger = logging.getLogger(__name__)

# keys a branch may change from its trunk: the budget, where it lives, how it is logged
INIT_FROM_INDEPENDENT = RUN_INDEPENDENT | frozenset({
    "train.tokens", "train.branch_tokens", "train.init_from", "train.eval_every",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
})  # fmt: skip


def branch_checkpoint(run_dir: str | Path, cfg: Config, tokens: int) -> Path:
    """The checkpoint a trunk run of `cfg` in `run_dir` keeps for the budget `tokens` (one of
    its train.branch_tokens): what a branch's `train.init_from` names."""
    step = decay_start_step(cfg.train, cfg.model.seq_len, tokens=tokens)
    return checkpoint_path(Path(run_dir) / "checkpoints", step)


def load_init(cfg: Config) -> tuple[int, dict[str, Any]]:
    """(step, state) of `cfg.train.init_from`, checked to continue this run's schedule; a
    ConfigError naming what is wrong and the fix otherwise."""
    path = Path(cfg.train.init_from or "")
    if not path.is_file():
        raise ConfigError(
            f"train.init_from: {str(path)!r} is not a file; give a checkpoint "
            "(a run's checkpoints/step_XXXXXXXX.pt)."
        )
    try:
        state = load_checkpoint(path)
    except ValueError as exc:
        raise ConfigError(f"train.init_from: {path} does not load ({exc}).") from None
    check_init(cfg, state, path)
    return int(state["step"]), state


def check_init(cfg: Config, state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another run, or one at or past this run's decay start."""
    diff = config_diff(state.get("config") or {}, cfg.to_dict(), ignore=INIT_FROM_INDEPENDENT)
    if diff:
        raise ConfigError(
            f"train.init_from: {path} was trained with a different config:\n  "
            + "\n  ".join(diff)
            + "\nA branch may change only "
            + ", ".join(sorted(INIT_FROM_INDEPENDENT))
            + "; use the checkpoint's config for everything else."
        )
    t, seq, step = cfg.train, cfg.model.seq_len, int(state["step"])
    steps = total_steps(t, seq)
    # the last step a checkpoint may be at: the last before the decay (wsd), else the run's end
    last = decay_start_step(t, seq) if t.schedule == "wsd" else steps - 1
    if step > last:
        what = (f"its wsd decay begins after step {last}" if t.schedule == "wsd"
                else f"it has only {steps} steps")  # fmt: skip
        raise ConfigError(
            f"train.init_from: {path} is at step {step}, but this run ({steps} steps of "
            f"train.tokens = {t.tokens}): {what}; continuing from it would not follow this run's "
            "schedule. Raise train.tokens or start from an earlier checkpoint (a trunk keeps "
            "one per train.branch_tokens)."
        )
    logger.info("train: starting from %s (step %d of %d)", path, step, steps)
