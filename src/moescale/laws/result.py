"""Fits as values: `FitResult` (a parametric law) and `IsoFLOPResult` (IsoFLOP profiles,
Hoffmann et al. 2022's approach 2), and their JSON (what `moescale fit --json` writes and
`moescale plan --fit` reads back; `read_any_fit` tells the two apart by the JSON's "method").

Both record what they cannot vouch for: `warnings` ({code, message}: the cause and the remedy),
`unidentified` (parameters the data cannot pin down, which get no interval rather than a
misleading one), bootstrap draws that failed or were degenerate, and `compute_range`, the
smallest and largest compute of the fitted points (a plan far beyond it extrapolates)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from moescale.errors import UserError
from moescale.laws.forms import LawForm, form_from_spec
from moescale.run import Col

if TYPE_CHECKING:
    from moescale.laws.isoflop import IsoFLOPResult
    from moescale.laws.problem import Problem

log = logging.getLogger(__name__)
FLOPS_CONVENTION = "C = 6 N D"
MIN_BOOT_UNITS = 5  # fewer resampling units give at most 35 distinct resamples
T = TypeVar("T")


@dataclass
class FitResult:
    """A fitted law: values, objective, errors, and bootstrap uncertainty.

    `params` name -> value; `intervals` name -> (lo, hi) 95 % percentile bootstrap intervals
    (empty without bootstrap); `bootstrap_params` one dict per successful draw, so downstream
    quantities (N_opt, predicted loss) get intervals too; `in_sample` {mae, rmse} of L on the
    fitted points; `holdout` {mae, max_abs, n}: refit without the largest-compute points and
    predict them; `dropped` the 0-based rows removed as outliers. When fitted from a table:
    `table` its path, `columns` input -> column name, `derived` which of N, D, C was computed
    from the other two, `sources` the same for each ("table" or a formula), `flops_convention`
    in words, `selection` the row filters applied. `bootstrap_requested` draws were run, of
    which `bootstrap_failed` did not fit and `bootstrap_degenerate` had a zero exponent or
    coefficient; neither is among `bootstrap_params`. `warnings`, `unidentified` and
    `compute_range` as in the module doc; `huber_delta` the δ of a Huber fit.
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
    columns: dict[str, str] = field(default_factory=dict)
    derived: str | None = None
    table: str | None = None
    flops_convention: str = FLOPS_CONVENTION
    warnings: list[dict[str, str]] = field(default_factory=list)
    unidentified: list[str] = field(default_factory=list)
    bootstrap_requested: int = 0
    bootstrap_failed: int = 0
    bootstrap_degenerate: int = 0
    compute_range: tuple[float, float] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    huber_delta: float | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    design: dict[str, float] = field(default_factory=dict)  # shared_design of the rows

    def form(self) -> LawForm:
        """The law form this result was fitted with (rebuilt from its spec)."""
        return form_from_spec(self.spec or {"name": self.law})

    def predict(self, x: Mapping[str, np.ndarray]) -> np.ndarray:
        """Loss predicted by the fitted parameters at inputs `x`."""
        return self.form().predict(x, self.params)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite floats are left to the writer, `emit_json`)."""
        return {
            "law": self.law,
            "expression": self.expression,
            "inputs": list(self.inputs),
            "spec": dict(self.spec),
            "params": dict(self.params),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "objective": self.objective,
            "holdout": dict(self.holdout),
            "in_sample": dict(self.in_sample),
            "n_points": self.n_points,
            "method": self.method,
            "loss": self.loss,
            "columns": dict(self.columns),
            "derived": self.derived,
            "flops_convention": self.flops_convention,
            "dropped_rows": [i + 1 for i in self.dropped],
            "bootstrap_draws": len(self.bootstrap_params),
            "bootstrap_params": [dict(p) for p in self.bootstrap_params],
            "table": self.table,
            **_diagnostics_json(self),
            "sources": dict(self.sources),
            "huber_delta": self.huber_delta,
            "selection": dict(self.selection),
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> FitResult:
        """Validate and rebuild what `to_json` wrote; `law` and `params` are required (so a
        hand-written {"law": ..., "params": ...} works). Errors name `source` and the key."""
        get = _Reader(data, source)
        law = get("law", _str)
        spec = get("spec", _mapping(_any), {"name": law})
        try:
            form = form_from_spec(spec)
        except (UserError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: key 'spec' (law {law!r}) is not usable: {exc}") from exc
        params, boot = get.params_and_draws(form.params, f"law {law}", _number)
        return cls(
            law=law,
            expression=get("expression", _str, form.expression),
            params=params,
            objective=get("objective", _number_or_null, math.nan),
            method=get("method", _str, ""),
            loss=get("loss", _str, ""),
            n_points=get("n_points", _int, 0),
            in_sample=get("in_sample", _mapping(_number_or_null), {}),
            holdout=get(
                "holdout", _mapping(_holdout_value), {"mae": None, "max_abs": None, "n": 0}
            ),
            intervals=get("intervals", _mapping(_pair), {}),
            bootstrap_params=boot,
            dropped=[r - 1 for r in get("dropped_rows", _list(_int), [])],
            inputs=tuple(get("inputs", _list(_str), list(form.inputs))),
            spec=dict(spec),
            columns=get("columns", _mapping(_str), {}),
            derived=get("derived", _optional(_str), None),
            table=get("table", _optional(_str), None),
            flops_convention=get("flops_convention", _str, FLOPS_CONVENTION),
            sources=get("sources", _mapping(_str), {}),
            huber_delta=get("huber_delta", _optional(_number), None),
            selection=get("selection", _mapping(_any), {}),
            **_diagnostics_from(get, len(boot)),
        )


ISOFLOP = "isoflop"  # the "method" of an IsoFLOPResult (moescale.laws.isoflop)


def diagnose(
    prob: Problem,
    v: np.ndarray,
    samples: list[dict[str, float]],
    requested: int = 0,
    failed: int = 0,
    degenerate: int = 0,
    few_units: int = 0,
) -> tuple[list[dict[str, str]], list[str], dict[str, tuple[float, float]]]:
    """What a parametric fit records about itself: warnings ({code, message}, each also
    logged), the parameters the data cannot identify (`Problem.identifiability`), and 95 %
    percentile intervals of the others over the bootstrap draws that fitted, `samples`
    (`requested` draws, of which `failed` did not fit and `degenerate`, a zero exponent or
    coefficient, are left out of `bootstrap_params` but not of the intervals). A
    parameter that every draw pins to the same bound gets no interval: a zero-width interval
    would claim a certainty the data lack, and so does one that every draw leaves where it
    was: the resamples do not move it. `few_units`: the bootstrap was not run, since it would
    resample only that many runs (or trunks with their branches; MIN_BOOT_UNITS)."""
    found = prob.identifiability(v)
    if few_units:
        found.append(("few_bootstrap_units", f"the bootstrap resamples whole runs (a trunk with "
                      f"its branches counts once) and there are only {few_units}: at most "
                      f"{math.comb(2 * few_units - 1, few_units)} distinct resamples, too few "
                      "for an interval, so none is given; add model sizes or seeds",
                      set()))  # fmt: skip
    if requested and (failed + degenerate > 0.05 * requested or not samples):
        why = f"{failed} of {requested} bootstrap draws failed and {degenerate} were degenerate"
        fix = "intervals of N_opt and other derived quantities use the others only"
        found.append(("bootstrap_draws", f"{why} (a zero exponent or coefficient): {fix}", set()))
    unidentified = set().union(*(names for _, _, names in found))
    found += _draws_at_bounds(prob, samples)  # warned, its interval kept
    pinned = set(prob.at_bounds(v)) | set(prob.vanished(v)) | set(prob.vanished(v, True))
    intervals = {}
    for q in prob.form.params:
        if not samples or q in unidentified:
            continue
        col = np.array([s[q] for s in samples])
        lo, hi = float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5))
        if hi - lo <= 1e-12 * max(abs(lo), abs(hi)):
            why = f"every bootstrap draw {'pins' if q in pinned else 'leaves'} {q} at {lo:g}"
            found.append(("zero_width", f"{why}: it is unidentified, not known exactly", {q}))
            unidentified.add(q)
        else:
            intervals[q] = (lo, hi)
    for _, message, _ in found:
        log.warning(message)
    order = [q for q in prob.form.params if q in unidentified]
    return [{"code": code, "message": m} for code, m, _ in found], order, intervals


def _draws_at_bounds(prob: Problem, samples: list[dict[str, float]]) -> list[tuple]:
    """A parameter that a quarter or more of the draws put at a search bound: its interval
    reaches the bound because the data do not bound it there."""
    if not samples:
        return []
    order = prob.form.linear + prob.form.nonlinear  # the vector's layout (_Fitter.named)
    hits: dict[str, int] = {}
    for s in samples:
        for q in prob.at_bounds(np.array([s[n] for n in order])):
            hits[q] = hits.get(q, 0) + 1
    return [("draws_at_bound", f"{k} of {len(samples)} bootstrap draws put {q} at a bound of "
             "its search: the data do not bound it there, and its interval (and those of "
             "N_opt and D_opt) reaches the bound", {q}) for q, k in hits.items()
            if k >= 0.25 * len(samples)]  # fmt: skip


DESIGN_COLUMNS = (Col.EXPERTS, Col.GRANULARITY, Col.TOP_K)


def shared_design(table: Mapping[str, np.ndarray]) -> dict[str, float]:
    """experts, granularity and top_k that every row shares. The fit JSON records them (top
    level): `plan` takes them as the law's E, G and k, and refuses a fit of MoE rows given as
    the dense side of --compare."""
    out = {}
    for col in DESIGN_COLUMNS:
        values = np.asarray(table.get(col, []))
        if len(values) and values.dtype.kind in "fi" and np.all(values == values[0]):
            out[col] = float(values[0])
    return out


def pooling_warnings(
    table: Mapping[str, np.ndarray], law_inputs: Sequence[str]
) -> list[dict[str, str]]:
    """Rows from populations the law cannot tell apart (each also logged): experts or
    granularity that vary where the law has no E or G input (one law through dense, MoE and
    fine-grained runs), and the off-default runs of a study's hyperparameter sweep (column
    `hyper`). A results table of a study holds both, so a plain `fit` of it would pool them."""
    found = []
    varied = {symbol: col for symbol, col in (("E", "experts"), ("G", "granularity"))
              if symbol not in law_inputs and len(np.unique(table.get(col, []))) > 1}  # fmt: skip
    if varied:
        names = table.get("arch_name", table.get("arch"))
        archs = sorted({str(v) for v in names}) if names is not None else []
        pick = (f"--where \"arch_name == '{archs[0]}'\"" if archs else
                f"--where \"{next(iter(varied.values()))} == 1\"")  # fmt: skip
        what = f"{len(archs)} architectures ({', '.join(archs)})" if archs else "the rows"
        found.append(("mixed_architectures", f"{what} differ in {' and '.join(varied.values())}, "
                      f"which the law has no input for ({', '.join(varied)}): one law through "
                      f"all of them; fit each apart ({pick}) or use a law with "
                      f"{' and '.join(varied)}"))  # fmt: skip
    swept = sorted({str(v) for v in table.get("hyper", []) if isinstance(v, str) and v})
    if swept:
        found.append(("hyper_sweep_rows", f"rows from the {' and '.join(swept)} sweep (column "
                      "hyper) are runs away from the base hyperparameters; add --where "
                      "\"hyper == ''\" to leave them out"))  # fmt: skip
    unfinished = sorted({str(v) for v in table.get("status", []) if str(v) != "done"})
    if unfinished:
        found.append(("unfinished_rows", f"rows with status {', '.join(unfinished)} (column "
                      "status) are not finished runs; add --where \"status == 'done'\" to leave "
                      "them out"))  # fmt: skip
    rows = list(zip(*(np.asarray(v).astype(str).tolist() for v in table.values()), strict=True))
    if len(set(rows)) < len(rows):
        found.append(("duplicate_rows", f"{len(rows) - len(set(rows))} rows repeat another row "
                      "in every column (a table concatenated twice?): each counts as a point"))
    for _, message in found:
        log.warning(message)
    return [{"code": code, "message": m} for code, m in found]


def selection(options: object, rows: int) -> dict[str, object]:
    """The row selection of a `table.TableOptions` as a fit's JSON records it (the columns are
    recorded apart), with the number of rows it kept."""
    out = {k: list(v) if isinstance(v, tuple | list) else v for k, v in vars(options).items()}
    return {**{k: v for k, v in out.items() if k != "columns"}, "rows": rows}


def _diagnostics_json(res: FitResult | IsoFLOPResult) -> dict[str, Any]:
    return {
        "warnings": [dict(w) for w in res.warnings],
        "unidentified": list(res.unidentified),
        "bootstrap_requested": res.bootstrap_requested,
        "bootstrap_failed": res.bootstrap_failed,
        "bootstrap_degenerate": res.bootstrap_degenerate,
        "compute_range": None if res.compute_range is None else list(res.compute_range),
        **res.design,
    }


def _diagnostics_from(get: _Reader, draws: int) -> dict[str, Any]:
    """The keys of `_diagnostics_json`; files written before them read as clean."""
    return {
        "warnings": get("warnings", _list(_mapping(_str)), []),
        "unidentified": get("unidentified", _list(_str), []),
        "bootstrap_requested": get("bootstrap_requested", _int, draws),
        "bootstrap_failed": get("bootstrap_failed", _int, 0),
        "bootstrap_degenerate": get("bootstrap_degenerate", _int, 0),
        "compute_range": get("compute_range", _optional(_pair), None),
        "design": {c: v for c in DESIGN_COLUMNS
                   if (v := get(c, _optional(_number), None)) is not None},  # fmt: skip
    }


def _load_json(path: str | Path, flag: str) -> tuple[Any, str]:
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a fit's JSON" if p.is_dir() else "does not exist"
        raise UserError(f"{flag} {p} {what}; write one with `moescale fit TABLE --json FILE`")
    try:
        return json.loads(p.read_text(encoding="utf-8")), f"{flag} {p}"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{flag} {p} is not readable JSON: {exc}") from exc


def read_fit(path: str | Path, flag: str = "--fit") -> FitResult:
    """The fit JSON at `path` (written by `moescale fit --json`), or a UserError saying why not."""
    data, source = _load_json(path, flag)
    if isinstance(data, Mapping) and data.get("method") == ISOFLOP:
        raise UserError(f"{source} holds IsoFLOP profiles, not a fitted law; fit one with --law")
    return FitResult.from_json(data, source)


def read_any_fit(path: str | Path, flag: str = "--fit") -> FitResult | IsoFLOPResult:
    """A fit JSON of either kind: an `IsoFLOPResult` when its "method" is "isoflop", else a
    `FitResult`; a UserError naming `flag` and the file when it is neither."""
    data, source = _load_json(path, flag)
    if isinstance(data, Mapping) and data.get("method") == ISOFLOP:
        from moescale.laws.isoflop import IsoFLOPResult

        return IsoFLOPResult.from_json(data, source)
    return FitResult.from_json(data, source)


# ---------- checked conversion of JSON values (ValueError: what was wanted) ----------
class _Reader:
    def __init__(self, data: Any, source: str) -> None:
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
        self.data, self.source = data, source

    def params_and_draws(
        self, names: Sequence[str], what: str, draw: Callable[[Any], float]
    ) -> tuple[dict[str, float], list[dict[str, float]]]:
        """`params` (every name in `names` required) and `bootstrap_params`, whose length
        must agree with `bootstrap_draws` when that is given."""
        params = self("params", _mapping(_number))
        missing = [q for q in names if q not in params]
        if missing:
            raise UserError(f"{self.source}: key 'params' lacks {', '.join(missing)} ({what})")
        boot = self("bootstrap_params", _list(_mapping(draw)), [])
        if self("bootstrap_draws", _int, len(boot)) != len(boot):
            raise UserError(
                f"{self.source}: key 'bootstrap_draws' disagrees with 'bootstrap_params'"
            )
        return params, boot

    def __call__(self, key: str, convert: Callable[[Any], T], *default: T) -> T:
        if key not in self.data or (default and self.data[key] is None):
            if not default:
                raise UserError(
                    f"{self.source}: lacks key {key!r}; is it `moescale fit --json` output?"
                )
            return default[0]
        try:
            return convert(self.data[key])
        except (TypeError, ValueError) as exc:
            raise UserError(f"{self.source}: key {key!r} {exc}") from None


def _any(v: Any) -> Any:
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"holds {v!r}, expected a string")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"holds {v!r}, expected an integer")
    return v


def _number(v: Any) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ValueError(f"holds {v!r}, expected a number")
    return float(v)


def _number_or_null(v: Any) -> float:
    """A number; null (how a non-finite value is written) reads back as nan."""
    return math.nan if v is None else _number(v)


def _holdout_value(v: Any) -> float | int | None:
    return v if v is None or (isinstance(v, int) and not isinstance(v, bool)) else _number(v)


def _pair(v: Any) -> tuple[float, float]:
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise ValueError(f"holds {v!r}, expected [low, high]")
    return _number_or_null(v[0]), _number_or_null(v[1])


def _optional(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    return lambda v: None if v is None else convert(v)


def _list(convert: Callable[[Any], T]) -> Callable[[Any], list[T]]:
    def f(v: Any) -> list[T]:
        if not isinstance(v, list):
            raise ValueError(f"holds {type(v).__name__}, expected a list")
        return [convert(e) for e in v]

    return f


def _mapping(convert: Callable[[Any], T]) -> Callable[[Any], dict[str, T]]:
    def f(v: Any) -> dict[str, T]:
        if not isinstance(v, Mapping):
            raise ValueError(f"holds {type(v).__name__}, expected an object")
        return {str(k): convert(e) for k, e in v.items()}

    return f
