"""A synthetic study from known laws, shared by the analysis and report tests.

Why synthetic: the tests must know the truth the analysis should recover. Losses follow
Chinchilla's law for dense runs and Krajewski et al.'s for MoE runs (N = N_total without
router, G in {1, 4}), with 0.2 % noise; parameter counts follow docs/conventions.md exactly, so
a model family can be read back from them. Curves are the law along each run's tokens; the
hyperparameter axes (batch size and LR at one size) have optima that move with the loss, MoE's
at a smaller batch and a larger LR (Wang et al. 2024); the noise scale falls with the loss, MoE's
lower. The largest dense size is a WSD trunk with branches, whose own curves start at their
branch step.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DENSE = {"E0": 1.8, "A": 150.0, "B": 300.0, "alpha": 0.35, "beta": 0.3}
KRAJ = {"c": 1.8, "a": 120.0, "g": 80.0, "b": 300.0, "alpha": 0.35, "beta": 0.3, "gamma": 0.5}
D_MODEL, SEQ, BATCH, LR = 128, 128, 32, 1e-3
LAYERS = (2, 4, 8, 16)
TOKENS = (20e6, 40e6, 80e6, 160e6)
STEPS_LOGGED = 60
NOISE = 0.002


def counts(n_layers: int, experts: float = 1, granularity: float = 1, top_k: float = 1,
           d: int = D_MODEL) -> dict[str, float]:  # fmt: skip
    """Parameter counts of docs/conventions.md: dense d_ff = 4d; MoE d_ff = 4d/k in every block."""
    moe = experts > 1
    d_ff = 4 * d / top_k if moe else 4 * d
    ffn = 3 * d * d_ff
    router = n_layers * d * experts * granularity if moe else 0.0
    base = n_layers * (4 * d * d + 2 * d) + d
    total = base + n_layers * (experts * ffn if moe else ffn) + router
    active = base + n_layers * (top_k * ffn if moe else ffn) + router
    return {"params_total": total, "params_active": active, "params_router": router,
            "params_total_no_router": total - router, "params_active_no_router": active - router,
            "params_embedding": d * 4096.0, "d_model": d, "n_layers": n_layers}  # fmt: skip


def dense_loss(n: Any, d: Any) -> Any:
    p = DENSE
    return p["E0"] + p["A"] / np.power(n, p["alpha"]) + p["B"] / np.power(d, p["beta"])


def moe_loss(n_total: Any, d: Any, g: float) -> Any:
    p = KRAJ
    return (p["c"] + (p["g"] / g ** p["gamma"] + p["a"]) / np.power(n_total, p["alpha"])
            + p["b"] / np.power(d, p["beta"]))  # fmt: skip


def _row(name: str, variant: str, layers: int, tokens: float, e: float, g: float, k: float,
         loss: float, **kw: Any) -> dict[str, Any]:  # fmt: skip
    c = counts(layers, e, g, k)
    fpt_simple = 6 * c["params_active"]
    fpt_routing = fpt_simple + 6 * c["params_router"]  # a stand-in that charges routing more
    fpt = 3 * (2 * (c["params_active"] - 2 * D_MODEL * layers - D_MODEL + D_MODEL * 4096)
               + 4 * SEQ * D_MODEL * layers)  # fmt: skip
    row = {
        "run": name, "status": "done", "arch": "dense" if variant == "dense" else "moe",
        "variant": variant, "experts": e, "granularity": g, "top_k": k, "seq_len": SEQ, **c,
        "flops_per_token": fpt, "flops_per_token_simple": fpt_simple,
        "flops_per_token_routing_aware": fpt_routing, "batch_size": BATCH,
        "batch_tokens": BATCH * SEQ, "lr": LR, "schedule": "constant", "tokens": tokens,
        "flops": fpt * tokens, "flops_simple": fpt_simple * tokens,
        "flops_routing_aware": fpt_routing * tokens, "flops_spent": fpt * tokens,
        "val_loss": loss, "val_loss_se": 0.003, "val_bpb": loss / math.log(2) / 4,
        "noise_scale": None, "noise_scale_loss": None, "seed": 0, "branch_of": "",
        "start_step": 0, "wall_time_s": 10.0, "tokenizer_sha256": "abc123", "hyper": "",
    }  # fmt: skip
    row.update(kw)
    return row


def _curve(row: dict[str, Any], fn: Any, rng: np.random.Generator, start_step: int = 0,
           noise_scale: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """Logged steps of a run: loss = fn(tokens) + noise; only steps after `start_step`."""
    bt = row["batch_tokens"]
    steps = np.unique(np.linspace(1, row["tokens"] / bt, STEPS_LOGGED).astype(int))
    out = []
    for s in steps[steps > start_step]:
        t = float(s * bt)
        loss = float(fn(t)) + rng.normal(0, 0.004)
        ns = noise_scale_of(loss, row["variant"]) if noise_scale else None
        out.append({"run": row["run"], "step": int(s), "tokens": t, "loss": loss,
                    "lr": row["lr"], "val_loss": None, "noise_scale": ns})  # fmt: skip
    return out


def noise_scale_of(loss: float, variant: str, rng: np.random.Generator | None = None) -> float:
    jitter = 1.0 if rng is None else math.exp(rng.normal(0, 0.05))
    return 2e5 * loss**-4.0 * (0.6 if variant != "dense" else 1.0) * jitter


def _penalty(t: Any, value: float, base: float, optimum0: float, power: float) -> Any:
    """Relative loss of a swept value against the base, with an optimum moving with tokens."""
    opt = optimum0 * (np.asarray(t) / 4e7) ** power
    return 1 + 0.03 * (np.log(value / opt) ** 2 - np.log(base / opt) ** 2)


def _hyper_runs(variant: str, e: float, rng: np.random.Generator, law: Any
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    rows, curves = [], []
    b_opt, lr_opt = (BATCH * 1.2, LR * 0.9) if variant == "dense" else (BATCH * 0.7, LR * 1.6)
    for axis, values, base, opt, power in (
        ("batch_size", (8, 16, 64, 128), BATCH, b_opt, 0.6),
        ("lr", (2.5e-4, 5e-4, 2e-3, 4e-3), LR, lr_opt, -0.4),
    ):  # fmt: skip
        for v in values:
            tokens = TOKENS[2]
            steps_tokens = {"batch_size": v, "batch_tokens": v * SEQ} if axis == "batch_size" else {
                "lr": v}  # fmt: skip
            fn = functools.partial(lambda t, v=v, base=base, opt=opt, power=power:
                                   law(t) * _penalty(t, v, base, opt, power))  # fmt: skip
            final = float(fn(tokens))
            row = _row(f"{variant}-{axis}-{v:g}", variant, 4, tokens, e, 1, 2 if e > 1 else 1,
                       final, hyper=axis, **steps_tokens)  # fmt: skip
            row["noise_scale"] = noise_scale_of(final, variant)
            row["noise_scale_loss"] = final
            rows.append(row)
            curves += _curve(row, fn, rng)
    return rows, curves


def synthetic_study(seed: int = 0, hyper: bool = True, two_e: bool = True,
                    noise_scale: bool = True) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """(results rows, curve rows) of the study in the module doc."""
    rng = np.random.default_rng(seed)
    results: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    designs = [("dense", 1, 1, 1, LAYERS, TOKENS), ("moe", 8, 1, 2, LAYERS[:3], TOKENS[1:]),
               ("fine-grained", 8, 4, 2, LAYERS[:3], TOKENS[1:])]  # fmt: skip
    if two_e:
        designs.append(("moe", 4, 1, 2, LAYERS[:3], TOKENS[1:]))
    for variant, e, g, k, layers, tokens in designs:
        for L in layers:
            c = counts(L, e, g, k)
            if variant == "dense":
                law = functools.partial(dense_loss, c["params_active"])
            else:
                law = functools.partial(moe_loss, c["params_total_no_router"], g=g)
            trunk = f"{variant}-E{e}-G{g}-L{L}-D{tokens[-1]:.0e}"
            for D in tokens:
                name = f"{variant}-E{e}-G{g}-L{L}-D{D:.0e}"
                loss = float(law(D)) * math.exp(rng.normal(0, NOISE))
                wsd = variant == "dense" and L == layers[-1] and D < tokens[-1]
                extra = {"branch_of": trunk, "start_step": int(0.8 * D / (BATCH * SEQ)),
                         "schedule": "wsd"} if wsd else {}  # fmt: skip
                row = _row(name, variant, L, D, e, g, k, loss, **extra)
                if noise_scale:
                    row["noise_scale_loss"] = float(law(D)) + 0.02
                    row["noise_scale"] = noise_scale_of(row["noise_scale_loss"], variant, rng)
                results.append(row)
                curves += _curve(row, law, rng, extra.get("start_step", 0), noise_scale)
    if hyper:
        for variant, e in (("dense", 1), ("moe", 8)):
            c = counts(4, e, 1, 2 if e > 1 else 1)
            law = (functools.partial(dense_loss, c["params_active"]) if variant == "dense" else
                   functools.partial(moe_loss, c["params_total_no_router"], g=1))  # fmt: skip
            rows, cur = _hyper_runs(variant, e, rng, law)
            results += rows
            curves += cur
    # two more seeds of one configuration, symmetric about the first (the mean stays), and a
    # failed run: neither may change the ladder's losses
    first = results[0]
    seeds = [dict(first, run=first["run"] + f"-s{s}", seed=s, val_loss=first["val_loss"] + d)
             for s, d in ((1, 0.05), (2, -0.05))]  # fmt: skip
    failed = dict(results[1], run="failed-run", status="failed", val_loss=None)
    return results + seeds + [failed], curves


def minimal_study() -> tuple[list[dict], list[dict]]:
    """One E, two G, three sizes, no hyperparameter axes, no noise scale."""
    return synthetic_study(seed=1, hyper=False, two_e=False, noise_scale=False)


BUDGETS = {"full": (1e18, 1e20, 1e22), "minimal": (1e18, 1e20)}


def study(kind: str) -> tuple[list[dict], list[dict]]:
    return synthetic_study() if kind == "full" else minimal_study()


@functools.lru_cache(maxsize=2)
def analysis(kind: str = "full") -> dict:
    """The analysis of a synthetic study ("full" or "minimal": two budgets), once per process
    (fits take a moment); bootstrap kept small."""
    from moescale.study.analyze import analyze

    results, curves = study(kind)
    return analyze(results, curves, budgets=BUDGETS[kind], bootstrap=12, workers=1)


@functools.lru_cache(maxsize=2)
def report(kind: str = "full") -> Path:
    """The report of `analysis(kind)`, written once per process to a temporary folder."""
    from moescale.report import write_report

    out = Path(tempfile.mkdtemp(prefix=f"moescale-report-{kind}-"))
    atexit.register(shutil.rmtree, out, True)
    results, curves = study(kind)
    return write_report(out, results, curves, analysis(kind), title=f"Synthetic {kind} study",
                        meta={"seed": 0})  # fmt: skip
