"""`RUN_DIR/eval.json`: every evaluation of a run, one entry per thing evaluated.

One JSON object whose keys say what was evaluated, so that evaluating something again replaces
its entry and evaluating something else adds one:

    text:<absolute path>|stride=<S>|step=<N>          moescale eval RUN --text FILE
    task:<lm-eval task>|fewshot=<k>|limit=<L>|step=<N> moescale eval RUN --tasks NAME

Each entry also holds those fields by name (`kind`, `step`, ...), the text's sha256 (a file
edited since shows as a different hash under the same key) and when it was written. The file is
rewritten atomically under a lock, so concurrent evaluations of one run keep each other's
entries. Torch-free: a results reader needs none of the model code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_json
from moescale.data.cache import file_lock
from moescale.run import RunDirError

EVAL_FILE = "eval.json"


def eval_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL_FILE


def text_key(path: str | Path, stride: int, step: int) -> str:
    return f"text:{Path(path).resolve()}|stride={stride}|step={step}"


def task_key(task: str, fewshot: int | None, limit: float | None, step: int) -> str:
    shots = "default" if fewshot is None else str(fewshot)
    return f"task:{task}|fewshot={shots}|limit={'all' if limit is None else limit}|step={step}"


def read_eval(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The entries of a run's eval.json ({} when it has none); a damaged file is a UserError."""
    path = eval_path(run_dir)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is not readable JSON ({exc}): move it away to start a new "
                          "one.") from None  # fmt: skip
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object of entries, got {type(data).__name__}")
    return data


def record_eval(run_dir: str | Path, entries: Mapping[str, Mapping[str, Any]]) -> Path:
    """Merge `entries` (key -> record) into the run's eval.json, atomically; returns its path."""
    path = eval_path(run_dir)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with file_lock(path.parent / f".{EVAL_FILE}.lock"):
        merged = read_eval(run_dir)
        for key, record in entries.items():
            merged[key] = {**_finite(dict(record)), "written": stamp}
        atomic_write_json(path, merged)
    return path


def _finite(o: Any) -> Any:
    """NaN and infinities become null: eval.json stays standard JSON."""
    if isinstance(o, float):
        return o if o == o and abs(o) != float("inf") else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o
