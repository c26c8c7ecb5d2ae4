"""Slurm through submitit: the same tasks, retries and dependencies as the local executor, each
run one Slurm job (`executor: {kind: slurm, slurm: {partition, gpus_per_node, timeout_min}}`).

`kind: submitit-local` uses submitit's local executor (jobs as local processes): how this path
is tested on a machine without Slurm. A branch is submitted once its trunk's checkpoint exists on
the shared file system, so this process keeps polling while jobs run (run it in tmux/screen, or
as a small job itself); killed and re-run, it resubmits only what is not done.

`slurm: {ranks_per_run: N, nodes: M}` makes each run a torchrun-style data-parallel job: N tasks
over M nodes, each task one rank of `moescale train` (submitit's TorchDistributedEnvironment sets
RANK, WORLD_SIZE and the rendezvous address from Slurm's variables; docs/distributed.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from moescale.errors import ConfigError
from moescale.study.executors import ExecutorConfig
from moescale.study.tasks import Task

SLURM_KEYS = {"partition", "gpus_per_node", "timeout_min", "cpus_per_task", "mem_gb",
              "account", "qos", "max_jobs", "ranks_per_run", "nodes"}  # fmt: skip


def cli_job(argv: list[str], distributed: bool = False) -> int:
    """What a Slurm job runs: `moescale ARGV` (train, or eval) in this process; with
    `distributed`, as one rank of the job's tasks (the environment torchrun would set)."""
    if distributed:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    from moescale.cli import main

    return main(argv)


def _ranks(s: dict[str, Any]) -> tuple[int, int]:
    """(ranks per run, nodes per run) from the slurm keys, checked."""
    ranks, nodes = int(s.get("ranks_per_run", 1)), int(s.get("nodes", 1))
    if ranks < 1 or nodes < 1 or ranks % nodes:
        raise ConfigError(f"executor.slurm: ranks_per_run ({ranks}) must be a positive "
                          f"multiple of nodes ({nodes})")  # fmt: skip
    return ranks, nodes


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
        self.ranks, self.nodes = _ranks(s)
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
        ranks = 1 if task.eval_tasks else self.ranks  # evaluation is one process
        nodes = 1 if task.eval_tasks else self.nodes
        self.ex.update_parameters(tasks_per_node=ranks // nodes, nodes=nodes)
        job = self.ex.submit(cli_job, task.argv(self.threads), ranks > 1)
        self.procs[task.name] = (job, slot)

    def poll(self, task: Task) -> int | None:
        job, _ = self.procs[task.name]
        if not job.done():
            return None
        del self.procs[task.name]
        try:
            return max(int(r) for r in job.results())  # one per task (rank)
        except Exception:  # the job crashed, was cancelled or timed out: submitit says why
            return 1

    def free_slot(self) -> int:
        return len(self.procs)

    def stop(self, grace_s: float = 0.0) -> None:
        for job, _ in self.procs.values():
            with contextlib.suppress(Exception):
                job.cancel()
        self.procs.clear()
