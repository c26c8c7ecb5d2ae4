"""Optimal batch size and learning rate per architecture (docs/science.md, section 4).

Two inputs, two methods:

- training curves, `--method curves` (Wang et al. 2024): a long table with columns run, arch,
  batch_size, lr, tokens, loss, schedule (one row per logged training step; experts, top_k,
  granularity and params_active when present), or run directories (their metrics.jsonl). For
  each training-loss level, the batch (or LR) whose run reaches it in the fewest tokens; then
  B_opt = λ_B·L^(−α_B), η_opt = λ_η·L^(−α_η) per architecture. Constant-LR or WSD runs only:
  cosine curves are refused.
- a results table, `--method band` (DeepSeek-AI 2024a; StepLaw, Li et al. 2025): one row per run
  (the last row of each run is used), such as a study's results.csv. In each cell
  (architecture, nominal N, nominal D) where batch size (LR) takes two or more values, the runs
  within 0.25 % of the cell's best loss give B (η) against compute, against (N, D) and against
  loss, with the error on held-out largest-compute cells; a law needs two such cells (a study's
  hyper axes at two sizes or token budgets). Cells of one value, such as a ladder's, are not used.

Default method: curves for run directories and for tables with a `schedule` and a `loss`
column, band otherwise. `moescale collect`'s curves.csv holds no run settings (arch, batch
size, schedule): give the run directories instead. --where keeps rows as in `moescale fit`
(e.g. "status == 'done'"). Batch sizes stay in the unit of their column, never converted:
sequences (`batch_size`) or tokens (`--batch-col batch_tokens`); the unit is stated in the
output and the JSON, which `moescale plan --hyper` reads. --batch-unit names the unit of any
other column; for batch_size or batch_tokens it may only repeat theirs (`--batch-unit tokens`
with batch_size is refused, not a relabelling: use `--batch-col batch_tokens`). --seq-len, which
must agree with the table's seq_len column when it has one, is recorded so that `moescale plan
--hyper` can also state a batch in sequences in tokens.

  moescale hyper TABLE|RUN_DIR... [--method curves|band] [--where EXPR] [--batch-col COL]
      [--batch-unit sequences|tokens] [--seq-len S] [--json [OUT]]
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from moescale.commands import STDOUT, add_json_flag, emit_json, logs_to_stderr
from moescale.errors import UserError
from moescale.fmt import sig
from moescale.run import Col, Metric

if TYPE_CHECKING:
    from moescale.laws.hyper import HyperLaws
    from moescale.laws.plan import HyperResult

log = logging.getLogger(__name__)

DEFINITIONS = {
    "curves": "per training-loss level, the batch size (learning rate) whose run reaches it in "
    "the fewest tokens, among runs of one architecture and size that differ only in it (Wang et "
    "al. 2024); optima at the edge of the sweep are listed but not fitted",
    "band": "in each cell (architecture, nominal N, nominal D), the runs within 0.25 % of the "
    "cell's best final loss; log y regressed on log x over them (DeepSeek-AI 2024a; StepLaw)",
}
UNITS = {Col.BATCH_SIZE: "sequences", "batch_tokens": "tokens"}
NEEDS = {  # columns besides --batch-col, and the table they describe
    "curves": ((Col.RUN, Col.LR, "schedule", Metric.TOKENS, Metric.LOSS), "a curve table (one "
               "row per logged step, each with its run's settings), or run directories"),
    "band": ((Col.PARAMS_ACTIVE, Col.TOKENS, Col.LR, Col.VAL_LOSS), "a results table, one row per "
             "run with its settings (a study's results.csv, with batch_size and lr axes)"),
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="TABLE|RUN_DIR", help="a table or run dirs")
    parser.add_argument("--method", choices=list(DEFINITIONS), help="curves or band (see above)")
    parser.add_argument("--where", metavar="EXPR", help="keep the rows where EXPR holds")
    parser.add_argument("--batch-col", default=Col.BATCH_SIZE, help="batch column (batch_size)")
    parser.add_argument(
        "--batch-unit",
        choices=sorted(set(UNITS.values())),
        help="unit of --batch-col, required for a column other than batch_size (sequences) or "
        "batch_tokens (tokens); it converts nothing, and one contradicting those is refused",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        help="tokens per sequence (>= 1), recorded for "
        "`moescale plan --hyper` to state batches in sequences in tokens too",
    )
    parser.add_argument(
        "--levels", type=int, default=16, help="loss levels per sweep, >= 1 (curves)"
    )
    parser.add_argument(
        "--smooth", type=int, default=9, help="records averaged, >= 1 (1: none; curves)"
    )
    parser.add_argument(
        "--holdout-frac",
        type=float,
        default=0.2,
        help="fraction of cells held out, in [0, 1) (0: no held-out check; band)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="draws for the intervals, >= 0 (0: no intervals)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed, >= 0")
    add_json_flag(parser, "the laws")


def run(args: argparse.Namespace) -> int:
    from moescale.laws.plan import HyperResult

    check_options(args)
    with logs_to_stderr(args.json_out == STDOUT):
        method, laws = _laws(args)
    unit = args.batch_unit or UNITS[args.batch_col]
    settings = {"inputs": list(args.inputs), "batch_col": args.batch_col, **_boot(args),
                "definition": DEFINITIONS[method]}  # fmt: skip
    res = HyperResult(method, laws, unit, args.seq_len, settings)
    if args.json_out != STDOUT:
        _print(res)
    if args.json_out:
        emit_json(res.to_json(), args.json_out)
    return 0


def check_options(args: argparse.Namespace) -> None:
    """A one-line UserError for any flag out of range, or a --batch-unit contradicting the known
    unit of --batch-col, before any table is read (as `moescale fit`'s `check_options`)."""
    for flag, ok, value, want in (
        ("--bootstrap", args.bootstrap >= 0, args.bootstrap, ">= 0 (0: no intervals)"),
        ("--holdout-frac", 0 <= args.holdout_frac < 1, args.holdout_frac,
         "in [0, 1) (0: no held-out check)"),
        ("--levels", args.levels >= 1, args.levels, ">= 1 (loss levels per sweep)"),
        ("--smooth", args.smooth >= 1, args.smooth, ">= 1 (records averaged; 1: no smoothing)"),
        ("--seed", args.seed >= 0, args.seed, ">= 0"),
        ("--seq-len", args.seq_len is None or args.seq_len >= 1, args.seq_len,
         ">= 1 (tokens per sequence)"),
    ):  # fmt: skip
        if not ok:
            raise UserError(f"{flag} must be {want}, got {value}")
    known = UNITS.get(args.batch_col)
    if args.batch_unit and known and args.batch_unit != known:
        col = next(c for c, u in UNITS.items() if u == args.batch_unit)
        raise UserError(
            f"--batch-unit {args.batch_unit} contradicts --batch-col {args.batch_col}, which is in "
            f"{known}; hyper converts no units: for batch sizes in {args.batch_unit} give "
            f"--batch-col {col} (a study's results.csv has it), or leave --batch-unit out"
            + (" (with --seq-len, `moescale plan --hyper` states them in tokens too)"
               if known == "sequences" else "")
        )  # fmt: skip


def _check_seq_len(table: dict, args: argparse.Namespace) -> None:
    """--seq-len must be the runs' own, or `moescale plan --hyper` would state a batch in
    sequences in the wrong number of tokens."""
    if args.seq_len is None or "seq_len" not in table:
        return
    try:
        have = sorted({v for v in map(float, table["seq_len"]) if math.isfinite(v)})
    except (TypeError, ValueError):
        return  # not a numeric column: nothing to compare with
    if have and have != [float(args.seq_len)]:
        fix = (
            f'the runs differ in it: keep one length with --where, e.g. "seq_len == {have[0]:g}"'
            if len(have) > 1
            else f"leave --seq-len out or give {have[0]:g}"
        )
        raise UserError(f"--seq-len {args.seq_len} contradicts the table's seq_len column "
                        f"({', '.join(f'{v:g}' for v in have)}): {fix}")  # fmt: skip


def _boot(args: argparse.Namespace) -> dict[str, int]:
    """The bootstrap settings the laws are fitted with, and that the JSON records."""
    return {"bootstrap": args.bootstrap, "seed": args.seed}


def _laws(args: argparse.Namespace) -> tuple[str, dict[str, HyperLaws]]:
    from moescale.laws.hyper import curve_laws, curves_from_runs, hyper_laws_from_table
    from moescale.laws.table import read_table, select_rows

    dirs = all(Path(p).is_dir() for p in args.inputs)
    if not dirs and len(args.inputs) > 1:
        raise UserError("give one table, or run directories only")
    table = curves_from_runs(args.inputs) if dirs else read_table(args.inputs[0])
    if args.where:
        table = select_rows(table, args.where)
    method = args.method or (
        "curves" if dirs or ("schedule" in table and Metric.LOSS in table) else "band"
    )
    _check_columns(table, method, args)
    _check_seq_len(table, args)
    if args.batch_unit is None and args.batch_col not in UNITS:
        raise UserError(f"--batch-col {args.batch_col}: say its unit with --batch-unit")
    boot = _boot(args)
    if method == "curves":
        laws = curve_laws(table, batch_col=args.batch_col, levels=args.levels,
                          smooth=args.smooth, **boot)  # fmt: skip
    else:
        laws = hyper_laws_from_table(table, batch_col=args.batch_col,
                                     holdout_frac=args.holdout_frac, **boot)  # fmt: skip
    if not any(h.laws() for h in laws.values()):
        log.warning("no hyperparameter law could be fitted; the reasons are listed per law")
    return method, laws


def _check_columns(table: dict, method: str, args: argparse.Namespace) -> None:
    """Name the table `hyper` expects, rather than the first column a fit would miss."""
    needs, what = NEEDS[method]
    missing = [c for c in (*needs, args.batch_col) if c not in table]
    if missing:
        hint = ("; `moescale collect`'s curves.csv holds losses but not the runs' settings: give "
                "a study's results.csv, or the run directories for --method curves"
                if Col.RUN in table and Metric.LOSS in table else "")  # fmt: skip
        raise UserError(f"{args.inputs[0]} lacks {', '.join(map(repr, missing))}: --method "
                        f"{method} reads {what}{hint}")  # fmt: skip


def _print(res: HyperResult) -> None:
    print(f"method {res.method}: {res.settings['definition']}")
    print(f"batch sizes in {res.batch_unit}")
    for arch, h in res.laws.items():
        edge = sum(bool(p["edge"]) for p in h.points)
        extra = f", {len(h.points)} optima ({edge} at the sweep's edge)" if h.points else ""
        print(f"{arch}: {h.n_runs} runs, {h.n_kept} used{extra}")
        for name, law in h.laws().items():
            iv = ", ".join(f"{k} [{sig(a, 3)}, {sig(b, 3)}]" for k, (a, b) in law.intervals.items())
            print(f"  {name:<17} {law.to_json()['form']:<40} {iv}")
            if name in h.holdout:
                e = h.holdout[name]
                mean, top = sig(e["mean_abs_log_error"], 3), sig(e["max_abs_log_error"], 3)
                print(
                    f"  {'':<17} held-out {e['cells']} cells: |ln(pred/obs)| mean {mean}, max {top}"
                )
        reasons: dict[str, list[str]] = {}  # one line per reason, not per law
        for name, why in h.skipped.items():
            reasons.setdefault(why, []).append(name)
        for why, names in reasons.items():
            print(f"  {', '.join(names):<17} not fitted: {why}")
