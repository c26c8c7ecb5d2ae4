"""Study analysis, part 2: the parametric laws of each architecture, through `fit_law`.

Why each law (docs/science.md §2.1), each architecture fitted on its own runs as Wang et al.
(2024) do:

- dense: Chinchilla's `E0 + A/N^α + B/D^β` on (N_active, D);
- moe (G = 1): Wang et al.'s `A/(N^α·E^γ) + B/D^β + σ` on (N_active, D, E) when the study has
  two or more E values; with one E, γ folds into A and is unidentified, so the fit is skipped
  with that reason. Chinchilla on the MoE points of the design E is fitted as well, and is the
  law planned with when Wang's cannot be fitted;
- fine-grained: Krajewski et al.'s `c + (g/G^γ + a)/N^α + b/D^β` on every MoE point of the
  fine-grained design's E and k (G = 1 and G > 1 together: G's effect is what it measures), N =
  `params_total_no_router` (their N_total, docs/conventions.md); Chinchilla on the fine-grained
  points alone as well, the fallback when only one G exists.

Every fit bootstraps whole runs (a WSD branch with its trunk), reports its error on the held-out
largest-compute points, and carries the engine's warnings. `heldout` re-predicts those points
one by one for the report's figure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.laws import FitResult, fit_law, get_form
from moescale.laws.family import Family
from moescale.study.analysis_data import FLOPS_DEFINITION, Point, column, mode
from moescale.study.analysis_family import family_from_points

log = logging.getLogger(__name__)
HOLDOUT_FRAC = 0.1  # the laws engine's default
N_ATTR = {"params_active": "n_active", "params_total_no_router": "n_total_no_router"}


@dataclass
class LawSpec:
    """One law to fit: its name, its points, the results column of its N, extra inputs."""

    law: str
    points: list[Point]
    n_column: str
    extras: tuple[str, ...] = ()  # "E", "G"
    what: str = ""  # which points, in words


@dataclass
class ArchFits:
    """One architecture's laws: `fits` law -> FitResult, `skipped` law -> reason, `primary`
    the law its plans use (None: none fitted), `design` the E, G, k planned, `family` the
    template its models are built from (None: `family_note` says why)."""

    variant: str
    points: list[Point]
    specs: dict[str, LawSpec] = field(default_factory=dict)
    fits: dict[str, FitResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    primary: str | None = None
    design: dict[str, float] = field(default_factory=dict)
    family: Family | None = None
    family_note: str = ""
    notes: list[str] = field(default_factory=list)
    not_identified: dict[str, list[str]] = field(default_factory=dict)  # law -> parameters

    @property
    def fit(self) -> FitResult | None:
        return self.fits.get(self.primary) if self.primary else None


def _inputs(spec: LawSpec) -> dict[str, np.ndarray]:
    x = {"N": column(spec.points, N_ATTR[spec.n_column]), "D": column(spec.points, "tokens")}
    names = {"E": "experts", "G": "granularity"}
    x.update({e: column(spec.points, names[e]) for e in spec.extras})
    return x


def run_fit(spec: LawSpec, bootstrap: int, seed: int, workers: int) -> FitResult:
    """`fit_law` on a spec's points, recording the columns and convention it used."""
    groups = np.array([p.group for p in spec.points])
    res = fit_law(
        spec.law, _inputs(spec), column(spec.points, "loss"),
        compute=column(spec.points, "compute"), groups=groups, bootstrap_draws=bootstrap,
        holdout_frac=HOLDOUT_FRAC, seed=seed, workers=workers,
    )  # fmt: skip
    cols = {
        "N": spec.n_column,
        "D": "tokens",
        "C": "flops_simple",
        "loss": "val_loss",
        "run": "run",
        **{e: {"E": "experts", "G": "granularity"}[e] for e in spec.extras},
    }
    return dataclasses.replace(
        res, columns=cols, sources={"N": "table", "D": "table", "C": "table"},
        flops_convention=FLOPS_DEFINITION,
        selection={"points": spec.what, "best_of": "val_loss", "rows": len(spec.points)},
    )  # fmt: skip


