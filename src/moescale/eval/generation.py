"""Sampling text from a trained run: greedy, temperature, top-k and nucleus (top-p).

The prompt is preceded by `<|endoftext|>`, the token before every document in training, so the
model continues it as the start of a document. The model has no key-value cache: each new token
runs the model over the last seq_len tokens (the context is cropped on the left once it is
longer), which costs seq_len times more than a cache would and is plenty for models of this
size. Generation stops after `max_new_tokens`, at `<|endoftext|>` (the end of a document), or
once the text holds one of the `until` strings (lm-evaluation-harness's stop sequences).

Temperature 0 is greedy decoding (argmax; top-k and top-p are then moot). Otherwise logits are
divided by the temperature, cut to the `top_k` largest, then to the smallest set whose
probability reaches `top_p` (Holtzman et al. 2020), and a token is drawn from a torch.Generator
seeded with `seed`: the same seed, prompt and checkpoint give the same text on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moescale.errors import UserError
from moescale.eval.loader import LoadedRun


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token (see the module docstring)."""

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_at_eos: bool = True

    def check(self) -> None:
        """Bad values are UserErrors naming the flag, before any compute."""
        if self.max_new_tokens < 0:
            raise UserError(f"--max-new-tokens {self.max_new_tokens} must be 0 or more.")
        if not self.temperature >= 0:
            raise UserError(f"--temperature {self.temperature} must be 0 (greedy) or more.")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k {self.top_k} must be at least 1 (leave it out: no cut).")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p} must lie in (0, 1] (1: no cut).")


def filter_logits(
    logits_BV: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf."""
    out = logits_BV.clone()
    if top_k is not None and top_k < out.shape[-1]:
        kth = out.topk(top_k, dim=-1).values[..., -1:]
        out[out < kth] = float("-inf")
    if top_p is not None and top_p < 1:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # the mass before it already >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out[drop] = float("-inf")
    return out


def next_tokens(
    logits_BV: torch.Tensor, opts: Sampling, generator: torch.Generator | None
) -> torch.Tensor:
    """One token id per row (float32 logits of the last position)."""
    if opts.temperature == 0:
        return logits_BV.argmax(-1)
    logits = filter_logits(logits_BV / opts.temperature, opts.top_k, opts.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample_ids(
    run: LoadedRun,
    contexts: Sequence[Sequence[int]],
    opts: Sampling,
    until: Sequence[str] = (),
) -> list[list[int]]:
    """New token ids after each context (all of one length: a batch without padding).

    A row's output ends before its `<|endoftext|>` (when `stop_at_eos`) and is cut by the
    caller at the first `until` string; the loop ends when every row has stopped."""
    opts.check()
    if not contexts or len({len(c) for c in contexts}) != 1 or not contexts[0]:
        raise ValueError("sample_ids needs non-empty contexts of one length")
    gen = None
    if opts.temperature > 0:
        gen = torch.Generator(device=run.device)
        if opts.seed is not None:
            gen.manual_seed(opts.seed)
        else:
            gen.seed()
    seqs = torch.tensor([list(c) for c in contexts], dtype=torch.long, device=run.device)
    new: list[list[int]] = [[] for _ in contexts]
    done = [False] * len(contexts)
    for _ in range(opts.max_new_tokens):
        with run.autocast():
            logits = run.model(seqs[:, -run.seq_len :]).logits[:, -1].float()
        tok = next_tokens(logits, opts, gen)
        seqs = torch.cat([seqs, tok[:, None]], dim=1)
        for row, t in enumerate(tok.tolist()):
            if done[row]:
                continue
            if opts.stop_at_eos and t == run.eos_id:
                done[row] = True
                continue
            new[row].append(t)
            if until and any(s in run.decode(new[row]) for s in until):
                done[row] = True
        if all(done):
            break
    return new


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any `until` string."""
    cut = min((i for s in until if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def generate(run: LoadedRun, prompt: str, opts: Sampling) -> str:
    """The text the model writes after `prompt` (the prompt itself not included)."""
    ids = sample_ids(run, [[run.eos_id, *run.encode(prompt)]], opts)[0]
    return run.decode(ids)
