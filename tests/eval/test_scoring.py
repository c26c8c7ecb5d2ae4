"""Windowed, batched log-likelihoods: every continuation token scored once, padding harmless."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moescale.eval import load_run
from moescale.eval.scoring import plan_windows, score_requests


def test_windows_score_every_target_once_with_full_context():
    ctx, cont = list(range(5)), list(range(100, 170))
    windows = plan_windows(ctx, cont, seq_len=16, stride=6)
    scored = [t for w in windows for t in w.tokens[len(w.tokens) - w.scored :]]
    assert scored == cont
    assert all(len(w.tokens) <= 17 for w in windows)
    assert all(len(w.tokens) == 17 for w in windows[1:])  # full seq_len of input after the first
    assert windows[0].scored == 16 and {w.scored for w in windows[1:-1]} == {6}


def test_windows_refuse_an_empty_context_and_a_bad_stride():
    with pytest.raises(ValueError, match="context"):
        plan_windows([], [1, 2], seq_len=8)
    with pytest.raises(ValueError, match="stride"):
        plan_windows([0], [1, 2], seq_len=8, stride=9)


def direct_logprob(run, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    s = ctx + cont
    x = torch.tensor(s[:-1][-run.seq_len :])[None]
    with torch.no_grad():
        logp = F.log_softmax(run.model(x).logits[0].float(), -1)[-len(cont) :]
    y = torch.tensor(cont)
    return float(logp.gather(-1, y[:, None]).sum()), bool((logp.argmax(-1) == y).all())


REQUESTS = [
    ("The king", " rode"),
    ("Sword", " and the river. The"),
    ("A", " crown"),
    ("The sea the sea the sea the sea the sea the sea the sea the sea the ship", " sea"),
]


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_batched_scores_equal_one_at_a_time_and_direct(which: str, request):
    run = load_run(request.getfixturevalue(f"{which}_run"), device="cpu")
    reqs = [([run.eos_id, *run.encode(c)], run.encode(c + x)[len(run.encode(c)) :])
            for c, x in REQUESTS]  # fmt: skip
    batched = score_requests(run, reqs, batch_size=8)  # right-padded to the longest
    single = score_requests(run, reqs, batch_size=1)
    for (lp_b, g_b), (lp_s, g_s), (ctx, cont) in zip(batched, single, reqs, strict=True):
        lp_d, g_d = direct_logprob(run, ctx, cont)
        assert lp_b == pytest.approx(lp_s, abs=1e-4) and lp_b == pytest.approx(lp_d, abs=1e-4)
        assert g_b == g_s == g_d
        assert lp_b < 0


def test_a_continuation_longer_than_seq_len_sums_its_windows(loaded):
    ctx = [loaded.eos_id]
    cont = loaded.encode("The king and the queen rode to the castle by the river at night. " * 4)
    assert len(cont) > loaded.seq_len
    [(lp, _)] = score_requests(loaded, [(ctx, cont)])
    from moescale.eval import evaluate_text

    res = evaluate_text(loaded, loaded.decode(cont))
    assert lp == pytest.approx(-res.loss * res.tokens, rel=1e-6)
