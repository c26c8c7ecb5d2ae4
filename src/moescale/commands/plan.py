"""Compute-optimal allocation at a FLOP budget from a fitted law (the JSON of `moescale fit`).

Prints N_opt, D_opt and the predicted loss with 95 % intervals (from the fit's bootstrap
parameters), under C = k·N·D (k = 6 by default). A wang law without --experts is planned as
dense (E = 1); a krajewski law without --granularity gets the best G under the routing-aware
FLOPs of Krajewski et al. (2024) instead, at E = --experts (default 64).

With --compare DENSE_FIT.json (the law of --fit being the MoE one) it adds the loss of each at
equal compute and the data efficiency of MoE over dense: D_dense / D_moe − 1, where N_d,
D_dense are the dense law's compute-optimal size and tokens at the budget and D_moe the tokens
the MoE law needs at the same N_d to reach the dense loss; and the compute ratio C_dense(L_moe)/C
for MoE's compute-optimal loss.

  moescale plan --budget C --fit FIT.json [--compare DENSE_FIT.json] [--json [OUT]]
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from moescale.commands import add_json_flag, emit_json
from moescale.fmt import sig
from moescale.laws.forms import EXTRA_INPUTS

if TYPE_CHECKING:
    from moescale.laws.plan import Plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=float, required=True, help="training FLOPs C, e.g. 1e21")
    parser.add_argument(
        "--fit", required=True, metavar="FIT.json", help="JSON written by `moescale fit --json`"
    )
    parser.add_argument(
        "--compare",
        metavar="DENSE_FIT.json",
        help="a second fitted law (dense) to compare the first (MoE) against",
    )
    parser.add_argument(
        "--k",
        type=float,
        default=6.0,
        help="FLOPs per parameter per token in C = k N D (default 6)",
    )
    for x in EXTRA_INPUTS.values():
        parser.add_argument(
            x.plan_flag,
            dest=f"extra_{x.symbol}",
            type=float,
            metavar=x.symbol,
            help=f"{x.symbol} ({x.meaning}) of the planned model, for laws with input "
            f"{x.symbol}; the dense law of --compare is taken at {x.symbol} = {x.dense:g}",
        )
    add_json_flag(parser, "the plan")


def run(args: argparse.Namespace) -> int:
    from moescale.laws.allocate import check_budget
    from moescale.laws.plan import make_plan
    from moescale.laws.result import read_fit

    check_budget(args.budget)
    fit = read_fit(args.fit, "--fit")
    dense = read_fit(args.compare, "--compare") if args.compare else None
    given = {s: getattr(args, f"extra_{s}") for s in EXTRA_INPUTS}
    plan = make_plan(
        fit,
        args.budget,
        k=args.k,
        given={s: v for s, v in given.items() if v is not None},
        dense=dense,
    )
    if args.json_out != "-":
        _print(plan)
    if args.json_out:
        emit_json(plan.to_json(), args.json_out)
    return 0


def _interval(intervals: dict[str, tuple[float, float]], key: str) -> str:
    lo, hi = intervals.get(key, (None, None))
    return f"[{sig(lo, 4)}, {sig(hi, 4)}]" if lo is not None else ""


def _print(plan: Plan) -> None:
    head = f"budget {plan.budget:.3g} FLOPs, law {plan.law}"
    if (g := plan.granularity) is not None:
        print(f"{head}, routing-aware FLOPs (Krajewski et al. 2024), E = {g.experts:g}")
        print(
            f"optimal G {g.granularity}; N_total {sig(g.n_total, 4)}, D {sig(g.tokens, 4)}, "
            f"loss {g.loss:.4f}"
        )
    if (a := plan.allocation) is not None:
        print(
            f"{head}, C = {plan.k:g} N D, {a.method}; intervals from {plan.draws} bootstrap draws"
        )
        print(f"{'':<8} {'value':>11} {'95% interval':>26}")
        for key, val in (("N_opt", a.n_opt), ("D_opt", a.d_opt), ("loss", a.loss)):
            print(f"{key:<8} {sig(val, 4):>11} {_interval(a.intervals, key.lower()):>26}")
    if (c := plan.comparison) is not None:
        print(
            f"at equal compute: MoE loss {c.moe.loss:.4f}, dense loss {c.dense.loss:.4f}, "
            f"gap {c.loss_gap:+.4f} {_interval(c.intervals, 'loss_gap')}"
        )
        print(
            f"data efficiency of MoE over dense: {c.data_efficiency:+.2%} "
            f"{_interval(c.intervals, 'data_efficiency')}"
        )
        print(f"  ({c.definition})")
        print(
            f"compute dense needs for MoE's loss: {c.compute_ratio:.3f} x the budget "
            f"{_interval(c.intervals, 'compute_ratio')}"
        )
