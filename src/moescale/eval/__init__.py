"""Using a trained run: perplexity of text, sampling, and lm-evaluation-harness tasks.

    run = load_run("runs/dense")                       # model, config, tokenizer, step
    evaluate_text(run, open("book.txt").read())        # loss, its SE, perplexity, bits per byte
    generate(run, "The king", Sampling(temperature=0)) # greedy continuation

Modules: `loader` (a run directory -> `LoadedRun`), `scoring` (batched windowed
log-likelihoods: the one place text is scored), `perplexity` (`moescale eval --text`),
`generation` (`moescale generate`), `results` (the run's eval.json; torch-free), `harness` (the
"moescale" model type of lm-evaluation-harness; imports lm_eval, an optional dependency:
`pip install moescale[eval]`), `tasks` (running lm-eval tasks, and the cloze task built from
a run's held-out text).

The names below are imported on first use, so that `moescale.eval.results` (eval.json) can be
read where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moescale.eval.generation import Sampling, generate
    from moescale.eval.loader import LoadedRun, load_run
    from moescale.eval.perplexity import TextEval, evaluate_text

_HOMES = {
    "Sampling": "generation",
    "generate": "generation",
    "LoadedRun": "loader",
    "load_run": "loader",
    "TextEval": "perplexity",
    "evaluate_text": "perplexity",
}

__all__ = ["LoadedRun", "Sampling", "TextEval", "evaluate_text", "generate", "load_run"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"moescale.eval.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'moescale.eval' has no attribute {name!r}")
