"""Forward+backward time of one MoE layer: our backends vs transformers' MoE block vs a dense FFN.

All implementations run in the same process on the same inputs and weights, interleaved, so the
ratios are meaningful even on a noisy machine. Peers:
- `grouped`, `reference`: moescale's expert backends (softmax_after_topk router); on CPU also
  `loop`, grouped's per-expert loop in Python (grouped runs it in C++ there, model/cpu_ext.py).
- `hf_default`, `hf_fastest`: the installed transformers' Qwen3-MoE sparse block with the same
  weights, using the experts implementation a model would pick by default, and the fastest of
  the ones it offers here (`eager`, `batched_mm`, `grouped_mm`). Qwen3's router (softmax, top-k,
  renormalise) equals softmax_after_topk, so the outputs are checked to agree.
- `torchtitan`: torchtitan's own MoE layer (router, local token dispatcher, GroupedExperts on
  torch._grouped_mm) with the same weights, where torchtitan imports (the GPU machine gets it
  as wheels: benchmarks/gpu_wheels.sh). Its experts always compute in bf16, whatever --dtype.
- `dense`: a SwiGLU FFN of hidden k*d_ff: the same active FLOPs, the practical speed limit.
- `gemm_floor`: the layer's expert matmul FLOPs alone, as the six dense matmuls of a forward
  and backward into preallocated outputs; no router, activation or token copies. No
  implementation of the layer in the same precision does less work, and these matmuls run near
  the machine's peak (the run prints how near), so hf_default/gemm_floor is about the most by
  which any implementation could beat transformers' block on this machine.

    python benchmarks/moe_layer.py [--json OUT] [--granularity 1 2 4 8] [--repeats 5]
        [--load N] [--threads N]   # N busy processes during the measurement; torch threads
    python benchmarks/moe_layer.py --device cuda --dtype bf16 --d-model 2048 --d-ff 8192 \
        --tokens 32768 --granularity 1 8     # adds TFLOP/s vs a plain matmul of equal FLOPs
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import warnings
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

from moescale.config import MoEConfig  # noqa: E402
from moescale.model.moe import MoEFFN, SwiGLU  # noqa: E402

HF_IMPLS = ("eager", "batched_mm", "grouped_mm")
PEERS = ("loop", "hf_default", "hf_fastest", "hf_eager", "torchtitan", "dense", "gemm_floor")


def hf_block(layer: MoEFFN, d_model: int, d_ff: int, impl: str):
    """transformers' Qwen3-MoE block holding `layer`'s weights, or None if unavailable."""
    try:
        from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    except ImportError:
        return None
    cfg = layer.cfg
    hf_cfg = Qwen3MoeConfig(
        hidden_size=d_model,
        moe_intermediate_size=cfg.expert_hidden(d_ff),
        num_experts=cfg.routed_experts,
        num_experts_per_tok=cfg.active_experts,
        norm_topk_prob=True,
        hidden_act="silu",
    )
    hf_cfg._experts_implementation = impl
    block = Qwen3MoeSparseMoeBlock(hf_cfg)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.weight)
        block.experts.gate_up_proj.copy_(layer.w13_XDH.transpose(1, 2))
        # our layer multiplies the experts' output by out_scale (k*G with the default
        # expert_init); folded into the down-projection the two blocks compute the same
        block.experts.down_proj.copy_(layer.w2_XFD.transpose(1, 2) * layer.out_scale)
    return block


@functools.cache
def titan_api() -> dict | None:
    """torchtitan's MoE classes, or None (the reason printed once) where it does not import."""
    try:
        from torchtitan.models.common.linear import Linear
        from torchtitan.models.common.moe import (
            GroupedExperts,
            MoE,
            RoutedExperts,
            TokenChoiceTopKRouter,
        )
        from torchtitan.models.common.token_dispatcher import LocalTokenDispatcher
    except ImportError as exc:
        print(f"    (torchtitan left out: {exc}; benchmarks/gpu_wheels.sh fetches it)")
        return None
    # its router asks for a float32 autocast around the gate, which CPU autocast refuses with
    # a warning and skips: the gate then runs in the weights' dtype, float32 here
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype")
    return dict(
        Linear=Linear,
        GroupedExperts=GroupedExperts,
        MoE=MoE,
        RoutedExperts=RoutedExperts,
        Router=TokenChoiceTopKRouter,
        Dispatcher=LocalTokenDispatcher,
    )


