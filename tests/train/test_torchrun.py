"""`torchrun --nproc-per-node 2 -m moescale train CONFIG` as a user runs it (gloo, CPU).

The first launch builds the tokenizer on rank 0 (the other rank reads the cache), trains, and
leaves one run directory written by rank 0 alone; launching it again finds the run done; a
global batch that does not split over the ranks is refused on every rank with the key to
change, before anything is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from moescale.run import read_summary
from tests.train.test_resume_sigkill import env, write_corpus

CONFIG = """
model: {{d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, vocab_size: 300, seq_len: 32,
        moe: {{experts: 4, top_k: 1, granularity: 2}}}}
train: {{tokens: {tokens}, batch_size: {batch}, lr: 0.003, log_every: 2, eval_every: 10,
        eval_tokens: 256, checkpoint_every: 5, threads: 1}}
parallel: {{expert: 2}}
data: {{corpus: {corpus}, val_fraction: 0.1, cache_dir: {cache}}}
"""


def torchrun(cfg: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "moescale", "train", str(cfg), "--set", f"train.out_dir={out}"]  # fmt: skip
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)


def write_config(tmp_path: Path, batch: int) -> Path:
    """A 10-step run of `batch` sequences on a small JSONL corpus."""
    corpus, cfg = tmp_path / "corpus.jsonl", tmp_path / "run.yaml"
    write_corpus(corpus)
    cfg.write_text(CONFIG.format(tokens=10 * batch * 32, batch=batch, corpus=corpus,
                                 cache=tmp_path / "cache"))  # fmt: skip
    return cfg


def test_torchrun_two_ranks(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, batch=8)
    run = tmp_path / "run"
    first = torchrun(cfg, run)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = read_summary(run)
    assert (summary.status, summary.ranks, summary.steps) == ("done", 2, 10)
    log = (run / "train.log").read_text()
    assert "2 ranks" in log and "[rank 1]" not in log
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in recs if "loss" in r]
    assert train_steps == [2, 4, 6, 8, 10]  # rank 0 alone logged, once per step
    assert all(r["rank_imbalance"] >= 1.0 for r in recs if "loss" in r)
    assert (run / "tokenizer.json").is_file()

    again = torchrun(cfg, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained" in again.stdout


def test_torchrun_refuses_a_batch_that_does_not_split(tmp_path: Path) -> None:
    res = torchrun(write_config(tmp_path, batch=3), tmp_path / "run")
    assert res.returncode != 0
    assert res.stderr.count("train.batch_size: 3 sequences do not split into 2 ranks") == 2
    assert not (tmp_path / "run").exists()
