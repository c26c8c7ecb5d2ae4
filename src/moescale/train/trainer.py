"""Training one model: one config in, one run directory out; killed runs resume exactly.

Read it top to bottom: `train()` locks the run directory (moescale.run.RunLock: a second
process training it is refused), checks it (moescale.train.rundir: already done? the same
config?), builds a `Trainer` (device, data, model, optimizer, then the newest checkpoint, or
`train.init_from`'s: moescale.train.branch), and runs it. `Trainer.run()` repeats `train_step`
(moescale.train.step), and on its schedule logs a line, evaluates and checkpoints (also at the
branch points of `train.branch_tokens`, kept forever); the summary (moescale.run.RunSummary) is
rewritten at start, on failure and at the end; Ctrl-C stops after the step with a checkpoint
(moescale.train.interrupt). The run directory's layout is in moescale.run.

Determinism: optimizer step s (1-based) trains on `BatchSampler.batch(s - 1, batch_size)`, split
into consecutive micro-batches; the model is initialised from `train.seed`; checkpoints hold the
model, the optimizer, the step and every RNG state. Resuming from step s therefore replays steps
s+1... bit for bit on the same machine and thread count (CPU float32).

MFU counts the exact forward+backward FLOPs per token of the active parameters
(moescale.accounting.count) against the device's peak (moescale.train.device.device_peak_flops:
a GPU's datasheet, a quiet CPU measurement cached per machine, or $MOESCALE_PEAK_FLOPS); the
summary says which. Intra-op threads follow `train.threads` (0: chosen from the free cores).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from moescale.accounting import count
from moescale.atomic import atomic_write_text
from moescale.config import Config, dump_config
from moescale.console import log_to_file
from moescale.fmt import duration, human
from moescale.model import build_model
from moescale.model.experts import exclude_from_compile
from moescale.run import Metric, RunLock, RunPaths, RunSummary
from moescale.train import branch, checkpoint
from moescale.train.device import (
    autocast_for,
    device_peak_flops,
    keep_freed_memory,
    resolve_device,
    seed_everything,
    set_threads,
)
from moescale.train.distributed import (
    Silent,
    World,
    check_split,
    load_latest_on_ranks,
    local_slice,
    on_main,
    prepare_on_ranks,
    process_group,
    quiet_unless_main,
    rank_device,
    replicate,
)
from moescale.train.evaluate import evaluate
from moescale.train.interrupt import CtrlC
from moescale.train.metrics import Clock, MetricsLog, TensorBoard, console_line
from moescale.train.noise_scale import NoiseScaleEstimator
from moescale.train.optim import branch_steps, build_optimizer, lr_at, set_lr
from moescale.train.rundir import check_run_dir, clear_run, copy_tokenizer, plan_steps
from moescale.train.step import NonFiniteError, StepOptions, StepResult, train_step

logger = logging.getLogger(__name__)


class TokenData(Protocol):
    """What the trainer needs from the data layer (`PreparedData`, or arrays in tests)."""

    train_tokens: np.ndarray
    val_tokens: np.ndarray
    token_bytes: np.ndarray | None  # UTF-8 bytes behind each token id (for bits per byte)
    tokenizer_sha256: str | None


@dataclass
class ArrayData:
    """In-memory token streams, for tests and library users with their own tokenization."""

    train_tokens: np.ndarray
    val_tokens: np.ndarray
    token_bytes: np.ndarray | None = None
    tokenizer_sha256: str | None = None
    tokenizer_path: Path | None = None  # copied into the run directory when given


def train(cfg: Config, data: TokenData | None = None, force: bool = False) -> RunSummary:
    """Train `cfg` into `cfg.train.out_dir`, resuming if a checkpoint is there.

    A finished run is not retrained unless `force`; a different config in an existing run
    directory is a ConfigError; a non-finite loss returns a summary with status 'failed' and
    keeps the last good checkpoint. Log lines go to the "moescale" logger and to train.log.
    Another process training the same directory is a UserError naming its pid. Under torchrun
    every rank calls this; rank 0 alone owns the directory (moescale.train.distributed)."""
    plan_steps(cfg, World.from_env().size)  # a config that cannot train fails at once
    device = resolve_device(cfg.train.device)  # so does a device this machine does not have
    if data is None:
        from moescale.data.corpus import check_corpus

        check_corpus(cfg.data.corpus)  # and a corpus path that matches no file
    paths = RunPaths(Path(cfg.train.out_dir or "runs/run"))
    with process_group(device) as world, quiet_unless_main(world), ExitStack() as held:
        check_split(cfg, world)

        def check() -> tuple[RunSummary | None, bool]:
            held.enter_context(RunLock(paths.dir))
            return _check_previous(cfg, paths, force)

        init = branch.load_init(cfg) if force and cfg.train.init_from else None
        if force:  # what can fail does (init_from above, the data), before the run is deleted
            data = prepare_on_ranks(cfg, data, world)
        previous, fresh = on_main(world, check)
        if previous is not None and previous.status == "done":
            return previous
        if cfg.train.init_from and fresh and init is None:
            init = branch.load_init(cfg)  # refused before the data step and any log file
        with log_to_file(paths.log) if world.is_main else nullcontext():
            return Trainer(cfg, paths, data, init, world).run()


def _check_previous(cfg: Config, paths: RunPaths, force: bool) -> tuple[RunSummary | None, bool]:
    """(the run already in the directory or None, whether it has no checkpoint), after
    --force cleared it; logs what will happen."""
    if force:
        clear_run(paths)
    previous = check_run_dir(paths, cfg)
    kept = checkpoint.list_checkpoints(paths.checkpoints)
    if previous is not None and previous.status == "done":
        logger.info(
            "train: %s is already trained (val_loss %.4f); results in %s and %s. Use --force "
            "to train again.", paths.dir, previous.val_loss or math.nan, paths.summary,
            paths.metrics,
        )  # fmt: skip
    elif previous is not None and previous.status == "failed":
        logger.info(
            "train: the previous attempt failed at step %s (%s); %s", previous.failed_step,
            previous.reason, f"resuming from its last checkpoint (step {kept[-1][0]})" if kept
            else "no checkpoint was kept: starting over",
        )  # fmt: skip
    return previous, not kept


class Trainer:
    """One run's state: data, model, optimizer, logs; `run()` trains it to the end."""

    def __init__(
        self,
        cfg: Config,
        paths: RunPaths,
        data: TokenData | None,
        init: tuple[int, dict[str, Any]] | None = None,
        world: World | None = None,
    ) -> None:
        """`init`: train.init_from's (step, state), when the caller has loaded it already;
        `world`: this rank among the ranks of a torchrun launch (default: alone)."""
        from moescale.data import BatchSampler, val_batches

        t, seq = cfg.train, cfg.model.seq_len
        self.cfg, self.paths, self.init = cfg, paths, init
        self.world = world or World()
        self.steps, micro, _ = plan_steps(cfg, self.world.size)
        self.device = rank_device(resolve_device(t.device), self.world)  # before the data step
        data = prepare_on_ranks(cfg, data, self.world)
        if self.world.is_main:
            copy_tokenizer(paths, data)
        self.sampler = BatchSampler(data.train_tokens, seq, seed=t.seed)
        self.val = val_batches(data.val_tokens, seq, t.eval_tokens, micro)
        self.eval_tokens = sum(y.numel() for _, y in self.val)
        self.token_bytes = getattr(data, "token_bytes", None)
        self.tokenizer_sha256 = getattr(data, "tokenizer_sha256", None)
        self.threads = set_threads(t.threads, self.world.local_size).threads
        if self.device.type == "cpu":
            logger.info("memory: %s", keep_freed_memory())
        self.acct = count(cfg.model)
        self.peak = device_peak_flops(self.device)
        self.best_rate, self.slow_warned = 0.0, False
        self.tokens_per_step = t.batch_size * seq
        self.kept_steps = frozenset(branch_steps(t, seq).values())  # never pruned
        n_micro = check_split(cfg, self.world)
        self.opts = StepOptions(n_micro, t.grad_clip, cfg.model.moe, autocast_for(self.device))

        seed_everything(t.seed)
        self.model = build_model(cfg.model).to(self.device)
        wrapped, self.sync = replicate(self.model, cfg, self.world, self.device)
        self.optimizer = build_optimizer(self.model, t, self.device.type)
        # the small batch: one rank's share of the step, else its first micro-batch
        small = self.tokens_per_step // self.world.size if self.world.size > 1 else micro * seq
        self.noise = None
        if t.noise_scale:
            self.noise = NoiseScaleEstimator(small, self.tokens_per_step, t.noise_scale_window)
        main = self.world.is_main
        self.metrics = MetricsLog(paths.metrics) if main else Silent()
        self.state = checkpoint.TrainerState(threads=self.threads)
        self.resumed = False  # from a checkpoint of this run's own directory
        self.start_step = self.resume()
        if t.compile:
            exclude_from_compile()
        self.forward = torch.compile(wrapped) if t.compile else wrapped
        if main and not paths.config.exists():
            atomic_write_text(paths.config, dump_config(cfg))
        purge = self.start_step + 1 if self.start_step else None  # drop events after the resume
        self.tb = TensorBoard(paths.dir, purge_step=purge) if main else Silent()
        self.t_start = time.perf_counter()

    def resume(self) -> int:
        """Restore the newest checkpoint that loads (rank 0 chooses it; every rank reads it),
        else train.init_from's; the step to continue from (0: fresh)."""
        found = load_latest_on_ranks(self.paths.checkpoints, self.world)
        if found is None and self.cfg.train.init_from:
            return self.start_from(*(self.init or branch.load_init(self.cfg)))
        self.init = None
        if found is None:
            if self.world.is_main:
                self.paths.metrics.unlink(missing_ok=True)  # records of an attempt killed early
            return 0
        step, state = found
        self.resumed = True
        self.restore(state)
        self.metrics.truncate(step)
        logger.info("train: resuming %s from step %d/%d", self.paths.dir, step, self.steps)
        return step

    def restore(self, state: dict[str, Any]) -> None:
        self.state = checkpoint.restore(state, self.model, self.optimizer, self.threads)
        if self.noise is not None and self.state.noise is not None:
            if not self.noise.load_state_dict(self.state.noise):
                logger.info("train: the noise-scale window starts afresh: its batch sizes "
                            "changed with the number of ranks")  # fmt: skip

    def start_from(self, step: int, state: dict[str, Any]) -> int:
        """A fresh directory continuing another run's checkpoint (a decay branch): its metrics
        and wall time are its own; its validation numbers come from its own evaluations."""
        self.restore(state)
        self.init = None
        self.state = dataclasses.replace(
            self.state, wall_time_s=0.0, start_step=step, val_loss=None, val_loss_se=None,
            val_bpb=None,
        )  # fmt: skip
        if self.world.is_main:
            self.paths.metrics.unlink(missing_ok=True)
        return step

    # ---- what the run writes

    def summary(self, status: str, done_steps: int, **extra: Any) -> RunSummary:
        """Write and return the summary of the first `done_steps` steps."""
        cfg, acct, moe = self.cfg, self.acct, self.cfg.model.moe
        tokens = done_steps * self.tokens_per_step
        spent = max(0, done_steps - self.state.start_step) * self.tokens_per_step
        s = RunSummary(
            run=self.paths.dir.name, status=status, arch="dense" if moe is None else "moe",
            experts=moe.experts if moe else 1, granularity=moe.granularity if moe else 1,
            top_k=moe.top_k if moe else 1, d_model=cfg.model.d_model,
            n_layers=cfg.model.n_layers, seq_len=cfg.model.seq_len,
            params_total=acct.params_total, params_active=acct.params_active,
            params_embedding=acct.params_embedding, params_router=acct.params_router,
            params_total_no_router=acct.params_total_no_router,
            params_active_no_router=acct.params_active_no_router,
            flops_per_token=acct.flops_per_token,
            flops_per_token_simple=acct.flops_per_token_simple,
            flops_per_token_routing_aware=acct.flops_per_token_routing_aware,
            batch_size=cfg.train.batch_size, batch_tokens=self.tokens_per_step,
            lr=cfg.train.lr, schedule=cfg.train.schedule, steps_planned=self.steps,
            steps=done_steps, tokens=tokens, flops=acct.flops_per_token * tokens,
            flops_simple=acct.flops_per_token_simple * tokens,
            flops_routing_aware=acct.flops_per_token_routing_aware * tokens,
            val_loss=self.state.val_loss, val_loss_se=self.state.val_loss_se,
            val_bpb=self.state.val_bpb, eval_tokens=self.eval_tokens,
            tokenizer_sha256=self.tokenizer_sha256, wall_time_s=round(self.wall_time(), 3),
            start_step=self.state.start_step, init_from=cfg.train.init_from,
            flops_spent=acct.flops_per_token * spent,
            noise_scale=self.noise.value() if self.noise is not None else None,
            noise_scale_loss=self.noise.loss() if self.noise is not None else None,
            out_dir=str(self.paths.dir), threads=self.threads, peak_flops=self.peak.flops,
            peak_source=self.peak.source, ranks=self.world.size, **extra,
        )  # fmt: skip
        if self.world.is_main:
            s.write(self.paths)
        return s

    def wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.t_start

    def evaluate(self, step: int) -> None:
        ev = evaluate(
            self.forward, self.val, self.device, self.opts.autocast, self.token_bytes, self.sync
        )
        self.state.val_loss, self.state.val_loss_se, self.state.val_bpb = (
            ev.loss,
            ev.loss_se,
            ev.bits_per_byte,
        )
        rec = {
            Metric.STEP: step,
            Metric.TOKENS: step * self.tokens_per_step,
            Metric.VAL_LOSS: ev.loss,
            Metric.VAL_LOSS_SE: ev.loss_se,
            Metric.VAL_BPB: ev.bits_per_byte,
        }
        self.metrics.write(rec)
        self.tb.scalars(step, rec, "eval")
        bpb = f" | {ev.bits_per_byte:.4f} bits/byte" if ev.bits_per_byte is not None else ""
        logger.info(f"eval  step {step}/{self.steps} | val_loss {ev.loss:.4f} ± {ev.loss_se:.4f}"
                    f"{bpb} ({human(ev.tokens)} tokens)")  # fmt: skip

    def save_checkpoint(self, step: int) -> None:
        noise = self.noise.state_dict() if self.noise is not None else None
        trainer = dataclasses.replace(self.state, wall_time_s=self.wall_time(), noise=noise)
        state = checkpoint.capture(
            step, self.model, self.optimizer, self.device, trainer, self.cfg.to_dict()
        )  # collective: every rank gives its part, rank 0 writes the whole
        if self.world.is_main:
            checkpoint.save_checkpoint(
                self.paths.checkpoints, step, state, self.cfg.train.keep_checkpoints,
                self.kept_steps,
            )  # fmt: skip

    def log_step(self, step: int, lr: float, res: StepResult, clock: Clock) -> None:
        tok_s, now = clock.rate(self.tokens_per_step)
        rec: dict[str, Any] = {
            Metric.STEP: step,
            Metric.TOKENS: step * self.tokens_per_step,
            Metric.LOSS: res.loss,
            Metric.LR: lr,
            Metric.GRAD_NORM: res.grad_norm,
            Metric.TOKENS_PER_S: tok_s,
            Metric.MFU: self.acct.flops_per_token * tok_s / (self.peak.flops * self.world.size),
            **res.moe_metrics(),
        }
        if self.noise is not None:
            rec[Metric.NOISE_SCALE] = self.noise.value()
            rec[Metric.NOISE_SCALE_LOSS] = self.noise.loss()
        self.metrics.write(rec)
        self.tb.scalars(step, rec, "train")
        logger.info(console_line(rec, self.steps, clock.eta(step, self.steps, now)))
        self.check_throughput(tok_s)

    def check_throughput(self, tok_s: float) -> None:
        """Warn once when throughput falls far below this run's own best: something else is
        competing for the cores (the ETA stays honest; the user may want to act)."""
        if tok_s < 0.5 * self.best_rate and not self.slow_warned and self.world.is_main:
            self.slow_warned = True
            logger.warning(
                f"throughput fell to {human(tok_s)} tokens/s, {tok_s / self.best_rate:.0%} of "
                f"this run's best ({human(self.best_rate)}): other processes are competing for "
                f"the cores. Free them, or set train.threads (now {self.threads})."
            )
        self.best_rate = max(self.best_rate, tok_s)

    # ---- the loop

    def run(self) -> RunSummary:
        self.summary("running", self.start_step)
        self.announce()
        last_ckpt = self.start_step if self.resumed else None  # in this run's directory
        step, stop = self.start_step, CtrlC(self.world.size == 1)
        try:
            if self.start_step == 0:
                self.evaluate(0)
            self.model.train()
            clock = Clock(self.start_step)
            for step in range(self.start_step + 1, self.steps + 1):
                self.train_one(step, clock)
                t_pause = time.perf_counter()
                if step % self.cfg.train.eval_every == 0 or step == self.steps:
                    self.evaluate(step)
                if (step % self.cfg.train.checkpoint_every == 0 or step == self.steps
                        or step in self.kept_steps or stop.asked):  # fmt: skip
                    self.save_checkpoint(step)
                    last_ckpt = step
                clock.exclude(time.perf_counter() - t_pause)  # tokens/s: training time only
                stop.stop_if_asked(step)
        except NonFiniteError as exc:
            reason = f"{exc.reason} at step {step}"
            logger.error("train: FAILED: %s; %s", reason, f"the last good checkpoint is step "
                         f"{last_ckpt}" if last_ckpt is not None else "no checkpoint of this run "
                         "precedes it: a re-run starts over")  # fmt: skip
            done = self.start_step if last_ckpt is None else last_ckpt
            return self.summary("failed", done, failed_step=step, reason=reason,
                                last_checkpoint=last_ckpt)  # fmt: skip
        except Exception as exc:
            done = self.start_step if last_ckpt is None else last_ckpt
            self.summary("failed", done, reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            stop.restore()
            self.metrics.close()
            self.tb.close()
        return self.finish()

    def train_one(self, step: int, clock: Clock) -> None:
        lr = lr_at(step - 1, self.steps, self.cfg.train, self.tokens_per_step)
        set_lr(self.optimizer, lr)
        x, y = self.sampler.batch(step - 1, self.cfg.train.batch_size)
        x, y = local_slice(x, self.world), local_slice(y, self.world)  # this rank's share
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        res = train_step(
            self.model, self.optimizer, x, y, self.opts, forward=self.forward, noise=self.noise,
            sync=self.sync,
        )  # fmt: skip
        clock.steps_since_log += 1
        if step % self.cfg.train.log_every == 0 or step == self.steps:
            self.log_step(step, lr, res, clock)

    def announce(self) -> None:
        cfg, acct, t = self.cfg, self.acct, self.cfg.train
        n_micro, micro = self.opts.n_micro, t.micro_batch_size or t.batch_size
        arch = "dense" if cfg.model.moe is None else "moe"
        logger.info(
            f"train: {arch} model, {human(acct.params_total)} params "
            f"({human(acct.params_active)} active, {human(acct.params_embedding)} embedding), "
            f"{human(acct.flops_per_token)} FLOP/token; {self.steps} steps x {t.batch_size} x "
            f"{cfg.model.seq_len} = {human(self.steps * self.tokens_per_step)} tokens"
            + (f" ({n_micro} micro-batches of {micro})" if n_micro > 1 else "")
            + (f"; {self.world.size} ranks ({self.parallel_mode()})" if self.world.size > 1 else "")
            + f"; {self.device.type}, {self.threads} threads, peak {human(self.peak.flops)}FLOP/s "
            f"({self.peak.source}) -> {self.paths.dir}"
        )
        epochs = self.sampler.epoch_of(self.steps * t.batch_size)
        if epochs > 1:
            logger.warning(
                f"train: {self.steps * t.batch_size:,} sequences are {epochs:.1f} epochs of the "
                f"{self.sampler.windows:,} training windows; repeated data bends scaling laws"
            )

    def parallel_mode(self) -> str:
        par = self.cfg.parallel
        if par.fsdp:
            return "FSDP2"
        return f"DDP, experts over groups of {par.expert}" if par.expert > 1 else "DDP"

    def finish(self) -> RunSummary:
        result = self.summary("done", self.steps)
        logger.info(
            f"train: done: val_loss {result.val_loss:.4f} after "
            f"{human(self.steps * self.tokens_per_step)} tokens, {human(result.flops)}FLOP in "
            f"{duration(result.wall_time_s)} -> {self.paths.summary}"
        )
        return result
