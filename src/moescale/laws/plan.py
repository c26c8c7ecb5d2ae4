"""A plan for a compute budget from fitted laws: what `moescale plan` computes and writes.

Why it is more than an allocation: an MoE law is only as good as the compute it is charged
(docs/science.md, section 3). Every law is planned at its true compute: through a model family
(`moescale.laws.family`) whenever the law's N is not what a token pays for (N_total), when G is
priced, or when the user asks for another FLOPs convention; otherwise under C = k·N·D with the
law's N. Nothing is assumed silently: E, G and k come from flags, the fit JSON or the family
template, and each source is written into the plan (`assumptions`), as are the family and the
FLOPs convention. The result says what to build (`Design`), compares with a dense fit at equal
true compute, and reads batch size and learning rate from hyperparameter laws when given.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.laws.allocate import (
    Allocation,
    Comparison,
    allocate_sizing,
    check_budget,
    check_k,
    compare_sizings,
)
from moescale.laws.family import CONVENTIONS, MIN_LAYERS, Design, Family, design
from moescale.laws.forms import EXTRA_INPUTS, LawForm
from moescale.laws.granularity import (
    GRANULARITIES,
    GranularityOptimum,
    Sizing,
    bisect,
    granularity_sizings,
    optimal_granularity,
    stack_params,
)
from moescale.laws.hyper import HyperLaws
from moescale.laws.result import FitResult
from moescale.run import Col

log = logging.getLogger(__name__)
FLAGS = {"E": "--experts", "G": "--granularity", "k": "--top-k"}
TOTAL_COLUMNS = (Col.PARAMS_TOTAL, Col.PARAMS_TOTAL_NO_ROUTER)
FAR_DECADES = 1.0  # a budget this many decades outside the fit's compute range is warned about


@dataclass
class Plan:
    """One budget's plan: `allocation` (fixed G) or `granularity` (the optimal-G search);
    `comparison` against a dense fit when one was given; `design` what to build (with a
    family). `draws` is the number of bootstrap draws the intervals come from."""

    budget: float
    law: str
    k: float
    allocation: Allocation | None = None
    granularity: GranularityOptimum | None = None
    comparison: Comparison | None = None
    draws: int = 0
    family: Family | None = None
    convention: str = "simple"
    n_column: str = ""
    design: Design | None = None
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hyper: dict[str, Any] | None = None

    @property
    def flops_definition(self) -> str:
        if self.convention not in CONVENTIONS:
            return f"the fit's own, N = {self.n_column}"
        if self.family is None:
            return f"C = {self.k:g}·N·D, N the law's N ({self.n_column or 'as fitted'})"
        return CONVENTIONS[self.convention]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"budget": self.budget, "law": self.law, "k": self.k}
        if self.granularity is not None:
            out.update(self.granularity.to_json())
        if self.allocation is not None:
            out.update(self.allocation.to_json())
        out.update(
            flops_convention=self.convention,
            flops_definition=self.flops_definition,
            n_column=self.n_column,
            family=None if self.family is None else self.family.to_json(),
            design=None if self.design is None else self.design.to_json(),
            assumptions=list(self.assumptions), warnings=list(self.warnings), draws=self.draws,
            hyper=self.hyper,
        )
        if self.comparison is not None:
            out["compare"] = self.comparison.to_json()
        return out


@dataclass
class _Inputs:
    """E, G, k of the planned model and where each came from."""

    values: dict[str, float]
    search_g: bool
    notes: list[str]


def _resolve(
    form: LawForm, given: Mapping[str, float], recorded: Mapping[str, float],
    family: Family | None, search_g: bool,
) -> _Inputs:  # fmt: skip
    """Flags first, then what the fit JSON records, then the family template; refuse flags
    that nothing would use and laws whose E is unknown."""
    values: dict[str, float] = {}
    notes: list[str] = []
    for sym, flag in FLAGS.items():
        if sym in given:
            values[sym], src = float(given[sym]), flag
        elif sym in recorded:
            values[sym], src = float(recorded[sym]), "recorded in the fit JSON"
        elif family is not None and sym in family.sets:
            tmpl = {"E": family.experts, "G": family.granularity, "k": family.top_k}[sym]
            values[sym], src = float(tmpl or 1.0), f"family {family.name} template"
        else:
            continue
        if not values[sym] > 0:
            raise UserError(f"{flag} must be positive, got {values[sym]:g}")
        notes.append(f"{sym} = {values[sym]:g} ({src})")
    if family is None:
        for sym in ("E", "G", "k"):
            if sym in given and sym not in form.inputs:
                has = f"has no {sym} input" if sym != "k" else "does not use top-k"
                raise UserError(
                    f"{FLAGS[sym]} does not apply: law {form.name} {has}, and without --family "
                    f"no model is built from it; drop {FLAGS[sym]} or give --family"
                )
    if "E" in form.inputs and "E" not in values:
        raise UserError(f"law {form.name} has an input E ({EXTRA_INPUTS['E'].meaning}) and "
                        "neither the flags nor the fit JSON give it: pass --experts E (1 for a "
                        'dense model), or record "experts" in the fit JSON')  # fmt: skip
    if search_g and "G" not in form.inputs:
        raise UserError(f"--granularity best: law {form.name} has no G input, so G does not "
                        "change its loss and there is no optimal G; give a number")  # fmt: skip
    if search_g := search_g or ("G" in form.inputs and "G" not in values):
        values.pop("G", None)
        notes.append(f"G searched over {', '.join(str(g) for g in GRANULARITIES)}")
    return _Inputs(values, search_g, notes)


def _family_for(
    form: LawForm, family: Family | None, inp: _Inputs, column: str, convention: str
) -> Family | None:
    """The family the MoE side is priced through, or None for C = k·N·D with the law's N."""
    v = inp.values
    moe = inp.search_g or "G" in v or v.get("E", 1.0) > 1 or (family is not None and family.moe)
    if family is None:
        why = (
            "no G is given (--granularity G), and searching G needs FLOPs per token of a model"
            if inp.search_g
            else f"its N is {column} (all experts), but a token pays for N_active"
            if moe and column in TOTAL_COLUMNS
            else f"--flops {convention} needs FLOPs per token of a model"
            if convention != "simple"
            else ""
        )
        if why:
            raise UserError(
                f"law {form.name}: {why}; plan it through a model family: --family CONFIG.yaml "
                "(your runs' config as the template) or --family krajewski (Krajewski et al. "
                "2024: d = 64·L_b), with --experts E"
            )
        if column in TOTAL_COLUMNS:
            inp.notes.append(f"C = k·N·D with N = {column}: the true compute of dense runs only")
        return None
    if not moe:
        return family.dense()
    fam = family.with_moe(experts=v.get("E"), granularity=v.get("G"), top_k=v.get("k"))
    if fam.experts is None:
        raise UserError(
            f"family {family.name} has no expansion rate: give --experts E (Krajewski et al. "
            '2024 fitted E = 64), or record "experts" in the fit JSON'
        )
    if "k" not in v:
        raise UserError(f"family {family.name} is dense; give the MoE's --top-k (and --experts)")
    if fam.top_k > fam.experts:
        raise UserError(f"--top-k {fam.top_k:g} exceeds E = {fam.experts:g}: choose k <= E")
    return fam


