"""Compute-optimal models at their true compute: the search over a family's size and over G.

Why: the compute-optimal model is the minimum of the law along the iso-FLOP curve
D = C / (FLOPs per token), and what a token costs depends on the model, not on the law's N
(docs/science.md, section 3). A `Sizing` prices one law: without a family its size is the
law's N and C = k·N·D (closed form for power-sum laws); with a family (`moescale.laws.family`)
its size is the depth L_b, which fixes N_total, N_active and FLOPs per token. The search is a
grid over log size followed by golden-section (bootstrap draws, all at once) or bounded Brent
(the fitted values); an optimum on the edge of the grid means the draw has no interior optimum
(a zero exponent or coefficient), and is counted as degenerate instead of being reported.

Krajewski et al. (2024)'s family (d = 64·L_b, N_total = d²·(8E + 4)·L_b without router) with
their routing-aware FLOPs, F = (12·d²·c_f + d·E·G·c_r)·D·L_b, reproduces all five rows of their
compute-optimal table: FLOPs within 0.5 %, loss within 0.025, the same optimal G, and the optimum
over size within 3 % of the row's S and D (tests/laws/test_allocate.py). "64×S" there is E = 64
and S = 12·d²·L_b, N_active of the k = 1 model without router (`size` below).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from moescale.errors import UserError
from moescale.laws.family import MIN_LAYERS, Family, krajewski_family
from moescale.laws.forms import EXTRA_INPUTS, LawForm, krajewski
from moescale.run import Col

GRANULARITIES = (1, 2, 4, 8, 16, 32, 64, 128)
_GRID, _GOLDEN, _BISECT = 40, 56, 90
_R = (math.sqrt(5.0) - 1.0) / 2.0
Params = dict[str, np.ndarray]  # parameter -> (K, 1): K parameter sets evaluated at once


def stack_params(form: LawForm, rows: Sequence[Mapping[str, float]]) -> Params:
    return {p: np.array([[float(r[p])] for r in rows]) for p in form.params}


def interval(values: Any) -> tuple[float, float]:
    """95 % percentile interval of the finite values (nan, nan when there are none)."""
    arr = np.asarray([v for v in np.ravel(values) if np.isfinite(v)], float)
    if len(arr) == 0:
        return (math.nan, math.nan)
    return float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))


@dataclass(frozen=True)
class Sizing:
    """One law priced through a size s: without `family` s is the law's N and C = k·N·D; with
    one, s is the depth L_b and N, FLOPs per token follow from the family (`convention`)."""

    form: LawForm
    extras: Mapping[str, float] = field(default_factory=dict)
    family: Family | None = None
    n_column: str = Col.PARAMS_ACTIVE
    convention: str = "simple"
    k: float = 6.0
    numeric: bool = False  # search even where the closed form applies

    @property
    def closed(self) -> bool:
        return not self.numeric and self.family is None and self.form.to_power_terms is not None

    @property
    def label(self) -> str:
        """The FLOPs convention as written in plan JSON (`flops`)."""
        return f"C = {self.k:g} N D" if self.family is None else (
            f"{self.convention}_{self.family.name}")  # fmt: skip

    def n_law(self, s: Any) -> Any:
        return s if self.family is None else self.family.n_of(self.family.shape(s), self.n_column)

    def fpt(self, s: Any) -> Any:
        if self.family is None:
            return self.k * np.asarray(s, float)
        return self.family.flops_per_token(self.family.shape(s), self.convention, self.k)

    def law_loss(self, p: Params, n: Any, c: Any, d: Any) -> np.ndarray:
        """The law at N = n, D = d, C = c (broadcast with p's (K, 1)); non-finite -> inf."""
        env: dict[str, Any] = {"N": n, "D": d, "C": c, **p}
        for key in self.form.inputs:
            if key not in env:
                if key not in self.extras:
                    flag = EXTRA_INPUTS[key].plan_flag if key in EXTRA_INPUTS else f"--{key}"
                    raise UserError(f"law {self.form.name} needs a value for {key} ({flag})")
                env[key] = float(self.extras[key])
        with np.errstate(all="ignore"):
            out = np.asarray(self.form.evaluate(env), float)
        return np.where(np.isfinite(out), out, np.inf)

    def loss(self, p: Params, s: Any, d: Any) -> np.ndarray:
        return self.law_loss(p, self.n_law(s), self.fpt(s) * d, d)

    def size_for_fpt(self, f: np.ndarray) -> np.ndarray:
        """The size whose FLOPs per token are `f` (nan outside the family's range)."""
        if self.family is None:
            return np.asarray(f, float) / self.k
        lo = np.full(len(f), math.log(MIN_LAYERS))
        x = bisect(lambda x: f - self.fpt(np.exp(x)), lo, lo + math.log(1e15 / MIN_LAYERS))
        return np.exp(x)


def bisect(g: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per-row root of g, decreasing in x, in [lo, hi]; nan where g keeps one sign."""
    ok = (g(lo) > 0) & (g(hi) < 0)
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        pos = g(mid) > 0
        lo, hi = np.where(pos, mid, lo), np.where(pos, hi, mid)
    return np.where(ok, 0.5 * (lo + hi), np.nan)


@dataclass
class Opt:
    """Per-row optimum: size, tokens, loss, whether it is interior, index of its sizing."""

    s: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    ok: np.ndarray
    g: np.ndarray

    def row(self, i: int) -> tuple[float, float, float]:
        return float(self.s[i]), float(self.d[i]), float(self.loss[i])


def _minimize(
    f: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray, brent: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row minimum of f over x in [lo, hi]: a grid, then golden section (or, for one
    row, bounded Brent) between the neighbours of the best grid point."""
    rows = np.arange(len(lo))
    grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, _GRID)
    vals = f(grid)
    i = np.argmin(np.where(np.isfinite(vals), vals, np.inf), axis=1)
    ok = (i > 0) & (i < _GRID - 1) & np.isfinite(vals[rows, i]) & (hi > lo)
    a, b = grid[rows, np.maximum(i - 1, 0)], grid[rows, np.minimum(i + 1, _GRID - 1)]
    if brent and len(lo) == 1 and ok[0]:
        res = minimize_scalar(
            lambda x: float(f(np.array([[x]]))[0, 0]),
            bounds=(float(a[0]), float(b[0])),
            method="bounded",
            options={"xatol": 1e-10},
        )
        return np.array([float(res.x)]), np.array([float(res.fun)]), ok
    for _ in range(_GOLDEN):
        c, d = b - _R * (b - a), a + _R * (b - a)
        fcd = f(np.stack([c, d], axis=1))
        left = fcd[:, 0] < fcd[:, 1]
        a, b = np.where(left, a, c), np.where(left, d, b)
    x = 0.5 * (a + b)
    return x, f(x[:, None])[:, 0], ok


def _closed(sz: Sizing, p: Params, budget: np.ndarray) -> Opt:
    """C = k·N·D and A_E/N^α + B/D^β + const: the optimum of docs/science.md, section 3."""
    terms = sz.form.power_terms({k: v[:, 0] for k, v in p.items()}, sz.extras)
    assert terms is not None
    a_e, b, al, be, const = (np.asarray(t, float) * np.ones(len(budget)) for t in terms)
    ok = np.all([np.isfinite(t) & (t > 0) for t in (a_e, b, al, be)], axis=0)
    with np.errstate(all="ignore"):
        gc = (al * a_e / (be * b)) ** (1.0 / (al + be))
        x = budget / sz.k
        n, d = gc * x ** (be / (al + be)), x ** (al / (al + be)) / gc
        loss = a_e / n**al + b / d**be + const
    ok &= np.isfinite(n) & np.isfinite(d) & np.isfinite(loss) & (n > 0) & (d > 0)
    nan = np.full(len(budget), np.nan)
    zero = np.zeros(len(budget), int)
    return Opt(np.where(ok, n, nan), np.where(ok, d, nan), np.where(ok, loss, nan), ok, zero)


def optimum(sz: Sizing, p: Params, budget: Any, brent: bool = False) -> Opt:
    """Compute-optimal size, tokens and loss of each parameter row of `p` at `budget`."""
    k = len(next(iter(p.values())))
    budget = np.broadcast_to(np.asarray(budget, float), (k,)).copy()
    if sz.closed:
        return _closed(sz, p, budget)
    lo = np.full(k, math.log(1.0 if sz.family is None else MIN_LAYERS))
    with np.errstate(all="ignore"):
        hi = np.log(sz.size_for_fpt(budget))  # D = 1 token

    def f(x: np.ndarray) -> np.ndarray:
        s = np.exp(x)
        return sz.loss(p, s, budget[:, None] / sz.fpt(s))

    x, fx, ok = _minimize(f, lo, np.where(np.isfinite(hi), hi, lo), brent)
    ok &= np.isfinite(fx)
    s = np.exp(x)
    nan = np.full(k, np.nan)
    return Opt(np.where(ok, s, nan), np.where(ok, budget / sz.fpt(s), nan),
               np.where(ok, fx, nan), ok, np.zeros(k, int))  # fmt: skip


def best_over(sizings: Sequence[Sizing], p: Params, budget: Any, brent: bool = False) -> Opt:
    """The best of several sizings (one per G) for each row; `g` indexes the winner."""
    opts = [optimum(sz, p, budget, brent) for sz in sizings]
    if len(opts) == 1:
        return opts[0]
    losses = np.stack([np.where(o.ok, o.loss, np.inf) for o in opts])
    g = np.argmin(losses, axis=0)
    ok = np.isfinite(losses[g, np.arange(losses.shape[1])])
    pick = [np.choose(g, [getattr(o, a) for o in opts]) for a in ("s", "d", "loss")]
    return Opt(*pick, ok, g)


def budget_for(
    sizings: Sequence[Sizing], p: Params, target: np.ndarray, lo: float, hi: float
) -> np.ndarray:
    """Compute in [lo, hi] at which the best compute-optimal loss equals `target` (nan when it
    is not reached there)."""
    x0 = np.full(len(target), math.log(lo))
    x = bisect(lambda x: best_over(sizings, p, np.exp(x)).loss - target, x0, x0 + math.log(hi / lo))
    return np.exp(x)


def tokens_for(sz: Sizing, p: Params, s: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Tokens at which size `s` reaches loss `target` (1 if at once, nan if never)."""

    def g(x: np.ndarray) -> np.ndarray:
        return sz.loss(p, s[:, None], np.exp(x)[:, None])[:, 0] - target

    lo = np.zeros(len(s))
    d = np.exp(bisect(g, lo, lo + math.log(1e30)))
    return np.where(g(lo) <= 0, 1.0, d)


@dataclass
class Search:
    """The fitted values' optimum (per sizing and best) and the draws' optima."""

    point: Opt
    by_sizing: list[float]
    draws: Opt | None
    degenerate: int = 0


def search(
    sizings: Sequence[Sizing],
    params: Mapping[str, float],
    samples: Sequence[Mapping[str, float]],
    budget: float,
) -> Search:
    """Optimum of the fitted law (a UserError if it has none) and of every bootstrap draw."""
    form = sizings[0].form
    pts = [optimum(sz, stack_params(form, [params]), budget, brent=True) for sz in sizings]
    losses = [float(o.loss[0]) if o.ok[0] else math.inf for o in pts]
    if not np.isfinite(min(losses)):
        zero = [f"{q} = {params[q]:g}" for q in form.params if not params[q] > 0]
        why = f" ({', '.join(zero)})" if zero else ""
        raise UserError(
            f"law {form.name} has no compute-optimal model at {budget:.3g} FLOPs: the loss falls "
            f"all the way to one end of the size range{why}, so a zero exponent or coefficient "
            "leaves nothing to balance; refit, or check the fit's parameters"
        )
    j = int(np.argmin(losses))
    best = pts[j]
    best.g[:] = j
    out = Search(best, losses, None)
    if samples:
        out.draws = best_over(sizings, stack_params(form, samples), budget)
        out.degenerate = int((~out.draws.ok).sum())
    return out


@dataclass
class GranularityOptimum:
    """Compute-optimal model with the optimal G, at true compute through a family."""

    budget: float
    granularity: int
    size: float  # N_active without router (Krajewski et al.'s S of "64×S")
    n_total: float  # the law's N (N_total for krajewski)
    tokens: float
    loss: float
    by_granularity: dict[int, float] = field(default_factory=dict)  # G -> optimal loss
    experts: float = 64.0
    flops: str = "routing_aware_krajewski"
    n_active: float = math.nan  # with router
    n_layers: float = math.nan  # continuous depth of the optimum (the family's size)
    params_total: float = math.nan  # the family's N_total, router included
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    degenerate: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "experts": self.experts,
            "granularity": self.granularity,
            "size": self.size,
            "n_opt": self.n_total,
            "n_active": self.n_active,
            "n_total": self.params_total,
            "d_opt": self.tokens,
            "loss": self.loss,
            "loss_by_granularity": dict(self.by_granularity),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "degenerate_draws": self.degenerate,
        }


def granularity_sizings(
    form: LawForm, fam: Family, granularities: Sequence[float], **kw: Any
) -> list[Sizing]:
    """One sizing per G: the family at that G, the law's G input set to it when it has one."""
    return [
        Sizing(
            form, {"G": float(g)} if "G" in form.inputs else {}, fam.with_moe(granularity=g), **kw
        )  # fmt: skip
        for g in granularities
    ]


def optimal_granularity(
    params: Mapping[str, float],
    budget: float,
    *,
    experts: float | None = None,
    family: Family | None = None,
    flops: str = "routing_aware",
    form: LawForm | None = None,
    n_column: str = Col.PARAMS_TOTAL_NO_ROUTER,
    granularities: Sequence[int] = GRANULARITIES,
    samples: Sequence[Mapping[str, float]] = (),
    k: float = 6.0,
) -> GranularityOptimum:
    """For each G the optimum over the family's size at `budget` FLOPs; the best G wins.

    `params` are those of `form` (default krajewski), fitted on `n_column`. The family defaults
    to Krajewski et al.'s, whose E has no default: give `experts` (their fits used 64).
    """
    fam = family or krajewski_family()
    fam = fam.with_moe(experts=experts)
    if fam.experts is None:
        raise UserError("the granularity search needs the expansion rate E: give --experts")
    law = form or krajewski()
    sizings = granularity_sizings(law, fam, granularities, n_column=n_column,
                                  convention=flops, k=k)  # fmt: skip
    res = search(sizings, params, samples, budget)
    j = int(res.point.g[0])
    sz, (s, d, loss) = sizings[j], res.point.row(0)
    assert sz.family is not None
    counts = sz.family.counts(sz.family.shape(s))
    out = GranularityOptimum(
        budget=budget,
        granularity=int(granularities[j]),
        size=float(counts[Col.PARAMS_ACTIVE_NO_ROUTER]),
        n_total=float(sz.n_law(s)),
        tokens=d,
        loss=loss,
        by_granularity={int(g): v for g, v in zip(granularities, res.by_sizing, strict=True)},
        experts=float(fam.experts),
        flops=sz.label,
        n_active=float(counts[Col.PARAMS_ACTIVE]),
        n_layers=s,
        params_total=float(counts[Col.PARAMS_TOTAL]),
        degenerate=res.degenerate,
    )
    if res.draws is not None:
        out.intervals = draw_intervals(sizings, res.draws)
        out.intervals["granularity"] = interval(
            np.asarray(granularities, float)[res.draws.g][res.draws.ok]
        )
    return out


def draw_intervals(sizings: Sequence[Sizing], o: Opt) -> dict[str, tuple[float, float]]:
    """Intervals of N (the law's; with a family also N_active, N_total), D and loss over the
    draws of `o` with an interior optimum."""
    rows = [(sizings[g], s) for g, s, ok in zip(o.g, o.s, o.ok, strict=True) if ok]
    out = {
        "n_opt": interval([sz.n_law(s) for sz, s in rows]),
        "d_opt": interval(o.d[o.ok]),
        "loss": interval(o.loss[o.ok]),
    }
    if sizings[0].family is not None:
        counts = [sz.family.counts(sz.family.shape(s)) for sz, s in rows]  # type: ignore[union-attr]
        out["n_active"] = interval([c[Col.PARAMS_ACTIVE] for c in counts])
        out["n_total"] = interval([c[Col.PARAMS_TOTAL] for c in counts])
    return out
