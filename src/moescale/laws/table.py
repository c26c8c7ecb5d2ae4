"""Reading results tables (CSV or Parquet) and turning their columns into law inputs.

Every problem with the table is a UserError that names the file, the column, and where
possible the row (1-based, header not counted), so the user can fix the file.

External tables rarely hold exactly the rows and columns a fit needs, so `load_inputs` also
derives columns (`--transform "loss=log(perplexity)"`), filters rows (`--where "arch == 'moe'
and tokens > 1e9"`) and keeps the best row of each group (`--best-of loss --group-by arch,N,D`,
e.g. the best learning rate of each configuration). Both expression flags are parsed with `ast`
and evaluated by walking a whitelisted tree (names, numbers, strings, arithmetic, comparisons,
and/or/not, log/log10/exp/sqrt/abs/isfinite and col('a name with spaces')): nothing is `eval`ed.
"""

from __future__ import annotations

import ast
import csv
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from moescale.errors import UserError
from moescale.fmt import plural
from moescale.laws.forms import EXTRA_INPUTS, LawForm
from moescale.laws.result import pooling_warnings, shared_design
from moescale.run import Col

log = logging.getLogger(__name__)

# Results-table columns (moescale.run.Col) an input is read from unless overridden; N's column
# belongs to the law (`LawForm.n_column`: N_active for most laws, N_total for krajewski), and
# E's and G's to `EXTRA_INPUTS`.
DEFAULT_COLUMNS = {"D": Col.TOKENS, "C": Col.FLOPS, "loss": Col.VAL_LOSS, "run": Col.RUN}
COLUMN_FLAGS = {
    "N": "--n-col",
    "D": "--d-col",
    "C": "--flops-col",
    "loss": "--loss-col",
    "run": "--run-col",
    "budget": "--budget-col",
    **{k: x.column_flag for k, x in EXTRA_INPUTS.items()},
}
SYMBOLS = ("N", "D", "C", "loss", *EXTRA_INPUTS)


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a CSV or Parquet file as arrays (float where every value parses, else str)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"table {p} does not exist; give the path of a CSV or Parquet file")
    if p.is_dir():
        raise UserError(f"table {p} is a directory; give a CSV or Parquet file")
    raw: dict[str, list[object]]
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            raw = pq.read_table(p).to_pydict()
        except Exception as exc:
            raise UserError(f"cannot read Parquet table {p}: {exc}") from exc
    else:
        try:
            text = p.read_text(encoding="utf-8")
            head = text.partition("\n")[0]
            delim = ";" if head.count(";") > head.count(",") else ","  # Excel's in many locales
            rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delim))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"cannot read CSV table {p}: {exc}") from exc
        if not rows or not any(h.strip() for h in rows[0]):
            raise UserError(f"table {p} is empty; it needs a header row and data rows")
        header = [h.strip() for h in rows[0]]
        body = [r for r in rows[1:] if any(c.strip() for c in r)]
        for i, r in enumerate(body, start=1):
            if len(r) != len(header):
                raise UserError(f"table {p}: row {i} has {len(r)} fields but the header has "
                                f"{len(header)}")  # fmt: skip
        raw = {h: [r[j] for r in body] for j, h in enumerate(header)}
    out: dict[str, np.ndarray] = {}
    for name, vals in raw.items():
        try:
            out[name] = np.array([math.nan if v is None or str(v).strip() == "" else float(v)
                                  for v in vals], float)  # fmt: skip
        except (TypeError, ValueError):
            out[name] = np.array(["" if v is None else str(v) for v in vals])
    if not out or len(next(iter(out.values()))) == 0:
        raise UserError(f"table {p} has no data rows")
    return out


