"""When a task may start: a WSD branch whose trunk finished without its checkpoint (a budget
added to a trained study) starts from an earlier checkpoint instead of waiting forever."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from moescale.study import tasks
from moescale.study.spec import Run, expand
from moescale.study.tasks import DONE, PENDING, Task, ready, rebase_branch

from .test_spec import BASE


def _branch(tmp_path: Path, kept: list[int], trunk_done: bool, monkeypatch) -> tuple[Run, Run]:
    """(trunk, branch of the middle budget) of a one-model study; the trunk's directory holds
    checkpoints at the steps `kept` (the names are all that is read)."""
    data = {"base": copy.deepcopy(BASE), "out_dir": str(tmp_path / "study"),
            "ladder": {"n_layers": [1], "d_model_per_layer": 32, "head_dim": 16},
            "tokens": {"budgets": [1280, 2560, 3840]}}  # fmt: skip
    study = expand(data, "s", base_dir=tmp_path)
    (trunk,) = [r for r in study.runs if not r.trunk]
    (branch,) = [r for r in study.runs if r.tokens == 2560]
    ckpts = Path(trunk.config["train"]["out_dir"]) / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in kept:
        (ckpts / f"step_{step:08d}.pt").write_bytes(b"")
    done_dir = str(ckpts.parent) if trunk_done else None
    monkeypatch.setattr(tasks, "trained", lambda d: 30 if str(d) == done_dir else None)
    return trunk, branch


def test_branch_of_a_finished_trunk_starts_from_its_newest_earlier_checkpoint(
    tmp_path: Path, monkeypatch
):  # fmt: skip
    trunk, branch = _branch(tmp_path, [], True, monkeypatch)
    step, name = branch.branch_step, branch.name
    ckpts = Path(trunk.config["train"]["out_dir"]) / "checkpoints"
    for s in (step - 4, step - 2, step + 1, 30):  # the branch point itself was never kept
        (ckpts / f"step_{s:08d}.pt").write_bytes(b"")
    note = rebase_branch(branch)
    assert f"starts from step {step - 2}" in note and f"at step {step}" in note
    assert branch.config["train"]["init_from"] == str(ckpts / f"step_{step - 2:08d}.pt")
    assert (branch.branch_step, branch.trunk, branch.name) == (step - 2, trunk.name, name)
    assert rebase_branch(branch) == ""  # its checkpoint exists now: nothing more to change


def test_branch_without_an_earlier_checkpoint_trains_from_scratch(tmp_path: Path, monkeypatch):
    trunk, branch = _branch(tmp_path, [30], True, monkeypatch)
    note = rebase_branch(branch)
    assert "from scratch" in note and trunk.name in note
    assert "init_from" not in branch.config["train"]
    assert (branch.trunk, branch.branch_step) == ("", 0)


def test_branch_of_an_unfinished_trunk_waits_for_its_checkpoint(tmp_path: Path, monkeypatch):
    trunk, branch = _branch(tmp_path, [2], False, monkeypatch)
    src = branch.config["train"]["init_from"]
    assert rebase_branch(branch) == ""  # the trunk will still write it
    assert branch.config["train"]["init_from"] == src
    t = Task(branch, tmp_path / "b.yaml")
    assert ready(t, {trunk.name: Task(trunk, tmp_path / "t.yaml")}) is False


def test_scheduler_never_waits_for_a_checkpoint_a_finished_trunk_lacks(
    tmp_path: Path, monkeypatch
):  # fmt: skip
    trunk, branch = _branch(tmp_path, [2], True, monkeypatch)
    t = Task(branch, tmp_path / "b.yaml")
    by_name = {trunk.name: Task(trunk, tmp_path / "t.yaml", state=DONE)}
    assert ready(t, by_name) is True  # the trunk finished during this call: rebased now
    written = yaml.safe_load((tmp_path / "b.yaml").read_text())
    assert written["train"]["init_from"].endswith("step_00000002.pt") and t.state == PENDING

    # a trunk that the scheduler saw finish but whose directory says otherwise: fail, not wait
    _, other = _branch(tmp_path / "again", [2], False, monkeypatch)
    t = Task(other, tmp_path / "o.yaml")
    assert ready(t, by_name | {other.trunk: by_name[trunk.name]}) is None
    assert "finished without the checkpoint" in t.reason
    assert other.config["train"]["init_from"] in t.reason


@pytest.mark.parametrize("state", ["failed", "skipped"])
def test_branch_of_a_failed_trunk_is_skipped_with_the_reason(
    tmp_path: Path, monkeypatch, state: str
):  # fmt: skip
    trunk, branch = _branch(tmp_path, [], False, monkeypatch)
    t = Task(branch, tmp_path / "b.yaml")
    assert ready(t, {trunk.name: Task(trunk, tmp_path / "t.yaml", state=state)}) is None
    assert t.reason == f"its trunk {trunk.name} failed"
