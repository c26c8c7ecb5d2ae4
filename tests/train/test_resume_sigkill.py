"""SIGKILL a real `moescale train` process mid-run: the run reads `interrupted`, and re-running
the same command must give the same per-step losses as a run that was never interrupted (CPU,
float32, one thread). The finished run directory holds its tokenizer."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from moescale.config import load_config
from moescale.data.cache import sha256_file
from moescale.run import lock_holder, read_metrics, read_summary
from moescale.train import train

WORDS = (
    "the king said unto his people that the land was fair and the sea was wide and the ships "
    "came home at night with corn and wine while the old men sang of war"
).split()

CONFIG = """
model: {{d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, vocab_size: 300, seq_len: 32,
        moe: {{experts: 4, top_k: 1, granularity: 2}}}}
train: {{tokens: {tokens}, batch_size: 8, micro_batch_size: 4, lr: 0.003, log_every: 1,
        eval_every: 25, eval_tokens: 256, checkpoint_every: 10, keep_checkpoints: 2,
        noise_scale: true, threads: 1}}
data: {{corpus: {corpus}, val_fraction: 0.1, cache_dir: {cache}}}
"""
STEPS = 100


def write_corpus(path: Path) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(300):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
            f.write(json.dumps({"text": text.capitalize() + "."}) + "\n")


def command(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "moescale.cli", "train", str(cfg),
            "--set", f"train.out_dir={out}"]  # fmt: skip


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MOESCALE_PEAK_FLOPS="1e11",
             HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    return e


def loss_by_step(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def last_step(run: Path) -> int:
    recs = loss_by_step(run)
    return recs[-1][0] if recs else 0


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.format(tokens=STEPS * 8 * 32, corpus=corpus, cache=tmp_path / "cache"))

    # the uninterrupted reference runs in this process (one thread, see conftest): it also
    # builds the tokenizer and shards that the subprocesses then reuse from the cache
    ref = tmp_path / "ref"
    ref_summary = train(load_config(cfg, [f"train.out_dir={ref}"]))
    assert ref_summary.status == "done"

    seed = random.randrange(10**6)
    kill_at = random.Random(seed).randint(12, 75)  # after the first checkpoint (step 10)
    run = tmp_path / "run"
    proc = subprocess.Popen(command(cfg, run), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 90
    while proc.poll() is None and time.time() < deadline and last_step(run) < kill_at:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = last_step(run)
    assert 10 < killed_after < STEPS, f"kill missed the run (seed {seed}, step {killed_after})"
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    assert lock_holder(run) is None  # the kernel dropped the dead process's lock
    assert read_summary(run).status == "interrupted"

    again = subprocess.run(command(cfg, run), env=env(), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout
    got, want = loss_by_step(run), loss_by_step(ref)
    assert [s for s, _ in got] == list(range(1, STEPS + 1))  # no step missing or duplicated
    assert got == want, f"loss trajectories differ (killed after step {killed_after}, seed {seed})"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done"
    assert summary["val_loss"] == ref_summary.val_loss
    assert summary["noise_scale"] == ref_summary.noise_scale
    assert sha256_file(run / "tokenizer.json") == summary["tokenizer_sha256"]
