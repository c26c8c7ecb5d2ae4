"""Fitting a scaling law to points or to a results table, with hold-out and bootstrap.

`fit_law` validates the points, fits (see `moescale.laws.problem` for the objectives and the
optimisers), refits without the largest-compute points to measure extrapolation error, and
bootstraps. The bootstrap resamples whole runs (groups) when a group id is given, else rows;
each draw is warm started from the full-data optimum (no grid), and draws run in worker
processes, logging their progress; a draw that fails or degenerates is counted, never raised.
What the data cannot identify becomes warnings (`result.diagnose`). `fit_table` does the same
from a results table's columns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from moescale.errors import UserError
from moescale.fmt import count, duration, plural
from moescale.laws.forms import LawForm, form_from_spec, form_spec, get_form
from moescale.laws.problem import LOSSES, METHODS, Problem
from moescale.laws.result import FLOPS_CONVENTION, MIN_BOOT_UNITS, FitResult, diagnose, selection
from moescale.laws.table import TableOptions, load_inputs

log = logging.getLogger(__name__)
PROGRESS_EVERY = 5.0  # seconds between the bootstrap's progress lines


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
    convention: str = FLOPS_CONVENTION

    def take(self, idx: np.ndarray) -> _Points:
        g = None if self.groups is None else self.groups[idx]
        x = {k: v[idx] for k, v in self.x.items()}
        return _Points(x, self.y[idx], self.w[idx], self.c[idx], g, self.convention)

    def compute_range(self) -> tuple[float, float] | None:
        """[min C, max C] of the points; None when their compute is unknown."""
        return None if not np.all(self.c > 0) else (float(self.c.min()), float(self.c.max()))


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
) -> list[tuple[str, np.ndarray | None]]:
    """Refit on resampled groups, one draw per seed; warm started from the full-data optimum.
    Each draw is ("ok", v), ("degenerate", v) or ("failed", None). Runs in a worker process,
    so BLAS is limited to one thread here too."""
    with single_threaded_blas():
        form = form_from_spec(spec)
        fitter = _Fitter(form, method, loss, delta)
        full = Problem(form, x, y, w, loss, delta)
        uniq, inv = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
        out: list[tuple[str, np.ndarray | None]] = []
        for s in seeds:
            rng = np.random.default_rng(s)
            idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
            try:
                with np.errstate(all="ignore"):
                    v, _ = fitter.vector({k: a[idx] for k, a in x.items()}, y[idx], w[idx], start)
            except Exception:  # one bad resample never ends the bootstrap; it is counted
                out.append(("failed", None))
                continue
            if not np.all(np.isfinite(v)):
                out.append(("failed", None))
            else:
                out.append(("degenerate" if full.degenerate(v) else "ok", v))
        return out


@dataclass
class Draws:
    """Bootstrap refits, in the law's `linear + nonlinear` order: `params` the usable draws,
    `fitted` those and the degenerate ones (a zero exponent or coefficient: valid fits of
    their resample, so parameter intervals use them, but N_opt and the like would divide by
    zero), and how many of `requested` failed or were degenerate."""

    params: np.ndarray
    fitted: np.ndarray | None = None
    requested: int = 0
    failed: int = 0
    degenerate: int = 0


class _Progress:
    """A log line every few seconds while draws complete (bootstraps take minutes)."""

    def __init__(self, total: int) -> None:
        self.total, self.every, self.done = total, PROGRESS_EVERY, 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            left = (now - self.start) / self.done * (self.total - self.done)
            log.info("bootstrap: %s of %s draws, about %s left", count(self.done),
                     count(self.total), duration(left))  # fmt: skip
            self.last = now


def run_bootstrap(
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
) -> Draws:
    """`draws` group-resampled refits, in seed order whatever the number of workers; failed
    and degenerate draws are counted, never raised."""
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(draws)]
    xd = {k: np.asarray(x[k], float) for k in form.inputs}
    args = (form_spec(form), xd, np.asarray(y, float), np.asarray(w, float), g, method, loss)
    args += (delta, start)
    workers = max(1, min(workers, os.cpu_count() or 1, draws))
    size = max(1, min(25, draws // (4 * workers)))
    chunks = [seeds[i : i + size] for i in range(0, draws, size)]
    results: list[list[tuple[str, np.ndarray | None]]] = [[] for _ in chunks]
    progress = _Progress(draws)
    log.info("bootstrap: %s draws on %s", count(draws), plural(workers, "process", "processes"))
    if workers == 1 or draws < 20:
        for i, chunk in enumerate(chunks):
            results[i] = _bootstrap_chunk(*args, chunk)
            progress.add(len(chunk))
    else:
        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_bootstrap_chunk, *args, c): i for i, c in enumerate(chunks)}
                for f in as_completed(futures):
                    results[futures[f]] = f.result()
                    progress.add(len(chunks[futures[f]]))
        except (BrokenProcessPool, OSError) as exc:
            why = f"bootstrap worker processes failed ({exc})"
            raise UserError(f"{why}; rerun with --workers 1") from None
    flat = [r for chunk in results for r in chunk]
    ok = [v for status, v in flat if status == "ok"]
    fitted = [v for status, v in flat if status != "failed"]
    out = Draws(np.array(ok, float).reshape(len(ok), len(form.params)), requested=draws)
    out.fitted = np.array(fitted, float).reshape(len(fitted), len(form.params))
    out.failed = sum(status == "failed" for status, _ in flat)
    out.degenerate = sum(status == "degenerate" for status, _ in flat)
    took = duration(time.monotonic() - progress.start)
    log.info("bootstrap: %s usable of %s in %s (%d failed, %d degenerate)", count(len(ok)),
             count(draws), took, out.failed, out.degenerate)  # fmt: skip
    return out


def bootstrap(*args: Any, **options: Any) -> np.ndarray:
    """The usable parameter vectors (draws_ok, n_params) of `run_bootstrap` (same arguments)."""
    return run_bootstrap(*args, **options).params


def _errors(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    r = pred - y
    return {
        "mae": float(np.mean(np.abs(r))),
        "rmse": float(np.sqrt(np.mean(r * r))),
        "max_abs": float(np.max(np.abs(r))),
    }


def check_options(
    method: str, loss: str | None, *, draws: int, holdout_frac: float, drop_outliers: int,
    seed: int, workers: int, delta: float,
) -> None:  # fmt: skip
    """A one-line UserError for any option out of range."""
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    if loss is not None and loss not in LOSSES:
        raise UserError(f"unknown --loss {loss!r}; use one of {', '.join(LOSSES)}")
    for flag, ok, value, want in (
        ("--bootstrap", draws >= 0, draws, ">= 0"),
        ("--holdout-frac", 0 <= holdout_frac < 1, holdout_frac, "in [0, 1)"),
        ("--drop-outliers", drop_outliers >= 0, drop_outliers, ">= 0"),
        ("--seed", seed >= 0, seed, ">= 0"),
        ("--workers", workers >= 1, workers, ">= 1"),
        ("--huber-delta", delta > 0 and math.isfinite(delta), delta, "a positive number"),
    ):
        if not ok:
            raise UserError(f"{flag} must be {want}, got {value}")


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
    law's grid is larger). What the data cannot identify is logged and recorded (`warnings`,
    `unidentified`), not raised (`diagnose`).
    """
    form = get_form(law)
    loss = loss or ("huber" if method == "epoch" else "squared")
    check_options(
        method, loss, draws=bootstrap_draws, holdout_frac=holdout_frac, seed=seed,
        drop_outliers=drop_outliers, workers=workers, delta=delta,
    )  # fmt: skip
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
            f"law {form.name} has {plural(len(form.params), 'parameter')} but only "
            f"{plural(n, 'point')} remain; add points or choose a law with fewer parameters"
        )
    fitter = _Fitter(form, method, loss, delta)
    with single_threaded_blas():
        v, obj = fitter.vector(pts.x, pts.y, pts.w, n_starts=n_starts)
        params = fitter.named(v)
        ins = _errors(form.predict(pts.x, params), pts.y)
        holdout = _holdout(fitter, pts, holdout_frac, n_starts or 50)
        boot = Draws(np.empty((0, len(form.params))))
        units = n if pts.groups is None else len(np.unique(pts.groups))  # what draws resample
        few = units if bootstrap_draws > 0 and units < MIN_BOOT_UNITS else 0
        if bootstrap_draws > 0 and not few:
            boot = run_bootstrap(
                form, pts.x, pts.y, pts.w, v, draws=bootstrap_draws, groups=pts.groups,
                method=method, loss=loss, delta=delta, seed=seed, workers=workers,
            )  # fmt: skip
    samples = [fitter.named(row) for row in boot.params]
    fitted = [fitter.named(row) for row in (boot.params if boot.fitted is None else boot.fitted)]
    prob = Problem(form, pts.x, pts.y, pts.w, loss, delta)
    counts = (boot.requested, boot.failed, boot.degenerate)
    warnings, unidentified, intervals = diagnose(prob, v, fitted, *counts, few_units=few)
    return FitResult(
        law=form.name, expression=form.expression, params=params, objective=float(obj),
        method=method, loss=loss, n_points=n, in_sample={"mae": ins["mae"], "rmse": ins["rmse"]},
        holdout=holdout, intervals=intervals, bootstrap_params=samples, dropped=dropped,
        inputs=form.inputs, spec=form_spec(form), warnings=warnings, unidentified=unidentified,
        bootstrap_requested=boot.requested, bootstrap_failed=boot.failed,
        bootstrap_degenerate=boot.degenerate, compute_range=pts.compute_range(),
        huber_delta=delta if loss == "huber" else None, flops_convention=pts.convention,
    )  # fmt: skip


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
    convention = "C given"
    if compute is not None:
        c = np.asarray(compute, float)
    elif "C" in xa:
        c = xa["C"]
    elif "N" in xa and "D" in xa:
        c, convention = 6.0 * xa["N"] * xa["D"], FLOPS_CONVENTION
    elif holdout_frac > 0:
        raise UserError("the hold-out ranks points by compute: pass compute= (or inputs N and D)")
    else:
        c, convention = np.zeros(n_all), "C unknown"
    if len(c) != n_all:
        raise UserError(f"compute has {len(c)} values but loss has {n_all}")
    for name, arr in [*xa.items(), ("loss", y), ("weights", w)]:
        if len(arr) != n_all:
            raise UserError(f"input {name} has {len(arr)} values but loss has {n_all}")
        bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
        if len(bad):
            raise UserError(
                f"{name} must be finite and > 0; row {int(bad[0]) + 1} (1-based) is "
                f"{float(arr[bad[0]])}"
            )
    for extra in form.extras:
        # an exponent on a constant input is not identifiable (it folds into a coefficient)
        q = extra.symbol
        if (form.terms is not None or not form.builtin) and len(np.unique(xa[q])) < 2:
            raise UserError(
                f"law {form.name} needs at least two distinct values of {q}, the "
                f"{extra.meaning} (only {xa[q][0]:g} found); fit 'chinchilla' for one architecture"
            )
    return _Points(xa, y, w, c, None if groups is None else np.asarray(groups), convention)


