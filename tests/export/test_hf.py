"""moescale.export.hf: each exported architecture computes our model's logits, in transformers
itself, and what it cannot express is refused, naming the config key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from moescale.config import config_from_dict
from moescale.errors import UserError
from moescale.export import choose_architecture, export_run, refusals
from moescale.model.transformer import Transformer

from .conftest import VOCAB, make_run, tiny_model


def load_hf(out: Path, dtype: torch.dtype = torch.float32) -> Any:
    """The exported model through AutoModelForCausalLM, every weight read from the file."""
    transformers = pytest.importorskip("transformers")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=dtype, attn_implementation="eager", output_loading_info=True
    )
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    return model.eval()


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    return [torch.randint(0, VOCAB, shape, generator=gen) for shape in ((4, 32), (2, 17))]


@torch.no_grad()
def assert_same_logits(ours: Transformer, out: Path) -> None:
    hf = load_hf(out)
    for idx in batches():
        expected = ours(idx).logits
        got = hf(input_ids=idx).logits
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


CASES = {
    "dense": ({}, "LlamaForCausalLM"),
    "dense_untied_theta": ({"tie_embeddings": False, "rope_theta": 500.0, "norm_eps": 1e-6},
                           "LlamaForCausalLM"),
    "fine_grained_g4": ({"moe": {"experts": 4, "top_k": 1, "granularity": 4}},
                        "MixtralForCausalLM"),
    "softmax_before_topk_renormalised": (
        {"moe": {"experts": 4, "top_k": 2, "granularity": 2, "router": "softmax_before_topk",
                 "normalize_topk": True}}, "MixtralForCausalLM"),
    "switch_unnormalised": ({"moe": {"experts": 4, "top_k": 1, "router": "softmax_before_topk"}},
                            "Qwen2MoeForCausalLM"),
    "shared_expert": ({"moe": {"experts": 4, "top_k": 1, "granularity": 4, "shared_experts": 1}},
                      "Qwen2MoeForCausalLM"),
    "every_2_of_3": ({"n_layers": 3, "moe": {"experts": 4, "top_k": 1, "granularity": 4,
                                             "every": 2}}, "Qwen2MoeForCausalLM"),
    "scaled_weights_init": ({"moe": {"experts": 4, "top_k": 1, "granularity": 4,
                                     "expert_init": "scaled_weights"}}, "MixtralForCausalLM"),
    # trained with token dropping: evaluated (and exported) dropless, like transformers' MoEs
    "capacity_trained": ({"moe": {"experts": 4, "top_k": 1, "granularity": 4,
                                  "capacity_factor": 0.5}}, "MixtralForCausalLM"),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # no shared expert
@pytest.mark.parametrize("case", CASES)
def test_exported_logits_equal_ours(tmp_path: Path, tokenizer: Tokenizer, case: str,
                                    caplog) -> None:  # fmt: skip
    changes, architecture = CASES[case]
    model = {**tiny_model(), **changes}
    if "moe" in changes:
        model["moe"] = {**changes["moe"]}
    run_dir, net, _ = make_run(tmp_path, tokenizer, model)
    with caplog.at_level("WARNING", logger="moescale"):
        res = export_run(run_dir, tmp_path / "out")
    assert res.architecture == architecture
    assert_same_logits(net, tmp_path / "out")
    said = "capacity_factor 0.5 (token dropping); the exported model is dropless"
    assert (said in caplog.text) == (case == "capacity_trained")


@torch.no_grad()
def test_moe_layers_route_and_matter(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """The MoE cases above are not vacuous: tokens spread over the experts, each picks its own
    set, and the routed experts' output (scale folded into the export) moves the logits."""
    _, net, _ = make_run(tmp_path, tokenizer, tiny_model(top_k=1))
    idx = batches()[0]
    inputs: list[torch.Tensor] = []
    hook = net.blocks[0].ffn.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    out = net(idx)
    hook.remove()
    for stats in out.moe:
        assert (stats.tokens_per_expert > 0).all()
    logits = net.blocks[0].ffn.router(inputs[0].reshape(-1, 32))
    chosen = logits.topk(4, dim=-1).indices.sort(-1).values
    assert len({tuple(row) for row in chosen.tolist()}) > 10
    for layer in net.moe_layers():
        assert layer.out_scale == 4.0
        layer.w2_XFD.mul_(0.5)
    assert (net(idx).logits - out.logits).abs().max() > 1e-2


def test_bfloat16_export_casts_every_weight(tmp_path: Path, tokenizer: Tokenizer) -> None:
    run_dir, net, _ = make_run(tmp_path, tokenizer, tiny_model(granularity=2, top_k=2))
    export_run(run_dir, tmp_path / "out", dtype="bfloat16")
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert torch.equal(tensors["model.embed_tokens.weight"], net.embed.weight.bfloat16())
    down = net.blocks[1].ffn.w2_XFD[3].T * net.blocks[1].ffn.out_scale
    assert torch.equal(tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"],
                       down.bfloat16())  # fmt: skip
    assert "lm_head.weight" not in tensors  # tied: transformers ties it on load
    hf = load_hf(tmp_path / "out", dtype=torch.bfloat16)
    assert hf.dtype == torch.bfloat16
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def moe_config(**moe: Any):
    return config_from_dict({"model": tiny_model(**moe)}).model


@pytest.mark.parametrize(
    ("moe", "key"),
    [({"router": "sigmoid"}, "model.moe.router: sigmoid"),
     ({"router": "sigmoid", "bias_update_rate": 1e-3}, "model.moe.router: sigmoid"),
     ({"router": "expert_choice"}, "model.moe.router: expert_choice")],
)  # fmt: skip
def test_inexpressible_configs_are_refused(
    tmp_path: Path, tokenizer: Tokenizer, moe: dict[str, Any], key: str
) -> None:
    cfg = moe_config(**moe)
    assert any(line.startswith(key) for line in refusals(cfg))
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model(**moe))
    with pytest.raises(UserError, match=key) as err:
        export_run(run_dir, tmp_path / "out")
    assert "export" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary directory left


def test_every_expressible_router_has_an_architecture() -> None:
    assert choose_architecture(moe_config(router="softmax_before_topk")) == "Qwen2MoeForCausalLM"
    assert choose_architecture(moe_config(top_k=1)) == "MixtralForCausalLM"
    assert choose_architecture(moe_config(capacity_factor=2.0)) == "MixtralForCausalLM"
