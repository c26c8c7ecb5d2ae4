"""The flag conventions every command shares (moescale/commands/__init__.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moescale.commands import flop_list
from moescale.errors import UserError


def test_flop_list_reads_a_comma_list() -> None:
    assert flop_list("1e18, 3e19,1e20") == [1e18, 3e19, 1e20]
    assert flop_list(None) is None and flop_list(" ") is None


@pytest.mark.parametrize("text", ["-1e20", "1e18,0", "1e18,nan", "1e18,inf", "1e18,,1e20", "a lot"])
def test_flop_list_refuses_what_is_not_a_positive_count(text: str) -> None:
    with pytest.raises(UserError, match="--budgets .* is not a positive FLOP count"):
        flop_list(text)


@pytest.mark.parametrize("command", ["report", "fit"])
def test_bad_budgets_stop_before_writing(command: str, tmp_path: Path, capsys) -> None:
    from moescale.cli import main

    target = tmp_path / "results.csv" if command == "fit" else tmp_path
    if command == "fit":
        target.write_text("N,D,loss\n1e6,1e8,3.0\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = ["--method", "isoflop"] if command == "fit" else []
    assert main([command, str(target), *extra, "--budgets=1e20,-1e22"]) == 2
    err = capsys.readouterr().err
    assert "'-1e22' is not a positive FLOP count" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_negative_number_after_a_flag_is_its_value() -> None:
    """argparse would take '-1e20' for an option ("expected one argument"): the command's own
    check must see it."""
    from moescale.cli import _attach_negative_values

    argv = ["plan", "--budget", "-1e20", "--fit", "f.json", "--budgets", "-.5,1", "--x=1", "-2"]
    assert _attach_negative_values(argv) == [
        "plan", "--budget=-1e20", "--fit", "f.json", "--budgets=-.5,1", "--x=1", "-2"
    ]  # fmt: skip


def test_plan_refuses_a_negative_budget_by_name(tmp_path: Path, capsys) -> None:
    from moescale.cli import main

    assert main(["plan", "--budget", "-1e20", "--fit", str(tmp_path / "none.json")]) == 2
    assert "--budget must be a positive number of FLOPs" in capsys.readouterr().err


def test_json_into_a_directory_is_refused_before_the_work(tmp_path: Path, capsys) -> None:
    from moescale.cli import main

    table = tmp_path / "results.csv"
    table.write_text("N,D,loss\n1e6,1e8,3.0\n")
    assert main(["fit", str(table), "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--json {tmp_path} is a directory: give a file, e.g. {tmp_path}/fit.json" in err


def test_checkpoint_flags_refuse_negative_counts() -> None:
    """eval and generate share --step and --threads: neither takes -1 (eval recorded it)."""
    import argparse

    from moescale.commands import add_checkpoint_flags

    parser = argparse.ArgumentParser()
    add_checkpoint_flags(parser)
    assert parser.parse_args(["--step", "7", "--threads", "0"]).step == 7
    for bad in (["--step=-1"], ["--threads=-2"], ["--threads", "two"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
