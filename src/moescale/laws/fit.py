"""Fitting a scaling law to points or to a results table, with hold-out and bootstrap.

`fit_law` validates the points, fits (see `moescale.laws.problem` for the objectives and the
optimisers), refits without the largest-compute points to measure extrapolation error, and
bootstraps. The bootstrap resamples whole runs (groups) when a group id is given, else rows;
each draw is warm started from the full-data optimum (no grid), and draws run in worker
processes. `fit_table` does the same from a results table's columns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from moescale.errors import UserError
from moescale.laws.forms import LawForm, form_from_spec, form_spec, get_form
from moescale.laws.problem import LOSSES, METHODS, Problem
from moescale.laws.result import FitResult
from moescale.laws.table import check_one_tokenizer, fit_inputs, read_table


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run with BLAS on one thread, restoring its thread count afterwards.

    The fits are thousands of tiny BLAS calls (inside L-BFGS-B and NNLS); on a busy 2-core
    machine OpenBLAS's thread hand-offs made each call ~50x slower than the work itself.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class _Fitter:
    """How to fit (the law and the options every refit shares)."""

    form: LawForm
    method: str
    loss: str
    delta: float

    def vector(
        self,
        x: Mapping[str, np.ndarray],
        y: np.ndarray,
        w: np.ndarray,
        start: np.ndarray | None = None,
        n_starts: int | None = None,
    ) -> tuple[np.ndarray, float]:
        """Parameter vector [linear..., nonlinear...] and objective."""
        prob = Problem(self.form, x, y, w, self.loss, self.delta)
        v = prob.fit(self.method, start, n_starts)
        return v, prob.objective_of(v)

    def named(self, v: np.ndarray) -> dict[str, float]:
        order = self.form.linear + self.form.nonlinear
        return {q: float(v[order.index(q)]) for q in self.form.params}


@dataclass
class _Points:
    """Validated points: inputs, losses, weights, compute (for the hold-out), run ids."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    w: np.ndarray
    c: np.ndarray
    groups: np.ndarray | None

    def take(self, idx: np.ndarray) -> _Points:
        g = None if self.groups is None else self.groups[idx]
        x = {k: v[idx] for k, v in self.x.items()}
        return _Points(x, self.y[idx], self.w[idx], self.c[idx], g)


def _bootstrap_chunk(
    spec: dict[str, object],
    x: dict[str, np.ndarray],
    y: np.ndarray,
    w: np.ndarray,
    groups: np.ndarray,
    method: str,
    loss: str,
    delta: float,
    start: np.ndarray,
    seeds: list[int],
) -> list[np.ndarray | None]:
    """Refit on resampled groups, one draw per seed; warm started from the full-data optimum.
    Runs in a worker process, so BLAS is limited to one thread here too."""
    with single_threaded_blas():
        fitter = _Fitter(form_from_spec(spec), method, loss, delta)
        uniq, inv = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
        out: list[np.ndarray | None] = []
        for s in seeds:
            rng = np.random.default_rng(s)
            pick = rng.integers(0, len(uniq), len(uniq))
            idx = np.concatenate([members[g] for g in pick])
            xb = {k: v[idx] for k, v in x.items()}
            try:
                v, _ = fitter.vector(xb, y[idx], w[idx], start=start)
                out.append(v if np.all(np.isfinite(v)) else None)
            except (UserError, ValueError, np.linalg.LinAlgError, FloatingPointError):
                out.append(None)
        return out


def bootstrap(
    form: LawForm,
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    w: np.ndarray,
    start: np.ndarray,
    *,
    draws: int = 1000,
    groups: np.ndarray | None = None,
    method: str = "vp",
    loss: str = "squared",
    delta: float = 1e-3,
    seed: int = 0,
    workers: int = 2,
) -> np.ndarray:
    """Parameter vectors (draws_ok, n_params) from `draws` group-resampled refits."""
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(draws)]
    spec = form_spec(form)
    xd = {k: np.asarray(x[k], float) for k in form.inputs}
    args = (spec, xd, np.asarray(y, float), np.asarray(w, float), g, method, loss, delta, start)
    workers = max(1, min(workers, os.cpu_count() or 1, draws))
    if workers == 1 or draws < 20:
        results = _bootstrap_chunk(*args, seeds)
    else:
        chunks = [seeds[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_bootstrap_chunk, *args, c) for c in chunks]
            results = [r for f in futures for r in f.result()]
    ok = [r for r in results if r is not None]
    return np.array(ok, float).reshape(len(ok), len(form.params))


