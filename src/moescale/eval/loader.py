"""A trained run directory, opened for use: its model on a device, its config and tokenizer.

Evaluation and generation read nothing but the run directory: `config.yaml` (the checkpoint
carries the same config and wins, since it is what the weights were trained with), a checkpoint
of `checkpoints/` and `tokenizer.json`, which the trainer copies into every run directory it
trains from text. The loader never writes into the run directory and never rebuilds anything:
when a file is missing, the error says which one and how to get it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from moescale.config import Config, config_from_dict, read_yaml
from moescale.data.cache import cache_root, sha256_file
from moescale.data.tokenizer import eos_id, load_tokenizer, token_byte_lengths
from moescale.errors import UserError
from moescale.model import build_model
from moescale.model.transformer import Transformer
from moescale.run import RunPaths, read_summary_or_none
from moescale.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from moescale.train.device import autocast_for, resolve_device

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from moescale.train.device import Autocast

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A checkpoint ready for inference: the model in eval mode on `device`."""

    dir: Path
    config: Config
    model: Transformer
    tokenizer: Tokenizer
    step: int
    device: torch.device
    token_bytes: np.ndarray  # UTF-8 bytes behind each id (0 for <|endoftext|>): bits per byte
    eos_id: int

    @property
    def seq_len(self) -> int:
        return self.config.model.seq_len

    @property
    def autocast(self) -> Autocast:
        """The training run's precision: bf16 autocast on CUDA, float32 elsewhere."""
        return autocast_for(self.device)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as the run's shards hold it (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))


def load_run(run_dir: str | Path, step: int | None = None, device: str = "auto") -> LoadedRun:
    """Open `run_dir` at checkpoint `step` (None: the newest one that loads) on `device`
    ('auto' takes CUDA when present). Errors are UserErrors naming the missing file."""
    paths = RunPaths(Path(run_dir))
    if not paths.dir.is_dir():
        raise UserError(f"{paths.dir} is not a directory: give a run directory (train.out_dir).")
    dev = resolve_device(device, "--device")  # before the checkpoint is read
    step, state = _checkpoint(paths, step)
    cfg = _config(paths, state)
    tok = _tokenizer(paths, cfg)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint step {step} of {paths.dir} does not fit its config's model "
            f"({str(exc).splitlines()[0]}); was config.yaml edited after training?"
        ) from None
    model.to(dev).eval()
    logger.info("loaded %s at step %d on %s", paths.dir, step, dev)
    return LoadedRun(
        dir=paths.dir,
        config=cfg,
        model=model,
        tokenizer=tok,
        step=step,
        device=dev,
        token_bytes=token_byte_lengths(tok, cfg.model.vocab_size),
        eos_id=eos_id(tok),
    )


def _checkpoint(paths: RunPaths, step: int | None) -> tuple[int, dict]:
    """(step, state) of the asked-for checkpoint, or the newest that loads."""
    found = list_checkpoints(paths.checkpoints)
    if not found:
        raise UserError(
            f"{paths.dir} has no checkpoint ({paths.checkpoints}/step_*.pt): the run has not "
            "reached its first train.checkpoint_every steps, or its checkpoints were deleted. "
            f"Train it (moescale train {paths.config}) and evaluate it once a checkpoint exists."
        )
    if step is None:
        for s, path in reversed(found):
            try:
                return s, load_checkpoint(path)
            except ValueError as exc:
                logger.warning("skipping checkpoint %s that does not load (%s)", path, exc)
        raise UserError(f"no checkpoint of {paths.checkpoints} loads (see the warnings above).")
    path = checkpoint_path(paths.checkpoints, step)
    if not path.is_file():
        have = ", ".join(str(s) for s, _ in found)
        raise UserError(f"{paths.dir} has no checkpoint of step {step}; it has steps {have}.")
    try:
        return step, load_checkpoint(path)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def _config(paths: RunPaths, state: dict) -> Config:
    """The checkpoint's own config (what its weights were trained with), else config.yaml."""
    saved = state.get("config")
    if isinstance(saved, dict):
        return config_from_dict(saved)
    if not paths.config.is_file():
        raise UserError(f"{paths.config} is missing and the checkpoint holds no config.")
    return config_from_dict(read_yaml(paths.config))


def _tokenizer(paths: RunPaths, cfg: Config) -> Tokenizer:
    """The run's tokenizer.json, checked against the hash its summary recorded."""
    summary = read_summary_or_none(paths.dir)
    want = summary.tokenizer_sha256 if summary else None
    if not paths.tokenizer.is_file():
        raise UserError(_missing_tokenizer(paths, cfg, want))
    if want and sha256_file(paths.tokenizer) != want:
        raise UserError(
            f"{paths.tokenizer} is not the tokenizer this run trained with (its sha256 differs "
            f"from summary.json's tokenizer_sha256 {want[:12]}...): restore the original file."
        )
    return load_tokenizer(paths.tokenizer)


def _missing_tokenizer(paths: RunPaths, cfg: Config, want: str | None) -> str:
    """Why tokenizer.json is missing and how to get it: the data cache may still hold it."""
    msg = (
        f"{paths.tokenizer} is missing: the run was trained on token arrays, or by a moescale "
        "that did not yet copy the tokenizer into the run directory. "
    )
    root = cache_root(cfg.data.cache_dir)
    for candidate in sorted((root / "tokens").glob("*/tokenizer.json")):
        if want and sha256_file(candidate) == want:
            return msg + f"The data cache holds it: copy {candidate} to {paths.tokenizer}."
    return msg + (
        f"Rebuild it with `moescale corpus tokenize {paths.config}` (deterministic for the same "
        f"corpus and vocabulary) and copy the file it prints after 'tokenizer:' to "
        f"{paths.tokenizer}."
    )
