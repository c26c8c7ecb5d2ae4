"""Parameter and FLOP accounting against the built model and against hand counts."""

import pytest

from moescale.accounting import count, krajewski_flops, krajewski_params_total
from moescale.config import ModelConfig, MoEConfig
from moescale.model import build_model


def cfg(moe=None, **kw):
    base = dict(d_model=64, n_layers=3, n_heads=4, d_ff=128, vocab_size=100, seq_len=32)
    base.update(kw)
    return ModelConfig(**base, moe=moe)


@pytest.mark.parametrize(
    "model_cfg",
    [
        cfg(),
        cfg(tie_embeddings=False),
        cfg(MoEConfig(experts=4, granularity=1, top_k=2)),
        cfg(MoEConfig(experts=4, granularity=8, top_k=2, shared_experts=1, every=2)),
    ],
)
def test_counts_match_real_parameters(model_cfg):
    model = build_model(model_cfg)
    acc = count(model_cfg)
    embedding = model.embed.weight.numel() + (
        model.lm_head.weight.numel() if model.lm_head is not None else 0
    )
    total = sum(p.numel() for p in model.parameters())
    assert acc.params_embedding == embedding
    assert acc.params_total == total - embedding
    router = sum(layer.router.weight.numel() for layer in model.moe_layers())
    assert acc.params_router == router


def test_hand_counts_and_granularity_invariance():
    d, ff, L = 64, 128, 3
    for g in (1, 2, 4, 8):
        acc = count(cfg(MoEConfig(experts=4, granularity=g, top_k=2)))
        attn_norm = L * (4 * d * d + 2 * d) + d
        assert acc.params_total == attn_norm + L * (4 * 3 * d * ff + d * 4 * g)
        assert acc.params_active == attn_norm + L * (2 * 3 * d * ff + d * 4 * g)
        assert acc.params_total - acc.params_router == attn_norm + L * 4 * 3 * d * ff
        shape = (acc.routed_experts, acc.active_experts, acc.expert_hidden)
        assert shape == (4 * g, 2 * g, ff // g)
        assert acc.flops_per_token_simple == 6 * acc.params_active


def test_exact_flops_by_hand():
    c = cfg()
    acc = count(c)
    d, ff, L, V, S = 64, 128, 3, 100, 32
    forward = 2 * (L * (4 * d * d + 3 * d * ff) + d * V) + L * 4 * S * d
    assert acc.flops_per_token == 3 * forward


# Krajewski et al. (2024), compute-optimal models: (N_active as "64 x size", D, G, FLOPs).
# Shapes d = 64 L_b with the active (dense-equivalent) parameters 12 d^2 L_b = size.
KRAJEWSKI_ROWS = [
    (100e6, 4.37e9, 8, 2.95e18),
    (1e9, 28.94e9, 16, 1.93e20),
    (3e9, 72.90e9, 16, 1.41e21),
    (7e9, 137.60e9, 32, 6.46e21),
    (70e9, 941.07e9, 32, 4.16e23),
]


@pytest.mark.parametrize("size,tokens,g,flops", KRAJEWSKI_ROWS)
def test_krajewski_routing_aware_flops(size, tokens, g, flops):
    n_layers = (size / (12 * 64**2)) ** (1 / 3)
    d = 64 * n_layers
    assert krajewski_flops(d, n_layers, 64, g, tokens) == pytest.approx(flops, rel=0.01)
    n_total = krajewski_params_total(d, n_layers, 64)
    assert n_total == pytest.approx(size * (8 * 64 + 4) / 12, rel=1e-9)


def test_routing_aware_convention_of_a_built_config():
    c = cfg(MoEConfig(experts=4, granularity=4, top_k=1))
    acc = count(c)
    assert acc.flops_per_token_routing_aware == 6 * (acc.params_active - acc.params_router) + (
        14 * 64 * 16 * 3
    )