def _errors(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    r = pred - y
    return {
        "mae": float(np.mean(np.abs(r))),
        "rmse": float(np.sqrt(np.mean(r * r))),
        "max_abs": float(np.max(np.abs(r))),
    }


def fit_law(
    law: str | LawForm,
    x: Mapping[str, Sequence[float] | np.ndarray],
    loss_values: Sequence[float] | np.ndarray,
    *,
    compute: Sequence[float] | np.ndarray | None = None,
    method: str = "vp",
    loss: str | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    groups: Sequence[object] | np.ndarray | None = None,
    drop_outliers: int = 0,
    bootstrap_draws: int = 1000,
    holdout_frac: float = 0.1,
    seed: int = 0,
    workers: int = 2,
    delta: float = 1e-3,
    n_starts: int | None = None,
) -> FitResult:
    """Fit a scaling law to points (inputs `x`, observed `loss_values`).

    `compute` ranks points for the hold-out (default 6·N·D). `loss` defaults to "squared" for
    vp and "huber" for epoch. `drop_outliers=k` removes the k rows with the highest loss first
    (Besiroglu et al. 2024 drop 5 of Epoch's Chinchilla points). `groups` (run ids) makes the
    bootstrap resample whole runs. `n_starts` limits the epoch grid to its best starts by initial
    objective (None: all 4,500 starts of Besiroglu et al. for chinchilla; the best 200 when a
    law's grid is larger).
    """
    form = get_form(law)
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    loss = loss or ("huber" if method == "epoch" else "squared")
    if loss not in LOSSES:
        raise UserError(f"unknown --loss {loss!r}; use one of {', '.join(LOSSES)}")
    pts = _points(form, x, loss_values, compute, weights, groups, holdout_frac)
    dropped: list[int] = []
    if drop_outliers:
        dropped = sorted(int(i) for i in np.argsort(-pts.y, kind="stable")[:drop_outliers])
        keep = np.ones(len(pts.y), bool)
        keep[dropped] = False
        pts = pts.take(keep)
    n = len(pts.y)
    if n < len(form.params):
        raise UserError(
            f"law {form.name} has {len(form.params)} parameters but only {n} points remain; "
            "add points or choose a law with fewer parameters"
        )
    fitter = _Fitter(form, method, loss, delta)
    with single_threaded_blas():
        v, obj = fitter.vector(pts.x, pts.y, pts.w, n_starts=n_starts)
        params = fitter.named(v)
        ins = _errors(form.predict(pts.x, params), pts.y)
        holdout = _holdout(fitter, pts, holdout_frac, n_starts or 50)
        samples: list[dict[str, float]] = []
        if bootstrap_draws > 0:
            bs = bootstrap(
                form, pts.x, pts.y, pts.w, v, draws=bootstrap_draws, groups=pts.groups,
                method=method, loss=loss, delta=delta, seed=seed, workers=workers,
            )  # fmt: skip
            samples = [fitter.named(row) for row in bs]
    return FitResult(
        law=form.name,
        expression=form.expression,
        params=params,
        objective=float(obj),
        method=method,
        loss=loss,
        n_points=n,
        in_sample={"mae": ins["mae"], "rmse": ins["rmse"]},
        holdout=holdout,
        intervals=_intervals(form, samples),
        bootstrap_params=samples,
        dropped=dropped,
        inputs=form.inputs,
        spec=form_spec(form),
    )


def _points(
    form: LawForm,
    x: Mapping[str, Sequence[float] | np.ndarray],
    loss_values: Sequence[float] | np.ndarray,
    compute: Sequence[float] | np.ndarray | None,
    weights: Sequence[float] | np.ndarray | None,
    groups: Sequence[object] | np.ndarray | None,
    holdout_frac: float,
) -> _Points:
    """The points as arrays, or a UserError naming the input and the first bad row."""
    missing = [k for k in form.inputs if k not in x]
    if missing:
        raise UserError(f"law {form.name} needs input(s) {', '.join(missing)}")
    xa = {k: np.asarray(x[k], float) for k in form.inputs}
    y = np.asarray(loss_values, float)
    n_all = len(y)
    w = np.ones(n_all) if weights is None else np.asarray(weights, float)
    if compute is not None:
        c = np.asarray(compute, float)
    elif "C" in xa:
        c = xa["C"]
    elif "N" in xa and "D" in xa:
        c = 6.0 * xa["N"] * xa["D"]
    elif holdout_frac > 0:
        raise UserError("the hold-out ranks points by compute: pass compute= (or inputs N and D)")
    else:
        c = np.zeros(n_all)
    if len(c) != n_all:
        raise UserError(f"compute has {len(c)} values but loss has {n_all}")
    for name, arr in [*xa.items(), ("loss", y), ("weights", w)]:
        if len(arr) != n_all:
            raise UserError(f"input {name} has {len(arr)} values but loss has {n_all}")
        bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
        if len(bad):
            raise UserError(
                f"{name} must be finite and > 0; row {int(bad[0]) + 1} (1-based) is {arr[bad[0]]}"
            )
    for extra in form.extras:
        # an exponent on a constant input is not identifiable (it folds into a coefficient)
        q = extra.symbol
        if form.terms is not None and len(np.unique(xa[q])) < 2:
            raise UserError(
                f"law {form.name} needs at least two distinct values of {q} "
                f"(only {xa[q][0]:g} found); fit 'chinchilla' for a single architecture"
            )
    return _Points(xa, y, w, c, None if groups is None else np.asarray(groups))


def _holdout(
    fitter: _Fitter, pts: _Points, holdout_frac: float, n_starts: int
) -> dict[str, float | int | None]:
    """Refit without the largest-compute `holdout_frac` of the points and predict them."""
    n = len(pts.y)
    n_hold = int(math.ceil(holdout_frac * n)) if holdout_frac > 0 else 0
    if not n_hold or n - n_hold < len(fitter.form.params):
        return {"mae": None, "max_abs": None, "n": 0}
    idx = np.argsort(pts.c, kind="stable")
    train, test = pts.take(idx[: n - n_hold]), pts.take(idx[n - n_hold :])
    vh, _ = fitter.vector(train.x, train.y, train.w, n_starts=n_starts)
    he = _errors(fitter.form.predict(test.x, fitter.named(vh)), test.y)
    return {"mae": he["mae"], "max_abs": he["max_abs"], "n": int(n_hold)}


def _intervals(form: LawForm, samples: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of each parameter over the bootstrap draws."""
    if not samples:
        return {}
    out = {}
    for q in form.params:
        col = np.array([s[q] for s in samples])
        out[q] = (float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5)))
    return out


def fit_table(
    path: str | Path,
    law: str | LawForm = "chinchilla",
    *,
    columns: Mapping[str, str | None] | None = None,
    method: str = "vp",
    loss: str | None = None,
    drop_outliers: int = 0,
    bootstrap_draws: int = 1000,
    holdout_frac: float = 0.1,
    seed: int = 0,
    workers: int = 2,
) -> FitResult:
    """`fit_law` on a results table (CSV or Parquet). `columns` overrides the column of an
    input (keys N, D, C, loss, run, and the extra inputs E, G; see `table.fit_inputs`)."""
    form = get_form(law)
    if bootstrap_draws < 0:
        raise UserError(f"--bootstrap must be >= 0, got {bootstrap_draws}")
    if not 0 <= holdout_frac < 1:
        raise UserError(f"--holdout-frac must be in [0, 1), got {holdout_frac}")
    if drop_outliers < 0:
        raise UserError(f"--drop-outliers must be >= 0, got {drop_outliers}")
    table = read_table(path)
    check_one_tokenizer(table)
    inp = fit_inputs(table, form, columns or {})
    n_left = len(inp.loss) - drop_outliers
    if n_left < len(form.params):
        raise UserError(
            f"law {form.name} has {len(form.params)} parameters but the table gives {n_left} "
            "points; add rows or choose a law with fewer parameters"
        )
    res = fit_law(
        form, inp.x, inp.loss, compute=inp.compute, method=method, loss=loss, groups=inp.groups,
        drop_outliers=drop_outliers, bootstrap_draws=bootstrap_draws, holdout_frac=holdout_frac,
        seed=seed, workers=workers,
    )  # fmt: skip
    return dataclasses.replace(res, columns=inp.columns, derived=inp.derived, table=str(path))
