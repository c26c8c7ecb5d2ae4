"""IsoFLOP profiles: Chinchilla's approach 2 (Hoffmann et al. 2022).

Runs are grouped by compute budget: by a nominal-budget column, by given nominal budgets (each
run joins the nearest within a relative tolerance), or else by clustering their FLOPs (the
window [C, C·(1 + tol)] holding most runs becomes a budget, its runs are removed, and so on);
the grouping is logged and recorded. In each budget with 3 or more sizes a parabola of the
loss in ln N locates the compute-optimal N. Through the minima, least squares in log-log
space gives N_opt = n0·C^a and D_opt = d0·C^b, and the minima's losses L*(C) = L_inf +
K·C^-gamma, the form of a parametric law's compute-optimal frontier (docs/science.md §3).
Intervals resample whole budgets and, within each, the parabola's residuals (with few
budgets their scatter alone understates each minimum's noise). No form of L(N, D) is
assumed, but only the minima's trend is extrapolated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.fmt import plural
from moescale.laws.allocate import Allocation, check_budget
from moescale.laws.forms import chinchilla, custom
from moescale.laws.problem import Problem
from moescale.laws.result import (  # the JSON checkers that FitResult uses too
    ISOFLOP,
    _any,
    _diagnostics_from,
    _diagnostics_json,
    _int,
    _list,
    _mapping,
    _number,
    _number_or_null,
    _optional,
    _pair,
    _Reader,
    _str,
    selection,
)
from moescale.laws.table import TableOptions, load_inputs

log = logging.getLogger(__name__)
MIN_SIZES = 3  # a parabola has three coefficients
MIN_BUDGETS = 3  # L*(C) has three parameters
_LOSS_LAW = custom("L_inf + K / C**gamma", name="isoflop_loss")
FRONTIER_PARAMS = ("n0", "a", "d0", "b", "L_inf", "K", "gamma")


def frontier(p: Mapping[str, float], budget: float) -> tuple[float, float, float]:
    """(N_opt, D_opt, loss) at `budget` of N = n0·C^a, D = d0·C^b, L = L_inf + K·C^-gamma."""
    return (
        p["n0"] * budget ** p["a"],
        p["d0"] * budget ** p["b"],
        p["L_inf"] + p["K"] * budget ** -p["gamma"],
    )


@dataclass
class BudgetProfile:
    """One budget's IsoFLOP profile: the parabola `parabola` = [c0, c1, c2] of L in ln N, its
    minimum (`n_opt`, `d_opt`, `loss`) with 95 % intervals (None: not identified), and whether
    the sizes bracket it."""

    compute: float
    runs: int
    sizes: int
    n_opt: float
    d_opt: float
    loss: float
    parabola: list[float]
    bracketed: bool
    n_interval: tuple[float, float] | None = None
    loss_interval: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        keys = ("n_interval", "loss_interval")  # tuples or None; JSON has lists
        return {**vars(self), **{k: v and list(v) for k, v in vars(self).items() if k in keys}}


@dataclass
class IsoFLOPResult:
    """IsoFLOP profiles (Hoffmann et al. 2022, approach 2): per-budget minima and the power
    laws through them, N_opt = n0·C^a and D_opt = d0·C^b, with the loss at the minimum
    L*(C) = L_inf + K·C^-gamma (the form of a parametric law's compute-optimal frontier).
    `params` and `intervals` hold those seven numbers; `bootstrap_params` one dict per draw
    (budgets resampled); `grouping` says how runs were grouped into budgets and `left_out`
    how many runs no usable budget took."""

    params: dict[str, float]
    budgets: list[BudgetProfile]
    grouping: str
    n_points: int
    left_out: int = 0
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    bootstrap_params: list[dict[str, float]] = field(default_factory=list)
    bootstrap_requested: int = 0
    bootstrap_failed: int = 0
    bootstrap_degenerate: int = 0
    warnings: list[dict[str, str]] = field(default_factory=list)
    unidentified: list[str] = field(default_factory=list)
    compute_range: tuple[float, float] | None = None
    columns: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    flops_convention: str = ""
    table: str | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    design: dict[str, float] = field(default_factory=dict)  # result.shared_design of the rows
    method: str = ISOFLOP
    law: str = ISOFLOP

    def allocate(self, budget: float) -> Allocation:
        """N_opt, D_opt and the loss at `budget` (FLOPs), with 95 % intervals from the draws
        (left out for a quantity whose parameters are unidentified)."""
        check_budget(budget)
        n, d, loss = frontier(self.params, budget)
        draws = np.array([frontier(p, budget) for p in self.bootstrap_params]).reshape(-1, 3)
        needs = {"n_opt": ("n0", "a"), "d_opt": ("d0", "b"), "loss": ("L_inf", "K", "gamma")}
        intervals = {}
        for j, (key, names) in enumerate(needs.items()):
            col = draws[:, j][np.isfinite(draws[:, j])]
            if len(col) and not set(names) & set(self.unidentified):
                intervals[key] = (float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5)))
        return Allocation(budget, n, d, loss, method=ISOFLOP, intervals=intervals)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": ISOFLOP,
            "law": ISOFLOP,
            "params": dict(self.params),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "budgets": [b.to_json() for b in self.budgets],
            "grouping": self.grouping,
            "n_points": self.n_points,
            "left_out": self.left_out,
            "bootstrap_draws": len(self.bootstrap_params),
            "bootstrap_params": [dict(p) for p in self.bootstrap_params],
            **_diagnostics_json(self),
            "columns": dict(self.columns),
            "sources": dict(self.sources),
            "flops_convention": self.flops_convention,
            "table": self.table,
            "selection": dict(self.selection),
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> IsoFLOPResult:
        """Validate and rebuild what `to_json` wrote; errors name `source` and the key."""
        get = _Reader(data, source)
        params, boot = get.params_and_draws(FRONTIER_PARAMS, "IsoFLOP fit", _number_or_null)
        return cls(
            params=params,
            budgets=get("budgets", _list(_budget), []),
            grouping=get("grouping", _str, ""),
            n_points=get("n_points", _int, 0),
            left_out=get("left_out", _int, 0),
            intervals=get("intervals", _mapping(_pair), {}),
            bootstrap_params=boot,
            columns=get("columns", _mapping(_str), {}),
            sources=get("sources", _mapping(_str), {}),
            flops_convention=get("flops_convention", _str, ""),
            table=get("table", _optional(_str), None),
            selection=get("selection", _mapping(_any), {}),
            **_diagnostics_from(get, len(boot)),
        )


def group_budgets(
    c: np.ndarray,
    *,
    nominal: np.ndarray | None = None,
    budgets: Sequence[float] | None = None,
    tol: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(label of each run, -1 for none; each budget's compute; how the runs were grouped)."""
    if not (tol > 0 and math.isfinite(tol)):
        raise UserError(f"--budget-tol must be a positive fraction such as 0.05, got {tol}")
    if nominal is not None:
        values, labels = np.unique(nominal, return_inverse=True)
        return labels, values, "by the nominal-budget column"
    if budgets:
        values = np.unique(np.asarray(budgets, float))
        if not np.all(values > 0) or not np.all(np.isfinite(values)):
            raise UserError(f"--budgets must be positive FLOP counts, got {list(budgets)}")
        dist = np.abs(np.log(c)[:, None] - np.log(values)[None, :])
        labels = np.where(dist.min(axis=1) <= math.log1p(tol), dist.argmin(axis=1), -1)
        how = f"each run joined the nearest of {plural(len(values), 'given budget')} within"
        return labels, values, f"{how} {tol:.0%}"
    order = np.argsort(c, kind="stable")
    lc, labels, free = np.log(c[order]), np.full(len(c), -1), np.ones(len(c), bool)
    values = []
    while free.any():
        idx = np.flatnonzero(free)
        ends = np.searchsorted(lc[idx], lc[idx] + math.log1p(tol), side="right")
        i = int(np.argmax(ends - np.arange(len(idx))))
        members = idx[i : ends[i]]
        labels[order[members]], free[members] = len(values), False
        values.append(float(np.exp(np.mean(lc[members]))))
    return labels, np.array(values), f"FLOPs clustered: runs within {tol:.0%} form one budget"


def parabola_minimum(logn: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """([c0, c1, c2] of L = c0 + c1·ln N + c2·ln² N, ln N at the minimum, L there); None without
    three distinct sizes or a minimum (a profile that opens downwards)."""
    if len(np.unique(logn)) < MIN_SIZES:
        return None
    m = float(np.mean(logn))
    q2, q1, q0 = np.polyfit(logn - m, loss, 2)
    if not q2 > 0:
        return None
    u = -q1 / (2 * q2)
    coef = np.array([q0 - q1 * m + q2 * m * m, q1 - 2 * q2 * m, q2])
    return coef, u + m, q0 - q1 * q1 / (4 * q2)


def _percentiles(values: Sequence[float]) -> tuple[float, float] | None:
    arr = np.asarray([v for v in values if np.isfinite(v)], float)
    if len(arr) < 2 or np.ptp(arr) == 0:
        return None
    return float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))


