"""Token shards: caching and rebuilds, dtype choice, lossless round trip, same bytes twice,
the bytes behind each token and the tokenizer hash."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from moescale.config import DataConfig
from moescale.data import load_tokenizer, prepare_data, shards, token_dtype
from moescale.data.bundled import build_bundled_corpus
from moescale.data.cache import sha256_file
from moescale.data.documents import Document
from moescale.data.user_files import load_user_files
from moescale.errors import ConfigError

from .conftest import make_docs


def _cfg(txt_dir: Path, cache: Path) -> DataConfig:
    return DataConfig(corpus=[str(txt_dir)], cache_dir=str(cache), val_fraction=0.2)


def test_token_dtype() -> None:
    assert token_dtype(4096) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_vocab_too_small_is_a_config_error(txt_dir: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="model.vocab_size: 100"):
        prepare_data(_cfg(txt_dir, cache), 100)


def test_shards_round_trip_and_eos(txt_dir: Path, cache: Path) -> None:
    p = prepare_data(_cfg(txt_dir, cache), 300)
    assert p.built and p.train_tokens.dtype == np.uint16
    assert p.manifest["eos_id"] == p.eos_id == 0
    assert int(p.train_tokens.max()) < 300
    tok = load_tokenizer(p.tokenizer_path)
    split = load_user_files([str(txt_dir)], val_fraction=0.2)
    ids = np.asarray(p.val_tokens)
    assert (ids == p.eos_id).sum() == len(split.val) and ids[-1] == p.eos_id
    docs = [tok.decode(list(part)) for part in np.split(ids, np.where(ids == 0)[0] + 1)[:-1]]
    assert docs == split.val  # byte-level BPE is lossless
    assert p.manifest["train"]["tokens"] == len(p.train_tokens)


def test_token_bytes_and_tokenizer_hash(txt_dir: Path, cache: Path) -> None:
    p = prepare_data(_cfg(txt_dir, cache), 300)
    assert p.tokenizer_sha256 == sha256_file(p.tokenizer_path) == p.manifest["tokenizer_sha256"]
    assert p.token_bytes is not None and p.token_bytes.shape == (300,)
    assert p.token_bytes[p.eos_id] == 0
    split = load_user_files([str(txt_dir)], val_fraction=0.2)
    for tokens, docs in ((p.val_tokens, split.val), (p.train_tokens, split.train)):
        assert p.token_bytes[np.asarray(tokens)].sum() == sum(len(d.encode()) for d in docs)
    reused = prepare_data(_cfg(txt_dir, cache), 300)
    assert not reused.built and reused.tokenizer_sha256 == p.tokenizer_sha256
    assert np.array_equal(reused.token_bytes, p.token_bytes)
    # a tokenizer that no longer matches the manifest did not write these shards: rebuild
    p.tokenizer_path.write_text(p.tokenizer_path.read_text() + "\n")
    assert prepare_data(_cfg(txt_dir, cache), 300).built


def test_short_vocabulary_warns_and_shards_still_work(
    txt_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="moescale")
    p = prepare_data(_cfg(txt_dir, cache), 1024)
    learned = p.manifest["tokenizer_vocab"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"only {learned} of the 1,024 tokens" in warning
    assert int(p.train_tokens.max()) < learned <= 1024 and p.token_bytes.shape == (1024,)


def test_reused_when_unchanged_rebuilt_when_corpus_or_vocab_changes(
    txt_dir: Path, cache: Path
) -> None:
    first = prepare_data(_cfg(txt_dir, cache), 300)
    mtime = (first.dir / "train.bin").stat().st_mtime_ns
    again = prepare_data(_cfg(txt_dir, cache), 300)
    assert not again.built and again.dir == first.dir
    assert (again.dir / "train.bin").stat().st_mtime_ns == mtime
    other_vocab = prepare_data(_cfg(txt_dir, cache), 320)
    assert other_vocab.built and other_vocab.dir != first.dir
    (txt_dir / "doc03.txt").write_text("A changed document.\n\nWith new words entirely.")
    changed = prepare_data(_cfg(txt_dir, cache), 300)
    assert changed.built and changed.dir != first.dir
    assert changed.manifest["corpus_sha256"] != first.manifest["corpus_sha256"]
    # a shard killed half-way (no manifest) is rebuilt, not trusted
    (changed.dir / "manifest.json").unlink()
    assert prepare_data(_cfg(txt_dir, cache), 300).built


def test_bundled_token_cache_opens_without_reading_the_corpus(tmp_path: Path, monkeypatch) -> None:
    docs = [Document("fake", f"d{i}", d) for i, d in enumerate(make_docs(30, seed=6))]
    build_bundled_corpus(tmp_path, sources={"fake==1": lambda tmp: {"fake": docs}})
    cfg = DataConfig(corpus="bundled", cache_dir=str(tmp_path))
    first = prepare_data(cfg, 300)
    assert first.built

    def not_again(*args, **kwargs):
        raise AssertionError("the corpus text was read although its token cache is complete")

    monkeypatch.setattr(shards, "load_corpus", not_again)
    again = prepare_data(cfg, 300)
    assert not again.built and again.dir == first.dir and again.manifest == first.manifest
    assert np.array_equal(again.train_tokens, first.train_tokens)
    assert np.array_equal(again.token_bytes, first.token_bytes)
    # another vocabulary, or a token cache killed half-way (no manifest), needs the text
    with pytest.raises(AssertionError, match="was read"):
        prepare_data(cfg, 320)
    (first.dir / "manifest.json").unlink()
    with pytest.raises(AssertionError, match="was read"):
        prepare_data(cfg, 300)
    monkeypatch.undo()
    assert prepare_data(cfg, 300).built


def test_uint32_for_large_vocab(txt_dir: Path, cache: Path) -> None:
    p = prepare_data(_cfg(txt_dir, cache), 70_000)
    assert p.train_tokens.dtype == np.uint32 and p.manifest["dtype"] == "uint32"
    assert (p.dir / "train.bin").stat().st_size == 4 * len(p.train_tokens)


def test_same_corpus_same_bytes(txt_dir: Path, tmp_path: Path) -> None:
    a = prepare_data(_cfg(txt_dir, tmp_path / "a"), 300)
    b = prepare_data(_cfg(txt_dir, tmp_path / "b"), 300)
    for name in ("tokenizer.json", "train.bin", "val.bin"):
        assert (a.dir / name).read_bytes() == (b.dir / name).read_bytes()
