"""Shared fixtures: tiny synthetic corpora, never the network."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WORDS = (
    "the king queen castle sword river night morning love war ship whale sea captain storm "
    "gold bread wine field horse crown letter speech nation people law liberty god heaven"
).split()


def make_doc(rng: random.Random, n_words: int = 120) -> str:
    """Pseudo-English paragraphs: enough repeated structure for BPE to learn merges."""
    sentences = []
    for _ in range(n_words // 8):
        words = [rng.choice(WORDS) for _ in range(8)]
        sentences.append(" ".join(words).capitalize() + ".")
    return "\n\n".join(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4))


def make_docs(n: int, seed: int = 0, n_words: int = 120) -> list[str]:
    rng = random.Random(seed)
    return [make_doc(rng, n_words) for _ in range(n)]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def txt_dir(tmp_path: Path) -> Path:
    d = tmp_path / "texts"
    d.mkdir()
    for i, doc in enumerate(make_docs(12)):
        (d / f"doc{i:02d}.txt").write_text(doc)
    return d


@pytest.fixture
def data_log(caplog: pytest.LogCaptureFixture):
    """caplog for the "moescale" loggers at INFO."""
    caplog.set_level(logging.INFO, logger="moescale")
    return caplog
