"""Tokenizer determinism across processes and threads, paragraph-split encoding, the bytes
behind each token, and the warning for a vocabulary the corpus cannot fill."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from moescale.data import tokenizer as T

from .conftest import make_docs

_TRAIN_IN_SUBPROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import make_docs
from moescale.data.tokenizer import train_tokenizer
print(train_tokenizer(make_docs(40, seed=9), 400).to_str(pretty=True))
"""


def test_tokenizer_is_deterministic_across_processes_and_threads(tmp_path: Path) -> None:
    here = str(Path(__file__).parent)
    outs = [
        subprocess.run(
            [sys.executable, "-c", _TRAIN_IN_SUBPROCESS, here],
            capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": str(seed), "RAYON_NUM_THREADS": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    ]  # fmt: skip
    in_process = T.train_tokenizer(make_docs(40, seed=9), 400).to_str(pretty=True)
    assert outs[0] == outs[1] == in_process + "\n"


def test_paragraph_pieces_encode_like_whole_documents() -> None:
    docs = make_docs(8, seed=11) + ["Line one.\n\n\nLine two after blank lines.\n \n  x", "\n\nA"]
    tok = T.train_tokenizer(docs, 350)
    (ids,) = T.encode_documents(tok, docs)
    whole: list[int] = []
    for d in docs:
        whole.extend(tok.encode(d, add_special_tokens=False).ids + [T.eos_id(tok)])
    assert ids == whole


def test_token_byte_lengths_add_up_to_the_utf8_bytes() -> None:
    non_ascii = "Caf\u00e9 na\u00efve \u2014 \u00bfqu\u00e9? \u65e5\u672c \U0001f40b"
    docs = make_docs(20, seed=12) + [non_ascii]
    tok = T.train_tokenizer(docs, 400)
    lengths = T.token_byte_lengths(tok, 512)
    assert lengths.shape == (512,) and lengths[T.eos_id(tok)] == 0
    assert (lengths[tok.get_vocab_size() :] == 0).all()  # never-learned ids stand for nothing
    text = make_docs(3, seed=99)[0] + "\n\nThe whale \u2014 caf\u00e9 \U0001f40b, \u00e0 la mer."
    ids = tok.encode(text, add_special_tokens=False).ids
    assert lengths[ids].sum() == len(text.encode())


def test_short_vocabulary_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="moescale")
    tok = T.train_tokenizer(make_docs(6, seed=13), 1024)
    learned = tok.get_vocab_size()
    assert learned < 0.9 * 1024
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert f"only {learned} of the 1,024 tokens" in message
    assert "model.vocab_size" in message and "more text" in message
    caplog.clear()
    T.train_tokenizer(make_docs(6, seed=13), learned)  # asking for what it can learn: quiet
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
