"""Run directories -> the results table and the training curves (no torch).

    moescale collect DIR    # writes DIR/results.csv, results.parquet, curves.csv, curves.parquet

One row per finished run directory (an evaluated (N, D) point), with every parameter and FLOP
convention of its summary (docs/conventions.md), the study's labels when DIR holds a study
(`runs.json`: architecture name, variant, hyperparameter axis, trunk of a WSD branch), and
`flops_spent`, the FLOPs that directory itself computed (a branch starts from its trunk's
checkpoint, so it spent less than its point's compute). A directory that is not finished (running,
interrupted, failed) or that cannot be read is reported with its path and the reason, never
dropped silently and never half-read. Rows are sorted and files written atomically, so collecting
twice gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write, atomic_write_text
from moescale.config import read_yaml
from moescale.errors import UserError
from moescale.run import Metric, RunDirError, RunPaths, read_metrics, read_summary

MANIFEST = "runs.json"
CURVE_KEYS = (Metric.STEP, Metric.TOKENS, Metric.LOSS, Metric.LR, Metric.VAL_LOSS,
              Metric.NOISE_SCALE)  # fmt: skip
STUDY_COLUMNS = ("arch_name", "variant", "seed", "hyper", "branch_of", "start_step",
                 "flops_spent")  # fmt: skip


@dataclass
class Collected:
    rows: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    files: list[Path] = field(default_factory=list)


RUN_MARKERS = ("summary.json", "train.log")  # a directory holding either is a run's


def run_dirs(root: Path) -> list[Path]:
    """Directories under `root` that hold a run (summary.json or config.yaml + train.log)."""
    found = set()
    for marker in RUN_MARKERS:
        for p in root.rglob(marker):
            if "checkpoints" not in p.parts:
                found.add(p.parent)
    return sorted(found)


def _variant(s: Any) -> str:
    if s.arch == "dense":
        return "dense"
    return "moe" if s.granularity == 1 else "fine-grained"


def row_of(run_dir: Path, labels: dict[str, Any]) -> dict[str, Any]:
    """The table row of a finished run; RunDirError/UserError when it is not one."""
    s = read_summary(run_dir)
    if s.status != "done":
        where = f" at step {s.failed_step}" if s.failed_step is not None else f" at step {s.steps}"
        why = {
            "interrupted": "interrupted (its process died); re-run the study to resume it",
            "running": "still running",
            "failed": f"failed{where}: {s.reason}",
        }[s.status]
        raise RunDirError(why)
    if s.val_loss is None or not math.isfinite(s.val_loss):
        raise RunDirError(f"done but has no finite val_loss ({s.val_loss})")
    row = s.to_dict()
    cfg = read_yaml(RunPaths(run_dir).config) if RunPaths(run_dir).config.exists() else {}
    train = cfg.get("train", {}) if isinstance(cfg, dict) else {}
    start = int(row.get("start_step", 0) or 0)
    spent = row.get("flops_spent") or s.flops_per_token * (s.steps - start) * s.batch_tokens
    row.update(
        arch_name=labels.get("arch", s.arch), variant=labels.get("variant", _variant(s)),
        seed=int(train.get("seed", 0) or 0), hyper=labels.get("hyper", ""),
        branch_of=labels.get("trunk", ""), start_step=start,
        flops_spent=spent,
    )  # fmt: skip
    row["run"] = labels.get("name", run_dir.name)
    row.update(eval_columns(run_dir, s.steps))
    return row


def eval_columns(run_dir: Path, step: int) -> dict[str, float]:
    """`eval_<task>_<metric>` of the lm-eval results of the run's final checkpoint (eval.json,
    written by `moescale eval RUN --tasks ...`)."""
    from moescale.eval.results import read_eval  # no torch

    out = {}
    for entry in read_eval(run_dir).values():
        if entry.get("kind") != "task" or entry.get("step") != step:
            continue
        for metric, value in (entry.get("metrics") or {}).items():
            name = re.sub(r"[^0-9A-Za-z]+", "_", f"eval_{entry['task']}_{metric}").strip("_")
            out[name] = float(value)
    return out


def collect(root: str | Path, write: bool = True) -> Collected:
    """Read every run directory under `root`; write the tables into `root` when `write`."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"collect: {root} is not a directory")
    if any((root / marker).exists() for marker in RUN_MARKERS):
        raise UserError(f"{root} is one run's directory: give the directory that holds the "
                        f"runs (e.g. {root.parent}), or `moescale eval` for one run")  # fmt: skip
    found = run_dirs(root)
    if not found and not (root / MANIFEST).exists():  # a study whose runs all failed early
        raise UserError(f"{root} holds no run directory (one with {' or '.join(RUN_MARKERS)}): "
                        "give a study directory, or train runs into it first")  # fmt: skip
    manifest = _manifest(root)
    out = Collected([], [])
    for d in found:
        labels = manifest.get(d.name, {})
        if manifest and not labels:
            out.problems.append((str(d), "not a run of the study's current spec (runs.json): "
                                 "left out of the table; move it elsewhere to keep it"))
            continue
        try:
            row = row_of(d, labels)
            curve = [{"run": row["run"], **{k: r.get(k) for k in CURVE_KEYS}}
                     for r in read_metrics(RunPaths(d).metrics)]  # fmt: skip
        except (RunDirError, UserError, OSError, KeyError, TypeError, ValueError) as exc:
            out.problems.append((str(d), str(exc)))
            continue
        out.rows.append(row)
        out.curves.extend(curve)
    out.rows.sort(key=lambda r: r["run"])
    out.curves.sort(key=lambda r: (r["run"], r[Metric.STEP] or 0, r[Metric.VAL_LOSS] is not None))
    hashes = {r["tokenizer_sha256"] for r in out.rows if r.get("tokenizer_sha256")}
    if len(hashes) > 1:
        out.problems.append(
            (
                str(root),
                f"the runs used {len(hashes)} different tokenizers; "
                "their losses cannot be compared (collect one study at a time)",
            )
        )
    if write:
        out.files = write_tables(root, out)
    return out


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    path = root / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {r["name"]: r for r in data["runs"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is not a study manifest ({exc}); delete it and re-run the "
            "study to write it again"
        ) from None


def _csv_bytes(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else repr(r[k]) if isinstance(r.get(k), float)
                        else r[k]) for k in columns})  # fmt: skip
    return buf.getvalue().encode()


def _parquet(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows])

    def write(f: Any) -> None:
        pq.write_table(table, f)

    atomic_write(path, write)


def columns_of(rows: list[dict[str, Any]], first: tuple[str, ...]) -> list[str]:
    cols = list(first)
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_tables(root: Path, c: Collected) -> list[Path]:
    cols = columns_of(c.rows, ("run",) + STUDY_COLUMNS) if c.rows else ["run"]
    ccols = ["run", *CURVE_KEYS]
    files = [root / "results.csv", root / "results.parquet", root / "curves.csv",
             root / "curves.parquet"]  # fmt: skip
    atomic_write_text(files[0], _csv_bytes(c.rows, cols).decode())
    _parquet(files[1], c.rows, cols)
    atomic_write_text(files[2], _csv_bytes(c.curves, ccols).decode())
    _parquet(files[3], c.curves, ccols)
    return files


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """A CSV written by `collect`, numbers as numbers and empty cells as None."""
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _value(v: str) -> Any:
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v
