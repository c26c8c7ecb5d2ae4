"""Parameters and FLOPs per token of one or more model configs (nothing is built or trained).

moescale info CONFIG.yaml [CONFIG2.yaml ...] [--set key=value ...] [--json [OUT]]
"""

from __future__ import annotations

import argparse

from moescale.commands import add_json_flag, add_set_flag, emit_json
from moescale.fmt import count


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="+", help="one or more YAML configs")
    add_set_flag(p)
    add_json_flag(p, "the counts (one object per config; the object itself for one config)")


def run(args: argparse.Namespace) -> int:
    from moescale.accounting import count as count_params
    from moescale.config import load_config

    results = {path: count_params(load_config(path, args.overrides).model).to_dict()
               for path in args.config}  # fmt: skip
    if args.json_out:
        emit_json(next(iter(results.values())) if len(results) == 1 else results, args.json_out)
        if args.json_out == "-":
            return 0
    keys = list(next(iter(results.values())))
    width = max(len(k) for k in keys)
    names = list(results)
    col = max(14, *(len(n) for n in names))
    print(" " * width + "  " + "  ".join(n.rjust(col) for n in names))
    for k in keys:
        print(k.ljust(width) + "  " + "  ".join(count(results[n][k]).rjust(col) for n in names))
    return 0
