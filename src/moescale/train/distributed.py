"""Training on the ranks that torchrun starts: data parallelism (DDP, or FSDP2), expert
parallelism, and what the trainer must do differently when it is one rank of many.

`torchrun --nproc-per-node N -m moescale train CONFIG` starts N copies of the same command;
`World.from_env` reads who this one is, and `process_group` joins them (gloo on CPU, NCCL on
CUDA). Without torchrun (or with one rank) nothing here runs and training is exactly the
single-process path.

What every rank does alike: read the config and the data, build the model from the same seed,
take its own slice of each optimizer step's global batch (`train.batch_size` sequences: rank r
of W trains sequences [r*B/W, (r+1)*B/W) of `BatchSampler.batch(s - 1, B)`), and evaluate
the whole validation set. Because the losses are per-rank means over equal slices and the
gradients are averaged, W ranks optimise exactly what one process would (up to float rounding
in the sums); `tests/train/test_distributed.py` checks the loss trajectories agree.

What only rank 0 does: lock and check the run directory, write logs, metrics, TensorBoard
events, the summary and checkpoints. Checkpoints hold the full, unsharded state in the format a
single process writes (moescale.train.checkpoint), gathered with
`torch.distributed.checkpoint.state_dict` (and `model.parallel.to_canonical_state` for expert
shards), so a run saved on N ranks resumes on M, one included. DCP's sharded `dcp.save` is not
used: its metadata file loads with plain `pickle`, and a checkpoint must never run code when
opened.

The gradient noise scale comes for free (McCandlish et al. 2018, docs/science.md): a DDP
communication hook measures each rank's own gradient |g_rank|^2 (over B/W sequences) just
before the all-reduce produces the step's gradient (over B).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from moescale.config import Config
from moescale.errors import ConfigError, UserError
from moescale.train.rundir import micro_batch_size

logger = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # a rank that waits longer on a collective fails instead


@dataclass(frozen=True)
class World:
    """Who this process is among the ranks torchrun started (one rank without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env() -> World:
        env = os.environ
        size = int(env.get("WORLD_SIZE", "1") or 1)
        if size == 1:
            return World()
        return World(
            rank=int(env["RANK"]),
            size=size,
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        )


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the ranks torchrun started (a no-op for one rank); leave the group on exit. A
    group already initialised by the caller is used and left as it is."""
    world = World.from_env()
    if world.size == 1 or dist.is_initialized():
        yield world
        return
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, world: World) -> torch.device:
    """This rank's device: its own GPU (LOCAL_RANK) on CUDA."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" else device


def on_main(world: World, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 and give every rank its result; a UserError raised there is raised
    on every rank, with the same message, so no rank waits forever for one that gave up."""
    if world.size == 1:
        return fn()
    box: list[Any] = [None]
    if world.is_main:
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = ("error", type(exc).__name__, str(exc))
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        _, kind, message = box[0]
        raise (ConfigError if kind == "ConfigError" else UserError)(message)
    return box[0][1]


@contextlib.contextmanager
def quiet_unless_main(world: World) -> Iterator[None]:
    """Ranks other than 0 log warnings and errors only (tagged with their rank): N copies of
    every progress line would bury the one that matters."""
    if world.is_main:
        yield
        return
    log = logging.getLogger("moescale")
    level, handlers = log.level, list(log.handlers)
    tag = _RankTag(world.rank)
    log.setLevel(logging.WARNING)
    for h in handlers:  # a logger's own filters do not see its children's records
        h.addFilter(tag)
    try:
        yield
    finally:
        log.setLevel(level)
        for h in handlers:
            h.removeFilter(tag)


class _RankTag(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        tag = f"[rank {self.rank}] "
        if not str(record.msg).startswith(tag):  # one record may pass several handlers
            record.msg = tag + str(record.msg)
        return True


class Silent:
    """Stands in for the metrics log and TensorBoard on ranks other than 0."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def scalars(self, step: int, values: dict[str, Any], prefix: str) -> None:
        pass

    def truncate(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def prepare_on_ranks(cfg: Config, data: Any, world: World) -> Any:
    """The token data on every rank: rank 0 prepares it first (building and caching the
    tokenizer and shards), then the others read the cache; they must agree on the tokenizer."""
    from moescale.data import prepare_data

    if data is not None:
        return data
    mine: list[Any] = []

    def prepare() -> str | None:
        mine.append(prepare_data(cfg.data, cfg.model.vocab_size))
        return mine[0].tokenizer_sha256

    sha = on_main(world, prepare)
    if world.is_main:
        return mine[0]
    data = prepare_data(cfg.data, cfg.model.vocab_size)
    if data.tokenizer_sha256 != sha:
        raise UserError(
            f"rank {world.rank} built another tokenizer than rank 0 ({data.tokenizer_sha256} vs "
            f"{sha}): give every node the same data.cache_dir (a shared filesystem)."
        )
    return data


def load_latest_on_ranks(directory: Any, world: World) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint that loads, chosen by rank 0 and read by every rank from the run
    directory (which every node must see, as rank 0 writes it)."""
    from moescale.train import checkpoint

    if world.size == 1:
        return checkpoint.load_latest(directory)
    found: list[tuple[int, dict[str, Any]] | None] = []

    def choose() -> int | None:
        found.append(checkpoint.load_latest(directory))
        return found[0][0] if found[0] is not None else None

    step = on_main(world, choose)
    if world.is_main or step is None:
        return found[0] if found else None
    path = checkpoint.checkpoint_path(directory, step)
    try:
        return step, checkpoint.load_checkpoint(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"rank {world.rank} cannot read {path} ({exc}), which rank 0 resumes from: the run "
            "directory must be on a filesystem every node sees."
        ) from None


def check_split(cfg: Config, world: World) -> int:
    """Micro-batches each rank runs per optimizer step; a ConfigError when the global batch
    does not split evenly over the ranks and their micro-batches."""
    t, par = cfg.train, cfg.parallel
    micro = micro_batch_size(cfg, world.size)
    if world.size % par.expert:
        raise ConfigError(
            f"parallel.expert: {par.expert} does not divide the {world.size} ranks; choose a "
            "divisor of the world size (torchrun --nproc-per-node x nodes)."
        )
    if t.batch_size % (world.size * micro):
        raise ConfigError(
            f"train.batch_size: {t.batch_size} sequences do not split into {world.size} ranks x "
            f"micro-batches of {micro}; choose a multiple of {world.size * micro}, or set "
            "train.micro_batch_size to a divisor of batch_size / ranks."
        )
    return t.batch_size // (world.size * micro)


def local_slice(x: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's consecutive share of a global batch's sequences."""
    per = x.shape[0] // world.size
    return x[world.rank * per : (world.rank + 1) * per]


# ---------------------------------------------------------------------------------------------
# Gradient synchronisation: what train_step asks of data parallelism


@dataclass
class GradSync:
    """The single-process case: every method is a no-op, so `train_step` reads the same with
    or without ranks. `Replicated` is the data-parallel one."""

    size: int = 1
    rank: int = 0

    def micro(self, last: bool) -> contextlib.AbstractContextManager:
        """Around the backward of one micro-batch: gradients are exchanged on the last only."""
        return contextlib.nullcontext()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of `t` over the ranks."""
        return t

    def sum(self, ts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the ranks (expert loads, evaluation sums)."""
        return ts

    def finish(self) -> None:
        """After the last backward: complete the gradients the wrapper does not average."""

    def local_grad_sq(self) -> float | None:
        """Mean over ranks of |g_rank|^2 for this step (the noise scale's small batch)."""
        return None


@dataclass
class Replicated(GradSync):
    """Data parallelism: `wrapper` is the DDP module or the FSDP2-sharded model. Expert shards
    (`expert_params`) are outside DDP: after backward they are summed over `replica_group`
    (the ranks holding the same shard) and divided by the world size, because their gradient
    already holds every token that came to this rank (model/parallel.py)."""

    wrapper: Any = None
    fsdp: bool = False
    expert_params: list[torch.nn.Parameter] = field(default_factory=list)
    replica_group: Any = None
    replicas: int = 1
    hook_state: dict[str, Any] | None = None  # {"sq": tensor} filled by the DDP comm hook

    def micro(self, last: bool) -> contextlib.AbstractContextManager:
        if self.fsdp:
            self.wrapper.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if self.hook_state is not None and last:
            self.hook_state["sq"] = None
        return contextlib.nullcontext() if last else self.wrapper.no_sync()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / self.size

    def sum(self, ts: list[torch.Tensor]) -> list[torch.Tensor]:
        if not ts:
            return ts
        flat = torch.cat([t.reshape(-1) for t in ts]).clone()
        dist.all_reduce(flat)
        return list(flat.split([t.numel() for t in ts]))

    def finish(self) -> None:
        grads = [p.grad for p in self.expert_params if p.grad is not None]
        if not grads:
            return
        if self.replicas > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.replica_group)
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g))
        torch._foreach_div_(grads, float(self.size))

    def local_grad_sq(self) -> float | None:
        if self.hook_state is None or self.hook_state["sq"] is None:
            return None
        return float(self.mean(self.hook_state["sq"]))


