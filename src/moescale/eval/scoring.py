"""Log-likelihoods of token sequences under a run's model, in batched windows of seq_len.

Everything that scores text goes through here: the perplexity of a file, and the
loglikelihood / loglikelihood_rolling requests of lm-evaluation-harness. A request is a context
and a continuation (token ids); only the continuation is scored, each of its tokens predicted
from everything before it, the context cropped on the left to the model's seq_len.

A continuation longer than seq_len is scored in windows (`plan_windows`): window k predicts
`stride` new tokens (the first window seq_len), and its input is the seq_len tokens right before
each prediction's end, so every window but the first holds a full seq_len of input and every
token is scored exactly once. With stride = seq_len the scored spans do not overlap and a token
sees between 0 and seq_len - 1 tokens of its own window before it (plus nothing older); a
smaller stride gives every token at least seq_len - stride tokens of context, at
seq_len / stride times the compute (the sliding-window perplexity of Press et al. 2021).

Windows are batched longest first and padded on the right, which leaves a causal model's
scores unchanged. Expert-choice routing lets the tokens of a batch (padding included) compete
for experts, so its scores depend on the batch, as during training's evaluation; token-choice
MoE (a capacity factor binds in training only) and dense models score every window as they
would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from moescale.eval.loader import LoadedRun
from moescale.train.device import Autocast


@dataclass(frozen=True)
class Window:
    """One forward pass: `tokens` (inputs plus the last target) scores its last `scored`
    targets; `request` is the index of the request it belongs to."""

    request: int
    tokens: tuple[int, ...]
    scored: int


@dataclass
class WindowScore:
    logprob: float  # summed log-probability of the scored targets (nats, <= 0)
    greedy: bool  # every scored target is the argmax of its prediction
    scored: int  # targets scored
    targets: tuple[int, ...]  # the scored target ids (for bytes per token)


def plan_windows(
    context: Sequence[int], continuation: Sequence[int], seq_len: int, stride: int | None = None,
    request: int = 0,
) -> list[Window]:  # fmt: skip
    """The windows that score `continuation` after `context` (at least one token)."""
    if not context:
        raise ValueError("the context must hold at least one token (e.g. <|endoftext|>)")
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride {stride} must lie in [1, seq_len = {seq_len}]")
    stream = list(context) + list(continuation)
    first, end = len(context), len(stream)  # stream positions of the targets to score
    windows, start = [], first
    while start < end:
        stop = min(end, start + (seq_len if start == first else stride))
        lo = max(0, stop - 1 - seq_len)  # inputs stream[lo : stop - 1], targets stream[lo+1 : stop]
        windows.append(Window(request, tuple(stream[lo:stop]), stop - start))
        start = stop
    return windows


@torch.no_grad()
def score_windows(
    run: LoadedRun, windows: Sequence[Window], batch_size: int = 16
) -> list[WindowScore]:
    """Score each window, batched `batch_size` at a time; results in the input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].tokens))
    out: list[WindowScore | None] = [None] * len(windows)
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        batch = [windows[i] for i in idx]
        scores = _score_batch(run.model, batch, run.device, run.autocast, run.eos_id)
        for i, score in zip(idx, scores, strict=True):
            out[i] = score
    return [s for s in out if s is not None]


def _score_batch(
    model: torch.nn.Module,
    windows: Sequence[Window],
    device: torch.device,
    autocast: Autocast,
    pad_id: int,
) -> list[WindowScore]:
    """One forward pass over right-padded windows."""
    width = max(len(w.tokens) for w in windows) - 1
    batch = np.full((len(windows), width + 1), pad_id, dtype=np.int64)
    for row, w in enumerate(windows):
        batch[row, : len(w.tokens)] = w.tokens
    t = torch.from_numpy(batch).to(device)
    x, y = t[:, :-1], t[:, 1:]
    with autocast():
        logits = model(x).logits
    logp = F.log_softmax(logits.float(), dim=-1)
    target_lp = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).double().cpu()
    hit = (logp.argmax(-1) == y).cpu()
    scores = []
    for row, w in enumerate(windows):
        n = len(w.tokens) - 1
        span = slice(n - w.scored, n)
        scores.append(
            WindowScore(
                logprob=float(target_lp[row, span].sum()),
                greedy=bool(hit[row, span].all()),
                scored=w.scored,
                targets=w.tokens[len(w.tokens) - w.scored :],
            )
        )
    return scores


def score_requests(
    run: LoadedRun,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    stride: int | None = None,
) -> list[tuple[float, bool]]:
    """(log-probability of the continuation, whether greedy decoding yields it) of each
    (context, continuation) pair; an empty continuation scores (0.0, True)."""
    windows: list[Window] = []
    for i, (ctx, cont) in enumerate(requests):
        windows += plan_windows(ctx, cont, run.seq_len, stride, request=i)
    totals = [0.0] * len(requests)
    greedy = [True] * len(requests)
    for w, s in zip(windows, score_windows(run, windows, batch_size), strict=True):
        totals[w.request] += s.logprob
        greedy[w.request] = greedy[w.request] and s.greedy
    return list(zip(totals, greedy, strict=True))
