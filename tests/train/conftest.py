"""Tiny configs and a learnable synthetic token stream for the trainer tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moescale.config import Config, config_from_dict
from moescale.train.trainer import ArrayData

VOCAB = 300


def markov_tokens(n: int, seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
    """A first-order Markov chain where each token has 3 likely successors: learnable quickly
    (entropy ~ln 3 against ~ln 300 at initialisation)."""
    rng = np.random.default_rng(1234)
    succ = rng.integers(0, vocab, size=(vocab, 3))
    draw = np.random.default_rng(seed)
    choice = draw.integers(0, 3, size=n)
    out = np.empty(n, dtype=np.uint16)
    tok = 0
    for i in range(n):
        tok = succ[tok, choice[i]]
        out[i] = tok
    return out


@pytest.fixture(scope="session")
def tiny_data() -> ArrayData:
    return ArrayData(markov_tokens(40_000, seed=0), markov_tokens(4_000, seed=1))


def tiny_config(out_dir: Path, moe: bool = False, **train: Any) -> Config:
    model: dict[str, Any] = {
        "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "vocab_size": VOCAB, "seq_len": 32,
    }  # fmt: skip
    if moe:
        model["moe"] = {"experts": 4, "top_k": 2, "granularity": 2}
    t: dict[str, Any] = {
        "tokens": 40 * 8 * 32, "batch_size": 8, "lr": 3e-3, "warmup_frac": 0.05,
        "log_every": 1, "eval_every": 20, "eval_tokens": 512, "checkpoint_every": 10,
        "out_dir": str(out_dir), "threads": 1,
    }  # fmt: skip
    t.update(train)
    return config_from_dict({"model": model, "train": t})


@pytest.fixture(autouse=True)
def _fast_and_deterministic(monkeypatch: pytest.MonkeyPatch):
    import torch

    monkeypatch.setenv("MOESCALE_PEAK_FLOPS", "1e11")  # skip the peak measurement
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Lines(logging.Handler):
    """Collects the moescale log lines; raises KeyboardInterrupt on the one starting with
    `stop_at`, as a user's Ctrl-C at that moment would."""

    def __init__(self, stop_at: str | None) -> None:
        super().__init__(logging.INFO)
        self.stop_at, self.lines = stop_at, []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if self.stop_at is not None and line.startswith(self.stop_at):
            raise KeyboardInterrupt


@contextmanager
def log_lines(stop_at: str | None = None) -> Iterator[list[str]]:
    """The "moescale" logger's lines while inside (INFO and above)."""
    logger = logging.getLogger("moescale")
    handler, level = _Lines(stop_at), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
