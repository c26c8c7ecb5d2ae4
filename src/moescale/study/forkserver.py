"""Start a study's runs by forking a process that has already imported torch and moescale.

A fresh `python -m moescale.cli train` spends about 3.5 s on the 2-core dev CPU before it trains:
importing torch (about a second) and torch._dynamo, which torch.optim imports when AdamW is built
(about 1.5 s). The quickstart's runs train for 5-30 s each, so a study of 57 of them lost about a
sixth of its wall time to start-up (benchmarks/study_workers.py, `2x1:process` against `2x1`).
Python's forkserver keeps one process with those modules imported; each run is forked from it
and shares its memory until written, so a run starts in tens of milliseconds.

A forked run is still its own process, as before: its own stdout.log, its own exit status,
SIGINT from Ctrl-C, and SIGTERM when the study dies (through the fork server, which exits with
the study). Its environment is set before it imports anything new. Two things differ from a
fresh interpreter, and neither reaches a run: variables read when a library loads (OMP_NUM_THREADS
for OpenMP: the run sets its threads through torch, from its `--threads`) and CUDA, which the
fork server must never initialise (it imports torch only). On a machine with a visible GPU,
`executor.start: auto` keeps fresh processes until the fork server has been tried there.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

PRELOAD = ["torch", "torch._dynamo", "moescale.train.trainer", "moescale.cli"]
_context = None


def available() -> bool:
    """Linux only: elsewhere fork is unsafe (macOS frameworks) or missing (Windows)."""
    return sys.platform.startswith("linux")


def _ctx():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def die_with_parent() -> None:
    """In a run's process: receive SIGTERM when its parent dies, even by SIGKILL (Linux), so no
    orphan keeps training (and holding its run's lock) after the study is gone. The parent is
    the study for a fresh interpreter, the fork server (which exits with the study) for a fork."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_cli(argv: list[str], env: dict[str, str], log: str, sigint_ignored: bool) -> None:
    """In the forked child: what `python -m moescale.cli ARGV > LOG 2>&1` with `env` would do."""
    # Ctrl-C as a fresh child of the study would have it: ignored where the study ignores it
    # (started with nohup or in a script's background), which the trainer then respects
    signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    die_with_parent()
    sys.argv = ["moescale", *argv]
    # daemonic in the study (which then stops it on exit, as a dying parent's SIGTERM would), but
    # free, like any process, to start its own (a ProcessPoolExecutor in a run's command)
    multiprocessing.current_process().daemon = False
    from moescale import cli

    rc = 1
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors: status 2, as a fresh process exits
        rc = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # a crash: its traceback in the log, status 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


class ForkedRun:
    """A forked run with the part of subprocess.Popen's interface the executor uses."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        self.proc = _ctx().Process(target=_run_cli, args=(argv, env, str(log), ignored),
                                   daemon=True)  # fmt: skip
        self.proc.start()
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.exitcode  # negative: killed by that signal, as Popen says it

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired(f"run {self.pid}", timeout or 0.0)
        return self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()
