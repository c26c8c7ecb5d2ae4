"""A study: a base config plus axes, expanded into runs with stable names (no torch).

    name: quickstart
    base: {model: {...}, train: {...}, data: {...}}      # or a path to a config YAML
    ladder: {n_layers: [2, 3, 4], d_model_per_layer: 64}  # shape rule; params: [targets]; shapes
    architectures:
      - dense
      - {name: moe, experts: 8, top_k: 1, router: softmax_before_topk}
      - {name: fine-grained, experts: 8, top_k: 1, granularity: 4}   # 32 experts, top-4
      - {name: fg64, total_experts: 64, routed: 8}                   # the same, by counts
    tokens: {budgets: [2e5, 4e5]}            # or per_param: [...], or isoflop: {flops: [...]}
    branches: true                           # one WSD run per model, a decay branch per budget
    hyper: {batch_size: [8, 32], lr: [1e-3, 1e-2], sizes: [0]}
    seeds: [0]
    runs: [{name: extra, set: {train.lr: 1e-3}}]   # explicit runs, on top of or instead of axes

Every run's config is the base with the axis values written into it, so it is an ordinary
`moescale train` config; its name is a readable prefix plus a hash of that config (`run_name`),
stable across machines and re-runs. Architectures are matched the way the fine-grained paper
matches them: E standard experts of hidden d_ff split G ways keep total and active parameters,
so "8 experts top-1" and "64 experts top-8" are `{experts: 8, top_k: 1}` with G 1 and G 8.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moescale.accounting import count
from moescale.config import Config, apply_overrides, config_from_dict, read_yaml
from moescale.errors import ConfigError
from moescale.fmt import human
from moescale.run import RUN_INDEPENDENT, flatten

STUDY_KEYS = ("name", "out_dir", "base", "ladder", "architectures", "tokens", "branches",
              "hyper", "seeds", "runs", "executor", "report", "eval")  # fmt: skip
NOT_IN_NAME = RUN_INDEPENDENT | {"train.init_from", "train.branch_tokens", "train.out_dir"}


@dataclass(frozen=True)
class Arch:
    """One architecture of the study: dense, or MoE with E standard experts, top-k, G."""

    name: str
    experts: int = 0  # 0: dense
    top_k: int = 1
    granularity: int = 1
    router: str | None = None  # None: the base config's (model.moe.router)

    @property
    def variant(self) -> str:
        if not self.experts:
            return "dense"
        return "moe" if self.granularity == 1 else "fine-grained"

    def model_overrides(self) -> dict[str, Any]:
        if not self.experts:
            return {"model.moe": None}
        out = {"model.moe.experts": self.experts, "model.moe.top_k": self.top_k,
               "model.moe.granularity": self.granularity}  # fmt: skip
        if self.router:
            out["model.moe.router"] = self.router
        return out


@dataclass
class Run:
    """One run of the study: its config (a plain mapping, validated), where it goes, and what
    it waits for (a branch waits for its trunk's stable-phase checkpoint)."""

    name: str
    config: dict[str, Any]
    arch: str
    variant: str
    size: int  # index into the ladder (-1: an explicit run)
    tokens: int
    hyper: str = ""  # "", "batch_size" or "lr": the axis this run varies from the base
    trunk: str = ""  # name of the run whose checkpoint this branch starts from
    branch_step: int = 0  # the trunk's step it starts from
    branches: list[str] = field(default_factory=list)  # names of this trunk's branches

    def validated(self) -> Config:
        return config_from_dict(copy.deepcopy(self.config))


@dataclass
class Study:
    name: str
    out_dir: Path
    runs: list[Run]
    executor: dict[str, Any]
    report: dict[str, Any]
    eval: dict[str, Any] = field(default_factory=dict)  # {tasks: [...], limit: N}

    def eval_tasks(self) -> tuple[str, ...]:
        """lm-eval tasks every ladder run is evaluated on after training (none by default)."""
        tasks = self.eval.get("tasks", [])
        if isinstance(tasks, str):
            tasks = [tasks]
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise _err("eval.tasks", f"expected a list of lm-eval task names, got {tasks!r}")
        return tuple(tasks)

    def by_name(self) -> dict[str, Run]:
        return {r.name: r for r in self.runs}


def _err(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _list(value: Any, where: str, kind: type = float) -> list:
    if not isinstance(value, list) or not value:
        raise _err(where, f"expected a non-empty list, got {value!r}")
    out = []
    for i, v in enumerate(value):
        try:
            x = kind(float(v)) if kind is int else kind(v)
        except (TypeError, ValueError):
            raise _err(f"{where}[{i}]", f"got {v!r}, expected a number") from None
        if kind is int and float(v) != x or not 0 < x < math.inf:
            raise _err(f"{where}[{i}]", f"got {v!r}, expected a positive {kind.__name__}")
        out.append(x)
    return out


def parse_arch(item: Any, i: int) -> Arch:
    """`dense`, or {name, experts, top_k, granularity}, or {name, total_experts, routed, G}."""
    where = f"architectures[{i}]"
    if item == "dense":
        return Arch("dense")
    if not isinstance(item, Mapping) or "name" not in item:
        raise _err(where, "expected 'dense' or a mapping with name and experts, top_k[, "
                   "granularity] (or total_experts, routed[, granularity])")  # fmt: skip
    allowed = {"name", "experts", "top_k", "granularity", "total_experts", "routed", "router"}
    if unknown := set(item) - allowed:
        raise _err(where, f"unknown keys {sorted(unknown)}; accepted: {sorted(allowed)}")
    g = int(item.get("granularity", 1))
    router = item.get("router")
    if "total_experts" in item or "routed" in item:
        if "experts" in item or "top_k" in item:
            raise _err(where, "give experts/top_k (standard units) or total_experts/routed, "
                       "not both")  # fmt: skip
        total, routed = int(item.get("total_experts", 0)), int(item.get("routed", 0))
        if total % g or routed % g or not total or not routed:
            raise _err(where, f"total_experts {total} and routed {routed} must be positive "
                       f"multiples of granularity {g}")  # fmt: skip
        return Arch(str(item["name"]), total // g, routed // g, g, router)
    if item.get("experts") is None:
        return Arch(str(item["name"]))
    return Arch(str(item["name"]), int(item["experts"]), int(item.get("top_k", 1)), g, router)


def ladder_shapes(ladder: Any, base_model: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Model shapes, smallest first: explicit `shapes`, or the rule d_model = d_model_per_layer
    x n_layers (Krajewski et al.'s family uses 64), d_ff = ffn_ratio x d_model, heads of
    head_dim."""
    if not isinstance(ladder, Mapping):
        raise _err("ladder", "expected a mapping with n_layers (and the rule) or shapes")
    if "shapes" in ladder:
        shapes = ladder["shapes"]
        if not isinstance(shapes, list) or not all(isinstance(s, Mapping) for s in shapes):
            raise _err("ladder.shapes", "expected a list of mappings of model keys")
        return [dict(s) for s in shapes]
    allowed = {"n_layers", "params", "d_model_per_layer", "ffn_ratio", "head_dim"}
    if unknown := set(ladder) - allowed:
        raise _err("ladder", f"unknown keys {sorted(unknown)}; accepted: {sorted(allowed)} or "
                   "shapes")  # fmt: skip
    if ("n_layers" in ladder) == ("params" in ladder):
        raise _err("ladder", "give n_layers: [...] or params: [...] (target sizes), not both")
    per_layer = int(ladder.get("d_model_per_layer", 64))
    ratio = float(ladder.get("ffn_ratio", 4))
    head = int(ladder.get("head_dim", 32))

    def shape(n: int) -> dict[str, Any]:
        d = per_layer * n
        if d % head:
            raise _err("ladder.head_dim", f"{head} does not divide d_model {d} (n_layers {n})")
        return {"n_layers": n, "d_model": d, "d_ff": int(round(ratio * d)), "n_heads": d // head}

    if "params" in ladder:
        targets = _list(ladder["params"], "ladder.params")
        layers = sorted({layers_for(t, shape, base_model) for t in targets})
    else:
        layers = sorted(_list(ladder.get("n_layers"), "ladder.n_layers", int))
    return [shape(n) for n in layers]


def layers_for(target: float, shape: Any, base_model: Mapping[str, Any]) -> int:
    """The depth whose dense shape under the rule has the non-embedding parameter count
    nearest `target` (in log): a ladder by target size."""
    def params(n: int) -> float:
        model = {**dict(base_model), **shape(n), "moe": None}
        return count(config_from_dict({"model": model}).model).params_active

    best = min(range(1, 129), key=lambda n: abs(math.log(params(n) / target)))
    return best


def run_name(prefix: str, config: Mapping[str, Any]) -> str:
    """prefix + 8 hex of the config's hash (run-independent keys left out), so the same run
    gets the same name in every study and on every machine."""
    flat = {k: v for k, v in flatten(config).items() if k not in NOT_IN_NAME}
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:8]}"


def _with(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in values.items():
        if value is None and key == "model.moe":
            out.setdefault("model", {})["moe"] = None
            continue
        out = apply_overrides(out, [f"{key}={json.dumps(value)}"])
    return out


def token_budgets(spec: Any, config: Mapping[str, Any]) -> list[int]:
    """Token budgets of one model, rounded to whole optimizer steps (ascending, distinct)."""
    cfg = config_from_dict(copy.deepcopy(dict(config)))
    step = cfg.train.batch_size * cfg.model.seq_len
    if not isinstance(spec, Mapping) or len(set(spec) & {"budgets", "per_param", "isoflop"}) != 1:
        raise _err("tokens", "expected one of budgets: [...], per_param: [...] or isoflop: "
                   "{flops: [...], convention: exact|simple|routing_aware}")  # fmt: skip
    acct = count(cfg.model)
    if "budgets" in spec:
        raw = _list(spec["budgets"], "tokens.budgets")
    elif "per_param" in spec:
        raw = [r * acct.params_active for r in _list(spec["per_param"], "tokens.per_param")]
    else:
        iso = spec["isoflop"]
        conv = iso.get("convention", "exact") if isinstance(iso, Mapping) else None
        keys = {"exact": "flops_per_token", "simple": "flops_per_token_simple",
                "routing_aware": "flops_per_token_routing_aware"}  # fmt: skip
        if conv not in keys:
            raise _err("tokens.isoflop.convention", f"got {conv!r}; one of {sorted(keys)}")
        fpt = getattr(acct, keys[conv])
        raw = [c / fpt for c in _list(iso.get("flops"), "tokens.isoflop.flops")]
    steps = sorted({max(1, round(t / step)) for t in raw})
    return [s * step for s in steps]


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Read and expand a study file; every error names the key and the fix."""
    data = read_yaml(path)
    try:
        return expand(data, Path(path).stem, base_dir=Path(path).parent, overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


AXIS_FIX = {
    "ladder": "change the ladder instead (n_layers or params, d_model_per_layer, ffn_ratio, "
    "head_dim; or shapes: [...])",
    "architectures": "change the architectures entries instead (experts, top_k, granularity, "
    "router; or add an MoE entry)",
    "seeds": "change seeds: [...] instead",
    "tokens": "change tokens: instead (budgets, per_param or isoflop)",
}


def axis_keys(data: Mapping[str, Any]) -> dict[str, str]:
    """{config key: the axis that writes it into each of its runs}: a --set or base value of
    one of these keys would change none of them (the ladder's shapes, the MoE keys that every
    architecture sets, the seeds, the token budgets), so it is refused rather than silently
    ignored (and not validated against a base shape that no run has)."""
    if "ladder" not in data:
        return {}
    ladder = data["ladder"]
    shapes = ladder.get("shapes") if isinstance(ladder, Mapping) else None
    names = {"n_layers", "d_model", "d_ff", "n_heads"}
    if isinstance(shapes, list) and shapes:  # the keys every shape sets
        names = set.intersection(*(set(sh) if isinstance(sh, Mapping) else set() for sh in shapes))
    keys = {f"model.{k}": "ladder" for k in names}
    archs = [parse_arch(a, i) for i, a in enumerate(data.get("architectures", ["dense"]))]
    moe = [a for a in archs if a.experts]
    if not moe:  # every run is dense: model.moe is removed
        keys["model.moe"] = "architectures"
    for key in ("experts", "top_k", "granularity", "router"):
        if moe and all(getattr(a, key) is not None for a in moe):  # set by every MoE entry
            keys[f"model.moe.{key}"] = "architectures"
    if "seeds" in data:
        keys["train.seed"] = "seeds"
    keys["train.tokens"] = "tokens"
    return keys


def check_axis_keys(data: Mapping[str, Any], overrides: list[str] | None) -> None:
    """A ConfigError for a --set or inline base key that an axis overwrites (see `axis_keys`);
    a base read from a file is a whole training config, whose model shape the axes replace."""
    axes = axis_keys(data)
    given = {f"--set {k}": k for k in (o.split("=", 1)[0].strip() for o in overrides or [])}
    if isinstance(data.get("base"), Mapping):
        given.update({f"base.{k}": k for k, v in flatten(data["base"]).items() if v is not None})
    for where, key in given.items():
        for axis_key, axis in axes.items():
            if key == axis_key or axis_key.startswith(key + ".") or key.startswith(axis_key + "."):
                why = (f"every architecture is dense (no run has {axis_key})"
                       if axis_key == "model.moe" else f"the study's {axis} key sets "
                       f"{axis_key} in each of its runs")  # fmt: skip
                raise _err(where, f"{why}, so this value would change none of them; "
                           f"{AXIS_FIX[axis]}")  # fmt: skip


def _base(data: Mapping[str, Any], base_dir: Path, overrides: list[str] | None) -> dict:
    check_axis_keys(data, overrides)
    base = data.get("base", {})
    if isinstance(base, str):
        base = read_yaml(base_dir / base)
    if not isinstance(base, Mapping):
        raise _err("base", "expected a config mapping (model, train, data) or a path to one")
    base = apply_overrides(copy.deepcopy(dict(base)), overrides or [])
    try:
        config_from_dict(copy.deepcopy(base))
    except ConfigError as exc:
        raise _err("base", str(exc)) from None
    return base


def expand(
    data: Mapping[str, Any], default_name: str, base_dir: Path = Path("."),
    overrides: list[str] | None = None,
) -> Study:  # fmt: skip
    from moescale.study.grid import grid_runs

    if unknown := set(data) - set(STUDY_KEYS):
        run = {"model", "train"} & unknown and " (a run config: train it, or make it base:)"
        raise _err("study", f"unknown keys {sorted(unknown)}{run or ''}; accepted: "
                   f"{', '.join(STUDY_KEYS)}")  # fmt: skip
    name = str(data.get("name", default_name))
    base = _base(data, base_dir, overrides)
    out_dir = Path(str(data.get("out_dir", Path("runs") / name)))
    runs = grid_runs(data, base, out_dir) if "ladder" in data else []
    runs += explicit_runs(data.get("runs", []), base, out_dir)
    if not runs:
        raise _err("study", "no runs: give ladder + architectures + tokens, or runs: [...]")
    seen: dict[str, Run] = {}
    for r in runs:
        seen.setdefault(r.name, r)
    executor = data.get("executor", {}) or {}
    report = data.get("report", {}) or {}
    evaluation = data.get("eval", {}) or {}
    if not all(isinstance(m, Mapping) for m in (executor, report, evaluation)):
        raise _err("executor/report/eval", "expected mappings")
    if unknown := set(evaluation) - {"tasks", "limit"}:
        raise _err("eval", f"unknown keys {sorted(unknown)}; accepted: tasks, limit")
    if unknown := set(report) - {"budgets"}:
        raise _err("report", f"unknown keys {sorted(unknown)}; accepted: budgets")
    if "budgets" in report:  # checked now: the report is written after the whole study trained
        report = {"budgets": _list(report["budgets"], "report.budgets")}
    study = Study(name, out_dir, list(seen.values()), dict(executor), dict(report),
                  dict(evaluation))  # fmt: skip
    study.eval_tasks()  # validated now, not after the training
    return study


def explicit_runs(items: Any, base: Mapping[str, Any], out_dir: Path) -> list[Run]:
    if not isinstance(items, list):
        raise _err("runs", "expected a list of {name, set: {key: value}}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("set", {}), Mapping):
            raise _err(f"runs[{i}]", "expected {name: ..., set: {dotted.key: value, ...}}")
        config = _with(base, item.get("set", {}))
        try:
            cfg = config_from_dict(copy.deepcopy(config))
        except ConfigError as exc:
            raise _err(f"runs[{i}]", str(exc)) from None
        moe = cfg.model.moe
        arch = Arch(str(item.get("arch", "dense" if moe is None else "moe")),
                    moe.experts if moe else 0, moe.top_k if moe else 1,
                    moe.granularity if moe else 1)  # fmt: skip
        name = run_name(str(item.get("name", f"run{i}")), config)
        if twin := [j for j, r in enumerate(out) if r.name == name]:
            raise _err(f"runs[{i}]", f"the same run (name and config) as runs[{twin[0]}]")
        config = _with(config, {"train.out_dir": str(out_dir / "runs" / name)})
        out.append(Run(name, config, arch.name, arch.variant, -1, cfg.train.tokens))
    return out


def describe_tokens(tokens: list[int]) -> str:
    return ", ".join(human(t) for t in tokens)


def dump_runs(study: Study) -> str:
    """The expanded runs as YAML (what --dry-run can write for a reader or another tool)."""
    return yaml.safe_dump([{"name": r.name, "arch": r.arch, "tokens": r.tokens,
                            "trunk": r.trunk or None, "config": r.config} for r in study.runs],
                          sort_keys=False)  # fmt: skip


__all__ = ["Arch", "Run", "Study", "expand", "load_study", "run_name", "token_budgets",
           "ladder_shapes", "parse_arch"]  # fmt: skip
