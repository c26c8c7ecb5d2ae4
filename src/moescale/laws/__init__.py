"""Scaling laws: forms, fitting (variable projection, Huber/LSE, bootstrap, hold-out),
hyperparameter laws, and compute-optimal allocation. Pure NumPy/SciPy; never imports torch."""

from moescale.laws.allocate import (
    DATA_EFFICIENCY_DEFINITION,
    Allocation,
    Comparison,
    allocate,
    budget_for_loss,
    closed_form_allocation,
    compare,
)
from moescale.laws.fit import bootstrap, fit_law, fit_table
from moescale.laws.forms import (
    BUILTIN,
    EXTRA_INPUTS,
    ExtraInput,
    LawForm,
    chinchilla,
    custom,
    get_form,
    kaplan,
    krajewski,
    wang,
)
from moescale.laws.granularity import (
    GranularityOptimum,
    krajewski_n_total,
    krajewski_shape,
    optimal_granularity,
    routing_aware_flops,
)
from moescale.laws.hyper import (
    Heatmap,
    HyperLaws,
    PowerLaw,
    batch_heatmap,
    fit_hyper_laws,
    fit_power_law,
    hyper_laws_from_table,
    lr_heatmap,
)
from moescale.laws.plan import Plan, make_plan
from moescale.laws.result import FitResult, read_fit
from moescale.laws.table import read_table

__all__ = [
    "BUILTIN",
    "DATA_EFFICIENCY_DEFINITION",
    "EXTRA_INPUTS",
    "Allocation",
    "Comparison",
    "ExtraInput",
    "FitResult",
    "GranularityOptimum",
    "Heatmap",
    "HyperLaws",
    "LawForm",
    "Plan",
    "PowerLaw",
    "allocate",
    "batch_heatmap",
    "bootstrap",
    "budget_for_loss",
    "chinchilla",
    "closed_form_allocation",
    "compare",
    "custom",
    "fit_hyper_laws",
    "fit_law",
    "fit_power_law",
    "fit_table",
    "get_form",
    "hyper_laws_from_table",
    "kaplan",
    "krajewski",
    "krajewski_n_total",
    "krajewski_shape",
    "lr_heatmap",
    "make_plan",
    "optimal_granularity",
    "read_fit",
    "read_table",
    "routing_aware_flops",
    "wang",
]
