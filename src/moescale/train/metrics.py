"""Where a run's numbers go: metrics.jsonl, TensorBoard, a console line a human can read, and
the clock behind its tokens/s and ETA.

(Reading a run's records back is `moescale.run.read_metrics`, which needs no torch.)

`metrics.jsonl` is append-only, one JSON object per line, flushed after each record, so a crash
loses at most the line being written. On resume it is cut back to the checkpoint's step
(rewritten atomically, keeping records with step <= that step, dropping a torn last line), so
the file never holds two records of the same kind for one step.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_text
from moescale.fmt import duration, human
from moescale.run import Metric, read_metrics

logger = logging.getLogger(__name__)


class MetricsLog:
    """Append-only JSON-lines file of training and eval records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = None

    def truncate(self, step: int) -> None:
        """Keep only complete records with step <= `step` (atomic rewrite)."""
        if not self.path.exists():
            return
        records = read_metrics(self.path)
        kept = [json.dumps(rec) for rec in records if rec.get(Metric.STEP, 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._f.write(json.dumps(record, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class TensorBoard:
    """SummaryWriter in the run directory, created lazily; `purge_step` drops stale events."""

    def __init__(self, log_dir: Path, purge_step: int | None) -> None:
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        except Exception as exc:  # tensorboard missing or broken: the jsonl file is enough
            logger.warning("no TensorBoard events (%s)", f"{exc!s:.100}")

    def scalars(self, step: int, values: dict[str, Any], prefix: str) -> None:
        if self._writer is None:
            return
        for key, v in values.items():
            if key in (Metric.STEP, Metric.TOKENS) or not isinstance(v, (int, float)):
                continue
            self._writer.add_scalar(f"{prefix}/{key}", v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def console_line(rec: dict[str, Any], total_steps: int, eta_s: float) -> str:
    """step 120/1000 | 1.97M tok | loss 3.412 | lr 2.9e-03 | gnorm 0.81 | 45.2k tok/s | ..."""
    m = Metric
    width = len(str(total_steps))
    parts = [
        f"step {rec[m.STEP]:>{width}}/{total_steps}",
        f"{human(rec[m.TOKENS])} tok",
        f"loss {rec[m.LOSS]:.4f}",
        f"lr {rec[m.LR]:.2e}",
        f"gnorm {rec[m.GRAD_NORM]:.3f}",
        f"{human(rec[m.TOKENS_PER_S])} tok/s",
        f"MFU {100 * rec[m.MFU]:.1f}%",
    ]
    if rec.get(m.LOAD_IMBALANCE) is not None:
        parts.append(f"imb {rec[m.LOAD_IMBALANCE]:.2f}")
    if rec.get(m.RANK_IMBALANCE) is not None:
        parts.append(f"rank imb {rec[m.RANK_IMBALANCE]:.2f}")
    if rec.get(m.NOISE_SCALE) is not None:
        parts.append(f"B_noise {human(rec[m.NOISE_SCALE])} tok")
    parts.append(f"ETA {duration(eta_s)}")
    return " | ".join(parts)


class Clock:
    """Tokens/s over the steps since the last log line (training time only: evaluation and
    checkpointing are paused out) and the ETA from the mean step time of this process."""

    def __init__(self, start_step: int) -> None:
        self.start_step = start_step
        self.t_log = self.t_loop = time.perf_counter()
        self.steps_since_log = 0

    def rate(self, tokens_per_step: int) -> tuple[float, float]:
        """(tokens/s since the last call, now), and start a new log interval."""
        now = time.perf_counter()
        tok_s = self.steps_since_log * tokens_per_step / max(now - self.t_log, 1e-9)
        self.t_log, self.steps_since_log = now, 0
        return tok_s, now

    def eta(self, step: int, steps: int, now: float) -> float:
        return (steps - step) * (now - self.t_loop) / (step - self.start_step)

    def exclude(self, seconds: float) -> None:
        self.t_log += seconds
