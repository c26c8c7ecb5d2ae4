"""Model families: what a planned model of a given size is, and what it costs per token.

Why: a law's N is one parameter count (N_active for most fits, N_total for krajewski), while a
training run pays FLOPs per *active* parameter, plus routing work that grows with G. Planning an
MoE law with C = 6·N·D and N = N_total charges every expert to every token and inverts the result
(docs/science.md, section 3). A family maps one size knob, the depth L_b, through a shape rule
d_model = aspect·L_b to N_total, N_active and FLOPs per token, with the counting of
`moescale.accounting` (docs/conventions.md), so any law can be planned at its true compute.

Two sources: the user's model config as a template (its d_model/n_layers ratio, d_ff/d_model, E,
k, G, shared experts, MoE spacing, vocabulary, seq_len), or Krajewski et al. (2024)'s family
(d = 64·L_b, GELU FFN of d_ff = 4d, so N_total = d²·(8E + 4)·L_b without router and
N_active = 12·d²·L_b at k = 1). Shapes are continuous during the search; `build` rounds to a
model that can be trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from moescale.accounting import C_F, C_R, krajewski_flops, krajewski_params_total
from moescale.errors import UserError
from moescale.run import Col

CONVENTIONS = {
    "simple": "C = c_f·N_active·D, N_active with router (flops_per_token_simple; Kaplan et al. "
    "2020); c_f = --k",
    "routing_aware": "C = (c_f·N_active without router + c_r·d·E·G per MoE layer)·D, c_f = --k, "
    f"c_r = {C_R} (Krajewski et al. 2024)",
    "exact": "C = 3·forward·D, forward = 2·(active matmul weights + d·V) + 2·2·seq_len·d per "
    "block (docs/conventions.md); --k is not used",
}
N_COLUMNS = (
    Col.PARAMS_TOTAL,
    Col.PARAMS_ACTIVE,
    Col.PARAMS_TOTAL_NO_ROUTER,
    Col.PARAMS_ACTIVE_NO_ROUTER,
)
MIN_LAYERS = 1e-2  # lower end of the continuous search in L_b


@dataclass(frozen=True)
class Shape:
    """d_model, n_layers, d_ff and the number of MoE layers (floats while searching)."""

    d_model: Any
    n_layers: Any
    d_ff: Any
    n_moe: Any


@dataclass(frozen=True)
class Family:
    """A template for models of any size. `experts` None: not yet known (Krajewski's family
    takes E from the user); `moe_every` 0: dense; `ffn_matrices` 3 for SwiGLU, 2 for GELU."""

    name: str
    aspect: float  # d_model / n_layers
    ffn_ratio: float  # d_ff / d_model
    experts: float | None = 1.0
    top_k: float = 1.0
    granularity: float = 1.0
    shared_experts: float = 0.0
    moe_every: int = 0
    ffn_matrices: int = 3
    norms: bool = True
    vocab: int | None = None
    seq_len: int | None = None
    head_dim: int = 64
    source: str = ""
    sets: tuple[str, ...] = ()  # of E, G, k: those the template itself fixes

    @property
    def moe(self) -> bool:
        return self.moe_every > 0

    def dense(self) -> Family:
        """The dense model of the same shape rule: the FFN of an MoE layer's d_ff, no router."""
        return replace(self, experts=1.0, top_k=1.0, granularity=1.0, shared_experts=0.0,
                       moe_every=0)  # fmt: skip

    def with_moe(
        self,
        experts: float | None = None,
        granularity: float | None = None,
        top_k: float | None = None,
    ) -> Family:
        """The same family with the given E, G, k (None: keep); a dense template becomes MoE in
        every block."""
        out = replace(
            self,
            experts=self.experts if experts is None else float(experts),
            granularity=self.granularity if granularity is None else float(granularity),
            top_k=self.top_k if top_k is None else float(top_k),
        )
        return out if out.moe else replace(out, moe_every=1)

    def shape(self, n_layers: Any) -> Shape:
        """The continuous shape of depth `n_layers` (array or float)."""
        n = np.asarray(n_layers, float)
        d = self.aspect * n
        return Shape(d, n, self.ffn_ratio * d, n / self.moe_every if self.moe else 0.0 * n)

    def build(self, n_layers: float) -> Shape:
        """A trainable shape near depth `n_layers`: whole layers, d_model a multiple of the
        head size, d_ff a multiple of G, MoE layers counted as `moe.every` counts them."""
        n = max(1, round(n_layers))
        d = self.head_dim * max(1, round(self.aspect * n / self.head_dim))
        g = self.granularity if self.moe else 1.0
        d_ff = g * max(1, round(self.ffn_ratio * d / g))
        return Shape(float(d), float(n), float(d_ff), float(math.ceil(n / self.moe_every))
                     if self.moe else 0.0)  # fmt: skip

    def counts(self, s: Shape) -> dict[str, Any]:
        """Parameter counts of `s` in every convention of docs/conventions.md (embeddings
        excluded), as `moescale.accounting.count` gives them for a config."""
        d, n, n_moe = s.d_model, s.n_layers, s.n_moe
        ffn = self.ffn_matrices * d * s.d_ff
        base = n * (4 * d * d + (2 * d if self.norms else 0)) + (n - n_moe) * ffn
        base = base + (d if self.norms else 0)
        e = self.experts if self.moe else 0.0
        if e is None:
            raise UserError(f"family {self.name}: the expansion rate E is not set; give --experts")
        router = n_moe * d * e * self.granularity
        shared = n_moe * self.shared_experts * ffn
        total = base + shared + n_moe * e * ffn + router
        active = base + shared + n_moe * self.top_k * ffn + router
        return {
            Col.PARAMS_TOTAL: total,
            Col.PARAMS_ACTIVE: active,
            Col.PARAMS_ROUTER: router,
            Col.PARAMS_TOTAL_NO_ROUTER: total - router,
            Col.PARAMS_ACTIVE_NO_ROUTER: active - router,
        }

    def flops_per_token(self, s: Shape, convention: str, c_f: float = 6.0) -> Any:
        """Training FLOPs per token of `s` (forward + backward) in `convention`."""
        c = self.counts(s)
        if convention == "simple":
            return c_f * c[Col.PARAMS_ACTIVE]
        if convention == "routing_aware":
            return c_f * c[Col.PARAMS_ACTIVE_NO_ROUTER] + C_R * c[Col.PARAMS_ROUTER]
        if convention != "exact":
            raise UserError(
                f"unknown FLOPs convention {convention!r}; use {', '.join(CONVENTIONS)}"
            )
        if self.vocab is None or self.seq_len is None:
            raise UserError(
                f"--flops exact needs the vocabulary and seq_len of a config; family {self.name} "
                "has none: use --family CONFIG.yaml or --flops simple|routing_aware"
            )
        d, n = s.d_model, s.n_layers
        norms = (2 * d * n + d) if self.norms else 0.0
        matmul = c[Col.PARAMS_ACTIVE] - norms
        return 3.0 * (2.0 * (matmul + d * self.vocab) + 4.0 * self.seq_len * d * n)

    def n_of(self, s: Shape, column: str) -> Any:
        """The count a law was fitted on (`column`, one of N_COLUMNS) for shape `s`."""
        if column not in N_COLUMNS and self.moe:
            raise UserError(
                f"the fit's N column {column!r} is not one of moescale's parameter counts "
                f"({', '.join(N_COLUMNS)}), so family {self.name} cannot say which count of an "
                "MoE model it is; refit with --n-col params_total or params_active"
            )
        return self.counts(s)[column if column in N_COLUMNS else Col.PARAMS_ACTIVE]

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["shape_rule"] = f"d_model = {self.aspect:g}·n_layers, d_ff = {self.ffn_ratio:g}·d_model"
        return out

    def describe(self) -> str:
        moe = (
            f"E {self.experts:g}, k {self.top_k:g}, G {self.granularity:g}"
            if self.moe and self.experts is not None
            else "dense"
        )
        return (
            f"family {self.name}: d_model = {self.aspect:g}·n_layers, d_ff = "
            f"{self.ffn_ratio:g}·d_model, {moe}"
        )