def profile(
    compute: float, n: np.ndarray, d: np.ndarray, loss: np.ndarray, draws: int, seed: int
) -> tuple[BudgetProfile, np.ndarray] | str:
    """One budget's profile and its minimum (ln N, L) in each of `draws` residual resamples,
    or why it has none. Intervals are left out (None), and every draw is the minimum itself,
    when the parabola has no residual degree of freedom."""
    fit = parabola_minimum(np.log(n), loss)
    if fit is None:
        sizes = len(np.unique(n))
        return f"fewer than {MIN_SIZES} sizes" if sizes < MIN_SIZES else "no minimum (concave)"
    coef, u, lmin = fit
    best = n[np.argmin(loss)]
    bracketed = n.min() < math.exp(u) < n.max() and n.min() < best < n.max()
    out = BudgetProfile(
        compute=float(compute), runs=len(n), sizes=len(np.unique(n)), n_opt=math.exp(u),
        d_opt=float(np.exp(np.mean(np.log(n * d)) - u)), loss=float(lmin),
        parabola=[float(v) for v in coef], bracketed=bool(bracketed),
    )  # fmt: skip
    mins = np.tile([u, lmin], (draws, 1))
    if len(n) > MIN_SIZES and draws:  # the sizes are a design: resample residuals, not runs
        fitted = np.polyval(coef[::-1], np.log(n))
        resid = (loss - fitted) * math.sqrt(len(n) / (len(n) - MIN_SIZES))
        picks = np.random.default_rng(seed).integers(0, len(n), (draws, len(n)))
        for j, i in enumerate(picks):
            if (m := parabola_minimum(np.log(n), fitted + resid[i])) is not None:
                mins[j] = m[1:]
        out.n_interval = _percentiles(np.exp(mins[:, 0]))
        out.loss_interval = _percentiles(mins[:, 1])
    return out, mins


