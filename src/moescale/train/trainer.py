"""The training loop: one config in, one run directory out; killed runs resume exactly.

Run directory (`train.out_dir`), see design/README.md:

    config.yaml      resolved config (written once; a different config is refused)
    metrics.jsonl    one JSON object per logged step; eval records carry val_loss
    summary.json     status running|done|failed, final val_loss, params, FLOPs, tokens, ...
    checkpoints/     step_XXXXXXXX.pt, the newest `keep_checkpoints`
    events.out.tfevents.*   TensorBoard

Determinism: optimizer step s (1-based) trains on `BatchSampler.batch(s - 1, batch_size)`, split
into consecutive micro-batches; the model is initialised from `train.seed`; checkpoints hold the
model, the optimizer, the step and every RNG state. Resuming from step s therefore replays steps
s+1... bit for bit on the same machine and thread count (CPU float32).

The optimised loss is lm_loss + aux_loss_coef * aux_loss + z_loss_coef * z_loss (both summed over
the MoE layers, so the coefficients are per layer); the logged
`loss` is the language-model cross-entropy alone (mean over the step's micro-batches), the
number the scaling laws use. MFU counts the exact forward+backward FLOPs per token of the active
parameters (accounting.count) against the measured peak of the device (accounting.peak_flops,
or $MOESCALE_PEAK_FLOPS to skip the measurement).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from moescale.atomic import atomic_write_text
from moescale.config import Config, MoEConfig, config_from_dict, dump_config, read_yaml
from moescale.errors import ConfigError, UserError
from moescale.model import ModelOutput, build_model, lm_loss
from moescale.model.moe import load_imbalance
from moescale.train.checkpoint import load_latest, save_checkpoint
from moescale.train.logging import MetricsLog, TensorBoard, console_line, duration, human
from moescale.train.noise_scale import NoiseScaleEstimator
from moescale.train.optim import build_optimizer, lr_at, set_lr

Log = Callable[[str], None]
CKPT_FORMAT = 1


class TokenData(Protocol):
    """What the trainer needs from the data layer (`PreparedData`, or arrays in tests)."""

    train_tokens: np.ndarray
    val_tokens: np.ndarray


@dataclass
class ArrayData:
    """In-memory token streams, for tests and library users with their own tokenization."""

    train_tokens: np.ndarray
    val_tokens: np.ndarray


@dataclass
class RunPaths:
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"


# --------------------------------------------------------------------------------------------
# Set-up helpers


def plan_steps(cfg: Config) -> tuple[int, int, int]:
    """(steps, micro_batch_size, micro-batches per step); errors name the key to change."""
    t, seq = cfg.train, cfg.model.seq_len
    per_step = t.batch_size * seq
    steps = t.tokens // per_step
    if steps < 1:
        raise ConfigError(
            f"train.tokens: {t.tokens} is less than one step of train.batch_size x model.seq_len "
            f"= {per_step} tokens; raise train.tokens or lower the batch size."
        )
    micro = t.micro_batch_size or t.batch_size
    n_micro = t.batch_size // micro
    if t.noise_scale and n_micro < 2:
        raise ConfigError(
            "train.noise_scale: the estimator needs at least 2 micro-batches per step; set "
            f"train.micro_batch_size to a divisor of train.batch_size = {t.batch_size} below it."
        )
    return steps, micro, n_micro


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available.")
    return torch.device(name)


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
        from moescale.accounting import peak_flops

        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            _PEAK_CACHE[key] = peak_flops(key)
    return _PEAK_CACHE[key]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(saved: Config, current: Config) -> list[str]:
    """Dotted keys whose values differ (train.out_dir excluded: the directory is the run)."""
    a, b = flatten(saved.to_dict()), flatten(current.to_dict())
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in keys
        if k != "train.out_dir" and a.get(k) != b.get(k)
    ]


def clear_run(paths: RunPaths) -> None:
    """--force: remove what a previous run wrote (only files the trainer owns)."""
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        (paths.dir / name).unlink(missing_ok=True)
    for p in paths.dir.glob("events.out.tfevents.*"):
        p.unlink(missing_ok=True)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)


def read_summary(paths: RunPaths) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(paths.summary.read_text())
    except (OSError, ValueError):
        return None


def write_summary(paths: RunPaths, summary: dict[str, Any]) -> None:
    import json

    atomic_write_text(paths.summary, json.dumps(summary, indent=2) + "\n")


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def grad_sq_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squared gradient entries, in float32 (a tensor: no device sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return torch.stack([n.float() for n in norms]).square().sum()


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> float:
    """Mean next-token loss over the fixed validation windows (token-weighted)."""
    was_training = model.training
    model.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x)
        total += lm_loss(out.logits, y).double() * y.numel()
        n += y.numel()
    model.train(was_training)
    return float(total / n)


# --------------------------------------------------------------------------------------------
# One step's gradients


@dataclass
class StepStats:
    """Sums over the micro-batches of one step (tensors: read them only when logging)."""

    lm_sum: torch.Tensor
    aux_sum: torch.Tensor
    z_sum: torch.Tensor
    dropped_sum: torch.Tensor
    loads: list[torch.Tensor] = field(default_factory=list)  # per MoE layer: slots per expert
    small_sq: torch.Tensor | None = None  # |g|^2 of the first micro-batch's gradient


def forward_backward(
    model: Callable[[torch.Tensor], ModelOutput],
    x: torch.Tensor,
    y: torch.Tensor,
    n_micro: int,
    moe: MoEConfig | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    params: list[torch.Tensor] | None = None,
) -> StepStats:
    """Accumulate the gradient of one optimizer step over `n_micro` consecutive slices of x.

    The loss is the micro-batch mean of lm + aux_coef * aux + z_coef * z, so the accumulated
    gradient equals that of the whole batch. With `params`, also return the squared norm of the
    first micro-batch's gradient (the small-batch estimate of the noise scale)."""
    micro = x.shape[0] // n_micro
    zero = torch.zeros((), device=x.device)
    st = StepStats(zero.clone(), zero.clone(), zero.clone(), zero.clone())
    for i in range(n_micro):
        xs, ys = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]
        with autocast():
            out = model(xs)
        lm = lm_loss(out.logits, ys)
        loss = lm
        if moe is not None:
            loss = loss + moe.aux_loss_coef * out.aux_loss + moe.z_loss_coef * out.z_loss
        (loss / n_micro).backward()
        if params is not None and i == 0:
            st.small_sq = grad_sq_norm(params) * n_micro**2
        st.lm_sum += lm.detach()
        if out.moe:
            st.aux_sum += out.aux_loss.detach()
            st.z_sum += out.z_loss.detach()
            counts = [s.tokens_per_expert for s in out.moe]
            st.loads = (
                counts if not st.loads else [a + b for a, b in zip(st.loads, counts, strict=True)]
            )
            st.dropped_sum += torch.stack([s.dropped_frac for s in out.moe]).mean()
    return st


