"""A study's analysis: from the collector's two tables to study.json (no torch).

    analysis = analyze(results, curves)          # lists of dicts, as `study.collect` reads them
    json.dump(analysis, fh, allow_nan=False)     # every non-finite number is already None

Why one function: a study's questions (which architecture is better at equal compute, how far
the fits extrapolate, what to train at 1e22 FLOPs) each need several pieces of the laws engine
in a fixed order, and a small study lacks some of what they need. `analyze` runs every section
it can and marks the others `{"skipped": reason}`, so study.json and the report always have
every section and say why one is empty. Nothing is fitted here: the sections call
`moescale.laws` (fit_law, make_plan, allocate_sizing, fit_isoflop, curve_laws, fit_hyper_laws,
heatmap), and the engine's warnings are carried to `warnings`.

Sections of the result (the modules that compute them):

- `data`, `points`: the ladder points per architecture (`analysis_data`);
- `laws`: per architecture its fitted laws with intervals, held-out error, the engine's fit JSON
  (`analysis_fits`); `isoflop`, `frontier` (N_opt, D_opt, L* over a compute grid), `plans` at
  the budgets, `data_efficiency` and `equal_compute` (`analysis_frontier`, `analysis_compare`);
- `granularity_gap`: fine-grained against standard MoE, from the law and from the curves;
- `hyper`, `noise_scale` (`analysis_hyper`); `claims` (`analysis_claims`), `warnings`
  (`analysis_warnings`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from moescale.errors import UserError
from moescale.study.analysis_claims import claim_groups
from moescale.study.analysis_compare import curve_gap, envelope, matched
from moescale.study.analysis_data import (
    FLOPS_CONVENTION,
    FLOPS_DEFINITION,
    VARIANTS,
    Ladder,
    is_skipped,
    jsonable,
    ladder,
    skipped,
    stitched_curves,
)
from moescale.study.analysis_fits import ArchFits, fit_architecture, laws_section
from moescale.study.analysis_frontier import (
    comparison,
    compute_grid,
    frontier,
    granularity_gap,
    granularity_plan,
    isoflop,
    outside_runs,
    plan_at,
)
from moescale.study.analysis_hyper import hyper_section, noise_section
from moescale.study.analysis_warnings import collect_warnings

log = logging.getLogger(__name__)
SCHEMA = 1


def guarded(what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """`fn(*args)`, or a skipped section saying why it failed: one section's numerical
    failure never loses the others (it is logged with its traceback)."""
    try:
        return fn(*args, **kw)
    except UserError as exc:
        return skipped(str(exc))
    except Exception as exc:  # noqa: BLE001 - reported in the section and the log
        log.exception("analysis section %s failed", what)
        return skipped(f"failed: {type(exc).__name__}: {exc}")


def _data(lad: Ladder, results: Sequence[Mapping[str, Any]], budgets: Sequence[float]) -> dict:
    """What the analysis read: rows, points per architecture, E and G values, the convention."""
    pts = lad.all()
    out: dict[str, Any] = {
        "result_rows": len(results), "usable_runs": lad.runs, "hyper_runs": lad.hyper_runs,
        "ladder_points": {v: len(lad.points[v]) for v in VARIANTS},
        "experts": {v: sorted({p.experts for p in lad.points[v]}) for v in VARIANTS},
        "granularities": {v: sorted({p.granularity for p in lad.points[v]}) for v in VARIANTS},
        "budgets": list(budgets), "flops_convention": FLOPS_CONVENTION,
        "flops_definition": FLOPS_DEFINITION, "notes": lad.notes,
    }  # fmt: skip
    if pts:
        out["compute_range"] = [min(p.compute for p in pts), max(p.compute for p in pts)]
        ratio = [p.flops_exact / p.compute for p in pts if p.flops_exact > 0]
        out["exact_over_simple"] = [min(ratio), max(ratio)] if ratio else None
    return out


def _common_compute(fits: Mapping[str, ArchFits]) -> float | None:
    """The largest compute every fitted architecture measured (its fits' ranges)."""
    tops = [f.fit.compute_range[1] for f in fits.values() if f.fit and f.fit.compute_range]
    return min(tops) if tops else None


def _cached(cache: dict, key: tuple[str, str, float], fn: Callable[..., Any], *args: Any) -> Any:
    """`guarded(fn)` once per (what, architecture, compute): plans and comparisons serve
    several sections."""
    if key not in cache:
        cache[key] = guarded(key[0], fn, *args)
    return cache[key]


def _equal_compute_fits(fits: Mapping[str, ArchFits], computes: Sequence[float],
                        c_common: float | None, cache: dict) -> list[dict[str, Any]]:  # fmt: skip
    """Per compute: each architecture's fitted L* with interval and the pairwise gaps."""
    rows = []
    fg = fits.get("fine-grained")
    kgap = guarded("granularity gap", granularity_gap, fg, computes) if fg else skipped("none")
    for i, c in enumerate(computes):
        row: dict[str, Any] = {
            "compute": c,
            "loss": {},
            "gaps": {},
            "laws": {v: f.primary for v, f in fits.items()},
            "extrapolated": c_common is None or c > c_common * 1.01,
            "outside_data": {},
        }
        for v, f in fits.items():
            plan = _cached(cache, ("plan", v, c), plan_at, f, c)
            if not is_skipped(plan):
                nums = plan["numbers"]
                row["loss"][v] = nums["loss"]
                if far := outside_runs(nums["n_active"][0], nums["tokens"][0], f.points):
                    row["outside_data"][v] = far
            if v != "dense" and "dense" in fits:
                comp = _cached(cache, ("compare", v, c), comparison, f, fits["dense"], c)
                if not is_skipped(comp):
                    row["gaps"][f"{v}_vs_dense"] = _gap(comp)
                    if i == 0 and c_common is not None:
                        _law_sensitivity(row, v, f, fits["dense"], c)
        if not is_skipped(kgap):
            row["gaps"]["fine-grained_vs_moe"] = kgap["gap"][i]
        rows.append(row)
    return rows


def _gap(comp: Mapping[str, Any]) -> list[float]:
    return [comp["loss_gap"], *comp["intervals"].get("loss_gap", (math.nan, math.nan))]


def _law_sensitivity(row: dict[str, Any], v: str, f: ArchFits, dense: ArchFits,
                     c: float) -> None:  # fmt: skip
    """Where `v`'s primary law pools more than its own points (Wang's over E, Krajewski's over
    G) it also fits Chinchilla on its own points, the form dense has: when the two put
    `v`'s gap to dense at intervals that do not overlap, the fitted gap is the choice of law's,
    and `row["law_sensitivity"]` says so (warning `law_sensitivity`)."""
    if f.primary == "chinchilla" or "chinchilla" not in f.fits:
        return
    alt = guarded("compare", comparison, f, dense, c, "chinchilla")
    if is_skipped(alt):
        return
    main, other = row["gaps"][f"{v}_vs_dense"], _gap(alt)
    if all(math.isfinite(x) for x in (*main, *other)) and (main[2] < other[1] or
                                                          other[2] < main[1]):  # fmt: skip
        row.setdefault("law_sensitivity", {})[f"{v}_vs_dense"] = {f.primary: main,
                                                                   "chinchilla": other}


def _plans(fits: Mapping[str, ArchFits], budgets: Sequence[float], cache: dict) -> dict:
    """Each architecture's plan at each budget, and the best G among those trained."""
    out: dict[str, Any] = {}
    for v in VARIANTS:
        if v not in fits:
            out[v] = skipped(f"no {v} ladder runs")
            continue
        out[v] = [{"budget": b, **_cached(cache, ("plan", v, b), plan_at, fits[v], b)}
                  for b in budgets]  # fmt: skip
    if "fine-grained" in fits:
        fg = fits["fine-grained"]
        out["granularity_search"] = [guarded("G search", granularity_plan, fg, b) for b in budgets]
    else:
        out["granularity_search"] = skipped("no fine-grained ladder runs")
    return out


def _data_efficiency(fits: Mapping[str, ArchFits], budgets: Sequence[float],
                     cache: dict) -> dict[str, Any]:  # fmt: skip
    """MoE's and fine-grained MoE's comparison with dense at each budget (docs/science.md
    §3.1: loss gap, compute multiplier, data efficiency, with their definitions)."""
    out: dict[str, Any] = {}
    for v in ("moe", "fine-grained"):
        if v not in fits or "dense" not in fits:
            out[v] = skipped(f"needs dense and {v} ladder runs")
            continue
        rows = [_cached(cache, ("compare", v, b), comparison, fits[v], fits["dense"], b)
                for b in budgets]  # fmt: skip
        ok = [r for r in rows if not is_skipped(r)]
        out[v] = ok if ok else skipped(rows[0]["skipped"] if rows else "no budgets")
    return out


def analyze(
    results: Sequence[Mapping[str, Any]],
    curves: Sequence[Mapping[str, Any]],
    budgets: Sequence[float] = (1e18, 1e20, 1e22),
    bootstrap: int = 200,
    *,
    seed: int = 0,
    workers: int = 2,
) -> dict[str, Any]:
    """The study's analysis (module doc) as a JSON-serialisable dict; `bootstrap` draws per
    fit (0: no intervals), on `workers` processes."""
    results, curves, budgets = list(results), list(curves), sorted(float(b) for b in budgets)
    lad = ladder(results)
    stitched = stitched_curves(curves, results)
    fits: dict[str, ArchFits] = {}
    laws: dict[str, Any] = {}
    for v in VARIANTS:
        if not lad.points[v]:
            laws[v] = skipped(f"no {v} ladder runs")
            continue
        got = guarded("fit", fit_architecture, v, lad.points, bootstrap, seed, workers)
        if isinstance(got, ArchFits):
            fits[v], laws[v] = got, laws_section(got)
        else:
            laws[v] = got
    out: dict[str, Any] = {"schema": SCHEMA, "data": _data(lad, results, budgets),
                           "points": {v: [p.to_json() for p in lad.points[v]] for v in VARIANTS},
                           "laws": laws}  # fmt: skip
    grid = compute_grid(lad.all(), budgets) if lad.all() else []
    out["frontier"] = {v: guarded("frontier", frontier, fits[v], grid) if v in fits else
                       skipped(f"no {v} ladder runs") for v in VARIANTS}  # fmt: skip
    out["isoflop"] = {
        v: guarded("isoflop", isoflop, fits[v], budgets, bootstrap, seed)
        if v in fits
        else skipped(f"no {v} ladder runs")
        for v in VARIANTS
    }
    cache: dict[tuple[str, str, float], Any] = {}
    out["plans"] = _plans(fits, budgets, cache)
    out["data_efficiency"] = _data_efficiency(fits, budgets, cache)
    c_common = _common_compute(fits)
    computes = ([c_common] if c_common else []) + list(budgets)
    out["equal_compute"] = {
        "fits": _equal_compute_fits(fits, computes, c_common, cache) if fits else
        skipped("no law was fitted"), "common_compute": c_common,
        "matched": matched(lad.points), "envelope": envelope(lad.points),
    }  # fmt: skip
    fg = fits.get("fine-grained")
    out["granularity_gap"] = {
        "fit": guarded("granularity gap", granularity_gap, fg,
                       compute_grid(lad.all(), budgets, 10)) if fg else
        skipped("no fine-grained ladder runs"),
        "curves": guarded("curve gap", curve_gap, lad.points, stitched),
    }  # fmt: skip
    out["hyper"] = guarded("hyper", hyper_section, results, stitched, bootstrap, seed)
    out["noise_scale"] = guarded("noise scale", noise_section, results, stitched, bootstrap, seed)
    out = jsonable(out)
    groups = guarded("claims", claim_groups, out)
    if isinstance(groups, dict):  # skipped: the analysis stands, its sentences could not
        groups = [{"topic": "Claims", "claims": [f"No claims: {groups['skipped']}"]}]
    out["claim_groups"] = groups
    out["claims"] = [c for grp in groups for c in grp["claims"]]
    out["warnings"] = guarded("warnings", collect_warnings, out)
    if isinstance(out["warnings"], dict):
        out["warnings"] = [{"section": "analysis", "code": "failed",
                            "message": out["warnings"]["skipped"]}]  # fmt: skip
    return out
