"""How long each run will take: a few measured optimizer steps per distinct model shape.

The FLOP count does not predict CPU time across architectures (the fine-grained layer's cost is
data movement and small matmuls), so the estimate is measured: every distinct (model, batch,
micro-batch) of the study runs three optimizer steps on random tokens at the threads a worker
will get, the last two timed. Results are cached in the study directory per shape, threads and
machine, so a second `--dry-run` or study call does not measure again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_json
from moescale.study.spec import Run

logger = logging.getLogger(__name__)
STARTUP_S = 4.0  # a run's process start, imports, data mapping and final evaluation (measured)
TIMED_STEPS = 2


def shape_key(run: Run, threads: int) -> str:
    t = run.config["train"]
    key = {"model": run.config["model"], "batch": t.get("batch_size"),
           "micro": t.get("micro_batch_size"), "threads": threads, "device": t.get("device"),
           "host": platform.node()}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def measure_step_s(run: Run, threads: int) -> float:
    """Seconds per optimizer step of `run`'s model at `threads` intra-op threads."""
    import torch

    from moescale.config import config_from_dict
    from moescale.model import build_model
    from moescale.train.device import autocast_for, resolve_device
    from moescale.train.optim import build_optimizer
    from moescale.train.step import StepOptions, train_step

    cfg = config_from_dict(copy.deepcopy(run.config))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg.train.device)
        model = build_model(cfg.model).to(device)
        opt = build_optimizer(model, cfg.train, device.type)
        micro = cfg.train.micro_batch_size or cfg.train.batch_size
        opts = StepOptions(cfg.train.batch_size // micro, cfg.train.grad_clip, cfg.model.moe,
                           autocast_for(device))  # fmt: skip
        shape = (cfg.train.batch_size, cfg.model.seq_len)
        x = torch.randint(0, cfg.model.vocab_size, shape, device=device)
        y = torch.randint(0, cfg.model.vocab_size, shape, device=device)
        train_step(model, opt, x, y, opts)
        t0 = time.perf_counter()
        for _ in range(TIMED_STEPS):
            train_step(model, opt, x, y, opts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / TIMED_STEPS
    finally:
        torch.set_num_threads(old)


def calibrate(runs: list[Run], threads: int, cache: Path) -> dict[str, float]:
    """Estimated seconds of each run (by name): its own steps x measured step time + start-up."""
    known: dict[str, float] = {}
    if cache.exists():
        try:
            known = {k: float(v) for k, v in json.loads(cache.read_text()).items()}
        except (ValueError, AttributeError):
            known = {}
    measured = 0
    failed: dict[str, str] = {}
    for run in runs:
        key = shape_key(run, threads)
        if key not in known and key not in failed:
            try:
                known[key] = measure_step_s(run, threads)
                measured += 1
            except Exception as exc:  # the run itself will fail and say why; estimate a guess
                failed[key] = f"{type(exc).__name__}: {exc}"
                logger.warning("calibration: %s does not run here (%s); its time is a guess",
                               run.name, failed[key])  # fmt: skip
    fallback = sorted(known.values())[len(known) // 2] if known else 1.0
    out = {}
    for run in runs:
        t = run.config["train"]
        per_step = t.get("batch_size", 32) * run.config["model"].get("seq_len", 128)
        own_steps = run.tokens // per_step - run.branch_step
        out[run.name] = STARTUP_S + own_steps * known.get(shape_key(run, threads), fallback)
    if measured:
        logger.info("calibration: measured %d model shapes at %d threads", measured, threads)
        atomic_write_json(cache, known)
    return out


def makespan(estimates: dict[str, float], workers: int) -> float:
    """Wall time of list scheduling, longest first, on `workers` (dependencies ignored: the
    branches are short and start as soon as their trunk passes their checkpoint)."""
    loads = [0.0] * max(workers, 1)
    for est in sorted(estimates.values(), reverse=True):
        i = loads.index(min(loads))
        loads[i] += est
    return max(loads)


def describe(runs: list[Run], estimates: dict[str, float]) -> list[dict[str, Any]]:
    return [{"run": r.name, "est_s": round(estimates[r.name], 1)} for r in runs]
