"""`--json` without OUT on `plan` and `hyper`: stdout is exactly one JSON document, and the
warnings logged on the way (an extrapolated budget, laws that cannot be fitted) go to stderr, as
they do for `fit`, `eval` and `generate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.commands.test_hyper import write_rows

CHIN = {"E0": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moescale.cli", *argv], capture_output=True,
                          text=True)  # fmt: skip


def test_plan_warning_goes_to_stderr(tmp_path: Path) -> None:
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": CHIN, "compute_range": [1e17, 1e18]}))
    r = cli("plan", "--budget", "1e20", "--fit", str(fit), "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)  # the whole of stdout, nothing before or after
    assert any("decades beyond" in w for w in plan["warnings"])
    assert "warning: --fit: the budget 1e+20 lies 2.0 decades beyond" in r.stderr
    # without --json the warning stays on the console with the table
    r = cli("plan", "--budget", "1e20", "--fit", str(fit))
    assert "decades beyond" in r.stdout and "plan for 1e+20 FLOPs" in r.stdout


def test_hyper_warning_goes_to_stderr(tmp_path: Path) -> None:
    """A ladder with one batch size and LR fits no law: the warnings saying so (in `hyper`,
    then in `plan --hyper`) must not precede the JSON."""
    header = ("arch", "params_active", "tokens", "batch_size", "lr", "val_loss")
    rows = [("dense", n, d, 32, 1e-3, 3.0 + 1e3 / n**0.3 + 1e3 / d**0.3)
            for n in (1e6, 2e6, 4e6) for d in (1e8, 2e8)]  # fmt: skip
    table = write_rows(tmp_path / "ladder.csv", header, rows)
    r = cli("hyper", table, "--bootstrap", "0", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["archs"]["dense"]["laws"] == {}
    assert "warning: no hyperparameter law could be fitted" in r.stderr
    # and a plan with these laws says why it has no batch size or LR, rather than '-'
    (hyper := tmp_path / "hyper.json").write_text(r.stdout)
    (fit := tmp_path / "fit.json").write_text(json.dumps({"law": "chinchilla", "params": CHIN}))
    r = cli("plan", "--budget", "1e19", "--fit", str(fit), "--hyper", str(hyper),
            "--hyper-arch", "dense", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["hyper"]["batch"] == {} and plan["hyper"]["lr"] == {}
    assert any("batch was swept (two or more values) in 0 of 6 cells" in w
               for w in plan["warnings"])  # fmt: skip
    assert "warning: --hyper: no batch-size or learning-rate law for dense" in r.stderr
