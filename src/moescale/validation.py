"""Value checks of a config, collected so that one load reports every problem at once.

`moescale.config` builds the dataclasses (types, unknown keys) and calls these checks; each
problem becomes one line naming the dotted key and the fix, and `ConfigErrors.raise_if_any`
raises a single ConfigError holding them all: a config with three mistakes costs one edit, not
three runs. A check that depends on another value (n_heads must divide d_model) runs only when
that value is itself valid, so one mistake never reports as two. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moescale.errors import ConfigError

if TYPE_CHECKING:
    from moescale.config import Config, DataConfig, ModelConfig, MoEConfig, TrainConfig


@dataclass
class ConfigErrors:
    """The problems found so far, as (dotted key, one-line message) pairs."""

    items: list[tuple[str, str]] = field(default_factory=list)
    unbuilt: set[str] = field(default_factory=set)  # keys whose value could not be converted

    def add(self, key: str, message: str, unbuilt: bool = False) -> None:
        """Record a problem; `unbuilt`: the key's value is not in the built config."""
        self.items.append((key, message))
        if unbuilt:
            self.unbuilt.add(key)

    def positive(self, key: str, value: float | int) -> bool:
        """Record an error unless `value` > 0; whether it is."""
        if value <= 0:
            self.add(key, f"{key}: got {value}, must be positive.")
            return False
        return True

    def sections(self) -> set[str]:
        """Top-level sections holding a value that did not convert: the built section holds
        a default in its place, which its value checks must not report on."""
        return {key.split(".")[0] for key in self.unbuilt}

    def raise_if_any(self) -> None:
        """One ConfigError: the message itself for one problem, one line each for several."""
        lines = [message for _, message in self.items]
        if len(lines) == 1:
            raise ConfigError(lines[0])
        if lines:
            raise ConfigError(f"{len(lines)} errors:\n  " + "\n  ".join(lines))


def _run(check: object, value: object, errors: ConfigErrors | None) -> None:
    """Run `check(value, errs)`, raising at the end unless the caller collects the errors."""
    errs = errors if errors is not None else ConfigErrors()
    check(value, errs)  # type: ignore[operator]
    if errors is None:
        errs.raise_if_any()


def validate_model(m: ModelConfig, errors: ConfigErrors | None = None) -> None:
    _run(_check_model, m, errors)


def validate_train(t: TrainConfig, errors: ConfigErrors | None = None) -> None:
    _run(_check_train, t, errors)


def validate_data(d: DataConfig, errors: ConfigErrors | None = None) -> None:
    _run(_check_data, d, errors)


def _check_model(m: ModelConfig, err: ConfigErrors) -> None:
    shape = ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "seq_len")
    ok = [err.positive(f"model.{name}", getattr(m, name)) for name in shape]
    for name in ("init_std", "rope_theta", "norm_eps"):
        err.positive(f"model.{name}", getattr(m, name))
    if ok[0] and ok[2] and m.d_model % m.n_heads:
        err.add(
            "model.n_heads",
            f"model.n_heads: {m.n_heads} does not divide model.d_model = {m.d_model}; "
            "choose n_heads among the divisors of d_model.",
        )
    elif ok[0] and ok[2] and m.head_dim % 2:
        err.add(
            "model.n_heads",
            f"model.n_heads: head size d_model / n_heads = {m.head_dim} must be even for RoPE.",
        )
    if m.vocab_size > 2**32:
        err.add("model.vocab_size", "model.vocab_size: at most 2**32 tokens are supported.")
    if m.moe is not None:
        _check_moe(m.moe, m.d_ff, err)