def krajewski_family(experts: float | None = None) -> Family:
    """Krajewski et al. (2024)'s family: d = 64·L_b, GELU FFN d_ff = 4d, one standard expert per
    token (k = 1), no norms counted: N_total = d²(8E + 4)L_b, N_active = 12d²L_b (no router)."""
    return Family(
        name="krajewski",
        aspect=64.0,
        ffn_ratio=4.0,
        experts=None if experts is None else float(experts),
        moe_every=1,
        ffn_matrices=2,
        norms=False,
        source="Krajewski et al. 2024",
        sets=("k",),
    )


def krajewski_shape(size: float) -> tuple[float, float]:
    """(d, L_b) of the shape rule d = 64·L_b for a dense-equivalent size S = 12·d²·L_b."""
    n_layers = (size / (12.0 * 64.0**2)) ** (1.0 / 3.0)
    return 64.0 * n_layers, n_layers


def krajewski_n_total(size: float, experts: float) -> float:
    """N_total = d²·(8E + 4)·L_b for dense-equivalent size S (so N_total = S·(8E + 4)/12)."""
    return krajewski_params_total(*krajewski_shape(size), experts)


def routing_aware_flops(
    size: float,
    tokens: float,
    experts: float,
    granularity: float,
    c_f: float = C_F,
    c_r: float = C_R,
) -> float:
    """F = (12·d²·c_f + d·E·G·c_r)·D·L_b for a model of dense-equivalent size S."""
    return krajewski_flops(*krajewski_shape(size), experts, granularity, tokens, c_f=c_f, c_r=c_r)


