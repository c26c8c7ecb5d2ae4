"""`moescale hyper` on the wrong table says which table it reads, and its --where hint is a
flag it has: a study's results.csv with a failed run, and the collector's curves.csv (losses
without the runs' settings)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.commands.test_fit_plan import error_of, run_cli
from tests.commands.test_hyper import write_rows
from tests.laws.test_hyper import sweep

HEADER = ("run", "status", "arch", "params_active", "tokens", "batch_size", "lr", "val_loss")


def test_collected_curves_name_the_table_hyper_reads(tmp_path: Path, capsys) -> None:
    header = ("run", "step", "tokens", "loss", "lr", "val_loss", "noise_scale")
    rows = [(f"r{i}", s, 4096.0 * s, 5.0 / s**0.1, 1e-3, "", "") for i in range(3)
            for s in (1, 10, 100)]  # fmt: skip
    table = write_rows(tmp_path / "curves.csv", header, rows)
    err = error_of(["hyper", table], capsys)
    assert "lacks 'params_active', 'batch_size'" in err and "results table" in err
    assert "a study's results.csv" in err and "run directories" in err
    assert "(set by n_col)" not in err and "--where" not in err
    err = error_of(["hyper", table, "--method", "curves"], capsys)
    assert "lacks 'schedule', 'batch_size'" in err and "curve table" in err


def test_where_drops_a_failed_run(tmp_path: Path, capsys) -> None:
    """The error suggests --where; hyper has it, with fit's syntax."""
    s = sweep()
    rows = [
        (f"r{i}", "done", *r)
        for i, r in enumerate(
            zip(s["arch"], s["n"], s["d"], s["b"], s["lr"], s["loss"], strict=True)
        )
    ]
    rows.append(("dead", "failed", "dense", 1e6, 1e8, 32, 1e-3, ""))
    table = write_rows(tmp_path / "results.csv", HEADER, rows)
    err = error_of(["hyper", table, "--bootstrap", "0"], capsys)
    assert "column 'val_loss' must be finite" in err and "--where" in err
    argv = ["hyper", table, "--bootstrap", "0", "--where", "status == 'done'", "--json"]
    assert run_cli(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["archs"]["dense"]["laws"]["batch_vs_compute"]["n"] > 0
