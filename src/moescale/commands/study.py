"""Run a study: train the ladder, collect the results, fit the laws, write the report.

  moescale study STUDY.yaml [--dry-run] [--workers N] [--retries N] [--set key=value ...]

STUDY.yaml is a base config plus axes (model ladder, architectures, token budgets, batch size and
learning rate, seeds) or an explicit list of runs; see examples/quickstart.yaml and the README.
--dry-run prints every run with its parameters, tokens, FLOPs and an estimated wall time from a
short measured calibration, and trains nothing. Re-running the same command resumes: finished
runs are kept, interrupted ones continue from their checkpoints, and the report is rebuilt only
if the results or report.budgets changed; a token budget added to a finished study trains only
its new decay branch (from the trunk's nearest earlier checkpoint when the trunk never kept its
own). Ctrl-C stops the workers cleanly. --set overrides a key of the base config (e.g. --set
train.device=cuda); a key that the ladder, architectures, seeds or tokens set in every run is
refused (change that axis instead). Exit status: 0 when every run finished, 1 when some
failed (the report is still written from the others), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moescale.commands import add_set_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="study YAML (examples/quickstart.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and estimates only")
    parser.add_argument("--workers", type=int, metavar="N", help="runs at once (default: spec)")
    parser.add_argument("--retries", type=int, metavar="N", help="extra attempts per failed run")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="train and collect only")  # fmt: skip
    add_set_flag(parser)


def run(args: argparse.Namespace) -> int:
    from moescale.study.driver import run_study

    outcome = run_study(args.spec, args.overrides, dry_run=args.dry_run, workers=args.workers,
                        retries=args.retries, report=args.report)  # fmt: skip
    if args.dry_run:
        print(outcome.plan_table)
        return 0
    c = outcome.collected
    if c is not None:
        print(f"results: {len(c.rows)} runs in {outcome.study.out_dir / 'results.csv'}")
        for path, reason in c.problems:
            print(f"  not in the table: {path}: {reason}")
    for t in outcome.failed:
        print(f"  {t.state}: {t.run.name}: {t.reason}")
    if outcome.report is not None:
        print(f"report: {outcome.report}")
        print_headline(outcome.report.parent / "study.json")
    return 1 if outcome.failed else 0


def print_headline(study_json: Path) -> None:
    """The study's answer in a few lines, from the study.json the report was built with."""
    try:
        analysis = json.loads(study_json.read_text())
    except (OSError, ValueError):
        return  # the report path was printed; its page says the rest
    for line in headline(analysis):
        print(line)


def headline(a: Mapping[str, Any]) -> list[str]:
    """The study's answer in a few console lines (after `moescale study` and `report`): the
    measured equal-compute differences, the law used per architecture, and what else the
    report holds; the rest is in the report."""
    from moescale.study.analysis_words import NAMES, design_label, iv, skipped

    out = []
    matched = (a.get("equal_compute") or {}).get("matched", {})
    for key in ("moe_vs_dense", "fine-grained_vs_dense", "fine-grained_vs_moe"):
        sec = matched.get(key)
        if sec is None or skipped(sec):
            continue
        new, base = key.split("_vs_")
        for d in sec["designs"]:
            out.append(f"  {NAMES[base]} minus {NAMES[new]} ({design_label(d)}): "
                       f"{iv(d['mean_difference'])} nats, {d['n']} pair(s)")  # fmt: skip
    if out:
        seeds = [p.get("seeds", 1) for pts in (a.get("points") or {}).values() for p in pts]
        one = " one seed per point, so seed-to-seed variation is not in the intervals;" if (
            seeds and max(seeds) == 1) else ""  # fmt: skip
        out.insert(0, f"equal compute, matched runs (validation loss, 95 %;{one} > 0: the "
                   "second is better):")  # fmt: skip
    laws = [f"{NAMES[v]} {sec['primary']}" for v, sec in a.get("laws", {}).items()
            if not skipped(sec) and sec.get("primary")]  # fmt: skip
    if laws:
        out.append("laws: " + "; ".join(laws))
    out.append(f"{len(a.get('claims', []))} claims and {len(a.get('warnings', []))} warnings "
               "in the report")  # fmt: skip
    return out
