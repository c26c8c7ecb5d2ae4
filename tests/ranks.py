"""Running a test body on several gloo ranks (CPU processes on 127.0.0.1), bounded in time.

`run_ranks(body, world, out_dir)` spawns `world` processes; each joins one gloo group, runs
`body(rank, out_dir)` (a module-level function, so the spawned process can import it) and
writes what it returns, a JSON-able dict, to `out_dir/rank{r}.json`. A body that raises writes
its traceback under "crash" instead. The parent returns the ranks' dicts, or fails the test
with every rank's traceback when a rank crashed or the ranks are still running after
`deadline_s` (a broken collective: the group's own timeout is shorter, so a hang ends
either way).
"""

from __future__ import annotations

import json
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

Body = Callable[[int, Path], dict[str, Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, body: Body, world: int, port: int, out_dir: str, timeout_s: float) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout_s))  # fmt: skip
    result: dict[str, Any] = {}
    try:
        result = body(rank, Path(out_dir))
    except Exception:  # a broken collective: report it; the other ranks time out
        result = {"crash": traceback.format_exc()}
        raise
    finally:
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run_ranks(
    body: Body, world: int, out_dir: Path, deadline_s: float = 180.0, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Every rank's result (module doc)."""
    import torch.multiprocessing as mp

    args = (body, world, free_port(), str(out_dir), timeout_s)
    ctx = mp.start_processes(_entry, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    failure = None
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                failure = f"ranks still running after {deadline_s:.0f} s"
                break
    except Exception as exc:  # a rank raised: mp has terminated the others
        failure = f"a rank failed: {str(exc)[-3000:]}"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    results = []
    for r in range(world):
        path = Path(out_dir) / f"rank{r}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    crashes = [res["crash"] for res in results if "crash" in res]
    if failure or crashes:
        pytest.fail(f"{failure or 'a rank crashed'}\n" + "\n".join(crashes))
    return results
