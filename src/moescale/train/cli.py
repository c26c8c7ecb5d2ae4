"""Train one model from a config; re-running the same command resumes a killed run.

  moescale train CONFIG.yaml [--set key=value ...] [--force]

A finished run (summary.json status done) is not retrained: the command prints where the
results are. --force starts over, deleting the run directory's checkpoints and metrics.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (model, train, data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=0.001")  # fmt: skip
    parser.add_argument(
        "--force", action="store_true", help="start over even if done or the config changed"
    )


def run(args: argparse.Namespace) -> int:
    from moescale.config import load_config
    from moescale.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, force=args.force)
    return 0 if summary.get("status") == "done" else 1