def _range_warning(fit: Any, budget: float, flag: str) -> list[str]:
    """How many decades `budget` lies outside the compute the fit saw (fit's own convention)."""
    rng = getattr(fit, "compute_range", None)
    if not rng or len(rng) != 2 or not all(v and v > 0 for v in rng):
        return []
    lo, hi = float(rng[0]), float(rng[1])
    far = math.log10(budget / hi) if budget > hi else math.log10(lo / budget)
    if far <= FAR_DECADES:
        return []
    side = "beyond the largest" if budget > hi else "below the smallest"
    return [
        f"{flag}: the budget {budget:.3g} lies {far:.1f} decades {side} compute the fit saw "
        f"({lo:.3g} to {hi:.3g} FLOPs, in the fit's convention); the plan there rests on the "
        "law's form alone"
    ]


def make_plan(
    fit: Any,
    budget: float,
    *,
    k: float = 6.0,
    given: Mapping[str, float] | None = None,
    dense: Any = None,
    family: Family | None = None,
    flops: str = "simple",
    search_g: bool = False,
    recorded: Mapping[str, float] | None = None,
    dense_recorded: Mapping[str, float] | None = None,
    granularities: Sequence[int] = GRANULARITIES,
    hyper: HyperResult | None = None,
    hyper_arch: str | None = None,
) -> Plan:
    """Plan `budget` FLOPs with `fit` (the MoE law when `dense` is given).

    `given` holds E, G, k (top-k) from flags, `recorded` what the fit JSON says about them;
    `family` the template the model is built from, `flops` its FLOPs convention; `search_g`
    searches G even when one is known. A law with G and no G anywhere gets the optimal G; a
    fit that cannot identify its G term (two trained G) gets none: it would be the grid's."""
    check_budget(budget)
    check_k(k)
    if flops not in CONVENTIONS:
        raise UserError(f"--flops {flops}: use one of {', '.join(CONVENTIONS)}")
    if not isinstance(fit, FitResult):
        return _plan_isoflop(fit, budget, k, dense, family)
    form = fit.form()
    inp = _resolve(form, dict(given or {}), dict(recorded or {}), family, search_g)
    if inp.search_g and (blind := sorted({"g", "gamma"} & set(fit.unidentified))):
        raise UserError(f"a search over G needs the law's G term, but the fit leaves "
                        f"{' and '.join(blind)} unidentified (train a third G): give "
                        "--granularity G, one the runs had")  # fmt: skip
    column = fit.columns.get("N") or form.n_column
    fam = _family_for(form, family, inp, column, flops)
    out = Plan(budget=budget, law=fit.law, k=k, draws=len(fit.bootstrap_params), family=fam,
               convention=flops, n_column=column, assumptions=inp.notes)  # fmt: skip
    kw: dict[str, Any] = {"n_column": column, "convention": flops, "k": k}
    if inp.search_g:
        assert fam is not None
        sizings = granularity_sizings(form, fam, granularities, **kw)
        out.granularity = g = optimal_granularity(
            fit.params, budget, family=fam, flops=flops, form=form, n_column=column,
            granularities=granularities, samples=fit.bootstrap_params, k=k,
        )  # fmt: skip
        chosen = sizings[list(granularities).index(g.granularity)]
        n_layers, degenerate = g.n_layers, g.degenerate
        if g.granularity in (min(granularities), max(granularities)):
            out.warnings.append(f"the optimal G {g.granularity} is at the end of those searched")
    else:
        extras = {s: v for s, v in inp.values.items() if s in form.inputs}
        chosen = Sizing(form, extras, fam, **kw)
        sizings = [chosen]
        out.allocation = a = allocate_sizing(chosen, fit.params, budget, fit.bootstrap_params)
        n_layers, degenerate = a.n_layers, a.degenerate
    if chosen.family is not None:
        out.family = chosen.family  # at the optimal G when G was searched
        out.design = _design(chosen, fit.params, n_layers, budget)
        if n_layers < 1:  # the family's smallest model is larger than the optimum
            out.warnings.append(f"the optimum is {n_layers:.2g} layers of family "
                                f"{out.family.name}: the plan builds its one-layer model, off "
                                "the optimum")  # fmt: skip
    if degenerate:
        out.warnings.append(f"{degenerate} of {out.draws} bootstrap draws have no interior optimum"
                            " (a zero exponent or coefficient) and are left out of the intervals")
    out.warnings += _range_warning(fit, budget, "--fit") + _fit_warnings(fit, "--fit")
    if dense is not None:
        out.comparison = c = _compare(sizings, fit, dense, dense_recorded or {}, fam, budget, kw)
        out.warnings += _range_warning(dense, budget, "--compare")
        if c.degenerate:
            out.warnings.append(f"{c.degenerate} of the comparison's {c.draws} paired draws "
                                "are degenerate and left out of its intervals")  # fmt: skip
    if hyper is not None:
        apply_hyper(out, hyper, hyper_arch)
    for w in out.warnings:
        log.warning(w)
    return out