def _specs(variant: str, points: dict[str, list[Point]]) -> tuple[list[LawSpec], dict, dict]:
    """Laws to fit for `variant` (module doc), the reasons some cannot be, and the design."""
    mine, skip = points.get(variant, []), {}
    if variant == "dense":
        return [LawSpec("chinchilla", mine, "params_active", what="dense ladder points")], {}, {}
    design = {"E": mode(p.experts for p in mine), "k": mode(p.top_k for p in mine)}
    if variant == "moe":
        same = [p for p in mine if p.experts == design["E"]]
        specs = [LawSpec("chinchilla", same, "params_active",
                         what=f"MoE points with E = {design['E']:g}")]  # fmt: skip
        es = sorted({p.experts for p in mine})
        if len(es) >= 2:
            specs.insert(0, LawSpec("wang", mine, "params_active", ("E",),
                                    what=f"MoE (G = 1) points, E in {es}"))  # fmt: skip
        else:
            skip["wang"] = (
                f"only one expansion rate (E = {es[0]:g}) among the MoE runs: γ (the E exponent)"
                " is unidentified, since E^γ folds into A; Chinchilla on (N_active, D) is fitted"
                " to the MoE points instead. Add runs at a second E to fit Wang et al.'s form"
            )
        return specs, skip, {**design, "G": 1.0}
    design["G"] = mode(p.granularity for p in mine)
    fg = [p for p in mine if p.granularity == design["G"] and p.experts == design["E"]]
    specs = [LawSpec("chinchilla", fg, "params_active",
                     what=f"fine-grained points with G = {design['G']:g}")]  # fmt: skip
    family = [p for v in ("moe", "fine-grained") for p in points.get(v, [])
              if p.experts == design["E"] and p.top_k == design["k"]]  # fmt: skip
    gs = sorted({p.granularity for p in family})
    if len(gs) >= 2:
        what = f"MoE points with E = {design['E']:g}, k = {design['k']:g}, G in {gs}"
        specs.insert(0, LawSpec("krajewski", family, "params_total_no_router", ("G",), what))
    else:
        skip["krajewski"] = (
            f"one granularity (G = {gs[0]:g}) among the MoE runs with E = {design['E']:g}: "
            "Krajewski et al.'s G exponent is unidentified; add G = 1 runs of the same E and k"
        )
    return specs, skip, design


