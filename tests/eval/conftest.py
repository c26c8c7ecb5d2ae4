"""A tiny run trained in-process on a tiny text corpus: a checkpoint and a tokenizer to use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moescale.config import config_from_dict

from ..data.conftest import make_docs


def tiny_text_config(out_dir: Path, corpus: Path, cache: Path, moe: bool = False) -> Any:
    model: dict[str, Any] = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
                             "vocab_size": 300, "seq_len": 32}  # fmt: skip
    if moe:
        model["moe"] = {"experts": 4, "top_k": 2, "granularity": 2}
    train = {"tokens": 30 * 8 * 32, "batch_size": 8, "lr": 3e-3, "warmup_frac": 0.05,
             "log_every": 10, "eval_every": 1000, "eval_tokens": 512, "checkpoint_every": 10,
             "out_dir": str(out_dir), "threads": 1}  # fmt: skip
    data = {"corpus": [str(corpus)], "cache_dir": str(cache), "val_fraction": 0.2}
    return config_from_dict({"model": model, "train": train, "data": data})


@pytest.fixture(scope="session")
def eval_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("eval_texts")
    for i, doc in enumerate(make_docs(20, seed=3, n_words=200)):
        (d / f"doc{i:02d}.txt").write_text(doc)
    return d


def _train(tmp: Path, corpus: Path, moe: bool) -> Path:
    from moescale.train import train

    out = tmp / ("moe" if moe else "dense")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOESCALE_PEAK_FLOPS", "1e11")  # skip the peak measurement
        summary = train(tiny_text_config(out, corpus, tmp / "cache", moe=moe))
    assert summary.status == "done"
    return out


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory: pytest.TempPathFactory, eval_corpus: Path) -> Path:
    return _train(tmp_path_factory.mktemp("eval_runs"), eval_corpus, moe=False)


@pytest.fixture(scope="session")
def moe_run(tmp_path_factory: pytest.TempPathFactory, eval_corpus: Path) -> Path:
    return _train(tmp_path_factory.mktemp("eval_runs_moe"), eval_corpus, moe=True)


@pytest.fixture(scope="session")
def loaded(dense_run: Path):
    import torch

    from moescale.eval import load_run

    torch.set_num_threads(1)
    return load_run(dense_run, device="cpu")
