"""`moescale fit` and `moescale plan` end to end on a small table, and their input errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moescale.laws.result import FitResult

CONTRACT_KEYS = {
    "law",
    "params",
    "intervals",
    "objective",
    "holdout",
    "in_sample",
    "n_points",
    "method",
    "loss",
    "columns",
    "bootstrap_params",
}


def run_cli(argv: list[str]) -> int:
    from moescale.cli import main

    return main(argv)


def write_table(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture()
def results_csv(tmp_path: Path) -> Path:
    """A results table with the project's columns, 2 evals per run, from a known law."""
    rng = np.random.default_rng(0)
    rows = []
    for r, n in enumerate(np.logspace(6, 8, 6)):
        for d in np.logspace(8, 10, 5):
            loss = 1.0 + 2000 / n**0.5 + 20000 / d**0.5
            rows.append(
                {
                    "run": f"r{r}",
                    "arch": "dense",
                    "experts": 1,
                    "granularity": 1,
                    "top_k": 1,
                    "params_total": n,
                    "params_active": n,
                    "tokens": d,
                    "flops": 6 * n * d,
                    "batch_size": 32,
                    "lr": 3e-3,
                    "val_loss": loss * np.exp(rng.normal(0, 0.01)),
                }
            )
    return write_table(tmp_path / "results.csv", rows)


