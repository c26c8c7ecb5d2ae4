"""One data set and one law: the objectives, their gradients, and the three fitting routes.

Objectives (all summed over points, with optional weights w_i):
- ``loss="squared"``: Σ w_i (L̂_i − L_i)², squared error of the loss itself. This is the
  convention that reproduces the residual sum of squares 0.062414 of Besiroglu et al. (2024) on
  the 217 of Epoch's Chinchilla points with C < 1e21 (squared error of log L does not give that
  number); see docs/science.md.
- ``loss="huber"``: Σ w_i huber_δ(log L̂_i − log L_i), δ = 1e-3 (Hoffmann et al. 2022;
  Besiroglu et al. 2024).

Routes:
- ``method="vp"`` (default), variable projection: for fixed exponents θ the law is linear in its
  coefficients, which NNLS solves exactly; only θ is searched, first on a vectorised coarse grid
  and then by L-BFGS-B with the analytic VP gradient (envelope theorem). For Huber, a few
  iteratively reweighted VP fits (Huber weights on the log residual, which is ≈ relative error of
  L) find the basin, then all parameters are polished on the exact Huber objective.
- ``method="epoch"``: the log-sum-exp parameterisation of Besiroglu et al. (2024),
  log L̂ = LSE_j(log coef_j − θ·log x), Huber on log L, L-BFGS-B from every point of their
  grid of starts (or the best `n_starts` of them), keeping the best.
- Forms with no linear coefficient (Kaplan et al. 2020) use plain nonlinear least squares in
  log-scaled parameters from a grid, whatever the method.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from scipy.optimize import minimize, nnls

from moescale.errors import UserError
from moescale.laws.forms import LawForm, laws_with

METHODS = ("vp", "epoch")
LOSSES = ("squared", "huber")
EPOCH_GRID = {
    "const": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "coef": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "exponent": (0.0, 0.5, 1.0, 1.5, 2.0),
}
_TIGHT = {"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12}
S = TypeVar("S")


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative."""
    a = np.abs(r)
    quad = a <= delta
    val = np.where(quad, 0.5 * r * r, delta * (a - 0.5 * delta))
    der = np.where(quad, r, delta * np.sign(r))
    return val, der


def best_of(
    starts: Iterable[S], local: Callable[[S], tuple[np.ndarray, float]]
) -> np.ndarray | None:
    """The result of `local` with the lowest objective over `starts` (None if none is finite)."""
    best_x, best = None, math.inf
    for s in starts:
        x, f = local(s)
        if f < best:
            best_x, best = x, f
    return best_x


