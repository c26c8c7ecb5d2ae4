"""`moescale plan` on hand-written fits: true compute through a family, explicit assumptions,
one-line errors for bad inputs, and the plan JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.commands.test_fit_plan import error_of, run_cli
from tests.laws.test_allocate import KRAJEWSKI_MOE, KRAJEWSKI_ROWS

DENSE = {"E0": 0.47, "A": 16.3, "alpha": 0.126, "B": 26.7, "beta": 0.127}
CHIN = {"E0": 1.8172, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
PAPER = ["--family", "krajewski", "--flops", "routing_aware"]


def write(path: Path, law: str, params: dict[str, float], **more: object) -> str:
    path.write_text(json.dumps({"law": law, "params": params, **more}))
    return str(path)


def plan_json(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    assert run_cli(["plan", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_plan_krajewski_searches_granularity(tmp_path: Path, capsys) -> None:
    """A hand-written fit is enough, with the family, E and FLOPs convention said out loud."""
    size, tokens, g, flops, loss = KRAJEWSKI_ROWS[2]
    fit = write(tmp_path / "paper.json", "krajewski", KRAJEWSKI_MOE)
    plan = plan_json(["--budget", str(flops), "--fit", fit, *PAPER, "--experts", "64"], capsys)
    assert plan["granularity"] == g and plan["loss"] == pytest.approx(loss, abs=0.03)
    assert plan["flops"] == "routing_aware_krajewski" and plan["experts"] == 64
    err = error_of(["plan", "--budget", "1e21", "--fit", fit, "--compare", fit, *PAPER,
                    "--experts", "64"], capsys)  # fmt: skip
    assert "--compare takes the dense fit" in err and "krajewski" in err


def test_compare_at_true_compute(tmp_path: Path, capsys) -> None:
    """Krajewski et al.'s coefficients at 1.93e20 FLOPs, G 16: MoE ahead, definitions printed."""
    moe = write(tmp_path / "moe.json", "krajewski", KRAJEWSKI_MOE, experts=64,
                columns={"N": "params_total_no_router"})  # fmt: skip
    dense = write(tmp_path / "dense.json", "chinchilla", DENSE)
    argv = ["--budget", "1.93e20", "--fit", moe, "--compare", dense, "--granularity", "16", *PAPER]
    capsys.readouterr()
    assert run_cli(["plan", *argv]) == 0
    out = capsys.readouterr().out
    for text in ("E = 64 (recorded in the fit JSON)", "family krajewski", "routing_aware",
                 "compute multiplier", "D_dense / D_moe - 1", "build: d_model"):  # fmt: skip
        assert text in out, text
    plan = plan_json(argv, capsys)
    c = plan["compare"]
    assert plan["loss"] == pytest.approx(2.472, abs=0.002) and plan["loss"] < c["dense_loss"]
    assert c["data_efficiency"] > 0 and c["compute_ratio"] > 1 and c["loss_gap"] > 0
    assert set(c["definitions"]) == {"loss_gap", "compute_ratio", "token_ratio", "data_efficiency"}
    assert plan["design"]["routed_experts"] == 1024 and plan["n_active"] < plan["n_total"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--k", "0"], "--k must be a positive number"),
        (["--experts", "8"], "--experts does not apply"),
        (["--flops", "exact"], "needs FLOPs per token of a model"),
        (["--top-k", "2"], "--top-k does not apply"),
        (["--family", "nope.yaml"], "not a config file"),
    ],
)
def test_bad_flags_are_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    fit = write(tmp_path / "f.json", "chinchilla", CHIN)
    err = error_of(["plan", "--budget", "1e21", "--fit", fit, *argv], capsys)
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_degenerate_fits_and_draws(tmp_path: Path, capsys) -> None:
    zero = write(tmp_path / "z.json", "chinchilla", dict(CHIN, beta=0.0))
    assert "beta = 0" in error_of(["plan", "--budget", "1e21", "--fit", zero], capsys)
    draws = [CHIN, dict(CHIN, alpha=0.0), dict(CHIN, B=0.0)]
    fit = write(tmp_path / "d.json", "chinchilla", CHIN, bootstrap_params=draws,
                compute_range=[1e17, 1e19])  # fmt: skip
    plan = plan_json(["--budget", "1e23", "--fit", fit, "--compare", fit], capsys)
    assert plan["degenerate_draws"] == 2 and plan["compare"]["degenerate_draws"] == 2
    assert any("4.0 decades beyond" in w for w in plan["warnings"])


def test_wang_needs_experts(tmp_path: Path, capsys) -> None:
    wang = {"A": 477.8, "B": 2143.0, "alpha": 0.35, "beta": 0.37, "gamma": 0.2, "sigma": 1.8}
    fit = write(tmp_path / "w.json", "wang", wang)
    assert "--experts E" in error_of(["plan", "--budget", "1e21", "--fit", fit], capsys)
    plan = plan_json(["--budget", "1e21", "--fit", fit, "--experts", "8"], capsys)
    assert plan["flops"] == "C = 6 N D" and "E = 8 (--experts)" in plan["assumptions"]