def _fit_warnings(fit: Any, flag: str) -> list[str]:
    """The fit's own warnings ({code, message} or text), named after the file's flag."""
    return [f"{flag}: {w.get('message', w) if isinstance(w, Mapping) else w}"
            for w in getattr(fit, "warnings", [])]  # fmt: skip


def _design(sz: Sizing, params: Mapping[str, float], n_layers: float, budget: float) -> Design:
    """The trainable model nearest the optimum (the depth below or above it, whichever the law
    prefers), and the law's loss for it at the budget."""
    fam = sz.family
    assert fam is not None
    p = stack_params(sz.form, [params])
    best: Design | None = None
    for depth in {max(1, math.floor(n_layers)), max(1, math.ceil(n_layers))}:
        out = design(fam, depth, budget, sz.convention, sz.k)
        n = fam.n_of(fam.build(depth), sz.n_column)
        out.loss = float(sz.law_loss(p, n, budget, out.tokens)[0, 0])
        best = out if best is None or out.loss < best.loss else best
    assert best is not None
    return best


def _compare(
    sizings: Sequence[Sizing],
    fit: FitResult,
    dense: Any,
    recorded: Mapping[str, float],
    fam: Family | None,
    budget: float,
    kw: dict[str, Any],
) -> Comparison:
    """The dense side priced like the MoE side (its family's dense model) and compared."""
    if not isinstance(dense, FitResult):
        raise UserError("--compare needs a law fit L(N, D); an isoflop fit gives N_opt(C) only "
                        "and cannot say what loss dense reaches with other N and D")  # fmt: skip
    form = dense.form()
    if "G" in form.inputs or recorded.get("E", 1.0) > 1 or recorded.get("G", 1.0) > 1:
        raise UserError(
            f"--compare takes the dense fit, but law {form.name} is a fine-grained/MoE law "
            "(an input G, or experts > 1 recorded in its JSON); fit the dense runs on their own "
            "(e.g. --law chinchilla) and compare against that"
        )
    extras = {"E": 1.0} if "E" in form.inputs else {}
    column = dense.columns.get("N") or form.n_column
    sd = Sizing(form, extras, None if fam is None else fam.dense(), **dict(kw, n_column=column))
    return compare_sizings(sizings, [fit.params, *fit.bootstrap_params], sd,
                           [dense.params, *dense.bootstrap_params], budget)  # fmt: skip


