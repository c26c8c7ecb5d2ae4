"""`bigbench:TASK`: BIG-bench JSON multiple-choice tasks from a local (fake) bigbench sdist.

Nothing here downloads: the sdist is a tiny .tar.gz with the real one's layout.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from moescale.errors import UserError
from moescale.eval.bigbench import (
    ENV,
    bigbench_items,
    build_bigbench_task,
    lm_eval_name,
    locate_sdist,
)

TOP = "bigbench-0.0.1/bigbench/benchmark_tasks"
EXAMPLES = [
    {"input": "The king rode to the", "target_scores": {"castle": 1, "whale": 0, "bread": 0}},
    {"input": "The captain of the", "target_scores": {"law": 0, "ship": 1, "night": 0}},
    {"input": "Gold and", "target_scores": {"wine": 0, "sword": 0.5, "sea": 1}},
    {"input": "A free-form one", "target": "no choices"},  # no target_scores: left out
    {"input": "The people of the", "target_scores": {"nation": 1, "storm": 0}},
]
GOLD = [0, 1, 2, 0]
SPEC = {"name": "tiny_task", "task_prefix": "", "example_input_prefix": "",
        "example_output_prefix": "", "append_choices_to_input": False,
        "examples": EXAMPLES}  # fmt: skip


def fake_sdist(tmp: Path, tasks: dict[str, dict]) -> Path:
    """A bigbench sdist .tar.gz holding `tasks`, {path below benchmark_tasks/: task.json}."""
    path = tmp / "bigbench-0.0.1.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for rel, spec in {"tiny_task/task.json": SPEC, **tasks}.items():
            data = json.dumps(spec).encode()
            info = tarfile.TarInfo(f"{TOP}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo(f"{TOP}/program_task/task.py")
        readme.size = 1
        tar.addfile(readme, io.BytesIO(b"\n"))
    return path


def read_items(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "bigbench.jsonl").read_text().splitlines()]


def test_items_take_the_highest_score_as_gold_and_default_prompt():
    items = bigbench_items({"examples": EXAMPLES})
    assert [i["answer"] for i in items] == GOLD
    assert items[0] == {"input": "Q: The king rode to the\n  choice: castle\n  choice: whale"
                                 "\n  choice: bread\nA:", "choices": ["castle", "whale", "bread"],
                        "answer": 0}  # fmt: skip
    assert [i["input"] for i in bigbench_items(SPEC)] == [e["input"] for e in EXAMPLES
                                                          if "target_scores" in e]  # fmt: skip


def test_built_task_from_tar_and_unpacked_copy(tmp_path: Path):
    sdist = fake_sdist(tmp_path, {})
    directory = build_bigbench_task("tiny_task", sdist, tmp_path / "cache")
    assert directory.parent == tmp_path / "cache" / "eval_tasks"
    assert directory.name.startswith("bigbench-tiny_task-")
    items = read_items(directory)
    assert [i["answer"] for i in items] == GOLD
    assert items[1]["choices"] == ["law", "ship", "night"]
    task = yaml.safe_load((directory / f"{lm_eval_name('tiny_task')}.yaml").read_text())
    assert task["task"] == "bigbench_tiny_task" and task["output_type"] == "multiple_choice"
    assert build_bigbench_task("tiny_task", sdist, tmp_path / "cache") == directory  # reused

    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert build_bigbench_task("tiny_task", tmp_path / "unpacked", tmp_path / "cache") == directory


def test_subtasks_are_pooled_and_bad_tasks_refused(tmp_path: Path):
    sub = {"examples": EXAMPLES[:2]}
    sdist = fake_sdist(tmp_path, {"split/task.json": {"name": "split", "examples": []},
                                  "split/a/task.json": sub, "split/b/task.json": sub,
                                  "free/task.json": {"examples": [EXAMPLES[3]]}})  # fmt: skip
    assert [i["answer"] for i in read_items(build_bigbench_task("split", sdist, tmp_path))] == [
        0, 1, 0, 1]  # fmt: skip
    with pytest.raises(UserError, match="no task 'missing'"):
        build_bigbench_task("missing", sdist, tmp_path)
    with pytest.raises(UserError, match="programmatic"):
        build_bigbench_task("program_task", sdist, tmp_path)
    with pytest.raises(UserError, match="no multiple-choice example"):
        build_bigbench_task("free", sdist, tmp_path)


def test_without_a_local_copy_the_error_names_both_options(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path):  # fmt: skip
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(UserError, match=r"--bigbench PATH.*--fetch-bigbench") as e:
        locate_sdist(None, False, tmp_path)
    assert "358 MB" in str(e.value)
    assert not (tmp_path / "bigbench").exists()
    sdist = fake_sdist(tmp_path, {})
    monkeypatch.setenv(ENV, str(sdist))
    assert locate_sdist(None, False, tmp_path) == sdist


def test_moescale_eval_bigbench_scores_our_log_likelihoods(loaded, tmp_path: Path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from moescale.eval.harness import MoescaleLM

    from .test_commands import moescale

    sdist = fake_sdist(tmp_path, {})
    run_dir = tmp_path / "run"
    shutil.copytree(loaded.dir, run_dir, ignore=shutil.ignore_patterns(".lock", "eval.json"))
    r = moescale("eval", str(run_dir), "--tasks", "bigbench:tiny_task", "--bigbench", str(sdist),
                 "--json", "--threads", "1", "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    [(key, entry)] = json.loads(r.stdout).items()
    assert key == f"task:bigbench_tiny_task|fewshot=default|limit=all|step={loaded.step}"
    assert entry["samples"] == len(GOLD)
    acc = entry["metrics"]["acc"]
    assert 0 <= acc <= 1

    lm = MoescaleLM(run=loaded)
    right = 0
    for ex, gold in zip([e for e in EXAMPLES if "target_scores" in e], GOLD, strict=True):
        reqs = [Instance("loglikelihood", {}, (ex["input"], " " + c), 0)
                for c in ex["target_scores"]]  # fmt: skip
        scores = [lp for lp, _ in lm.loglikelihood(reqs)]
        right += scores.index(max(scores)) == gold
    assert acc == pytest.approx(right / len(GOLD))

    r = moescale("eval", str(run_dir), "--tasks", "bigbench:tiny_task", "--device", "cpu")
    assert r.returncode != 0 and "--fetch-bigbench" in r.stderr
