"""Scaling-law forms: what each law's inputs and parameters are, and which enter linearly.

A form is an expression of named inputs (N, D, E, G, ...) and parameters. Variable projection
needs to know which parameters are *linear coefficients* (the law is Σ_j coef_j · basis_j(x; θ)
+ offset(x; θ)) so that, for fixed nonlinear parameters θ (the exponents), the coefficients come
from one non-negative least-squares solve. The built-in laws are sums of power laws, whose bases
are exp(-Σ_k θ_k · log x_k): for them the bases and their derivatives are computed for a whole
batch of exponent vectors at once, which is what makes a fit take milliseconds.

Custom laws are expression strings parsed with `ast` against a whitelist (arithmetic, numbers,
the declared names, exp/log/sqrt); nothing is passed to `eval` that the whitelist did not accept.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from moescale.errors import UserError

_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
}
_ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.USub,
    ast.UAdd,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Call,
)
KNOWN_INPUTS = ("N", "D", "C", "E", "G")
_DEFAULT_EXP_GRID = tuple(np.round(np.linspace(0.05, 1.5, 14), 4))


def _compile(tree: ast.Expression) -> Callable[[Mapping[str, object]], np.ndarray]:
    """Compile a whitelisted expression tree into a function of a name -> value mapping."""
    code = compile(tree, "<law>", "eval")

    def func(env: Mapping[str, object]) -> np.ndarray:
        scope: dict[str, object] = {"__builtins__": {}}
        scope.update(_FUNCS)
        scope.update(env)
        with np.errstate(all="ignore"):
            return np.asarray(eval(code, scope))  # noqa: S307 - tree checked by _parse

    return func


def _parse(expr: str, allowed: set[str]) -> ast.Expression:
    """Parse `expr` and reject anything but arithmetic on allowed names and numbers."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise UserError(
            f"law expression {expr!r} is not valid Python arithmetic: {exc.msg}"
        ) from exc
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise UserError(
                f"law expression {expr!r}: {type(node).__name__} is not allowed; use + - * / **, "
                "numbers, the input and parameter names, and exp/log/sqrt"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise UserError(f"law expression {expr!r}: only numeric constants are allowed")
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS) or node.keywords:
                raise UserError(
                    f"law expression {expr!r}: only exp(), log() and sqrt() may be called"
                )
        if isinstance(node, ast.Name) and node.id not in allowed and node.id not in _FUNCS:
            raise UserError(
                f"law expression {expr!r}: unknown name {node.id!r}; "
                f"allowed: {', '.join(sorted(allowed))}, exp, log, sqrt"
            )
    return tree


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id not in _FUNCS}


@dataclass(frozen=True)
class LawForm:
    """One scaling law: inputs, parameters, and the structure that variable projection uses.

    `linear` coefficients are solved by NNLS for fixed `nonlinear` parameters; `terms` (built-in
    power-sum laws only) gives, for each linear coefficient, the (exponent, input) pairs of its
    basis Π x^(-θ), which lets bases and gradients be computed in closed form for many θ at once.
    `log_scale` nonlinear parameters are searched in log space (positive scales such as N_c).
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
    _func: Callable[[Mapping[str, object]], np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )
    _bases: tuple[tuple[Callable[[Mapping[str, object]], np.ndarray], float], ...] = field(
        default=(), repr=False, compare=False
    )
    _offset: Callable[[Mapping[str, object]], np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )

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
    grid: dict[str, tuple[float, ...]] | None = None,
) -> LawForm:
    linear = tuple(terms)
    nonlinear = tuple(p for p in params if p not in terms)
    allowed = set(inputs) | set(params)
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
        _func=_compile(_parse(expression, allowed)),
    )


def chinchilla() -> LawForm:
    """Hoffmann et al. 2022: L = E0 + A/N^alpha + B/D^beta."""
    return _power_sum(
        "chinchilla",
        "E0 + A / N**alpha + B / D**beta",
        ("N", "D"),
        ("E0", "A", "B", "alpha", "beta"),
        {"E0": (), "A": (("alpha", "N"),), "B": (("beta", "D"),)},
    )


def wang() -> LawForm:
    """Wang et al. 2024 (seed 001): L = A/(N^alpha·E^gamma) + B/D^beta + sigma; E = 1 dense."""
    return _power_sum(
        "wang",
        "A / (N**alpha * E**gamma) + B / D**beta + sigma",
        ("N", "D", "E"),
        ("A", "B", "alpha", "beta", "gamma", "sigma"),
        {"sigma": (), "A": (("alpha", "N"), ("gamma", "E")), "B": (("beta", "D"),)},
        grid={
            "alpha": _DEFAULT_EXP_GRID,
            "beta": _DEFAULT_EXP_GRID,
            "gamma": tuple(np.round(np.linspace(0.0, 1.0, 6), 3)),
        },
    )


def krajewski() -> LawForm:
    """Krajewski et al. 2024 (P0): L = c + (g/G^gamma + a)/N^alpha + b/D^beta."""
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
        grid={
            "alpha": tuple(np.round(np.linspace(0.05, 1.2, 10), 3)),
            "beta": tuple(np.round(np.linspace(0.05, 1.2, 10), 3)),
            "gamma": tuple(np.round(np.linspace(0.1, 1.5, 6), 3)),
        },
    )


def kaplan() -> LawForm:
    """Kaplan et al. 2020: L = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D.

    No coefficient enters linearly, so it is fitted by plain nonlinear least squares with the
    scales N_c, D_c searched in log space.
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
        _func=_compile(_parse(expression, set(params) | {"N", "D"})),
    )


