"""Law expressions as strings: a safe parser, and the split into linear coefficients.

An expression is parsed with `ast` against a whitelist (arithmetic, numbers, the declared names,
exp/log/sqrt); nothing reaches `eval` that the whitelist did not accept. `linear_structure`
then finds the parameters that enter linearly (each multiplies one additive term and appears
nowhere else), so that variable projection can solve them by non-negative least squares.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from moescale.errors import UserError

Func = Callable[[Mapping[str, object]], np.ndarray]

FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
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


def compile_tree(tree: ast.Expression) -> Func:
    """Compile a whitelisted expression tree into a function of a name -> value mapping."""
    code = compile(tree, "<law>", "eval")

    def func(env: Mapping[str, object]) -> np.ndarray:
        scope: dict[str, object] = {"__builtins__": {}}
        scope.update(FUNCS)
        scope.update(env)
        with np.errstate(all="ignore"):
            return np.asarray(eval(code, scope))  # noqa: S307 - tree checked by parse

    return func


def parse(expr: str, allowed: set[str]) -> ast.Expression:
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
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCS) or node.keywords:
                raise UserError(
                    f"law expression {expr!r}: only exp(), log() and sqrt() may be called"
                )
        if isinstance(node, ast.Name) and node.id not in allowed and node.id not in FUNCS:
            raise UserError(
                f"law expression {expr!r}: unknown name {node.id!r}; "
                f"allowed: {', '.join(sorted(allowed))}, exp, log, sqrt"
            )
    return tree


def compile_expression(expr: str, allowed: set[str]) -> Func:
    """`parse` then `compile_tree`."""
    return compile_tree(parse(expr, allowed))


def names(expr: str) -> set[str]:
    """The names an expression uses (function names excluded)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise UserError(f"law expression {expr!r} is not valid arithmetic: {exc.msg}") from exc
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in FUNCS}


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


@dataclass(frozen=True)
class LinearStructure:
    """An expression as Σ_j sign_j · coef_j · basis_j + offset, the coefficients `linear`."""

    func: Func
    linear: tuple[str, ...]
    bases: tuple[tuple[Func, float], ...]
    offset: Func | None


def linear_structure(
    expression: str,
    inputs: tuple[str, ...],
    params: tuple[str, ...],
    linear: tuple[str, ...] | None,
) -> LinearStructure:
    """Detect the linear coefficients of `expression` (restricted to `linear` when given)."""
    tree = parse(expression, set(inputs) | set(params))
    counts: dict[str, int] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id in params:
            counts[n.id] = counts.get(n.id, 0) + 1
    once = {p for p, c in counts.items() if c == 1}
    detected: list[str] = []
    bases: list[tuple[Func, float]] = []
    offset_terms: list[tuple[ast.AST, float]] = []
    for term, sign in _split_sum(tree.body):
        if isinstance(term, ast.Name) and term.id in inputs:  # "E + A/N**alpha + B/D**beta"
            raise UserError(
                f"law expression {expression!r} adds the input {term.id} as a term: N, D, C, E "
                f"(experts) and G are inputs; name a constant otherwise, e.g. {term.id}0"
            )
        p = _linear_factor(term, once - set(detected))
        if p is None or (linear is not None and p not in linear):
            offset_terms.append((term, sign))
            continue
        detected.append(p)
        rest = _ReplaceWithOne(p).visit(ast.parse(ast.unparse(term), mode="eval"))
        bases.append((compile_tree(ast.fix_missing_locations(rest)), sign))
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
        offset = compile_expression(src, set(inputs) | set(params))
    return LinearStructure(compile_tree(tree), tuple(detected), tuple(bases), offset)