def frontier_params(
    c: np.ndarray, n_opt: np.ndarray, d_opt: np.ndarray, loss: np.ndarray
) -> tuple[dict[str, float], list[str]]:
    """The seven frontier parameters through the minima (loss law only with 3+ distinct
    budgets, else NaN), and what is degenerate about the loss law (a zero K, a bound gamma)."""
    lc = np.log(c)
    a, ln_n0 = np.polyfit(lc, np.log(n_opt), 1)
    b, ln_d0 = np.polyfit(lc, np.log(d_opt), 1)
    out = {"n0": math.exp(ln_n0), "a": float(a), "d0": math.exp(ln_d0), "b": float(b)}
    out.update(L_inf=math.nan, K=math.nan, gamma=math.nan)
    if len(np.unique(c)) < MIN_BUDGETS:
        return out, ["too few distinct budgets"]
    c_ref = float(np.exp(np.mean(lc)))  # C / c_ref keeps the basis near 1
    prob = Problem(_LOSS_LAW, {"C": c / c_ref}, loss, np.ones(len(c)), "squared", 1e-3)
    v = prob.fit("vp", None, None)
    l_inf, k, gamma = (float(t) for t in v)  # linear (L_inf, K), then nonlinear (gamma)
    out.update(L_inf=l_inf, K=k * c_ref**gamma, gamma=gamma)
    return out, prob.degenerate(v)


