"""Learning-rate schedules at chosen steps, and which parameters get weight decay."""

from __future__ import annotations

import dataclasses
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


def test_warmup_tokens_sets_the_same_warmup_for_every_budget():
    t = cfg(schedule="wsd", warmup_tokens=1000)
    assert warmup_steps(100, 0.1, 1000, 100) == 10
    assert warmup_steps(7, 0.1, 1000, 100) == 7  # never longer than the run
    assert warmup_steps(100, 0.1, 30, 100) == 1  # a positive warmup lasts at least one step
    assert warmup_steps(100, 0.1, 0, 100) == 0
    assert [lr_at(s, 50, t, 100) for s in range(12)] == [lr_at(s, 400, t, 100) for s in range(12)]
    assert lr_at(4, 50, t, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tokens_per_step"):
        lr_at(0, 50, t)


def test_decay_start_step_is_where_lr_at_leaves_the_peak():
    from moescale.train.optim import branch_steps, decay_start_step

    t = TrainConfig(lr=1.0, schedule="wsd", decay_frac=0.2, batch_size=8, warmup_tokens=768,
                    tokens=60 * 256, branch_tokens=[30 * 256, 45 * 256 + 100])  # fmt: skip
    assert decay_start_step(t, 32) == 48
    assert branch_steps(t, 32) == {30 * 256: 24, 45 * 256 + 100: 36}
    for tokens in (30 * 256, 45 * 256 + 100, 61 * 256 - 1):
        s, total = decay_start_step(t, 32, tokens), tokens // 256
        assert lr_at(s - 1, total, t, 256) == 1.0 > lr_at(s, total, t, 256)
        # the trunk's lr up to that step is the budget's: a branch continues the same schedule
        trunk = [lr_at(k, 60, t, 256) for k in range(s)]
        assert trunk == [lr_at(k, total, t, 256) for k in range(s)]
    assert decay_start_step(dataclasses.replace(t, schedule="cosine"), 32) == 60


def test_fused_adamw_follows_the_reference_loop():
    """build_optimizer runs torch's fused AdamW on CPU (one pass per tensor); torch's for-loop
    implementation, the same groups and hyperparameters, is the reference: after several steps
    on fresh random gradients both hold the same parameters to float rounding."""
    import torch

    from moescale.model import build_model
    from moescale.train.optim import build_optimizer

    moe = MoEConfig(experts=4, top_k=2, granularity=2)
    model_cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=97,
                            seq_len=16, moe=moe)  # fmt: skip
    t = TrainConfig(lr=3e-3, weight_decay=0.1)
    torch.manual_seed(0)
    fast_model = build_model(model_cfg)
    ref_model = build_model(model_cfg)
    ref_model.load_state_dict(fast_model.state_dict())
    init = {k: v.clone() for k, v in fast_model.state_dict().items()}
    fast = build_optimizer(fast_model, t, "cpu")
    assert fast.defaults["fused"]
    ref = torch.optim.AdamW(param_groups(ref_model, t.weight_decay), lr=t.lr,
                            betas=(t.beta1, t.beta2), eps=t.eps, foreach=False)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(fast_model.parameters(), ref_model.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        fast.step()
        ref.step()
    for (name, a), b in zip(fast_model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
        assert not torch.equal(a, init[name]), name  # every parameter moved
