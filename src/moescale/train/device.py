"""Where and in what precision a run computes: device, autocast, RNG state, peak FLOP/s.

One place for what depends on the hardware, so the trainer, the benchmarks and (later) the
data/expert-parallel wrappers agree on it. RNG states are captured as tensors and plain Python
values, so a checkpoint holding them loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from moescale.errors import ConfigError

Autocast = Callable[[], contextlib.AbstractContextManager]


def resolve_device(name: str) -> torch.device:
    """`train.device` to a torch device; 'auto' takes CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available.")
    return torch.device(name)


def autocast_for(device: torch.device) -> Autocast:
    """bf16 autocast on CUDA, plain float32 elsewhere (CPU bf16 matmuls are slow and the
    loss curves of CPU runs are the reference ones)."""

    def autocast() -> contextlib.AbstractContextManager:
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return autocast


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


_PEAK_CACHE: dict[str, float] = {}


def device_peak_flops(device: torch.device) -> float:
    """Measured peak FLOP/s, once per process; $MOESCALE_PEAK_FLOPS overrides the measurement.

    The measurement draws random matrices, so it runs under a forked RNG: it must not shift the
    model's initialisation."""
    env = os.environ.get("MOESCALE_PEAK_FLOPS")
    if env:
        return float(env)
    key = str(device)
    if key not in _PEAK_CACHE:
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            _PEAK_CACHE[key] = measure_peak_flops(key)
    return _PEAK_CACHE[key]
