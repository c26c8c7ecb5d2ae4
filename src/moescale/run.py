"""The run directory as one contract, readable without torch.

The trainer writes a run directory; the laws, the results table, the demo and the tests read it.
Everything they agree on lives here: the paths, what `summary.json` holds (`RunSummary`), the
keys of `metrics.jsonl` records (`Metric`), the results-table column names (`Col`), and the
config diff that decides whether a directory holds "the same run", and the lock that keeps two
processes from training one directory. A reader given a partial or corrupt directory raises
`RunDirError`, naming the file and what is wrong with it.

    run_dir/
      config.yaml      resolved config (written once; a different config is refused)
      summary.json     RunSummary: status, val_loss, every parameter and FLOP convention, ...
      metrics.jsonl    one JSON object per logged step; eval records carry val_loss
      train.log        the run's log lines (appended across resumes)
      checkpoints/     step_XXXXXXXX.pt, the newest `train.keep_checkpoints` (+ branch points)
      tokenizer.json   the tokenizer the run trained with (when it came from prepare_data)
      .lock            flock-ed by the training process; holds "PID HOST"
      events.out.tfevents.*   TensorBoard

Status: summary.json says `running` from the start of training; a reader sees `interrupted`
instead when no process holds `.lock` (the kernel drops an flock when its process dies, so on
one machine this is exact: a SIGKILL-ed or Ctrl-C-ed run reads `interrupted`, never `running`
forever).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_json
from moescale.errors import UserError

STATUSES = ("running", "done", "failed", "interrupted")
# keys that do not define the run: where it lives, its threads, the checkpoints it keeps, how
# its ranks share the work (a run may resume on another number of ranks)
RUN_INDEPENDENT = frozenset({"train.out_dir", "train.threads", "train.branch_tokens",
                             "parallel.fsdp", "parallel.expert"})  # fmt: skip


class Col:
    """Results-table columns (one row per evaluated point); `RunSummary` uses the same keys."""

    RUN = "run"
    ARCH = "arch"
    EXPERTS = "experts"
    GRANULARITY = "granularity"
    TOP_K = "top_k"
    PARAMS_TOTAL = "params_total"
    PARAMS_ACTIVE = "params_active"
    PARAMS_EMBEDDING = "params_embedding"
    PARAMS_ROUTER = "params_router"
    PARAMS_TOTAL_NO_ROUTER = "params_total_no_router"  # N_total of Krajewski et al. (2024)
    PARAMS_ACTIVE_NO_ROUTER = "params_active_no_router"
    TOKENS = "tokens"
    FLOPS = "flops"
    FLOPS_SIMPLE = "flops_simple"
    FLOPS_ROUTING_AWARE = "flops_routing_aware"
    BATCH_SIZE = "batch_size"
    LR = "lr"
    VAL_LOSS = "val_loss"
    VAL_LOSS_SE = "val_loss_se"
    VAL_BPB = "val_bpb"
    TOKENIZER = "tokenizer_sha256"


class Metric:
    """Keys of `metrics.jsonl` records. Training records carry LOSS; eval records VAL_LOSS."""

    STEP = "step"
    TOKENS = "tokens"
    LOSS = "loss"
    LR = "lr"
    GRAD_NORM = "grad_norm"
    TOKENS_PER_S = "tokens_per_s"
    MFU = "mfu"
    AUX_LOSS = "aux_loss"
    Z_LOSS = "z_loss"
    LOAD_IMBALANCE = "load_imbalance"
    DROPPED_FRAC = "dropped_frac"
    RANK_IMBALANCE = "rank_imbalance"  # expert parallelism: max/mean rows per rank (1: even)
    NOISE_SCALE = "noise_scale"  # B_simple over the last train.noise_scale_window steps
    NOISE_SCALE_LOSS = "noise_scale_loss"  # mean training loss over that window
    VAL_LOSS = "val_loss"  # mean next-token loss (nats) over the validation sample
    VAL_LOSS_SE = "val_loss_se"  # its standard error, windows as the sampling unit
    VAL_BPB = "val_bpb"  # bits per byte of the same text (tokenizer-independent)


class RunDirError(UserError):
    """A run directory (or one of its files) is missing, partial or corrupt."""


@dataclass(frozen=True)
class RunPaths:
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.dir / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def tokenizer(self) -> Path:
        return self.dir / "tokenizer.json"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"

    def event_files(self) -> list[Path]:
        return sorted(self.dir.glob("events.out.tfevents.*"))


@dataclass
class RunSummary:
    """What `summary.json` holds. Parameters in the conventions of docs/conventions.md; FLOPs
    per token and in total in three conventions (exact, 6·N_active, routing-aware)."""

    run: str
    status: str
    arch: str  # "dense" or "moe"
    experts: int  # E (1 for dense)
    granularity: int  # G (1 for dense)
    top_k: int  # k in standard-expert units (1 for dense)
    d_model: int
    n_layers: int
    seq_len: int
    params_total: int  # non-embedding, all experts, router included
    params_active: int  # non-embedding parameters one token uses, router included
    params_embedding: int
    params_router: int
    params_total_no_router: int  # N of Krajewski et al. (2024)'s law
    params_active_no_router: int
    flops_per_token: float  # exact, forward + backward
    flops_per_token_simple: float  # 6 * params_active
    flops_per_token_routing_aware: float  # Krajewski et al. (2024)
    batch_size: int  # sequences per optimizer step
    batch_tokens: int
    lr: float
    schedule: str
    steps_planned: int
    steps: int = 0  # optimizer steps done (of a failed run: up to its last good checkpoint)
    tokens: int = 0
    flops: float = 0.0
    flops_simple: float = 0.0
    flops_routing_aware: float = 0.0
    val_loss: float | None = None
    val_loss_se: float | None = None  # standard error of val_loss over the evaluated windows
    val_bpb: float | None = None  # bits per byte (None without a tokenizer, e.g. token arrays)
    eval_tokens: int = 0  # tokens the validation sample holds
    tokenizer_sha256: str | None = None  # the tokenizer the run used (runs compare only if equal)
    wall_time_s: float = 0.0  # this run directory's own training time, summed across resumes
    start_step: int = 0  # the step it started from: that of train.init_from's checkpoint, or 0
    init_from: str | None = None  # the checkpoint it continued (train.init_from)
    flops_spent: float = 0.0  # exact FLOPs this directory computed: (steps - start_step) steps
    noise_scale: float | None = None  # B_simple over the final train.noise_scale_window steps
    noise_scale_loss: float | None = None  # mean training loss over those steps
    noise_scale_unit: str = "tokens"
    out_dir: str = ""
    threads: int = 0  # intra-op threads the run used (CPU)
    peak_flops: float = 0.0  # the denominator of MFU
    peak_source: str = ""  # where peak_flops comes from (datasheet, quiet measurement, ...)
    ranks: int = 1  # processes that trained it last (torchrun's world size); MFU is per device
    failed_step: int | None = None  # the step at which a failed run stopped
    reason: str | None = None  # why it failed
    last_checkpoint: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "summary") -> RunSummary:
        """Validate keys and types; unknown keys (from a newer version) are ignored."""
        if not isinstance(data, Mapping):
            raise RunDirError(f"{source}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                required = f.default is dataclasses.MISSING
                if required:
                    raise RunDirError(f"{source}: key {f.name!r} is missing")
                continue
            kwargs[f.name] = _checked(hints[f.name], data[f.name], f"{source}: key {f.name!r}")
        if kwargs["status"] not in STATUSES:
            raise RunDirError(
                f"{source}: status {kwargs['status']!r} is not one of {', '.join(STATUSES)}"
            )
        return cls(**kwargs)

    def write(self, paths: RunPaths) -> None:
        atomic_write_json(paths.summary, self.to_dict())


def _checked(tp: Any, value: Any, where: str) -> Any:
    """`value` if it has type `tp` (ints accepted for floats), else a RunDirError."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise RunDirError(f"{where} holds {value!r}, expected {tp.__name__}")
    return float(value) if tp is float else value


