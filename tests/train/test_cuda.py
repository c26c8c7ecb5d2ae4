"""The CUDA path (bf16 autocast, fused AdamW, torch.compile): runs only where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moescale.run import read_metrics
from moescale.train.trainer import train

from .conftest import log_lines, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("compile", [False, True])
def test_trains_and_resumes_on_cuda(tmp_path: Path, tiny_data, compile: bool):
    cfg = tiny_config(
        tmp_path / "run", moe=True, device="cuda", compile=compile, micro_batch_size=4,
        noise_scale=True, tokens=60 * 8 * 32, lr=1e-2,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt), log_lines(stop_at="step 25/"):
        train(cfg, data=tiny_data)
    with log_lines() as lines:
        out = train(cfg, data=tiny_data)
    assert any("resuming" in line for line in lines)
    assert out.status == "done" and out.steps == 60
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == list(range(1, 61))
    evals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert evals[-1] < 0.8 * evals[0]
    assert out.noise_scale is not None
