"""`analyze` on what small studies lack: one E, two G, two budgets, no hyperparameter axes, no
noise scale, one architecture, too few points, nothing at all. Every section must be there,
with results or a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moescale.study.analysis_data import VARIANTS
from moescale.study.analyze import analyze
from tests.report.synthetic import analysis, study

PER_VARIANT = ("laws", "frontier", "isoflop", "plans")


def reason(sec: Any) -> str:
    assert isinstance(sec, dict) and "skipped" in sec, sec
    assert isinstance(sec["skipped"], str) and len(sec["skipped"]) > 10
    return sec["skipped"]


def check_shape(a: dict) -> None:
    json.dumps(a, allow_nan=False)
    for key in PER_VARIANT:
        assert set(VARIANTS) <= set(a[key])
    for key in ("hyper", "noise_scale", "data_efficiency", "equal_compute", "granularity_gap"):
        assert a[key], key
    assert isinstance(a["claims"], list) and a["claims"]
    assert isinstance(a["warnings"], list)


def test_single_e_no_hyper_two_budgets() -> None:
    a = analysis("minimal")
    check_shape(a)
    moe = a["laws"]["moe"]
    assert "one expansion rate" in reason(moe["laws"]["wang"])
    assert moe["primary"] == "chinchilla" and "chinchilla" in moe["laws"]
    assert any("γ is not identified" in c for c in a["claims"])
    assert "no hyperparameter axes" in reason(a["hyper"])
    assert "noise" in reason(a["noise_scale"])
    assert [p["budget"] for p in a["plans"]["moe"]] == [1e18, 1e20]
    for v in ("moe", "fine-grained"):  # 3 sizes x 3 token budgets: one budget of 3 sizes
        assert "budget" in reason(a["isoflop"][v])
    assert "skipped" not in a["isoflop"]["dense"]  # 4 x 4 puts 3 sizes at 3 budgets
    assert "krajewski" in a["laws"]["fine-grained"]["laws"]  # G = 1 and 4


def test_dense_only_study_skips_the_comparisons_with_reasons() -> None:
    results, curves = study("minimal")
    dense = [r for r in results if r["variant"] == "dense"]
    a = analyze(dense, curves, budgets=(1e20,), bootstrap=0)
    check_shape(a)
    for v in ("moe", "fine-grained"):
        for key in PER_VARIANT:
            assert "no " in reason(a[key][v])
    assert "needs dense and moe" in reason(a["data_efficiency"]["moe"])
    reason(a["granularity_gap"]["fit"])
    reason(a["granularity_gap"]["curves"])
    reason(a["equal_compute"]["envelope"])
    plan = a["plans"]["dense"][0]
    assert plan["numbers"]["n_active"][0] > 0
    assert plan["numbers"]["n_active"][1] is None  # bootstrap 0: no interval, not a fake one


def test_too_few_points_fail_the_fit_not_the_analysis() -> None:
    results, curves = study("minimal")
    few = [r for r in results if r["variant"] == "dense"][:3]
    a = analyze(few, [], budgets=(1e18,), bootstrap=0)
    check_shape(a)
    assert "parameter" in reason(a["laws"]["dense"]["laws"]["chinchilla"])
    assert a["laws"]["dense"]["primary"] is None
    reason(a["frontier"]["dense"])
    reason(a["plans"]["dense"][0])


@pytest.mark.parametrize("rows", [[], [{"run": "x", "status": "failed", "val_loss": None}]])
def test_nothing_usable(rows: list[dict]) -> None:
    a = analyze(rows, [], bootstrap=0)
    check_shape(a)
    for key in PER_VARIANT:
        for v in VARIANTS:
            reason(a[key][v])
    assert "no usable" in a["claims"][0]


def test_strings_from_a_csv_read_as_numbers() -> None:
    results, curves = study("minimal")
    as_text = [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in results
               if r["variant"] == "dense"]  # fmt: skip
    a = analyze(as_text, [], budgets=(1e18,), bootstrap=0)
    assert a["laws"]["dense"]["primary"] == "chinchilla"
    assert a["data"]["ladder_points"]["dense"] == 16
