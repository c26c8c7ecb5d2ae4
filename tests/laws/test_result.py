"""FitResult's JSON: an exact round trip, and errors that name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws import FitResult, fit_law, read_fit

CHIN = {"E0": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.3, "beta": 0.3}


@pytest.fixture(scope="module")
def fitted() -> FitResult:
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    x = {"N": np.logspace(6, 8, 5)[i.ravel()], "D": np.logspace(8, 10, 6)[j.ravel()]}
    y = (1.0 + 2000 / x["N"] ** 0.5 + 20000 / x["D"] ** 0.5) * np.exp(rng.normal(0, 0.01, 30))
    return fit_law(
        "E0 + A/N**alpha + B/D**beta", x, y, bootstrap_draws=10, workers=1, drop_outliers=1
    )


def test_round_trip_is_exact(fitted: FitResult) -> None:
    fitted.columns, fitted.derived, fitted.table = {"N": "params_active"}, "C = 6 N D", "t.csv"
    data = fitted.to_json()
    assert data["dropped_rows"] == [i + 1 for i in fitted.dropped]
    assert data["bootstrap_draws"] == 10 and fitted.holdout["n"] == 3
    back = FitResult.from_json(json.loads(json.dumps(data)), "fit.json")
    assert back == fitted
    assert back.to_json() == data
    x = {"N": np.array([1e7]), "D": np.array([1e9])}
    assert back.predict(x)[0] == fitted.predict(x)[0]  # the custom form is rebuilt from its spec


def test_missing_params_names_file_and_key(fitted: FitResult, tmp_path: Path) -> None:
    data = fitted.to_json()
    del data["params"]
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="lacks key 'params'") as exc:
        read_fit(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("params", {"E0": "1.7"}, "key 'params' holds '1.7', expected a number"),
        ("params", {"E0": 1.7}, "key 'params' lacks A, B, alpha, beta"),
        ("intervals", {"E0": [1.0]}, "key 'intervals' holds [1.0], expected [low, high]"),
        ("law", 3, "key 'law' holds 3, expected a string"),
        ("bootstrap_draws", 4, "key 'bootstrap_draws' disagrees"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    data = {"law": "chinchilla", "params": CHIN, key: value}
    with pytest.raises(UserError, match="fit.json") as exc:
        FitResult.from_json(data, "fit.json")
    assert message in str(exc.value)


def test_hand_written_fit_is_enough() -> None:
    params = {"A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3, "gamma": 0.1, "sigma": 1.7}
    res = FitResult.from_json({"law": "wang", "params": params}, "paper")
    assert res.form().name == "wang" and res.inputs == ("N", "D", "E")
    assert res.bootstrap_params == [] and res.intervals == {}


def test_diagnostics_round_trip_and_old_files(fitted: FitResult) -> None:
    """Warnings, unidentified parameters, bootstrap counts and the compute range survive the
    JSON; a file written before they existed still reads (as a fit with none of them)."""
    fitted.warnings = [{"code": "few_points", "message": "29 points for 5 parameters"}]
    fitted.unidentified = ["alpha"]
    data = json.loads(json.dumps(fitted.to_json()))
    assert data["compute_range"] == list(fitted.compute_range) and data["bootstrap_requested"] == 10
    back = FitResult.from_json(data, "fit.json")
    assert back == fitted and back.compute_range == fitted.compute_range
    for key in (
        "warnings",
        "unidentified",
        "compute_range",
        "bootstrap_requested",
        "bootstrap_failed",
        "bootstrap_degenerate",
        "sources",
        "huber_delta",
        "selection",
    ):
        del data[key]  # fmt: skip
    old = FitResult.from_json(data, "old.json")
    assert old.compute_range is None and old.warnings == [] and old.unidentified == []
    assert old.bootstrap_requested == 10 and old.bootstrap_failed == 0
    with pytest.raises(UserError, match="key 'compute_range' holds"):
        FitResult.from_json({"law": "chinchilla", "params": CHIN, "compute_range": 3}, "fit.json")
