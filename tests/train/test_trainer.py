"""End-to-end trainer behaviour on tiny models: learning, run directory, resume, refusals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moescale.config import config_from_dict
from moescale.errors import ConfigError, UserError
from moescale.run import RunSummary, read_metrics, read_summary
from moescale.train import step as step_mod
from moescale.train import trainer as trainer_mod
from moescale.train.trainer import train

from .conftest import log_lines, tiny_config


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def test_loss_goes_down_and_run_dir_is_complete(tmp_path: Path, tiny_data):
    run = tmp_path / "run"
    cfg = tiny_config(run, moe=True, tokens=200 * 8 * 32, log_every=10, eval_every=100,
                      checkpoint_every=100, lr=1e-2)  # fmt: skip
    summary = train(cfg, data=tiny_data).to_dict()
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 100, 200]
    assert evals[-1]["val_loss"] < 0.8 * evals[0]["val_loss"]
    assert summary["status"] == "done" and summary["steps"] == 200
    assert summary["val_loss"] == evals[-1]["val_loss"]
    assert summary["tokens"] == 200 * 8 * 32
    assert summary["flops"] == pytest.approx(summary["flops_per_token"] * summary["tokens"])
    for key in ("params_total", "params_active", "params_embedding", "wall_time_s", "arch",
                "experts", "granularity", "top_k", "batch_size", "lr"):  # fmt: skip
        assert key in summary
    assert json.loads((run / "summary.json").read_text()) == summary
    assert read_summary(run) == RunSummary.from_dict(summary)
    assert summary["flops_simple"] == pytest.approx(6 * summary["params_active"] * 200 * 8 * 32)
    assert (run / "train.log").read_text().count("eval  step") == 3
    rec = read_metrics(run / "metrics.jsonl")[1]
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "aux_loss",
                "z_loss", "load_imbalance", "dropped_frac"):  # fmt: skip
        assert rec[key] is not None, key
    assert (run / "config.yaml").exists()
    assert list(run.glob("events.out.tfevents.*"))
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [
        "step_00000100.pt", "step_00000200.pt"
    ]  # fmt: skip


def test_interrupted_run_resumes_exactly(tmp_path: Path, tiny_data):
    ref = train(tiny_config(tmp_path / "ref", moe=True, micro_batch_size=4, noise_scale=True),
                data=tiny_data)  # fmt: skip
    cfg = tiny_config(tmp_path / "run", moe=True, micro_batch_size=4, noise_scale=True)
    # dies after logging step 25; newest checkpoint: 20
    with pytest.raises(KeyboardInterrupt), log_lines(stop_at="step 25/"):
        train(cfg, data=tiny_data)
    assert max(losses(tmp_path / "run")) == 25
    assert read_summary(tmp_path / "run").status == "interrupted"  # not "running" forever
    with log_lines() as lines:
        out = train(cfg, data=tiny_data)
    assert any("resuming" in line and "step 20" in line for line in lines)
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")  # bitwise, no duplicates
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps))
    assert out.val_loss == ref.val_loss
    assert out.noise_scale == ref.noise_scale and out.noise_scale is not None


def test_ctrl_c_finishes_the_step_and_checkpoints_it(
    tmp_path: Path, tiny_data, monkeypatch, request
):
    """SIGINT mid-step (checkpoint_every is 10): the step completes, a checkpoint is saved at
    it, the run stops with KeyboardInterrupt, and resuming matches an uninterrupted run.
    SIGINT starts at its default, as in a terminal's foreground job: a test suite started in
    the background of a non-interactive shell inherits it ignored, and the trainer then leaves
    Ctrl-C alone (as `nohup` users want)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    ref = train(tiny_config(tmp_path / "ref", moe=True), data=tiny_data)
    real = trainer_mod.Trainer.train_one

    def train_one(self, step, clock):
        if step == 13:
            signal.raise_signal(signal.SIGINT)  # what a terminal's Ctrl-C does, mid-step
        real(self, step, clock)

    monkeypatch.setattr(trainer_mod.Trainer, "train_one", train_one)
    cfg = tiny_config(tmp_path / "run", moe=True)
    with pytest.raises(KeyboardInterrupt), log_lines() as lines:
        train(cfg, data=tiny_data)
    assert any("stopped after step 13" in line for line in lines)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved[-1] == "step_00000013.pt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(trainer_mod.Trainer, "train_one", real)
    with log_lines() as lines:
        out = train(cfg, data=tiny_data)
    assert any("resuming" in line and "step 13" in line for line in lines)
    assert out.val_loss == ref.val_loss


