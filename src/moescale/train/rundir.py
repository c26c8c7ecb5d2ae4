"""The run directory before training starts: the plan, --force, "the same run?", the tokenizer.

`train()` (moescale.train.trainer) holds the run's lock (moescale.run.RunLock) around all of
this, so two processes never clear, compare or write one directory at the same time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_bytes
from moescale.config import Config, config_from_dict, read_yaml
from moescale.errors import ConfigError, UserError
from moescale.run import RunPaths, RunSummary, config_diff, read_summary_or_none
from moescale.train.optim import total_steps


def micro_batch_size(cfg: Config, ranks: int = 1) -> int:
    """Sequences per forward pass: train.micro_batch_size, else one rank's share of the batch
    (at least one sequence; moescale.train.distributed.check_split checks that it divides)."""
    return cfg.train.micro_batch_size or max(1, cfg.train.batch_size // ranks)


MAX_STEPS = 10**9  # the largest published pre-training runs take about 1e6 steps


def plan_steps(cfg: Config, ranks: int = 1) -> tuple[int, int, int]:
    """(steps, micro_batch_size, micro-batches per step) on `ranks` data-parallel ranks
    (moescale.train.distributed.check_split checks the split); errors name the key."""
    t, seq = cfg.train, cfg.model.seq_len
    per_step = t.batch_size * seq
    steps = total_steps(t, seq)
    if steps < 1:
        raise ConfigError(
            f"train.tokens: {t.tokens} is less than one step of train.batch_size x model.seq_len "
            f"= {per_step} tokens; raise train.tokens or lower the batch size."
        )
    if steps > MAX_STEPS:  # 1e300 tokens validated, then "trained" with an lr of 4e-294
        raise ConfigError(
            f"train.tokens: {t.tokens:.3g} is {steps:.3g} steps of {per_step} tokens, more than "
            f"{MAX_STEPS:.0e}; check its exponent (train.tokens counts tokens, e.g. 2e9)."
        )
    micro = micro_batch_size(cfg, ranks)
    n_micro = t.batch_size // micro
    if t.noise_scale and n_micro < 2:  # with ranks, one rank's share is the small batch
        raise ConfigError(
            "train.noise_scale: the estimator needs at least 2 micro-batches per step; set "
            f"train.micro_batch_size to a divisor of train.batch_size = {t.batch_size} below it."
        )
    return steps, micro, n_micro


def clear_run(paths: RunPaths) -> None:
    """--force: remove what a previous run wrote (only files the trainer owns; not the lock,
    which the caller holds)."""
    owned = (paths.config, paths.metrics, paths.summary, paths.log, paths.tokenizer)
    for p in (*owned, *paths.event_files()):
        p.unlink(missing_ok=True)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)


def check_run_dir(paths: RunPaths, cfg: Config) -> RunSummary | None:
    """The summary of the run already in `paths` (None if none); a ConfigError when the
    directory holds a run of a different config."""
    previous = read_summary_or_none(paths.dir)
    if not paths.config.exists():
        return previous
    try:
        saved = config_from_dict(read_yaml(paths.config))
    except UserError as exc:
        raise ConfigError(
            f"{paths.config} does not load ({exc}); use --force to start the run over."
        ) from None
    diff = config_diff(saved.to_dict(), cfg.to_dict())
    if diff:
        status = previous.status if previous else "started"
        raise ConfigError(
            f"{paths.dir} holds a {status} run with a different config:\n  "
            + "\n  ".join(diff)
            + f"\nUse the run's own config ({paths.config}), another train.out_dir, or "
            "--force to start over."
        )
    return previous


def copy_tokenizer(paths: RunPaths, data: Any) -> None:
    """Copy the data's tokenizer.json (PreparedData.tokenizer_path) into the run directory,
    once and atomically: the run then holds everything needed to use its model."""
    src = getattr(data, "tokenizer_path", None)
    if src is None or paths.tokenizer.exists():
        return
    atomic_write_bytes(paths.tokenizer, Path(src).read_bytes())