def _split_sum(node: ast.AST, sign: float = 1.0) -> list[tuple[ast.AST, float]]:
    """Top-level additive terms of an expression with their signs."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        right_sign = sign if isinstance(node.op, ast.Add) else -sign
        return _split_sum(node.left, sign) + _split_sum(node.right, right_sign)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _split_sum(node.operand, -sign)
    return [(node, sign)]


def _linear_factor(term: ast.AST, candidates: set[str]) -> str | None:
    """The candidate name that multiplies the whole term (not under a division), if any."""
    if isinstance(term, ast.Name) and term.id in candidates:
        return term.id
    if isinstance(term, ast.BinOp) and isinstance(term.op, ast.Mult):
        return _linear_factor(term.left, candidates) or _linear_factor(term.right, candidates)
    if isinstance(term, ast.BinOp) and isinstance(term.op, ast.Div):
        return _linear_factor(term.left, candidates)
    return None


class _ReplaceWithOne(ast.NodeTransformer):
    def __init__(self, name: str) -> None:
        self.name = name

    def visit_Name(self, node: ast.Name) -> ast.AST:  # noqa: N802 - ast API
        return ast.Constant(1.0) if node.id == self.name else node


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
    try:
        used = _names(ast.parse(expression, mode="eval"))
    except SyntaxError as exc:
        raise UserError(
            f"law expression {expression!r} is not valid arithmetic: {exc.msg}"
        ) from exc
    if inputs is None:
        inputs = tuple(n for n in KNOWN_INPUTS if n in used)
    if not inputs:
        raise UserError(
            f"law expression {expression!r} uses none of the inputs {', '.join(KNOWN_INPUTS)}"
        )
    params = tuple(sorted(used - set(inputs)))
    tree = _parse(expression, set(inputs) | set(params))
    terms = _split_sum(tree.body)
    counts: dict[str, int] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id in params:
            counts[n.id] = counts.get(n.id, 0) + 1
    once = {p for p, c in counts.items() if c == 1}
    detected: list[str] = []
    bases: list[tuple[Callable[[Mapping[str, object]], np.ndarray], float]] = []
    offset_terms: list[tuple[ast.AST, float]] = []
    for term, sign in terms:
        p = _linear_factor(term, once - set(detected))
        if p is None or (linear is not None and p not in linear):
            offset_terms.append((term, sign))
            continue
        detected.append(p)
        rest = _ReplaceWithOne(p).visit(ast.parse(ast.unparse(term), mode="eval"))
        bases.append((_compile(ast.fix_missing_locations(rest)), sign))
    if linear is not None:
        bad = [p for p in linear if p not in detected]
        if bad:
            raise UserError(
                f"law expression {expression!r}: {', '.join(bad)} do not enter linearly "
                f"(linear candidates: {', '.join(detected) or 'none'})"
            )
    offset = None
    if offset_terms:
        src = " + ".join(f"({'-' if s < 0 else ''}({ast.unparse(t)}))" for t, s in offset_terms)
        offset = _compile(_parse(src, set(inputs) | set(params)))
    nonlinear = tuple(p for p in params if p not in detected)
    g = {p: _DEFAULT_EXP_GRID for p in nonlinear}
    g.update(dict(grid or {}))
    b = {p: (0.0, 3.0) for p in nonlinear}
    b.update(dict(bounds or {}))
    return LawForm(
        name=name,
        expression=expression,
        inputs=tuple(inputs),
        params=params,
        linear=tuple(detected),
        nonlinear=nonlinear,
        grid=g,
        bounds=b,
        _func=_compile(tree),
        _bases=tuple(bases),
        _offset=offset,
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
