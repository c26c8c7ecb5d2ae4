"""Fit the laws and write the report of a study directory (collects it first).

  moescale report DIR [--budgets 1e18,1e20,1e22] [--force]

Writes DIR/study.json (every fit, interval, plan and claim), DIR/report.html (self-contained:
the figures are embedded) and DIR/figures/*.png. A study's directory keeps the study's name and
`report.budgets` (what `moescale study` wrote there), so the page is the one the study wrote
unless --budgets says otherwise. Skipped when it is up to date with the results and the budgets,
unless --force. Does not load torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moescale.commands import flop_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="study directory")
    parser.add_argument("--budgets", default=None,
                        help="compute budgets (FLOPs) to plan for, comma-separated (default: the "
                        "study's report.budgets, else 1e18,1e20,1e22)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")


def run(args: argparse.Namespace) -> int:
    from moescale.commands.study import print_headline
    from moescale.errors import UserError
    from moescale.study.collect import collect
    from moescale.study.driver import analyze_and_report, saved_settings
    from moescale.study.spec import Study

    name, budgets = saved_settings(Path(args.dir))
    budgets = flop_list(args.budgets) or budgets
    c = collect(args.dir)
    for path, reason in c.problems:
        print(f"  not collected: {path}: {reason}")
    if not c.rows:
        raise UserError(f"{args.dir}: no finished runs to report on")
    study = Study(name, Path(args.dir), [], {}, {})
    html = analyze_and_report(study, c, budgets, force=args.force)
    print(f"report: {html}")
    print_headline(html.parent / "study.json")
    return 0
