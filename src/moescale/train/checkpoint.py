"""The run's checkpoints: what they hold, their format version, writing and restoring them.

`checkpoints/step_00000100.pt` is `torch.save` of a dict of tensors and plain Python values only
(model and optimizer state, the step, every RNG state, the trainer's own counters, the resolved
config), so it loads with `torch.load(weights_only=True)`: opening a checkpoint never runs code.
The data position needs no field: batch s of a run is a pure function of (seed, s).

The state is the full, unsharded one of the single-process model, whatever wrote it: the model's
`state_dict()` and the optimizer's state keyed by parameter name (the form of
`torch.distributed.checkpoint.state_dict.get_state_dict` with `full_state_dict=True`), so a
checkpoint of a run on N ranks (DDP, FSDP or expert shards) resumes on M ranks, one included
(moescale.train.distributed gathers it; format 2 keyed the optimizer state by index).

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

FORMAT = 3  # 1: unpickled in full; 2: weights_only; 3: optimizer state keyed by parameter name
READS = (2, 3)
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
    threads: int = 0  # intra-op threads of the process that saved it (CPU sums depend on them)


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
    if state.get("format") not in READS:
        raise ValueError(f"checkpoint format {state.get('format')}, this moescale reads {READS}")
    return state


def load_latest(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint that loads, or None; broken ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return step, load_checkpoint(path)
        except Exception as exc:  # truncated, corrupt, or from an incompatible version
            logger.warning("skipping checkpoint %s that does not load (%s)", path, f"{exc!s:.300}")
    return None


def _expert_shards(model: torch.nn.Module) -> list[Any]:
    """The model's expert-parallel layers (model/parallel.py); empty for a replicated model."""
    from moescale.model.parallel import ExpertParallelMoE

    return [m for m in model.modules() if isinstance(m, ExpertParallelMoE)]


def _sharded(model: torch.nn.Module) -> bool:
    """Whether this rank holds only part of the parameters (FSDP's DTensors, expert shards)."""
    return bool(_expert_shards(model)) or any(hasattr(p, "full_tensor") for p in model.parameters())


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in its own (index) order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's full state in the single-process form (module doc).
    Collective under torchrun when the model is sharded (FSDP and expert shards are gathered
    with torch.distributed.checkpoint.state_dict): every rank calls it; only rank 0's result is
    then complete. A replicated model (one process, DDP) needs no gathering, nor the 0.7 s
    import of that module in every run: its optimizer state is only re-keyed by name."""
    if not _sharded(model):
        sd, names = optimizer.state_dict(), _param_names(model, optimizer)
        optim_sd = {
            "state": {names[i]: v for i, v in sd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                             for g in sd["param_groups"]],
        }  # fmt: skip
        return model.state_dict(), optim_sd
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    shards = _expert_shards(model)
    distributed = dist.is_available() and dist.is_initialized()
    options = StateDictOptions(full_state_dict=True, cpu_offload=distributed and not shards)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    if shards:
        from moescale.model.parallel import to_canonical_state

        model_sd, optim_sd = to_canonical_state(model, model_sd, optim_sd, shards[0].group)
    return model_sd, optim_sd


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    model_sd: dict[str, Any],
    optim_sd: dict[str, Any],
) -> None:
    """Inverse of `full_state`, on every rank, each from the whole state (sharding it to this
    rank's part); a format-2 optimizer state (keyed by index) loads into a model whose
    parameters are those of the single-process one (one rank or DDP)."""
    by_index = any(isinstance(i, int) for g in optim_sd["param_groups"] for i in g["params"])
    if not _sharded(model):
        if not by_index:
            index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
            optim_sd = {
                "state": {index[n]: v for n, v in optim_sd["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                 for g in optim_sd["param_groups"]],
            }  # fmt: skip
        model.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
        return
    if by_index:
        raise ValueError("a format-2 checkpoint resumes on one rank or with DDP only")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if _expert_shards(model):
        from moescale.model.parallel import to_local_state

        model_sd, optim_sd = to_local_state(model, model_sd, optim_sd)
    set_state_dict(
        model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
        options=StateDictOptions(full_state_dict=True),
    )  # fmt: skip


def capture(
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    trainer: TrainerState,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Everything a resumed run needs to replay step+1... bit for bit. Collective under
    torchrun (see `full_state`)."""
    from moescale.train.device import rng_state

    model_sd, optim_sd = full_state(model, optimizer)
    return {
        "format": FORMAT,
        "step": step,
        "model": model_sd,
        "optimizer": optim_sd,
        "rng": rng_state(device),
        "trainer": dataclasses.asdict(trainer),
        "config": config,
    }


def restore(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    threads: int = 0,
) -> TrainerState:
    """Load a captured state into the model, the optimizer and the RNGs; return the trainer's
    counters, now on `threads`. Resuming replays the run bit for bit only on the thread count
    it had (a CPU sum's order follows the threads): another one is said, not refused."""
    from moescale.train.device import set_rng_state

    load_full_state(model, optimizer, state["model"], state["optimizer"])
    set_rng_state(state["rng"])
    saved = TrainerState(**state["trainer"])
    if threads and saved.threads and threads != saved.threads:
        logger.warning(f"train: continuing on {threads} threads a checkpoint saved on "
                       f"{saved.threads}: the losses follow the uninterrupted run's to float "
                       "rounding, not bit for bit (train.threads fixes the count)")  # fmt: skip
    return dataclasses.replace(saved, threads=threads or saved.threads)