def _plan_isoflop(fit: Any, budget: float, k: float, dense: Any, family: Family | None) -> Plan:
    """An isoflop fit (N_opt(C) read off iso-FLOP curves) gives its allocation directly; with a
    family the design is the model whose N (the fit's N column) is N_opt."""
    if dense is not None:
        raise UserError("--compare needs law fits on both sides; --fit is an isoflop fit")
    alloc = fit.allocate(budget)
    column = getattr(fit, "columns", {}).get("N", Col.PARAMS_ACTIVE)
    fc = getattr(fit, "flops_convention", "") or "C = 6 N D"
    out = Plan(budget=budget, law="isoflop", k=k, allocation=alloc, family=family,
               convention="as fitted", n_column=column, draws=len(fit.bootstrap_params),
               warnings=_range_warning(fit, budget, "--fit") + _fit_warnings(fit, "--fit"),
               assumptions=[f"N_opt, D_opt, loss: the isoflop fit's ({fc})"])  # fmt: skip
    if family is not None:
        lo = np.array([math.log(MIN_LAYERS)])
        x = bisect(lambda x: alloc.n_opt - family.n_of(family.shape(np.exp(x)), column), lo,
                   lo + math.log(1e9 / MIN_LAYERS))  # fmt: skip
        if math.isfinite(x[0]):
            out.design = design(family, math.exp(x[0]), budget, "simple", k)
    for w in out.warnings:
        log.warning(w)
    return out


