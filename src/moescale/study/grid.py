"""The axes of a study expanded into runs: ladder x architectures x token budgets x seeds, the
hyperparameter axes, and the WSD trunk/branch structure (no torch).

With `branches: true` (the default) every model is trained once, with the warmup-stable-decay
schedule, to its largest budget; the stable phase keeps a checkpoint where a run of each smaller
budget would begin its decay, and each smaller budget is a short run that starts from that
checkpoint and decays (Hägele et al. 2024). All budgets of a model share one warmup, so a branch
is the very run a separate training to that budget would have been, minus the shared prefix.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moescale.config import config_from_dict
from moescale.errors import ConfigError
from moescale.fmt import human
from moescale.study.spec import (
    Arch,
    Run,
    _err,
    _list,
    _with,
    ladder_shapes,
    parse_arch,
    run_name,
    token_budgets,
)

logger = logging.getLogger(__name__)
HYPER_KEYS = {"batch_size", "lr", "sizes", "architectures", "tokens"}


def decay_start(config: Mapping[str, Any], tokens: int) -> int:
    """The step at which a WSD run of `config` trained to `tokens` begins its decay: the last
    step it shares with any longer run of the same warmup."""
    from moescale.train.optim import decay_start_step  # imports no torch

    cfg = config_from_dict(copy.deepcopy(dict(config)))
    return decay_start_step(cfg.train, cfg.model.seq_len, tokens)


def shared_warmup(config: Mapping[str, Any], budgets: list[int]) -> int:
    """Warmup tokens shared by every budget of a model: warmup_frac of the largest, but over
    before the smallest budget's decay would start (else the runs would not share a prefix)."""
    t = config.get("train", {})
    if t.get("warmup_tokens") is not None:
        return int(t["warmup_tokens"])
    frac = float(t.get("warmup_frac", 0.02))
    decay = float(t.get("decay_frac", 0.2))
    return int(min(frac * budgets[-1], 0.5 * (1 - decay) * budgets[0]))


def model_runs(
    arch: Arch, size: int, config: dict[str, Any], budgets: list[int], branches: bool,
    out_dir: Path, tag: str, hyper: str = "",
) -> list[Run]:  # fmt: skip
    """The runs of one model: a trunk and its branches, or one separate run per budget."""
    config = _with(config, {"train.warmup_tokens": shared_warmup(config, budgets)})
    if branches and config["train"].get("schedule") != "wsd":
        raise _err("branches", "need train.schedule: wsd in the base config (or branches: false)")

    def one(tokens: int, extra: dict[str, Any]) -> Run:
        cfg = _with(config, {"train.tokens": tokens, **extra})
        name = run_name(f"{tag}-{human(tokens)}", cfg)
        cfg = _with(cfg, {"train.out_dir": str(out_dir / "runs" / name)})
        return Run(name, cfg, arch.name, arch.variant, size, tokens, hyper=hyper)

    if not branches or len(budgets) == 1:
        return [one(d, {}) for d in budgets]
    trunk = one(budgets[-1], {"train.branch_tokens": budgets[:-1]})
    runs = [trunk]
    for d in budgets[:-1]:
        step = decay_start(trunk.config, d)
        ckpt = Path(trunk.config["train"]["out_dir"]) / "checkpoints" / f"step_{step:08d}.pt"
        branch = one(d, {"train.init_from": str(ckpt)})
        branch.trunk, branch.branch_step = trunk.name, step
        trunk.branches.append(branch.name)
        runs.append(branch)
    return runs