def test_resuming_on_another_thread_count_says_it_is_not_bitwise(tmp_path: Path, tiny_data):
    """A CPU sum's order follows the threads: a checkpoint continued on another count gives
    the same run to float rounding only, and the trainer says so (threads are not part of
    what defines a run, so it is not refused)."""
    cfg = tiny_config(tmp_path / "run", threads=1)
    with pytest.raises(KeyboardInterrupt), log_lines(stop_at="step 12/"):
        train(cfg, data=tiny_data)
    with log_lines() as lines:
        train(tiny_config(tmp_path / "run", threads=2), data=tiny_data)
    said = [line for line in lines if "continuing on 2 threads a checkpoint saved on 1" in line]
    assert len(said) == 1 and "not bit for bit" in said[0]
    with pytest.raises(KeyboardInterrupt), log_lines(stop_at="step 12/"):
        train(tiny_config(tmp_path / "same", threads=1), data=tiny_data)
    with log_lines() as lines:
        train(tiny_config(tmp_path / "same", threads=1), data=tiny_data)
    assert not any("threads a checkpoint saved on" in line for line in lines)


def test_finished_run_is_not_retrained(tmp_path: Path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tokens=5 * 8 * 32)
    first = train(cfg, data=tiny_data)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with log_lines() as lines:
        again = train(cfg, data=tiny_data)
    assert again == first
    assert "already trained" in lines[0] and str(tmp_path / "run" / "summary.json") in lines[0]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    with pytest.raises(ConfigError, match="done run with a different config"):
        train(tiny_config(tmp_path / "run", tokens=5 * 8 * 32, lr=1e-3), data=tiny_data)
    forced = train(cfg, data=tiny_data, force=True)
    assert forced.status == "done" and forced.steps == 5


def test_force_deletes_nothing_when_the_new_data_fail(tmp_path: Path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tokens=5 * 8 * 32)
    train(cfg, data=tiny_data)
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    (tmp_path / "empty.txt").write_text("")
    d = cfg.to_dict()
    d["data"].update(corpus=[str(tmp_path / "empty.txt")], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="no text"):
        train(config_from_dict(d), force=True)
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before


def test_changed_config_of_unfinished_run_is_refused(tmp_path: Path, tiny_data):
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt), log_lines(stop_at="step 12/"):
        train(cfg, data=tiny_data)
    changed = tiny_config(tmp_path / "run", lr=1e-3, batch_size=4)
    with pytest.raises(ConfigError) as err:
        train(changed, data=tiny_data)
    assert "train.lr: 0.003 -> 0.001" in str(err.value)
    assert "train.batch_size" in str(err.value) and "--force" in str(err.value)
    assert train(changed, data=tiny_data, force=True).status == "done"


def test_non_finite_loss_fails_with_step_and_keeps_checkpoint(tmp_path, tiny_data, monkeypatch):
    calls = {"n": 0}
    real = step_mod.lm_loss

    def poisoned(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1  # one call per training micro-batch
        loss = real(logits, targets)
        return loss * math.nan if calls["n"] > 15 else loss

    monkeypatch.setattr(step_mod, "lm_loss", poisoned)
    cfg = tiny_config(tmp_path / "run")
    out = train(cfg, data=tiny_data)
    assert out.status == "failed"
    assert out.failed_step == 16  # 15 good steps
    assert "non-finite loss" in out.reason and "at step 16" in out.reason
    assert out.last_checkpoint == 10 and out.steps == 10
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == "failed" and saved["failed_step"] == 16
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000010.pt"]


def test_divergence_before_any_checkpoint_says_so(tmp_path, tiny_data, monkeypatch):
    real = step_mod.lm_loss
    monkeypatch.setattr(step_mod, "lm_loss", lambda lg, tg: real(lg, tg) * math.nan)
    with log_lines() as lines:
        out = train(tiny_config(tmp_path / "run"), data=tiny_data)
    assert (out.status, out.failed_step, out.last_checkpoint, out.steps) == ("failed", 1, None, 0)
    assert any("no checkpoint of this run precedes it" in line for line in lines), lines
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )
    with log_lines() as lines:  # the re-run says it starts over (and fails the same way)
        train(tiny_config(tmp_path / "run"), data=tiny_data)
    assert any("no checkpoint was kept: starting over" in line for line in lines), lines


