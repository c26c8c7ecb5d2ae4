"""Scaling-law forms: what each law's inputs and parameters are, and which enter linearly.

A form is an expression of named inputs (N, D, E, G, ...) and parameters. Variable projection
needs to know which parameters are *linear coefficients* (the law is Σ_j coef_j · basis_j(x; θ)
+ offset(x; θ)) so that, for fixed nonlinear parameters θ (the exponents), the coefficients come
from one non-negative least-squares solve. The built-in laws are sums of power laws, whose bases
are exp(-Σ_k θ_k · log x_k): for them the bases and their derivatives are computed for a whole
batch of exponent vectors at once, which is what makes a fit take milliseconds.

Everything else a law knows about itself lives on its `LawForm` too, so that adding a law means
adding one constructor here (and an entry in `BUILTIN`): the results-table column its N is read
from, defaults for its extra inputs (E, G), its reduction to power terms for closed-form
allocation, an analytic gradient when no coefficient enters linearly (Kaplan et al. 2020), and
whether a plan searches its granularity. Formulas and their sources are in docs/science.md.

Custom laws are expression strings (see `moescale.laws.expression`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from moescale.errors import UserError
from moescale.laws.expression import Func, compile_expression, linear_structure, names
from moescale.run import Col

_DEFAULT_EXP_GRID = tuple(np.round(np.linspace(0.05, 1.5, 14), 4))

# (A_E, B, alpha, beta, const) of L = A_E/N^alpha + B/D^beta + const
PowerTerms = tuple[float, float, float, float, float]
PowerTermsFn = Callable[[Mapping[str, float], Mapping[str, float]], PowerTerms]
# optimiser variables z, inputs x -> (log L̂ (n,), d log L̂ / dz (n, len(z)))
LogGradientFn = Callable[[np.ndarray, Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ExtraInput:
    """An input beyond N, D and C: its results-table column and its command-line flags."""

    symbol: str
    column: str
    flag: str  # `moescale plan --FLAG VALUE`, `moescale fit --FLAG-col COLUMN`
    meaning: str
    dense: float = 1.0  # its value for a dense model

    @property
    def plan_flag(self) -> str:
        return f"--{self.flag}"

    @property
    def column_flag(self) -> str:
        return f"--{self.flag}-col"


EXTRA_INPUTS: dict[str, ExtraInput] = {
    "E": ExtraInput("E", Col.EXPERTS, "experts", "expansion rate (experts in d_ff units)"),
    "G": ExtraInput("G", Col.GRANULARITY, "granularity", "expert granularity"),
}
KNOWN_INPUTS = ("N", "D", "C", *EXTRA_INPUTS)


@dataclass(frozen=True)
class LawForm:
    """One scaling law: inputs, parameters, and the structure that variable projection uses.

    `linear` coefficients are solved by NNLS for fixed `nonlinear` parameters; `terms` (built-in
    power-sum laws only) gives, for each linear coefficient, the (exponent, input) pairs of its
    basis Π x^(-θ), which lets bases and gradients be computed in closed form for many θ at once.
    `log_scale` nonlinear parameters are searched in log space (positive scales such as N_c).

    What the rest of the package asks of a law: `n_column`, the results-table column of its N;
    `input_defaults`, values of extra inputs a plan assumes when none is given; `to_power_terms`,
    its reduction to A_E/N^α + B/D^β + const (closed-form allocation); `log_gradient`, log L̂
    and its gradient in the optimiser variables (the parameters in `linear + nonlinear` order,
    `log_scale` ones as logs), for laws fitted without variable projection; `granularity_search`,
    whether a plan without a G searches the best one under routing-aware FLOPs.
    """

    name: str
    expression: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    linear: tuple[str, ...]
    nonlinear: tuple[str, ...]
    grid: dict[str, tuple[float, ...]]
    bounds: dict[str, tuple[float, float]]
    log_scale: tuple[str, ...] = ()
    terms: tuple[tuple[tuple[str, str], ...], ...] | None = None
    n_column: str = Col.PARAMS_ACTIVE
    input_defaults: Mapping[str, float] = field(default_factory=dict)
    granularity_search: bool = False
    builtin: bool = False
    to_power_terms: PowerTermsFn | None = field(default=None, repr=False, compare=False)
    log_gradient: LogGradientFn | None = field(default=None, repr=False, compare=False)
    _func: Func | None = field(default=None, repr=False, compare=False)
    _bases: tuple[tuple[Func, float], ...] = field(default=(), repr=False, compare=False)
    _offset: Func | None = field(default=None, repr=False, compare=False)

    @property
    def extras(self) -> tuple[ExtraInput, ...]:
        """Its inputs beyond N, D and C (E, G)."""
        return tuple(EXTRA_INPUTS[k] for k in self.inputs if k in EXTRA_INPUTS)

    def extra_values(self, given: Mapping[str, float]) -> dict[str, float]:
        """Values of its extra inputs: `given` ones, else its defaults; absent when neither."""
        out = {k: float(v) for k, v in self.input_defaults.items() if k in self.inputs}
        out.update({x.symbol: float(given[x.symbol]) for x in self.extras if x.symbol in given})
        return out

    def dense_values(self) -> dict[str, float]:
        """Its extra inputs at a dense model's values (E = 1, G = 1)."""
        return {x.symbol: x.dense for x in self.extras}

    def power_terms(
        self, params: Mapping[str, float], extras: Mapping[str, float]
    ) -> PowerTerms | None:
        """(A_E, B, alpha, beta, const) when the law reduces to A_E/N^α + B/D^β + const."""
        return None if self.to_power_terms is None else self.to_power_terms(params, extras)

    def predict(self, x: Mapping[str, np.ndarray], params: Mapping[str, float]) -> np.ndarray:
        """Loss predicted at inputs `x` (name -> array) for parameter values `params`."""
        missing = [p for p in self.params if p not in params]
        if missing:
            raise UserError(f"law {self.name}: missing parameter(s) {', '.join(missing)}")
        env: dict[str, object] = {k: np.asarray(x[k], dtype=float) for k in self.inputs}
        env.update({k: float(params[k]) for k in self.params})
        assert self._func is not None
        n = len(next(iter(env.values()))) if self.inputs else 1
        return np.broadcast_to(self._func(env), (n,)).astype(float)

    def evaluate(self, env: Mapping[str, object]) -> np.ndarray:
        """The expression on broadcastable inputs and parameters (no checks, no reshaping)."""
        assert self._func is not None
        return self._func(env)

    def log_design(self, x: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """For power-sum laws: M[i, j, k] = log of the input that exponent k acts on in basis j.

        Basis j at point i is then exp(-M[i, j, :] @ θ). None for forms that are not power sums.
        """
        if self.terms is None:
            return None
        n = len(np.asarray(x[self.inputs[0]]))
        m = np.zeros((n, len(self.linear), len(self.nonlinear)))
        for j, term in enumerate(self.terms):
            for exp_name, inp in term:
                m[:, j, self.nonlinear.index(exp_name)] += np.log(np.asarray(x[inp], float))
        return m

    def basis(
        self, x: Mapping[str, np.ndarray], theta: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bases (K, n, p) and offset (K, n) for a batch of nonlinear vectors theta (K, m)."""
        theta = np.atleast_2d(np.asarray(theta, float))
        m = self.log_design(x)
        if m is not None:
            with np.errstate(over="ignore"):
                phi = np.exp(-np.einsum("njm,km->knj", m, theta))
            return phi, np.zeros(phi.shape[:2])
        n = len(np.asarray(x[self.inputs[0]]))
        phi = np.empty((len(theta), n, len(self.linear)))
        off = np.zeros((len(theta), n))
        base_env = {k: np.asarray(x[k], float) for k in self.inputs}
        for r, row in enumerate(theta):
            env = dict(base_env)
            env.update(dict(zip(self.nonlinear, map(float, row), strict=True)))
            for j, (fn, sign) in enumerate(self._bases):
                phi[r, :, j] = sign * np.broadcast_to(fn(env), (n,))
            if self._offset is not None:
                off[r] = np.broadcast_to(self._offset(env), (n,))
        return phi, off


def _power_sum(
    name: str,
    expression: str,
    inputs: tuple[str, ...],
    params: tuple[str, ...],
    terms: dict[str, tuple[tuple[str, str], ...]],
    to_power_terms: PowerTermsFn,
    grid: dict[str, tuple[float, ...]] | None = None,
    n_column: str = Col.PARAMS_ACTIVE,
    input_defaults: Mapping[str, float] | None = None,
    granularity_search: bool = False,
) -> LawForm:
    """A built-in sum of power laws."""
    linear = tuple(terms)
    nonlinear = tuple(p for p in params if p not in terms)
    return LawForm(
        name=name,
        expression=expression,
        inputs=inputs,
        params=params,
        linear=linear,
        nonlinear=nonlinear,
        grid=grid or {p: _DEFAULT_EXP_GRID for p in nonlinear},
        bounds={p: (0.0, 3.0) for p in nonlinear},
        terms=tuple(terms.values()),
        n_column=n_column,
        input_defaults=dict(input_defaults or {}),
        granularity_search=granularity_search,
        builtin=True,
        to_power_terms=to_power_terms,
        _func=compile_expression(expression, set(inputs) | set(params)),
    )


def chinchilla() -> LawForm:
    """Hoffmann et al. 2022: L = E0 + A/N^alpha + B/D^beta."""
    return _power_sum(
        "chinchilla",
        "E0 + A / N**alpha + B / D**beta",
        ("N", "D"),
        ("E0", "A", "B", "alpha", "beta"),
        {"E0": (), "A": (("alpha", "N"),), "B": (("beta", "D"),)},
        to_power_terms=lambda p, x: (p["A"], p["B"], p["alpha"], p["beta"], p["E0"]),
    )


def _wang_terms(p: Mapping[str, float], x: Mapping[str, float]) -> PowerTerms:
    e = x.get("E", 1.0)
    return p["A"] / e ** p["gamma"], p["B"], p["alpha"], p["beta"], p["sigma"]


def wang() -> LawForm:
    """Wang et al. 2024: L = A/(N^alpha·E^gamma) + B/D^beta + sigma; E = 1 for dense."""
    return _power_sum(
        "wang",
        "A / (N**alpha * E**gamma) + B / D**beta + sigma",
        ("N", "D", "E"),
        ("A", "B", "alpha", "beta", "gamma", "sigma"),
        {"sigma": (), "A": (("alpha", "N"), ("gamma", "E")), "B": (("beta", "D"),)},
        to_power_terms=_wang_terms,
        grid={
            "alpha": _DEFAULT_EXP_GRID,
            "beta": _DEFAULT_EXP_GRID,
            "gamma": tuple(np.round(np.linspace(0.0, 1.0, 6), 3)),
        },
        input_defaults={"E": 1.0},
    )


def _krajewski_terms(p: Mapping[str, float], x: Mapping[str, float]) -> PowerTerms:
    g = x.get("G", 1.0)
    return p["g"] / g ** p["gamma"] + p["a"], p["b"], p["alpha"], p["beta"], p["c"]


def krajewski() -> LawForm:
    """Krajewski et al. 2024, "Scaling Laws for Fine-Grained Mixture of Experts":
    L = c + (g/G^gamma + a)/N^alpha + b/D^beta, N counting all experts (N_total)."""
    return _power_sum(
        "krajewski",
        "c + (g / G**gamma + a) / N**alpha + b / D**beta",
        ("N", "D", "G"),
        ("a", "b", "g", "c", "alpha", "beta", "gamma"),
        {
            "c": (),
            "a": (("alpha", "N"),),
            "g": (("alpha", "N"), ("gamma", "G")),
            "b": (("beta", "D"),),
        },
        to_power_terms=_krajewski_terms,
        grid={
            "alpha": tuple(np.round(np.linspace(0.05, 1.2, 10), 3)),
            "beta": tuple(np.round(np.linspace(0.05, 1.2, 10), 3)),
            "gamma": tuple(np.round(np.linspace(0.1, 1.5, 6), 3)),
        },
        n_column=Col.PARAMS_TOTAL,
        granularity_search=True,
    )


def _kaplan_log_gradient(
    z: np.ndarray, x: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """log L̂ of Kaplan's law and its gradient in z = (log N_c, log D_c, alpha_N, alpha_D)."""
    lnc, ldc, an, ad = z
    t = lnc - np.log(x["N"])
    logu = (an / ad) * t
    logv = ldc - np.log(x["D"])
    logs = np.logaddexp(logu, logv)
    u, v = np.exp(logu - logs), np.exp(logv - logs)  # u/s, v/s
    dlog = np.stack([an * u, ad * v, u * t, logs - (an / ad) * u * t], axis=1)
    return ad * logs, dlog


def kaplan() -> LawForm:
    """Kaplan et al. 2020: L = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D.

    No coefficient enters linearly, so it is fitted by plain nonlinear least squares with the
    scales N_c, D_c searched in log space, using its exact gradient.
    """
    params = ("N_c", "D_c", "alpha_N", "alpha_D")
    expression = "((N_c / N)**(alpha_N / alpha_D) + D_c / D)**alpha_D"
    return LawForm(
        name="kaplan",
        expression=expression,
        inputs=("N", "D"),
        params=params,
        linear=(),
        nonlinear=params,
        grid={
            "N_c": tuple(10.0 ** np.arange(8.0, 17.0, 1.0)),
            "D_c": tuple(10.0 ** np.arange(8.0, 17.0, 1.0)),
            "alpha_N": (0.03, 0.06, 0.1, 0.2, 0.35, 0.5),
            "alpha_D": (0.03, 0.06, 0.1, 0.2, 0.35, 0.5),
        },
        bounds={
            "N_c": (1.0, 1e30),
            "D_c": (1.0, 1e30),
            "alpha_N": (1e-3, 3.0),
            "alpha_D": (1e-3, 3.0),
        },
        log_scale=("N_c", "D_c"),
        builtin=True,
        log_gradient=_kaplan_log_gradient,
        _func=compile_expression(expression, set(params) | {"N", "D"}),
    )


def custom(
    expression: str,
    inputs: tuple[str, ...] | None = None,
    linear: tuple[str, ...] | None = None,
    grid: Mapping[str, tuple[float, ...]] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    name: str = "custom",
) -> LawForm:
    """A law from an expression string, e.g. ``"E0 + A/N**alpha + B/D**beta"``.

    `inputs` defaults to the names among N, D, C, E, G that the expression uses; every other name
    is a parameter. A parameter is linear when it multiplies one additive term and appears
    nowhere else; such terms' coefficients are solved by NNLS (so they are constrained to be
    ≥ 0 with the term's sign as written). `linear`, when given, must be a subset of those.
    Nonlinear parameters are searched on `grid` (default 0.05..1.5) within `bounds` (0..3).
    """
    if not expression.strip():
        raise UserError("law expression is empty")
    used = names(expression)
    if inputs is None:
        inputs = tuple(n for n in KNOWN_INPUTS if n in used)
    if not inputs:
        raise UserError(
            f"law expression {expression!r} uses none of the inputs {', '.join(KNOWN_INPUTS)}"
        )
    params = tuple(sorted(used - set(inputs)))
    if not params:  # before linear_structure, whose complaint about a bare input misleads
        raise UserError(
            f"law expression {expression!r} has no parameters to fit; name the constants the "
            "fit should find, e.g. 'E0 + A/N**alpha + B/D**beta'"
        )
    # a dunder name would reach eval's globals (__builtins__ replaces the builtins)
    for p in params:
        if p.startswith("__"):
            raise UserError(
                f"law expression {expression!r}: parameter name {p!r} starts with a double "
                f"underscore, which is reserved; rename it, e.g. {p.strip('_') or 'c'!r}"
            )
    structure = linear_structure(expression, tuple(inputs), params, linear)
    nonlinear = tuple(p for p in params if p not in structure.linear)
    g = {p: _DEFAULT_EXP_GRID for p in nonlinear}
    g.update(dict(grid or {}))
    b = {p: (0.0, 3.0) for p in nonlinear}
    b.update(dict(bounds or {}))
    return LawForm(
        name=name,
        expression=expression,
        inputs=tuple(inputs),
        params=params,
        linear=structure.linear,
        nonlinear=nonlinear,
        grid=g,
        bounds=b,
        _func=structure.func,
        _bases=structure.bases,
        _offset=structure.offset,
    )


BUILTIN: dict[str, Callable[[], LawForm]] = {
    "chinchilla": chinchilla,
    "wang": wang,
    "krajewski": krajewski,
    "kaplan": kaplan,
}


def get_form(name_or_expr: str | LawForm) -> LawForm:
    """A built-in law by name, or a custom law from an expression string."""
    if isinstance(name_or_expr, LawForm):
        return name_or_expr
    if name_or_expr in BUILTIN:
        return BUILTIN[name_or_expr]()
    if any(ch in name_or_expr for ch in "+-*/()"):
        return custom(name_or_expr)
    raise UserError(
        f"unknown law {name_or_expr!r}; use one of {', '.join(BUILTIN)} "
        "or an expression such as 'E0 + A/N**alpha + B/D**beta'"
    )


def laws_with(predicate: Callable[[LawForm], bool]) -> list[str]:
    """Names of the built-in laws for which `predicate` holds (for help texts and messages)."""
    return [name for name, make in BUILTIN.items() if predicate(make())]


def form_spec(form: LawForm) -> dict[str, object]:
    """A picklable / JSON-able description from which `form_from_spec` rebuilds the form."""
    if form.builtin:
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
    """The form described by `form_spec`'s output."""
    name = str(spec["name"])
    if "expression" not in spec:
        return get_form(name)
    return custom(
        str(spec["expression"]),
        inputs=tuple(spec["inputs"]),  # type: ignore[call-overload]
        linear=tuple(spec["linear"]),  # type: ignore[call-overload]
        grid={k: tuple(v) for k, v in dict(spec["grid"]).items()},  # type: ignore[call-overload]
        bounds={k: tuple(v) for k, v in dict(spec["bounds"]).items()},  # type: ignore[call-overload]
        name=name,
    )