def numeric_column(table: Mapping[str, np.ndarray], name: str, flag: str) -> np.ndarray:
    """A column that must exist, be numeric, finite and > 0 (error names row and column)."""
    if name not in table:
        raise UserError(
            f"column {name!r} (set by {flag}) is not in the table; "
            f"available columns: {', '.join(table)}"
        )
    col = table[name]
    if col.dtype.kind not in "fi":
        bad = next(i for i, v in enumerate(col) if not _is_float(v))
        raise UserError(
            f"column {name!r} must be numeric; row {bad + 1} has {str(col[bad])!r}. "
            f"Choose another column with {flag}"
        )
    col = col.astype(float)
    bad = np.flatnonzero(~np.isfinite(col) | (col <= 0))
    if len(bad):
        i = int(bad[0])
        raise UserError(
            f"column {name!r} must be finite and > 0, but row {i + 1} has {float(col[i])} "
            f"({plural(len(bad), 'bad row')}); fix or remove those rows, e.g. with "
            f'--where "isfinite(col({name!r})) and col({name!r}) > 0"'
        )
    return col


def check_one_tokenizer(table: Mapping[str, np.ndarray]) -> None:
    """Refuse a table whose runs used different tokenizers: a loss in nats per token of one
    vocabulary is not comparable with one of another, so no law can be fitted across them."""
    if Col.TOKENIZER not in table:
        return
    hashes = sorted({str(v) for v in table[Col.TOKENIZER] if str(v) not in ("", "nan")})
    if len(hashes) > 1:
        shown = ", ".join(h[:12] for h in hashes[:4])
        raise UserError(
            f"the table mixes runs trained with {len(hashes)} different tokenizers (column "
            f"{Col.TOKENIZER!r}: {shown}); their losses are per token of different vocabularies "
            "and cannot be compared. Fit the runs of one tokenizer at a time."
        )


def _is_float(v: object) -> bool:
    try:
        float(str(v))
    except ValueError:
        return False
    return True


# ---------- row expressions: --where and --transform ----------
_ARITH: dict[type, Callable[..., np.ndarray]] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
    ast.Pow: np.power,
}  # fmt: skip
_CMP: dict[type, Callable[..., np.ndarray]] = {
    ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
    ast.Gt: np.greater, ast.GtE: np.greater_equal,
}  # fmt: skip
_ROW_FUNCS = {"log": np.log, "log10": np.log10, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs,
              "isfinite": np.isfinite}  # fmt: skip


def _is_text(v: object) -> bool:
    return isinstance(v, str) or (isinstance(v, np.ndarray) and v.dtype.kind in "USO")