def fit_architecture(
    variant: str, points: dict[str, list[Point]], bootstrap: int, seed: int, workers: int
) -> ArchFits:
    """Every law of `variant` (module doc); a law that cannot be fitted is skipped with why."""
    out = ArchFits(variant, points.get(variant, []))
    specs, out.skipped, out.design = _specs(variant, points)
    for j, spec in enumerate(specs):
        out.specs[spec.law] = spec
        try:
            out.fits[spec.law] = run_fit(spec, bootstrap, seed + j, workers)
        except (UserError, ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            out.skipped[spec.law] = f"{spec.law} on {len(spec.points)} points: {exc}"
    out.primary = next((s.law for s in specs if s.law in out.fits), None)
    if "krajewski" in out.fits:
        gs = sorted({p.granularity for p in out.specs["krajewski"].points})
        if len(gs) == 2:
            out.not_identified["krajewski"] = ["g", "a", "gamma"]
            out.notes.append(
                f"Krajewski et al.'s law gives G's effect three parameters (g, a, γ) but the "
                f"study has two granularities (G = {gs[0]:g}, {gs[1]:g}): only the difference "
                "between them is measured, γ and the split of g and a are not identified, so "
                "predictions at any other G rest on the form alone"
            )
    design = [p for p in out.points if p.experts == out.design.get("E", p.experts)
              and p.granularity == out.design.get("G", p.granularity)]  # fmt: skip
    fam = family_from_points(design, f"study-{variant}")
    out.family, out.family_note = (fam, "") if isinstance(fam, Family) else (None, fam)
    return out


def n_opt_exponent(fit: FitResult) -> list[float] | None:
    """a of N_opt ∝ C^a, β/(α+β) (docs/science.md §3), with its interval over the draws."""
    if not {"alpha", "beta"} <= set(fit.params):
        return None
    draws = [d["beta"] / (d["alpha"] + d["beta"]) for d in fit.bootstrap_params
             if d["alpha"] + d["beta"] > 0]  # fmt: skip
    a = fit.params["beta"] / (fit.params["alpha"] + fit.params["beta"])
    if len(draws) < 2:
        return [a, math.nan, math.nan]
    return [a, float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def heldout(spec: LawSpec, fit: FitResult) -> dict[str, Any]:
    """Per point: observed loss, the full fit's prediction, and for the held-out largest-compute
    points (the engine's rule: the top HOLDOUT_FRAC, rounded up to whole compute levels) the
    prediction of a refit without them."""
    c, y = column(spec.points, "compute"), column(spec.points, "loss")
    x = _inputs(spec)
    n_hold = math.ceil(HOLDOUT_FRAC * len(y))
    held = c >= np.sort(c)[len(y) - n_hold] * (1 - 1e-9)
    pred_out = np.full(len(y), np.nan)
    if len(y) - held.sum() >= len(get_form(spec.law).params):
        try:
            refit = fit_law(spec.law, {k: v[~held] for k, v in x.items()}, y[~held],
                            compute=c[~held], bootstrap_draws=0, holdout_frac=0.0)  # fmt: skip
            pred_out[held] = refit.predict({k: v[held] for k, v in x.items()})
        except UserError as exc:
            log.info("hold-out refit of %s failed: %s", spec.law, exc)
    return {
        "runs": [p.run for p in spec.points], "compute": c, "observed": y,
        "predicted": fit.predict(x), "held_out": held, "holdout_predicted": pred_out,
        "loss_se": column(spec.points, "loss_se"),
    }  # fmt: skip


def size_curves(spec: LawSpec, fit: FitResult, points: Sequence[Point]) -> list[dict[str, Any]]:
    """The fitted law along each model size of `points` (one curve per size, D from half the
    smallest to twice the largest token count), against compute C = 6·N_active·D."""
    out = []
    sizes = sorted({(p.n_active, getattr(p, N_ATTR[spec.n_column]), p.experts, p.granularity)
                    for p in points})  # fmt: skip
    d_all = column(points, "tokens")
    d = np.geomspace(d_all.min() / 2, d_all.max() * 2, 40)
    for n_active, n_law, e, g in sizes:
        x = {"N": np.full(len(d), n_law), "D": d, "E": np.full(len(d), e),
             "G": np.full(len(d), g)}  # fmt: skip
        loss = fit.predict({k: x[k] for k in fit.form().inputs})
        out.append({"n_active": n_active, "n_law": n_law, "experts": e, "granularity": g,
                    "tokens": d, "compute": 6.0 * n_active * d, "loss": loss})  # fmt: skip
    return out


def fit_json(fits: ArchFits, law: str) -> dict[str, Any]:
    """One fit as the analysis reports it: the summary the report reads, and under `fit` the
    complete fit JSON (`moescale plan --fit` reads it)."""
    res, spec = fits.fits[law], fits.specs[law]
    design_pts = [p for p in spec.points if p.variant == fits.variant] or spec.points
    return {
        "law": law, "expression": res.expression, "n_column": spec.n_column,
        "points": spec.what, "n_points": res.n_points, "params": res.params,
        "intervals": res.intervals, "unidentified": res.unidentified,
        "n_opt_exponent": n_opt_exponent(res), "holdout": res.holdout,
        "in_sample": res.in_sample, "warnings": res.warnings,
        "compute_range": res.compute_range, "bootstrap_draws": len(res.bootstrap_params),
        "not_identified": fits.not_identified.get(law, []),
        "heldout": heldout(spec, res), "size_curves": size_curves(spec, res, design_pts),
        "fit": res.to_json(),
    }  # fmt: skip


def laws_section(fits: ArchFits) -> dict[str, Any]:
    """The `laws` entry of one architecture."""
    laws: dict[str, Any] = {k: {"skipped": v} for k, v in fits.skipped.items()}
    laws.update({law: fit_json(fits, law) for law in fits.fits})
    return {
        "primary": fits.primary, "design": fits.design, "laws": laws, "notes": fits.notes,
        "family": fits.family.to_json() if fits.family else {"skipped": fits.family_note},
    }  # fmt: skip
