"""Perplexity of a text file: the loss is the model's own cross-entropy over every token."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from moescale.errors import UserError
from moescale.eval import evaluate_text
from moescale.eval.perplexity import ratio_se, read_text

from ..data.conftest import make_docs

TEXT = "\n\n".join(make_docs(3, seed=99, n_words=80)) + "\nCafé, naïve: ünïcode ✓."


def direct_losses(run, text: str) -> torch.Tensor:
    """Per-token loss computed straight from model(x).logits: non-overlapping chunks of
    seq_len targets, the last chunk given a full seq_len of context."""
    s = [run.eos_id, *run.encode(text)]
    n, seq = len(s) - 1, run.seq_len
    losses = []
    with torch.no_grad():
        for start in range(1, n + 1, seq):
            stop = min(start + seq, n + 1)  # targets s[start:stop]
            lo = max(0, stop - 1 - seq)
            x = torch.tensor(s[lo : stop - 1])[None]
            y = torch.tensor(s[lo + 1 : stop])
            loss = F.cross_entropy(run.model(x).logits[0].float(), y, reduction="none")
            losses.append(loss[len(y) - (stop - start) :])
    return torch.cat(losses).double()


def test_loss_equals_direct_cross_entropy(loaded):
    res = evaluate_text(loaded, TEXT, batch_size=4)
    direct = direct_losses(loaded, TEXT)
    assert res.tokens == len(loaded.encode(TEXT)) == len(direct)
    assert res.loss == pytest.approx(float(direct.mean()), rel=1e-6)
    assert res.perplexity == pytest.approx(math.exp(res.loss))
    assert res.bytes == len(TEXT.encode("utf-8"))
    assert res.bits_per_byte == pytest.approx(res.loss * res.tokens / (res.bytes * math.log(2)))
    assert res.windows == math.ceil(res.tokens / loaded.seq_len)
    assert 0 < res.loss_se < res.loss


def test_batch_size_does_not_change_the_numbers(loaded):
    a = evaluate_text(loaded, TEXT, batch_size=1)
    b = evaluate_text(loaded, TEXT, batch_size=64)
    assert a.loss == pytest.approx(b.loss, rel=1e-6)
    assert a.loss_se == pytest.approx(b.loss_se, rel=1e-5)


def test_stride_one_gives_every_token_its_full_context(loaded):
    text = TEXT[:300]
    s = [loaded.eos_id, *loaded.encode(text)]
    direct = []
    with torch.no_grad():
        for j in range(1, len(s)):
            x = torch.tensor(s[max(0, j - loaded.seq_len) : j])[None]
            logits = loaded.model(x).logits[0, -1].float()
            direct.append(float(F.cross_entropy(logits[None], torch.tensor([s[j]]))))
    res = evaluate_text(loaded, text, stride=1, batch_size=16)
    assert res.tokens == len(direct) and res.windows == len(direct) - loaded.seq_len + 1
    assert res.loss == pytest.approx(sum(direct) / len(direct), rel=1e-6)
    # more context than non-overlapping windows give: the loss differs, every token still once
    assert evaluate_text(loaded, text).tokens == res.tokens


def test_short_text_is_one_window_without_a_standard_error(loaded):
    res = evaluate_text(loaded, "The king")
    assert res.windows == 1 and math.isnan(res.loss_se)
    assert res.loss == pytest.approx(float(direct_losses(loaded, "The king").mean()), rel=1e-6)


def test_ratio_se_matches_the_window_mean_formula():
    sums, counts = torch.tensor([3.0, 5.0, 4.5, 7.0]).numpy(), torch.full((4,), 2.0).numpy()
    means = torch.tensor(sums / counts)
    assert ratio_se(sums, counts) == pytest.approx(float(means.std() / 2))


@pytest.mark.parametrize("stride", [0, 33])
def test_bad_stride_is_refused(loaded, stride: int):
    with pytest.raises(UserError, match="--stride"):
        evaluate_text(loaded, TEXT, stride=stride)


def test_read_text_names_bad_files(tmp_path: Path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="not UTF-8.*byte 3"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(UserError, match="empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="cannot read"):
        read_text(tmp_path / "missing.txt")
