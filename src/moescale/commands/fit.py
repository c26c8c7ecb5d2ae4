"""Fit a scaling law to a results table (CSV or Parquet) and print or write its coefficients.

Columns: N (--n-col), D (--d-col), C (--flops-col): every one given or present is used, and
a missing one follows from C = 6·N·D (the JSON's `flops_convention` says which). Default N is
`params_active`, or `params_total` for krajewski (whose N counts all experts, as in Krajewski
et al. 2024); D `tokens`, C `flops`, loss `val_loss`, E `experts`, G `granularity`; a `run`
column, when present, makes the bootstrap resample whole runs. Epoch AI's Chinchilla points
(Besiroglu et al. 2024) work with --n-col "Model Size" --flops-col "Training FLOP" --loss-col
loss.

Rows: --transform "loss=log(perplexity)" adds a column, --where "arch == 'moe' and tokens >
1e9" keeps rows, --best-of loss --group-by arch,N,D keeps the best row per group (e.g. the best
learning rate). --method isoflop fits IsoFLOP profiles (Hoffmann et al. 2022's approach 2)
instead of a law: runs grouped by --budget-col, --budgets or clustered FLOPs (--budget-tol).

A fit the data cannot support (exponents at their bounds, coefficients forced to zero, one
value of N or D, N and D collinear, few points) is reported as warnings in the output and the
JSON; --strict then exits with status 3 (after writing the JSON).

  moescale fit TABLE [--law NAME|EXPRESSION | --method isoflop] [--strict] [--json [OUT]]
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from moescale.commands import STDOUT, add_json_flag, emit_json, flop_list, logs_to_stderr
from moescale.errors import UserError
from moescale.fmt import plural, sig
from moescale.laws.forms import BUILTIN, EXTRA_INPUTS
from moescale.laws.table import COLUMN_FLAGS
from moescale.run import Col

if TYPE_CHECKING:
    from moescale.laws.isoflop import IsoFLOPResult
    from moescale.laws.result import FitResult
    from moescale.laws.table import TableOptions

STRICT_EXIT = 3  # --strict and the fit has warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="results table: .csv or .parquet")
    parser.add_argument(
        "--law",
        default="chinchilla",
        help=f"{' | '.join(BUILTIN)}, or an expression such as 'E0 + A/N**alpha + B/D**beta' "
        "(inputs N, D, C, E, G; other names are parameters)",
    )
    own = "".join(
        f"; {n}: {f().n_column}" for n, f in BUILTIN.items() if f().n_column != Col.PARAMS_ACTIVE
    )
    column_help = {
        "N": f"N column (default {Col.PARAMS_ACTIVE}{own})",
        "D": f"tokens column D (default {Col.TOKENS})",
        "C": f"training FLOPs column C (default {Col.FLOPS})",
        "loss": f"loss column (default {Col.VAL_LOSS})",
        **{k: f"{k} column: {x.meaning} (default {x.column})" for k, x in EXTRA_INPUTS.items()},
        "run": f"run id column: bootstrap resamples whole runs (default {Col.RUN})",
        "budget": "nominal compute-budget column that groups runs for --method isoflop",
    }
    for key, text in column_help.items():
        parser.add_argument(COLUMN_FLAGS[key], dest=f"col_{key}", metavar="COLUMN", help=text)
    _add_row_flags(parser)
    parser.add_argument(
        "--method",
        default="vp",
        choices=["vp", "epoch", "isoflop"],
        help="vp: variable projection (default); epoch: LSE form from a grid; isoflop: "
        "IsoFLOP profiles (Hoffmann et al. 2022, approach 2), no law",
    )
    parser.add_argument(
        "--loss",
        default=None,
        choices=["squared", "huber"],
        help="squared error of L (vp default) or Huber on log L (epoch default)",
    )
    parser.add_argument(
        "--huber-delta", type=float, default=1e-3, metavar="DELTA", help="Huber δ (1e-3)"
    )
    parser.add_argument(
        "--drop-outliers",
        type=int,
        default=0,
        metavar="K",
        help="drop the K rows with the highest loss first (default 0)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="B",
        help="bootstrap draws for the intervals (default 1000; 0: none)",
    )
    parser.add_argument(
        "--holdout-frac",
        type=float,
        default=0.1,
        metavar="F",
        help="hold out this fraction of largest-compute points, whole compute levels (0.1)",
    )
    parser.add_argument("--budgets", metavar="C1,C2,...", help="isoflop: nominal budgets")
    parser.add_argument(
        "--budget-tol",
        type=float,
        default=0.05,
        metavar="F",
        help="isoflop: a run joins a budget within this relative distance (default 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="bootstrap processes (default 2)")
    parser.add_argument(
        "--strict", action="store_true", help=f"exit {STRICT_EXIT} when the fit has warnings"
    )
    add_json_flag(parser, "the fit")


def _add_row_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transform",
        action="append",
        default=[],
        metavar="NAME=EXPR",
        help="add or replace a column, e.g. 'loss=log(perplexity)' (repeatable; a name among "
        "N, D, C, loss, E, G becomes that input)",
    )
    parser.add_argument(
        "--where",
        metavar="EXPR",
        help="keep the rows where EXPR holds, e.g. \"arch == 'moe' and tokens > 1e9\"",
    )
    parser.add_argument(
        "--best-of",
        metavar="COLUMN",
        help="keep the row of lowest COLUMN (e.g. loss) in each --group-by group",
    )
    parser.add_argument(
        "--group-by",
        metavar="A,B,...",
        help="groups of --best-of: columns or N, D, C, E, G (default: the law's inputs)",
    )
    parser.add_argument(
        "--n-from-flops",
        action="store_true",
        help="use N = C / (6 D) as the law's N (as Wang et al. 2024)",
    )


def run(args: argparse.Namespace) -> int:
    from moescale.laws.result import FitResult
    from moescale.laws.table import TableOptions

    options = TableOptions(
        columns={k.removeprefix("col_"): v for k, v in vars(args).items() if k.startswith("col_")},
        transforms=tuple(args.transform),
        where=args.where,
        best_of=args.best_of,
        group_by=tuple(g.strip() for g in (args.group_by or "").split(",") if g.strip()),
        n_from_flops=args.n_from_flops,
    )
    with logs_to_stderr(args.json_out == STDOUT):
        res = _fit(args, options)
    if args.json_out != STDOUT:
        if isinstance(res, FitResult):
            _print(res)
        else:
            _print_isoflop(res)
    if args.json_out:
        emit_json(res.to_json(), args.json_out)
    if args.strict and res.warnings:
        codes = ", ".join(sorted({w.get("code", "?") for w in res.warnings}))
        print(
            f"moescale fit: --strict: {plural(len(res.warnings), 'warning')} ({codes})",
            file=sys.stderr,
        )
        return STRICT_EXIT
    return 0


def _fit(args: argparse.Namespace, options: TableOptions) -> FitResult | IsoFLOPResult:
    if args.method == "isoflop":
        from moescale.laws.isoflop import isoflop_table

        law_flags = {"--law": args.law != "chinchilla", "--loss": args.loss}
        for flag, used in {**law_flags, "--drop-outliers": args.drop_outliers}.items():
            if used:
                raise UserError(f"--method isoflop fits no law; leave out {flag}")
        return isoflop_table(
            args.table, options=options, budgets=flop_list(args.budgets), tol=args.budget_tol,
            draws=args.bootstrap, seed=args.seed,
        )  # fmt: skip
    from moescale.laws.fit import fit_table

    if args.budgets or args.col_budget:
        raise UserError("--budgets and --budget-col group runs for --method isoflop only")
    return fit_table(
        args.table, args.law, options=options, method=args.method, loss=args.loss,
        delta=args.huber_delta, drop_outliers=args.drop_outliers, bootstrap_draws=args.bootstrap,
        holdout_frac=args.holdout_frac, seed=args.seed, workers=args.workers,
    )  # fmt: skip


def _interval(iv: tuple[float, float] | None, unidentified: bool = False) -> tuple[str, str]:
    if unidentified:
        return "unidentified", ""
    return (sig(iv[0]), sig(iv[1])) if iv else ("-", "-")


def _print(res: FitResult) -> None:
    print(f"law {res.law}: L = {res.expression}")
    print(f"{res.n_points} points, method {res.method}, loss {res.loss}; {res.flops_convention}")
    print(f"{'param':<10} {'value':>14} {'95% low':>14} {'95% high':>14}")
    for q, v in res.params.items():
        lo, hi = _interval(res.intervals.get(q), q in res.unidentified)
        print(f"{q:<10} {sig(v):>14} {lo:>14} {hi:>14}")
    ins, h = res.in_sample, res.holdout
    print(
        f"objective {sig(res.objective)}; in-sample MAE {sig(ins['mae'])}, RMSE {sig(ins['rmse'])}"
    )
    print(
        f"held-out {h['n']} largest-compute points: MAE {sig(h['mae'])}, "
        f"max |error| {sig(h['max_abs'])}"
    )
    _print_footer(res)


def _print_footer(res: FitResult | IsoFLOPResult) -> None:
    if res.bootstrap_failed or res.bootstrap_degenerate:
        bad = f"{res.bootstrap_failed} failed, {res.bootstrap_degenerate} degenerate"
        print(f"bootstrap: {len(res.bootstrap_params)} of {res.bootstrap_requested} draws ({bad})")
    if res.compute_range:
        print(f"compute range of the fitted points: {res.compute_range[0]:.3g} to "
              f"{res.compute_range[1]:.3g} FLOPs")  # fmt: skip
    if res.warnings:
        print(f"{plural(len(res.warnings), 'warning')}: see above (--strict makes them an error)")


def _print_isoflop(res: IsoFLOPResult) -> None:
    print(f"IsoFLOP profiles (Hoffmann et al. 2022, approach 2): {res.grouping}")
    print(f"{len(res.budgets)} budgets from {res.n_points} runs ({res.left_out} left out)")
    print(f"{'C':>10} {'runs':>5} {'N_opt':>10} {'95% interval':>23} {'D_opt':>10} {'L_min':>8}")
    for b in res.budgets:
        lo, hi = (sig(v, 4) for v in b.n_interval) if b.n_interval else ("-", "-")
        mark = "" if b.bracketed else "  not bracketed"
        print(f"{b.compute:>10.3g} {b.runs:>5} {b.n_opt:>10.4g} {lo + ' - ' + hi:>23} "
              f"{b.d_opt:>10.4g} {b.loss:>8.4f}{mark}")  # fmt: skip
    print("N_opt = n0 C^a, D_opt = d0 C^b, L_min = L_inf + K C^-gamma")
    print(f"{'param':<10} {'value':>14} {'95% low':>14} {'95% high':>14}")
    for q, v in res.params.items():
        lo, hi = _interval(res.intervals.get(q), q in res.unidentified)
        print(f"{q:<10} {sig(v):>14} {lo:>14} {hi:>14}")
    _print_footer(res)
