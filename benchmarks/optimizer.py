"""The optimizer's share of a step: AdamW fused (the trainer's) vs foreach vs torch's for-loop
default on CPU, and gradient clipping as the trainer does it vs torch's clip_grad_norm_.

The parameters are those of train_step.py's models (d_model 256, 4 layers; dense, MoE G 1 and
G 8: 8.4M, 27.3M and 27.3M parameters, embedding included) with random gradients below the
clipping threshold, as in most steps of a healthy run. Each implementation steps its own copy;
they run interleaved, round by round, and the ratios are per round (median [quartiles]).

    python benchmarks/optimizer.py [--json OUT] [--repeats 15] [--load N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import (  # noqa: E402
    add_machine_flags,
    apply_threads,
    busy_load,
    fmt_ratio,
    machine_info,
    measure,
    paired_ratio,
)
from train_step import model_configs  # noqa: E402

from moescale.config import TrainConfig  # noqa: E402
from moescale.model import build_model  # noqa: E402
from moescale.train.optim import build_optimizer, param_groups  # noqa: E402
from moescale.train.step import clip_gradients  # noqa: E402

ADAMW = {"fused": None, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def adamw_steps(model: torch.nn.Module, t: TrainConfig) -> dict:
    """One optimizer step per implementation, each on its own copy of the parameters."""
    fns = {}
    for name, kw in ADAMW.items():
        copy = build_model(model.cfg)
        copy.load_state_dict(model.state_dict())
        for p, q in zip(copy.parameters(), model.parameters(), strict=True):
            p.grad = q.grad.clone()
        opt = (build_optimizer(copy, t, "cpu") if kw is None else torch.optim.AdamW(
            param_groups(copy, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
            **kw))  # fmt: skip
        fns[f"adamw {name}"] = opt.step
    return fns


def clip_steps(model: torch.nn.Module, max_norm: float) -> dict:
    params = list(model.parameters())
    return {
        "clip ours": lambda: clip_gradients(params, max_norm),  # train_step's
        "clip torch": lambda: float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    add_machine_flags(ap)
    args = ap.parse_args()
    threads_source = apply_threads(args)
    shape = argparse.Namespace(d_model=256, layers=4, heads=4, d_ff=1024, experts=8, top_k=2,
                               vocab=4096, seq_len=256)  # fmt: skip
    t = TrainConfig()
    rows = []
    print(f"{'model':<8} {'params':>8} {'impl':<16} {'ms':>7}  ratio to ours [quartiles]")
    with busy_load(args.load):
        for model_name, cfg in model_configs(shape).items():
            torch.manual_seed(0)
            model = build_model(cfg)
            n_params = sum(p.numel() for p in model.parameters())
            for p in model.parameters():  # |g| = 1e-3 * sqrt(n): below grad_clip 1.0
                p.grad = torch.randn_like(p) * 1e-4
            fns = {**adamw_steps(model, t), **clip_steps(model, t.grad_clip)}
            times = measure(fns, args.repeats, "cpu")
            for name, ms in times.items():
                ours = times["adamw fused" if name.startswith("adamw") else "clip ours"]
                ratio = paired_ratio(ms, ours)
                rows.append({"model": model_name, "params": n_params, "impl": name,
                             "ms": statistics.median(ms), "ms_all": [round(v, 3) for v in ms],
                             "vs_ours": ratio})  # fmt: skip
                print(f"{model_name:<8} {n_params / 1e6:>7.2f}M {name:<16} "
                      f"{statistics.median(ms):>7.2f}  {fmt_ratio(ratio)}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        machine = machine_info(args, threads_source)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
