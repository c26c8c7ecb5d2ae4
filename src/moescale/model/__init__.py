"""The model family: dense, MoE and fine-grained MoE decoder-only transformers."""

from moescale.model.experts import BACKENDS, expert_forward
from moescale.model.moe import MoEFFN, MoEStats, route
from moescale.model.transformer import ModelOutput, Transformer, build_model, lm_loss

__all__ = [
    "BACKENDS",
    "ModelOutput",
    "MoEFFN",
    "MoEStats",
    "Transformer",
    "build_model",
    "expert_forward",
    "lm_loss",
    "route",
]