def read_summary(run_dir: str | Path) -> RunSummary:
    """The summary of a run directory, or a RunDirError naming the file and the problem.

    A summary that says `running` while no process holds the run's lock reads `interrupted`:
    its process died (killed, Ctrl-C, machine reboot) and re-running it resumes."""
    path = RunPaths(Path(run_dir)).summary
    if not path.is_file():
        raise RunDirError(f"{path} does not exist: {Path(run_dir)} is not a run directory, or "
                          "its run never started (train it with `moescale train CONFIG`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"{path} is not readable JSON ({exc}); to train the run again, delete "
                          f"{path.parent} (a study retrains it) or train --force") from None
    summary = RunSummary.from_dict(data, str(path))
    if summary.status == "running" and lock_holder(run_dir) is None:
        summary.status = "interrupted"
    return summary


def read_summary_or_none(run_dir: str | Path) -> RunSummary | None:
    """The summary, or None when the directory holds none yet (a corrupt one still raises)."""
    if not RunPaths(Path(run_dir)).summary.exists():
        return None
    return read_summary(run_dir)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file, in order.

    A torn last line (the process was killed mid-write) is skipped; a bad line anywhere else
    means the file was damaged, and raises a RunDirError naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not readable ({exc})") from None
    out = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif i < len(lines) - 1:
            raise RunDirError(f"{path}, line {i + 1}: not a JSON object ({line[:60]!r})")
    return out


