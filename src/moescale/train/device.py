"""Where and in what precision a run computes: device, threads, autocast, RNG state, peak FLOP/s.

One place for what depends on the hardware, so the trainer, the benchmarks and (later) the
data/expert-parallel wrappers agree on it. RNG states are captured as tensors and plain Python
values, so a checkpoint holding them loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moescale.errors import ConfigError

logger = logging.getLogger(__name__)

Autocast = Callable[[], contextlib.AbstractContextManager]


def resolve_device(name: str, what: str = "train.device") -> torch.device:
    """`train.device` (or the flag `what`) to a torch device; 'auto' takes CUDA when present.
    Only CPU and CUDA are supported (the kernels and autocast are written for them)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what}: {name!r} is not a device moescale runs on; use auto, cpu, "
                          "cuda or cuda:N")  # fmt: skip
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: {name!r} was asked for but no CUDA device is available; "
                          "use cpu or auto")  # fmt: skip
    return dev


def autocast_for(device: torch.device) -> Autocast:
    """bf16 autocast on CUDA, plain float32 elsewhere (CPU bf16 matmuls are slow and the
    loss curves of CPU runs are the reference ones)."""

    def autocast() -> contextlib.AbstractContextManager:
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return autocast


# ---------------------------------------------------------------------------------------------
# Threads


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers,
    Slurm), not the machine's core count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = 0.25) -> tuple[float, str]:
    """How many cores other processes keep busy right now, and how that was measured.

    Sampled from /proc/stat while this process sleeps, so it sees a job that started a second
    ago and forgets one that just ended; the 1-minute load average (the fallback) lags both by
    about a minute."""
    try:
        b0, t0 = _cpu_times()
        time.sleep(sample_s)
        b1, t1 = _cpu_times()
        cores = os.cpu_count() or 1
        return cores * (b1 - b0) / max(1, t1 - t0), f"{sample_s:g} s CPU sample"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0], "load average"
    except (AttributeError, OSError):
        return 0.0, "no load measure"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def choose_threads(
    setting: int = 0, workers: int | None = None, extra_busy: float = 0.0
) -> ThreadChoice:
    """Intra-op threads for this process. `setting` > 0 is taken as it is; 0 (auto) shares the
    available cores between the `workers` processes of a study ($MOESCALE_WORKERS, default 1)
    and leaves out cores that other processes keep busy (sampled just before this process starts
    computing, plus `extra_busy` processes known to start with it).

    Why not simply all cores: the fine-grained expert loop is many small matmuls, each an OpenMP
    parallel region, and when one of its threads is descheduled by another process every region
    waits for it; on a 2-core machine with one busy process a G 8 layer ran 4x slower with 2
    threads than with 1, while a dense layer barely changed."""
    cores = available_cores()
    if setting > cores:
        logger.warning(f"train.threads {setting} exceeds the {cores} cores this process may use: "
                       "threads that wait for a core slow every step (0 chooses)")  # fmt: skip
    if setting > 0:
        return ThreadChoice(setting, "train.threads")
    workers = workers or int(os.environ.get("MOESCALE_WORKERS", "1") or 1)
    share = max(1, cores // max(1, workers))
    busy, how = busy_cores()
    busy += extra_busy
    free = max(1, min(share, cores - round(busy / max(1, workers))))
    reason = f"{cores} cores available, {workers} worker(s), {busy:.1f} busy ({how})"
    return ThreadChoice(free, reason)


def set_threads(setting: int = 0, workers: int | None = None) -> ThreadChoice:
    """Apply `choose_threads` to torch (intra-op) and log the choice and why. `workers`: the
    processes sharing this machine's cores (torchrun's local ranks); default from the study."""
    choice = choose_threads(setting, workers if workers and workers > 1 else None)
    torch.set_num_threads(choice.threads)
    logger.info("threads: %d (%s)", choice.threads, choice.reason)
    return choice


def keep_freed_memory() -> str:
    """On Linux (glibc), serve large CPU tensors from the heap instead of fresh mmap'd pages,
    and keep freed memory for the next step; returns what was done, for the log.

    By default glibc maps every allocation over a few MB anew and unmaps it when freed, so each
    training step page-faults (and zero-fills) every large activation and gradient again.
    Keeping them measured +13-31 % tokens/s for a dense model and +1-15 % for MoE models on
    the 2-core dev CPU (benchmarks/train_step.py, README). The cost: the process keeps its peak
    memory until it exits, which a training run reaches every step anyway. Set
    $MOESCALE_MALLOC=default to keep glibc's behaviour."""
    import ctypes

    if os.environ.get("MOESCALE_MALLOC", "") == "default":
        return "glibc defaults ($MOESCALE_MALLOC=default)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "allocator untouched (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 2**31 - 1) and libc.mallopt(
            m_trim_threshold, 2**31 - 1
        ) and libc.mallopt(m_top_pad, 256 << 20)  # fmt: skip
    except (OSError, AttributeError):
        return "allocator untouched (no mallopt)"
    return (
        "freed memory kept for reuse (mallopt)" if ok else "allocator untouched (mallopt refused)"
    )


# ---------------------------------------------------------------------------------------------
# Random number generators


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (safe for weights_only loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Peak FLOP/s, the denominator of MFU


def measure_peak_flops(device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """Measured peak FLOP/s of a large matmul on `device` (float32 on CPU, bf16 on CUDA): the
    denominator of MFU on machines without a datasheet number."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), by device name.
DATASHEET_BF16 = {"H100 SXM": 989.4e12, "H100 PCIe": 756.5e12, "H100": 989.4e12,
                  "H200": 989.4e12, "A100": 312e12}  # fmt: skip
QUIET_LOAD = 0.3  # a CPU peak is cached only when fewer cores than this are busy elsewhere


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s, the denominator of MFU
    source: str  # where the number comes from, so MFU can be read for what it is


_PEAK_CACHE: dict[str, Peak] = {}


def cpu_model() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_key(device: torch.device) -> str:
    """What a cached peak is valid for. On CPU also the CPU's model and the kernels ATen picks
    for it (AVX2, AVX512): a cache in a home directory shared by different nodes, or carried
    into a container on another CPU, must not lend one machine's peak to another."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}"
    isa = torch.backends.cpu.get_cpu_capability()
    return (f"{platform.node()}|{cpu_model()}|{isa}|torch {torch.__version__}|"
            f"{torch.get_num_threads()} threads")  # fmt: skip


def _peak_file() -> Path:
    from moescale.data.cache import cache_root

    return cache_root() / "peak_flops.json"


def _read_cached(key: str) -> dict[str, Any] | None:
    try:
        return json.loads(_peak_file().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _write_cached(key: str, flops: float) -> None:
    from moescale.atomic import atomic_write_json

    try:
        table = json.loads(_peak_file().read_text())
    except (OSError, ValueError):
        table = {}
    table[key] = {"flops": flops, "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        atomic_write_json(_peak_file(), table)
    except OSError as exc:
        logger.warning("cannot cache the peak FLOP/s in %s (%s)", _peak_file(), exc)


def _measure(device: torch.device) -> Peak:
    """Measure now; on a quiet CPU cache the result for this machine and thread count."""
    key = _machine_key(device)
    load = busy_cores()[0] if device.type == "cpu" else 0.0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # must not shift the model's initialisation
        flops = measure_peak_flops(str(device))
    if device.type == "cuda" or load < QUIET_LOAD:
        _write_cached(key, flops)
        return Peak(flops, f"measured now, large matmul ({key})")
    return Peak(flops, f"measured now with {load:.1f} cores busy elsewhere: MFU is overstated")


def device_peak_flops(device: torch.device) -> Peak:
    """The peak that MFU divides by, and its source, once per process: $MOESCALE_PEAK_FLOPS;
    else the datasheet's dense bf16 peak of a known GPU; else a quiet measurement of a large
    matmul cached per machine and thread count (a peak measured on a busy machine is low, which
    made the same model read 74-89 % MFU loaded and 30 % quiet); else a measurement now."""
    env = os.environ.get("MOESCALE_PEAK_FLOPS")
    if env:
        return Peak(float(env), "$MOESCALE_PEAK_FLOPS")
    key = _machine_key(device)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        match = next((k for k in DATASHEET_BF16 if k in name), None)
        if match:
            peak = Peak(DATASHEET_BF16[match], f"datasheet dense bf16 peak of {match}")
    cached = None if peak else _read_cached(key)
    if cached:
        peak = Peak(float(cached["flops"]), f"quiet measurement of {cached['measured']} ({key})")
    _PEAK_CACHE[key] = peak or _measure(device)
    return _PEAK_CACHE[key]
