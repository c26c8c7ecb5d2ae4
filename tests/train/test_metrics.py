"""metrics.jsonl truncation on resume, and the console line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moescale.fmt import duration, human
from moescale.run import RunDirError, read_metrics
from moescale.train.metrics import MetricsLog, console_line


def test_truncate_keeps_steps_up_to_checkpoint_and_drops_torn_line(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(0, 8):
        log.write({"step": step, "loss": float(step)})
    log.write({"step": 5, "val_loss": 1.0})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 8, "lo')  # killed mid-line
    log.truncate(5)
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4, 5, 5]
    assert path.read_text().endswith("\n")
    log.write({"step": 6, "loss": 6.0})  # appending continues after the rewrite
    log.close()
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 6, "loss": 6.0}


def test_console_line_reads_at_a_glance():
    rec = {"step": 120, "tokens": 1_966_080, "loss": 3.41234, "lr": 2.9e-3, "grad_norm": 0.81,
           "tokens_per_s": 45_200.0, "mfu": 0.123, "load_imbalance": 1.31}  # fmt: skip
    line = console_line(rec, 1000, 192.0)
    assert line == (
        "step  120/1000 | 1.97M tok | loss 3.4123 | lr 2.90e-03 | gnorm 0.810 | 45.2k tok/s | "
        "MFU 12.3% | imb 1.31 | ETA 3m12s"
    )
    assert human(999) == "999" and duration(7300) == "2h01m"


def test_damaged_middle_line_is_an_error_naming_the_line(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(RunDirError, match="line 2"):
        read_metrics(path)
