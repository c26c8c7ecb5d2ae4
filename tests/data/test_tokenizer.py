"""Tokenizer determinism, shard caching and rebuilds, dtype choice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moescale.config import DataConfig
from moescale.data import corpus as C
from moescale.data import load_tokenizer, prepare_data, token_dtype
from moescale.data import tokenizer as T
from moescale.errors import ConfigError

from .conftest import make_docs

QUIET = {"log": lambda s: None}


def _cfg(txt_dir: Path, cache: Path) -> DataConfig:
    return DataConfig(corpus=[str(txt_dir)], cache_dir=str(cache), val_fraction=0.2)


def test_token_dtype() -> None:
    assert token_dtype(4096) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_vocab_too_small_is_a_config_error(txt_dir: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="model.vocab_size: 100"):
        prepare_data(_cfg(txt_dir, cache), 100, **QUIET)


def test_shards_round_trip_and_eos(txt_dir: Path, cache: Path) -> None:
    p = prepare_data(_cfg(txt_dir, cache), 300, **QUIET)
    assert p.built and p.train_tokens.dtype == np.uint16
    assert p.manifest["eos_id"] == p.eos_id == 0
    assert int(p.train_tokens.max()) < 300
    tok = load_tokenizer(p.tokenizer_path)
    split = C.load_user_files([str(txt_dir)], val_fraction=0.2, **QUIET)
    ids = np.asarray(p.val_tokens)
    assert (ids == p.eos_id).sum() == len(split.val) and ids[-1] == p.eos_id
    docs = [tok.decode(list(part)) for part in np.split(ids, np.where(ids == 0)[0] + 1)[:-1]]
    assert docs == split.val  # byte-level BPE is lossless
    assert p.manifest["train"]["tokens"] == len(p.train_tokens)


def test_reused_when_unchanged_rebuilt_when_corpus_or_vocab_changes(
    txt_dir: Path, cache: Path
) -> None:
    first = prepare_data(_cfg(txt_dir, cache), 300, **QUIET)
    mtime = (first.dir / "train.bin").stat().st_mtime_ns
    again = prepare_data(_cfg(txt_dir, cache), 300, **QUIET)
    assert not again.built and again.dir == first.dir
    assert (again.dir / "train.bin").stat().st_mtime_ns == mtime
    other_vocab = prepare_data(_cfg(txt_dir, cache), 320, **QUIET)
    assert other_vocab.built and other_vocab.dir != first.dir
    (txt_dir / "doc03.txt").write_text("A changed document.\n\nWith new words entirely.")
    changed = prepare_data(_cfg(txt_dir, cache), 300, **QUIET)
    assert changed.built and changed.dir != first.dir
    assert changed.manifest["corpus_sha256"] != first.manifest["corpus_sha256"]
    # a shard killed half-way (no manifest) is rebuilt, not trusted
    (changed.dir / "manifest.json").unlink()
    assert prepare_data(_cfg(txt_dir, cache), 300, **QUIET).built


def test_uint32_for_large_vocab(txt_dir: Path, cache: Path) -> None:
    p = prepare_data(_cfg(txt_dir, cache), 70_000, **QUIET)
    assert p.train_tokens.dtype == np.uint32 and p.manifest["dtype"] == "uint32"
    assert (p.dir / "train.bin").stat().st_size == 4 * len(p.train_tokens)


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


def test_same_corpus_same_bytes(txt_dir: Path, tmp_path: Path) -> None:
    a = prepare_data(_cfg(txt_dir, tmp_path / "a"), 300, **QUIET)
    b = prepare_data(_cfg(txt_dir, tmp_path / "b"), 300, **QUIET)
    for name in ("tokenizer.json", "train.bin", "val.bin"):
        assert (a.dir / name).read_bytes() == (b.dir / name).read_bytes()


def test_paragraph_pieces_encode_like_whole_documents() -> None:
    docs = make_docs(8, seed=11) + ["Line one.\n\n\nLine two after blank lines.\n \n  x", "\n\nA"]
    tok = T.train_tokenizer(docs, 350)
    (ids,) = T.encode_documents(tok, docs)
    whole: list[int] = []
    for d in docs:
        whole.extend(tok.encode(d, add_special_tokens=False).ids + [T.eos_id(tok)])
    assert ids == whole