def _bootstrap(
    profiles: list[BudgetProfile], mins: np.ndarray, draws: int, seed: int
) -> tuple[list[dict[str, float]], int, int]:
    """Frontier parameters refitted on budgets resampled with replacement, each taken at its
    minimum in the same draw of its own runs (`mins`: budget × draw × (ln N, L)), so that both
    the scatter between budgets and each parabola's noise show: (usable draws, failed,
    degenerate). A draw of fewer than 3 distinct budgets is degenerate."""
    c = np.array([b.compute for b in profiles])
    ln_nd = np.log([b.n_opt * b.d_opt for b in profiles])
    rng, out, failed, degenerate = np.random.default_rng(seed), [], 0, 0
    for j in range(draws):
        i = rng.integers(0, len(c), len(c))
        if len(np.unique(i)) < MIN_BUDGETS:
            degenerate += 1
            continue
        u, loss = mins[i, j, 0], mins[i, j, 1]
        try:
            with np.errstate(all="ignore"):
                p, bad = frontier_params(c[i], np.exp(u), np.exp(ln_nd[i] - u), loss)
        except Exception:  # one bad resample never ends the bootstrap; it is counted
            failed += 1
            continue
        if bad or not all(np.isfinite(list(p.values()))):
            degenerate += 1
        else:
            out.append(p)
    return out, failed, degenerate


def _budget_notes(
    profiles: list[BudgetProfile], refused: dict[str, list[tuple[float, int]]]
) -> list[tuple[str, str]]:
    """Warnings about single budgets: left out (and why), or a minimum not bracketed."""
    notes = []
    for why, items in refused.items():
        shown = ", ".join(f"{c:.3g}" for c, _ in items[:6]) + (", ..." if len(items) > 6 else "")
        runs = plural(sum(r for _, r in items), "run")
        what = f"left out {plural(len(items), 'budget')} ({runs}) with {why}: C = {shown}"
        notes.append(("budget_refused", f"{what}; add sizes there or change the grouping"))
    for b in profiles:
        if not b.bracketed:
            what = f"the minimum of budget C = {b.compute:.3g} (N {b.n_opt:.3g}) is at the edge"
            fix = "its optimum is not bracketed; add smaller or larger models at that budget"
            notes.append(("unbracketed", f"{what} of its sizes: {fix}"))
    return notes


def fit_isoflop(
    n: np.ndarray,
    d: np.ndarray,
    c: np.ndarray,
    loss: np.ndarray,
    *,
    nominal: np.ndarray | None = None,
    budgets: Sequence[float] | None = None,
    tol: float = 0.05,
    draws: int = 1000,
    seed: int = 0,
) -> IsoFLOPResult:
    """IsoFLOP profiles of runs (N, D, C, loss): see the module docstring. Budgets with fewer
    than 3 sizes or no minimum are left out with a warning; fewer than 3 usable budgets is an
    error."""
    if draws < 0 or seed < 0:
        raise UserError(f"--bootstrap and --seed must be >= 0, got {draws} and {seed}")
    labels, values, grouping = group_budgets(c, nominal=nominal, budgets=budgets, tol=tol)
    log.info("IsoFLOP: %s; %s", grouping, plural(len(values), "budget"))
    found, refused, used = [], {}, np.zeros(len(c), bool)
    for g in np.argsort(values):
        m = labels == g
        got = profile(values[g], n[m], d[m], loss[m], draws, seed + len(found))
        if isinstance(got, str):
            refused.setdefault(got, []).append((float(values[g]), int(m.sum())))
        else:
            found.append(got)
            used |= m
    profiles = [b for b, _ in found]
    if len(profiles) < MIN_BUDGETS:
        raise UserError(
            f"IsoFLOP profiles need at least {MIN_BUDGETS} budgets with {MIN_SIZES} or more "
            f"sizes each, but {grouping} gives {len(profiles)}; add runs, group by a budget "
            "column (--budget-col), or widen --budget-tol"
        )
    cols = [np.array([getattr(b, k) for b in profiles]) for k in ("compute", "n_opt", "d_opt")]
    params, bad = frontier_params(*cols, np.array([b.loss for b in profiles]))
    samples, failed, degenerate = _bootstrap(profiles, np.array([m for _, m in found]), draws, seed)
    notes = _budget_notes(profiles, refused)
    if (labels < 0).any():
        what = f"{plural(int((labels < 0).sum()), 'run')} lie more than {tol:.0%} from every budget"
        notes.append(("runs_left_out", f"{what} given: left out; widen --budget-tol to use them"))
    if bad:
        what = f"the loss law L* = L_inf + K C^-gamma is degenerate ({', '.join(bad)})"
        notes.append(("loss_law", f"{what}: its loss predictions are not reliable"))
    res = IsoFLOPResult(
        params=params, budgets=profiles, grouping=grouping, n_points=int(used.sum()),
        left_out=int((~used).sum()), compute_range=(float(c[used].min()), float(c[used].max())),
    )  # fmt: skip
    return _finish(res, samples, notes, draws, failed, degenerate)


