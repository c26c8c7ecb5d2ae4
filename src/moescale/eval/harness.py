"""The "moescale" model type of lm-evaluation-harness (EleutherAI's `lm_eval`, an optional
dependency: `pip install 'moescale[eval]'`).

Importing this module registers it (lm-eval has no plug-in discovery, so its own `lm_eval`
command does not see it; `moescale eval RUN --tasks ...` imports it), after which a run
directory is a model like any other:

    import moescale.eval.harness
    lm_eval.simple_evaluate(model="moescale", model_args="run_dir=runs/dense,step=400",
                            tasks=["lambada_openai"])

Every context is preceded by `<|endoftext|>`, the token before every training document, so the
model reads a context as the start of a document (lm-eval's own rule for an empty context).
A context-continuation pair is split as lm-eval's TemplateLM splits it: trailing spaces of the
context move to the continuation, the pair is encoded as one string, and the continuation is
what follows the context's own token count. Scores come from `moescale.eval.scoring` (batched,
windows of seq_len, the context cropped on the left; a continuation longer than seq_len in
windows), rolling log-likelihoods from the same windows as `moescale eval --text`, generation
from `moescale.eval.generation` (greedy unless the task asks for sampling; rows of one context
length generate as one batch).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from moescale.eval.generation import Sampling, cut_at, sample_ids
from moescale.eval.loader import LoadedRun, load_run
from moescale.eval.scoring import score_requests

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 16
DEFAULT_MAX_GEN_TOKS = 256


def _batch_size(value: Any) -> int:
    """lm-eval passes "auto", "auto:N", ints or their strings; auto means our default."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH
    return max(1, int(value))


@register_model("moescale")
class MoescaleLM(LM):
    """A moescale checkpoint behind lm-eval's three request types."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        step: int | str | None = None,
        device: str | None = "auto",
        batch_size: int | str | None = DEFAULT_BATCH,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        run: LoadedRun | None = None,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        if run is None:
            if run_dir is None:
                raise ValueError("the moescale model needs run_dir=RUN_DIR (--model_args)")
            run = load_run(run_dir, None if step in (None, "") else int(step), device or "auto")
        self.run = run
        self.batch = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self._device = run.device

    @property
    def tokenizer_name(self) -> str:
        return f"moescale:{self.run.dir.name}"

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids after <|endoftext|>, continuation ids), split as lm-eval splits."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.run.encode(context + continuation)
        n_ctx = len(self.run.encode(context)) if context else 0
        return [self.run.eos_id, *whole[:n_ctx]], whole[n_ctx:]

    def loglikelihood(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        pairs = [self._pair(*req.args) for req in requests]
        results = score_requests(self.run, pairs, batch_size=self.batch)
        for req, res in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[float]:
        pairs = [([self.run.eos_id], self.run.encode(req.args[0])) for req in requests]
        results = [lp for lp, _ in score_requests(self.run, pairs, batch_size=self.batch)]
        for req, res in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        encoded = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            opts, until = self._sampling(kwargs or {})
            ids = [self.run.eos_id, *self.run.encode(context)][-self.run.seq_len :]
            encoded.append(ids)
            groups[(len(ids), opts, tuple(until))].append(i)
        for (_, opts, until), members in groups.items():
            for begin in range(0, len(members), self.batch):
                rows = members[begin : begin + self.batch]
                new = sample_ids(self.run, [encoded[i] for i in rows], opts, until)
                for i, ids in zip(rows, new, strict=True):
                    out[i] = cut_at(self.run.decode(ids), until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return [s or "" for s in out]

    def _sampling(self, kwargs: dict[str, Any]) -> tuple[Sampling, list[str]]:
        """lm-eval's generation kwargs as Sampling options and stop strings."""
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        n = next((kwargs[k] for k in ("max_gen_toks", "max_new_tokens", "max_tokens")
                  if kwargs.get(k) is not None), self.max_gen_toks)  # fmt: skip
        sample = bool(kwargs.get("do_sample", False))
        temperature = float(kwargs.get("temperature", 1.0)) if sample else 0.0
        opts = Sampling(
            max_new_tokens=int(n),
            temperature=temperature,
            top_k=int(kwargs["top_k"]) if kwargs.get("top_k") else None,
            top_p=float(kwargs["top_p"]) if kwargs.get("top_p") else None,
            seed=int(kwargs["seed"]) if kwargs.get("seed") is not None else None,
        )
        return opts, [s for s in until if s]
