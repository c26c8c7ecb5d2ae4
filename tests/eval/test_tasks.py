"""lm-eval tasks end to end on a tiny run: a local multiple-choice task and the cloze task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from moescale.errors import UserError
from moescale.eval.tasks import CLOZE, build_cloze_task, cloze_items

ITEMS = [
    {"question": "The king rode to the", "choices": ["castle", "whale", "bread"], "gold": 0},
    {"question": "The captain of the", "choices": ["ship", "law", "night"], "gold": 0},
    {"question": "Gold and", "choices": ["wine", "sword", "sea"], "gold": 1},
    {"question": "The people of the", "choices": ["nation", "storm"], "gold": 0},
]


def write_mc_task(directory: Path) -> Path:
    """A multiple-choice lm-eval task over a local JSONL file (no network)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    task = {
        "task": "tiny_mc", "dataset_path": "json", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": str(directory / "mc.jsonl")},
                           "cache_dir": str(directory / "hf_cache")},
        "test_split": "test", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }  # fmt: skip
    (directory / "tiny_mc.yaml").write_text(yaml.safe_dump(task))
    return directory


def test_cloze_items_cut_each_paragraph_before_its_last_word():
    doc = (
        "The king rode to the castle and the queen went to the sea at night with gold.\n\n"
        "Too short here.\n\n"
        "The captain of the ship saw the whale and the storm on the sea in the morning 42."
    )
    items = cloze_items([doc])
    assert items == [{"context": "The king rode to the castle and the queen went to the sea at "
                                 "night with", "target": " gold"}]  # fmt: skip
    many = cloze_items([doc] * 30, max_items=7)
    assert len(many) == 7


def test_multiple_choice_task_runs_end_to_end(loaded, tmp_path: Path, monkeypatch, capfd):
    pytest.importorskip("lm_eval")
    from moescale.eval.harness import MoescaleLM
    from moescale.eval.tasks import run_tasks

    monkeypatch.chdir(tmp_path)  # outside a git repository, lm-eval's `git describe` is quiet
    records = run_tasks(loaded, [], [write_mc_task(tmp_path / "tasks")], batch_size=4)
    assert "not a git repository" not in capfd.readouterr().err
    [(key, rec)] = records.items()
    assert key == f"task:tiny_mc|fewshot=default|limit=all|step={loaded.step}"
    acc = rec["metrics"]["acc"]
    assert 0 <= acc <= 1 and rec["samples"] == len(ITEMS)
    # the accuracy is what our model's own log-likelihoods say
    from lm_eval.api.instance import Instance

    lm = MoescaleLM(run=loaded)
    right = 0
    for item in ITEMS:
        # lm-eval's request: (context, target_delimiter " " + choice)
        reqs = [Instance("loglikelihood", {}, (item["question"], " " + c), 0)
                for c in item["choices"]]  # fmt: skip
        scores = [lp for lp, _ in lm.loglikelihood(reqs)]
        right += scores.index(max(scores)) == item["gold"]
    assert acc == pytest.approx(right / len(ITEMS))


def test_cloze_task_from_the_held_out_split(loaded, tmp_path: Path):
    pytest.importorskip("lm_eval")
    from moescale.eval.scoring import score_requests
    from moescale.eval.tasks import run_tasks

    directory = build_cloze_task(loaded.config)
    items = [json.loads(line) for line in (directory / "cloze.jsonl").read_text().splitlines()]
    assert items and all(i["target"].startswith(" ") for i in items)
    mtime = (directory / f"{CLOZE}.yaml").stat().st_mtime_ns
    assert build_cloze_task(loaded.config) == directory  # reused, not rebuilt
    assert (directory / f"{CLOZE}.yaml").stat().st_mtime_ns == mtime

    [rec] = run_tasks(loaded, [CLOZE], limit=8).values()
    assert 0 <= rec["metrics"]["acc"] <= 1 and rec["samples"] == min(8, len(items))
    pairs = []
    for i in items[:8]:
        ctx = loaded.encode(i["context"])
        pairs.append(([loaded.eos_id, *ctx], loaded.encode(i["context"] + i["target"])[len(ctx) :]))
    scores = score_requests(loaded, pairs)
    assert rec["metrics"]["acc"] == pytest.approx(sum(g for _, g in scores) / len(scores))
    mean_lp = sum(lp for lp, _ in scores) / len(scores)
    assert rec["metrics"]["perplexity"] == pytest.approx(math.exp(-mean_lp), rel=1e-6)


def test_unknown_tasks_and_missing_dirs_are_user_errors(loaded, tmp_path: Path):
    pytest.importorskip("lm_eval")
    from moescale.eval.tasks import run_tasks

    with pytest.raises(UserError, match="not a directory"):
        run_tasks(loaded, [], [tmp_path / "nowhere"])
    with pytest.raises(UserError, match="unknown lm-eval task.*no_such_task"):
        run_tasks(loaded, ["no_such_task"], [write_mc_task(tmp_path / "t")])