def grid_runs(data: Mapping[str, Any], base: dict[str, Any], out_dir: Path) -> list[Run]:
    """Every run of the ladder and hyperparameter axes."""
    shapes = ladder_shapes(data["ladder"], base.get("model", {}))
    archs = [parse_arch(a, i) for i, a in enumerate(data.get("architectures", ["dense"]))]
    if len({a.name for a in archs}) != len(archs):
        raise _err("architectures", "names must be distinct")
    seeds = data.get("seeds", [base.get("train", {}).get("seed", 0)])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise _err("seeds", f"expected a list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):  # one seed twice is one run, not two points
        raise _err("seeds", f"{seeds!r} repeats a seed; list each once")
    branches = bool(data.get("branches", True))
    if "tokens" not in data:
        raise _err("tokens", "missing: budgets: [...], per_param: [...] or isoflop: {flops: ...}")
    runs: list[Run] = []
    for seed in seeds:
        for arch in archs:
            for i, shape in enumerate(shapes):
                config = model_config(base, shape, arch, seed, f"ladder[{i}] {arch.name}")
                budgets = token_budgets(data["tokens"], config)
                tag = f"{arch.name}-L{shape.get('n_layers', i)}-d{shape.get('d_model', '')}"
                tag += f"-s{seed}" if len(seeds) > 1 else ""
                runs += model_runs(arch, i, config, budgets, branches, out_dir, tag)
    runs += hyper_runs(data.get("hyper"), base, shapes, archs, data["tokens"], out_dir)
    if len(archs) > 1:
        _warn_ablation_inits(runs)
    return runs


def _warn_ablation_inits(runs: list[Run]) -> None:
    """`fan_in` and `scaled_weights` expert inits make the layer's output scale or its update
    size depend on G (README, Initialisation): a comparison across architectures then measures
    the init too. Allowed, as an ablation, but never silently."""
    moe = {r.arch: r.config.get("model", {}).get("moe") or {} for r in runs}
    inits = {a: m.get("expert_init", "forward_scale") for a, m in moe.items() if m.get("experts")}
    odd = {a: i for a, i in inits.items() if i != "forward_scale"}
    if odd:
        logger.warning("architectures %s use expert_init %s: their output scale at init or their "
                       "update size depends on G, so the comparison measures the init as well as "
                       "the architecture (the default, forward_scale, does not)",
                       ", ".join(sorted(odd)), "/".join(sorted(set(odd.values()))))  # fmt: skip


def model_config(base: dict, shape: Mapping, arch: Arch, seed: int, where: str) -> dict:
    values = {f"model.{k}": v for k, v in shape.items()}
    values.update(arch.model_overrides())
    values["train.seed"] = seed
    config = _with(base, values)
    try:
        config_from_dict(copy.deepcopy(config))
    except ConfigError as exc:
        raise _err(where, str(exc)) from None
    return config


def micro_for(config: Mapping[str, Any], axis: str, batch: float) -> dict[str, Any]:
    """A batch size of the axis keeps the base's micro-batch when it can; one that the micro-batch
    does not divide, or that would leave the noise-scale estimator a single micro-batch, gets
    micro-batches of half the batch."""
    t = config.get("train", {})
    micro = t.get("micro_batch_size")
    if axis != "batch_size" or not micro:
        return {}
    if batch % micro or (t.get("noise_scale") and batch // micro < 2):
        return {"train.micro_batch_size": max(1, int(batch) // 2)}
    return {}


def hyper_runs(
    spec: Any, base: dict, shapes: list[dict], archs: list[Arch], tokens: Any, out_dir: Path
) -> list[Run]:
    """Batch-size and learning-rate axes: at the given ladder sizes (default the smallest), one
    model per value that differs from the base, trained to `tokens` (default: the largest
    budget); its training curve gives every smaller token count (Wang et al.'s method; see
    laws/hyper.py)."""
    if not spec:
        return []
    if not isinstance(spec, Mapping) or set(spec) - HYPER_KEYS:
        raise _err("hyper", f"expected a mapping with keys among {sorted(HYPER_KEYS)}")
    sizes = [int(s) for s in spec.get("sizes", [0])]
    if any(not 0 <= s < len(shapes) for s in sizes):
        raise _err("hyper.sizes", f"ladder indices must be in 0..{len(shapes) - 1}")
    names = spec.get("architectures", "all")
    chosen = archs if names == "all" else [a for a in archs if a.name in names]
    if not chosen:
        raise _err("hyper.architectures", f"none of {names} is among {[a.name for a in archs]}")
    runs = []
    for axis in ("batch_size", "lr"):
        values = _list(spec[axis], f"hyper.{axis}", int if axis == "batch_size" else float) \
            if axis in spec else []  # fmt: skip
        for arch in chosen:
            for i in sizes:
                config = model_config(base, shapes[i], arch, 0, f"hyper ladder[{i}]")
                budgets = token_budgets(tokens, config)
                config = _with(config, {"train.warmup_tokens": shared_warmup(config, budgets)})
                target = budgets[-1:]
                if "tokens" in spec:
                    target = token_budgets({"budgets": [spec["tokens"]]}, config)
                for v in values:
                    if v == config["train"].get(axis):
                        continue  # the ladder run already is this point
                    cfg = _with(config, {f"train.{axis}": v, **micro_for(config, axis, v)})
                    tag = f"{arch.name}-L{shapes[i].get('n_layers', i)}-{axis}{v:g}"
                    runs += model_runs(arch, i, cfg, target, False, out_dir, tag, axis)
    return runs