def titan_block(layer: MoEFFN, d_model: int, d_ff: int):
    """torchtitan's MoE layer holding `layer`'s weights (input (B, L, D)), or None.

    Its router (softmax over all experts, top-k, renormalised) equals softmax_after_topk, and
    its route_scale multiplies the kept weights as our out_scale does. GroupedExperts keeps
    w1 and w3 as (E, F, D) and w2 as (E, D, F), nn.Linear's (out, in) per expert."""
    api = titan_api()
    if api is None:
        return None
    cfg = layer.cfg
    n_exp, k, hid = cfg.routed_experts, cfg.active_experts, cfg.expert_hidden(d_ff)
    config = api["MoE"].Config(
        num_experts=n_exp,
        routed_experts=api["RoutedExperts"].Config(
            inner_experts=api["GroupedExperts"].Config(
                dim=d_model, hidden_dim=hid, num_experts=n_exp
            ),
            token_dispatcher=api["Dispatcher"].Config(num_experts=n_exp, top_k=k),
        ),
        router=api["Router"].Config(
            num_experts=n_exp,
            gate=api["Linear"].Config(in_features=d_model, out_features=n_exp),
            top_k=k,
            score_func="softmax",
            route_norm=True,
            route_scale=layer.out_scale,
        ),
        load_balance_coeff=None,  # no expert bias: ours is zero and only steers selection
    )
    block = config.build().to(layer.w13_XDH.device)
    experts = block.routed_experts.inner_experts
    with torch.no_grad():
        block.router.gate.weight.copy_(layer.router.weight)
        experts.w1_EFD.copy_(layer.w13_XDH[..., :hid].transpose(1, 2))  # gate
        experts.w3_EFD.copy_(layer.w13_XDH[..., hid:].transpose(1, 2))  # up
        experts.w2_EDF.copy_(layer.w2_XFD.transpose(1, 2))
    return block


def titan_check(layer: MoEFFN, d_model: int, d_ff: int, x: torch.Tensor) -> str | None:
    """Why torchtitan's layer cannot run here (its grouped GEMM may be missing on a device), or
    None once its output agrees with ours. Compared on float32 copies whatever --dtype, so that
    both routers see the same float32 logits (in bf16 near-ties would pick other experts);
    its experts still compute in bf16, hence the bf16-sized tolerance."""
    ours = copy.deepcopy(layer).float()
    theirs = titan_block(ours, d_model, d_ff)
    xs = x.detach()[:4096].float()
    with torch.no_grad():
        want = ours(xs)[0]
        try:
            got = theirs(xs[None])[0]
        except (RuntimeError, NotImplementedError) as exc:
            return str(exc).splitlines()[0][:90]
    err = float((want - got).abs().max() / want.abs().max())
    if not err <= 2e-2:
        raise SystemExit(f"torchtitan's layer disagrees with ours: rel err {err}")
    return None


def hf_default_impl() -> str | None:
    """The experts implementation a transformers model picks when none is requested."""
    try:
        from transformers import Qwen3MoeConfig, Qwen3MoeModel
    except ImportError:
        return None
    tiny = Qwen3MoeConfig(
        hidden_size=16,
        intermediate_size=32,
        moe_intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        vocab_size=32,
        head_dim=8,
    )
    return Qwen3MoeModel(tiny).config._experts_implementation


