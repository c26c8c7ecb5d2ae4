"""Train one model from a config; re-running the same command resumes a killed run.

  moescale train CONFIG.yaml [--set key=value ...] [--force]

A finished run (summary.json status done) is not retrained: the command prints where the
results are. --force starts over, deleting the run directory's checkpoints and metrics.
Another process training the same run directory is refused (exit status 2, naming its pid).
`--set train.init_from=RUN/checkpoints/step_XXXXXXXX.pt` starts a fresh run directory from that
checkpoint of a run of the same config (continued pre-training, or a WSD decay branch with
`--set train.tokens=D`: see moescale.train.branch).
Exit status: 0 when the run is done, 1 when it failed (summary.json says why).
"""

from __future__ import annotations

import argparse

from moescale.commands import add_set_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (model, train, data)")
    add_set_flag(parser)
    parser.add_argument(
        "--force", action="store_true", help="start over even if done or the config changed"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="intra-op CPU threads (same as --set train.threads=N; default: from the free cores)",
    )


def run(args: argparse.Namespace) -> int:
    from moescale.config import load_config
    from moescale.train import train

    overrides = args.overrides + ([f"train.threads={args.threads}"] if args.threads else [])
    summary = train(load_config(args.config, overrides), force=args.force)
    return 0 if summary.status == "done" else 1