def test_a_corpus_that_matches_no_file_leaves_no_run_directory(tmp_path: Path):
    cfg = tiny_config(tmp_path / "runs" / "x")
    cfg.data.corpus = [str(tmp_path / "missing" / "*.txt")]
    with pytest.raises(UserError, match="data.corpus: .* matches no file"):
        train(cfg)
    assert not (tmp_path / "runs").exists()


def test_config_errors_name_the_key(tmp_path: Path, tiny_data):
    with pytest.raises(ConfigError, match="train.tokens"):
        train(tiny_config(tmp_path / "a", tokens=100), data=tiny_data)
    with pytest.raises(ConfigError, match="train.tokens: 1e.300 is .* steps.*exponent"):
        train(tiny_config(tmp_path / "a", tokens=1e300), data=tiny_data)
    with pytest.raises(ConfigError, match="train.noise_scale"):
        train(tiny_config(tmp_path / "b", noise_scale=True), data=tiny_data)


def test_cli_reports_bad_config_key(tmp_path: Path, capsys):
    from moescale.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  schedule: cosine\n")
    assert main(["train", str(cfg), "--set", "train.schedule=linear"]) == 2
    assert "train.schedule" in capsys.readouterr().err


def test_cli_exit_code_follows_status(tmp_path: Path, monkeypatch):
    from moescale.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train:\n  out_dir: {tmp_path / 'run'}\n")
    for status, code in (("done", 0), ("failed", 1)):
        result = SimpleNamespace(status=status)
        monkeypatch.setattr(trainer_mod, "train", lambda *a, r=result, **k: r)
        assert main(["train", str(cfg)]) == code


def test_summary_records_uncertainty_bytes_and_every_convention(tmp_path: Path, tiny_data):
    import numpy as np

    from moescale.train.trainer import ArrayData

    from .conftest import VOCAB

    token_bytes = np.random.default_rng(0).integers(1, 6, VOCAB)
    data = ArrayData(tiny_data.train_tokens, tiny_data.val_tokens, token_bytes, "abc123")
    s = train(tiny_config(tmp_path / "run", moe=True, tokens=20 * 8 * 32), data=data)
    assert s.val_loss_se is not None and 0 < s.val_loss_se < 0.5
    assert s.eval_tokens == 512 and s.tokenizer_sha256 == "abc123"
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert evals[-1]["val_loss_se"] == s.val_loss_se
    # bits per byte = total nats / ln 2 / bytes of the scored target tokens
    from moescale.data import val_batches

    scored = np.concatenate([y.numpy().ravel() for _, y in val_batches(
        tiny_data.val_tokens, 32, 512, 8)])  # fmt: skip
    want = s.val_loss * len(scored) / math.log(2) / token_bytes[scored].sum()
    assert s.val_bpb == pytest.approx(want, rel=1e-9)
    assert s.params_total_no_router == s.params_total - s.params_router
    assert s.params_active_no_router == s.params_active - s.params_router
    assert s.flops_routing_aware == pytest.approx(s.flops_per_token_routing_aware * s.tokens)


def test_second_process_on_the_same_run_dir_is_refused(tmp_path: Path, tiny_data):
    run = tmp_path / "run"
    hold = ("import sys, time; from moescale.run import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"being trained by process {proc.pid}"):
            train(tiny_config(run, tokens=5 * 8 * 32), data=tiny_data)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert train(tiny_config(run, tokens=5 * 8 * 32), data=tiny_data).status == "done"


def test_missing_cuda_fails_before_the_data_step(tmp_path: Path, monkeypatch):
    import moescale.data

    def no_data(*args, **kwargs):
        raise AssertionError("the data step ran before the device was checked")

    monkeypatch.setattr(moescale.data, "prepare_data", no_data)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device: 'cuda' was asked for"):
        train(tiny_config(tmp_path / "run", device="cuda"))
    assert not (tmp_path / "run").exists()


def test_run_dir_holds_the_tokenizer(tmp_path: Path, tiny_data):
    from moescale.train.trainer import ArrayData

    tok = tmp_path / "cache" / "tokenizer.json"
    tok.parent.mkdir()
    tok.write_text('{"model": "bpe"}')
    data = ArrayData(tiny_data.train_tokens, tiny_data.val_tokens, tokenizer_path=tok)
    train(tiny_config(tmp_path / "run", tokens=3 * 8 * 32), data=data)
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == tok.read_bytes()
    assert not list((tmp_path / "run").glob(".tokenizer.json.tmp-*"))
