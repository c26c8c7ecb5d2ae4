"""Fitting scaling laws: variable projection, Huber on log L, the Epoch grid, bootstrap, hold-out.

Objectives (all summed over points, with optional weights w_i):
- ``loss="squared"``: Σ w_i (L̂_i − L_i)², squared error of the loss itself. This is the
  convention that reproduces science.md §4's residual sum of squares 0.062414 on the 217 Epoch
  points with C < 1e21 (squared error of log L does not give that number).
- ``loss="huber"``: Σ w_i huber_δ(log L̂_i − log L_i), δ = 1e-3 (Hoffmann / Epoch).

Methods:
- ``method="vp"`` (default), variable projection: for fixed exponents θ the law is linear in its
  coefficients, which NNLS solves exactly; only θ is searched, first on a vectorised coarse grid
  and then by L-BFGS-B with the analytic VP gradient (envelope theorem). For Huber, a few
  iteratively reweighted VP fits (Huber weights on the log residual, which is ≈ relative error of
  L) find the basin, then all parameters are polished on the exact Huber objective.
- ``method="epoch"``: the Chinchilla/Epoch log-sum-exp parameterisation
  log L̂ = LSE_j(log coef_j − θ·log x), Huber on log L, L-BFGS-B from every point of Epoch's
  grid of starts (or the best `n_starts` of them), keeping the best.
Forms with no linear coefficient (kaplan) use plain nonlinear least squares in log-scaled
parameters from a grid, whatever the method.

Bootstrap resamples whole runs (groups) when a group id is given, else rows; each draw is warm
started from the full-data optimum (no grid), and draws run in worker processes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, nnls
from threadpoolctl import threadpool_limits

from moescale.errors import UserError
from moescale.laws.forms import BUILTIN, LawForm, custom, get_form

METHODS = ("vp", "epoch")
LOSSES = ("squared", "huber")
EPOCH_GRID = {
    "const": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "coef": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "exponent": (0.0, 0.5, 1.0, 1.5, 2.0),
}


@dataclass
class FitResult:
    """A fitted law: values, objective, errors, and bootstrap uncertainty.

    `params` name -> value; `intervals` name -> (lo, hi) 95 % percentile bootstrap intervals
    (empty without bootstrap); `bootstrap_params` one dict per successful draw, so downstream
    quantities (N_opt, predicted loss) get intervals too; `in_sample` {mae, rmse} of L on the
    fitted points; `holdout` {mae, max_abs, n}: refit without the largest-compute points and
    predict them.
    """

    law: str
    expression: str
    params: dict[str, float]
    objective: float
    method: str
    loss: str
    n_points: int
    in_sample: dict[str, float]
    holdout: dict[str, float | int | None]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    bootstrap_params: list[dict[str, float]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    inputs: tuple[str, ...] = ()
    spec: dict[str, object] = field(default_factory=dict)

    def form(self) -> LawForm:
        """The law form this result was fitted with (rebuilt from its spec)."""
        return form_from_spec(self.spec)

    def predict(self, x: Mapping[str, np.ndarray]) -> np.ndarray:
        """Loss predicted by the fitted parameters at inputs `x`."""
        return self.form().predict(x, self.params)


def form_spec(form: LawForm) -> dict[str, object]:
    """A picklable / JSON-able description from which `form_from_spec` rebuilds the form."""
    if form.name in BUILTIN and form.terms is not None or form.name == "kaplan":
        return {"name": form.name}
    return {
        "name": form.name,
        "expression": form.expression,
        "inputs": list(form.inputs),
        "linear": list(form.linear),
        "grid": {k: list(v) for k, v in form.grid.items()},
        "bounds": {k: list(v) for k, v in form.bounds.items()},
    }


def form_from_spec(spec: Mapping[str, object]) -> LawForm:
    name = str(spec["name"])
    if "expression" not in spec:
        return get_form(name)
    return custom(
        str(spec["expression"]),
        inputs=tuple(spec["inputs"]),  # type: ignore[arg-type]
        linear=tuple(spec["linear"]),  # type: ignore[arg-type]
        grid={k: tuple(v) for k, v in dict(spec["grid"]).items()},  # type: ignore[call-overload]
        bounds={k: tuple(v) for k, v in dict(spec["bounds"]).items()},  # type: ignore[call-overload]
        name=name,
    )


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run with BLAS on one thread, restoring its thread count afterwards.

    The fits are thousands of tiny BLAS calls (inside L-BFGS-B and NNLS); on a busy 2-core
    machine OpenBLAS's thread hand-offs made each call ~50x slower than the work itself.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative."""
    a = np.abs(r)
    quad = a <= delta
    val = np.where(quad, 0.5 * r * r, delta * (a - 0.5 * delta))
    der = np.where(quad, r, delta * np.sign(r))
    return val, der


