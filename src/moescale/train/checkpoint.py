"""The run's checkpoints: what they hold, their format version, writing and restoring them.

`checkpoints/step_00000100.pt` is `torch.save` of a dict of tensors and plain Python values only
(model and optimizer state, the step, every RNG state, the trainer's own counters, the resolved
config), so it loads with `torch.load(weights_only=True)`: opening a checkpoint never runs code.
The data position needs no field: batch s of a run is a pure function of (seed, s).

Files are written atomically (`moescale.atomic`): a process killed mid-write leaves only a
`.step_*.tmp-*` file, which nothing reads and the next save removes. Loading tries the newest
first and skips, with a warning, any that fails to load, so a damaged file costs at most
`train.checkpoint_every` steps.

Pruning keeps the newest `train.keep_checkpoints` and never deletes a protected step: the
branch points of `train.branch_tokens` (moescale.train.optim.branch_steps). Importing this
module does not import torch, so `checkpoint_path` serves torch-free callers (a study driver).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moescale.atomic import atomic_write

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FORMAT = 2  # 1: unpickled in full (numpy RNG arrays); 2: tensors and plain values only
CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")


@dataclass
class TrainerState:
    """The trainer's own counters that a resumed run continues from."""

    val_loss: float | None = None
    val_loss_se: float | None = None
    val_bpb: float | None = None
    wall_time_s: float = 0.0  # this run directory's own training time
    noise: dict[str, Any] | None = None  # NoiseScaleEstimator.state_dict()
    start_step: int = 0  # the step the run directory started from (train.init_from), else 0


def checkpoint_path(directory: Path, step: int) -> Path:
    """The checkpoint of `step` in `directory` (a run's `checkpoints/`)."""
    return Path(directory) / f"step_{step:08d}.pt"


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


def save_checkpoint(
    directory: Path,
    step: int,
    state: dict[str, Any],
    keep: int,
    protected: frozenset[int] = frozenset(),
) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` ones, never
    one of the `protected` steps (nor counting them among the `keep`)."""
    import torch

    path = checkpoint_path(directory, step)
    atomic_write(path, lambda f: torch.save(state, f))
    for p in directory.glob(".step_*.tmp-*"):  # leftovers of a process killed mid-write
        p.unlink(missing_ok=True)
    prunable = [(s, p) for s, p in list_checkpoints(directory) if s not in protected]
    for _, old in prunable[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state dict, loaded without unpickling arbitrary objects."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            "not loadable with weights_only=True: damaged, not a moescale checkpoint, or written "
            f"by an older moescale (format < {FORMAT}); torch said: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise ValueError("not a moescale checkpoint")
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')}, this moescale reads {FORMAT}")
    return state


def load_latest(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint that loads, or None; broken ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return step, load_checkpoint(path)
        except Exception as exc:  # truncated, corrupt, or from an incompatible version
            logger.warning("skipping checkpoint %s that does not load (%s)", path, f"{exc!s:.300}")
    return None


def capture(
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    trainer: TrainerState,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Everything a resumed run needs to replay step+1... bit for bit."""
    from moescale.train.device import rng_state

    return {
        "format": FORMAT,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(device),
        "trainer": dataclasses.asdict(trainer),
        "config": config,
    }


def restore(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> TrainerState:
    """Load a captured state into the model, the optimizer and the RNGs; return the trainer's
    counters."""
    from moescale.train.device import set_rng_state

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return TrainerState(**state["trainer"])