# --------------------------------------------------------------------------------------------
# The run


def train(
    cfg: Config,
    data: TokenData | None = None,
    log: Log = print,
    force: bool = False,
) -> dict[str, Any]:
    """Train `cfg` into `cfg.train.out_dir`, resuming if a checkpoint is there.

    Returns the summary (also in summary.json). A finished run is not retrained unless `force`;
    a different config in an unfinished run is a ConfigError. A non-finite loss returns a
    summary with status 'failed' and keeps the last good checkpoint.
    """
    t = cfg.train
    steps, micro, n_micro = plan_steps(cfg)
    paths = RunPaths(Path(t.out_dir or "runs/run"))
    moe = cfg.model.moe

    # ---- an existing run directory: done, different, or to resume
    if force:
        clear_run(paths)
    previous = read_summary(paths)
    if paths.config.exists():
        try:
            saved = config_from_dict(read_yaml(paths.config))
        except UserError as exc:
            raise ConfigError(
                f"{paths.config} does not load ({exc}); use --force to start the run over."
            ) from None
        diff = config_diff(saved, cfg)
        if diff:
            raise ConfigError(
                f"{paths.dir} holds a {(previous or {}).get('status', 'started')} run with a "
                "different config:\n  "
                + "\n  ".join(diff)
                + f"\nUse the run's own config ({paths.config}), another train.out_dir, or "
                "--force to start over."
            )
    if previous and previous.get("status") == "done":
        log(
            f"train: {paths.dir} is already trained (val_loss {previous.get('val_loss')}); "
            f"results in {paths.summary} and {paths.metrics}. Use --force to train again."
        )
        return previous
    if previous and previous.get("status") == "failed":
        log(
            f"train: the previous attempt failed at step {previous.get('step')} "
            f"({previous.get('reason')}); resuming from its last checkpoint"
        )

    # ---- data, device, accounting
    if data is None:
        from moescale.data import prepare_data

        data = prepare_data(cfg.data, cfg.model.vocab_size, log=log)
    from moescale.accounting import count
    from moescale.data import BatchSampler, val_batches

    sampler = BatchSampler(data.train_tokens, cfg.model.seq_len, seed=t.seed)
    val = val_batches(data.val_tokens, cfg.model.seq_len, t.eval_tokens, micro)
    device = resolve_device(t.device)
    acct = count(cfg.model)
    peak = device_peak_flops(device)
    tokens_per_step = t.batch_size * cfg.model.seq_len

    def autocast() -> contextlib.AbstractContextManager:
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- model and optimizer, fresh or from the newest checkpoint that loads
    seed_everything(t.seed)
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(model, t, device.type)
    params = [p for p in model.parameters() if p.requires_grad]
    noise = (
        NoiseScaleEstimator(micro * cfg.model.seq_len, tokens_per_step) if t.noise_scale else None
    )
    metrics = MetricsLog(paths.metrics)
    start_step, val_loss, wall_before = 0, None, 0.0
    resumed = load_latest(paths.checkpoints, log)
    if resumed is not None:
        start_step, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        extra = state["trainer"]
        val_loss, wall_before = extra["val_loss"], extra["wall_time_s"]
        if noise is not None and extra.get("noise") is not None:
            noise.load_state_dict(extra["noise"])
        metrics.truncate(start_step)
        log(f"train: resuming {paths.dir} from step {start_step}/{steps}")
    else:
        paths.metrics.unlink(missing_ok=True)  # records of an attempt killed before step 1
    fmodel = torch.compile(model) if t.compile else model

    paths.dir.mkdir(parents=True, exist_ok=True)
    if not paths.config.exists():
        atomic_write_text(paths.config, dump_config(cfg))
    tb = TensorBoard(paths.dir, purge_step=start_step + 1 if resumed else None)

    arch = "dense" if moe is None else "moe"
    base_summary: dict[str, Any] = {
        "run": paths.dir.name,
        "arch": arch,
        "experts": moe.experts if moe else 1,
        "granularity": moe.granularity if moe else 1,
        "top_k": moe.top_k if moe else 1,
        "params_total": acct.params_total,
        "params_active": acct.params_active,
        "params_embedding": acct.params_embedding,
        "params_router": acct.params_router,  # in params_total; P0's N_total excludes it
        "flops_per_token": acct.flops_per_token,
        "d_model": cfg.model.d_model,
        "n_layers": cfg.model.n_layers,
        "seq_len": cfg.model.seq_len,
        "batch_size": t.batch_size,
        "batch_tokens": tokens_per_step,
        "lr": t.lr,
        "schedule": t.schedule,
        "steps_planned": steps,
        "out_dir": str(paths.dir),
    }
    t_start = time.perf_counter()

    def summary(status: str, done_steps: int, **extra: Any) -> dict[str, Any]:
        s = dict(base_summary)
        s.update(
            status=status,
            val_loss=val_loss,
            tokens=done_steps * tokens_per_step,
            steps=done_steps,
            flops=acct.flops_per_token * done_steps * tokens_per_step,
            flops_simple=acct.flops_per_token_simple * done_steps * tokens_per_step,
            wall_time_s=round(wall_before + time.perf_counter() - t_start, 3),
            noise_scale=noise.value() if noise is not None else None,
            noise_scale_unit="tokens",
        )
        s.update(extra)
        write_summary(paths, s)
        return s

    summary("running", start_step)
    log(
        f"train: {arch} model, {human(acct.params_total)} params "
        f"({human(acct.params_active)} active, {human(acct.params_embedding)} embedding), "
        f"{human(acct.flops_per_token)} FLOP/token; {steps} steps x {t.batch_size} x "
        f"{cfg.model.seq_len} = {human(steps * tokens_per_step)} tokens"
        + (f" ({n_micro} micro-batches of {micro})" if n_micro > 1 else "")
        + f"; {device.type}, peak {human(peak)}FLOP/s -> {paths.dir}"
    )

    epochs = sampler.epoch_of(steps * t.batch_size)
    if epochs > 1:
        log(
            f"train: warning: {steps * t.batch_size:,} sequences are {epochs:.1f} epochs of the "
            f"{sampler.windows:,} training windows; repeated data bends scaling laws"
        )

    def do_eval(step: int) -> None:
        nonlocal val_loss
        val_loss = evaluate(fmodel, val, device, autocast)
        rec = {"step": step, "tokens": step * tokens_per_step, "val_loss": val_loss}
        metrics.write(rec)
        tb.scalars(step, rec, "eval")
        log(f"eval  step {step}/{steps} | val_loss {val_loss:.4f}")

    def checkpoint(step: int) -> None:
        state = {
            "format": CKPT_FORMAT,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(device),
            "trainer": {
                "val_loss": val_loss,
                "wall_time_s": wall_before + time.perf_counter() - t_start,
                "noise": noise.state_dict() if noise is not None else None,
            },
            "config": cfg.to_dict(),
        }
        save_checkpoint(paths.checkpoints, step, state, t.keep_checkpoints)

    last_ckpt = start_step
    try:
        if start_step == 0:
            do_eval(0)
        model.train()
        t_log, steps_since_log = time.perf_counter(), 0
        t_loop = t_log  # ETA from the mean step time since this process started training
        for step in range(start_step + 1, steps + 1):
            lr = lr_at(step - 1, steps, t)
            set_lr(optimizer, lr)
            x, y = sampler.batch(step - 1, t.batch_size)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            st = forward_backward(
                fmodel, x, y, n_micro, moe, autocast, params if noise is not None else None
            )
            step_loss = float(st.lm_sum) / n_micro
            if not math.isfinite(step_loss):
                raise NonFinite(step, f"non-finite loss ({step_loss}) at step {step}")
            max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
            if not math.isfinite(grad_norm):
                raise NonFinite(step, f"non-finite gradient norm ({grad_norm}) at step {step}")
            if noise is not None and st.small_sq is not None:
                noise.update(float(st.small_sq), grad_norm**2)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if st.loads:
                model.update_router_biases(st.loads)
            steps_since_log += 1

            if step % t.log_every == 0 or step == steps:
                now = time.perf_counter()
                tok_s = steps_since_log * tokens_per_step / max(now - t_log, 1e-9)
                rec: dict[str, Any] = {
                    "step": step,
                    "tokens": step * tokens_per_step,
                    "loss": step_loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tok_s,
                    "mfu": acct.flops_per_token * tok_s / peak,
                    "aux_loss": float(st.aux_sum) / n_micro if moe else None,
                    "z_loss": float(st.z_sum) / n_micro if moe else None,
                    "load_imbalance": _imbalance(st.loads) if st.loads else None,
                    "dropped_frac": float(st.dropped_sum) / n_micro if moe else None,
                }
                if noise is not None:
                    rec["noise_scale"] = noise.value()
                metrics.write(rec)
                tb.scalars(step, rec, "train")
                eta = (steps - step) * (now - t_loop) / (step - start_step)
                log(console_line(rec, steps, eta))
                t_log, steps_since_log = now, 0
            t_pause = time.perf_counter()
            if step % t.eval_every == 0 or step == steps:
                do_eval(step)
            if step % t.checkpoint_every == 0 or step == steps:
                checkpoint(step)
                last_ckpt = step
            t_log += time.perf_counter() - t_pause  # tokens/s counts training time only
    except NonFinite as exc:
        metrics.close()
        tb.close()
        log(f"train: FAILED: {exc.reason}; the last good checkpoint is step {last_ckpt}")
        return summary(
            "failed", last_ckpt, step=exc.step, reason=exc.reason, last_checkpoint=last_ckpt
        )
    except Exception as exc:
        metrics.close()
        tb.close()
        summary("failed", last_ckpt, reason=f"{type(exc).__name__}: {exc}")
        raise
    metrics.close()
    tb.close()
    result = summary("done", steps)
    log(
        f"train: done: val_loss {val_loss:.4f} after {human(steps * tokens_per_step)} tokens, "
        f"{human(result['flops'])}FLOP in {duration(result['wall_time_s'])} -> {paths.summary}"
    )
    return result


def _imbalance(loads: list[torch.Tensor]) -> float:
    """Mean over MoE layers of max/mean tokens per expert (summed over the micro-batches)."""
    per_layer = [load_imbalance(c) for c in loads]
    return sum(per_layer) / len(per_layer)


class NonFinite(Exception):
    def __init__(self, step: int, reason: str) -> None:
        super().__init__(reason)
        self.step, self.reason = step, reason