class Problem:
    """Data (inputs x, losses y, weights w), a law, and a loss: objectives and optimisers."""

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

    def residual_loss(
        self, logpred: np.ndarray, pred: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The objective (summed over the last axis) of log predictions, and its derivative
        with respect to each log prediction. `pred` (= exp(logpred)) when already at hand."""
        if self.loss == "huber":
            val, der = huber(logpred - self.logy, self.delta)
            return np.sum(self.w * val, axis=-1), self.w * der
        pred = np.exp(logpred) if pred is None else pred
        r = pred - self.y
        return np.sum(self.w * r * r, axis=-1), 2.0 * self.w * r * pred

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
        theta = best_of(starts, lambda s: self.vp_local(np.asarray(s, float), w))
        if theta is None:
            raise UserError(f"law {self.form.name}: no finite fit found; check the data")
        return theta

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

    def params_order(self) -> tuple[str, ...]:
        return self.form.linear + self.form.nonlinear

    def predict_z(self, z: np.ndarray) -> np.ndarray:
        v = self.params_from_z(z)
        return self.form.predict(self.x, dict(zip(self.params_order(), v, strict=True)))

    def has_gradient(self) -> bool:
        """Whether `full_objective` returns an analytic gradient."""
        return self.m is not None or self.form.log_gradient is not None

    def full_objective(self, z: np.ndarray) -> tuple[float, np.ndarray] | float:
        """Objective in z, with its analytic gradient when `has_gradient()`."""
        if self.m is not None:  # power sums: log L̂ = LSE_j(log coef_j − M_j·θ)
            lb, th = z[: self.p], z[self.p :]
            s_ij = lb[None, :] - self.m @ th  # log of each term
            mx = s_ij.max(axis=1, keepdims=True)
            e = np.exp(s_ij - mx)
            tot = e.sum(axis=1, keepdims=True)
            f, g_log = self.residual_loss((mx + np.log(tot))[:, 0])
            gsoft = g_log[:, None] * (e / tot)
            grad = np.concatenate([gsoft.sum(axis=0), -np.einsum("ij,ijk->k", gsoft, self.m)])
        elif self.form.log_gradient is not None:
            logpred, dlog = self.form.log_gradient(z, self.x)
            f, g_log = self.residual_loss(logpred)
            grad = g_log @ dlog
        else:
            with np.errstate(all="ignore"):
                pred = self.predict_z(z)
                f = self.residual_loss(np.log(pred), pred)[0]
            return float(f) if np.isfinite(f) else 1e30
        if not np.isfinite(f):
            return 1e30, np.zeros_like(z)
        return float(f), grad

    def full_local(self, z0: np.ndarray, tight: bool = True) -> tuple[np.ndarray, float]:
        """L-BFGS-B on all parameters; `tight=False` uses SciPy's default tolerances (Epoch's)."""
        res = minimize(
            self.full_objective,
            z0,
            jac=self.has_gradient(),
            method="L-BFGS-B",
            bounds=self.z_bounds(),
            options=dict(_TIGHT) if tight else {"maxiter": 1000},
        )
        return np.asarray(res.x), float(res.fun)

    def objective_of(self, v: np.ndarray) -> float:
        """The reported objective at parameter vector v (loss-dependent, see module doc)."""
        out = self.full_objective(self.z_from_params(v))
        return float(out[0] if isinstance(out, tuple) else out)

    # ---------- what the data can identify ----------
    def at_bounds(self, v: np.ndarray) -> dict[str, str]:
        """Nonlinear parameters within 0.01 % of a search bound (log-scale ones in log space):
        name -> "lower"/"upper". An optimum there is the bound, not an estimate."""
        out = {}
        for i, q in enumerate(self.form.nonlinear):
            lo, hi, val = *self.form.bounds[q], float(v[self.p + i])
            if q in self.form.log_scale:
                lo, hi, val = (math.log(max(t, 1e-300)) for t in (lo, hi, val))
            if min(val - lo, hi - val) <= 1e-4 * (hi - lo):
                out[q] = "lower" if val - lo < hi - val else "upper"
        return out

    def vanished(self, v: np.ndarray, constant: bool = False) -> list[str]:
        """Coefficients whose term contributes < 1e-6 of the mean loss at every point: terms
        that vary over the points (exponents then unidentified), or with `constant` the
        constant ones (an irreducible loss forced to 0)."""
        phi, _ = self.form.basis(self.x, v[None, self.p :])
        out = []
        for j, q in enumerate(self.form.linear):
            col = np.abs(phi[0, :, j])
            is_const = np.ptp(col) <= 1e-12 * np.max(col)
            if self.form.terms is not None:  # a power sum says which terms are constant
                is_const = not self.form.terms[j]
            if is_const == constant and np.max(v[j] * col) < 1e-6 * np.mean(self.y):
                out.append(q)
        return out

    def degenerate(self, v: np.ndarray) -> list[str]:
        """Why a bootstrap draw is unusable: a zero exponent (a parameter at its lower bound)
        or a zero coefficient of a varying term; empty when it is fine."""
        low = [q for q, side in self.at_bounds(v).items() if side == "lower"]
        return low + self.vanished(v)

    def identifiability(self, v: np.ndarray) -> list[tuple[str, str, set[str]]]:
        """What these points cannot determine: (code, cause and remedy, parameters left
        unidentified). Parameters are named for sums of power laws, whose terms are known."""
        f, out = self.form, []
        terms = dict(zip(f.linear, f.terms or (), strict=False))  # coefficient -> its term
        uses: dict[str, set[str]] = {"N": set(), "D": set()}  # input -> its terms' parameters
        for q, term in terms.items():
            for e, inp in term:
                uses.setdefault(inp, set()).update({q, e})
        const = {q for q, t in terms.items() if not t}
        if len(self.y) < 3 * len(f.params):
            why = f"{len(self.y)} points for {len(f.params)} parameters (fewer than 3 each)"
            fix = "estimates and intervals are fragile; add runs or fit a smaller law"
            out.append(("few_points", f"{why}: {fix}", set()))
        single = [s for s in ("N", "D") if s in self.x and np.ptp(self.x[s]) == 0]
        for s in single:
            why = f"every point has the same {s} ({self.x[s][0]:.4g})"
            fix = f"the {s} term cannot be told from the constant; add runs of other {s}"
            out.append(("single_value", f"{why}: {fix}", uses[s] | const))
        if {"N", "D"} <= set(self.x) and not single:
            ln, ld = np.log(self.x["N"]), np.log(self.x["D"])
            r = abs(float(np.corrcoef(ln, ld)[0, 1]))
            if r > 0.999:
                why = f"log D is a linear function of log N (|r| = {r:.4f})"
                if np.ptp(ld - ln) < 1e-6:
                    why = f"D is a fixed multiple of N (D/N = {np.exp(np.mean(ld - ln)):.4g})"
                fix = "the N and D terms cannot be told apart; vary D at each N"
                out.append(("collinear", f"{why}: {fix}", uses["N"] | uses["D"]))
        for q, side in self.at_bounds(v).items():
            why = f"{q} sits at its {side} search bound {f.bounds[q][side == 'upper']:g}"
            fix = "the data do not determine it; add runs over a wider range or drop outliers"
            coefs = {c for c, t in terms.items() if q in dict(t)}
            out.append(("exponent_at_bound", f"{why}: {fix}", {q} | coefs))
        gone = self.vanished(v)
        live = {e for c, t in terms.items() if c not in gone for e, _ in t}  # still determined
        for q in gone:
            why = f"{q} was forced to 0 (coefficients are kept >= 0)"
            fix = "its term vanishes, so its exponents are not identified; widen the runs' range"
            exps = {e for e, _ in terms.get(q, ())} - live
            out.append(("coefficient_zero", f"{why}: {fix}", exps))
        for q in self.vanished(v, constant=True):
            why = f"{q}, the irreducible loss, was forced to 0"
            fix = "the data show no floor, so the law lets the loss fall without limit"
            out.append(("coefficient_zero", f"{why}: {fix}; extrapolate with care", set()))
        return out

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
        """The grid of starts of Besiroglu et al. (2024) in z space: log coefficients, then
        exponents."""
        assert self.form.terms is not None
        axes = [EPOCH_GRID["coef"] if term else EPOCH_GRID["const"] for term in self.form.terms]
        axes += [EPOCH_GRID["exponent"]] * self.k
        return np.array(list(itertools.product(*axes)), float)

    def lse_objective_batch(self, zs: np.ndarray, chunk: int = 2000) -> np.ndarray:
        """Objective at many z at once (power-sum laws), to rank grid starts cheaply."""
        out = np.empty(len(zs))
        for i in range(0, len(zs), chunk):
            z = zs[i : i + chunk]
            s_knj = z[:, None, : self.p] - np.einsum("njk,Kk->Knj", self.m, z[:, self.p :])
            with np.errstate(over="ignore", invalid="ignore"):
                f = self.residual_loss(np.logaddexp.reduce(s_knj, axis=2))[0]
            out[i : i + chunk] = np.where(np.isfinite(f), f, np.inf)
        return out

    def fit_epoch(self, n_starts: int | None, start: np.ndarray | None) -> np.ndarray:
        if self.m is None:
            power_sums = ", ".join(laws_with(lambda f: f.terms is not None))
            raise UserError(
                f"--method epoch needs a sum of power laws ({power_sums}); "
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
        best_z = best_of(starts, lambda z0: self.full_local(z0, tight=len(starts) == 1))
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
            pred = self.form.evaluate(env)
            with np.errstate(all="ignore"):
                f = self.residual_loss(np.log(pred), pred)[0]
            f[~np.isfinite(f)] = np.inf
            zs = [self.z_from_params(thetas[i]) for i in np.argsort(f)[:5]]
        best_z = best_of(zs, self.full_local)
        assert best_z is not None
        return self.params_from_z(best_z)

    def fit(self, method: str, start: np.ndarray | None, n_starts: int | None) -> np.ndarray:
        """Fitted parameter vector [linear..., nonlinear...]; `start` warm-starts (no grid)."""
        if self.p == 0:
            return self.fit_nonlinear(start)
        if method == "epoch":
            return self.fit_epoch(n_starts, start)
        return self.fit_vp(start)
