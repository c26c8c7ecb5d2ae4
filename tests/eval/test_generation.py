"""Sampling: greedy is argmax decoding, top-k 1 is greedy, a seed reproduces a sample."""

from __future__ import annotations

import pytest
import torch

from moescale.errors import UserError
from moescale.eval import Sampling, generate
from moescale.eval.generation import cut_at, filter_logits, sample_ids

PROMPT = "The king and the queen"


def argmax_decode(run, prompt: str, n: int) -> list[int]:
    """Greedy decoding written out: the whole (cropped) context through the model each step."""
    ids = [run.eos_id, *run.encode(prompt)]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor(ids[-run.seq_len :])[None]
            tok = int(run.model(x).logits[0, -1].argmax())
            if tok == run.eos_id:
                break
            ids.append(tok)
            new.append(tok)
    return new


def ids_of(run, opts: Sampling, prompt: str = PROMPT) -> list[int]:
    return sample_ids(run, [[run.eos_id, *run.encode(prompt)]], opts)[0]


def test_greedy_equals_argmax_decoding_past_seq_len(loaded):
    n = loaded.seq_len + 12  # the context is cropped to seq_len on the way
    greedy = Sampling(max_new_tokens=n, temperature=0)
    expected = argmax_decode(loaded, PROMPT, n)
    assert ids_of(loaded, greedy) == expected
    assert ids_of(loaded, greedy) == expected  # deterministic
    assert generate(loaded, PROMPT, greedy) == loaded.decode(expected)
    assert len(expected) > 0


def test_top_k_one_is_greedy(loaded):
    greedy = ids_of(loaded, Sampling(max_new_tokens=20, temperature=0))
    for seed in (0, 1):
        assert ids_of(loaded, Sampling(max_new_tokens=20, temperature=1.3, top_k=1,
                                       seed=seed)) == greedy  # fmt: skip


def test_a_seed_reproduces_a_sample_and_seeds_differ(loaded):
    opts = [Sampling(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=s) for s in (7, 8)]
    a, b = ids_of(loaded, opts[0]), ids_of(loaded, opts[0])
    assert a == b and len(a) > 0
    assert ids_of(loaded, opts[1]) != a


def test_batched_rows_match_single_rows(loaded):
    ids = loaded.encode("The king rode a horse to the castle by the sea at night")
    ctxs = [[loaded.eos_id, *ids[i : i + 4]] for i in (0, 3, 6)]
    opts = Sampling(max_new_tokens=10, temperature=0, stop_at_eos=False)
    batch = sample_ids(loaded, ctxs, opts)
    assert batch == [sample_ids(loaded, [c], opts)[0] for c in ctxs]


def test_until_stops_generation_and_cut_at_trims():
    assert cut_at("abc. def\nxyz", [".", "\n"]) == "abc"
    assert cut_at("abc", ["zz"]) == "abc"


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # the smallest set whose probability reaches p: 0.5 + 0.3 >= 0.8
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert not torch.isinf(filter_logits(logits, top_p=1.0)).any()


@pytest.mark.parametrize(
    ("opts", "flag"),
    [(Sampling(temperature=-1), "--temperature"), (Sampling(top_k=0), "--top-k"),
     (Sampling(top_p=0), "--top-p"), (Sampling(top_p=1.5), "--top-p"),
     (Sampling(max_new_tokens=-1), "--max-new-tokens")],
)  # fmt: skip
def test_bad_sampling_values_name_their_flag(loaded, opts: Sampling, flag: str):
    with pytest.raises(UserError, match=flag):
        generate(loaded, PROMPT, opts)