def family_from_config(path: str | Path) -> Family:
    """The user's model config as a template (its shape ratios, E, k, G, vocabulary, seq_len)."""
    from moescale.config import load_config

    m = load_config(path).model
    moe = m.moe
    return Family(
        name="config",
        aspect=m.d_model / m.n_layers,
        ffn_ratio=m.d_ff / m.d_model,
        experts=float(moe.experts) if moe else 1.0,
        top_k=float(moe.top_k) if moe else 1.0,
        granularity=float(moe.granularity) if moe else 1.0,
        shared_experts=float(moe.shared_experts) if moe else 0.0,
        moe_every=moe.every if moe else 0,
        vocab=m.vocab_size,
        seq_len=m.seq_len,
        head_dim=m.head_dim,
        source=str(path),
        sets=("E", "G", "k") if moe else (),
    )


def load_family(spec: str) -> Family:
    """`--family krajewski` or `--family CONFIG.yaml`."""
    if spec == "krajewski":
        return krajewski_family()
    if not Path(spec).is_file():
        raise UserError(
            f"--family {spec}: not a config file; give a model config (YAML) whose shape serves "
            "as the template, or 'krajewski' for Krajewski et al. (2024)'s family"
        )
    return family_from_config(spec)


@dataclass
class Design:
    """What to build: a trainable shape near the optimum, its counts, FLOPs and tokens."""

    family: str
    d_model: int
    n_layers: int
    d_ff: int
    experts: float
    granularity: float
    top_k: float
    shared_experts: float
    params_total: float
    params_active: float
    flops_per_token: float
    tokens: float
    loss: float = math.nan

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["routed_experts"] = self.experts * self.granularity
        out["active_experts"] = self.top_k * self.granularity
        out["expert_hidden"] = self.d_ff / self.granularity
        return out


def design(fam: Family, n_layers: float, budget: float, convention: str, c_f: float) -> Design:
    """The trainable model nearest the continuous optimum at depth `n_layers`; tokens are what
    the budget buys at its FLOPs per token (loss and hyperparameters are filled by the plan)."""
    s = fam.build(n_layers)
    c = fam.counts(s)
    fpt = float(fam.flops_per_token(s, convention, c_f))
    moe = fam.moe
    return Design(
        family=fam.name,
        d_model=int(s.d_model),
        n_layers=int(s.n_layers),
        d_ff=int(s.d_ff),
        experts=float(fam.experts or 1.0) if moe else 1.0,
        granularity=fam.granularity if moe else 1.0,
        top_k=fam.top_k if moe else 1.0,
        shared_experts=fam.shared_experts if moe else 0.0,
        params_total=float(c[Col.PARAMS_TOTAL]),
        params_active=float(c[Col.PARAMS_ACTIVE]),
        flops_per_token=fpt,
        tokens=budget / fpt,
    )
