"""BatchSampler: a pure function of (seed, index, n) that walks seeded epochs of windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moescale.data import BatchSampler, n_windows, val_batches
from moescale.errors import UserError

SEQ = 8


def _stream(n: int = 1000) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)  # token t has value t: windows are easy to identify


def test_shapes_types_and_shift() -> None:
    x, y = BatchSampler(_stream(), SEQ, seed=0).batch(3, 5)
    assert x.shape == y.shape == (5, SEQ) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # in this stream the next token is always t + 1
    assert ((x[:, 0] % (SEQ + 1)) == 0).all()  # windows start on multiples of seq_len + 1


def test_pure_function_of_position() -> None:
    a = BatchSampler(_stream(), SEQ, seed=7)
    b = BatchSampler(_stream(), SEQ, seed=7)
    for _ in range(3):
        a.batch(np.random.randint(0, 50), 4)  # history must not matter
    for index in (0, 1, 17, 40):
        xa, ya = a.batch(index, 4)
        xb, yb = b.batch(index, 4)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0, 4)[0], BatchSampler(_stream(), SEQ, seed=8).batch(0, 4)[0])


def test_each_window_once_per_epoch_and_fresh_permutation() -> None:
    tokens = _stream(1000)
    w = n_windows(len(tokens), SEQ)  # 111 windows; 1000 % 9 = 1 token left over
    assert w == 111
    s = BatchSampler(tokens, SEQ, seed=0)
    n = 10
    starts = torch.cat([s.batch(i, n)[0][:, 0] for i in range(-(-3 * w // n))])
    epochs = [starts[e * w : (e + 1) * w] for e in range(3)]
    for e in epochs:
        assert sorted((e // (SEQ + 1)).tolist()) == list(range(w))
    assert not torch.equal(epochs[0], epochs[1])
    # a batch that straddles the epoch boundary equals the two halves it is made of
    whole = s.batch(0, w + 5)[0]
    assert torch.equal(whole[:w, 0], epochs[0]) and torch.equal(whole[w:, 0], epochs[1][:5])


def test_resume_by_sequence_count() -> None:
    s = BatchSampler(_stream(), SEQ, seed=3)
    run = torch.cat([s.batch(i, 6)[0] for i in range(20)])
    resumed = torch.cat([BatchSampler(_stream(), SEQ, seed=3).batch(i, 6)[0] for i in range(7, 20)])
    assert torch.equal(run[7 * 6 :], resumed)


def test_too_short_stream_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"has 8 tokens.*seq_len = 8 needs at least 9"):
        BatchSampler(_stream(8), SEQ, seed=0)
    with pytest.raises(UserError, match="validation token stream has 5 tokens"):
        val_batches(_stream(5), SEQ, 100, 2)


def test_val_batches_fixed_evenly_spaced_and_in_order() -> None:
    tokens = _stream(1000)  # 111 windows
    batches = val_batches(tokens, SEQ, n_tokens=40, batch=2)  # ceil(40 / 8) = 5 windows
    assert [x.shape[0] for x, _ in batches] == [2, 2, 1]
    starts = torch.cat([x[:, 0] for x, _ in batches]).tolist()
    assert starts == [w * (SEQ + 1) for w in (0, 22, 44, 66, 88)]  # floor(i * 111 / 5)
    again = val_batches(tokens, SEQ, n_tokens=40, batch=2)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(batches, again, strict=True)
    )
    everything = val_batches(tokens, SEQ, n_tokens=10**9, batch=64)
    starts = torch.cat([x[:, 0] for x, _ in everything])
    assert starts.tolist() == [w * (SEQ + 1) for w in range(n_windows(1000, SEQ))]


def test_val_batches_measure_every_validation_document() -> None:
    """A small budget must not evaluate the first document only (on the bundled corpus the
    first windows of the validation stream are one play)."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(1000 * (d + 1), 1000 * (d + 2), size=n) for d, n in
            enumerate((3000, 1200, 2500, 1800, 2200, 1500))]  # fmt: skip
    tokens = np.concatenate([np.append(doc, 0) for doc in docs]).astype(np.uint16)
    budget = 16 * SEQ  # 16 windows of about 1,360 in the stream
    batches = val_batches(tokens, SEQ, n_tokens=budget, batch=4)
    seen = torch.cat([torch.cat([x, y], 1) for x, y in batches])
    assert seen.shape[0] == 16
    assert set((seen[seen > 0] // 1000 - 1).unique().tolist()) == set(range(len(docs)))
    again = torch.cat([torch.cat([x, y], 1) for x, y in val_batches(tokens, SEQ, budget, 4)])
    assert torch.equal(seen, again)


def test_sequences_split_a_batch_across_ranks() -> None:
    s = BatchSampler(_stream(), SEQ, seed=5)
    x, y = s.batch(4, 8)
    parts = [s.sequences(4 * 8 + r * 2, 2) for r in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