def test_fit_and_plan_end_to_end(results_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fit.json"
    rc = run_cli(
        ["fit", str(results_csv), "--law", "chinchilla", "--bootstrap", "50", "--json", str(out)]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert CONTRACT_KEYS <= set(data)
    assert set(data["params"]) == {"E0", "A", "B", "alpha", "beta"}
    assert set(data["intervals"]) == set(data["params"])
    assert {"mae", "max_abs", "n"} <= set(data["holdout"]) and data["holdout"]["n"] == 3
    assert data["columns"]["N"] == "params_active" and data["columns"]["run"] == "run"
    assert abs(data["params"]["alpha"] - 0.5) < 0.05
    printed = capsys.readouterr().out
    assert "alpha" in printed and "held-out" in printed

    plan = tmp_path / "plan.json"
    rc = run_cli(
        ["plan", "--budget", "1e21", "--fit", str(out), "--compare", str(out), "--json", str(plan)]
    )
    assert rc == 0
    p = json.loads(plan.read_text())
    assert p["n_opt"] > 0 and p["d_opt"] > 0 and len(p["intervals"]["loss"]) == 2
    assert 6 * p["n_opt"] * p["d_opt"] == pytest.approx(1e21)
    assert p["compare"]["data_efficiency"] == pytest.approx(0.0, abs=1e-6)
    assert "D_dense / D_moe - 1" in p["compare"]["definition"]


def test_epoch_column_names(tmp_path: Path) -> None:
    rows = [
        {"Model Size": n, "Training FLOP": 6 * n * d, "loss": 1.0 + 2000 / n**0.5 + 20000 / d**0.5}
        for n in np.logspace(6, 8, 4)
        for d in np.logspace(8, 10, 4)
    ]
    path = write_table(tmp_path / "epoch.csv", rows)
    out = tmp_path / "f.json"
    rc = run_cli(
        [
            "fit",
            str(path),
            "--n-col",
            "Model Size",
            "--flops-col",
            "Training FLOP",
            "--loss-col",
            "loss",
            "--bootstrap",
            "0",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["derived"] == "D = C / (6 N)"
    assert data["params"]["alpha"] == pytest.approx(0.5, abs=1e-3)


def test_parquet_input(results_csv: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with results_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    cols = {k: [float(r[k]) if k not in ("run", "arch") else r[k] for r in rows] for k in rows[0]}
    path = tmp_path / "results.parquet"
    pq.write_table(pa.table(cols), path)
    assert run_cli(["fit", str(path), "--bootstrap", "0", "--json", str(tmp_path / "p.json")]) == 0


def error_of(argv: list[str], capsys) -> str:
    rc = run_cli(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    return err


def test_missing_file(tmp_path: Path, capsys) -> None:
    assert "does not exist" in error_of(["fit", str(tmp_path / "nope.csv")], capsys)


def test_unreadable_table(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2,3\n")
    assert "row 1 has 3 fields" in error_of(["fit", str(bad)], capsys)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in error_of(["fit", str(empty)], capsys)


def test_missing_column_lists_available(results_csv: Path, capsys) -> None:
    err = error_of(["fit", str(results_csv), "--loss-col", "train_loss"], capsys)
    assert "'train_loss'" in err and "--loss-col" in err and "val_loss" in err


def test_bad_value_names_row_and_column(tmp_path: Path, capsys) -> None:
    rows = [{"params_active": n, "tokens": 1e9, "val_loss": 3.0} for n in (1e6, 2e6, 3e6)]
    rows += [{"params_active": 4e6, "tokens": 1e9, "val_loss": -1.0}]
    rows += [{"params_active": 5e6, "tokens": 1e9, "val_loss": 2.0}] * 3
    path = write_table(tmp_path / "neg.csv", rows)
    err = error_of(["fit", str(path), "--bootstrap", "0"], capsys)
    assert "'val_loss'" in err and "row 4" in err
    rows[1]["tokens"] = "inf"
    path = write_table(tmp_path / "inf.csv", rows)
    err = error_of(["fit", str(path), "--bootstrap", "0"], capsys)
    assert "'tokens'" in err and "row 2" in err


def test_too_few_points(tmp_path: Path, capsys) -> None:
    rows = [{"params_active": n, "tokens": 1e9, "val_loss": 3.0} for n in (1e6, 2e6, 3e6)]
    path = write_table(tmp_path / "few.csv", rows)
    err = error_of(["fit", str(path)], capsys)
    assert "5 parameters" in err and "3 points" in err


def test_unknown_law_and_missing_granularity(results_csv: Path, capsys) -> None:
    assert "unknown law 'hoffman'" in error_of(
        ["fit", str(results_csv), "--law", "hoffman"], capsys
    )
    err = error_of(["fit", str(results_csv), "--law", "krajewski", "--bootstrap", "0"], capsys)
    assert "G" in err and "two distinct values" in err


def test_plan_errors(tmp_path: Path, capsys) -> None:
    assert "does not exist" in error_of(
        ["plan", "--budget", "1e21", "--fit", str(tmp_path / "x.json")], capsys
    )
    assert f"--fit {tmp_path} is a directory" in error_of(
        ["plan", "--budget", "1e21", "--fit", str(tmp_path)], capsys
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    err = error_of(["plan", "--budget", "1e21", "--fit", str(bad)], capsys)
    assert "lacks key 'law'" in err and str(bad) in err
    assert "--budget" in error_of(["plan", "--budget", "-1", "--fit", str(bad)], capsys)


def test_fit_json_to_stdout_is_json_alone(results_csv: Path) -> None:
    """`--json` without OUT: stdout holds the fit's JSON and nothing else (no table)."""
    argv = ["fit", str(results_csv), "--bootstrap", "0", "--json"]
    r = subprocess.run(
        [sys.executable, "-m", "moescale.cli", *argv], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert CONTRACT_KEYS <= set(data) and data["table"] == str(results_csv)


def test_plan_takes_fit_not_law(results_csv: Path, tmp_path: Path, capsys) -> None:
    fit = tmp_path / "fit.json"
    assert run_cli(["fit", str(results_csv), "--bootstrap", "20", "--json", str(fit)]) == 0
    capsys.readouterr()
    assert run_cli(["plan", "--budget", "1e20", "--fit", str(fit), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["law"] == "chinchilla" and plan["method"] == "closed_form"
    assert 6 * plan["n_opt"] * plan["d_opt"] == pytest.approx(1e20)
    with pytest.raises(SystemExit) as exc:
        run_cli(["plan", "--budget", "1e20", "--fit", str(fit), "--law", str(fit)])
    assert exc.value.code == 2
    assert "unrecognized arguments: --law" in capsys.readouterr().err


# ---------- fit: warnings and --strict, IsoFLOP profiles, row selection, flags ----------
def test_strict_exits_3_after_writing_the_json(tmp_path: Path, capsys) -> None:
    rows = [{"params_active": n, "tokens": 20 * n, "val_loss": 1.0 + 2000 / n**0.5 + 900 / n**0.4}
            for n in np.logspace(6, 9, 15)]  # fmt: skip
    path = write_table(tmp_path / "collinear.csv", rows)
    out = tmp_path / "fit.json"
    argv = ["fit", str(path), "--bootstrap", "0", "--json", str(out)]
    assert run_cli(argv) == 0
    assert "collinear" in {w["code"] for w in json.loads(out.read_text())["warnings"]}
    out.unlink()
    capsys.readouterr()
    assert run_cli([*argv, "--strict"]) == 3
    assert out.exists() and "--strict" in capsys.readouterr().err
    printed = run_cli(["fit", str(path), "--bootstrap", "0"])
    assert printed == 0 and "unidentified" in capsys.readouterr().out


def test_isoflop_method_writes_isoflop_json(tmp_path: Path, capsys) -> None:
    rows = []
    for c in (1e17, 1e18, 1e19, 1e20):
        for f in np.geomspace(0.3, 3, 6):
            n = 0.1 * c**0.5 * f
            d = c / (6 * n)
            loss = 1.7 + 400 / n**0.34 + 410 / d**0.28
            rows.append({"params_active": n, "tokens": d, "flops": c, "val_loss": loss})
    path = write_table(tmp_path / "iso.csv", rows)
    out = tmp_path / "iso.json"
    argv = ["fit", str(path), "--method", "isoflop", "--bootstrap", "20", "--json", str(out)]
    assert run_cli(argv) == 0
    data = json.loads(out.read_text())
    assert data["method"] == "isoflop" and len(data["budgets"]) == 4
    assert data["flops_convention"] == "N, D, C from the table"
    assert "IsoFLOP profiles" in capsys.readouterr().out
    from moescale.laws import IsoFLOPResult, read_any_fit

    assert isinstance(read_any_fit(out, "--fit"), IsoFLOPResult)
    err = error_of(["fit", str(path), "--method", "isoflop", "--law", "wang"], capsys)
    assert "leave out --law" in err
    err = error_of(["fit", str(path), "--budgets", "1e17,x"], capsys)
    assert "--budgets and --budget-col group runs for --method isoflop" in err


def test_row_selection_flags(results_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    argv = ["fit", str(results_csv), "--bootstrap", "0", "--json", str(out)]
    argv += ["--where", "tokens >= 1e9 and arch == 'dense'", "--best-of", "loss"]
    argv += ["--group-by", "N,D", "--transform", "loss=val_loss * 1"]
    argv += ["--huber-delta", "0.01", "--loss", "huber"]
    assert run_cli(argv) == 0
    data = json.loads(out.read_text())
    assert data["n_points"] == 18 and data["huber_delta"] == 0.01
    assert data["selection"]["group_by"] == ["N", "D"] and data["columns"]["loss"] == "loss"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--huber-delta", "0"], "--huber-delta must be a positive number"),
        (["--method", "isoflop", "--budget-tol", "0"], "--budget-tol must be a positive"),
        (["--where", "import os"], "--where 'import os' is not a valid expression"),
        (["--group-by", "N"], "add --best-of COLUMN"),
    ],
)
def test_bad_flags_are_one_line_errors(results_csv: Path, capsys, flags, message) -> None:
    err = error_of(["fit", str(results_csv), "--bootstrap", "0", *flags], capsys)
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_json_to_stdout_stays_alone_with_log_lines(results_csv: Path) -> None:
    argv = ["fit", str(results_csv), "--bootstrap", "20", "--where", "tokens > 0", "--json"]
    r = subprocess.run(
        [sys.executable, "-m", "moescale.cli", *argv], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bootstrap_requested"] == 20
    assert "bootstrap: 20 draws" in r.stderr and "--where" in r.stderr


def test_a_fit_records_the_design_its_rows_share(results_csv: Path, tmp_path: Path,
                                                capsys) -> None:  # fmt: skip
    """experts/granularity/top_k that every fitted row shares go into the fit JSON, so `plan`
    refuses a MoE fit given as --compare's dense one instead of labelling it dense."""
    dense_fit, moe_fit = tmp_path / "dense.json", tmp_path / "moe.json"
    argv = ["fit", str(results_csv), "--bootstrap", "0", "--where", "N > 0"]  # an alias of a column
    assert run_cli([*argv, "--json", str(dense_fit)]) == 0
    d = json.loads(dense_fit.read_text())
    assert (d["experts"], d["granularity"], d["top_k"]) == (1.0, 1.0, 1.0)
    assert FitResult.from_json(d, "dense").to_json() == d  # the design survives a round trip
    rows = list(csv.DictReader(results_csv.open()))
    moe_csv = write_table(tmp_path / "moe.csv", [{**r, "experts": 8, "top_k": 2} for r in rows])
    assert run_cli(["fit", str(moe_csv), "--bootstrap", "0", "--json", str(moe_fit)]) == 0
    assert json.loads(moe_fit.read_text())["experts"] == 8.0
    mixed = write_table(tmp_path / "mixed.csv", [{**r, "experts": 1 + 7 * (i % 2)}
                                                  for i, r in enumerate(rows)])  # fmt: skip
    out = tmp_path / "mixed.json"
    assert run_cli(["fit", str(mixed), "--bootstrap", "0", "--json", str(out)]) == 0
    assert "experts" not in json.loads(out.read_text())
    capsys.readouterr()
    argv = ["plan", "--budget", "1e21", "--fit", str(dense_fit), "--compare", str(moe_fit)]
    assert "is a fine-grained/MoE law" in error_of(argv, capsys)
