"""Compute-optimal model at a FLOP budget from a fitted law (the JSON of `moescale fit`).

Every law is planned at its true compute. Under C = k·N·D (k = 6, `--flops simple`) with the
law's own N when that N is what a token pays for (N_active); through a model family otherwise:
`--family CONFIG.yaml` (your runs' config as the template: its d_model/n_layers and d_ff/d_model
ratios, E, k, G, vocabulary, seq_len) or `--family krajewski` (Krajewski et al. 2024: d = 64·L_b,
N_total = d²(8E + 4)·L_b). The family maps N_total, N_active and FLOPs per token into each other,
and says what to build: d_model, n_layers, E, G, k, parameters, tokens. `--flops routing_aware`
adds Krajewski et al.'s router cost (c_r = 14 per d·E·G), `--flops exact` the conventions.md
count (attention, unembedding; config families only).

Nothing is assumed silently: E comes from --experts, the fit JSON ("experts") or the family
template, else a law with E is refused; a law with G (krajewski) and no G gets the optimal G
(--granularity best asks for it even when a template fixes G). The plan prints where each value
came from, the family and the FLOPs convention.

With --compare DENSE_FIT.json (a dense fit; MoE and fine-grained fits are refused) both are
priced in the same convention and compared at equal compute: the loss gap, the compute
multiplier (how much more compute dense needs for the MoE's loss) and the data efficiency at
equal loss and equal FLOPs per token, each with its definition. With --hyper HYPER.json (from
`moescale hyper`) it adds batch size and learning rate.

  moescale plan --budget C --fit FIT.json [--family krajewski|CONFIG.yaml] [--experts E]
      [--granularity G|best] [--top-k K] [--flops simple|routing_aware|exact]
      [--compare DENSE_FIT.json] [--hyper HYPER.json] [--json [OUT]]
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from moescale.commands import STDOUT, add_json_flag, emit_json, logs_to_stderr
from moescale.errors import UserError
from moescale.fmt import human, sig

if TYPE_CHECKING:
    from moescale.laws.plan import Plan


def _granularity(text: str) -> float | str:
    if text == "best":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'best', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=float, required=True, help="training FLOPs C, e.g. 1e21")
    parser.add_argument(
        "--fit", required=True, metavar="FIT.json", help="JSON written by `moescale fit --json`"
    )
    parser.add_argument(
        "--compare", metavar="DENSE_FIT.json", help="a dense fit to compare the first (MoE) with"
    )
    parser.add_argument(
        "--family",
        metavar="krajewski|CONFIG.yaml",
        help="model family that maps N_total, N_active and FLOPs per token and says what to "
        "build; needed for laws on N_total (krajewski), for G and for --flops other than simple",
    )
    parser.add_argument(
        "--flops",
        default="simple",
        choices=["simple", "routing_aware", "exact"],
        help="FLOPs convention (default simple: C = k·N_active·D; docs/conventions.md)",
    )
    parser.add_argument(
        "--k", type=float, default=6.0, help="FLOPs per active parameter per token (default 6)"
    )
    parser.add_argument(
        "--experts",
        type=float,
        metavar="E",
        help="expansion rate E of the planned MoE: the family's E, and the law's input E (wang); "
        "no default",
    )
    parser.add_argument(
        "--granularity",
        type=_granularity,
        metavar="G|best",
        help="granularity G of the planned MoE (the law's input G for krajewski); 'best' "
        "searches G in 1..128",
    )
    parser.add_argument("--top-k", type=float, metavar="K", help="experts per token (d_ff units)")
    parser.add_argument("--hyper", metavar="HYPER.json", help="JSON of `moescale hyper --json`")
    parser.add_argument(
        "--hyper-arch", metavar="NAME", help="architecture of --hyper to use (default: the plan's)"
    )
    add_json_flag(parser, "the plan")


def _read_fit(path: str, flag: str):  # noqa: ANN202 - FitResult or IsoFLOPResult
    from moescale.laws import result

    return getattr(result, "read_any_fit", result.read_fit)(path, flag)


def run(args: argparse.Namespace) -> int:
    with logs_to_stderr(args.json_out == STDOUT):  # its warnings must not precede the JSON
        plan = _plan(args)
    if args.json_out != STDOUT:
        _print(plan)
    if args.json_out:
        emit_json(plan.to_json(), args.json_out)
    return 0


def _plan(args: argparse.Namespace) -> Plan:
    from moescale.laws.allocate import check_budget, check_k
    from moescale.laws.family import load_family
    from moescale.laws.plan import make_plan, read_hyper, recorded_inputs

    check_budget(args.budget)
    check_k(args.k)
    flags = {"E": args.experts, "G": args.granularity, "k": args.top_k}
    given = {s: v for s, v in flags.items() if v is not None and v != "best"}
    if args.hyper_arch and not args.hyper:
        raise UserError("--hyper-arch names an architecture of --hyper HYPER.json; give --hyper")
    return make_plan(
        _read_fit(args.fit, "--fit"),
        args.budget,
        k=args.k,
        given=given,
        dense=_read_fit(args.compare, "--compare") if args.compare else None,
        family=load_family(args.family) if args.family else None,
        flops=args.flops,
        search_g=args.granularity == "best",
        recorded=recorded_inputs(args.fit),
        dense_recorded=recorded_inputs(args.compare) if args.compare else None,
        hyper=read_hyper(args.hyper) if args.hyper else None,
        hyper_arch=args.hyper_arch,
    )


def _iv(intervals: dict[str, tuple[float, float]], key: str, pct: bool = False) -> str:
    lo, hi = intervals.get(key, (None, None))
    if lo is None:
        return ""
    return f"[{lo:+.1%}, {hi:+.1%}]" if pct else f"[{sig(lo, 4)}, {sig(hi, 4)}]"


def _print(plan: Plan) -> None:
    print(f"plan for {plan.budget:.3g} FLOPs, law {plan.law}")
    print(f"FLOPs: {plan.convention}: {plan.flops_definition}")  # warnings go to the log
    print(plan.family.describe() if plan.family else "no model family: N is the law's N")
    for note in plan.assumptions:
        print(f"  assumed {note}")
    a, g = plan.allocation, plan.granularity
    iv = a.intervals if a else g.intervals if g else {}
    print(f"{'':<28} {'value':>11} {'95% interval':>26}   ({plan.draws} bootstrap draws)")
    rows = [(f"N ({plan.n_column})", a.n_opt if a else g.n_total if g else None, "n_opt")]
    if a is not None:
        rows += [("N_active", a.n_active, "n_active"), ("N_total", a.n_total, "n_total")]
        rows += [("D (tokens)", a.d_opt, "d_opt"), ("loss", a.loss, "loss")]
    if g is not None:
        rows += [("N_active", g.n_active, "n_active"), ("D (tokens)", g.tokens, "d_opt")]
        rows += [("loss", g.loss, "loss"), ("optimal G", g.granularity, "granularity")]
    for name, val, key in rows:
        if val is not None and sig(val) != "-":
            print(f"{name:<28} {sig(val, 4):>11} {_iv(iv, key):>26}")
    if g is not None:
        print("loss by G: " + ", ".join(f"{k} {v:.4f}" for k, v in g.by_granularity.items()))
    if (dz := plan.design) is not None:
        moe = (
            f"; E {dz.experts:g}, G {dz.granularity:g}, k {dz.top_k:g} "
            f"({dz.experts * dz.granularity:g} experts of hidden {dz.d_ff / dz.granularity:g}, "
            f"{dz.top_k * dz.granularity:g} per token)"
            if dz.experts > 1
            else " (dense)"
        )
        print(
            f"build: d_model {dz.d_model}, n_layers {dz.n_layers}, d_ff {dz.d_ff}{moe}; "
            f"N_total {human(dz.params_total)}, N_active {human(dz.params_active)}; "
            f"{human(dz.tokens)} tokens; loss {sig(dz.loss, 4)}"
        )
    if (h := plan.hyper) is not None:
        for what in ("batch", "batch_tokens", "lr"):
            unit = f" ({h['batch_unit']})" if what == "batch" else ""
            vals = ", ".join(f"{k} {sig(v, 3)}" for k, v in h.get(what, {}).items())
            print(f"{what}{unit} [{h['arch']}]: {vals or '-'}")
    if plan.comparison is not None:
        _print_comparison(plan)


def _print_comparison(plan: Plan) -> None:
    c = plan.comparison
    assert c is not None
    iv, d = c.intervals, c.definitions
    print(f"MoE vs dense at equal compute ({c.draws} draws, {c.pairing or 'no draws'}):")
    print(f"  MoE loss {c.moe.loss:.4f} {_iv(iv, 'moe_loss')}, N {sig(c.moe.n_opt, 4)}, "
          f"D {sig(c.moe.d_opt, 4)}; dense loss {c.dense.loss:.4f} {_iv(iv, 'dense_loss')}, "
          f"N {sig(c.dense.n_opt, 4)}, D {sig(c.dense.d_opt, 4)}")  # fmt: skip
    print(f"  loss gap {c.loss_gap:+.4f} {_iv(iv, 'loss_gap')}: {d['loss_gap']}")
    print(f"  compute multiplier {sig(c.compute_ratio, 4)} {_iv(iv, 'compute_ratio')}: "
          f"{d['compute_ratio']}")  # fmt: skip
    eff = f"{c.data_efficiency:+.1%} {_iv(iv, 'data_efficiency', True)}"
    print(f"  token ratio {sig(c.token_ratio, 4)} {_iv(iv, 'token_ratio')}, data efficiency "
          f"{eff}: {c.definition}")  # fmt: skip