def available_bytes() -> float:
    """Memory the OS can still give this process (Linux MemAvailable; else free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def batched_mm_too_big(args: argparse.Namespace, dtype: torch.dtype) -> str | None:
    """transformers' batched_mm copies every routed slot's expert weights (tokens·k·3·d_ff·d
    values, whatever G). Where that cannot fit it fails, and the failed allocation changes the
    allocator's state for every peer measured after it in this process (at G 1, transformers'
    grouped_mm then ran 1.8x slower, dense 1.5x, ours 1.3x), so it is left out instead."""
    if not args.device.startswith("cpu"):
        return None  # CUDA reports the out-of-memory error cleanly
    need = args.tokens * args.top_k * 3 * args.d_ff * args.d_model * dtype.itemsize
    have = available_bytes()
    return f"needs {need / 1e9:.0f} GB, {have / 1e9:.0f} GB available" if need > have else None


def step_fn(module, x, dy, add_batch_dim=False):
    """One forward+backward of `module` on leaf input x with a fixed random output gradient."""

    def step():
        x.grad = None
        for p in module.parameters():
            p.grad = None
        y = module(x[None] if add_batch_dim else x)
        y = y[0] if isinstance(y, tuple) else y  # MoEFFN returns (y, stats)
        (y.reshape(dy.shape) * dy).sum().backward()

    return step


def gemm_floor_fn(tokens: int, d_model: int, d_ff: int, top_k: int, device, dtype):
    """The layer's expert matmuls as dense ones of equal FLOPs: forward x @ W13 (gate and up,
    k*d_ff each) and g @ W2; backward dg = dy @ W2^T, dW2 = g^T @ dy, dx = dab @ W13^T and
    dW13 = x^T @ dab. Outputs are preallocated so that no allocation or page fault is timed."""
    hid = top_k * d_ff

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    t, d = tokens, d_model
    x, dy, dx, y = (rand(t, d) for _ in range(4))
    g, dg = rand(t, hid), rand(t, hid)
    ab, dab = rand(t, 2 * hid), rand(t, 2 * hid)
    w13, dw13 = rand(d, 2 * hid), rand(d, 2 * hid)
    w2, dw2 = rand(hid, d), rand(hid, d)

    def step():
        torch.mm(x, w13, out=ab)
        torch.mm(g, w2, out=y)
        torch.mm(dy, w2.T, out=dg)
        torch.mm(g.T, dy, out=dw2)
        torch.mm(dab, w13.T, out=dx)
        torch.mm(x.T, dab, out=dw13)

    return step


def matmul_tflops(tokens: int, d_model: int, width: int, device, dtype, repeats: int) -> float:
    a = torch.randn(tokens, d_model, device=device, dtype=dtype)
    b = torch.randn(d_model, width, device=device, dtype=dtype)
    ms = statistics.median(measure({"mm": lambda: a @ b}, repeats, str(device))["mm"])
    return 2 * tokens * d_model * width / (ms * 1e-3) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--granularity", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--no-reference", action="store_true", help="skip the slow reference loop")
    ap.add_argument("--json", help="write the rows here")
    add_machine_flags(ap)
    args = ap.parse_args()
    threads_source = apply_threads(args)
    with busy_load(args.load):
        rows, default_impl = run_all(args)
    rows += summarize(rows, args)
    if args.json:
        machine = machine_info(args, threads_source)
        machine.update(device=args.device, hf_default_impl=default_impl)
        if args.device.startswith("cuda"):
            machine["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


def peer_fns(args: argparse.Namespace, layer: MoEFFN, x, dy) -> dict:
    """One fwd+bwd step per implementation, on the same inputs; the peers that hold our
    weights are checked to compute our output first."""
    dtype, device, g = layer.w13_XDH.dtype, layer.w13_XDH.device, layer.cfg.granularity
    d, ff, k = args.d_model, args.d_ff, args.top_k
    fns = {"grouped": step_fn(layer, x, dy)}
    backends = ["loop"] if not args.device.startswith("cuda") else []  # grouped's Python twin
    for backend in backends + ([] if args.no_reference else ["reference"]):
        peer = MoEFFN(d, ff, MoEConfig(**{**layer.cfg.__dict__, "backend": backend}))
        peer.load_state_dict(layer.state_dict())
        fns[backend] = step_fn(peer.to(device=device, dtype=dtype), x, dy)
    blocks = {}
    for impl in HF_IMPLS:
        if impl == "batched_mm" and (skip := batched_mm_too_big(args, dtype)):
            print(f"    (hf_batched_mm left out: {skip})")
            continue
        block = hf_block(layer, d, ff, impl)
        if block is not None:
            block = block.to(device=device, dtype=dtype)
            blocks[impl] = block
            fns[f"hf_{impl}"] = step_fn(block, x, dy, add_batch_dim=True)
    if blocks and dtype == torch.float32:  # same routing and weights: outputs must agree
        # (in bf16, HF's bf16 router logits pick other experts on near-ties; not comparable)
        with torch.no_grad():
            ours = layer(x)[0].float()
            theirs = blocks["eager"](x[None])[0].float()
        err = float((ours - theirs).abs().max() / ours.abs().max())
        if err > 1e-4:
            raise SystemExit(f"transformers block disagrees with ours at G={g}: rel err {err}")
    if (titan := titan_block(layer, d, ff)) is not None:
        if skip := titan_check(layer, d, ff, x):
            print(f"    (torchtitan left out: {skip})")
        else:
            titan = titan.to(device=device, dtype=dtype)
            fns["torchtitan"] = step_fn(titan, x, dy, add_batch_dim=True)
    fns["dense"] = step_fn(SwiGLU(d, k * ff).to(device=device, dtype=dtype), x, dy)
    fns["gemm_floor"] = gemm_floor_fn(args.tokens, d, ff, k, device, dtype)
    return fns


def timing_rows(g: int, rounds: dict, default_impl: str | None, args) -> list[dict]:
    """The rows of one granularity, printed as they are made; hf_fastest and hf_default
    repeat the rounds of the transformers implementation they name."""
    notes = {"torchtitan": "experts in bf16"} if args.dtype == "fp32" else {}
    hf = {name[3:]: t for name, t in rounds.items() if name.startswith("hf_")}
    if hf:
        fastest = min(hf, key=lambda impl: statistics.median(hf[impl]))
        rounds["hf_fastest"] = hf[fastest]
        notes["hf_fastest"] = fastest
        if default_impl in hf:
            rounds["hf_default"] = hf[default_impl]
            notes["hf_default"] = default_impl
    ms = {name: statistics.median(t) for name, t in rounds.items()}
    order = ["grouped", "loop", "reference", "hf_default", "hf_fastest", "torchtitan", "dense",
             "gemm_floor"]  # fmt: skip
    rows = []
    for name in order + sorted(k_ for k_ in ms if k_.startswith("hf_") and k_ not in order):
        if name not in ms:
            continue
        row = {
            "impl": name,
            "granularity": g,
            "ms": round(ms[name], 3),
            "ms_all": [round(t, 3) for t in rounds[name]],
            "d_model": args.d_model,
            "d_ff": args.d_ff,
            "experts": args.experts,
            "top_k": args.top_k,
            "tokens": args.tokens,
            "dtype": args.dtype,
            "device": args.device,
        }
        if name.startswith("hf_") and name in notes:
            row["hf_impl"] = notes[name]
        if name == "torchtitan":
            row["experts_dtype"] = "bf16"  # GroupedExperts casts to bf16 whatever the weights
        rows.append(row)
        print(
            f"{g:>3} {name:<12} {ms[name]:>9.1f} {ms[name] / ms['grouped']:>10.2f}x  "
            f"{notes.get(name, '')}"
        )
    return rows


def run_all(args: argparse.Namespace) -> tuple[list[dict], str | None]:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    torch.manual_seed(0)
    default_impl = hf_default_impl()
    d, ff, k = args.d_model, args.d_ff, args.top_k
    rows = []
    header = f"{'G':>3} {'impl':<12} {'ms':>9} {'vs grouped':>11}  note"
    print(
        f"MoE layer fwd+bwd: d_model {d}, d_ff {ff}, E {args.experts}, k {k}, "
        f"{args.tokens} tokens, {args.dtype} on {args.device} ({torch.get_num_threads()} threads, "
        f"{args.load} busy processes)"
    )
    print(header)
    print("-" * len(header))
    square = matmul_tflops(4096, 4096, 4096, device, dtype, args.repeats)  # near the peak
    for g in args.granularity:
        cfg = MoEConfig(experts=args.experts, granularity=g, top_k=k, backend="grouped")
        layer = MoEFFN(d, ff, cfg)
        layer.init_weights(0.02, 0.02)
        layer = layer.to(device=device, dtype=dtype)
        x = torch.randn(args.tokens, d, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(args.tokens, d, device=device, dtype=dtype)
        rounds = measure(peer_fns(args, layer, x, dy), args.repeats, args.device)
        rows += timing_rows(g, rounds, default_impl, args)
        ms_grouped = statistics.median(rounds["grouped"])
        flops = 3 * 2 * args.tokens * k * 3 * d * ff  # expert matmuls, fwd + bwd
        if args.device.startswith("cuda"):
            tf = flops / (ms_grouped * 1e-3) / 1e12
            peak = matmul_tflops(args.tokens, d, 3 * k * ff, device, dtype, args.repeats)
            rows.append(
                {
                    "impl": "grouped_tflops",
                    "granularity": g,
                    "tflops": tf,
                    "matmul_tflops": peak,
                    "ratio": tf / peak,
                }
            )
            print(
                f"    grouped {tf:.1f} TFLOP/s vs plain matmul of equal FLOPs "
                f"{peak:.1f} TFLOP/s ({tf / peak:.0%})"
            )
        floor_tf = flops / (statistics.median(rounds["gemm_floor"]) * 1e-3) / 1e12
        rows.append(
            {
                "impl": "floor_tflops",
                "granularity": g,
                "tflops": floor_tf,
                "square_matmul_tflops": square,
                "ratio": floor_tf / square,
            }
        )
        print(
            f"    gemm_floor {floor_tf * 1e3:.0f} GFLOP/s, {floor_tf / square:.0%} of a 4096^3 "
            f"matmul's {square * 1e3:.0f} GFLOP/s (how near the floor is to the machine's peak)"
        )
    print()
    return rows, default_impl


def summarize(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """The ratios the README quotes, each the median and quartiles of its per-round ratios
    (rows of kind "ratio" in the JSON): each peer over ours, and transformers' default block
    over the matmul floor, about the most by which any implementation could beat it."""
    print("time ratios to grouped: median [quartiles] over rounds")
    out = []
    for g in args.granularity:
        by = {r["impl"]: r["ms_all"] for r in rows if r["granularity"] == g and "ms_all" in r}
        parts = [f"G={g}:"]
        pairs = [(peer, "grouped") for peer in PEERS] + [("hf_default", "gemm_floor")]
        for num, den in pairs:
            if num in by and den in by:
                ratio = paired_ratio(by[num], by[den])
                out.append({"impl": "ratio", "granularity": g, "of": f"{num}/{den}", **ratio})
                parts.append(f"{num}/{den} {fmt_ratio(ratio)}")
        print("  ".join(parts))
    return out


if __name__ == "__main__":
    main()
