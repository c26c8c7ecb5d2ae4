"""Tiny trained-looking run directories: a real checkpoint, config.yaml and tokenizer.json.

Weights are drawn well away from init (router included, so routing differs from token to token
and from expert to expert), because an export that swaps gate and up, or mis-folds the expert
output scale, can still match a model whose weights are all near zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

from moescale.config import Config, config_from_dict, dump_config
from moescale.data.tokenizer import save_tokenizer, train_tokenizer
from moescale.model.transformer import Transformer, build_model
from moescale.run import RunPaths
from moescale.train.checkpoint import TrainerState, capture, save_checkpoint

VOCAB = 300
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-experts layers route each token to a few experts, weighted by a router.",
    "Scaling laws relate the loss to parameters, tokens and compute: L(N, D) = E + A/N + B/D.",
    "Ünïcödé text, tabs\tand  double  spaces, numbers 1234567890 and emoji 🙂 round-trip too.",
] * 3


def tiny_model(**moe: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
                             "vocab_size": VOCAB, "seq_len": 32}  # fmt: skip
    if moe:
        model["moe"] = {"experts": 4, "top_k": 1, "granularity": 4, **moe}
    return model


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return train_tokenizer(TEXTS, VOCAB)


@torch.no_grad()
def perturb(model: Transformer, seed: int) -> None:
    """Every weight random at a scale where every part of the model matters."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "norm" in name:
            p.copy_(1 + 0.3 * noise)
        elif "router" in name:
            p.copy_(0.5 * noise)
        else:
            p.add_(p.std() * noise)


def make_run(
    tmp_path: Path, tokenizer: Tokenizer, model: dict[str, Any], step: int = 7, seed: int = 0
) -> tuple[Path, Transformer, Config]:
    """A run directory holding checkpoint `step` of a perturbed model; returns the model too."""
    run_dir = tmp_path / "run"
    cfg = config_from_dict({"model": model, "train": {"out_dir": str(run_dir), "seed": seed}})
    torch.manual_seed(seed)
    net = build_model(cfg.model)
    perturb(net, seed)
    net.eval()
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True)
    paths.config.write_text(dump_config(cfg))
    save_tokenizer(tokenizer, paths.tokenizer)
    optimizer = torch.optim.AdamW(net.parameters())
    state = capture(step, net, optimizer, torch.device("cpu"), TrainerState(), cfg.to_dict())
    save_checkpoint(paths.checkpoints, step, state, keep=2)
    return run_dir, net, cfg