def _check_moe(e: MoEConfig, d_ff: int, err: ConfigErrors) -> None:
    ok = {
        n: err.positive(f"model.moe.{n}", getattr(e, n))
        for n in ("experts", "granularity", "top_k", "every")
    }
    if e.shared_experts < 0:
        err.add(
            "model.moe.shared_experts",
            f"model.moe.shared_experts: got {e.shared_experts}, must be >= 0.",
        )
    if ok["experts"] and ok["top_k"] and e.top_k > e.experts:
        err.add(
            "model.moe.top_k",
            f"model.moe.top_k: {e.top_k} is more than model.moe.experts = {e.experts}; "
            f"top_k must be between 1 and {e.experts}.",
        )
    if ok["granularity"] and d_ff > 0 and d_ff % e.granularity:
        divisors = [g for g in range(1, min(d_ff, 64) + 1) if d_ff % g == 0]
        err.add(
            "model.moe.granularity",
            f"model.moe.granularity: {e.granularity} does not divide model.d_ff = {d_ff}; "
            f"accepted values include {divisors}.",
        )
    if e.capacity_factor is not None:
        err.positive("model.moe.capacity_factor", e.capacity_factor)
    if e.aux_loss_coef < 0 or e.z_loss_coef < 0 or e.bias_update_rate < 0:
        err.add(
            "model.moe", "model.moe: aux_loss_coef, z_loss_coef and bias_update_rate must be >= 0."
        )
    if e.bias_update_rate > 0 and e.router != "sigmoid":
        err.add(
            "model.moe.bias_update_rate",
            "model.moe.bias_update_rate: aux-loss-free bias balancing needs router: sigmoid.",
        )
    if e.router == "softmax_after_topk" and e.active_experts == 1:
        err.add(
            "model.moe.router",
            "model.moe.router: softmax_after_topk with one expert per token (top_k x "
            "granularity = 1) gives that expert weight 1 always, so the router gets no "
            "gradient from the language-model loss. Use router: softmax_before_topk (the "
            "Switch Transformer top-1 recipe) or route each token to at least 2 experts.",
        )
    if e.normalize_topk is None:
        e.normalize_topk = e.router == "sigmoid"


def _check_train(t: TrainConfig, err: ConfigErrors) -> None:
    for name in (
        "tokens",
        "batch_size",
        "lr",
        "log_every",
        "eval_every",
        "eval_tokens",
        "checkpoint_every",
        "noise_scale_window",
        "keep_checkpoints",
    ):
        err.positive(f"train.{name}", getattr(t, name))
    if t.micro_batch_size is not None:
        ok = err.positive("train.micro_batch_size", t.micro_batch_size)
        if ok and t.batch_size > 0 and t.batch_size % t.micro_batch_size:
            err.add(
                "train.micro_batch_size",
                f"train.micro_batch_size: {t.micro_batch_size} does not divide "
                f"train.batch_size = {t.batch_size}; pick a divisor of the batch size.",
            )
    for name in ("warmup_frac", "decay_frac", "min_lr_ratio"):
        v = getattr(t, name)
        if not 0.0 <= v <= 1.0:
            err.add(f"train.{name}", f"train.{name}: got {v}, must be between 0 and 1.")
    if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1):
        err.add("train.beta1", "train.beta1 / train.beta2: must be in [0, 1).")
    err.positive("train.eps", t.eps)
    if t.weight_decay < 0 or t.grad_clip < 0:
        err.add("train.weight_decay", "train.weight_decay / train.grad_clip: must be >= 0.")
    if t.threads < 0:
        err.add("train.threads", f"train.threads: got {t.threads}, must be >= 0 (0: automatic).")
    if t.seed < 0:
        err.add("train.seed", f"train.seed: got {t.seed}, must be >= 0.")
    _check_wsd_branches(t, err)


def _check_wsd_branches(t: TrainConfig, err: ConfigErrors) -> None:
    """warmup_tokens, branch_tokens and init_from (see moescale.train.branch)."""
    if t.warmup_tokens is not None and not 0 <= t.warmup_tokens < t.tokens:
        err.add(
            "train.warmup_tokens",
            f"train.warmup_tokens: got {t.warmup_tokens}, must be >= 0 and less than "
            f"train.tokens = {t.tokens}; null warms up over train.warmup_frac of the steps.",
        )
    if t.branch_tokens and (t.schedule != "wsd" or t.warmup_tokens is None):
        err.add(
            "train.branch_tokens",
            "train.branch_tokens: decay branches need train.schedule: wsd and "
            "train.warmup_tokens set (so that every budget shares this run's warmup and "
            f"stable phase); got schedule {t.schedule!r}, warmup_tokens {t.warmup_tokens}.",
        )
    bad = [d for d in t.branch_tokens if not 0 < d < t.tokens]
    if bad:
        err.add(
            "train.branch_tokens",
            f"train.branch_tokens: {bad} not between 0 and train.tokens = {t.tokens}; a "
            "branch's budget must be smaller than the trunk's.",
        )
    if len(set(t.branch_tokens)) < len(t.branch_tokens):
        err.add(
            "train.branch_tokens",
            f"train.branch_tokens: {t.branch_tokens} repeats a value; list each budget once.",
        )
    if t.init_from is not None and not t.init_from.strip():
        err.add("train.init_from", "train.init_from: empty; give a checkpoint file or null.")


