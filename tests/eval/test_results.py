"""eval.json: entries keyed by what was evaluated, merged atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moescale.eval.results import read_eval, record_eval, task_key, text_key
from moescale.run import RunDirError


def test_entries_merge_and_the_same_key_is_replaced(tmp_path: Path):
    a, b = text_key("a.txt", 128, 10), task_key("hellaswag", None, None, 10)
    assert a == f"text:{Path('a.txt').resolve()}|stride=128|step=10"
    assert b == "task:hellaswag|fewshot=default|limit=all|step=10"
    record_eval(tmp_path, {a: {"kind": "text", "loss": 3.0}})
    record_eval(tmp_path, {b: {"kind": "task", "metrics": {"acc": 0.5}}})
    record_eval(tmp_path, {a: {"kind": "text", "loss": 2.5, "loss_se": math.nan}})
    entries = read_eval(tmp_path)
    assert set(entries) == {a, b}
    assert entries[a]["loss"] == 2.5 and entries[a]["loss_se"] is None  # NaN -> null
    assert entries[b]["metrics"] == {"acc": 0.5} and "written" in entries[b]
    json.loads((tmp_path / "eval.json").read_text())  # standard JSON
    assert not list(tmp_path.glob(".eval.json.tmp-*"))


def test_a_damaged_file_is_an_error_naming_it(tmp_path: Path):
    assert read_eval(tmp_path) == {}
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(RunDirError, match="eval.json is not readable JSON"):
        record_eval(tmp_path, {"k": {}})
    (tmp_path / "eval.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match="expected a JSON object"):
        read_eval(tmp_path)


def test_reading_eval_json_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, moescale.eval.results; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
