"""Hyperparameter laws: optimal batch size and learning rate, per architecture (arch, E, G, k),
so that dense and MoE are compared as Wang et al. (2024) do (docs/science.md, section 4).

- **Training curves** (Wang et al. 2024). In a sweep of batch sizes (or learning rates) at one
  model size, for each training-loss level the batch (LR) whose run reaches it in the fewest
  tokens is the optimum at that loss (their heatmaps over (batch, tokens) and (LR, tokens));
  B_opt = λ_B·L^(−α_B) and η_opt = λ_η·L^(−α_η) are fitted over the levels. Only constant-LR or
  WSD runs qualify: a cosine run's loss halfway depends on where its schedule ends (its LR has
  not decayed yet), so its curve is refused.
- **The near-optimal band** of final losses (DeepSeek-AI 2024a; StepLaw, Li et al. 2025): in
  each cell (architecture, nominal N, nominal D) the runs within 0.25 % of the best are kept and
  log y regressed on log x, in compute (B = b·C^β_B, η = c·C^β_η), in (N, D) (η = c·N^a·D^b,
  B = c·D^b) and in loss. Nominal settings group cells: token counts differ slightly with the
  batch size (whole steps), which must not split a cell. The held-out error refits without the
  largest-compute cells and predicts the centre of their bands.

Batch sizes stay in the unit of their column, never converted (`batch_size`: sequences;
`batch_tokens`: tokens), stated in every result. Intervals are row-bootstrap percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.laws.heatmap import heatmap
from moescale.laws.table import numeric_column
from moescale.run import Col, Metric, RunPaths, read_metrics, read_summary

NEAR_OPTIMAL_TOL = 0.0025
CELL_TOL = 0.05  # settings within 5 % of each other are one nominal value
HOLDOUT_FRAC = 0.2
MIN_SWEPT_CELLS = 2  # cells where a hyperparameter takes two or more values
NAN2 = (math.nan, math.nan)
BAND_LAWS = {  # name -> (output, inputs)
    "batch_vs_compute": ("batch", ("C",)),
    "lr_vs_compute": ("lr", ("C",)),
    "batch_vs_loss": ("batch", ("L",)),
    "lr_vs_loss": ("lr", ("L",)),
    "lr_vs_nd": ("lr", ("N", "D")),
    "batch_vs_d": ("batch", ("D",)),
}
GOOD_SCHEDULES = ("constant", "wsd")
CURVE_COLUMNS = (Col.RUN, Col.ARCH, Col.EXPERTS, Col.GRANULARITY, Col.TOP_K,
                 Col.PARAMS_ACTIVE, Col.BATCH_SIZE, "batch_tokens", Col.LR, "schedule",
                 Metric.TOKENS, Metric.LOSS)  # fmt: skip


@dataclass
class PowerLaw:
    """output = coef · Π inputs_i^exponents_i, fitted by OLS in log space, with 95 % bootstrap
    intervals (`intervals`: 'coef' and each input)."""

    coef: float
    exponents: tuple[float, ...]
    inputs: tuple[str, ...] = ("x",)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    n: int = 0
    output: str = "y"

    @property
    def exponent(self) -> float:
        return self.exponents[0]

    @property
    def exponent_interval(self) -> tuple[float, float]:
        return self.intervals.get(self.inputs[0], NAN2)

    def __call__(self, *xs: Any) -> Any:
        terms = [np.asarray(x, float) ** e for x, e in zip(xs, self.exponents, strict=True)]
        return self.coef * np.prod(terms, axis=0)

    def to_json(self) -> dict[str, Any]:
        terms = "".join(f" * {i}^{e:.4g}" for i, e in zip(self.inputs, self.exponents, strict=True))
        out = {"form": f"{self.output} = {self.coef:.4g}{terms}", **self.__dict__}
        return {**out, "exponents": dict(zip(self.inputs, self.exponents, strict=True))}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PowerLaw:
        ins = tuple(str(i) for i in d["inputs"])
        ivs = {k: (float(v[0]), float(v[1])) for k, v in d["intervals"].items() if None not in v}
        return cls(float(d["coef"]), tuple(float(d["exponents"][i]) for i in ins), ins, ivs,
                   int(d["n"]), str(d["output"]))  # fmt: skip


def fit_loglinear(
    xs: Mapping[str, np.ndarray], y: np.ndarray, *, bootstrap: int = 1000, seed: int = 0,
    output: str = "y",
) -> PowerLaw:  # fmt: skip
    """OLS of log y on the logs of `xs`; percentile intervals from `bootstrap` row resamples.
    The logs are centred first: log C near 40 is nearly collinear with the intercept, and the
    draws' normal equations would then carry rounding noise far above the estimate's."""
    names = tuple(xs)
    ly = np.log(np.asarray(y, float))
    lx = np.column_stack([np.log(np.asarray(xs[k], float)) for k in names])
    mu = lx.mean(0) if len(ly) else np.zeros(len(names))
    x = np.column_stack([np.ones(len(ly)), lx - mu])
    if len(ly) <= len(names) or np.linalg.matrix_rank(x) < x.shape[1]:
        have = ", ".join(f"{k} {len(np.unique(lx[:, j]))}" for j, k in enumerate(names))
        raise UserError(f"a hyperparameter law in {', '.join(names)} needs at least "
                        f"{len(names) + 1} points with distinct values of each input, inputs "
                        f"not proportional to each other; it has {len(ly)}, distinct values: "
                        f"{have}")  # fmt: skip
    if np.ptp(ly) == 0:  # a law would be pure rounding noise, intervals that miss it included
        raise UserError(
            f"{output} is {math.exp(ly[0]):.4g} at all {len(ly)} points: the data cannot say how "
            f"its optimum moves (sweep {output} wider or finer around the optimum)"
        )
    beta = np.linalg.lstsq(x, ly, rcond=None)[0]
    out = PowerLaw(float(np.exp(beta[0] - beta[1:] @ mu)), tuple(map(float, beta[1:])), names,
                   n=len(ly), output=output)  # fmt: skip
    if bootstrap > 0:
        idx = np.random.default_rng(seed).integers(0, len(ly), (bootstrap, len(ly)))
        xb, yb = x[idx], ly[idx]
        ok = np.linalg.matrix_rank(xb) == x.shape[1]
        b = np.linalg.solve(np.einsum("bni,bnj->bij", xb[ok], xb[ok]),
                            np.einsum("bni,bn->bi", xb[ok], yb[ok])[..., None])[..., 0]  # fmt: skip
        pct = lambda v: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))  # noqa: E731
        out.intervals = {"coef": pct(np.exp(b[:, 0] - b[:, 1:] @ mu))}
        out.intervals.update({k: pct(b[:, j + 1]) for j, k in enumerate(names)})
    return out


def fit_power_law(
    x: np.ndarray, y: np.ndarray, *, bootstrap: int = 1000, seed: int = 0
) -> PowerLaw:
    """y = coef · x^exponent: OLS of log y on log x (at least two distinct x)."""
    return fit_loglinear({"x": np.asarray(x, float)}, y, bootstrap=bootstrap, seed=seed)


@dataclass
class HyperLaws:
    """One architecture's laws (None where its data cannot support one: `skipped` says why),
    exponents as fitted (B = λ_B·L^(−α_B) has exponent −α_B); `points` the curve method's
    optima, `holdout` the band method's held-out |ln(predicted / observed)| per law."""

    arch: str
    batch_vs_compute: PowerLaw | None
    lr_vs_compute: PowerLaw | None
    batch_vs_loss: PowerLaw | None
    lr_vs_loss: PowerLaw | None
    n_runs: int
    n_kept: int
    extras: dict[str, float] = field(default_factory=dict)
    lr_vs_nd: PowerLaw | None = None
    batch_vs_d: PowerLaw | None = None
    holdout: dict[str, dict[str, float]] = field(default_factory=dict)
    cells: int = 0
    points: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def alpha_B(self) -> float:  # noqa: N802 - symbol of the paper
        return -self.batch_vs_loss.exponent if self.batch_vs_loss else math.nan

    @property
    def alpha_eta(self) -> float:
        return self.lr_vs_loss.exponent if self.lr_vs_loss else math.nan

    def laws(self) -> dict[str, PowerLaw]:
        return {k: v for k in BAND_LAWS if (v := getattr(self, k)) is not None}

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in BAND_LAWS}
        return {**out, "laws": {k: v.to_json() for k, v in self.laws().items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HyperLaws:
        laws = {k: PowerLaw.from_json(v) for k, v in d["laws"].items() if k in BAND_LAWS}
        rest = {k: v for k, v in d.items() if k != "laws"}
        return cls(**rest, **{k: laws.get(k) for k in BAND_LAWS})


def arch_keys(table: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """One name per architecture: 'dense', or 'moe E8 k2 G4' from the experts, top_k and
    granularity columns (so two MoE designs with the same N are never merged)."""
    base = table[Col.ARCH].astype(str) if Col.ARCH in table else np.full(n, "all")
    cols = [table.get(c) for c in (Col.EXPERTS, Col.TOP_K, Col.GRANULARITY)]
    if any(c is None for c in cols):
        return base
    e, k, g = (np.asarray(c, float) for c in cols)
    return np.array(["dense" if (b == "dense" or ei <= 1) else f"{b} E{ei:g} k{ki:g} G{gi:g}"
                     for b, ei, ki, gi in zip(base, e, k, g, strict=True)])  # fmt: skip


def nominal(x: np.ndarray, tol: float = CELL_TOL) -> np.ndarray:
    """Labels grouping values within a factor 1 + tol of their group's smallest value."""
    lx = np.log(np.asarray(x, float))
    labels = np.empty(len(lx), int)
    start, lab = -math.inf, -1
    for i in np.argsort(lx, kind="stable"):
        if lx[i] - start > math.log1p(tol):
            start, lab = lx[i], lab + 1
        labels[i] = lab
    return labels


def cell_ids(*keys: np.ndarray) -> np.ndarray:  # one integer per distinct combination
    return np.unique(np.stack([np.unique(k, return_inverse=True)[1] for k in keys], 1), axis=0,
                     return_inverse=True)[1].ravel()  # fmt: skip


def near_optimal_mask(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, tol: float = NEAR_OPTIMAL_TOL, *,
    arch: np.ndarray | None = None, cell_tol: float = CELL_TOL,
) -> np.ndarray:  # fmt: skip
    """True for runs within `tol` (relative) of the best loss of their cell (arch, nominal N,
    nominal D)."""
    loss = np.asarray(loss, float)
    arch = np.zeros(len(loss)) if arch is None else np.asarray(arch)
    cells = cell_ids(arch, nominal(n, cell_tol), nominal(d, cell_tol))
    best = np.array([loss[cells == c].min() for c in cells])
    return loss <= best * (1.0 + tol)


def _fit_named(data: Mapping[str, np.ndarray], names: Sequence[str], bootstrap: int,
               seed: int) -> tuple[dict[str, PowerLaw], dict[str, str]]:  # fmt: skip
    laws, skipped = {}, {}
    for name in names:
        (out, ins), j = BAND_LAWS[name], list(BAND_LAWS).index(name)
        try:
            laws[name] = fit_loglinear({i: data[i] for i in ins}, data[out], output=out,
                                       bootstrap=bootstrap, seed=seed + j)  # fmt: skip
        except UserError as exc:
            skipped[name] = str(exc)
    return laws, skipped


def _holdout(data: Mapping[str, np.ndarray], cells: np.ndarray, frac: float,
             names: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """Refit without the largest-compute cells; |ln(pred / band centre)| on those cells."""
    order = sorted(set(cells), key=lambda c: data["C"][cells == c].max())
    n_out = math.ceil(frac * len(order))
    if n_out == 0 or len(order) - n_out < 3:
        return {}
    held = np.isin(cells, order[-n_out:])
    laws, _ = _fit_named({k: v[~held] for k, v in data.items()}, names, 0, 0)
    out = {}
    for name, law in laws.items():
        y, ins = BAND_LAWS[name]
        errs = []
        for c in order[-n_out:]:
            sel = cells == c
            centre = math.exp(np.mean(np.log(data[y][sel])))
            errs.append(abs(math.log(float(law(*[np.mean(data[i][sel]) for i in ins])) / centre)))
        out[name] = {"cells": n_out, "mean_abs_log_error": float(np.mean(errs)),
                     "max_abs_log_error": float(np.max(errs))}  # fmt: skip
    return out


def _band(data: Mapping[str, np.ndarray], cells: np.ndarray, keep: np.ndarray, output: str,
          bootstrap: int, seed: int, frac: float) -> tuple[dict, dict, dict, Any]:  # fmt: skip
    """The `output` laws (and their held-out errors), from the cells where `output` takes two
    or more values: a cell whose runs share one value (a ladder run, say) has that value as its
    best whatever the optimum is, and would pull the law towards the default."""
    names = [k for k, (o, _) in BAND_LAWS.items() if o == output]
    swept = [c for c in set(cells) if len(np.unique(data[output][cells == c])) > 1]
    if len(swept) < MIN_SWEPT_CELLS:
        why = (
            f"{output} was swept (two or more values) in {len(swept)} of {len(set(cells))} cells "
            f"(N, D), a law needs {MIN_SWEPT_CELLS}: sweep it at more sizes or tokens (a study's "
            "hyper.sizes, hyper.tokens); one value per cell says nothing of its optimum"
        )
        return {}, dict.fromkeys(names, why), {}, np.zeros_like(keep)
    use = keep & np.isin(cells, swept)
    sub = {k: v[use] for k, v in data.items()}
    laws, skipped = _fit_named(sub, names, bootstrap, seed)
    return laws, skipped, _holdout(sub, cells[use], frac, names), use


def fit_hyper_laws(
    arch: Sequence[str] | np.ndarray, n: np.ndarray, d: np.ndarray, batch: np.ndarray,
    lr: np.ndarray, loss: np.ndarray, *, compute: np.ndarray | None = None,
    tol: float = NEAR_OPTIMAL_TOL, bootstrap: int = 1000, seed: int = 0,
    cell_tol: float = CELL_TOL, holdout_frac: float = HOLDOUT_FRAC,
) -> dict[str, HyperLaws]:  # fmt: skip
    """Per-architecture laws from a sweep's final losses (one row per run): the near-optimal
    band of each cell where the hyperparameter was swept, regressed in compute, in (N, D) and in
    loss. `compute` defaults to 6·N·D; batch sizes stay in the unit given."""
    arch = np.asarray(arch).astype(str)
    n, d, batch, lr, loss = (np.asarray(a, float) for a in (n, d, batch, lr, loss))
    c = 6.0 * n * d if compute is None else np.asarray(compute, float)
    for name, arr in (("N", n), ("D", d), ("C", c), ("batch", batch), ("lr", lr), ("loss", loss)):
        if len(bad := np.flatnonzero(~np.isfinite(arr) | (arr <= 0))):
            raise UserError(f"column {name} must be finite and > 0; row {int(bad[0]) + 1} is not")
    if not 0 <= holdout_frac < 1:  # a negative fraction held out no cell, and then crashed
        raise UserError(f"holdout_frac (--holdout-frac) must be in [0, 1), got {holdout_frac}")
    out: dict[str, HyperLaws] = {}
    for a in sorted(set(arch)):
        sel = arch == a
        data = dict(N=n[sel], D=d[sel], C=c[sel], L=loss[sel], batch=batch[sel], lr=lr[sel])
        keep = near_optimal_mask(data["N"], data["D"], data["L"], tol, cell_tol=cell_tol)
        cells = cell_ids(nominal(data["N"], cell_tol), nominal(data["D"], cell_tol))
        laws, skipped, holdout, used = {}, {}, {}, np.zeros_like(keep)
        for y in ("batch", "lr"):
            fitted, why, errs, use = _band(data, cells, keep, y, bootstrap, seed, holdout_frac)
            laws, skipped, holdout, used = laws | fitted, skipped | why, holdout | errs, used | use
        out[a] = HyperLaws(arch=a, n_runs=int(sel.sum()), n_kept=int(used.sum()),
                           cells=len(set(cells)), holdout=holdout, skipped=skipped,
                           **{k: laws.get(k) for k in BAND_LAWS})  # fmt: skip
    return out


def _first_reach(tokens: np.ndarray, smooth: np.ndarray, level: float) -> float:
    """Tokens at which a non-increasing curve first reaches `level` (log-interpolated)."""
    i = int(np.searchsorted(-smooth, -level))
    if i >= len(smooth):
        return math.inf
    if i == 0 or smooth[i - 1] == smooth[i]:
        return float(tokens[i])
    w = (smooth[i - 1] - level) / (smooth[i - 1] - smooth[i])
    return float(math.exp((1 - w) * math.log(tokens[i - 1]) + w * math.log(tokens[i])))


def _curve_optima(runs: list[dict[str, Any]], hyper: str, levels: int) -> list[dict[str, Any]]:
    """Wang et al.'s heatmap reading for runs that differ only in `hyper`: the tokens each run
    takes to reach each loss level (down to the third-lowest run minimum), and per level the
    value reaching it first, refined by a parabola in log value through its neighbours; `edge`
    when its neighbours do not both reach the level (the optimum is not bracketed)."""
    mins = np.sort([r["smooth"].min() for r in runs])
    hi = min(float(np.interp(0.25 * r["tokens"][-1], r["tokens"], r["smooth"])) for r in runs)
    if len({r[hyper] for r in runs}) < 3 or hi <= mins[2]:
        return []
    lv = np.geomspace(hi, mins[2], levels)
    t = [_first_reach(r["tokens"], r["smooth"], v) for r in runs for v in lv]
    hm = heatmap(np.repeat([r[hyper] for r in runs], levels), np.tile(lv, len(runs)), t, hyper)
    v, out = np.log(hm.values), []
    for row, level in zip(np.log(hm.grid), hm.tokens, strict=True):
        i = int(np.argmin(row))
        edge = i in (0, len(v) - 1) or not np.all(np.isfinite(row[i - 1 : i + 2]))
        best = v[i]
        if not edge:
            a, b, _ = np.polyfit(v[i - 1 : i + 2], row[i - 1 : i + 2], 2)
            best = float(np.clip(-b / (2 * a), v[i - 1], v[i + 1])) if a > 0 else best
        out.append({"hyper": hyper, "loss": float(level), "value": float(math.exp(best)),
                    "tokens": float(math.exp(row[i])), "edge": bool(edge)})  # fmt: skip
    return out


def _curves(table: Mapping[str, np.ndarray], batch_col: str, smooth: int) -> list[dict[str, Any]]:
    """One record per run: its settings and its smoothed, non-increasing training loss."""
    for col in (Col.RUN, batch_col, Col.LR, Metric.TOKENS, Metric.LOSS, "schedule"):
        if col not in table:
            raise UserError(f"a curve table needs column {col!r}; it has {', '.join(table)}")
    sched = table["schedule"].astype(str)
    bad = sorted(set(table[Col.RUN][~np.isin(sched, GOOD_SCHEDULES)].astype(str)))
    if bad:
        raise UserError(
            f"run(s) {', '.join(bad[:5])} use a {sched[~np.isin(sched, GOOD_SCHEDULES)][0]} "
            "schedule: the curve method reads the loss every step gives, and a cosine run's loss "
            "halfway depends on where its schedule ends (its LR has not decayed yet); train "
            "constant-LR or WSD runs (train.schedule: constant | wsd), or use --method band"
        )
    run, arch = table[Col.RUN].astype(str), arch_keys(table, len(table[Col.RUN]))
    size = table.get(Col.PARAMS_ACTIVE, np.zeros(len(run)))
    out = []
    for r in dict.fromkeys(run):
        sel = np.flatnonzero(run == r)
        sel = sel[np.argsort(table[Metric.TOKENS][sel].astype(float))]
        loss = table[Metric.LOSS][sel].astype(float)
        w = max(1, min(smooth, len(loss)))
        ma = np.convolve(np.pad(loss, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w,
                         mode="valid")  # fmt: skip
        out.append({"run": r, "arch": arch[sel[0]], "size": float(size[sel[0]]),
                    "batch": float(table[batch_col][sel[0]]), "lr": float(table[Col.LR][sel[0]]),
                    "tokens": table[Metric.TOKENS][sel].astype(float),
                    "smooth": np.minimum.accumulate(ma)})  # fmt: skip
    return out


def curve_laws(
    table: Mapping[str, np.ndarray], *, batch_col: str = Col.BATCH_SIZE, levels: int = 16,
    smooth: int = 9, bootstrap: int = 1000, seed: int = 0,
) -> dict[str, HyperLaws]:  # fmt: skip
    """Per-architecture B_opt(L) and η_opt(L) from training curves (module doc): runs are
    grouped by (architecture, N, the other hyperparameter); edge optima are kept in `points`
    but not fitted, since the true optimum may lie beyond the sweep."""
    runs = _curves(table, batch_col, smooth)
    out: dict[str, HyperLaws] = {}
    for a in sorted({r["arch"] for r in runs}):
        mine = [r for r in runs if r["arch"] == a]
        points: list[dict[str, Any]] = []
        for hyper, other in (("batch", "lr"), ("lr", "batch")):
            other_lab = nominal(np.array([r[other] for r in mine]))
            for key in sorted({(r["size"], o) for r, o in zip(mine, other_lab, strict=True)}):
                group = [r for r, o in zip(mine, other_lab, strict=True) if (r["size"], o) == key]
                points += _curve_optima(group, hyper, levels)
        laws, skipped = {}, {}
        for j, (name, hyper) in enumerate((("batch_vs_loss", "batch"), ("lr_vs_loss", "lr"))):
            pts = [p for p in points if p["hyper"] == hyper and not p["edge"]]
            try:
                laws[name] = fit_loglinear({"L": np.array([p["loss"] for p in pts])},
                                           np.array([p["value"] for p in pts]), output=hyper,
                                           bootstrap=bootstrap, seed=seed + j)  # fmt: skip
            except UserError as exc:
                skipped[name] = f"{exc} (interior optima of the curves)"
        out[a] = HyperLaws(arch=a, batch_vs_compute=None, lr_vs_compute=None, n_runs=len(mine),
                           n_kept=sum(not p["edge"] for p in points), points=points,
                           skipped=skipped, batch_vs_loss=laws.get("batch_vs_loss"),
                           lr_vs_loss=laws.get("lr_vs_loss"))  # fmt: skip
    return out


def curves_from_runs(dirs: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """The long curve table (one row per logged training step) of run directories."""
    rows = []
    for d in dirs:
        s = read_summary(d)
        for rec in read_metrics(RunPaths(Path(d)).metrics):
            if rec.get(Metric.LOSS) is not None:
                rows.append((s.run, s.arch, s.experts, s.granularity, s.top_k, s.params_active,
                             s.batch_size, s.batch_tokens, s.lr, s.schedule,
                             rec[Metric.TOKENS], rec[Metric.LOSS]))  # fmt: skip
    if not rows:
        raise UserError("the run directories hold no training records (metrics.jsonl)")
    cols = zip(*rows, strict=True)
    return {k: np.array(v) for k, v in zip(CURVE_COLUMNS, cols, strict=True)}


def final_rows(table: Mapping[str, np.ndarray], d_col: str) -> dict[str, np.ndarray]:
    """The last (most tokens) row of each run, when the table has a run column."""
    if Col.RUN not in table:
        return dict(table)
    run, tok = table[Col.RUN].astype(str), numeric_column(table, d_col, "d_col")
    last = {r: i for i in np.argsort(tok, kind="stable") for r in [run[i]]}
    idx = np.array(sorted(last.values()))
    return {k: v[idx] for k, v in table.items()}


def hyper_laws_from_table(
    table: Mapping[str, np.ndarray], *, n_col: str = Col.PARAMS_ACTIVE, d_col: str = Col.TOKENS,
    flops_col: str | None = Col.FLOPS, batch_col: str = Col.BATCH_SIZE, lr_col: str = Col.LR,
    loss_col: str = Col.VAL_LOSS, bootstrap: int = 1000, seed: int = 0, **kw: Any,
) -> dict[str, HyperLaws]:  # fmt: skip
    """`fit_hyper_laws` on a results table, one row per run (its last), architectures named by
    `arch_keys`. Compute is `flops_col` when the table has it, else 6·N·D."""
    t = final_rows(table, d_col)
    n = numeric_column(t, n_col, "n_col")
    c = numeric_column(t, flops_col, "flops_col") if flops_col in t else None
    return fit_hyper_laws(
        arch_keys(t, len(n)), n, numeric_column(t, d_col, "d_col"),
        numeric_column(t, batch_col, "batch_col"), numeric_column(t, lr_col, "lr_col"),
        numeric_column(t, loss_col, "loss_col"), compute=c, bootstrap=bootstrap, seed=seed, **kw,
    )  # fmt: skip
