"""Fit a scaling law to a results table (CSV or Parquet) and print or write its coefficients.

Columns: any two of N (--n-col), D (--d-col), C (--flops-col); the third follows from
C = 6·N·D. Default N is `params_active`, or `params_total` for krajewski (whose N counts all
experts, as in Krajewski et al. 2024); D `tokens`, C `flops`, loss `val_loss`, E `experts`,
G `granularity`; a `run` column, when present, makes the bootstrap resample whole runs.
Epoch AI's Chinchilla points (Besiroglu et al. 2024) work with --n-col "Model Size"
--flops-col "Training FLOP" --loss-col loss.

  moescale fit TABLE [--law NAME|EXPRESSION] [--json [OUT]]
"""

from __future__ import annotations

import argparse

from moescale.commands import add_json_flag, emit_json
from moescale.fmt import sig
from moescale.laws.forms import BUILTIN, EXTRA_INPUTS
from moescale.laws.table import COLUMN_FLAGS
from moescale.run import Col


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
    }
    for key, text in column_help.items():
        parser.add_argument(COLUMN_FLAGS[key], dest=f"col_{key}", metavar="COLUMN", help=text)
    parser.add_argument(
        "--method",
        default="vp",
        choices=["vp", "epoch"],
        help="vp: variable projection (default); epoch: LSE form from a grid",
    )
    parser.add_argument(
        "--loss",
        default=None,
        choices=["squared", "huber"],
        help="squared error of L (vp default) or Huber on log L (epoch default)",
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
        help="hold out this fraction of largest-compute points (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="bootstrap processes (default 2)")
    add_json_flag(parser, "the fit")


def run(args: argparse.Namespace) -> int:
    from moescale.laws.fit import fit_table

    res = fit_table(
        args.table,
        args.law,
        columns={k.removeprefix("col_"): v for k, v in vars(args).items() if k.startswith("col_")},
        method=args.method,
        loss=args.loss,
        drop_outliers=args.drop_outliers,
        bootstrap_draws=args.bootstrap,
        holdout_frac=args.holdout_frac,
        seed=args.seed,
        workers=args.workers,
    )
    if args.json_out != "-":
        print(f"law {res.law}: L = {res.expression}")
        derived = f", {res.derived}" if res.derived else ""
        print(f"{res.n_points} points, method {res.method}, loss {res.loss}{derived}")
        print(f"{'param':<10} {'value':>14} {'95% low':>14} {'95% high':>14}")
        for q, v in res.params.items():
            lo, hi = res.intervals.get(q, (None, None))
            print(f"{q:<10} {sig(v):>14} {sig(lo):>14} {sig(hi):>14}")
        ins, h = res.in_sample, res.holdout
        print(
            f"objective {sig(res.objective)}; in-sample MAE {sig(ins['mae'])}, "
            f"RMSE {sig(ins['rmse'])}"
        )
        print(
            f"held-out {h['n']} largest-compute points: MAE {sig(h['mae'])}, "
            f"max |error| {sig(h['max_abs'])}"
        )
    if args.json_out:
        emit_json(res.to_json(), args.json_out)
    return 0
