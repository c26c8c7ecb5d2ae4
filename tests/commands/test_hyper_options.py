"""`moescale hyper` refuses bad flags with one line naming the flag and its range, before it
reads any table, and never relabels a batch column's unit: `--batch-unit tokens` on batch_size
(sequences) is refused, `--batch-col batch_tokens` gives tokens, and the default path is as it
was (sequences, which `moescale plan --hyper` states in tokens with the runs' --seq-len)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.commands.test_fit_plan import error_of, run_cli
from tests.commands.test_hyper import CHIN, write_rows
from tests.laws.test_hyper import sweep

SEQ = 128
HEADER = ("arch", "params_active", "tokens", "seq_len", "batch_size", "batch_tokens", "lr",
          "val_loss")  # fmt: skip


def results_table(tmp_path: Path) -> str:
    """A study-like results table: batch_size in sequences, batch_tokens = batch_size·seq_len."""
    s = sweep()
    rows = [(a, n, d, SEQ, b, b * SEQ, lr, loss)
            for a, n, d, b, lr, loss in zip(s["arch"], s["n"], s["d"], s["b"], s["lr"], s["loss"],
                                            strict=True)]  # fmt: skip
    return write_rows(tmp_path / "results.csv", HEADER, rows)


@pytest.mark.parametrize(
    ("flag", "value", "want"),
    [
        ("--holdout-frac", "-1", "in [0, 1)"),
        ("--holdout-frac", "1.5", "in [0, 1)"),
        ("--holdout-frac", "nan", "in [0, 1)"),
        ("--bootstrap", "-3", ">= 0"),
        ("--levels", "0", ">= 1"),
        ("--levels", "-4", ">= 1"),
        ("--smooth", "-1", ">= 1"),
        ("--smooth", "0", ">= 1"),
        ("--seq-len", "0", ">= 1"),
        ("--seq-len", "-1", ">= 1"),
        ("--seed", "-1", ">= 0"),
    ],
)
def test_bad_numbers_refused_before_the_table_is_read(
    tmp_path: Path, capsys, flag: str, value: str, want: str
) -> None:
    err = error_of(["hyper", str(tmp_path / "absent.csv"), flag, value], capsys)
    assert f"{flag} must be {want}" in err and f"got {value}" in err.replace(".0", "")
    assert "does not exist" not in err and "Traceback" not in err and err.count("\n") == 1


def test_negative_holdout_frac_on_a_fittable_sweep(tmp_path: Path, capsys) -> None:
    """It used to reach the held-out check and crash (zero-size array to reduction)."""
    table = results_table(tmp_path)
    err = error_of(["hyper", table, "--method", "band", "--holdout-frac", "-1"], capsys)
    assert "--holdout-frac must be in [0, 1)" in err
    assert run_cli(["hyper", table, "--bootstrap", "0", "--holdout-frac", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["archs"]["dense"]["holdout"] == {}


def test_batch_unit_contradicting_the_column_is_refused(tmp_path: Path, capsys) -> None:
    table = results_table(tmp_path)
    out = tmp_path / "h.json"
    err = error_of(["hyper", table, "--method", "band", "--batch-unit", "tokens", "--json",
                    str(out)], capsys)  # fmt: skip
    assert "--batch-unit tokens contradicts --batch-col batch_size, which is in sequences" in err
    assert "give --batch-col batch_tokens" in err and not out.exists()
    err = error_of(["hyper", table, "--batch-col", "batch_tokens", "--batch-unit", "sequences"],
                   capsys)  # fmt: skip
    assert "which is in tokens" in err and "--batch-col batch_size" in err
    # agreeing with the column, or naming the unit of a column hyper does not know, is fine
    assert run_cli(["hyper", table, "--bootstrap", "0", "--batch-unit", "sequences"]) == 0
    assert "batch sizes in sequences" in capsys.readouterr().out
    assert run_cli(["hyper", table, "--bootstrap", "0", "--batch-col", "batch_tokens",
                    "--batch-unit", "tokens"]) == 0  # fmt: skip
    assert "batch sizes in tokens" in capsys.readouterr().out


def hyper_json(tmp_path: Path, capsys, name: str, *flags: str) -> dict:
    out = tmp_path / name
    assert run_cli(["hyper", results_table(tmp_path), "--bootstrap", "0", *flags, "--json",
                    str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    return json.loads(out.read_text())


def planned(tmp_path: Path, capsys, hyper: str) -> dict:
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": CHIN}))
    argv = ["plan", "--budget", "1e21", "--fit", str(fit), "--hyper", str(tmp_path / hyper),
            "--hyper-arch", "dense", "--json"]  # fmt: skip
    assert run_cli(argv) == 0
    return json.loads(capsys.readouterr().out)["hyper"]


def test_sequences_and_tokens_agree_through_plan(tmp_path: Path, capsys) -> None:
    """Default: batch_size in sequences, laws as before (B = 0.292·C^0.327 in sequences);
    batch_tokens gives the same law seq_len times larger, in tokens; plan's tokens agree."""
    seqs = hyper_json(tmp_path, capsys, "seq.json", "--seq-len", str(SEQ))
    toks = hyper_json(tmp_path, capsys, "tok.json", "--batch-col", "batch_tokens")
    default = hyper_json(tmp_path, capsys, "default.json")
    assert default["batch_unit"] == "sequences" and default["seq_len"] is None
    assert (seqs["batch_unit"], seqs["seq_len"], toks["batch_unit"]) == ("sequences", SEQ, "tokens")
    law = lambda d: d["archs"]["dense"]["laws"]["batch_vs_compute"]  # noqa: E731
    assert law(default) == law(seqs)
    assert law(default)["exponents"]["C"] == pytest.approx(0.327, abs=0.02)
    assert law(toks)["exponents"]["C"] == pytest.approx(law(seqs)["exponents"]["C"], abs=1e-9)
    assert law(toks)["coef"] == pytest.approx(SEQ * law(seqs)["coef"], rel=1e-6)
    in_seqs, in_toks = planned(tmp_path, capsys, "seq.json"), planned(tmp_path, capsys, "tok.json")
    assert in_seqs["batch_unit"] == "sequences" and in_toks["batch_unit"] == "tokens"
    b = in_seqs["batch"]["batch_vs_compute"]
    assert in_seqs["batch_tokens"]["batch_vs_compute"] == pytest.approx(SEQ * b)
    assert in_toks["batch"]["batch_vs_compute"] == pytest.approx(SEQ * b, rel=1e-6)


