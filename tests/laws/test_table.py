"""Results tables: runs of different tokenizers are never fitted together; the columns given
are used as they are, and rows are derived, filtered and reduced without glue scripts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws.fit import fit_table
from moescale.laws.table import TableOptions


def write(path: Path, tokenizers: list[str]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "params_active", "tokens", "val_loss", "tokenizer_sha256"])
        for i, tok in enumerate(tokenizers):
            n, d = 1e6 * (1 + i % 4), 1e8 * (1 + i // 4)
            w.writerow([f"r{i}", n, d, 1.5 + 400 / n**0.3 + 900 / d**0.3, tok])
    return path


def test_mixed_tokenizers_are_refused(tmp_path: Path):
    table = write(tmp_path / "t.csv", ["aaaa1111"] * 8 + ["bbbb2222"] * 8)
    with pytest.raises(UserError, match="2 different tokenizers"):
        fit_table(table, "chinchilla", bootstrap_draws=0)


def test_one_tokenizer_fits(tmp_path: Path):
    table = write(tmp_path / "t.csv", ["aaaa1111"] * 16)
    assert fit_table(table, "chinchilla", bootstrap_draws=0).n_points == 16


# ---------- inputs from real tables: the columns given, filters, best-of, transforms ----------
def law(n, d):
    return 1.0 + 2000 / n**0.5 + 20000 / d**0.5


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def sweep_rows(flops_factor: float = 6.0) -> list[dict[str, object]]:
    rows = []
    for a, arch in enumerate(("dense", "moe")):
        for n in (1e6, 3e6, 1e7, 3e7, 1e8):
            for d in (1e8, 3e8, 1e9, 3e9, 1e10):
                for k, lr in enumerate((1e-3, 3e-3, 1e-2)):
                    loss = law(n, d) * (1 + 0.02 * abs(k - 1)) * (1 - 0.01 * a)
                    rows.append({"arch": arch, "lr": lr, "params_active": n, "tokens": d,
                                 "flops": flops_factor * n * d, "val_loss": loss})  # fmt: skip
    return rows


def test_flops_column_is_used_when_n_and_d_exist(tmp_path: Path) -> None:
    """C comes from the table's flops column (here 7·N·D), not from 6·N·D."""
    path = write_rows(tmp_path / "t.csv", sweep_rows(flops_factor=7.0))
    res = fit_table(path, bootstrap_draws=0, options=TableOptions(where="lr == 3e-3"))
    assert res.sources == {"N": "table", "D": "table", "C": "table"}
    assert res.flops_convention == "N, D, C from the table" and res.derived is None
    assert res.compute_range == (pytest.approx(7 * 1e6 * 1e8), pytest.approx(7 * 1e8 * 1e10))


def test_flops_col_does_not_overwrite_true_tokens(tmp_path: Path) -> None:
    rows = sweep_rows()
    for r in rows:
        r["my_flops"] = 8 * r["params_active"] * r["tokens"]  # another FLOP convention
        del r["flops"]
    path = write_rows(tmp_path / "t.csv", rows)
    opts = TableOptions(columns={"C": "my_flops"}, where="lr == 3e-3 and arch == 'dense'")
    res = fit_table(path, bootstrap_draws=0, options=opts)
    assert res.sources["D"] == "table" and res.columns["D"] == "tokens"
    assert res.params["alpha"] == pytest.approx(0.5, abs=1e-3)
    assert res.params["beta"] == pytest.approx(0.5, abs=1e-3)


def test_n_from_flops(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "t.csv", sweep_rows())
    opts = TableOptions(where="lr == 3e-3 and arch == 'dense'", n_from_flops=True)
    res = fit_table(path, bootstrap_draws=0, options=opts)
    assert res.sources == {"D": "table", "C": "table", "N": "C / (6 D)"}
    assert "Wang et al. 2024" in res.flops_convention and "N" not in res.columns
    with pytest.raises(UserError, match="leave out --n-col"):
        fit_table(path, columns={"N": "params_active"}, options=opts, bootstrap_draws=0)


def test_where_best_of_and_transform(tmp_path: Path) -> None:
    rows = sweep_rows()
    for r in rows:
        r["perplexity"] = float(np.exp(r.pop("val_loss")))
    path = write_rows(tmp_path / "t.csv", rows)
    opts = TableOptions(
        transforms=("loss=log(perplexity)",),
        where="arch == 'dense' and col('tokens') >= 1e8",
        best_of="loss",
        group_by=("arch", "N", "D"),
    )
    res = fit_table(path, bootstrap_draws=0, options=opts)
    assert res.n_points == 25  # one learning rate of each (N, D): the best, lr = 3e-3
    assert res.params["alpha"] == pytest.approx(0.5, abs=1e-3)
    assert res.params["E0"] == pytest.approx(1.0, abs=1e-3)
    assert res.selection["where"] == opts.where and res.selection["rows"] == 25
    assert res.columns["loss"] == "loss"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("__import__('os').system('true')", "is not allowed"),
        ("arch.upper() == 'MOE'", "is not allowed"),
        ("arch == 1", "compares text (arch) with a number (1)"),
        ("tokens > ", "is not a valid expression"),
        ("tokens + 1", "must be a condition"),
        ("tokens > 1e20", "keeps none of the 150 rows"),
        ("size > 3", "no column 'size'"),
    ],
)
def test_where_errors(tmp_path: Path, where: str, message: str) -> None:
    path = write_rows(tmp_path / "t.csv", sweep_rows())
    with pytest.raises(UserError, match="--where") as exc:
        fit_table(path, bootstrap_draws=0, options=TableOptions(where=where))
    assert message in str(exc.value)