class _Problem:
    """One data set and one law: objectives, gradients and the local optimisers."""

    def __init__(
        self,
        form: LawForm,
        x: Mapping[str, np.ndarray],
        y: np.ndarray,
        w: np.ndarray,
        loss: str,
        delta: float,
    ) -> None:
        self.form = form
        self.x = {k: np.asarray(x[k], float) for k in form.inputs}
        self.y = np.asarray(y, float)
        self.logy = np.log(self.y)
        self.w = np.asarray(w, float)
        self.sw = np.sqrt(self.w)
        self.loss = loss
        self.delta = delta
        self.m = form.log_design(self.x)  # (n, p, k) or None
        self.p = len(form.linear)
        self.k = len(form.nonlinear)
        self.lo = np.array([form.bounds[q][0] for q in form.nonlinear])
        self.hi = np.array([form.bounds[q][1] for q in form.nonlinear])

    # ---------- variable projection (squared error of L, optionally reweighted) ----------
    def _nnls(
        self, phi: np.ndarray, target: np.ndarray, sw: np.ndarray
    ) -> tuple[np.ndarray, float]:
        a = phi * sw[:, None]
        scale = np.linalg.norm(a, axis=0)
        scale[~(scale > 0) | ~np.isfinite(scale)] = 1.0
        try:
            coef, rnorm = nnls(a / scale, target * sw)
        except (RuntimeError, ValueError):
            return np.zeros(phi.shape[1]), 1e30
        return coef / scale, rnorm * rnorm

    def vp(
        self, theta: np.ndarray, w: np.ndarray | None = None
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """min over coefficients ≥ 0 of the weighted RSS at exponents theta: (rss, grad, coef)."""
        sw = self.sw if w is None else np.sqrt(w)
        phi, off = self.form.basis(self.x, theta[None, :])
        phi, off = phi[0], off[0]
        if not np.all(np.isfinite(phi)) or not np.all(np.isfinite(off)):
            return 1e30, np.zeros_like(theta), np.zeros(self.p)
        coef, rss = self._nnls(phi, self.y - off, sw)
        grad = np.zeros_like(theta)
        if self.m is not None:
            r = phi @ coef - self.y
            # d(phi_ij)/d(theta_k) = -M_ijk phi_ij; envelope theorem for the coefficients
            grad = -2.0 * np.einsum("i,ij,ijk->k", sw * sw * r, phi * coef, self.m)
        return rss, grad, coef

    def grid_thetas(self) -> np.ndarray:
        axes = [np.asarray(self.form.grid[q], float) for q in self.form.nonlinear]
        return np.array(list(itertools.product(*axes)), float)

    def vp_grid(self, w: np.ndarray | None = None, top: int = 3) -> list[np.ndarray]:
        """Best `top` exponent vectors of the coarse grid by VP objective (vectorised)."""
        thetas = self.grid_thetas()
        sw = self.sw if w is None else np.sqrt(w)
        phi, off = self.form.basis(self.x, thetas)
        a = phi * sw[None, :, None]
        t = (self.y[None, :] - off) * sw[None, :]
        scale = np.linalg.norm(a, axis=1, keepdims=True)
        good = np.all(np.isfinite(scale), axis=(1, 2)) & np.all(scale > 0, axis=(1, 2))
        scale = np.where(good[:, None, None], scale, 1.0)
        a = np.where(good[:, None, None], a / scale, 0.0)
        t = np.where(good[:, None], t, 0.0)
        ata = np.einsum("kni,knj->kij", a, a) + 1e-12 * np.eye(self.p)
        atb = np.einsum("kni,kn->ki", a, t)
        try:
            coef = np.linalg.solve(ata, atb[..., None])[..., 0]
        except np.linalg.LinAlgError:
            coef = np.full(atb.shape, -1.0)
        rss = np.sum((np.einsum("kni,ki->kn", a, coef) - t) ** 2, axis=1)
        rss[~good] = np.inf
        neg = np.any(coef < 0, axis=1) & good
        for idx in np.flatnonzero(neg):
            _, rss[idx] = self._nnls(a[idx], t[idx], np.ones(len(self.y)))
        order = np.argsort(rss)[:top]
        return [thetas[i] for i in order if np.isfinite(rss[i])]

    def vp_local(self, theta0: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """L-BFGS-B on the exponents from theta0; returns (theta, rss)."""
        analytic = self.m is not None

        def fun(th: np.ndarray) -> tuple[float, np.ndarray] | float:
            rss, grad, _ = self.vp(th, w)
            return (rss, grad) if analytic else rss

        res = minimize(
            fun,
            np.clip(theta0, self.lo, self.hi),
            jac=analytic,
            method="L-BFGS-B",
            bounds=list(zip(self.lo, self.hi, strict=True)),
            options={"maxiter": 500, "ftol": 1e-15, "gtol": 1e-12},
        )
        return np.asarray(res.x), float(res.fun)

    def vp_fit(
        self, starts: Sequence[np.ndarray] | None, w: np.ndarray | None = None
    ) -> np.ndarray:
        """Best exponent vector from local VP fits at `starts` (grid when None)."""
        if starts is None:
            starts = self.vp_grid(w)
        best_theta, best = None, math.inf
        for s in starts:
            th, f = self.vp_local(np.asarray(s, float), w)
            if f < best:
                best_theta, best = th, f
        if best_theta is None:
            raise UserError(f"law {self.form.name}: no finite fit found; check the data")
        return best_theta

    def params_from_theta(self, theta: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        """Full parameter vector [linear..., nonlinear...] for exponents theta."""
        _, _, coef = self.vp(theta, w)
        return np.concatenate([coef, theta])

    # ---------- full-parameter objectives (Huber on log L; LSE parameterisation) ----------
    def z_from_params(self, v: np.ndarray) -> np.ndarray:
        """Optimiser variables: log of linear coefficients, log of log-scale nonlinear ones."""
        z = v.astype(float).copy()
        z[: self.p] = np.log(np.maximum(v[: self.p], 1e-12))
        for i, q in enumerate(self.form.nonlinear):
            if q in self.form.log_scale:
                z[self.p + i] = np.log(max(v[self.p + i], 1e-300))
        return z

    def params_from_z(self, z: np.ndarray) -> np.ndarray:
        v = z.astype(float).copy()
        v[: self.p] = np.exp(z[: self.p])
        for i, q in enumerate(self.form.nonlinear):
            if q in self.form.log_scale:
                v[self.p + i] = np.exp(z[self.p + i])
        return v

    def z_bounds(self) -> list[tuple[float | None, float | None]]:
        b: list[tuple[float | None, float | None]] = [(None, None)] * self.p
        for q in self.form.nonlinear:
            lo, hi = self.form.bounds[q]
            if q in self.form.log_scale:
                b.append((math.log(max(lo, 1e-300)), math.log(hi)))
            else:
                b.append((lo, hi))
        return b

    def predict_z(self, z: np.ndarray) -> np.ndarray:
        v = self.params_from_z(z)
        return self.form.predict(self.x, dict(zip(self.params_order(), v, strict=True)))

    def params_order(self) -> tuple[str, ...]:
        return self.form.linear + self.form.nonlinear

    def full_objective(self, z: np.ndarray) -> tuple[float, np.ndarray] | float:
        """Objective in z; with an analytic gradient for power-sum laws (LSE form)."""
        if self.m is not None:
            lb, th = z[: self.p], z[self.p :]
            s_ij = lb[None, :] - self.m @ th  # log of each term
            mx = s_ij.max(axis=1, keepdims=True)
            e = np.exp(s_ij - mx)
            tot = e.sum(axis=1, keepdims=True)
            logpred = (mx + np.log(tot))[:, 0]
            soft = e / tot
            if self.loss == "huber":
                val, der = huber(logpred - self.logy, self.delta)
                f = float(np.sum(self.w * val))
                g_log = self.w * der  # d f / d logpred
            else:
                pred = np.exp(logpred)
                r = pred - self.y
                f = float(np.sum(self.w * r * r))
                g_log = 2.0 * self.w * r * pred
            gsoft = g_log[:, None] * soft
            grad = np.concatenate([gsoft.sum(axis=0), -np.einsum("ij,ijk->k", gsoft, self.m)])
            if not np.isfinite(f):
                return 1e30, np.zeros_like(z)
            return f, grad
        if self.form.name == "kaplan" and self.form.params == ("N_c", "D_c", "alpha_N", "alpha_D"):
            return self._kaplan_objective(z)
        with np.errstate(all="ignore"):
            pred = self.predict_z(z)
            if self.loss == "huber":
                f = float(np.sum(self.w * huber(np.log(pred) - self.logy, self.delta)[0]))
            else:
                f = float(np.sum(self.w * (pred - self.y) ** 2))
        return f if np.isfinite(f) else 1e30

    def _kaplan_objective(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """Kaplan's law in z = (log N_c, log D_c, alpha_N, alpha_D) with its exact gradient."""
        lnc, ldc, an, ad = z
        t = lnc - np.log(self.x["N"])
        logu = (an / ad) * t
        logv = ldc - np.log(self.x["D"])
        logs = np.logaddexp(logu, logv)
        u, v = np.exp(logu - logs), np.exp(logv - logs)  # u/s, v/s
        logpred = ad * logs
        dlog = np.stack([an * u, ad * v, u * t, logs - (an / ad) * u * t], axis=1)
        if self.loss == "huber":
            val, der = huber(logpred - self.logy, self.delta)
            f = float(np.sum(self.w * val))
            g_log = self.w * der
        else:
            pred = np.exp(logpred)
            r = pred - self.y
            f = float(np.sum(self.w * r * r))
            g_log = 2.0 * self.w * r * pred
        if not np.isfinite(f):
            return 1e30, np.zeros_like(z)
        return f, g_log @ dlog

    def full_local(self, z0: np.ndarray, tight: bool = True) -> tuple[np.ndarray, float]:
        """L-BFGS-B on all parameters; `tight=False` uses SciPy's default tolerances (Epoch's)."""
        opts = {"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12} if tight else {"maxiter": 1000}
        res = minimize(
            self.full_objective,
            z0,
            jac=self.m is not None or self.form.name == "kaplan",
            method="L-BFGS-B",
            bounds=self.z_bounds(),
            options=opts,
        )
        return np.asarray(res.x), float(res.fun)

    def objective_of(self, v: np.ndarray) -> float:
        """The reported objective at parameter vector v (loss-dependent, see module doc)."""
        out = self.full_objective(self.z_from_params(v))
        return float(out[0] if isinstance(out, tuple) else out)

    # ---------- the three fitting routes ----------
    def fit_vp(self, start: np.ndarray | None) -> np.ndarray:
        """Variable projection; `start` (a full parameter vector) skips the grid."""
        if start is not None and self.loss == "huber":
            # warm start (bootstrap draw): the full-data optimum already sits in the basin
            z, _ = self.full_local(self.z_from_params(start))
            return self.params_from_z(z)
        theta_starts = None if start is None else [start[self.p :]]
        theta = self.vp_fit(theta_starts)
        v = self.params_from_theta(theta)
        if self.loss == "squared":
            return v
        # Huber on log L: IRLS with VP, weights ψ(r)/r on the log residual, divided by L² since
        # the log residual is ≈ (L̂ − L)/L; then polish every parameter on the exact objective.
        for _ in range(4):
            pred = self.form.predict(self.x, dict(zip(self.params_order(), v, strict=True)))
            r = np.log(np.maximum(pred, 1e-300)) - self.logy
            wr = np.where(np.abs(r) <= self.delta, 1.0, self.delta / np.maximum(np.abs(r), 1e-300))
            w_irls = self.w * wr / self.y**2
            theta = self.vp_fit([v[self.p :]], w_irls)
            v = self.params_from_theta(theta, w_irls)
        z, _ = self.full_local(self.z_from_params(v))
        return self.params_from_z(z)

    def epoch_starts(self) -> np.ndarray:
        """Epoch's grid of starts in z space: log coefficients, then exponents."""
        axes = []
        assert self.form.terms is not None
        for term in self.form.terms:
            axes.append(EPOCH_GRID["const"] if not term else EPOCH_GRID["coef"])
        axes += [EPOCH_GRID["exponent"]] * self.k
        return np.array(list(itertools.product(*axes)), float)

    def lse_objective_batch(self, zs: np.ndarray, chunk: int = 2000) -> np.ndarray:
        """Objective at many z at once (power-sum laws), to rank grid starts cheaply."""
        out = np.empty(len(zs))
        for i in range(0, len(zs), chunk):
            z = zs[i : i + chunk]
            s_knj = z[:, None, : self.p] - np.einsum("njk,Kk->Knj", self.m, z[:, self.p :])
            logpred = np.logaddexp.reduce(s_knj, axis=2)
            if self.loss == "huber":
                f = np.sum(self.w * huber(logpred - self.logy, self.delta)[0], axis=1)
            else:
                with np.errstate(over="ignore"):
                    f = np.sum(self.w * (np.exp(logpred) - self.y) ** 2, axis=1)
            out[i : i + chunk] = np.where(np.isfinite(f), f, np.inf)
        return out

    def fit_epoch(self, n_starts: int | None, start: np.ndarray | None) -> np.ndarray:
        if self.m is None:
            raise UserError(
                f"--method epoch needs a sum of power laws (chinchilla, wang, krajewski); "
                f"law {self.form.name} has no log-sum-exp form: use --method vp"
            )
        if start is not None:  # warm start (bootstrap draws): no grid
            starts = self.z_from_params(start)[None, :]
        else:
            starts = self.epoch_starts()
            if n_starts is None and len(starts) > 5000:
                n_starts = 200
            if n_starts is not None and n_starts < len(starts):
                vals = self.lse_objective_batch(starts)
                starts = starts[np.argsort(vals, kind="stable")[:n_starts]]
        best_z, best = None, math.inf
        for z0 in starts:
            z, f = self.full_local(z0, tight=len(starts) == 1)
            if f < best:
                best_z, best = z, f
        assert best_z is not None
        best_z, _ = self.full_local(best_z)  # polish the winner with tight tolerances
        return self.params_from_z(best_z)

    def fit_nonlinear(self, start: np.ndarray | None) -> np.ndarray:
        """Plain nonlinear least squares (or Huber) from the vectorised grid, for kaplan."""
        if start is not None:
            zs = [self.z_from_params(start)]
        else:
            thetas = self.grid_thetas()
            env: dict[str, object] = {k: v[None, :] for k, v in self.x.items()}
            env.update({q: thetas[:, i : i + 1] for i, q in enumerate(self.form.nonlinear)})
            assert self.form._func is not None
            pred = self.form._func(env)
            with np.errstate(all="ignore"):
                if self.loss == "huber":
                    r = np.log(pred) - self.logy[None, :]
                    f = np.sum(self.w * huber(r, self.delta)[0], axis=1)
                else:
                    f = np.sum(self.w * (pred - self.y[None, :]) ** 2, axis=1)
            f[~np.isfinite(f)] = np.inf
            zs = [self.z_from_params(thetas[i]) for i in np.argsort(f)[:5]]
        best_z, best = None, math.inf
        for z0 in zs:
            z, fz = self.full_local(z0)
            if fz < best:
                best_z, best = z, fz
        assert best_z is not None
        return self.params_from_z(best_z)

    def fit(self, method: str, start: np.ndarray | None, n_starts: int | None) -> np.ndarray:
        if self.p == 0:
            return self.fit_nonlinear(start)
        if method == "epoch":
            return self.fit_epoch(n_starts, start)
        return self.fit_vp(start)


def _fit_vector(
    form: LawForm,
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    w: np.ndarray,
    method: str,
    loss: str,
    delta: float,
    start: np.ndarray | None = None,
    n_starts: int | None = None,
) -> tuple[np.ndarray, float]:
    prob = _Problem(form, x, y, w, loss, delta)
    v = prob.fit(method, start, n_starts)
    return v, prob.objective_of(v)


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
        form = form_from_spec(spec)
        uniq, inv = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
        out: list[np.ndarray | None] = []
        for s in seeds:
            rng = np.random.default_rng(s)
            pick = rng.integers(0, len(uniq), len(uniq))
            idx = np.concatenate([members[g] for g in pick])
            xb = {k: v[idx] for k, v in x.items()}
            try:
                v, _ = _fit_vector(form, xb, y[idx], w[idx], method, loss, delta, start=start)
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
    (science.md §4 drops 5). `groups` (run ids) makes the bootstrap resample whole runs.
    `n_starts` limits the epoch grid to its best starts by initial objective (None: all of
    Epoch's 4,500 for chinchilla; the best 200 when a law's grid is larger).
    """
    with single_threaded_blas():
        return _fit_law(
            law,
            x,
            loss_values,
            compute=compute,
            method=method,
            loss=loss,
            weights=weights,
            groups=groups,
            drop_outliers=drop_outliers,
            bootstrap_draws=bootstrap_draws,
            holdout_frac=holdout_frac,
            seed=seed,
            workers=workers,
            delta=delta,
            n_starts=n_starts,
        )


def _fit_law(
    law: str | LawForm,
    x: Mapping[str, Sequence[float] | np.ndarray],
    loss_values: Sequence[float] | np.ndarray,
    *,
    compute: Sequence[float] | np.ndarray | None,
    method: str,
    loss: str | None,
    weights: Sequence[float] | np.ndarray | None,
    groups: Sequence[object] | np.ndarray | None,
    drop_outliers: int,
    bootstrap_draws: int,
    holdout_frac: float,
    seed: int,
    workers: int,
    delta: float,
    n_starts: int | None,
) -> FitResult:
    form = get_form(law)
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    loss = loss or ("huber" if method == "epoch" else "squared")
    if loss not in LOSSES:
        raise UserError(f"unknown --loss {loss!r}; use one of {', '.join(LOSSES)}")
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
    grp = None if groups is None else np.asarray(groups)
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
    for q in ("E", "G"):
        # an exponent on a constant input is not identifiable (it folds into a coefficient)
        if form.terms is not None and q in form.inputs and len(np.unique(xa[q])) < 2:
            raise UserError(
                f"law {form.name} needs at least two distinct values of {q} "
                f"(only {xa[q][0]:g} found); fit 'chinchilla' for a single architecture"
            )
    dropped: list[int] = []
    keep = np.ones(n_all, bool)
    if drop_outliers:
        dropped = sorted(int(i) for i in np.argsort(-y, kind="stable")[:drop_outliers])
        keep[dropped] = False
    xa = {k: v[keep] for k, v in xa.items()}
    y, w, c = y[keep], w[keep], c[keep]
    grp = None if grp is None else grp[keep]
    n = len(y)
    if n < len(form.params):
        raise UserError(
            f"law {form.name} has {len(form.params)} parameters but only {n} points remain; "
            "add points or choose a law with fewer parameters"
        )
    v, obj = _fit_vector(form, xa, y, w, method, loss, delta, n_starts=n_starts)
    order = form.linear + form.nonlinear
    params = {q: float(v[order.index(q)]) for q in form.params}
    pred = form.predict(xa, params)
    ins = _errors(pred, y)
    in_sample = {"mae": ins["mae"], "rmse": ins["rmse"]}

    holdout: dict[str, float | int | None] = {"mae": None, "max_abs": None, "n": 0}
    n_hold = int(math.ceil(holdout_frac * n)) if holdout_frac > 0 else 0
    if n_hold and n - n_hold >= len(form.params):
        idx = np.argsort(c, kind="stable")
        tr, te = idx[: n - n_hold], idx[n - n_hold :]
        xtr = {k: vv[tr] for k, vv in xa.items()}
        vh, _ = _fit_vector(form, xtr, y[tr], w[tr], method, loss, delta, n_starts=n_starts or 50)
        ph = {q: float(vh[order.index(q)]) for q in form.params}
        he = _errors(form.predict({k: vv[te] for k, vv in xa.items()}, ph), y[te])
        holdout = {"mae": he["mae"], "max_abs": he["max_abs"], "n": int(n_hold)}

    intervals: dict[str, tuple[float, float]] = {}
    samples: list[dict[str, float]] = []
    if bootstrap_draws > 0:
        bs = bootstrap(
            form,
            xa,
            y,
            w,
            v,
            draws=bootstrap_draws,
            groups=grp,
            method=method,
            loss=loss,
            delta=delta,
            seed=seed,
            workers=workers,
        )
        for row in bs:
            samples.append({q: float(row[order.index(q)]) for q in form.params})
        if len(bs):
            for q in form.params:
                col = bs[:, order.index(q)]
                intervals[q] = (float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5)))
    return FitResult(
        law=form.name,
        expression=form.expression,
        params=params,
        objective=float(obj),
        method=method,
        loss=loss,
        n_points=n,
        in_sample=in_sample,
        holdout=holdout,
        intervals=intervals,
        bootstrap_params=samples,
        dropped=dropped,
        inputs=form.inputs,
        spec=form_spec(form),
    )
