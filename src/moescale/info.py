"""Parameters and FLOPs per token of a model config (no model is built, nothing is trained)."""

from __future__ import annotations

import argparse
import json

from moescale.accounting import count
from moescale.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="+", help="one or more YAML configs")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.moe.granularity=4",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) < 1e7 else f"{v:.4g}"


def run(args: argparse.Namespace) -> int:
    results = {}
    for path in args.config:
        cfg = load_config(path, args.set)
        results[path] = count(cfg.model).to_dict()
    if args.json:
        out = next(iter(results.values())) if len(results) == 1 else results
        print(json.dumps(out, indent=2))
        return 0
    keys = list(next(iter(results.values())))
    width = max(len(k) for k in keys)
    names = list(results)
    col = max(14, *(len(n) for n in names))
    print(" " * width + "  " + "  ".join(n.rjust(col) for n in names))
    for k in keys:
        print(k.ljust(width) + "  " + "  ".join(_fmt(results[n][k]).rjust(col) for n in names))
    return 0