def test_messages_show_plain_values(tmp_path: Path) -> None:
    rows = [{"params_active": n, "tokens": 1e9, "val_loss": 3.0} for n in (1e6, 2e6, 3e6)]
    rows[1]["val_loss"] = "broken"
    path = write_rows(tmp_path / "t.csv", rows)
    with pytest.raises(UserError) as exc:
        fit_table(path, bootstrap_draws=0)
    assert "row 2 has 'broken'" in str(exc.value) and "np." not in str(exc.value)
    rows[1]["val_loss"] = -1.0
    path = write_rows(tmp_path / "t.csv", rows)
    with pytest.raises(UserError) as exc:
        fit_table(path, bootstrap_draws=0)
    assert "row 2 has -1.0 (1 bad row)" in str(exc.value) and "np." not in str(exc.value)


# ---------- populations one law cannot tell apart ----------
def study_rows(hyper: bool) -> list[dict[str, object]]:
    """A study's results table in miniature: three architectures, and (with `hyper`) runs of a
    learning-rate sweep; the hyper column is empty on the base runs."""
    rows = []
    for name, e, g, gain in (("dense", 1, 1, 1.0), ("moe", 8, 1, 0.97), ("fg", 8, 4, 0.95)):
        for n in (1e6, 3e6, 1e7, 3e7):
            for d in (1e8, 1e9, 1e10):
                rows.append({"arch_name": name, "experts": e, "granularity": g, "hyper": "",
                             "params_active": n, "params_total": e * n, "tokens": d,
                             "val_loss": gain * law(n, d)})  # fmt: skip
                if hyper and name == "dense" and d == 1e9:
                    rows.append({**rows[-1], "hyper": "lr", "val_loss": 1.05 * law(n, d)})
    return rows


def codes(res) -> set[str]:
    return {w["code"] for w in res.warnings}


def test_pooled_architectures_and_sweeps_are_warned(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "t.csv", study_rows(hyper=True))
    res = fit_table(path, "chinchilla", bootstrap_draws=0)
    assert {"mixed_architectures", "hyper_sweep_rows"} <= codes(res)
    mixed = next(w["message"] for w in res.warnings if w["code"] == "mixed_architectures")
    assert "3 architectures (dense, fg, moe)" in mixed and "E, G" in mixed
    assert "--where \"arch_name == 'dense'\"" in mixed
    # the remedies the messages name remove them
    one = TableOptions(where="arch_name == 'dense' and hyper == ''")
    assert not codes(fit_table(path, "chinchilla", bootstrap_draws=0, options=one)) & {
        "mixed_architectures", "hyper_sweep_rows"}  # fmt: skip
    # a law with an input for what varies: only the rest is named
    moe = TableOptions(where="arch_name != 'dense' and hyper == ''")
    res = fit_table(path, "krajewski", bootstrap_draws=0, options=moe)
    assert "mixed_architectures" not in codes(res)  # E is constant, G is the law's input


def test_a_table_without_sweep_rows_is_not_warned(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "t.csv", study_rows(hyper=False))
    res = fit_table(path, "chinchilla", bootstrap_draws=0, options=TableOptions(
        where="arch_name == 'moe'"))  # fmt: skip
    assert not codes(res) & {"mixed_architectures", "hyper_sweep_rows"}


def test_drop_outliers_past_the_table_names_both_counts(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "t.csv", sweep_rows())
    n = len(sweep_rows())
    with pytest.raises(UserError, match=f"gives {n} points, 0 after --drop-outliers {n + 4};"):
        fit_table(path, drop_outliers=n + 4, bootstrap_draws=0)


def test_the_advice_for_a_non_finite_loss_removes_it(tmp_path: Path) -> None:
    rows = sweep_rows()
    rows[3]["val_loss"], rows[7]["val_loss"] = float("inf"), float("nan")
    path = write_rows(tmp_path / "t.csv", rows)
    with pytest.raises(UserError, match="2 bad rows") as err:
        fit_table(path, bootstrap_draws=0)
    where = str(err.value).split('--where "')[1].rstrip('"')
    res = fit_table(path, bootstrap_draws=0, options=TableOptions(where=where))
    assert res.n_points == len(rows) - 2


def test_unfinished_and_repeated_rows_are_warned(tmp_path: Path) -> None:
    rows = [{**r, "status": "done"} for r in sweep_rows()]
    clean = fit_table(write_rows(tmp_path / "a.csv", rows), bootstrap_draws=0)
    assert not {"unfinished_rows", "duplicate_rows"} & {w["code"] for w in clean.warnings}
    rows[4]["status"] = "failed"
    res = fit_table(write_rows(tmp_path / "b.csv", rows + rows[:2]), bootstrap_draws=0)
    said = {w["code"]: w["message"] for w in res.warnings}
    assert "status failed" in said["unfinished_rows"]
    assert "status == 'done'" in said["unfinished_rows"]
    assert said["duplicate_rows"].startswith("2 rows repeat")


def test_a_semicolon_separated_table_reads_as_the_comma_one(tmp_path: Path) -> None:
    """Excel writes ';' where the decimal mark is a comma."""
    from moescale.laws.table import read_table

    comma = write_rows(tmp_path / "c.csv", sweep_rows())
    semi = tmp_path / "s.csv"
    semi.write_text(comma.read_text().replace(",", ";"))
    a, b = read_table(comma), read_table(semi)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
