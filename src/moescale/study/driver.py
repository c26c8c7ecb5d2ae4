"""`moescale study`: spec -> data (one tokenizer) -> runs -> results table -> laws -> report.

Every step is resumable and skips what is already done: finished runs are not retrained, the
table is rebuilt from the run directories (cheap), and the analysis and report are rebuilt only
when the table or the report settings changed (`study.json` records the hash of the results and
the budgets and title it was computed with), so a second call on a finished study returns in
seconds.

    <out_dir>/
      study.yaml         a copy of the spec file (--set overrides are in each run's config)
      runs.json          the expanded runs: name, architecture, axis labels, trunk of a branch
      configs/NAME.yaml  each run's config (an ordinary `moescale train` config)
      runs/NAME/         each run's directory (moescale.run)
      results.csv|.parquet, curves.csv|.parquet   (moescale.study.collect)
      study.json, report.html, figures/           (moescale.study.analyze, moescale.report)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moescale.atomic import atomic_write_json, atomic_write_text
from moescale.config import config_from_dict
from moescale.errors import ConfigError, UserError
from moescale.fmt import duration, human
from moescale.study.calibrate import calibrate, makespan
from moescale.study.collect import Collected, collect
from moescale.study.executors import (
    ExecutorConfig,
    LocalExecutor,
    execute,
    fill_gpus,
    plan_workers,
)
from moescale.study.spec import Study, load_study
from moescale.study.tasks import DONE, FAILED, SKIPPED, Task, rebase_branch

logger = logging.getLogger(__name__)
DEFAULT_BUDGETS = (1e18, 1e20, 1e22)
EVAL_EST_S = 15.0  # an evaluation's process: imports (lm-eval) and a few hundred items


@dataclass
class StudyOutcome:
    study: Study
    tasks: list[Task]
    collected: Collected | None = None
    report: Path | None = None
    plan_table: str = ""  # --dry-run: the runs, their FLOPs and estimated times

    @property
    def failed(self) -> list[Task]:
        return [t for t in self.tasks if t.state in (FAILED, SKIPPED)]


def validate_runs(study: Study) -> None:
    """Every run's config is checked before anything runs; all errors are reported at once.
    So are the user's corpus files (the trainer's own check, `check_corpus`): a path that
    matches no file fails the plan, --dry-run included, not every run once it starts."""
    from moescale.data.corpus import check_corpus

    errors, corpora = [], []
    for r in study.runs:
        try:
            corpus = config_from_dict(copy.deepcopy(r.config)).data.corpus
        except ConfigError as exc:
            errors.append(f"run {r.name}: {exc}")
            continue
        if corpus not in corpora:
            corpora.append(corpus)
    if errors:
        raise ConfigError("\n".join(errors))
    for corpus in corpora:
        check_corpus(corpus)


def plan_branches(study: Study) -> None:
    """A WSD branch whose trunk finished without its checkpoint (a budget added to a trained
    study) starts from an earlier one (`rebase_branch`), before anything runs or is listed."""
    for r in study.runs:
        if note := rebase_branch(r):
            logger.info("%s", note)


def executor_config(study: Study, workers: int | None, retries: int | None) -> ExecutorConfig:
    """The spec's executor with --workers/--retries, which follow the spec's rules (a negative
    count would plan no worker and wait forever)."""
    cfg = ExecutorConfig.from_dict(study.executor)
    flags = (("workers", workers, "one per core"), ("retries", retries, "no retry"))
    for key, value, zero in flags:
        if value is None:
            continue
        try:
            ExecutorConfig.from_dict({key: value})
        except ConfigError:
            raise UserError(f"--{key}: got {value}, expected an integer >= 0 (0: {zero}), as "
                            f"executor.{key} in a study file") from None  # fmt: skip
        setattr(cfg, key, value)
    if all(_on_cuda(r.config) for r in study.runs):
        fill_gpus(cfg, "runs_per_gpu" in study.executor)
    return cfg


def _on_cuda(config: dict[str, Any]) -> bool:
    device = str(config.get("train", {}).get("device", "auto"))
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device == "cuda"  # cuda:N names its GPU itself: not remapped


def write_plan(study: Study, spec_text: str) -> list[Task]:
    """study.yaml, runs.json and configs/: written only when they change (atomically)."""
    out = study.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out / "study.yaml", spec_text)
    manifest = {"name": study.name, "runs": [
        {"name": r.name, "arch": r.arch, "variant": r.variant, "size": r.size, "tokens": r.tokens,
         "hyper": r.hyper, "trunk": r.trunk, "branch_step": r.branch_step}
        for r in study.runs]}  # fmt: skip
    _write_if_changed(out / "runs.json", json.dumps(manifest, indent=1) + "\n")
    tasks = []
    evals = study.eval_tasks()
    limit = study.eval.get("limit")
    for r in study.runs:
        path = out / "configs" / f"{r.name}.yaml"
        _write_if_changed(path, yaml.safe_dump(r.config, sort_keys=False))
        tasks.append(Task(r, path))
        if evals and not r.hyper:  # downstream accuracy of every ladder point
            tasks.append(Task(r, path, eval_tasks=evals,
                              eval_limit=int(limit) if limit else None))  # fmt: skip
    return tasks


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)


def prepare_study_data(study: Study) -> str:
    """Build the corpus, the tokenizer and the shards once, before any worker starts (workers
    would otherwise race to build the same cache); every run then maps the same shards."""
    from moescale.data import prepare_data

    cfgs = [config_from_dict(copy.deepcopy(r.config)) for r in study.runs]
    keys = {(json.dumps(c.data.__dict__, sort_keys=True, default=str), c.model.vocab_size)
            for c in cfgs}  # fmt: skip
    if len(keys) > 1:
        raise ConfigError("study: the runs use different data or vocab_size; a study has one "
                          "tokenizer (set data and model.vocab_size in base only)")  # fmt: skip
    data = prepare_data(cfgs[0].data, cfgs[0].model.vocab_size)
    return data.tokenizer_sha256


def dry_run_table(study: Study, estimates: dict[str, float], workers: int) -> str:
    from moescale.accounting import count

    lines = [f"{'run':44s} {'arch':>13s} {'N active':>9s} {'N total':>9s} {'tokens':>7s} "
             f"{'FLOPs':>8s} {'spent':>8s} {'est':>7s}  starts from"]  # fmt: skip
    spent_total = point_total = 0.0
    for r in study.runs:
        cfg = config_from_dict(copy.deepcopy(r.config))
        a = count(cfg.model)
        flops = a.flops_per_token * r.tokens
        per_step = cfg.train.batch_size * cfg.model.seq_len
        spent = a.flops_per_token * (r.tokens - r.branch_step * per_step)
        spent_total, point_total = spent_total + spent, point_total + flops
        start = f"step {r.branch_step} of {r.trunk}" if r.trunk else "scratch"
        lines.append(f"{r.name:44s} {r.arch:>13s} {human(a.params_active):>9s} "
                     f"{human(a.params_total):>9s} {human(r.tokens):>7s} {human(flops):>8s} "
                     f"{human(spent):>8s} {duration(estimates[r.name]):>7s}  {start}")  # fmt: skip
    n_branch = sum(bool(r.trunk) for r in study.runs)
    lines.append(
        f"{len(study.runs)} runs ({n_branch} WSD branches), {human(spent_total)}FLOP to train "
        f"vs {human(point_total)}FLOP as separate runs ({point_total / spent_total:.2f}x saved); "
        f"estimated wall time {duration(makespan(estimates, workers))} on {workers} workers "
        f"(sum {duration(sum(estimates.values()))})"
    )
    return "\n".join(lines)


def make_executor(cfg: ExecutorConfig, study: Study) -> Any:
    if cfg.kind == "local":
        return LocalExecutor(cfg)
    from moescale.study.slurm import SubmititExecutor

    return SubmititExecutor(cfg, study.out_dir / "submitit")


def analyze_and_report(study: Study, c: Collected, budgets: Any, force: bool = False) -> Path:
    """study.json and report.html from the collected tables, unless they are already up to date
    for exactly these results and these settings (budgets, title, what collect left out)."""
    out = study.out_dir
    digest = hashlib.sha256((out / "results.csv").read_bytes()
                            + (out / "curves.csv").read_bytes()).hexdigest()  # fmt: skip
    title = f"moescale study: {study.name}"
    try:
        settings = {"budgets": [float(b) for b in budgets], "title": title}
    except (TypeError, ValueError):
        raise UserError(f"report.budgets: got {budgets!r}, expected a list of compute budgets "
                        "in FLOPs, e.g. [1e18, 1e20]") from None  # fmt: skip
    problems = [{"path": p, "reason": r} for p, r in c.problems]
    html = out / "report.html"
    if not force and html.exists() and _up_to_date(out / "study.json", digest, settings, problems):
        logger.info("report: up to date with the results and settings (%s)", html)
        return html
    from moescale.report import write_report
    from moescale.study.analyze import analyze

    laws_log = logging.getLogger("moescale.laws")
    level = laws_log.level
    laws_log.setLevel(logging.ERROR)  # each fit's warnings go into study.json and the report once
    try:
        analysis = analyze(c.rows, c.curves, budgets=tuple(settings["budgets"]))
    finally:
        laws_log.setLevel(level)
    if analysis.get("warnings"):
        logger.info("report: %d warnings about the fits (listed in the report and study.json)",
                    len(analysis["warnings"]))  # fmt: skip
    analysis["results_sha256"] = digest
    analysis["report_settings"] = settings
    analysis["problems"] = problems
    analysis["compute"] = compute_saved(c.rows)
    meta = {"training": analysis["compute"]["summary"]}
    path = write_report(out, c.rows, c.curves, analysis, title=title, meta=meta)
    atomic_write_json(out / "study.json", analysis)
    return path


def _up_to_date(path: Path, digest: str, settings: dict, problems: list) -> bool:
    """Whether study.json was computed from these tables with these settings."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    saved = (old.get("results_sha256"), old.get("report_settings"), old.get("problems"))
    return saved == (digest, settings, problems)


