"""Executors: run a study's tasks as separate processes, locally or on Slurm (submitit).

Every run is `moescale train CONFIG` in its own process, so one run's crash (or a CUDA error, or
a leak) never touches the others, and every run resumes from its own checkpoints. Finished runs
are skipped; a failed run is retried up to `retries` times and then reported; Ctrl-C stops the
workers (each run's newest checkpoint is kept and its summary reads `interrupted`) and a re-run
picks up where they were. Locally on Linux a run's process is forked from a server that has
imported torch and moescale once, which saves ~3 s of start-up a run (study/forkserver.py).

Local: `workers` processes at once, the cores split between them (threads = cores // workers,
also passed as $MOESCALE_WORKERS so a run's own policy agrees). Oversubscribed cores are the one
thing the fine-grained expert loop cannot stand (README, Performance tips), so the threads never
add up to more than the cores. With GPUs, `runs_per_gpu` small runs share each GPU
(CUDA_VISIBLE_DEVICES per worker slot).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from moescale.errors import ConfigError
from moescale.run import read_summary_or_none
from moescale.study import forkserver
from moescale.study.tasks import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    Progress,
    Task,
    is_done,
    order,
    ready,
)

logger = logging.getLogger(__name__)
POLL_S = 0.2
EXECUTOR_KEYS = {"kind", "workers", "threads", "retries", "gpus", "runs_per_gpu", "start", "slurm"}
STARTS = ("auto", "forkserver", "process")


@dataclass
class ExecutorConfig:
    kind: str = "local"  # local | slurm | submitit-local (submitit's local executor; tests)
    workers: int = 0  # 0: the default (one per core on CPU, see benchmarks/study_workers.py)
    threads: int = 0  # threads per run; 0: cores // workers
    retries: int = 1  # extra attempts for a failed run
    gpus: int = 0  # GPUs to pack runs on (0: none, or all visible when the runs train on cuda)
    runs_per_gpu: int = 1  # with gpus 0 and runs on cuda, unset: one run per core over the GPUs
    # how a local run's process starts: forked from a process that has imported torch (saves
    # ~3 s a run, study/forkserver.py) or a fresh interpreter; auto: forkserver on Linux machines
    # without a visible GPU
    start: str = "auto"
    slurm: dict[str, Any] = field(default_factory=dict)  # partition, gpus_per_node, timeout_min

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExecutorConfig:
        if unknown := set(d) - EXECUTOR_KEYS:
            raise ConfigError(f"executor: unknown keys {sorted(unknown)}; accepted: "
                              f"{sorted(EXECUTOR_KEYS)}")  # fmt: skip
        cfg = cls(**d)
        if cfg.kind not in ("local", "slurm", "submitit-local"):
            raise ConfigError(f"executor.kind: got {cfg.kind!r}; one of local, slurm, "
                              "submitit-local")  # fmt: skip
        for key in ("workers", "threads", "retries", "gpus"):
            if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 0:
                raise ConfigError(f"executor.{key}: got {getattr(cfg, key)!r}, expected an "
                                  "integer >= 0")  # fmt: skip
        if not isinstance(cfg.runs_per_gpu, int) or cfg.runs_per_gpu < 1:
            raise ConfigError("executor.runs_per_gpu: expected an integer >= 1")
        if cfg.start not in STARTS:
            raise ConfigError(f"executor.start: got {cfg.start!r}; one of {', '.join(STARTS)}")
        if cfg.start == "forkserver" and not forkserver.available():
            raise ConfigError(f"executor.start: forkserver needs Linux (this is {sys.platform}); "
                              "use process or auto")  # fmt: skip
        return cfg


def cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


def plan_workers(cfg: ExecutorConfig) -> tuple[int, int]:
    """(workers, threads per run) that never add up to more than the cores on CPU."""
    if cfg.gpus:
        return cfg.workers or cfg.gpus * cfg.runs_per_gpu, cfg.threads or 1
    n = cores()
    workers = cfg.workers or n
    threads = cfg.threads or max(1, n // workers)
    if workers * threads > n:
        logger.warning("executor: %d workers x %d threads > %d cores: the fine-grained expert "
                       "loop slows down sharply when cores are oversubscribed", workers, threads,
                       n)  # fmt: skip
    return workers, threads


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as CUDA_VISIBLE_DEVICES names them: its own value
    where set (a scheduler's allocation, kept), else every GPU torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def fill_gpus(cfg: ExecutorConfig, runs_per_gpu_set: bool) -> None:
    """`gpus: 0` for runs that train on CUDA: every visible GPU, and (unless set) one run per
    CPU core spread over them. Small runs are launch-bound, so a GPU serves several at once
    (one H100 ran the quickstart's 57 runs 16 at a time in 95 s, README); runs that fill a GPU
    want `runs_per_gpu: 1`. Without this every run would take the first GPU."""
    gpus = visible_gpus()
    if cfg.kind != "local" or cfg.gpus or not gpus:
        return
    cfg.gpus = len(gpus)
    if not runs_per_gpu_set:
        cfg.runs_per_gpu = max(1, cores() // cfg.gpus)
    logger.info("executor: %d GPU(s), %d runs per GPU (executor.gpus, executor.runs_per_gpu)",
                cfg.gpus, cfg.runs_per_gpu)  # fmt: skip


class LocalExecutor:
    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg
        self.workers, self.threads = plan_workers(cfg)
        self.procs: dict[str, tuple[Any, int]] = {}  # subprocess.Popen or forkserver.ForkedRun
        names = visible_gpus() if cfg.gpus else []
        # slot -> GPU, through the parent's CUDA_VISIBLE_DEVICES (GPUs 2,3 of a node stay 2,3)
        self.gpu_names = names if len(names) >= cfg.gpus else [str(i) for i in range(cfg.gpus)]
        # with a GPU in sight: fresh processes until the fork server is tried on one (forkserver.py)
        auto = cfg.start == "auto" and forkserver.available() and not (cfg.gpus or visible_gpus())
        self.fork = cfg.start == "forkserver" or auto

    def env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(MOESCALE_WORKERS=str(self.workers), OMP_NUM_THREADS=str(self.threads),
                   MKL_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1")  # fmt: skip
        if self.cfg.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_names[slot % self.cfg.gpus]
        return env

    def start(self, task: Task, slot: int) -> None:
        task.run_dir.mkdir(parents=True, exist_ok=True)
        log = task.run_dir / "stdout.log"
        proc: Any
        if self.fork:
            proc = forkserver.ForkedRun(task.argv(self.threads), self.env(slot), log)
        else:
            out = open(log, "ab")  # noqa: SIM115 (the child holds it)
            cmd = [sys.executable, "-m", "moescale.cli", *task.argv(self.threads)]
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(slot),
                                    preexec_fn=forkserver.die_with_parent)  # fmt: skip
            out.close()
        self.procs[task.name] = (proc, slot)

    def poll(self, task: Task) -> int | None:
        proc, _ = self.procs[task.name]
        rc = proc.poll()
        if rc is not None:
            del self.procs[task.name]
        return rc

    def free_slot(self) -> int:
        used = {slot for _, slot in self.procs.values()}
        return next(i for i in range(self.workers) if i not in used)

    def stop(self, grace_s: float = 20.0) -> None:
        """Ctrl-C: every worker gets SIGINT (it stops between steps; its last checkpoint stays),
        then SIGKILL after `grace_s`."""
        for proc, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for proc, _ in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def failure_reason(task: Task, rc: int) -> str:
    """Why a run's process failed: its summary's reason, else the last line it printed."""
    with contextlib.suppress(Exception):
        s = read_summary_or_none(task.run_dir)
        if s is not None and s.reason:
            return s.reason
    with contextlib.suppress(OSError):
        lines = (task.run_dir / "stdout.log").read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1][:300]
    return f"exit status {rc}"


def execute(tasks: list[Task], executor: Any, retries: int) -> list[Task]:
    """Run the tasks to the end on `executor` (LocalExecutor or SubmititExecutor); returns them
    with their final states. Raises KeyboardInterrupt after stopping the workers cleanly."""
    by_name = {t.run.name: t for t in tasks if not t.eval_tasks}
    for t in tasks:
        if is_done(t):
            t.state, t.already_done = DONE, True
    progress = Progress(tasks, executor.workers)
    progress.update(
        message=f"study: {len(tasks)} runs, {sum(t.already_done for t in tasks)} "
        f"already done; {executor.workers} workers x {executor.threads} threads"
    )
    try:
        while any(t.state in (PENDING, RUNNING) for t in tasks):
            for t in order(tasks):
                if len(executor.procs) >= executor.workers:
                    break
                ok = ready(t, by_name)
                if ok is None:
                    t.state = SKIPPED  # ready() gave the reason
                    progress.update(t, f"skipped {t.name}: {t.reason}")
                elif ok:
                    t.state, t.started = RUNNING, time.perf_counter()
                    t.attempts += 1
                    executor.start(t, executor.free_slot())
                    progress.update(
                        t,
                        f"start {t.name}"
                        + (f" (attempt {t.attempts})" if t.attempts > 1 else ""),
                    )
            _reap(tasks, executor, retries, progress)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        running = [t.name for t in tasks if t.state == RUNNING]
        executor.stop()
        progress.close()
        logger.warning(
            "study: stopped; %d runs done, %d interrupted (%s). Their checkpoints "
            "are kept: re-run the same command to resume.",
            sum(t.state == DONE for t in tasks),
            len(running),
            ", ".join(running),
        )
        raise
    progress.close()
    return tasks


def _reap(tasks: list[Task], executor: Any, retries: int, progress: Progress) -> None:
    for t in tasks:
        if t.state != RUNNING:
            continue
        rc = executor.poll(t)
        if rc is None:
            continue
        took = time.perf_counter() - t.started
        if rc == 0 and is_done(t):
            t.state = DONE
            s = read_summary_or_none(t.run_dir)
            loss = f"val_loss {s.val_loss:.4f}" if s and s.val_loss is not None else ""
            progress.update(t, f"done  {t.name}: {'' if t.eval_tasks else loss} in {took:.0f} s")
            continue
        t.reason = failure_reason(t, rc)
        if t.attempts <= retries:
            t.state = PENDING
            progress.update(t, f"retry {t.name} (attempt {t.attempts} failed: {t.reason})")
        else:
            t.state = FAILED
            progress.update(t, f"FAILED {t.name} after {t.attempts} attempts: {t.reason}")


__all__ = ["ExecutorConfig", "LocalExecutor", "execute", "plan_workers"]
