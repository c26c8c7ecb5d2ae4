"""One thin file per CLI command: parse flags, call the library, print or write its typed result.

A command module has a docstring (its --help description), `add_arguments(parser)` and
`run(args) -> int`; it holds no logic of its own and imports torch only inside `run`, so that
`moescale fit` and `moescale plan` start without loading it. Shared flag conventions live here:
`--json [OUT]` means the same everywhere (write the result as JSON to OUT, or to stdout when no
file is given; then stdout holds the JSON alone, no table), and `--set KEY=VALUE` overrides a
config key. Progress goes to the `logging` module (see `moescale.console`), results to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_text
from moescale.errors import UserError

STDOUT = "-"


def add_json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json",
        dest="json_out",
        nargs="?",
        const=STDOUT,
        default=None,
        metavar="OUT",
        help=f"write {what} as JSON to OUT (to stdout when OUT is left out)",
    )


def add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.moe.granularity=4 (repeatable)",
    )


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """--step, --device, --threads: which checkpoint of a run to load, and where to run it
    (the commands that use a trained run: eval, generate)."""
    parser.add_argument("--step", type=nonnegative_int, help="checkpoint step (default: newest)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--threads", type=nonnegative_int, default=0, metavar="N",
                        help="intra-op CPU threads (default 0: from the free cores)")  # fmt: skip


def nonnegative_int(text: str) -> int:
    """An argparse type: a whole number >= 0 (argparse's int takes -1, and eval recorded it)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 0")
    return value


def flop_list(text: str | None, flag: str = "--budgets") -> list[float] | None:
    """A comma list of FLOP budgets ('1e18,1e20'), each positive and finite, or None when
    `text` is empty. One parser for every command that takes budgets, so they refuse the same
    input with the same words."""
    if not text or not text.strip():
        return None
    values = []
    for item in (v.strip() for v in text.split(",")):
        try:
            value = float(item) if item else math.nan
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise UserError(
                f"{flag} {text!r}: {item!r} is not a positive FLOP count; "
                "give numbers such as 1e18,1e20,1e22"
            )
        values.append(value)
    return values


def finite_or_none(o: Any) -> Any:
    """Non-finite floats become null, so the JSON stays standard."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_or_none(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [finite_or_none(v) for v in o]
    return o


def emit_json(obj: Any, out: str) -> None:
    """Write `obj` as JSON to `out` atomically (a kill never leaves half a file), or print it
    when `out` is '-'."""
    text = json.dumps(finite_or_none(obj), indent=1) + "\n"
    if out == STDOUT:
        sys.stdout.write(text)
        return
    path = Path(out)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise UserError(f"cannot write --json {path}: {exc}") from exc
    print(f"wrote {path}")


@contextlib.contextmanager
def logs_to_stderr(active: bool) -> Iterator[None]:
    """With --json to stdout, console log lines go to stderr: stdout holds the JSON alone."""
    moved = []
    for h in logging.getLogger("moescale").handlers if active else []:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            moved.append((h, h.setStream(sys.stderr)))
    try:
        yield
    finally:
        for h, old in moved:
            if old is not None:
                h.setStream(old)
