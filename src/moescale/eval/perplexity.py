"""Perplexity, loss and bits per byte of a text file under a trained run.

The whole file is one token stream (encoded as the run's shards are, with no special tokens),
preceded by `<|endoftext|>` so that its first token is predicted too, as every document's first
token is in training, where the previous document's `<|endoftext|>` precedes it. Every token
of the file is scored exactly once, in windows of seq_len (`moescale.eval.scoring.plan_windows`:
non-overlapping by default; `stride` < seq_len gives each token at least seq_len - stride tokens
of context).

The standard error takes windows as the sampling unit (tokens within a window are correlated):
the ratio estimator's, which is the standard deviation of the window means over sqrt(windows)
when every window scores as many tokens. Bits per byte divide the summed loss, in bits, by the
UTF-8 bytes behind the scored tokens, which is the file's size unless it contains the literal
text `<|endoftext|>` (a special token, standing for no bytes): the validation bits per byte of
training, comparable across tokenizers.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.eval.loader import LoadedRun
from moescale.eval.scoring import plan_windows, score_windows
from moescale.fmt import count

logger = logging.getLogger(__name__)


@dataclass
class TextEval:
    """The numbers `moescale eval --text` prints and writes into eval.json."""

    loss: float  # mean next-token loss, nats per token
    loss_se: float  # standard error of `loss`, windows as the unit (nan with one window)
    perplexity: float  # exp(loss)
    bits_per_byte: float  # loss * tokens / (bytes * ln 2)
    tokens: int  # tokens scored (every token of the text)
    bytes: int  # UTF-8 bytes behind them
    windows: int
    seq_len: int
    stride: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, or a UserError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read --text {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}): convert it, "
            "e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    if not text:
        raise UserError(f"{path} is empty: there is nothing to score.")
    return text


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_flags(stride: int | None, batch_size: int, seq_len: int | None = None) -> None:
    """--stride and --batch-size; `moescale eval` checks them before the checkpoint is loaded,
    when the run's seq_len (the stride's upper bound) is not known yet."""
    if stride is not None and not 1 <= stride <= (seq_len or stride):
        bound = f" ({seq_len})" if seq_len else ""
        raise UserError(f"--stride {stride} must lie between 1 and the run's seq_len{bound}.")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1.")


def evaluate_text(
    run: LoadedRun, text: str, stride: int | None = None, batch_size: int = 16
) -> TextEval:
    """Score every token of `text` (see the module docstring for the windows)."""
    stride = run.seq_len if stride is None else stride
    check_flags(stride, batch_size, run.seq_len)
    ids = run.encode(text)
    if not ids:
        raise UserError("the text encodes to no tokens: there is nothing to score.")
    windows = plan_windows([run.eos_id], ids, run.seq_len, stride)
    logger.info(
        "eval: scoring %s tokens in %d windows of %d (stride %d), batches of %d",
        count(len(ids)), len(windows), run.seq_len, stride, batch_size,
    )  # fmt: skip
    scores = score_windows(run, windows, batch_size)
    nll = np.array([-s.logprob for s in scores], dtype=np.float64)
    n = np.array([s.scored for s in scores], dtype=np.float64)
    total, tokens = float(nll.sum()), int(n.sum())
    n_bytes = int(sum(int(run.token_bytes[list(s.targets)].sum()) for s in scores))
    loss = total / tokens
    return TextEval(
        loss=loss,
        loss_se=ratio_se(nll, n),
        perplexity=math.exp(loss),
        bits_per_byte=total / (n_bytes * math.log(2)) if n_bytes else math.nan,
        tokens=tokens,
        bytes=n_bytes,
        windows=len(windows),
        seq_len=run.seq_len,
        stride=stride,
    )


def ratio_se(sums: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of sum(sums) / sum(counts) with windows as the unit (nan for one window).

    Equal counts give std(window means, ddof=1) / sqrt(windows), the validation loss's SE."""
    k = len(sums)
    if k < 2:
        return math.nan
    mean = sums.sum() / counts.sum()
    resid = sums - mean * counts
    return float(math.sqrt(k / (k - 1) * float((resid**2).sum())) / counts.sum())


def evaluate_file(
    run: LoadedRun, path: str | Path, stride: int | None = None, batch_size: int = 16,
    text: str | None = None,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """(eval.json key, record) of one text file: `evaluate_text` plus what was evaluated.
    `text`: the file's contents when the caller has read them already (`read_text`)."""
    from moescale.eval.results import text_key

    text = read_text(path) if text is None else text
    res = evaluate_text(run, text, stride, batch_size)
    record = {"kind": "text", "path": str(Path(path).resolve()), "sha256": text_sha256(text),
              "step": run.step, **res.to_dict()}  # fmt: skip
    return text_key(path, res.stride, run.step), record
