"""What an executor schedules: one task per run, its state, when it may start, and the one
progress display over all of them (no torch).

A task is ready when its run is not done yet and, for a WSD branch, its trunk's stable-phase
checkpoint exists (checkpoints are written atomically, so existing means complete). A branch
whose trunk failed for good before writing that checkpoint is skipped, with the reason; one whose
trunk finished without it (a budget added after the trunk was trained) starts from an earlier
checkpoint instead (`rebase_branch`), so no task waits for a checkpoint that will never come.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from moescale.atomic import atomic_write_text
from moescale.fmt import duration
from moescale.run import RunDirError, read_summary_or_none
from moescale.study.spec import Run

logger = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"


@dataclass
class Task:
    run: Run
    config_path: Path
    est_s: float = 1.0  # estimated seconds (from the calibration; ordering and the ETA)
    state: str = PENDING
    attempts: int = 0
    reason: str = ""
    started: float = 0.0
    already_done: bool = False  # done before this study call began (skipped, not retrained)
    eval_tasks: tuple[str, ...] = ()  # an evaluation of the run (lm-eval tasks), not its training
    eval_limit: int | None = None

    @property
    def name(self) -> str:
        return f"eval {self.run.name}" if self.eval_tasks else self.run.name

    def argv(self, threads: int) -> list[str]:
        """The `moescale` command line this task runs."""
        if not self.eval_tasks:
            return ["train", str(self.config_path), "--threads", str(threads)]
        limit = ["--limit", str(self.eval_limit)] if self.eval_limit else []
        return ["eval", str(self.run_dir), "--tasks", ",".join(self.eval_tasks), *limit,
                "--threads", str(threads)]  # fmt: skip

    @property
    def run_dir(self) -> Path:
        return Path(self.run.config["train"]["out_dir"])

    @property
    def waits_for(self) -> Path | None:
        src = self.run.config["train"].get("init_from")
        return Path(src) if src else None


def trained(run_dir: Path) -> int | None:
    """The final step of a finished run, None when it is not finished."""
    try:
        s = read_summary_or_none(run_dir)
    except RunDirError:
        return None
    return s.steps if s is not None and s.status == "done" else None


def is_done(task: Task) -> bool:
    step = trained(task.run_dir)
    if step is None or not task.eval_tasks:
        return step is not None
    from moescale.eval.results import read_eval  # torch-free

    try:
        done = {(e.get("task"), e.get("step")) for e in read_eval(task.run_dir).values()}
    except RunDirError:
        return False
    return all((t, step) in done for t in task.eval_tasks)


def ready(task: Task, by_name: dict[str, Task]) -> bool | None:
    """True: may start; False: not yet; None: never (task.reason says why)."""
    if task.state != PENDING:
        return False
    if task.eval_tasks:  # evaluates the run once it is trained; never, if its training failed
        train = by_name.get(task.run.name)
        if train is not None and train.state in (FAILED, SKIPPED):
            task.reason = "its training failed"
            return None
        return trained(task.run_dir) is not None
    src = task.waits_for
    if src is None or src.exists() or is_done(task):
        return True
    trunk = by_name.get(task.run.trunk)
    if trunk is not None and trunk.state in (FAILED, SKIPPED):
        task.reason = f"its trunk {trunk.name} failed"
        return None
    if trunk is not None and trunk.state == DONE:  # finished without this branch's checkpoint
        note = rebase_branch(task.run)
        if not note:
            task.reason = f"its trunk {trunk.name} finished without the checkpoint {src}"
            return None
        logger.info("%s", note)
        atomic_write_text(task.config_path, yaml.safe_dump(task.run.config, sort_keys=False))
        return True
    return False


def rebase_branch(run: Run) -> str:
    """Start a WSD branch from an earlier checkpoint of its trunk when the trunk finished without
    the one at the branch's decay start; what changed (for the log), or "" when nothing did.

    This happens when a budget is added to a study whose trunks are trained: a trunk's name leaves
    out train.branch_tokens, so it is not retrained, and it kept only the branch points it knew.
    The branch then starts from the trunk's newest kept checkpoint at or before that step and
    trains the missing stable-phase steps itself. They are the trunk's own steps (same config but
    train.tokens, same peak lr, same batches: the sampler is a function of the step), so the
    branch is exactly the run it would have been, for a few more steps; its name does not change
    (train.init_from is not in it). With no such checkpoint it trains from scratch, as a
    separate run: still exact, and cheaper than retraining the trunk."""
    src = run.config["train"].get("init_from")
    if not run.trunk or not src or Path(src).exists() or trained(Path(src).parent.parent) is None:
        return ""  # not a branch, its checkpoint is there, or its trunk will still write it
    from moescale.train.checkpoint import list_checkpoints  # torch-free

    wanted, trunk = run.branch_step, run.trunk
    earlier = [(s, p) for s, p in list_checkpoints(Path(src).parent) if s <= wanted]
    if earlier:
        run.branch_step, path = earlier[-1]
        run.config["train"]["init_from"] = str(path)
        return (f"study: {run.name} starts from step {run.branch_step} of its trunk {trunk} "
                f"({path}): the trunk finished without a checkpoint at step {wanted} (its budget "
                "was added later); the branch trains the steps in between itself")  # fmt: skip
    del run.config["train"]["init_from"]
    run.trunk, run.branch_step = "", 0
    return (f"study: {run.name} trains from scratch: its trunk {trunk} finished without a "
            f"checkpoint at or before step {wanted} (its budget was added later)")  # fmt: skip


def order(tasks: list[Task]) -> list[Task]:
    """Longest first (trunks before their branches): fewer workers idle at the end."""
    return sorted(tasks, key=lambda t: (bool(t.eval_tasks), bool(t.run.trunk), -t.est_s,
                                        t.run.name))


class Progress:
    """One display over the runs: done / running / failed and an ETA weighted by the estimated
    cost of what is left. A bar when stderr is a terminal (tqdm), log lines always."""

    def __init__(self, tasks: list[Task], workers: int) -> None:
        self.tasks, self.workers = tasks, workers
        self.t0 = time.perf_counter()
        self.total = sum(t.est_s for t in tasks if not t.already_done)
        self.bar = None
        if sys.stderr.isatty() and self.total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=round(self.total), unit="s", unit_scale=False, leave=True,
                            bar_format="{l_bar}{bar}| {postfix}", dynamic_ncols=True)  # fmt: skip

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (DONE, RUNNING, FAILED, SKIPPED, PENDING)}
        for t in self.tasks:
            out[t.state] += 1
        return out

    def eta(self) -> float | None:
        done = sum(t.est_s for t in self.tasks if t.state == DONE and not t.already_done)
        elapsed = time.perf_counter() - self.t0
        if done <= 0:
            return self.total / max(self.workers, 1)
        return elapsed * (self.total - done) / done

    def line(self) -> str:
        c = self.counts()
        eta = self.eta()
        return (f"{c[DONE]}/{len(self.tasks)} done, {c[RUNNING]} running, {c[FAILED]} failed"
                + (f", {c[SKIPPED]} skipped" if c[SKIPPED] else "")
                + (f", ETA {duration(eta)}" if eta is not None and c[PENDING] + c[RUNNING]
                   else ""))  # fmt: skip

    def update(self, task: Task | None = None, message: str = "") -> None:
        if message:
            if self.bar is not None:
                self.bar.write(message, file=sys.stderr)
            else:
                logger.info(message)
        if self.bar is not None:
            if task is not None and task.state == DONE:
                self.bar.update(round(task.est_s))
            self.bar.set_postfix_str(self.line(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
