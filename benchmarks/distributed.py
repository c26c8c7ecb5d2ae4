"""Training-step throughput under data and expert parallelism on one machine (gloo, CPU).

One config per architecture (a small dense model and a small fine-grained MoE, G = 4), trained
from the same seed on the same global batches in these settings:
- `plain`: one process, no process group: `train_step` as the trainer calls it (GradSync).
- `ddp1`: one process in a gloo group of size 1, the model wrapped in DDP exactly as
  `moescale.train.distributed.replicate` wraps it for several ranks (`replicate` returns the
  plain model for one rank): what the wrapper itself costs. Target: >= 0.95 x plain.
- `ddp2`: two processes (gloo on 127.0.0.1), each training its half of the global batch
  through `replicate(model, cfg, World(rank, 2, rank, 2), cpu)`.
- `ep2` (MoE only): as ddp2 with `parallel.expert: 2` (each layer's experts split over the two
  ranks), plus the time spent in the all_to_all exchanges (moescale.model.parallel._AllToAll,
  forward and backward, timed in the benchmark's rank processes only), per MoE layer and step.

The config sets `train.micro_batch_size` = batch / 2, so one process runs 2 micro-batches and
each of two ranks 1, as the trainer would (`check_split`), and the MoE uses
`balance_scope: micro_batch`: then every setting optimises the same objective, and the loss
trajectory of each is checked against plain's (max relative difference over all steps, 1e-5).
plain, ddp1 and ddp2 then compute the same sums in the same order; ep2 runs the experts on rows
grouped by source rank, so it agrees to rounding at first and the difference grows with
training (`steps_within_tol`: how many leading steps agree within 1e-5).

The rank processes start first and wait; then every setting runs its warmup, then the repeats
round by round (`--steps` optimizer steps each, the order reversed every other round), so a
noisy machine slows all of them alike; the median step time is reported and tokens/s counts
the global batch. plain and ddp1 use the thread policy's threads (benchmarks/common.py); each
rank of ddp2 / ep2 half of them (at least 1).

    python benchmarks/distributed.py [--json OUT] [--arch dense|moe|both] [--repeats 9]
        [--steps 3] [--batch 16] [--seq-len 128] [--load N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import add_machine_flags, apply_threads, busy_load, machine_info  # noqa: E402

from moescale.accounting import count  # noqa: E402
from moescale.config import Config, config_from_dict  # noqa: E402
from moescale.model import build_model  # noqa: E402
from moescale.train.device import autocast_for  # noqa: E402
from moescale.train.distributed import (  # noqa: E402
    GradSync,
    Replicated,
    World,
    check_split,
    local_slice,
    replicate,
)
from moescale.train.optim import build_optimizer  # noqa: E402
from moescale.train.step import StepOptions, train_step  # noqa: E402

CPU = torch.device("cpu")
TOL = 1e-5
RANKS = 2
DEADLINE_S = 600.0  # a rank process silent for this long is taken as hung


def make_config(args: argparse.Namespace, arch: str, expert: int = 1) -> Config:
    model: dict[str, Any] = {
        "d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads,
        "d_ff": args.d_ff if arch == "moe" else args.top_k * args.d_ff,
        "vocab_size": args.vocab, "seq_len": args.seq_len,
    }  # fmt: skip
    if arch == "moe":
        model["moe"] = {"experts": args.experts, "top_k": args.top_k,
                        "granularity": args.granularity,
                        "balance_scope": "micro_batch"}  # fmt: skip
    train = {"batch_size": args.batch, "micro_batch_size": args.batch // RANKS}
    return config_from_dict({"model": model, "train": train, "parallel": {"expert": expert}})


def make_batches(args: argparse.Namespace, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n global batches of a learnable stream (next = 7 * token + 0..2 mod vocab), the same in
    every process."""
    out = []
    for i in range(n):
        gen = torch.Generator().manual_seed(1000 + i)
        tok = [torch.randint(0, args.vocab, (args.batch,), generator=gen)]
        for _ in range(args.seq_len):
            step = torch.randint(0, 3, (args.batch,), generator=gen)
            tok.append((tok[-1] * 7 + step) % args.vocab)
        seq = torch.stack(tok, 1)
        out.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return out


