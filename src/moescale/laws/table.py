"""Reading results tables (CSV or Parquet) and turning their columns into law inputs.

Every problem with the table is a UserError that names the file, the column, and where
possible the row (1-based, header not counted), so the user can fix the file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moescale.errors import UserError
from moescale.laws.forms import EXTRA_INPUTS, LawForm
from moescale.run import Col

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
    **{k: x.column_flag for k, x in EXTRA_INPUTS.items()},
}


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
            with p.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"cannot read CSV table {p}: {exc}") from exc
        if not rows or not any(h.strip() for h in rows[0]):
            raise UserError(f"table {p} is empty; it needs a header row and data rows")
        header = [h.strip() for h in rows[0]]
        body = [r for r in rows[1:] if any(c.strip() for c in r)]
        for i, r in enumerate(body, start=1):
            if len(r) != len(header):
                raise UserError(
                    f"table {p}: row {i} has {len(r)} fields but the header has {len(header)}"
                )
        raw = {h: [r[j] for r in body] for j, h in enumerate(header)}
    out: dict[str, np.ndarray] = {}
    for name, vals in raw.items():
        try:
            out[name] = np.array(
                [math.nan if v is None or str(v).strip() == "" else float(v) for v in vals],
                float,
            )
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
            f"column {name!r} must be numeric; row {bad + 1} has {col[bad]!r}. "
            f"Choose another column with {flag}"
        )
    col = col.astype(float)
    bad = np.flatnonzero(~np.isfinite(col) | (col <= 0))
    if len(bad):
        i = int(bad[0])
        raise UserError(
            f"column {name!r} must be finite and > 0, but row {i + 1} has {float(col[i])!r} "
            f"({len(bad)} bad row(s)); fix or remove those rows"
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


@dataclass
class FitInputs:
    """What `fit_law` needs, plus which table columns it came from."""

    x: dict[str, np.ndarray]
    loss: np.ndarray
    compute: np.ndarray
    groups: np.ndarray | None
    columns: dict[str, str]
    derived: str | None  # e.g. "D = C / (6 N)" when one of N, D, C was derived


def fit_inputs(
    table: Mapping[str, np.ndarray], form: LawForm, columns: Mapping[str, str | None]
) -> FitInputs:
    """Resolve columns: any two of N, D, C (C = 6·N·D gives the third), loss, E, G, run.

    `columns` maps an input (N, D, C, loss, run, E, G) to the column the user chose (None or
    absent: the default)."""
    given = {k: v for k, v in columns.items() if v}
    defaults = {"N": form.n_column, "D": DEFAULT_COLUMNS["D"], "C": DEFAULT_COLUMNS["C"]}
    chosen = {k: given[k] for k in ("N", "D", "C") if k in given}
    for k in ("N", "D", "C"):
        if len(chosen) >= 2:
            break
        if k not in chosen and defaults[k] in table:
            chosen[k] = defaults[k]
    if len(chosen) < 2:
        want = ", ".join(f"{COLUMN_FLAGS[k]} (default {defaults[k]!r})" for k in ("N", "D", "C"))
        raise UserError(
            f"need two of N, D, C columns: {want}; available columns: {', '.join(table)}"
        )
    cols = {k: numeric_column(table, v, COLUMN_FLAGS[k]) for k, v in chosen.items()}
    derived = None
    if "N" not in cols:
        cols["N"], derived = cols["C"] / (6.0 * cols["D"]), "N = C / (6 D)"
    if "D" not in cols:
        cols["D"], derived = cols["C"] / (6.0 * cols["N"]), "D = C / (6 N)"
    if "C" not in cols:
        cols["C"], derived = 6.0 * cols["N"] * cols["D"], "C = 6 N D"
    lc = given.get("loss", DEFAULT_COLUMNS["loss"])
    y = numeric_column(table, lc, COLUMN_FLAGS["loss"])
    x = {"N": cols["N"], "D": cols["D"], "C": cols["C"]}
    names = {**chosen, "loss": lc}
    for extra in form.extras:
        name = given.get(extra.symbol, extra.column)
        x[extra.symbol] = numeric_column(table, name, extra.column_flag)
        names[extra.symbol] = name
    groups = None
    rc = given.get("run", DEFAULT_COLUMNS["run"])
    if rc in table:
        groups = table[rc]
        names["run"] = rc
    elif "run" in given:
        raise UserError(
            f"column {rc!r} (set by {COLUMN_FLAGS['run']}) is not in the table; "
            f"available columns: {', '.join(table)}"
        )
    return FitInputs(
        x={k: v for k, v in x.items() if k in form.inputs},
        loss=y,
        compute=cols["C"],
        groups=groups,
        columns=names,
        derived=derived,
    )
