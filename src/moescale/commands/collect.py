"""Collect run directories into the results table (CSV and Parquet) and the training curves.

  moescale collect DIR [--json [OUT]]

DIR is a study directory or any directory holding run directories. Writes DIR/results.csv,
results.parquet (one row per finished run: every parameter and FLOP convention, tokens, losses,
hyperparameters) and curves.csv, curves.parquet (one row per logged step). A run directory that
is unfinished or unreadable is listed with its path and the reason, never dropped silently.
Idempotent; does not load torch. Exit status 1 when some run directory could not be collected.
"""

from __future__ import annotations

import argparse

from moescale.commands import add_json_flag, emit_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="study directory, or a directory of run directories")
    add_json_flag(parser, "the rows and problems")


def run(args: argparse.Namespace) -> int:
    from moescale.study.collect import collect

    c = collect(args.dir)
    if args.json_out:
        emit_json({"rows": c.rows, "problems": [{"path": p, "reason": r} for p, r in c.problems],
                   "files": [str(f) for f in c.files]}, args.json_out)  # fmt: skip
        if args.json_out == "-":
            return 1 if c.problems else 0
    print(f"collected {len(c.rows)} runs, {len(c.curves)} curve points -> "
          + ", ".join(str(f) for f in c.files))
    for path, reason in c.problems:
        print(f"  not collected: {path}: {reason}")
    return 1 if c.problems else 0
