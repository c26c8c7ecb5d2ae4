"""Compute-optimal allocation at a FLOP budget from a fitted law (the JSON of `moescale fit`).

Prints N_opt, D_opt and the predicted loss with 95 % intervals (from the fit's bootstrap
parameters), under C = k·N·D (k = 6 by default). With --compare DENSE.json (the law given by
--law being the MoE one) it adds the loss of each at equal compute and the data efficiency of
MoE over dense: D_dense / D_moe − 1, where N_d, D_dense are the dense law's compute-optimal size
and tokens at the budget and D_moe the tokens the MoE law needs at the same N_d to reach the
dense loss; and the compute ratio C_dense(L_moe)/C for MoE's compute-optimal loss.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from moescale.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=float, required=True, help="training FLOPs C, e.g. 1e21")
    parser.add_argument(
        "--law", required=True, metavar="FIT.json", help="JSON written by `moescale fit --json`"
    )
    parser.add_argument(
        "--compare",
        metavar="FIT2.json",
        help="a second fitted law (dense) to compare the first (MoE) against",
    )
    parser.add_argument(
        "--k",
        type=float,
        default=6.0,
        help="FLOPs per parameter per token in C = k N D (default 6)",
    )
    parser.add_argument("--experts", type=float, help="E for wang laws (default 1 = dense)")
    parser.add_argument(
        "--granularity",
        type=float,
        help="G for krajewski laws (default: best G under P0's routing-aware FLOPs)",
    )
    parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the plan as JSON")


def _load(path: str, flag: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag} {p} does not exist; write it with `moescale fit --json {p}`")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{flag} {p} is not readable JSON: {exc}") from exc
    missing = [k for k in ("law", "params") if k not in data]
    if missing:
        raise UserError(
            f"{flag} {p} lacks key(s) {', '.join(missing)}; is it `moescale fit` output?"
        )
    return data


def _extras(fit: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    if fit["law"] == "wang":
        out["E"] = args.experts if args.experts is not None else 1.0
    if args.granularity is not None:
        out["G"] = args.granularity
    return out


def _form(fit: dict[str, Any]) -> Any:
    from moescale.laws.fit import form_from_spec

    return form_from_spec(fit.get("spec") or {"name": fit["law"]})


def _f(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"


def _iv(iv: dict[str, Any], key: str) -> str:
    lo, hi = iv.get(key, (None, None))
    return f"[{_f(lo)}, {_f(hi)}]" if lo is not None else ""


def run(args: argparse.Namespace) -> int:
    from moescale.laws.allocate import (
        DATA_EFFICIENCY_DEFINITION,
        allocate,
        compare,
        optimal_granularity,
    )

    if not (args.budget > 0 and math.isfinite(args.budget)):
        raise UserError(f"--budget must be a positive number of FLOPs, got {args.budget}")
    fit = _load(args.law, "--law")
    form = _form(fit)
    out: dict[str, Any] = {"budget": args.budget, "law": fit["law"], "k": args.k}
    if form.name == "krajewski" and args.granularity is None:
        opt = optimal_granularity(fit["params"], args.budget, experts=args.experts or 64)
        print(
            f"budget {args.budget:.3g} FLOPs, law krajewski, routing-aware FLOPs (P0), "
            f"E = {args.experts or 64:g}"
        )
        print(
            f"optimal G {opt.granularity}; N_total {_f(opt.n_total)}, D {_f(opt.tokens)}, "
            f"loss {opt.loss:.4f}"
        )
        out.update(
            {
                "flops": "routing_aware_p0",
                "granularity": opt.granularity,
                "n_opt": opt.n_total,
                "d_opt": opt.tokens,
                "loss": opt.loss,
                "loss_by_granularity": opt.by_granularity,
            }
        )
    else:
        samples = fit.get("bootstrap_params") or []
        alloc = allocate(
            form, fit["params"], args.budget, samples=samples, k=args.k, extras=_extras(fit, args)
        )
        print(
            f"budget {args.budget:.3g} FLOPs, law {fit['law']}, C = {args.k:g} N D, "
            f"{alloc.method}; intervals from {len(samples)} bootstrap draws"
        )
        print(f"{'':<8} {'value':>11} {'95% interval':>26}")
        for key, val in (("N_opt", alloc.n_opt), ("D_opt", alloc.d_opt), ("loss", alloc.loss)):
            print(f"{key:<8} {_f(val):>11} {_iv(alloc.intervals, key.lower()):>26}")
        out.update(
            {
                "flops": f"C = {args.k:g} N D",
                "method": alloc.method,
                "n_opt": alloc.n_opt,
                "d_opt": alloc.d_opt,
                "loss": alloc.loss,
                "intervals": {k: list(v) for k, v in alloc.intervals.items()},
            }
        )
    if args.compare:
        dense = _load(args.compare, "--compare")
        cmp = compare(
            form,
            fit["params"],
            _form(dense),
            dense["params"],
            args.budget,
            moe_samples=fit.get("bootstrap_params") or [],
            dense_samples=dense.get("bootstrap_params") or [],
            k=args.k,
            moe_extras=_extras(fit, args),
            dense_extras={"E": 1.0} if dense["law"] == "wang" else {},
        )
        print(
            f"at equal compute: MoE loss {cmp.moe.loss:.4f}, dense loss {cmp.dense.loss:.4f}, "
            f"gap {cmp.loss_gap:+.4f} {_iv(cmp.intervals, 'loss_gap')}"
        )
        print(
            f"data efficiency of MoE over dense: {cmp.data_efficiency:+.2%} "
            f"{_iv(cmp.intervals, 'data_efficiency')}"
        )
        print(f"  ({DATA_EFFICIENCY_DEFINITION})")
        print(
            f"compute dense needs for MoE's loss: {cmp.compute_ratio:.3f} x the budget "
            f"{_iv(cmp.intervals, 'compute_ratio')}"
        )
        out["compare"] = {
            "moe_loss": cmp.moe.loss,
            "dense_loss": cmp.dense.loss,
            "loss_gap": cmp.loss_gap,
            "d_moe": cmp.d_moe,
            "d_dense": cmp.d_dense,
            "compute_ratio": cmp.compute_ratio,
            "data_efficiency": cmp.data_efficiency,
            "definition": cmp.definition,
            "intervals": {k: list(v) for k, v in cmp.intervals.items()},
        }
    if args.json_out:
        from moescale.laws.table import write_json

        write_json(args.json_out, out)
    return 0