def _sq_norm_then_allreduce(state, bucket):  # noqa: ANN001, ANN201 (DDP checks annotations)
    """DDP communication hook: add the bucket's local gradient |g|^2 (the noise scale's small
    batch, before any averaging), then all-reduce and average as DDP does by default."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    sq = bucket.buffer().float().square().sum()
    state["sq"] = sq if state["sq"] is None else state["sq"] + sq
    return allreduce_hook(None, bucket)


def replicate(
    model: torch.nn.Module, cfg: Config, world: World, device: torch.device
) -> tuple[torch.nn.Module, GradSync]:
    """Wrap `model` for `world` (before its optimizer is built: FSDP and expert sharding
    replace parameters); returns the module to call forward on and its `GradSync`."""
    if world.size == 1:
        if cfg.parallel.expert > 1:
            raise ConfigError(
                f"parallel.expert: {cfg.parallel.expert} needs that many ranks; launch with "
                f"torchrun --nproc-per-node {cfg.parallel.expert}, or set it to 1."
            )
        return model, GradSync()
    if cfg.parallel.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model, Replicated(size=world.size, rank=world.rank, wrapper=model, fsdp=True)
    expert_params, replica_group, replicas = _shard_experts(model, cfg.parallel.expert, world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    names = {id(p): n for n, p in model.named_parameters()}
    DDP._set_params_and_buffers_to_ignore_for_model(model, [names[id(p)] for p in expert_params])
    ddp = DDP(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,  # router biases move identically on every rank
        gradient_as_bucket_view=True,
    )
    sync = Replicated(size=world.size, rank=world.rank, wrapper=ddp, expert_params=expert_params,
                      replica_group=replica_group, replicas=replicas)  # fmt: skip
    if cfg.train.noise_scale:
        sync.hook_state = {"sq": None}
        ddp.register_comm_hook(sync.hook_state, _sq_norm_then_allreduce)
    return ddp, sync


def _shard_experts(
    model: torch.nn.Module, p: int, world: World
) -> tuple[list[torch.nn.Parameter], Any, int]:
    """Split the experts over groups of `p` consecutive ranks; (expert shard parameters, the
    group of ranks holding the same shard, its size)."""
    if p == 1:
        return [], None, 1
    from moescale.model.parallel import shard_model

    ep_group = replica_group = None
    for start in range(0, world.size, p):  # every rank creates every group, in one order
        g = dist.new_group(list(range(start, start + p)))
        if start <= world.rank < start + p:
            ep_group = g
    for j in range(p):
        g = dist.new_group(list(range(j, world.size, p)))
        if world.rank % p == j:
            replica_group = g
    names = set(shard_model(model, ep_group))
    params = [q for n, q in model.named_parameters() if n in names]
    return params, replica_group, world.size // p