def saved_settings(out_dir: Path) -> tuple[str, Any]:
    """(study name, report budgets) that `moescale study` used for the report in `out_dir`
    (runs.json, and report.budgets of its copy of the spec), so `moescale report DIR` rebuilds
    the same page; (the directory's name, DEFAULT_BUDGETS) where no study wrote them."""
    name, budgets = out_dir.name, DEFAULT_BUDGETS
    try:
        name = json.loads((out_dir / "runs.json").read_text()).get("name", name)
        spec = yaml.safe_load((out_dir / "study.yaml").read_text())
        budgets = ((spec or {}).get("report") or {}).get("budgets", budgets)
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        pass
    return str(name), budgets


def compute_saved(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the WSD branches saved: the exact FLOPs of every point as a separate run against
    the FLOPs the study's run directories actually computed."""
    points = sum(float(r["flops"]) for r in rows)
    spent = sum(float(r["flops_spent"]) for r in rows)
    branches = sum(1 for r in rows if r.get("branch_of"))
    wall = sum(float(r.get("wall_time_s") or 0) for r in rows)
    ratio = points / spent if spent > 0 else None
    summary = (f"{len(rows)} points ({branches} from WSD decay branches), {human(spent)}FLOP "
               f"trained vs {human(points)}FLOP as separate runs"
               + (f" ({ratio:.2f}x less)" if ratio else "") + f"; {duration(wall)} of run time")
    return {"flops_points": points, "flops_spent": spent, "saved_ratio": ratio,
            "branch_points": branches, "run_time_s": wall, "summary": summary}  # fmt: skip


def run_study(
    path: str | Path, overrides: list[str] | None = None, dry_run: bool = False,
    workers: int | None = None, retries: int | None = None, report: bool = True,
) -> StudyOutcome:  # fmt: skip
    study = load_study(path, overrides)
    validate_runs(study)
    if study.eval_tasks():
        from moescale.eval.tasks import check_task_names

        check_task_names(study.eval_tasks())
    ex_cfg = executor_config(study, workers, retries)
    plan_branches(study)
    n_workers, threads = plan_workers(ex_cfg)
    spec_text = Path(path).read_text()
    if dry_run:
        estimates = calibrate(study.runs, threads, study.out_dir / "calibration.json")
        return StudyOutcome(study, [], plan_table=dry_run_table(study, estimates, n_workers))
    tasks = write_plan(study, spec_text)
    prepare_study_data(study)
    estimates = calibrate(study.runs, threads, study.out_dir / "calibration.json")
    for t in tasks:
        t.est_s = estimates[t.run.name] if not t.eval_tasks else EVAL_EST_S
    execute(tasks, make_executor(ex_cfg, study), ex_cfg.retries)
    outcome = StudyOutcome(study, tasks)
    outcome.collected = collect(study.out_dir)
    if report and any(t.state == DONE for t in tasks):
        budgets = study.report.get("budgets", DEFAULT_BUDGETS)  # as saved_settings reads it
        outcome.report = analyze_and_report(study, outcome.collected, budgets)
    return outcome
