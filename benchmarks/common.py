"""What every benchmark shares: a reproducible background load, the thread policy, and the
machine description written beside the rows.

`--load N` starts N busy processes (pure Python loops, one core each) for the duration of the
measurement, so "a machine where something else runs" is a figure anyone can reproduce.
`--threads N` fixes torch's intra-op threads; the default (0) applies moescale's own policy
(`moescale.train.device.choose_threads`) with the N busy processes counted as load, i.e. what a
training run started on that machine would use.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Iterator

import torch

from moescale.train.device import (
    available_cores,
    choose_threads,
    cpu_model,
    keep_freed_memory,
)


def add_machine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--load", type=int, default=0, metavar="N", help="busy processes while measuring"
    )
    parser.add_argument(
        "--threads", type=int, default=0, metavar="N", help="torch threads (0: moescale's policy)"
    )


def _spin() -> None:
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2147483648


@contextlib.contextmanager
def busy_load(n: int) -> Iterator[None]:
    """N processes that keep a core each busy until the block ends."""
    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def apply_threads(args: argparse.Namespace) -> str:
    """Set torch's threads from --threads, or from the policy counting --load as busy cores
    (the load average has not caught up with processes started a second ago)."""
    choice = choose_threads(args.threads, workers=1, extra_busy=args.load)
    torch.set_num_threads(choice.threads)
    args.allocator = keep_freed_memory()  # as the trainer does on CPU
    return choice.reason


def machine_info(args: argparse.Namespace, threads_source: str) -> dict:
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's kernels: AVX2, ...
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "threads": torch.get_num_threads(),
        "threads_source": threads_source,
        "torch": torch.__version__,
        "load_processes": args.load,
        "allocator": getattr(args, "allocator", ""),
    }


def paired_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Ratio of two implementations timed in the same rounds: median and quartiles of the
    per-round ratios. A round's two timings share that moment's load, so this spread is the
    error bar of a quoted ratio."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired_ratio needs equal, non-empty rounds ({len(num)} vs {len(den)})")
    ratios = sorted(a / b for a, b in zip(num, den, strict=True))
    if len(ratios) == 1:
        return {"median": ratios[0], "q25": ratios[0], "q75": ratios[0], "rounds": 1}
    q25, _, q75 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": statistics.median(ratios), "q25": q25, "q75": q75, "rounds": len(ratios)}


def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f} [{r['q25']:.2f}-{r['q75']:.2f}]"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fns: dict, repeats: int, device: str) -> dict[str, list[float]]:
    """ms per call in each round; implementations interleaved round by round to share the
    noise. An implementation that fails (out of memory, say) is reported and left out."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats + 1):  # the first round warms up
        for name in list(times):
            try:
                sync(device)
                t = time.perf_counter()
                fns[name]()
                sync(device)
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                print(f"    ({name} failed here: {str(exc).splitlines()[0][:90]})")
                del times[name]
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: v[1:] for k, v in times.items()}
