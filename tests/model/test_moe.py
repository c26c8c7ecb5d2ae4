"""Router, balancing losses, capacity and the whole MoE layer across backends."""

import math

import pytest
import torch

from moescale.config import MoEConfig
from moescale.model.moe import MoEFFN, apply_capacity, route


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_softmax_after_topk_weights_sum_to_one_and_pick_largest():
    cfg = MoEConfig(experts=8, granularity=4, top_k=2)
    logits = torch.randn(50, 32)
    r = route(logits, cfg)
    assert r.weight_TK.shape == (50, 8)
    torch.testing.assert_close(r.weight_TK.sum(-1), torch.ones(50))
    # the chosen experts hold the 8 largest logits, and weights are a softmax over those only
    top = logits.topk(8).values
    torch.testing.assert_close(logits.gather(1, r.expert_idx_TK), top)
    torch.testing.assert_close(r.weight_TK, top.softmax(-1))


def test_softmax_before_topk_keeps_raw_probabilities():
    cfg = MoEConfig(experts=8, granularity=8, top_k=2, router="softmax_before_topk")
    logits = torch.randn(20, 64)
    r = route(logits, cfg)
    probs = logits.softmax(-1)
    torch.testing.assert_close(r.weight_TK, probs.topk(16).values)
    assert torch.all(r.weight_TK.sum(-1) < 1)


def test_aux_loss_and_z_loss_by_hand():
    cfg = MoEConfig(experts=4, granularity=2, top_k=1)
    T, X, K = 30, 8, 2
    logits = torch.randn(T, X) * 2
    r = route(logits, cfg)
    probs = logits.softmax(-1)
    chosen = logits.topk(K).indices
    total = 0.0
    for i in range(X):
        f_i = float((chosen == i).sum()) / (T * K)
        p_i = float(probs[:, i].mean())
        total += f_i * p_i
    assert float(r.stats.aux_loss) == pytest.approx(X * total, rel=1e-5)
    z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / T
    assert float(r.stats.z_loss) == pytest.approx(z, rel=1e-5)
    assert int(r.stats.tokens_per_expert.sum()) == T * K


def test_balanced_aux_loss_is_one():
    cfg = MoEConfig(experts=4, granularity=1, top_k=1)
    logits = torch.zeros(8, 4)
    logits[torch.arange(8), torch.arange(8) % 4] = 1e-3  # perfectly balanced, uniform probs
    r = route(logits, cfg)
    assert float(r.stats.aux_loss) == pytest.approx(1.0, rel=1e-3)
    assert r.stats.load_imbalance == pytest.approx(1.0)


def test_capacity_keeps_first_slots_in_token_order():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
    kept, dropped = apply_capacity(idx, n_experts=4, capacity=2)
    # expert 0 is chosen by tokens 0,1,2,3: only tokens 0 and 1 keep it
    assert kept.tolist() == [[0, 1], [0, 2], [4, 1], [3, 4]]
    assert dropped == 2


def test_capacity_factor_reports_dropped_fraction():
    cfg = MoEConfig(experts=4, granularity=2, top_k=2, capacity_factor=1.0)
    logits = torch.randn(64, 8)
    logits[:, 0] += 5  # everyone wants expert 0
    r = route(logits, cfg)
    cap = math.ceil(64 * 4 * 1.0 / 8)
    kept = torch.bincount(r.expert_idx_TK.flatten(), minlength=9)[:8]
    assert int(kept.max()) <= cap
    assert float(r.stats.dropped_frac) == pytest.approx(1 - int(kept.sum()) / (64 * 4))
    assert float(r.stats.dropped_frac) > 0


@pytest.mark.parametrize(
    "cfg",
    [
        MoEConfig(experts=4, granularity=4, top_k=2, shared_experts=1),
        MoEConfig(experts=4, granularity=2, top_k=2, capacity_factor=0.75),
        MoEConfig(experts=4, granularity=8, top_k=2, router="softmax_before_topk"),
        MoEConfig(experts=4, granularity=2, top_k=1, router="sigmoid", bias_update_rate=0.01),
    ],
    ids=["shared", "capacity", "before_topk", "sigmoid"],
)
def test_layer_backends_agree_forward_and_backward(cfg):
    torch.manual_seed(0)
    layer = MoEFFN(32, 64, cfg)
    layer.init_weights(0.1, 0.05)
    x = torch.randn(2, 40, 32)
    results = {}
    for backend in ("reference", "grouped"):
        layer.cfg.backend = backend
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        y, stats = layer(xi)
        loss = (y * torch.cos(torch.arange(y.numel()).view_as(y))).sum() + stats.aux_loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
        results[backend] = (y.detach(), xi.grad.clone(), grads)
    (y0, dx0, g0), (y1, dx1, g1) = results["reference"], results["grouped"]
    assert rel_err(y1, y0) <= 1e-5
    assert rel_err(dx1, dx0) <= 1e-5
    for name in g0:
        assert rel_err(g1[name], g0[name]) <= 1e-5, name


def test_sigmoid_bias_update_favours_underloaded_experts():
    cfg = MoEConfig(experts=4, granularity=1, top_k=1, router="sigmoid", bias_update_rate=0.1)
    layer = MoEFFN(8, 16, cfg)
    layer.update_bias(torch.tensor([10, 0, 5, 5]))
    assert layer.expert_bias_X.tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])


def test_output_scale_at_init_does_not_depend_on_granularity():
    torch.manual_seed(0)
    x = torch.randn(2048, 64)
    stds = []
    for g in (1, 2, 4, 8):
        layer = MoEFFN(64, 256, MoEConfig(experts=8, granularity=g, top_k=2))
        layer.init_weights(0.02, 0.02 / math.sqrt(8))
        with torch.no_grad():
            stds.append(float(layer(x)[0].std()))
    assert max(stds) / min(stds) < 1.3, stds