def test_seq_len_must_be_the_runs_own(tmp_path: Path, capsys) -> None:
    table = results_table(tmp_path)
    err = error_of(["hyper", table, "--seq-len", "256"], capsys)
    assert "--seq-len 256 contradicts the table's seq_len column (128)" in err
    assert "leave --seq-len out or give 128" in err


def test_a_family_of_longer_sequences_keeps_the_laws_sequence_length(tmp_path: Path, capsys):
    """A batch law in sequences of 128 tokens, planned for a family of 2048-token sequences:
    batch_tokens counts the law's 128 per sequence (the family's would say 16x more), and the
    plan says so."""
    hyper_json(tmp_path, capsys, "seq.json", "--seq-len", str(SEQ))
    family = tmp_path / "family.yaml"
    family.write_text("model: {d_model: 128, n_layers: 4, n_heads: 4, d_ff: 1024, "
                      "vocab_size: 4096, seq_len: 2048}\n")  # fmt: skip
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": CHIN}))
    argv = ["plan", "--budget", "1e21", "--fit", str(fit), "--family", str(family),
            "--hyper", str(tmp_path / "seq.json"), "--json"]  # fmt: skip
    assert run_cli(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    b = plan["hyper"]["batch"]["batch_vs_compute"]
    assert plan["hyper"]["batch_tokens"]["batch_vs_compute"] == pytest.approx(SEQ * b)
    assert any("sequences of 128 tokens, the family's hold 2048" in w for w in plan["warnings"])
