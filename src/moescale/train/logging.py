"""Where a run's numbers go: metrics.jsonl, TensorBoard and a console line a human can read.

`metrics.jsonl` is append-only, one JSON object per line, flushed after each record, so a crash
loses at most the line being written. On resume it is cut back to the checkpoint's step
(rewritten atomically, keeping records with step <= that step, dropping a torn last line), so
the file never holds two records of the same kind for one step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_text


class MetricsLog:
    """Append-only JSON-lines file of training and eval records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = None

    def truncate(self, step: int) -> None:
        """Keep only complete records with step <= `step` (atomic rewrite)."""
        if not self.path.exists():
            return
        kept = [json.dumps(rec) for rec in read_metrics(self.path) if rec.get("step", 0) <= step]
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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line (process killed mid-write) is skipped."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class TensorBoard:
    """SummaryWriter in the run directory, created lazily; `purge_step` drops stale events."""

    def __init__(self, log_dir: Path, purge_step: int | None) -> None:
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        except Exception as exc:  # tensorboard missing or broken: the jsonl file is enough
            print(f"warning: no TensorBoard events ({exc!s:.100})")

    def scalars(self, step: int, values: dict[str, Any], prefix: str) -> None:
        if self._writer is None:
            return
        for key, v in values.items():
            if key in ("step", "tokens") or not isinstance(v, (int, float)):
                continue
            self._writer.add_scalar(f"{prefix}/{key}", v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def console_line(rec: dict[str, Any], total_steps: int, eta_s: float) -> str:
    """step 120/1000 | 1.97M tok | loss 3.412 | lr 2.9e-03 | gnorm 0.81 | 45.2k tok/s | ..."""
    width = len(str(total_steps))
    parts = [
        f"step {rec['step']:>{width}}/{total_steps}",
        f"{human(rec['tokens'])} tok",
        f"loss {rec['loss']:.4f}",
        f"lr {rec['lr']:.2e}",
        f"gnorm {rec['grad_norm']:.3f}",
        f"{human(rec['tokens_per_s'])} tok/s",
        f"MFU {100 * rec['mfu']:.1f}%",
    ]
    if rec.get("load_imbalance") is not None:
        parts.append(f"imb {rec['load_imbalance']:.2f}")
    if rec.get("noise_scale") is not None:
        parts.append(f"B_noise {human(rec['noise_scale'])} tok")
    parts.append(f"ETA {duration(eta_s)}")
    return " | ".join(parts)
