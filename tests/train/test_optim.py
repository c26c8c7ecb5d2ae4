"""Learning-rate schedules at chosen steps, and which parameters get weight decay."""

from __future__ import annotations

import math

import pytest

from moescale.config import ModelConfig, MoEConfig, TrainConfig
from moescale.train.optim import lr_at, param_groups, warmup_steps


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1.0, min_lr_ratio=0.1, warmup_frac=0.1, decay_frac=0.2)
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_is_linear_to_peak():
    t = cfg(schedule="constant")
    assert warmup_steps(100, 0.1) == 10
    assert lr_at(0, 100, t) == pytest.approx(0.1)
    assert lr_at(4, 100, t) == pytest.approx(0.5)
    assert lr_at(9, 100, t) == pytest.approx(1.0)


def test_constant_after_warmup():
    t = cfg(schedule="constant")
    assert [lr_at(s, 100, t) for s in (10, 50, 99)] == [1.0, 1.0, 1.0]


def test_cosine_from_peak_to_floor():
    t = cfg(schedule="cosine")
    assert lr_at(10, 100, t) == pytest.approx(1.0)  # first post-warmup step: peak
    assert lr_at(99, 100, t) == pytest.approx(0.1)  # last step: lr * min_lr_ratio
    mid = 10 + (100 - 10 - 1) / 2  # halfway: (peak + floor) / 2
    assert lr_at(int(mid), 100, t) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * int(mid - 10) / 89))
    )
    lrs = [lr_at(s, 100, t) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_wsd_stable_then_linear_decay():
    t = cfg(schedule="wsd")
    # 100 steps: warmup 10, stable to step 79, decay over the last 20 steps (80..99)
    assert lr_at(10, 100, t) == 1.0
    assert lr_at(79, 100, t) == 1.0
    assert lr_at(80, 100, t) == pytest.approx(1.0 - 0.9 / 20)
    assert lr_at(89, 100, t) == pytest.approx(1.0 - 0.9 * 10 / 20)
    assert lr_at(99, 100, t) == pytest.approx(0.1)


def test_no_warmup_starts_at_peak():
    t = cfg(schedule="cosine", warmup_frac=0.0)
    assert lr_at(0, 50, t) == pytest.approx(1.0)


def test_weight_decay_only_on_matrices_not_embedding_or_router():
    from moescale.model import build_model

    m = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, vocab_size=300, seq_len=8,
                    moe=MoEConfig(experts=4, top_k=1))  # fmt: skip
    model = build_model(m)
    decay, other = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    other_names = {names[id(p)] for p in other["params"]}
    assert "embed.weight" in other_names
    assert any("router" in n for n in other_names)
    assert any("w13_XDH" in n for n in decay_names)
    assert any("qkv" in n for n in decay_names)
    assert all("norm" not in n for n in decay_names)
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    assert len(decay_names) + len(other_names) == len(list(model.parameters()))
