"""Training throughput (tokens/s) and MFU of dense vs MoE G1 vs fine-grained MoE G8.

The three models have equal active FLOPs per token: the MoE layers hold E = 8 experts of hidden
d_ff and route each token to k = 2 of them (G = 1) or to k*G = 16 of 64 experts of hidden
d_ff/8 (G = 8); the dense model's FFN has hidden k*d_ff. Each full optimizer step (forward,
backward over the whole batch, gradient clipping, AdamW, router-bias update) is the trainer's
own `moescale.train.step.train_step`. The implementations run interleaved, round by
round, so a noisy machine slows all of them alike; the median step time is reported. MFU =
exact active FLOPs per token x tokens/s / the trainer's peak (a quiet measurement of a large
matmul, cached per machine; see moescale.train.device.device_peak_flops).

    python benchmarks/train_step.py [--json OUT] [--repeats 5] [--batch 16] [--seq-len 256]
        [--load N] [--threads N]   # N busy processes during the measurement; torch threads
        [--compile]                # torch.compile each model, as train.compile does
    python benchmarks/train_step.py --d-model 768 --layers 12 --heads 12 --d-ff 1536 \
        --vocab 32768 --seq-len 1024 --batch 32 --compile   # the ~125M-active GPU model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import (  # noqa: E402
    add_machine_flags,
    apply_threads,
    busy_load,
    fmt_ratio,
    machine_info,
    paired_ratio,
    sync,
)

from moescale.accounting import count  # noqa: E402
from moescale.config import ModelConfig, MoEConfig, TrainConfig  # noqa: E402
from moescale.model import build_model  # noqa: E402
from moescale.model.experts import exclude_from_compile  # noqa: E402
from moescale.train.device import autocast_for, device_peak_flops  # noqa: E402
from moescale.train.optim import build_optimizer  # noqa: E402
from moescale.train.step import StepOptions, train_step  # noqa: E402


def model_configs(args: argparse.Namespace) -> dict[str, ModelConfig]:
    common = dict(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                  vocab_size=args.vocab, seq_len=args.seq_len)  # fmt: skip
    k = args.top_k
    return {
        "dense": ModelConfig(d_ff=k * args.d_ff, **common),
        "moe_g1": ModelConfig(
            d_ff=args.d_ff, moe=MoEConfig(experts=args.experts, top_k=k), **common
        ),  # fmt: skip
        "moe_g8": ModelConfig(
            d_ff=args.d_ff, moe=MoEConfig(experts=args.experts, top_k=k, granularity=8), **common
        ),  # fmt: skip
    }


def make_step(cfg: ModelConfig, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    train_cfg = TrainConfig()
    opt = build_optimizer(model, train_cfg, device.type)
    opts = StepOptions(1, train_cfg.grad_clip, cfg.moe, autocast_for(device))
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len), generator=gen).to(device)
    y = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len), generator=gen).to(device)

    forward = None
    if args.compile:  # as the trainer's train.compile does
        exclude_from_compile()
        forward = torch.compile(model, mode=args.compile_mode)

    def step() -> None:
        train_step(model, opt, x, y, opts, forward=forward)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=1024, help="expert-unit hidden size (G = 1)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile each model")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    add_machine_flags(ap)
    args = ap.parse_args()

    threads_source = apply_threads(args)
    device = torch.device(args.device)
    peak = device_peak_flops(device)
    cfgs = model_configs(args)
    steps = {name: make_step(cfg, args, device) for name, cfg in cfgs.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    with busy_load(args.load):
        load_before = os.getloadavg()
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        for _ in range(args.repeats):
            for name, step in steps.items():
                sync(str(device))
                t = time.perf_counter()
                step()
                sync(str(device))
                times[name].append(time.perf_counter() - t)
        load_after = os.getloadavg()

    tokens = args.batch * args.seq_len
    rows = []
    for name, cfg in cfgs.items():
        acct = count(cfg)
        sec = statistics.median(times[name])
        tok_s = tokens / sec
        m = cfg.moe
        rows.append({
            "impl": name,
            "tokens_per_s": tok_s,
            "ms": sec * 1e3,
            "ms_all": [round(t * 1e3, 2) for t in times[name]],
            "tokens_per_s_best": tokens / min(times[name]),  # least disturbed by other load
            "mfu": acct.flops_per_token * tok_s / peak.flops,
            "flops_per_token": acct.flops_per_token,
            "params_total": acct.params_total,
            "params_active": acct.params_active,
            "d_model": cfg.d_model, "n_layers": cfg.n_layers, "d_ff": cfg.d_ff,
            "experts": m.experts if m else 1, "top_k": m.top_k if m else 1,
            "granularity": m.granularity if m else 1,
            "backend": m.backend if m else None,
            "batch": args.batch, "seq_len": args.seq_len,
        })  # fmt: skip
    by = {r["impl"]: r for r in rows}
    for r in rows:  # throughput ratios: the peer's step time over this one's, round by round
        r["vs_g1"] = r["tokens_per_s"] / by["moe_g1"]["tokens_per_s"]
        r["vs_dense"] = r["tokens_per_s"] / by["dense"]["tokens_per_s"]
        r["vs_g1_rounds"] = paired_ratio(times["moe_g1"], times[r["impl"]])
        r["vs_dense_rounds"] = paired_ratio(times["dense"], times[r["impl"]])

    machine = machine_info(args, threads_source)
    machine.update({
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "peak_flops": peak.flops,
        "peak_source": peak.source,
        "compile": args.compile, "compile_mode": args.compile_mode,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    })  # fmt: skip
    print(f"device {machine['device']}, {machine['threads']} threads, {args.load} busy processes, "
          f"peak {peak.flops / 1e9:.1f} GFLOP/s ({peak.source}), load average "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f}; batch {args.batch} x seq {args.seq_len}, "
          f"median of {args.repeats} steps")  # fmt: skip
    print(f"{'impl':<8} {'params':>8} {'active':>8} {'ms/step':>9} {'tok/s':>9} {'MFU':>6} "
          f"{'vs G1':>6} {'vs dense':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['impl']:<8} {r['params_total'] / 1e6:>7.2f}M {r['params_active'] / 1e6:>7.2f}M "
              f"{r['ms']:>9.1f} {r['tokens_per_s']:>9.0f} {100 * r['mfu']:>5.1f}% "
              f"{r['vs_g1']:>6.2f} {r['vs_dense']:>8.2f}")  # fmt: skip
    print("per-round throughput ratios, median [quartiles]: "
          f"G8/G1 {fmt_ratio(by['moe_g8']['vs_g1_rounds'])}, "
          f"G1/dense {fmt_ratio(by['moe_g1']['vs_dense_rounds'])}, "
          f"G8/dense {fmt_ratio(by['moe_g8']['vs_dense_rounds'])}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