@dataclass
class HyperResult:
    """Batch-size and learning-rate laws per architecture: what `moescale hyper --json` writes
    (`moescale.laws.hyper` fits them) and `moescale plan --hyper` reads."""

    method: str  # "curves" or "band"
    laws: dict[str, HyperLaws]
    batch_unit: str  # "sequences" or "tokens"
    seq_len: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "batch_unit": self.batch_unit, "seq_len": self.seq_len,
                "settings": dict(self.settings),
                "archs": {k: v.to_json() for k, v in self.laws.items()}}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, source: str) -> HyperResult:
        try:
            laws = {str(k): HyperLaws.from_json(v) for k, v in data["archs"].items()}
            return cls(str(data["method"]), laws, str(data["batch_unit"]), data.get("seq_len"),
                       dict(data.get("settings", {})))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(
                f"{source} is not `moescale hyper --json` output ({type(exc).__name__}: {exc}); "
                "write it with `moescale hyper TABLE --json OUT`"
            ) from None

    def predict(self, arch: str, values: Mapping[str, float]) -> dict[str, Any]:
        """Every law of `arch` evaluated at `values` (L, C, N, D), batch in `batch_unit`."""
        if arch not in self.laws:
            raise UserError(f"the hyperparameter laws have no architecture {arch!r} (they have "
                            f"{', '.join(self.laws)}); choose one with --hyper-arch")  # fmt: skip
        out: dict[str, Any] = {"arch": arch, "batch_unit": self.batch_unit, "batch": {}, "lr": {}}
        for name, law in self.laws[arch].laws().items():
            if all(i in values for i in law.inputs):
                out[law.output][name] = float(law(*[values[i] for i in law.inputs]))
        return out


def read_hyper(path: str | Path, flag: str = "--hyper") -> HyperResult:
    """The JSON of `moescale hyper`, or a UserError naming `flag` and the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{flag} {path} is not a readable JSON file: {exc}") from None
    return HyperResult.from_json(data, f"{flag} {path}")


def apply_hyper(plan: Plan, hyper: HyperResult, arch: str | None) -> None:
    """Batch size and learning rate of the planned model from every law `hyper` has for its
    architecture (named like `moescale.laws.hyper.arch_keys`, or `arch`)."""
    dz, a, g = plan.design, plan.allocation, plan.granularity
    if arch is None:
        if dz is None:
            raise UserError("--hyper without --family: name the laws' architecture, --hyper-arch")
        moe = dz.experts > 1
        arch = f"moe E{dz.experts:g} k{dz.top_k:g} G{dz.granularity:g}" if moe else "dense"
    loss = dz.loss if dz else (a.loss if a else g.loss if g else math.nan)
    n = dz.params_active if dz else a.n_opt if a else math.nan
    d = dz.tokens if dz else a.d_opt if a else math.nan
    values = {k: v for k, v in {"L": loss, "C": plan.budget, "N": n, "D": d}.items() if v > 0}
    out = hyper.predict(arch, values)
    if not out["batch"] and not out["lr"]:  # say why, rather than recommend nothing silently
        why = "; ".join(dict.fromkeys(hyper.laws[arch].skipped.values())) or "none takes its inputs"
        plan.warnings.append(f"--hyper: no batch-size or learning-rate law for {arch}: {why}")
    fam_seq = plan.family.seq_len if plan.family else None
    seq = hyper.seq_len or fam_seq  # the law counts sequences of its runs' length, if known
    if hyper.batch_unit == "sequences" and hyper.seq_len and fam_seq not in (None, seq):
        plan.warnings.append(f"--hyper: the batch law counts sequences of {seq} tokens, the "
                             f"family's hold {fam_seq}: batch_tokens counts {seq} per sequence")
    if hyper.batch_unit == "sequences" and seq:
        out["batch_tokens"] = {k: v * seq for k, v in out["batch"].items()}
    out["inputs"] = {**values, "note": "L the plan's loss, C its budget, N = N_active, D tokens"}
    plan.hyper = out


def recorded_inputs(path: str | Path) -> dict[str, float]:
    """E, G, k that a fit JSON records about its runs (top-level "experts", "granularity",
    "top_k"; a hand-written fit may carry them), so that a plan need not be told."""
    try:
        data = dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return {}  # the fit reader reports what is wrong with the file
    keys = {"E": Col.EXPERTS, "G": Col.GRANULARITY, "k": Col.TOP_K}
    return {s: float(data[c]) for s, c in keys.items() if type(data.get(c)) in (int, float)}
