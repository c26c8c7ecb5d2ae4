"""Typed configs, loaded from YAML and validated up front.

Every config is a dataclass; `load_config` turns a YAML mapping into them, rejecting unknown keys
and bad values with a `ConfigError` that names the dotted key and what it accepts, so a typo fails
in the first second of a run instead of after an hour of training. Every problem is reported at
once, one line each (`moescale.validation` holds the value checks).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from moescale.errors import ConfigError
from moescale.validation import (
    ConfigErrors,
    check_config,
    validate_data,
    validate_model,
    validate_train,
)

RouterKind = Literal["softmax_after_topk", "softmax_before_topk", "sigmoid", "expert_choice"]
ExpertInitKind = Literal["forward_scale", "fan_in", "scaled_weights"]
CapacityPolicy = Literal["weight", "token_order"]
BalanceScope = Literal["step", "micro_batch"]
BackendKind = Literal["auto", "reference", "grouped", "grouped_mm", "loop"]
ScheduleKind = Literal["cosine", "wsd", "constant"]
DeviceKind = Literal["auto", "cpu", "cuda"]


@dataclass
class MoEConfig:
    experts: int = 8  # E: standard-size (d_ff) experts' worth of parameters
    granularity: int = 1  # G: each standard expert becomes G experts of hidden d_ff/G
    top_k: int = 2  # k in standard units: a token goes to k*G fine-grained experts
    shared_experts: int = 0  # always-on experts, standard-size units
    router: RouterKind = "softmax_after_topk"
    # renormalise the kept weights to sum to 1; None: yes for sigmoid (else the layer's output
    # grows with G), no for softmax_before_topk (Switch); softmax_after_topk sums to 1 anyway
    normalize_topk: bool | None = None
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    capacity_factor: float | None = None  # None: dropless (expert_choice: 1.0)
    capacity_policy: CapacityPolicy = "weight"  # over capacity, drop the lowest weights first
    balance_scope: BalanceScope = "step"  # load-balancing statistics over the optimizer step
    # forward_scale: experts' output x 1/(a kept slot's routing weight at init: k*G, or E*G for
    # unnormalised softmax probabilities) in the forward pass; fan_in: std from the
    # dense-equivalent fan-in; scaled_weights: down-projection std x k*G (see model/moe.py)
    expert_init: ExpertInitKind = "forward_scale"
    bias_update_rate: float = 0.0  # sigmoid router: aux-loss-free balancing step (0: off)
    every: int = 1  # every n-th block (counting from the last) is MoE; 1: all blocks
    backend: BackendKind = "auto"

    @property
    def routed_experts(self) -> int:
        return self.experts * self.granularity

    @property
    def active_experts(self) -> int:
        return self.top_k * self.granularity

    @property
    def renormalizes(self) -> bool:
        """Whether the kept routing weights are rescaled to sum to 1 (see normalize_topk)."""
        if self.normalize_topk is None:
            return self.router == "sigmoid"
        return self.normalize_topk

    def expert_hidden(self, d_ff: int) -> int:
        """Hidden size of one routed expert: each standard expert of hidden d_ff is split in G."""
        return d_ff // self.granularity


@dataclass
class ModelConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512  # SwiGLU hidden size of the dense FFN an MoE layer replaces
    vocab_size: int = 4096
    seq_len: int = 128
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    moe: MoEConfig | None = None  # None: dense model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def expert_hidden(self) -> int:
        """Hidden size of one routed expert: d_ff / G (d_ff for a dense model)."""
        return self.moe.expert_hidden(self.d_ff) if self.moe else self.d_ff

    def is_moe_layer(self, layer: int) -> bool:
        if self.moe is None:
            return False
        return (self.n_layers - 1 - layer) % self.moe.every == 0


@dataclass
class TrainConfig:
    tokens: int = 2_000_000  # training tokens (sequences * seq_len, rounded to whole steps)
    batch_size: int = 32  # sequences per optimizer step
    micro_batch_size: int | None = None  # sequences per forward pass; None: batch_size
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine and wsd decay to lr * min_lr_ratio
    schedule: ScheduleKind = "cosine"
    warmup_frac: float = 0.02
    # linear warmup over this many tokens (whole steps, >= 1 when > 0) instead of warmup_frac:
    # runs of different budgets then share one warmup (WSD decay branches need it)
    warmup_tokens: int | None = None
    decay_frac: float = 0.2  # wsd: fraction of steps spent in the final decay
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: no clipping
    seed: int = 0
    log_every: int = 10  # steps
    eval_every: int = 100  # steps; also at the end
    eval_tokens: int = 65_536  # held-out tokens per evaluation
    checkpoint_every: int = 100  # steps
    keep_checkpoints: int = 2
    out_dir: str | None = None  # None: runs/<config file stem>
    device: DeviceKind = "auto"
    threads: int = 0  # intra-op CPU threads; 0: chosen from the free cores (train/device.py)
    compile: bool = False
    noise_scale: bool = False  # estimate the gradient noise scale (needs accumulation > 1)
    noise_scale_window: int = 100  # steps the noise-scale estimate averages over
    # wsd: keep the checkpoint where a run of each of these budgets would start its decay
    branch_tokens: list[int] = field(default_factory=list)
    init_from: str | None = None  # a checkpoint file a fresh run starts from (a decay branch)


@dataclass
class DataConfig:
    corpus: str | list[str] = "bundled"  # "bundled" or paths / globs of .txt, .jsonl, .parquet
    text_field: str = "text"  # JSONL key holding the text
    text_column: str = "text"  # Parquet column holding the text
    val_fraction: float = 0.05  # share of the text held out (user files; see data/documents.py)
    cache_dir: str | None = None  # None: $MOESCALE_CACHE or ~/.cache/moescale


@dataclass
class ParallelConfig:
    """How the ranks that torchrun starts share the work (docs/distributed.md); a run without
    torchrun is one rank and ignores this section. Not part of a run's identity: a run may
    resume on a different number of ranks or a different split."""

    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    expert: int = 1  # P: split each MoE layer's E*G experts over groups of P ranks


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain mappings


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(tp: Any, value: Any, key: str, errors: ConfigErrors) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own error is the informative one
            return _coerce(arms[0], value, key, errors)
        for arg in arms:
            try:
                return _coerce(arg, value, key, errors)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (inner,) = typing.get_args(tp)
        return [_coerce(inner, v, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):  # YAML reads 2e6 as a string
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            v = float(value)
        elif isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                v = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(v):
            raise ConfigError(f"{key}: got {value!r}, expected a finite number.")
        return v
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _build(cls: type, data: dict[str, Any], prefix: str, errors: ConfigErrors) -> Any:
    """`cls` from `data`; a key that is unknown or fails to convert is recorded in `errors`
    (and left at its default, so the remaining keys are still checked)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            section = f" in {prefix}" if prefix else ""
            errors.add(where, f"unknown key '{where}'. Accepted keys{section}: {', '.join(names)}.")
    kwargs = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            try:
                kwargs[name] = _coerce(hints[name], data[name], key, errors)
            except ConfigError as exc:
                errors.add(key, str(exc), unbuilt=True)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Validation of values (types are checked while building; the checks are moescale.validation's)


def validate(cfg: Config) -> Config:
    """`cfg`, or one ConfigError listing every problem (one line each, naming key and fix)."""
    errors = ConfigErrors()
    check_config(cfg, errors)
    errors.raise_if_any()
    return cfg


# --------------------------------------------------------------------------------------------
# Loading, overrides, saving


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.lr=0.001.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty.")
    if not raw.strip():
        return key.split("."), None
    try:
        return key.split("."), yaml.safe_load(raw)
    except yaml.YAMLError as exc:  # the parser's own message spans lines and shows a caret
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(
            f"--set {text!r}: the value must be YAML, and {raw.strip()!r} is not ({problem}); "
            f"""to pass it as text, quote it: --set '{key}="{raw.strip()}"'."""
        ) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section.")
            node = node[part]
        node[path[-1]] = value
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated Config, or one ConfigError listing every unknown key and bad value."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping with sections model, train, data.")
    errors = ConfigErrors()
    cfg = _build(Config, data, "", errors)
    # a section that failed to build holds defaults in place of the bad values: its value
    # checks would report on values the user never wrote
    check_config(cfg, errors, skip=errors.sections())
    errors.raise_if_any()
    return cfg


class _UniqueKeys(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: YAML keeps the last one
    silently, so the other setting would be ignored without a word."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        inside = path / "config.yaml"
        hint = f" such as {str(inside)!r}" if inside.is_file() else ""
        raise ConfigError(f"config file {str(path)!r} is a directory; give a YAML file{hint}.")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8."
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror}).") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; write the keys you set (every other "
                          "one keeps its default; `{}` alone means all defaults)")  # fmt: skip
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping.")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config; errors name the file and key."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and {"ladder", "architectures"} & set(raw):
        keys = ", ".join(sorted({"ladder", "architectures"} & set(raw)))
        raise ConfigError(
            f"{path} is a study file (it has {keys}), not a run config: `moescale study {path} "
            "--dry-run` lists its runs with their parameters and FLOPs; a study that runs "
            "writes each run's config to <out_dir>/configs/."
        )
    data = apply_overrides(raw, overrides or [])
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if cfg.train.out_dir is None:
        cfg.train.out_dir = str(Path("runs") / Path(path).stem)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = [
    "Config",
    "ConfigErrors",
    "DataConfig",
    "ModelConfig",
    "MoEConfig",
    "ParallelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "read_yaml",
    "validate",
    "validate_data",
    "validate_model",
    "validate_train",
]
