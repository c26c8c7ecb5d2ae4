"""Parameters and FLOPs per token, in the conventions of docs/conventions.md, side by side.

Counted from the config alone (no model built), so sweeps and laws can use them cheaply; a test
checks them against the real `nn.Parameter`s of the built model.

- params_embedding: token embedding, plus the LM head when it is not tied.
- params_total: every other parameter (attention, norms, all experts, shared experts, routers).
  The router is included (it is a real parameter); `params_router` says how much of it there is,
  since the fine-grained law of Krajewski et al. (2024) counts N_total without it.
- params_active: the non-embedding parameters one token uses (k*G of the E*G experts).
- flops_per_token_simple: 6 * params_active (Kaplan/Chinchilla).
- flops_per_token (exact): 3 x forward; forward = 2 x every matmul weight a token touches (active
  parameters incl. router, plus the unembedding) + attention 2 * 2 * seq_len * d_model per layer.
  We count the full seq x seq attention (no causal halving), as PaLM's MFU does.
- flops_per_token_routing_aware (Krajewski et al. 2024): c_f * N_active(no router)
  + c_r * d * E*G per MoE layer,
  c_f = 6, c_r = 14.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from moescale.config import ModelConfig

# Krajewski et al. (2024)'s routing-aware constants: FLOPs per active parameter, per router unit
C_F, C_R = 6, 14


@dataclass
class Accounting:
    params_total: int
    params_active: int
    params_embedding: int
    params_router: int
    params_total_no_router: int
    params_active_no_router: int
    flops_per_token: float  # exact, forward + backward
    flops_per_token_simple: float
    flops_per_token_routing_aware: float
    routed_experts: int  # E*G
    active_experts: int  # k*G
    expert_hidden: int  # d_ff / G

    def to_dict(self) -> dict:
        return asdict(self)


def count(cfg: ModelConfig) -> Accounting:
    d = cfg.d_model
    attn = 4 * d * d
    norms = 2 * d
    dense_ffn = 3 * d * cfg.d_ff
    total = active = router = 0
    n_moe = 0
    for layer in range(cfg.n_layers):
        total += attn + norms
        active += attn + norms
        if cfg.is_moe_layer(layer):
            m = cfg.moe
            n_moe += 1
            r = d * m.routed_experts
            shared = m.shared_experts * dense_ffn
            router += r
            total += r + shared + m.experts * dense_ffn
            active += r + shared + m.top_k * dense_ffn
        else:
            total += dense_ffn
            active += dense_ffn
    total += d  # final norm
    active += d
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)

    unembed = d * cfg.vocab_size
    attention = 2 * 2 * cfg.seq_len * d * cfg.n_layers
    matmul_active = active - norms * cfg.n_layers - d  # norms hold no matmul weights
    forward = 2 * (matmul_active + unembed) + attention
    m = cfg.moe
    routed = m.routed_experts if m else 0
    return Accounting(
        params_total=total,
        params_active=active,
        params_embedding=embedding,
        params_router=router,
        params_total_no_router=total - router,
        params_active_no_router=active - router,
        flops_per_token=3.0 * forward,
        flops_per_token_simple=6.0 * active,
        flops_per_token_routing_aware=float(C_F * (active - router) + C_R * d * routed * n_moe),
        routed_experts=routed,
        active_experts=m.active_experts if m else 0,
        expert_hidden=cfg.expert_hidden,
    )


def krajewski_flops(
    d_model: float,
    n_layers: float,
    experts: float,
    granularity: float,
    tokens: float,
    c_f: float = C_F,
    c_r: float = C_R,
) -> float:
    """Routing-aware training FLOPs of Krajewski et al. (2024)'s model family:
    (12 d^2 c_f + d E G c_r) D L_b."""
    return (12 * d_model**2 * c_f + d_model * experts * granularity * c_r) * tokens * n_layers


def krajewski_params_total(d_model: float, n_layers: float, experts: float) -> float:
    """N_total of Krajewski et al. (2024)'s model family: d^2 (8E + 4) L_b (no router, no
    embedding)."""
    return d_model**2 * (8 * experts + 4) * n_layers
