"""Export a trained run as a Hugging Face model directory: safetensors weights, config.json,
generation_config.json and the run's tokenizer, loadable with transformers'
AutoModelForCausalLM and AutoTokenizer without custom code or network.

  moescale export RUN_DIR OUT_DIR [--step N] [--dtype float32|bfloat16] [--force]

Dense -> LlamaForCausalLM; MoE with renormalised softmax routing in every block, no shared
experts -> MixtralForCausalLM; other dropless softmax MoEs (shared experts, model.moe.every > 1,
softmax_before_topk without renormalisation) -> Qwen2MoeForCausalLM. Each computes exactly
our model's logits. Sigmoid and expert-choice routers have no exact equivalent and are refused
(exit status 2, naming the key); a run trained with capacity_factor (token dropping) exports
dropless, as it evaluates, and says so.
"""

from __future__ import annotations

import argparse

from moescale.commands import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (train.out_dir)")
    p.add_argument("out_dir", help="the model directory to write (new or empty; see --force)")
    p.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: newest)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weight dtype (default float32, as trained)")  # fmt: skip
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer.json to use (default: RUN_DIR/tokenizer.json)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="replace a previous export in OUT_DIR (never anything else)")  # fmt: skip
    add_json_flag(p, "what was exported")


def run(args: argparse.Namespace) -> int:
    from moescale.export import export_run
    from moescale.fmt import count

    res = export_run(args.run_dir, args.out_dir, step=args.step, dtype=args.dtype,
                     tokenizer=args.tokenizer, force=args.force)  # fmt: skip
    if args.json_out:
        emit_json(res.to_dict(), args.json_out)
        if args.json_out == "-":
            return 0
    print(f"wrote {res.out_dir}: {res.architecture}, step {res.step}, {res.dtype}, "
          f"{count(res.parameters)} parameters ({', '.join(res.files)})")  # fmt: skip
    return 0
