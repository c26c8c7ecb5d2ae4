"""The run's checkpoints, written atomically (`moescale.atomic`).

A process killed mid-write leaves only a `.NAME.tmp-*` file, which nothing reads and the next save
removes.

Checkpoints are `checkpoints/step_00000100.pt` (torch.save of a dict: model, optimizer, step,
RNG states, trainer state). Loading tries the newest first and skips, with a warning, any that
fails to load, so a damaged file costs at most `checkpoint_every` steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints, oldest first; temporary files are ignored."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` ones."""
    import torch

    path = checkpoint_path(directory, step)
    atomic_write(path, lambda f: torch.save(state, f))
    for p in directory.glob(".step_*.tmp-*"):  # leftovers of a process killed mid-write
        p.unlink(missing_ok=True)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    # Our own files, holding numpy / python RNG states as well as tensors: full unpickling.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise ValueError("not a moescale checkpoint")
    return state


def load_latest(
    directory: Path, log: Callable[[str], None] = print
) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint that loads, or None; broken ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return step, load_checkpoint(path)
        except Exception as exc:  # truncated, corrupt, or from an incompatible version
            log(f"warning: skipping checkpoint {path} that does not load ({exc!s:.120})")
    return None