def ddp_size1(model: torch.nn.Module) -> tuple[torch.nn.Module, GradSync]:
    """What `replicate` builds for DDP (no expert shards, no noise hook), on a group of one."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model, forward_sync_buffers=False, gradient_as_bucket_view=True)
    return ddp, Replicated(size=1, wrapper=ddp)


class Trainee:
    """One setting's model and optimizer in this process; `run(n)` trains the next n steps of
    the shared batch sequence and returns the seconds it took."""

    def __init__(self, cfg: Config, world: World, batches: list, ddp1: bool = False) -> None:
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model)
        if ddp1:
            self.forward, self.sync = ddp_size1(self.model)
        else:  # plain: (model, GradSync()), as replicate returns for one rank
            self.forward, self.sync = replicate(self.model, cfg, world, CPU)
        self.opt = build_optimizer(self.model, cfg.train, "cpu")  # after wrapping, as trainer
        self.opts = StepOptions(check_split(cfg, world), cfg.train.grad_clip, cfg.model.moe,
                                autocast_for(CPU))  # fmt: skip
        self.world, self.batches, self.losses = world, batches, []
        self.last_a2a = 0.0

    def run(self, n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            x, y = self.batches[len(self.losses)]
            x, y = local_slice(x, self.world), local_slice(y, self.world)
            res = train_step(self.model, self.opt, x, y, self.opts,
                             forward=self.forward, sync=self.sync)  # fmt: skip
            self.losses.append(res.loss)
        return time.perf_counter() - t


class AllToAllClock:
    """Seconds spent inside `_AllToAll.forward` and `.backward` (both blocking on CPU/gloo)."""

    def __init__(self) -> None:
        from moescale.model.parallel import _AllToAll

        self.total = 0.0

        def timed(fn):  # noqa: ANN001, ANN202
            def wrapper(ctx, *a):  # noqa: ANN001, ANN002, ANN202
                t = time.perf_counter()
                try:
                    return fn(ctx, *a)
                finally:
                    self.total += time.perf_counter() - t

            return staticmethod(wrapper)

        _AllToAll.forward = timed(_AllToAll.forward)
        _AllToAll.backward = timed(_AllToAll.backward)


def rank_worker(rank: int, spec: dict, port: int, cmds: list, results: Any) -> None:
    """One rank of ddp2 / ep2: build, report ready, then run each command's n steps between
    barriers until told None; last, send the loss trajectory."""
    torch.set_num_threads(spec["threads"])  # before any compute
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=RANKS, timeout=timedelta(minutes=5))  # fmt: skip
    try:
        args = spec["args"]
        cfg = make_config(args, spec["arch"], spec["expert"])
        batches = make_batches(args, spec["n_batches"])
        trainee = Trainee(cfg, World(rank, RANKS, rank, RANKS), batches)
        clock = AllToAllClock() if spec["expert"] > 1 else None
        results.put((rank, "ready", None))
        while (n := cmds[rank].get()) is not None:
            if clock:
                clock.total = 0.0
            dist.barrier()
            dt = trainee.run(n)
            dist.barrier()
            results.put((rank, dt, clock.total if clock else 0.0))
        results.put((rank, "losses", trainee.losses))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankGroup:
    """ddp2 / ep2: two rank processes driven by commands; `run(n)` as Trainee's (the slower
    rank's time between the barriers)."""

    def __init__(self, args: argparse.Namespace, arch: str, expert: int, threads: int,
                 n_batches: int) -> None:  # fmt: skip
        import torch.multiprocessing as mp

        spawn = mp.get_context("spawn")
        self.cmds = [spawn.Queue() for _ in range(RANKS)]
        self.results = spawn.Queue()
        spec = {"args": args, "arch": arch, "expert": expert, "threads": threads,
                "n_batches": n_batches}  # fmt: skip
        self.ctx = mp.start_processes(rank_worker, args=(spec, free_port(), self.cmds,
                                      self.results), nprocs=RANKS, join=False,
                                      start_method="spawn")  # fmt: skip
        self.losses: list[float] = []
        self.last_a2a = 0.0

    def collect(self) -> list[tuple]:
        got, deadline = [], time.monotonic() + DEADLINE_S
        while len(got) < RANKS:
            try:
                got.append(self.results.get(timeout=1.0))
            except queue.Empty:
                self.ctx.join(timeout=0)  # raises if a rank failed
                if time.monotonic() > deadline:
                    raise TimeoutError("the rank processes did not answer") from None
        return sorted(got, key=lambda r: r[0])

    def run(self, n: int) -> float:
        for q in self.cmds:
            q.put(n)
        got = self.collect()
        self.last_a2a = statistics.mean(r[2] for r in got)
        return max(r[1] for r in got)

    def close(self) -> None:
        for q in self.cmds:
            q.put(None)
        self.losses = self.collect()[0][2]
        while not self.ctx.join(timeout=5.0):
            pass

    def kill(self) -> None:
        for p in self.ctx.processes:
            if p.is_alive():
                p.kill()