# --------------------------------------------------------------------------------------------
# The run lock: one training process per run directory


class RunLockedError(UserError):
    """Another process is training this run directory."""


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking, status stays as written
        return None
    return fcntl


def _lock_owner(path: Path) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; (None, "") while its holder has not written them."""
    try:
        parts = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None, ""
    pid = int(parts[0]) if parts and parts[0].isdigit() else None
    return pid, parts[1] if len(parts) > 1 else ""


class RunLock:
    """`with RunLock(run_dir):` holds an exclusive flock on `run_dir/.lock` (created if needed)
    and writes "PID HOST" into it; a RunLockedError names the holder when another process
    trains the directory.

    The kernel drops the lock when its process dies, however it dies, so a lock is never stale.
    The file itself is never deleted: unlinking it while a second process waits on the old
    inode would let a third lock a new file, and two processes would train one run. Acquiring
    retries for `retry_s`, because `lock_holder` probes hold a shared lock for microseconds."""

    def __init__(self, run_dir: str | Path, retry_s: float = 0.5) -> None:
        self.path = RunPaths(Path(run_dir)).lock
        self.retry_s = retry_s
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl = _fcntl()
        deadline = time.monotonic() + self.retry_s
        while fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunLockedError(self._held_message()) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def _held_message(self) -> str:
        pid, host = _lock_owner(self.path)
        who = (f"process {pid}" if pid is not None else "another process") + (
            f" on {host}" if host else "")  # fmt: skip
        return (f"{self.path.parent} is being trained by {who} (it holds {self.path}); wait for "
                "it to finish, stop it, or train into another train.out_dir.")  # fmt: skip

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)  # the pid of a finished process would mislead a reader
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(run_dir: str | Path) -> int | None:
    """The pid of the process training `run_dir`, or None when no process is.

    Probes with a shared non-blocking flock that it drops at once (it never keeps the lock).
    -1 means held by a process that has not yet written its pid (the first microseconds of a
    run), or a lock file this user cannot open. Also None where flock does not exist."""
    path = RunPaths(Path(run_dir)).lock
    fcntl = _fcntl()
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        for _ in range(50):
            pid, _host = _lock_owner(path)
            if pid is not None:
                return pid
            time.sleep(0.01)
        return -1
    finally:
        os.close(fd)  # closing drops the probe's shared lock, if it got one
    return None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the dotted keys of `--set` and of error messages."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: frozenset[str] = RUN_INDEPENDENT,
) -> list[str]:
    """'key: old -> new' for every dotted key whose value differs, except the keys that do not
    define the run (`ignore`; by default RUN_INDEPENDENT: where it lives, its threads, ...)."""
    a, b = flatten(saved), flatten(current)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in ignore and not _same(a.get(k), b.get(k))
    ]


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


__all__ = [
    "STATUSES",
    "Col",
    "Metric",
    "RunDirError",
    "RunLock",
    "RunLockedError",
    "RunPaths",
    "RunSummary",
    "config_diff",
    "flatten",
    "lock_holder",
    "read_metrics",
    "read_summary",
    "read_summary_or_none",
]
