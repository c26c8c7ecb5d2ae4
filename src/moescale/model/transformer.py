"""Decoder-only transformer: dense, MoE or fine-grained MoE, chosen by `ModelConfig.moe`.

Token embedding -> n_layers x [RMSNorm -> causal attention with RoPE -> residual;
RMSNorm -> SwiGLU FFN or MoE FFN -> residual] -> RMSNorm -> LM head (tied by default).

Initialisation: every weight N(0, init_std), except the projections that write into the residual
stream (attention output, FFN down-projection), which get init_std / sqrt(2 * n_layers) so the
residual stream's variance does not grow with depth (GPT-2). MoE experts scale theirs further so
the layer's output scale does not depend on G (see `MoEFFN.init_weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from moescale.config import ModelConfig
from moescale.model import kernels
from moescale.model.moe import MoEFFN, MoEStats, SwiGLU


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, S, V)
    # Summed over MoE layers, unweighted (0 if dense): the coefficients apply per layer, as in
    # Switch and ST-MoE (averaging would weaken balancing by the number of layers).
    aux_loss: torch.Tensor  # Switch load-balancing loss
    z_loss: torch.Tensor  # router z-loss
    moe: list[MoEStats] = field(default_factory=list)  # one per MoE layer, in depth order


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head: x is (B, H, S, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos[:s], sin[:s]), apply_rope(k, cos[:s], sin[:s])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: bool):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = MoEFFN(cfg.d_model, cfg.d_ff, cfg.moe) if moe else SwiGLU(cfg.d_model, cfg.d_ff)
        self.is_moe = moe

    def forward(self, x, cos, sin, prior_counts=None) -> tuple[torch.Tensor, MoEStats | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        if self.is_moe:  # an MoEFFN, or its expert-parallel twin (model/parallel.py)
            y, stats = self.ffn(self.ffn_norm(x), prior_counts)
            return x + y, stats
        return x + self.ffn(self.ffn_norm(x)), None


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, cfg.is_moe_layer(i)) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        nn.init.normal_(self.embed.weight, std=std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=std)
            nn.init.normal_(block.attn.out.weight, std=out_std)
            if isinstance(block.ffn, MoEFFN):
                block.ffn.init_weights(std, out_std)
            else:
                nn.init.normal_(block.ffn.w1.weight, std=std)
                nn.init.normal_(block.ffn.w3.weight, std=std)
                nn.init.normal_(block.ffn.w2.weight, std=out_std)

    def moe_layers(self) -> list[nn.Module]:
        """MoEFFN layers, or their expert-parallel twins once sharded (`shard_model`)."""
        return [b.ffn for b in self.blocks if b.is_moe]

    def forward(
        self, idx_BS: torch.Tensor, prior_loads: list[torch.Tensor] | None = None
    ) -> ModelOutput:
        """Logits and the MoE layers' losses and metrics. `prior_loads` (one count vector per
        MoE layer: the slots per expert of earlier micro-batches of this optimizer step) makes
        the balancing losses use the step's loads (`balance_scope: step`)."""
        if idx_BS.shape[1] > self.cfg.seq_len:
            n, limit = idx_BS.shape[1], self.cfg.seq_len
            raise ValueError(f"sequence of {n} tokens is longer than model.seq_len = {limit}")
        x = self.embed(idx_BS)
        stats: list[MoEStats] = []
        for block in self.blocks:
            prior = prior_loads[len(stats)] if prior_loads and block.is_moe else None
            x, s = block(x, self.rope_cos, self.rope_sin, prior)
            if s is not None:
                stats.append(s)
        x = self.norm(x)
        logits = self.lm_head(x) if self.lm_head is not None else F.linear(x, self.embed.weight)
        zero = x.new_zeros((), dtype=torch.float32)
        aux = torch.stack([s.aux_loss for s in stats]).sum() if stats else zero
        z = torch.stack([s.z_loss for s in stats]).sum() if stats else zero
        return ModelOutput(logits, aux, z, stats)

    @torch.no_grad()
    def update_router_biases(self, tokens_per_expert: list[torch.Tensor]) -> None:
        """After an optimizer step: aux-loss-free balancing from the step's expert loads (one
        count vector per MoE layer, e.g. `MoEStats.tokens_per_expert` summed over micro-batches)."""
        for layer, counts in zip(self.moe_layers(), tokens_per_expert, strict=True):
            layer.update_bias(counts)


def build_model(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in float32."""
    return kernels.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
