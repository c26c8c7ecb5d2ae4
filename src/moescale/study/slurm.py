"""Slurm through submitit: the same tasks, retries and dependencies as the local executor, each
run one Slurm job (`executor: {kind: slurm, slurm: {partition, gpus_per_node, timeout_min}}`).

`kind: submitit-local` uses submitit's local executor (jobs as local processes): how this path
is tested on a machine without Slurm. A branch is submitted once its trunk's checkpoint exists on
the shared file system, so this process keeps polling while jobs run (run it in tmux/screen, or
as a small job itself); killed and re-run, it resubmits only what is not done.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from moescale.errors import ConfigError
from moescale.study.executors import ExecutorConfig
from moescale.study.tasks import Task

SLURM_KEYS = {"partition", "gpus_per_node", "timeout_min", "cpus_per_task", "mem_gb",
              "account", "qos", "max_jobs"}  # fmt: skip


def cli_job(argv: list[str]) -> int:
    """What a Slurm job runs: `moescale ARGV` (train, or eval) in this process."""
    from moescale.cli import main

    return main(argv)


class SubmititExecutor:
    def __init__(self, cfg: ExecutorConfig, folder: Path) -> None:
        try:
            import submitit
        except ImportError:
            raise ConfigError("executor.kind: slurm needs submitit: pip install submitit") from None
        s = dict(cfg.slurm)
        if unknown := set(s) - SLURM_KEYS:
            raise ConfigError(f"executor.slurm: unknown keys {sorted(unknown)}; accepted: "
                              f"{sorted(SLURM_KEYS)}")  # fmt: skip
        cluster = "local" if cfg.kind == "submitit-local" else "slurm"
        self.ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params: dict[str, Any] = {
            "timeout_min": int(s.get("timeout_min", 60)),
            "cpus_per_task": int(s.get("cpus_per_task", cfg.threads or 1)),
        }
        if cluster == "slurm":
            params["slurm_partition"] = s.get("partition")
            params["gpus_per_node"] = int(s.get("gpus_per_node", 0))
            for key in ("mem_gb", "account", "qos"):
                if key in s:
                    params[key if key == "mem_gb" else f"slurm_{key}"] = s[key]
        self.ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        self.workers = cfg.workers or int(s.get("max_jobs", 64))
        self.threads = cfg.threads or params["cpus_per_task"]
        self.procs: dict[str, tuple[Any, int]] = {}

    def start(self, task: Task, slot: int) -> None:
        task.run_dir.mkdir(parents=True, exist_ok=True)
        job = self.ex.submit(cli_job, task.argv(self.threads))
        self.procs[task.name] = (job, slot)

    def poll(self, task: Task) -> int | None:
        job, _ = self.procs[task.name]
        if not job.done():
            return None
        del self.procs[task.name]
        try:
            return int(job.result())
        except Exception:  # the job crashed, was cancelled or timed out: submitit says why
            return 1

    def free_slot(self) -> int:
        return len(self.procs)

    def stop(self, grace_s: float = 0.0) -> None:
        for job, _ in self.procs.values():
            with contextlib.suppress(Exception):
                job.cancel()
        self.procs.clear()