def _holdout(
    fitter: _Fitter, pts: _Points, holdout_frac: float, n_starts: int
) -> dict[str, float | int | None]:
    """Refit without the largest-compute `holdout_frac` of the points (rounded up to whole
    compute levels, so no budget is split by row order) and predict them."""
    n = len(pts.y)
    n_hold = int(math.ceil(holdout_frac * n)) if holdout_frac > 0 else 0
    if not n_hold or n - n_hold < len(fitter.form.params):
        return {"mae": None, "max_abs": None, "n": 0}
    # whole compute levels: every point that ties with the threshold is held out with it
    threshold = np.sort(pts.c)[n - n_hold]
    test = pts.c >= threshold * (1 - 1e-9)
    n_hold = int(test.sum())
    if n - n_hold < len(fitter.form.params):
        return {"mae": None, "max_abs": None, "n": 0}
    train, held = pts.take(~test), pts.take(test)
    vh, _ = fitter.vector(train.x, train.y, train.w, n_starts=n_starts)
    he = _errors(fitter.form.predict(held.x, fitter.named(vh)), held.y)
    return {"mae": he["mae"], "max_abs": he["max_abs"], "n": n_hold}


def fit_table(
    path: str | Path,
    law: str | LawForm = "chinchilla",
    *,
    columns: Mapping[str, str | None] | None = None,
    options: TableOptions | None = None,
    method: str = "vp",
    loss: str | None = None,
    delta: float = 1e-3,
    drop_outliers: int = 0,
    bootstrap_draws: int = 1000,
    holdout_frac: float = 0.1,
    seed: int = 0,
    workers: int = 2,
) -> FitResult:
    """`fit_law` on a results table (CSV or Parquet). `columns` overrides the column of an
    input (keys N, D, C, loss, run, and the extra inputs E, G; see `table.fit_inputs`);
    `options` adds derived columns, a row filter, best-of per group and N = C / (6 D)."""
    form = get_form(law)
    check_options(
        method, loss, draws=bootstrap_draws, holdout_frac=holdout_frac, seed=seed,
        drop_outliers=drop_outliers, workers=workers, delta=delta,
    )  # fmt: skip
    options = options or TableOptions()
    if columns is not None:
        options = dataclasses.replace(options, columns=columns)
    inp = load_inputs(path, form, options)
    n_left = len(inp.loss) - drop_outliers
    if n_left < len(form.params):
        left = f", {max(n_left, 0)} after --drop-outliers {drop_outliers}" if drop_outliers else ""
        raise UserError(
            f"law {form.name} has {plural(len(form.params), 'parameter')} but the table gives "
            f"{plural(len(inp.loss), 'point')}{left}; add rows or choose a law with fewer terms"
        )
    res = fit_law(
        form, inp.x, inp.loss, compute=inp.compute, method=method, loss=loss, groups=inp.groups,
        drop_outliers=drop_outliers, bootstrap_draws=bootstrap_draws, holdout_frac=holdout_frac,
        seed=seed, workers=workers, delta=delta,
    )  # fmt: skip
    return dataclasses.replace(
        res, columns=inp.columns, derived=inp.derived, table=str(path), sources=inp.sources,
        flops_convention=inp.convention, selection=selection(options, len(inp.loss)),
        warnings=[*inp.warnings, *res.warnings], design=inp.design,
    )  # fmt: skip
