"""Results tables: runs of different tokenizers are never fitted together."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from moescale.errors import UserError
from moescale.laws.fit import fit_table


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
