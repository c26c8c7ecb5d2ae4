"""Our transformer as a Hugging Face model: which architecture, its config.json, its tensors.

Every target computes exactly what `moescale.model.transformer.Transformer` computes (a test
compares logits), so an exported model is the trained model, not an approximation of it:

- dense -> `LlamaForCausalLM`. Our RoPE rotates (first half, second half) pairs of each head,
  which is the rotate-half convention transformers' Llama uses, with the same inverse
  frequencies, so q and k need no permutation. The packed `qkv` splits into q, k, v in that
  order; a SwiGLU's w1 is the gate, w3 the up and w2 the down projection.
- MoE with renormalised softmax routing (softmax_after_topk, or softmax_before_topk with
  normalize_topk: the softmax of the kept logits either way), every block MoE and no shared
  experts -> `MixtralForCausalLM`, with E*G experts of hidden d_ff/G and k*G per token.
- Any other softmax MoE that drops nothing (shared experts, MoE every n-th block, unnormalised
  softmax_before_topk) -> `Qwen2MoeForCausalLM`: dense blocks are listed in `mlp_only_layers`;
  its shared expert is multiplied by sigmoid(gate(x)), so the gate is written as zeros
  (sigmoid(0) = 0.5 exactly) and the shared down-projection doubled; its q/k/v biases are zeros.

`forward_scale` (`MoEFFN.out_scale`) multiplies the routed experts' output by a constant that no
target has: it is folded into each expert's down-projection. Tensors are written in the
per-expert checkpoint layout every transformers version (and vLLM, llama.cpp) reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moescale.config import ModelConfig
from moescale.errors import UserError

if TYPE_CHECKING:
    import torch

LLAMA, MIXTRAL, QWEN2_MOE = "LlamaForCausalLM", "MixtralForCausalLM", "Qwen2MoeForCausalLM"
MODEL_TYPES = {LLAMA: "llama", MIXTRAL: "mixtral", QWEN2_MOE: "qwen2_moe"}
DTYPES = ("float32", "bfloat16")


@dataclass
class HFModel:
    """An exported model: its transformers class name, config.json and named tensors."""

    architecture: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def refusals(cfg: ModelConfig) -> list[str]:
    """Why `cfg` has no exact Hugging Face equivalent, one line per config key (empty: it has).

    Refused, not approximated: a model that routes differently from the trained one would give
    other outputs under the same name."""
    moe = cfg.moe
    if moe is None:
        return []
    out = []
    keep = "retrain with model.moe.router: softmax_after_topk to export"
    if moe.router == "sigmoid":
        out.append(
            "model.moe.router: sigmoid scores each expert on its own (and its aux-loss-free "
            "bias, model.moe.bias_update_rate, steers selection only); the exported MoE "
            f"classes (Mixtral, Qwen2-MoE) route with a softmax, so none is exact; {keep}."
        )
    elif moe.router == "expert_choice":
        out.append(
            "model.moe.router: expert_choice lets experts pick tokens across the batch (not "
            f"causal); transformers' MoE models route each token on its own; {keep}."
        )
    return out


def check_exportable(cfg: ModelConfig) -> None:
    problems = refusals(cfg)
    if problems:
        raise UserError("this model cannot be exported exactly:\n  " + "\n  ".join(problems))


def choose_architecture(cfg: ModelConfig) -> str:
    """The most widely read transformers class that computes exactly what `cfg` does."""
    check_exportable(cfg)
    moe = cfg.moe
    if moe is None:
        return LLAMA
    if moe.every == 1 and moe.shared_experts == 0 and _renormalised(cfg):
        return MIXTRAL
    return QWEN2_MOE


def _renormalised(cfg: ModelConfig) -> bool:
    """Kept weights sum to 1: softmax over the kept logits (== softmax, top-k, renormalise)."""
    assert cfg.moe is not None
    return cfg.moe.router == "softmax_after_topk" or cfg.moe.renormalizes


def hf_config(cfg: ModelConfig, architecture: str, eos_id: int, dtype: str) -> dict[str, Any]:
    """config.json: what transformers needs to build the architecture with our shapes.

    Both the rope_theta key (transformers 4) and rope_parameters (5) are written, as are the
    BOS and EOS ids (`<|endoftext|>`, which separates documents in training)."""
    out: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": MODEL_TYPES[architecture],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }
    if architecture == LLAMA:
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif architecture == MIXTRAL:
        out.update(_mixtral_config(cfg))
    else:
        out.update(_qwen2_moe_config(cfg))
    return out


def _mixtral_config(cfg: ModelConfig) -> dict[str, Any]:
    assert cfg.moe is not None
    return {
        "intermediate_size": cfg.moe.expert_hidden(cfg.d_ff),
        "num_local_experts": cfg.moe.routed_experts,
        "num_experts_per_tok": cfg.moe.active_experts,
        "router_jitter_noise": 0.0,
        "router_aux_loss_coef": cfg.moe.aux_loss_coef,
        "output_router_logits": False,
        "sliding_window": None,
    }


def _qwen2_moe_config(cfg: ModelConfig) -> dict[str, Any]:
    moe = cfg.moe
    assert moe is not None
    return {
        "moe_intermediate_size": moe.expert_hidden(cfg.d_ff),
        "shared_expert_intermediate_size": moe.shared_experts * cfg.d_ff,
        "num_experts": moe.routed_experts,
        "num_experts_per_tok": moe.active_experts,
        "norm_topk_prob": _renormalised(cfg),
        "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(cfg.n_layers) if not cfg.is_moe_layer(i)],
        "qkv_bias": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.n_layers,
        "router_aux_loss_coef": moe.aux_loss_coef,
        "output_router_logits": False,
    }


def hf_tensors(
    cfg: ModelConfig, state: dict[str, torch.Tensor], architecture: str, out_scales: list[float]
) -> dict[str, torch.Tensor]:
    """Our state dict renamed and reshaped to `architecture`'s checkpoint layout (float32 views
    and new tensors; the caller casts and copies). `out_scales`: each MoE block's
    `MoEFFN.out_scale`, in depth order, folded into its experts' down-projections."""
    d = cfg.d_model
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": state["embed.weight"]}
    scales = iter(out_scales)
    for i in range(cfg.n_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        qkv = state[src + "attn.qkv.weight"]
        for j, name in enumerate("qkv"):
            out[f"{dst}self_attn.{name}_proj.weight"] = qkv[j * d : (j + 1) * d]
            if architecture == QWEN2_MOE:
                out[f"{dst}self_attn.{name}_proj.bias"] = qkv.new_zeros(d)
        out[dst + "self_attn.o_proj.weight"] = state[src + "attn.out.weight"]
        out[dst + "input_layernorm.weight"] = state[src + "attn_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "ffn_norm.weight"]
        if not cfg.is_moe_layer(i):
            out.update(_swiglu(state, src + "ffn.", dst + "mlp."))
        elif architecture == MIXTRAL:
            out.update(_experts(state, src + "ffn.", dst + "block_sparse_moe.", next(scales),
                                ("w1", "w3", "w2")))  # fmt: skip
        else:
            out.update(_qwen2_moe_block(cfg, state, src + "ffn.", dst + "mlp.", next(scales)))
    out["model.norm.weight"] = state["norm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def _swiglu(state: dict[str, torch.Tensor], src: str, dst: str, scale: float = 1.0):
    """A SwiGLU (`moescale.model.moe.SwiGLU`): w1 gate, w3 up, w2 down."""
    down = state[src + "w2.weight"]
    return {
        dst + "gate_proj.weight": state[src + "w1.weight"],
        dst + "up_proj.weight": state[src + "w3.weight"],
        dst + "down_proj.weight": down * scale if scale != 1.0 else down,
    }


def _experts(
    state: dict[str, torch.Tensor], src: str, dst: str, scale: float, names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The router and one (gate, up, down) triple per expert from the packed `w13_XDH`
    (gate | up side by side, input-major) and `w2_XFD`, down-projections times `scale`."""
    w13, w2 = state[src + "w13_XDH"], state[src + "w2_XFD"]
    hidden = w2.shape[1]
    gate, up, down = names
    out = {dst + "gate.weight": state[src + "router.weight"]}
    for e in range(w13.shape[0]):
        out[f"{dst}experts.{e}.{gate}.weight"] = w13[e, :, :hidden].T
        out[f"{dst}experts.{e}.{up}.weight"] = w13[e, :, hidden:].T
        out[f"{dst}experts.{e}.{down}.weight"] = w2[e].T * scale
    return out


def _qwen2_moe_block(
    cfg: ModelConfig, state: dict[str, torch.Tensor], src: str, dst: str, scale: float
) -> dict[str, torch.Tensor]:
    """Routed experts, plus the shared expert behind a gate fixed at sigmoid(0) = 0.5 (its
    down-projection doubled, exact in binary floating point); no shared experts: zero-size."""
    assert cfg.moe is not None
    out = _experts(state, src, dst, scale, ("gate_proj", "up_proj", "down_proj"))
    router = state[src + "router.weight"]
    out[dst + "shared_expert_gate.weight"] = router.new_zeros(1, cfg.d_model)
    if cfg.moe.shared_experts:
        out.update(_swiglu(state, src + "shared.", dst + "shared_expert.", scale=2.0))
    else:
        empty_in, empty_out = router.new_zeros(0, cfg.d_model), router.new_zeros(cfg.d_model, 0)
        out[dst + "shared_expert.gate_proj.weight"] = empty_in
        out[dst + "shared_expert.up_proj.weight"] = empty_in.clone()
        out[dst + "shared_expert.down_proj.weight"] = empty_out
    return out


def to_hf(
    cfg: ModelConfig, state: dict[str, torch.Tensor], eos_id: int, dtype: str = "float32"
) -> HFModel:
    """The exported model of a checkpoint's state dict (`state["model"]`), in `dtype`.

    The state dict is first checked against the model `cfg` builds (names and shapes), so a
    checkpoint of another config is an error rather than a scrambled export."""
    import torch

    from moescale.model.transformer import Transformer

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}.")
    architecture = choose_architecture(cfg)
    with torch.device("meta"):
        reference = Transformer(cfg)  # shapes and out_scale only: no memory, no init cost
    _check_state(reference.state_dict(), state)
    scales = [layer.out_scale for layer in reference.moe_layers()]
    floats = {k: v.detach().float() for k, v in state.items()}
    target = getattr(torch, dtype)
    tensors = {
        k: v.to(dtype=target, memory_format=torch.contiguous_format, copy=True)
        for k, v in hf_tensors(cfg, floats, architecture, scales).items()
    }
    return HFModel(architecture, hf_config(cfg, architecture, eos_id, dtype), tensors)


def _check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    bad = [f"{k} missing" for k in sorted(set(expected) - set(state))]
    bad += [f"{k} unexpected" for k in sorted(set(state) - set(expected))]
    bad += [f"{k}: {tuple(state[k].shape)}, config says {tuple(v.shape)}"
            for k, v in expected.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    if bad:
        raise UserError(
            "the checkpoint does not match the run's config.yaml ("
            + "; ".join(bad[:5])
            + "): export the run directory the checkpoint was trained in."
        )
