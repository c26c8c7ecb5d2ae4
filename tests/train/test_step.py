"""One optimizer step: accumulation equals the full batch, a non-finite loss changes nothing,
clipping equals torch's, and the router biases move from the whole step's loads."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from moescale.config import ModelConfig, MoEConfig, TrainConfig
from moescale.model import build_model
from moescale.train import step as step_mod
from moescale.train.noise_scale import NoiseScaleEstimator
from moescale.train.optim import build_optimizer
from moescale.train.step import NonFiniteError, StepOptions, forward_backward, train_step


def setup(moe: MoEConfig | None = None, n_micro: int = 1, grad_clip: float = 1.0):
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=97, seq_len=16,
                      moe=moe)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, TrainConfig(), "cpu")
    opts = StepOptions(n_micro, grad_clip, moe, contextlib.nullcontext)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 97, (8, 16), generator=gen)
    y = torch.randint(0, 97, (8, 16), generator=gen)
    return model, opt, opts, x, y


# The Switch balancing loss is a product of two batch means, so it is computed per micro-batch and
# accumulation changes it; without it (z-loss and cross-entropy are token means) they agree.
@pytest.mark.parametrize(
    "moe", [None, MoEConfig(experts=4, top_k=2, granularity=2, aux_loss_coef=0.0)]
)
def test_accumulated_step_equals_full_batch_step(moe):
    m1, o1, opts1, x, y = setup(moe, n_micro=1)
    m4, o4, opts4, _, _ = setup(moe, n_micro=4)
    r1 = train_step(m1, o1, x, y, opts1)
    r4 = train_step(m4, o4, x, y, opts4)
    assert r4.loss == pytest.approx(r1.loss, rel=1e-6)
    assert r4.grad_norm == pytest.approx(r1.grad_norm, rel=1e-5)
    g1, g4 = setup(moe, n_micro=1), setup(moe, n_micro=4)
    forward_backward(g1[0], x, y, g1[2])
    forward_backward(g4[0], x, y, g4[2])
    for (name, a), b in zip(g1[0].named_parameters(), g4[0].parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)
    if moe is not None:
        metrics = r4.moe_metrics()
        assert metrics["load_imbalance"] >= 1.0 and metrics["dropped_frac"] == 0.0


def test_non_finite_loss_raises_before_any_update(monkeypatch):
    model, opt, opts, x, y = setup()
    before = copy.deepcopy(model.state_dict())
    real = step_mod.lm_loss
    monkeypatch.setattr(step_mod, "lm_loss", lambda logits, t: real(logits, t) * math.nan)
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        train_step(model, opt, x, y, opts)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not opt.state  # AdamW never stepped


def test_clipping_and_noise_scale_inputs():
    model, opt, opts, x, y = setup(n_micro=2, grad_clip=1e-3)
    noise = NoiseScaleEstimator(b_small=4 * 16, b_big=8 * 16)
    res = train_step(model, opt, x, y, opts, noise=noise)
    assert res.grad_norm > 1e-3  # reported before clipping
    assert noise.count == 1 and noise.big_sq == [pytest.approx(res.grad_norm**2)]
    assert noise.loss() == pytest.approx(res.loss)


@pytest.mark.parametrize("grad_clip", [1e-3, 1e9, 0.0])
def test_clipping_matches_torch_clip_grad_norm(grad_clip):
    """The step clips only when the coefficient is below 1 (it skips torch's multiply by 1.0):
    the parameters after the step equal those of torch's clip_grad_norm_ and AdamW, exactly,
    whether the gradient is clipped (1e-3), not (1e9), or clipping is off (0)."""
    model, opt, opts, x, y = setup(grad_clip=grad_clip)
    ref_model, ref_opt, *_ = setup(grad_clip=grad_clip)
    res = train_step(model, opt, x, y, opts)
    forward_backward(ref_model, x, y, opts)
    max_norm = grad_clip if grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(list(ref_model.parameters()), max_norm, foreach=True)
    ref_opt.step()
    assert res.grad_norm == float(norm)
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_non_finite_gradient_norm_raises_with_gradients_untouched():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    params[0].grad = torch.tensor([1.0, math.inf, 2.0])
    params[1].grad = torch.tensor([5.0, 6.0])
    before = [p.grad.clone() for p in params]
    with pytest.raises(NonFiniteError, match="non-finite gradient norm"):
        step_mod.clip_gradients(params, 1.0)
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.grad, b)


def test_router_bias_moves_after_the_step():
    moe = MoEConfig(experts=4, top_k=1, granularity=2, router="sigmoid", bias_update_rate=0.1)
    model, opt, opts, x, y = setup(moe)
    train_step(model, opt, x, y, opts)
    biases = torch.cat([layer.expert_bias_X for layer in model.moe_layers()])
    assert biases.abs().max() == pytest.approx(0.1)


def test_a_forward_without_a_truth_value_is_used():
    """torch.compile's wrapper of a module without len() (a DDP module) raises on bool(): the
    step must test `forward` against None, not for truth."""

    class NoTruth:
        def __init__(self, model):
            self.model, self.calls = model, 0

        def __len__(self):
            raise TypeError("no len()")

        def __call__(self, *args):
            self.calls += 1
            return self.model(*args)

    model, opt, opts, x, y = setup()
    forward = NoTruth(model)
    train_step(model, opt, x, y, opts, forward=forward)
    assert forward.calls == 1