@dataclass(frozen=True)
class _RowExpr:
    """One --where or --transform expression evaluated on a table, column by column."""

    table: Mapping[str, np.ndarray]
    aliases: Mapping[str, str]
    flag: str
    text: str

    def fail(self, what: str) -> UserError:
        return UserError(f"{self.flag} {self.text!r}: {what}")

    def column(self, name: str) -> np.ndarray:
        if name in self.table:
            return self.table[name]
        if self.aliases.get(name) in self.table:
            return self.table[self.aliases[name]]
        raise self.fail(
            f"no column {name!r}; available: {', '.join(self.table)} (write a name with spaces "
            "as col('Model Size'))"
        )

    def number(self, node: ast.AST) -> np.ndarray | float:
        v = self.eval(node)
        if _is_text(v):
            raise self.fail(f"{ast.unparse(node)} is text, but arithmetic needs numbers")
        return v

    def eval(self, node: ast.AST) -> object:
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
            return float(node.value) if not isinstance(node.value, str) else node.value
        if isinstance(node, ast.Name):
            return self.column(node.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            return self.call(node.func.id, node.args)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            with np.errstate(all="ignore"):
                return _ARITH[type(node.op)](self.number(node.left), self.number(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = self.number(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return np.logical_not(self.eval(node.operand))
        if isinstance(node, ast.BoolOp):
            join = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            vals = [np.asarray(self.eval(v), bool) for v in node.values]
            return join.reduce(np.broadcast_arrays(*vals))
        if isinstance(node, ast.Compare) and all(type(op) in _CMP for op in node.ops):
            return self.compare(node)
        raise self.fail(
            f"{ast.unparse(node)!r} is not allowed; use column names, numbers, 'strings', "
            "+ - * / **, comparisons, and/or/not, and log/log10/exp/sqrt/abs/isfinite"
        )

    def call(self, name: str, args: list[ast.expr]) -> object:
        if name == "col" and len(args) == 1:
            arg = args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                return self.column(arg.value)
        elif name in _ROW_FUNCS and len(args) == 1:
            with np.errstate(all="ignore"):
                return _ROW_FUNCS[name](self.number(args[0]))
        raise self.fail(f"{name}() is not allowed; use col('NAME'), {', '.join(_ROW_FUNCS)}")

    def compare(self, node: ast.Compare) -> np.ndarray:
        out: np.ndarray | bool = True
        left_node, left = node.left, self.eval(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.eval(right_node)
            if _is_text(left) != _is_text(right):
                text, num = (left_node, right_node) if _is_text(left) else (right_node, left_node)
                raise self.fail(
                    f"compares text ({ast.unparse(text)}) with a number ({ast.unparse(num)}); "
                    "quote the value or compare a numeric column"
                )
            out = np.logical_and(out, _CMP[type(op)](left, right))
            left_node, left = right_node, right
        return np.asarray(out)


def _parse(text: str, flag: str, mode: str) -> ast.AST:
    try:
        return ast.parse(text.strip(), mode=mode)
    except SyntaxError as exc:
        raise UserError(f"{flag} {text!r} is not a valid expression: {exc.msg}") from None


def select_rows(
    table: Mapping[str, np.ndarray], where: str, aliases: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """The rows of `table` for which the condition `where` holds (NaN compares as false)."""
    n = len(next(iter(table.values())))
    keep = _RowExpr(table, aliases or {}, "--where", where).eval(_parse(where, "--where", "eval"))
    keep = np.asarray(keep)
    if keep.dtype != bool:
        raise UserError(f'--where {where!r} must be a condition, such as "tokens > 1e9"')
    keep = np.broadcast_to(keep, (n,))
    if not keep.any():
        raise UserError(f"--where {where!r} keeps none of the {plural(n, 'row')}; loosen it")
    log.info("--where %s: kept %s of %d", where, plural(int(keep.sum()), "row"), n)
    return {k: v[keep] for k, v in table.items()}


def add_column(
    table: Mapping[str, np.ndarray], transform: str, aliases: Mapping[str, str] | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """`table` with the column of `transform` ("NAME=EXPR") added or replaced, and NAME."""
    tree = _parse(transform, "--transform", "exec")
    body = getattr(tree, "body", [])
    if not (len(body) == 1 and isinstance(body[0], ast.Assign) and len(body[0].targets) == 1):
        raise UserError(f"--transform {transform!r} must read NAME=EXPRESSION")
    target = body[0].targets[0]
    if not isinstance(target, ast.Name):
        raise UserError(f"--transform {transform!r}: the new column's name must be a plain name")
    value = _RowExpr(table, aliases or {}, "--transform", transform).number(body[0].value)
    n = len(next(iter(table.values())))
    return {**table, target.id: np.broadcast_to(np.asarray(value, float), (n,)).copy()}, target.id


# ---------- from columns to law inputs ----------
@dataclass
class FitInputs:
    """What `fit_law` needs, plus which table columns it came from.

    `x` holds N, D, C and any extra inputs (E, G) of the law; `sources` says for each of N, D,
    C whether it is a table column or derived, and `convention` says the same in words.
    """

    x: dict[str, np.ndarray]
    loss: np.ndarray
    compute: np.ndarray
    groups: np.ndarray | None
    columns: dict[str, str]
    derived: str | None  # e.g. "D = C / (6 N)" when one of N, D, C was derived
    sources: dict[str, str] = field(default_factory=dict)
    convention: str = ""
    budget: np.ndarray | None = None  # a nominal-budget column (IsoFLOP grouping)
    warnings: list[dict[str, str]] = field(default_factory=list)  # pooled populations
    design: dict[str, float] = field(default_factory=dict)  # result.shared_design

    def take(self, idx: np.ndarray) -> FitInputs:
        pick = None if self.groups is None else self.groups[idx]
        budget = None if self.budget is None else self.budget[idx]
        x = {k: v[idx] for k, v in self.x.items()}
        return replace(self, x=x, loss=self.loss[idx], compute=self.compute[idx], groups=pick,
                       budget=budget)  # fmt: skip


def _nd_columns(
    table: Mapping[str, np.ndarray], form: LawForm, given: Mapping[str, str], n_from_flops: bool
) -> dict[str, str]:
    """Columns of N, D, C: every one given or present under its default name."""
    defaults = {"N": form.n_column, "D": DEFAULT_COLUMNS["D"], "C": DEFAULT_COLUMNS["C"]}
    chosen = {k: given.get(k, defaults[k]) for k in "NDC" if k in given or defaults[k] in table}
    if n_from_flops:
        if "N" in given:
            raise UserError("--n-from-flops derives N as C / (6 D); leave out --n-col")
        chosen.pop("N", None)
        lacking = [f"{COLUMN_FLAGS[k]} (default {defaults[k]!r})" for k in "DC" if k not in chosen]
        if lacking:
            raise UserError(f"--n-from-flops needs D and C columns; set {' and '.join(lacking)}")
    if len(chosen) < 2:
        want = ", ".join(f"{COLUMN_FLAGS[k]} (default {defaults[k]!r})" for k in "NDC")
        raise UserError(
            f"need two of N, D, C columns: {want}; available columns: {', '.join(table)}"
        )
    return chosen


def fit_inputs(
    table: Mapping[str, np.ndarray],
    form: LawForm,
    columns: Mapping[str, str | None],
    n_from_flops: bool = False,
) -> FitInputs:
    """Resolve columns: N, D, C from every column given or present (C = 6·N·D gives one that
    is missing), loss, E, G, run, budget. `n_from_flops` takes N = C / (6 D) for the law's N,
    as Wang et al. (2024) do. `columns` maps an input to the column the user chose."""
    given = {k: v for k, v in columns.items() if v}
    chosen = _nd_columns(table, form, given, n_from_flops)
    cols = {k: numeric_column(table, v, COLUMN_FLAGS[k]) for k, v in chosen.items()}
    derived = None
    if "N" not in cols:
        cols["N"], derived = cols["C"] / (6.0 * cols["D"]), "N = C / (6 D)"
    if "D" not in cols:
        cols["D"], derived = cols["C"] / (6.0 * cols["N"]), "D = C / (6 N)"
    if "C" not in cols:
        cols["C"], derived = 6.0 * cols["N"] * cols["D"], "C = 6 N D"
    sources = {k: "table" for k in chosen}
    convention = f"{', '.join(k for k in 'NDC' if k in chosen)} from the table"
    if derived:
        sources[derived[0]] = derived.split(" = ")[1]
        wang = " (--n-from-flops, as Wang et al. 2024)" if n_from_flops else ""
        convention += f"; {derived}{wang}"
    lc = given.get("loss", DEFAULT_COLUMNS["loss"])
    names = {**chosen, "loss": lc}
    x = {k: cols[k] for k in "NDC"}
    for extra in form.extras:
        names[extra.symbol] = given.get(extra.symbol, extra.column)
        x[extra.symbol] = numeric_column(table, names[extra.symbol], extra.column_flag)
    groups = None
    rc = given.get("run", DEFAULT_COLUMNS["run"])
    if rc in table:
        groups, names["run"] = table[rc], rc
    elif "run" in given:
        raise UserError(
            f"column {rc!r} (set by {COLUMN_FLAGS['run']}) is not in the table; "
            f"available columns: {', '.join(table)}"
        )
    budget = None
    if "budget" in given:
        names["budget"] = given["budget"]
        budget = numeric_column(table, given["budget"], COLUMN_FLAGS["budget"])
    return FitInputs(
        x=x, loss=numeric_column(table, lc, COLUMN_FLAGS["loss"]), compute=cols["C"],
        groups=groups, columns=names, derived=derived, sources=sources, convention=convention,
        budget=budget,
    )  # fmt: skip


def keep_best(
    inp: FitInputs, table: Mapping[str, np.ndarray], best_of: str, group_by: Sequence[str]
) -> FitInputs:
    """The row with the lowest `best_of` in each group of equal `group_by` values (symbols N,
    D, C, loss, E, G or column names), e.g. the best learning rate of each (arch, N, D)."""
    cols = {**table, **inp.x, "loss": inp.loss}

    def value(name: str, flag: str) -> np.ndarray:
        if name not in cols:
            raise UserError(f"{flag}: no column {name!r}; use one of {', '.join(cols)}")
        return cols[name]

    score = value(best_of, "--best-of")
    if _is_text(score):
        raise UserError(f"--best-of {best_of}: the column holds text; choose a numeric one")
    keys = []
    for name in group_by:
        v = value(name, "--group-by")
        keys.append(v.astype(str) if _is_text(v) else np.array([f"{x:.10g}" for x in v]))
    rows = list(zip(*keys, strict=True)) if keys else [()] * len(score)
    best: dict[tuple[str, ...], int] = {}
    for i, key in enumerate(rows):
        if np.isfinite(score[i]) and (key not in best or score[i] < score[best[key]]):
            best[key] = i
    if not best:
        raise UserError(f"--best-of {best_of}: no row has a finite value")
    idx = np.array(sorted(best.values()))
    by = ", ".join(group_by) or "the whole table"
    log.info("--best-of %s: kept %s of %d (per %s)", best_of, plural(len(idx), "row"),
             len(score), by)  # fmt: skip
    return inp.take(idx)


@dataclass(frozen=True)
class TableOptions:
    """How a table becomes fit inputs: column choices (input -> column), derived columns
    ("NAME=EXPR", applied in order), a row filter, best-of per group (default groups: the
    law's inputs N, D, E, G), and N = C / (6 D)."""

    columns: Mapping[str, str | None] = field(default_factory=dict)
    transforms: Sequence[str] = ()
    where: str | None = None
    best_of: str | None = None
    group_by: Sequence[str] = ()
    n_from_flops: bool = False


def load_inputs(path: str | Path, form: LawForm, options: TableOptions) -> FitInputs:
    """Read the table at `path`, derive columns, filter rows, resolve inputs, keep the best."""
    if options.group_by and not options.best_of:
        raise UserError("--group-by only chooses the groups of --best-of; add --best-of COLUMN")
    table = read_table(path)
    columns = {k: v for k, v in options.columns.items() if v}
    aliases = {"N": form.n_column, **{k: v for k, v in DEFAULT_COLUMNS.items() if k != "run"}}
    aliases.update({x.symbol: x.column for x in form.extras})
    for text in options.transforms:
        table, name = add_column(table, text, {**aliases, **columns})
        if name in SYMBOLS and name not in columns:
            columns[name] = name  # `--transform loss=...` defines the loss
    if options.where:
        table = select_rows(table, options.where, {**aliases, **columns})
    check_one_tokenizer(table)
    inp = fit_inputs(table, form, columns, options.n_from_flops)
    inp.warnings, inp.design = pooling_warnings(table, form.inputs), shared_design(table)
    if options.best_of:
        by = options.group_by or ("N", "D", *(x.symbol for x in form.extras))
        inp = keep_best(inp, table, options.best_of, by)
    return inp
