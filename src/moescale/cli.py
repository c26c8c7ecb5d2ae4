"""The `moescale` command.

Each subcommand is one thin module in `moescale.commands` with `add_arguments(parser)` and
`run(args) -> int`. Those modules import torch lazily, so `moescale fit` and `moescale plan` start
without loading it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from moescale.console import configure_console
from moescale.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, str] = {
    "info": "parameters and FLOPs of a model config",
    "corpus": "build the bundled corpus or tokenize your own files",
    "train": "train one model from a config",
    "fit": "fit a scaling law to a results table",
    "plan": "compute-optimal allocation from a fitted law",
    "hyper": "optimal batch size and learning rate per architecture",
    "study": "train a ladder of runs, collect, fit the laws and write the report",
    "collect": "run directories -> results table (CSV, Parquet) and training curves",
    "report": "fit the laws and write the HTML report of a study directory",
    "eval": "perplexity of a text file, or lm-eval tasks, for a trained run",
    "generate": "sample text from a trained run",
    "export": "the trained model as Hugging Face safetensors + config.json + tokenizer",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All commands are listed; only `command`'s module is imported to add its arguments, so
    one command's start-up never pays for another's imports (or breaks with them)."""
    parser = argparse.ArgumentParser(
        prog="moescale",
        description="Dense vs MoE vs fine-grained MoE: train the ladder, fit the laws, plan a run.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(f"moescale.commands.{name}")
        p = sub.add_parser(
            name,
            help=help_text,
            description=(mod.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


# argparse (3.11) takes "-1e20" for an option, so `plan --budget -1e20` said "expected one
# argument" instead of the command's own check of the value
_NEGATIVE_NUMBER = re.compile(r"-\.?\d")  # no option name starts so (as in Python 3.13)


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--flag -1e20` -> `--flag=-1e20`, so that the command sees (and refuses) the number."""
    out: list[str] = []
    for a in argv:
        prev = out[-1] if out else ""
        if _NEGATIVE_NUMBER.match(a) and prev.startswith("--") and "=" not in prev:
            out[-1] = f"{prev}={a}"
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _attach_negative_values(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    configure_console()
    try:
        json_out = getattr(args, "json_out", None)
        if json_out not in (None, "-") and os.path.isdir(json_out):  # found before the work
            raise UserError(f"--json {json_out} is a directory: give a file, e.g. "
                            f"{os.path.join(json_out, args.command + '.json')}")  # fmt: skip
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"moescale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except KeyboardInterrupt:
        print(f"moescale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