def _check_data(d: DataConfig, err: ConfigErrors) -> None:
    if not 0.0 < d.val_fraction < 1.0:
        err.add(
            "data.val_fraction",
            f"data.val_fraction: got {d.val_fraction}, must be between 0 and 1.",
        )
    if isinstance(d.corpus, list) and not d.corpus:
        err.add("data.corpus", "data.corpus: the list of files is empty; give paths or 'bundled'.")


def check_config(
    cfg: Config, err: ConfigErrors, skip: set[str] | frozenset[str] = frozenset()
) -> None:
    """Every section's checks (but those in `skip`, whose values failed to build), then the
    checks that span sections."""
    if "model" not in skip:
        _check_model(cfg.model, err)
    if "train" not in skip:
        _check_train(cfg.train, err)
    if "data" not in skip:
        _check_data(cfg.data, err)
    if "parallel" not in skip and not ({"model", "train"} & set(skip)):
        _check_parallel(cfg, err)
    if not ({"model", "train"} & set(skip)) and not any(
        key.startswith(("model.", "train.")) for key, _ in err.items
    ):
        _check_branch_steps(cfg, err)


def _check_parallel(cfg: Config, err: ConfigErrors) -> None:
    """The split must fit the model; the world size is checked when the ranks start."""
    par, moe = cfg.parallel, cfg.model.moe
    if not err.positive("parallel.expert", par.expert) or par.expert == 1:
        if par.fsdp and cfg.train.noise_scale:
            err.add("parallel.fsdp", "parallel.fsdp: the noise scale needs each rank's own "
                    "gradient, which FSDP never holds; use DDP (parallel.fsdp: false) or set "
                    "train.noise_scale: false.")  # fmt: skip
        return
    if moe is None:
        err.add("parallel.expert", f"parallel.expert: {par.expert} needs an MoE model "
                "(model.moe); a dense model has no experts to split. Set it to 1.")  # fmt: skip
    elif (moe.experts * moe.granularity) % par.expert:
        n = moe.experts * moe.granularity
        err.add("parallel.expert", f"parallel.expert: {par.expert} ranks do not split the "
                f"{n} experts (E*G) of each layer evenly; choose a divisor of {n}.")  # fmt: skip
    if par.fsdp:
        err.add("parallel.fsdp", "parallel.fsdp: not supported together with expert "
                "parallelism (parallel.expert > 1) yet; choose one.")  # fmt: skip
    if cfg.train.noise_scale:
        err.add("train.noise_scale", "train.noise_scale: not available with expert "
                "parallelism: a rank's expert gradients hold other ranks' tokens; set "
                "parallel.expert: 1 for noise-scale runs.")  # fmt: skip


def _check_branch_steps(cfg: Config, err: ConfigErrors) -> None:
    """Each branch's decay start must be a step of this run's stable phase."""
    from moescale.train.optim import decay_start_step

    t, seq = cfg.train, cfg.model.seq_len
    if not t.branch_tokens or t.tokens < t.batch_size * seq:
        return  # no branches, or a run too short to train (the trainer names the key)
    own = decay_start_step(t, seq)
    for d in t.branch_tokens:
        s = decay_start_step(t, seq, tokens=d)
        if not 1 <= s <= own:
            err.add(
                "train.branch_tokens",
                f"train.branch_tokens: the decay of a {d}-token run would start at step {s}, "
                f"outside this run's stable phase (steps 1..{own}); drop {d} or raise it.",
            )