def _finish(
    res: IsoFLOPResult, samples: list[dict[str, float]], notes: list[tuple[str, str]],
    draws: int, failed: int, degenerate: int,
) -> IsoFLOPResult:  # fmt: skip
    """Intervals (none for a parameter that k budgets cannot identify), counts, warnings."""
    k = len(res.budgets)
    unidentified = ["L_inf", "K", "gamma"] if k <= MIN_BUDGETS else []
    if unidentified:
        what = f"{k} budgets fit the 3-parameter loss law exactly"
        notes.append(("few_budgets", f"{what}: its intervals are unidentified; add budgets"))
    for q in FRONTIER_PARAMS:
        iv = _percentiles([s[q] for s in samples]) if samples else None
        if iv is not None and q not in unidentified:
            res.intervals[q] = iv
        elif samples and q not in unidentified:
            unidentified.append(q)
    if draws and failed + degenerate > 0.05 * draws:
        what = f"{failed} of {draws} bootstrap draws failed and {degenerate} were degenerate"
        why = "(fewer than 3 distinct budgets, or a degenerate loss law)"
        notes.append(("bootstrap_draws", f"{what} {why}: intervals use the {len(samples)} others"))
    for _, message in notes:
        log.warning(message)
    return replace(
        res, bootstrap_params=samples, bootstrap_requested=draws, bootstrap_failed=failed,
        bootstrap_degenerate=degenerate, unidentified=unidentified,
        warnings=[{"code": code, "message": m} for code, m in notes],
    )  # fmt: skip


def isoflop_table(
    path: str | Path,
    *,
    options: TableOptions | None = None,
    budgets: Sequence[float] | None = None,
    tol: float = 0.05,
    draws: int = 1000,
    seed: int = 0,
) -> IsoFLOPResult:
    """`fit_isoflop` on a results table: columns and row selection as for `fit_table`, and a
    nominal-budget column when `options.columns` has "budget" (--budget-col)."""
    options = options or TableOptions()
    inp = load_inputs(path, chinchilla(), options)
    res = fit_isoflop(
        inp.x["N"], inp.x["D"], inp.compute, inp.loss, nominal=inp.budget, budgets=budgets,
        tol=tol, draws=draws, seed=seed,
    )  # fmt: skip
    return replace(
        res, columns=inp.columns, sources=inp.sources, flops_convention=inp.convention,
        table=str(path), selection=selection(options, len(inp.loss)),
        warnings=[*inp.warnings, *res.warnings], design=inp.design,
    )  # fmt: skip


def _budget(v: Any) -> BudgetProfile:
    if not isinstance(v, Mapping):
        raise ValueError(f"holds {type(v).__name__}, expected an object per budget")
    try:
        return BudgetProfile(
            compute=_number(v["compute"]), runs=_int(v["runs"]), sizes=_int(v["sizes"]),
            n_opt=_number(v["n_opt"]), d_opt=_number(v["d_opt"]), loss=_number(v["loss"]),
            parabola=[_number(c) for c in v["parabola"]], bracketed=bool(v["bracketed"]),
            n_interval=_optional(_pair)(v.get("n_interval")),
            loss_interval=_optional(_pair)(v.get("loss_interval")),
        )  # fmt: skip
    except KeyError as exc:
        raise ValueError(f"has a budget without {exc}") from None