def measure(peers: dict[str, Any], args: argparse.Namespace) -> dict[str, dict]:
    """Warmup, then the repeats round by round, every other round in reverse order; per
    setting the step times (s) and all_to_all seconds per step."""
    for p in peers.values():
        p.run(args.warmup)
    out = {name: {"times": [], "a2a": []} for name in peers}
    names = list(peers)
    for i in range(args.repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            dt = peers[name].run(args.steps)
            out[name]["times"].append(dt / args.steps)
            out[name]["a2a"].append(peers[name].last_a2a / args.steps)
    return out


def run_arch(args: argparse.Namespace, arch: str, threads: int) -> list[dict]:
    """Every setting of one architecture; its rows."""
    cfg = make_config(args, arch)
    n_batches = args.warmup + args.repeats * args.steps
    half = max(1, threads // RANKS)
    groups = {"ddp2": RankGroup(args, arch, 1, half, n_batches)}
    if arch == "moe":
        groups["ep2"] = RankGroup(args, arch, RANKS, half, n_batches)
    try:
        for g in groups.values():
            g.collect()  # ready
        batches = make_batches(args, n_batches)
        peers: dict[str, Any] = {"plain": Trainee(cfg, World(), batches),
                                 "ddp1": Trainee(cfg, World(), batches, ddp1=True)}  # fmt: skip
        peers.update(groups)
        measured = measure(peers, args)
        for g in groups.values():
            g.close()
    finally:
        for g in groups.values():
            g.kill()
    return make_rows(args, arch, cfg, peers, measured, threads, half)


def rel_diffs(a: list[float], b: list[float]) -> list[float]:
    """Per step |a - b| / |b| of two loss trajectories (inf if their lengths differ)."""
    if len(a) != len(b):
        return [float("inf")]
    return [abs(x - y) / abs(y) for x, y in zip(a, b, strict=True)]


def steps_within(diffs: list[float]) -> int:
    """How many leading steps agree within TOL."""
    return next((i for i, d in enumerate(diffs) if d > TOL), len(diffs))


def make_rows(args: argparse.Namespace, arch: str, cfg: Config, peers: dict, measured: dict,
              threads: int, half: int) -> list[dict]:  # fmt: skip
    tokens = args.batch * args.seq_len
    acct, m = count(cfg.model), cfg.model.moe
    n_moe = cfg.model.n_layers  # every block is MoE (moe.every = 1)
    rows = []
    for name, p in peers.items():
        times, ranks = measured[name]["times"], 1 if name in ("plain", "ddp1") else RANKS
        sec = statistics.median(times)
        diffs = rel_diffs(p.losses, peers["plain"].losses)
        diff = max(diffs)
        a2a = statistics.median(measured[name]["a2a"]) / n_moe if name == "ep2" else None
        rows.append({
            "arch": arch, "setting": name, "ranks": ranks,
            "threads_per_rank": threads if ranks == 1 else half,
            "tokens_per_s": tokens / sec, "ms": sec * 1e3,
            "ms_all": [round(t * 1e3, 2) for t in times],
            "tokens_per_s_best": tokens / min(times),  # least disturbed by other load
            "micro_batches_per_rank": args.batch // ranks // (args.batch // RANKS),
            "loss_final": p.losses[-1], "loss_max_rel_diff_vs_plain": diff,
            "losses": p.losses,
            "loss_matches_plain": diff <= TOL, "steps_within_tol": steps_within(diffs),
            "all_to_all_ms_per_moe_layer": None if a2a is None else a2a * 1e3,
            "all_to_all_frac_of_step": None if a2a is None else a2a * n_moe / sec,
            "params_total": acct.params_total, "params_active": acct.params_active,
            "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers, "d_ff": cfg.model.d_ff,
            "experts": m.experts if m else 1, "top_k": m.top_k if m else 1,
            "granularity": m.granularity if m else 1,
            "batch": args.batch, "seq_len": args.seq_len, "steps_per_repeat": args.steps,
        })  # fmt: skip
    plain = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_plain"] = r["tokens_per_s"] / plain
        # the median of each round's ratio: robust to load that comes and goes between rounds
        pairs = zip(measured["plain"]["times"], measured[r["setting"]]["times"], strict=True)
        r["vs_plain_paired"] = statistics.median(a / b for a, b in pairs)
    return rows


def print_table(rows: list[dict], machine: dict, args: argparse.Namespace) -> None:
    lb, la = machine["loadavg_before"], machine["loadavg_after"]
    print(f"cpu, {machine['threads']} threads ({machine['threads_source']}), {args.load} busy "
          f"processes, load average {lb[0]:.2f} -> {la[0]:.2f}; global batch {args.batch} x seq "
          f"{args.seq_len}, median of {args.repeats} repeats x {args.steps} steps")  # fmt: skip
    print(f"{'arch':<6} {'setting':<7} {'ranks':>5} {'thr/rk':>6} {'ms/step':>8} {'tok/s':>7} "
          f"{'vs plain':>8} {'loss':>8} {'rel diff':>9} {'a2a ms/layer':>12}")  # fmt: skip
    for r in rows:
        a2a = r["all_to_all_ms_per_moe_layer"]
        a2a_s = f"{a2a:.1f} ({100 * r['all_to_all_frac_of_step']:.0f}%)" if a2a is not None else "-"
        diff = "-" if r["setting"] == "plain" else f"{r['loss_max_rel_diff_vs_plain']:.1e}"
        print(f"{r['arch']:<6} {r['setting']:<7} {r['ranks']:>5} {r['threads_per_rank']:>6} "
              f"{r['ms']:>8.1f} {r['tokens_per_s']:>7.0f} {r['vs_plain']:>8.3f} "
              f"{r['loss_final']:>8.4f} {diff:>9} {a2a_s:>12}")  # fmt: skip
    for r in rows:
        if r["setting"] == "ddp1":
            verdict = "met" if r["vs_plain"] >= 0.95 else "MISSED"
            print(f"{r['arch']}: ddp1 / plain = {r['vs_plain']:.3f} (target >= 0.95: {verdict}; "
                  f"median of the rounds' ratios {r['vs_plain_paired']:.3f})")  # fmt: skip
        if r["setting"] != "plain" and not r["loss_matches_plain"]:
            print(
                f"{r['arch']} {r['setting']}: loss differs from plain by more than {TOL:g} "
                f"(first {r['steps_within_tol']} of {len(r['losses'])} steps within)"
            )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", choices=["dense", "moe", "both"], default="both")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=512, help="expert-unit hidden size (G = 1)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--granularity", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", "--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    ap.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per repeat")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    add_machine_flags(ap)
    args = ap.parse_args()
    if args.batch % RANKS or args.batch < RANKS:
        ap.error(f"--batch must be a positive multiple of {RANKS}")
    return args


def main() -> None:
    args = parse_args()
    threads_source = apply_threads(args)
    threads = torch.get_num_threads()
    archs = ["dense", "moe"] if args.arch == "both" else [args.arch]
    rows: list[dict] = []
    with busy_load(args.load):
        load_before = os.getloadavg()
        # ddp1's group of one, in this process (the rank processes make their own)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                world_size=1)  # fmt: skip
        try:
            for arch in archs:
                rows += run_arch(args, arch, threads)
        finally:
            dist.destroy_process_group()
        load_after = os.getloadavg()
    machine = machine_info(args, threads_source)
    machine.update({"device": "cpu", "loadavg_before": load_before, "loadavg_after": load_after})
    print_table(rows, machine, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
