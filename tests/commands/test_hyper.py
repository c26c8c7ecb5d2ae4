"""`moescale hyper`: training curves (a table or run directories) and sweep tables to batch-size
and learning-rate laws, read back by `moescale plan --hyper`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from moescale.run import RunPaths, RunSummary
from tests.commands.test_fit_plan import error_of, run_cli
from tests.laws.test_hyper import CURVE_COLS, curves, sweep

CHIN = {"E0": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write_rows(path: Path, header: tuple[str, ...], rows: list[tuple]) -> str:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_curves_to_laws_to_plan(tmp_path: Path, capsys) -> None:
    table = write_rows(tmp_path / "curves.csv", CURVE_COLS, curves() + curves(1e4, 0.08, "moe", 8))
    out = tmp_path / "hyper.json"
    assert run_cli(["hyper", table, "--bootstrap", "50", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "method curves" in printed and "batch sizes in sequences" in printed
    data = json.loads(out.read_text())
    assert data["method"] == "curves" and data["batch_unit"] == "sequences"
    assert set(data["archs"]) == {"dense", "moe E8 k2 G1"}
    law = data["archs"]["dense"]["laws"]["batch_vs_loss"]
    assert law["exponents"]["L"] == pytest.approx(-3.0, abs=0.15)

    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": CHIN}))
    base = ["plan", "--budget", "1e21", "--fit", str(fit), "--hyper", str(out)]
    err = error_of(base, capsys)
    assert "--hyper-arch" in err
    assert run_cli([*base, "--hyper-arch", "dense", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["hyper"]["arch"] == "dense" and plan["hyper"]["batch"]["batch_vs_loss"] > 0
    # through a dense config family the architecture follows from the design
    family = ["--family", str(EXAMPLES / "dense.yaml")]
    assert run_cli([*base, *family, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["hyper"]["arch"] == "dense" and "batch_tokens" in plan["hyper"]


def test_cosine_curves_refused(tmp_path: Path, capsys) -> None:
    table = write_rows(tmp_path / "c.csv", CURVE_COLS, curves(schedule="cosine")[:400])
    err = error_of(["hyper", table], capsys)
    assert "cosine" in err and "constant | wsd" in err


def test_band_from_a_results_table(tmp_path: Path, capsys) -> None:
    s = sweep()
    header = ("arch", "params_active", "tokens", "batch_size", "lr", "val_loss")
    rows = list(zip(s["arch"], s["n"], s["d"], s["b"], s["lr"], s["loss"], strict=True))
    table = write_rows(tmp_path / "sweep.csv", header, rows)
    assert run_cli(["hyper", table, "--bootstrap", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "band"
    dense = data["archs"]["dense"]
    assert dense["laws"]["batch_vs_compute"]["exponents"]["C"] == pytest.approx(0.327, abs=0.02)
    assert {"lr_vs_nd", "batch_vs_d"} <= set(dense["laws"]) and dense["holdout"]
    assert "--batch-unit" in error_of(["hyper", table, "--batch-col", "lr"], capsys)


def test_run_directories(tmp_path: Path, capsys) -> None:
    rows = curves()
    dirs = []
    for name in sorted({r[0] for r in rows})[:20]:
        mine = [r for r in rows if r[0] == name]
        d = tmp_path / name
        d.mkdir()
        b, lr = int(mine[0][6]), float(mine[0][7])
        RunSummary(run=name, status="done", arch="dense", experts=1, granularity=1, top_k=1,
                   d_model=64, n_layers=2, seq_len=64, params_total=10**7, params_active=10**7,
                   params_embedding=0, params_router=0, params_total_no_router=10**7,
                   params_active_no_router=10**7, flops_per_token=6e7,
                   flops_per_token_simple=6e7, flops_per_token_routing_aware=6e7,
                   batch_size=b, batch_tokens=64 * b, lr=lr, schedule="wsd",
                   steps_planned=100).write(RunPaths(d))  # fmt: skip
        lines = [json.dumps({"step": i, "tokens": r[8], "loss": r[9]}) for i, r in enumerate(mine)]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        dirs.append(str(d))
    assert run_cli(["hyper", *dirs, "--bootstrap", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "curves" and data["archs"]["dense"]["n_runs"] == 20
