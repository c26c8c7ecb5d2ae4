"""Tokenizer determinism across processes and threads, and paragraph-split encoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
