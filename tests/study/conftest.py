"""A tiny study on a tiny user corpus: trains in seconds through the real CLI and executors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..data.conftest import make_docs

TINY_BASE: dict[str, Any] = {
    "model": {"vocab_size": 300, "seq_len": 32},
    "train": {"batch_size": 4, "lr": 3e-3, "schedule": "wsd", "warmup_frac": 0.05,
              "decay_frac": 0.2, "log_every": 2, "eval_every": 1000, "eval_tokens": 1024,
              "checkpoint_every": 4, "threads": 1},
}  # fmt: skip


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("study_texts")
    for i, doc in enumerate(make_docs(30, n_words=300)):
        (d / f"doc{i:02d}.txt").write_text(doc)
    return d


def write_study(tmp: Path, corpus: Path, drop: tuple[str, ...] = (), **extra: Any) -> Path:
    """A study of dense + fine-grained MoE, 2 sizes, 2 budgets (one WSD branch each)."""
    base = copy.deepcopy(TINY_BASE)
    base["data"] = {"corpus": [str(corpus)], "cache_dir": str(corpus.parent / "cache")}
    data: dict[str, Any] = {
        "name": "tiny",
        "out_dir": str(tmp / "study"),
        "base": base,
        "ladder": {"n_layers": [1, 2], "d_model_per_layer": 16, "head_dim": 16},
        "architectures": ["dense", {"name": "fg", "experts": 4, "top_k": 1, "granularity": 2}],
        "tokens": {"budgets": [1024, 2048]},
        "executor": {"workers": 2, "threads": 1, "retries": 1},
        "report": {"budgets": [1e15, 1e18]},
    }
    data.update(extra)
    for key in drop:
        del data[key]
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
