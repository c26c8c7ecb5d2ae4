"""Figures of ad-hoc runs (a few `moescale train` runs, not a study): a law with a coefficient
forced to 0 has no N_opt, and an interval may miss its estimate by rounding. Such a figure is
drawn without the bad values, or replaced by a note; never a traceback on the console."""

from __future__ import annotations

import logging
from pathlib import Path

from matplotlib.figure import Figure

from moescale.report.plots import fig_allocation
from moescale.report.plots_curves import fig_noise_scale
from moescale.report.style import Plot, draw

C = [1e17, 1e18, 1e19, 1e20]


def frontier(n_active: list[float | None]) -> dict:
    tokens = [c / (6 * n) if n else n for n, c in zip(n_active, C, strict=True)]
    lo_hi = {f"{k}_{e}": v for k, v in (("n_active", n_active), ("tokens", tokens))
             for e in ("lo", "hi")}  # fmt: skip
    return {"compute": C, "fitted_range": [1e17, 1e19], "n_active": n_active, "tokens": tokens,
            **lo_hi}  # fmt: skip


def allocation(**fronts: dict) -> dict:
    return {"frontier": fronts, "isoflop": {v: {"skipped": "few budgets"} for v in fronts},
            "data": {"budgets": [1e18]}}  # fmt: skip


def test_a_law_without_optimum_is_a_note_not_a_failure(tmp_path: Path) -> None:
    """Before: 'Data cannot be log-scaled' and a traceback (the dense law had A forced to 0)."""
    a = allocation(dense=frontier([None] * 4))
    why = fig_allocation(a)
    assert isinstance(why, str) and "no interior optimum" in why and "dense" in why
    a = allocation(dense=frontier([None] * 4), moe=frontier([1e7, 3e7, 1e8, 0.0]))
    fig = fig_allocation(a)
    assert isinstance(fig, Figure)
    assert any("left out: no interior optimum" in t.get_text() and "dense" in t.get_text()
               for t in fig.texts)  # fmt: skip
    plot = draw(tmp_path, Plot("allocation", "t", "c"), fig_allocation, a)
    assert plot.path is not None and plot.path.exists() and not plot.skipped


def test_noise_scale_interval_a_rounding_below_its_value(tmp_path: Path) -> None:
    """Before: "'yerr' must not contain negative values" (upper end 1e-15 below the value)."""
    v = 569.0732533412477
    sec = {
        "loss": [5.2, 4.8, 4.4, 4.0],
        "noise_scale": [260.0, 340.0, 430.0, 600.0],
        "at_common": {"value": v, "interval": [550.0, v * (1 - 1e-15)], "exponent": -4.0},
    }
    ns = {"common_loss": 4.5, "trajectories": {}, "archs": {"dense": sec}}
    plot = draw(tmp_path, Plot("noise_scale", "t", "c"), fig_noise_scale, {"noise_scale": ns})
    assert plot.path is not None and not plot.skipped
    assert plot.path.exists()


def test_a_figure_that_fails_is_one_warning_line(tmp_path: Path, caplog) -> None:
    def broken() -> Figure:
        raise ValueError("Data cannot be log-scaled because all values are <= 0.")

    with caplog.at_level(logging.DEBUG, logger="moescale"):
        plot = draw(tmp_path, Plot("allocation", "t", "c"), broken)
    assert plot.path is None and "Data cannot be log-scaled" in plot.skipped
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "figure allocation not drawn: drawing it failed: ValueError" in warnings[0].getMessage()
