"""Fit a scaling law to a results table (CSV or Parquet) and write its coefficients as JSON.

Columns: any two of N (--n-col), D (--d-col), C (--flops-col); the third follows from
C = 6·N·D. Default N is `params_active` (chinchilla, wang, kaplan, custom) or `params_total`
(krajewski, whose N counts all experts as in P0); D `tokens`, C `flops`, loss `val_loss`,
E `experts`, G `granularity`; a `run` column, when present, makes the bootstrap resample whole
runs. Epoch's file works with --n-col "Model Size" --flops-col "Training FLOP" --loss-col loss.
"""

from __future__ import annotations

import argparse
import math

from moescale.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="results table: .csv or .parquet")
    parser.add_argument(
        "--law",
        default="chinchilla",
        help="chinchilla | wang | krajewski | kaplan, or an expression such as "
        "'E0 + A/N**alpha + B/D**beta' (inputs N, D, C, E, G; other names are parameters)",
    )
    parser.add_argument("--n-col", help="N column (default params_active; krajewski: params_total)")
    parser.add_argument("--d-col", help="tokens column D (default tokens)")
    parser.add_argument("--flops-col", help="training FLOPs column C (default flops)")
    parser.add_argument("--loss-col", help="loss column (default val_loss)")
    parser.add_argument("--experts-col", help="E column for wang (default experts)")
    parser.add_argument("--granularity-col", help="G column for krajewski (default granularity)")
    parser.add_argument(
        "--run-col", help="run id column: bootstrap resamples whole runs (default run)"
    )
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
    parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the fit as JSON")


def _fmt(v: float | int | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.6g}"


def run(args: argparse.Namespace) -> int:
    from moescale.laws.fit import fit_law
    from moescale.laws.forms import get_form
    from moescale.laws.table import fit_inputs, read_table, write_json

    form = get_form(args.law)
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not 0 <= args.holdout_frac < 1:
        raise UserError(f"--holdout-frac must be in [0, 1), got {args.holdout_frac}")
    if args.drop_outliers < 0:
        raise UserError(f"--drop-outliers must be >= 0, got {args.drop_outliers}")
    table = read_table(args.table)
    inp = fit_inputs(
        table,
        form.inputs,
        law=form.name,
        n_col=args.n_col,
        d_col=args.d_col,
        flops_col=args.flops_col,
        loss_col=args.loss_col,
        experts_col=args.experts_col,
        granularity_col=args.granularity_col,
        run_col=args.run_col,
    )
    n_left = len(inp.loss) - args.drop_outliers
    if n_left < len(form.params):
        raise UserError(
            f"law {form.name} has {len(form.params)} parameters but the table gives {n_left} "
            "points; add rows or choose a law with fewer parameters"
        )
    res = fit_law(
        form,
        inp.x,
        inp.loss,
        compute=inp.compute,
        method=args.method,
        loss=args.loss,
        groups=inp.groups,
        drop_outliers=args.drop_outliers,
        bootstrap_draws=args.bootstrap,
        holdout_frac=args.holdout_frac,
        seed=args.seed,
        workers=args.workers,
    )
    print(f"law {res.law}: L = {res.expression}")
    print(
        f"{res.n_points} points, method {res.method}, loss {res.loss}"
        + (f", {inp.derived}" if inp.derived else "")
    )
    print(f"{'param':<10} {'value':>14} {'95% low':>14} {'95% high':>14}")
    for q, v in res.params.items():
        lo, hi = res.intervals.get(q, (None, None))
        print(f"{q:<10} {_fmt(v):>14} {_fmt(lo):>14} {_fmt(hi):>14}")
    print(
        f"objective {_fmt(res.objective)}; in-sample MAE {_fmt(res.in_sample['mae'])}, "
        f"RMSE {_fmt(res.in_sample['rmse'])}"
    )
    h = res.holdout
    print(
        f"held-out {h['n']} largest-compute points: MAE {_fmt(h['mae'])}, "
        f"max |error| {_fmt(h['max_abs'])}"
    )
    if args.json_out:
        out = {
            "law": res.law,
            "expression": res.expression,
            "inputs": list(res.inputs),
            "spec": res.spec,
            "params": res.params,
            "intervals": {k: list(v) for k, v in res.intervals.items()},
            "objective": res.objective,
            "holdout": res.holdout,
            "in_sample": res.in_sample,
            "n_points": res.n_points,
            "method": res.method,
            "loss": res.loss,
            "columns": inp.columns,
            "derived": inp.derived,
            "flops_convention": "C = 6 N D",
            "dropped_rows": [i + 1 for i in res.dropped],
            "bootstrap_draws": len(res.bootstrap_params),
            "bootstrap_params": res.bootstrap_params,
            "table": str(args.table),
        }
        write_json(args.json_out, out)
    return 0
