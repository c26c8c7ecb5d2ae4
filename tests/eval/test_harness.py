"""The "moescale" model of lm-evaluation-harness: its scores are our model's own."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from moescale.eval import Sampling, evaluate_text  # noqa: E402
from moescale.eval.generation import sample_ids  # noqa: E402
from moescale.eval.harness import MoescaleLM  # noqa: E402


def req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


def direct(run, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | <|endoftext|> context) straight from model(x).logits."""
    ctx = run.encode(context)
    cont = run.encode(context + continuation)[len(ctx) :]
    s = [run.eos_id, *ctx, *cont]
    with torch.no_grad():
        logp = F.log_softmax(run.model(torch.tensor(s[:-1])[None]).logits[0].float(), -1)
    y = torch.tensor(cont)
    picked = logp[-len(cont) :]
    return float(picked.gather(-1, y[:, None]).sum()), bool((picked.argmax(-1) == y).all())


PAIRS = [("The king rode to the", " castle"), ("The captain of the", " ship and the sea"),
         ("Gold and", " wine"), ("", "The whale"), ("The night ", "was long")]  # fmt: skip


def test_the_model_type_is_registered():
    from lm_eval.api.registry import get_model

    assert get_model("moescale") is MoescaleLM


def test_loglikelihood_equals_direct_computation(loaded):
    lm = MoescaleLM(run=loaded, batch_size=3)
    got = lm.loglikelihood([req("loglikelihood", c, x) for c, x in PAIRS])
    for (c, x), (lp, greedy) in zip(PAIRS, got, strict=True):
        c, x = (c.rstrip(), c[len(c.rstrip()) :] + x)  # lm-eval moves trailing spaces
        want_lp, want_greedy = direct(loaded, c, x)
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert greedy == want_greedy
        assert lp < 0


def test_created_from_an_argument_string(dense_run: Path):
    lm = MoescaleLM.create_from_arg_string(f"run_dir={dense_run},step=20,device=cpu",
                                           {"batch_size": "auto"})  # fmt: skip
    assert lm.run.step == 20 and lm.batch == 16


def test_loglikelihood_rolling_is_the_text_perplexity(loaded):
    text = "The king and the queen rode to the castle by the river. " * 6
    [lp] = MoescaleLM(run=loaded).loglikelihood_rolling([req("loglikelihood_rolling", text)])
    res = evaluate_text(loaded, text)
    assert lp == pytest.approx(-res.loss * res.tokens, rel=1e-6)
    assert math.isfinite(lp)


def test_generate_until_is_greedy_and_stops_at_until(loaded):
    lm = MoescaleLM(run=loaded, batch_size=2)
    prompts = ["The king", "The queen", "A whale swam"]
    reqs = [req("generate_until", p, {"until": ["\n\n"], "max_gen_toks": 12}) for p in prompts]
    out = lm.generate_until(reqs)
    for p, text in zip(prompts, out, strict=True):
        ids = sample_ids(loaded, [[loaded.eos_id, *loaded.encode(p)]],
                         Sampling(max_new_tokens=12, temperature=0))[0]  # fmt: skip
        assert text == loaded.decode(ids).split("\n\n")[0]
    [full] = lm.generate_until([req("generate_until", "The king and the queen", {"until": []})])
    assert full
    stop = full[len(full) // 2]
    [cut] = lm.generate_until([req("generate_until", "The king and the queen", {"until": [stop]})])
    assert cut == full[: full.index(stop)] and stop not in cut
