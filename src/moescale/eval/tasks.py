"""lm-evaluation-harness tasks on a run, and a cloze task built from the run's held-out text.

`run_tasks` runs lm-eval tasks (by name: lm-eval's own, those of `--tasks-dir` directories of
task YAMLs, or `moescale_cloze`) through `lm_eval.simple_evaluate` with the "moescale" model
and returns one record per task for eval.json. lm-eval's own tasks fetch their data sets from
the Hugging Face Hub (nothing of moescale does); task YAMLs over local files need no network.

`moescale_cloze` is LAMBADA's last-word prediction (Paperno et al. 2016) on the corpus the run
trained on: from each paragraph of the held-out documents (at least `MIN_WORDS` words, ending in
a word of letters), the context is the paragraph up to its last word and the target is that
word; the score is the accuracy of predicting the whole word greedily and the perplexity of
the word. Unlike LAMBADA the items are not filtered for needing long context. The items (at
most `MAX_ITEMS`, evenly spaced over the paragraphs) and the task YAML are written on demand
into `<cache>/eval_tasks/cloze-<corpus hash>/`, and reused.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from moescale.atomic import atomic_write_text
from moescale.config import Config
from moescale.data.cache import cache_root, file_lock
from moescale.data.corpus import load_corpus
from moescale.errors import UserError
from moescale.eval.loader import LoadedRun
from moescale.eval.results import task_key

logger = logging.getLogger(__name__)

CLOZE = "moescale_cloze"
MIN_WORDS = 12
MAX_ITEMS = 500
_LAST_WORD = re.compile(r"^(.*\S)\s+([^\W\d_]+)[^\w\s]*$", re.DOTALL)


def cloze_items(docs: Sequence[str], max_items: int = MAX_ITEMS) -> list[dict[str, str]]:
    """{context, target} items, target " word", from the paragraphs of `docs`."""
    items = []
    for doc in docs:
        for para in re.split(r"\n\s*\n", doc):
            para = " ".join(para.split())
            m = _LAST_WORD.match(para)
            if m and len(para.split()) >= MIN_WORDS:
                items.append({"context": m.group(1), "target": " " + m.group(2)})
    if len(items) > max_items:
        step = len(items) / max_items
        items = [items[int(i * step)] for i in range(max_items)]
    return items


def cloze_task_yaml(data_file: Path, hf_cache: Path) -> dict[str, Any]:
    """The lm-eval task config of `moescale_cloze` over a local JSONL file."""
    return {
        "task": CLOZE,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(hf_cache)},
        "output_type": "loglikelihood",
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{target}}",
        "metric_list": [
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def build_cloze_task(cfg: Config, max_items: int = MAX_ITEMS) -> Path:
    """The directory holding `moescale_cloze` for `cfg`'s corpus (built once, then reused)."""
    split = load_corpus(cfg.data.corpus, text_field=cfg.data.text_field,
                        text_column=cfg.data.text_column, val_fraction=cfg.data.val_fraction,
                        cache_dir=cfg.data.cache_dir)  # fmt: skip
    directory = cache_root(cfg.data.cache_dir) / "eval_tasks" / f"cloze-{split.sha256[:16]}"
    data_file, task_file = directory / "cloze.jsonl", directory / f"{CLOZE}.yaml"
    with file_lock(directory / ".lock"):
        if not task_file.exists():
            items = cloze_items(split.val, max_items)
            if not items:
                raise UserError(
                    f"the held-out split of {split.description} has no paragraph of "
                    f"{MIN_WORDS}+ words ending in a word: no {CLOZE} items can be made."
                )
            atomic_write_text(data_file, "".join(json.dumps(i) + "\n" for i in items))
            task = cloze_task_yaml(data_file, directory / "hf_cache")
            atomic_write_text(task_file, yaml.safe_dump(task, sort_keys=False))
            logger.info("eval: wrote %d %s items to %s", len(items), CLOZE, data_file)
    return directory


def _task_manager(tasks: list[str], include: list[Path]) -> Any:
    """A TaskManager over `include`, with lm-eval's own tasks only when a name needs them
    (indexing them all takes seconds)."""
    from lm_eval.tasks import TaskManager

    if include:
        tm = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
        if all(t in tm.all_tasks for t in tasks):
            return tm
    tm = TaskManager(include_path=[str(p) for p in include] or None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise UserError(
            f"unknown lm-eval task(s): {', '.join(unknown)}. Give lm-eval task names "
            f"(`lm_eval ls tasks`), {CLOZE}, or a --tasks-dir holding their YAML files."
        )
    return tm


def run_tasks(
    run: LoadedRun,
    tasks: Sequence[str] = (),
    tasks_dirs: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 16,
    bootstrap_iters: int = 1000,
) -> dict[str, dict[str, Any]]:
    """Run lm-eval `tasks` (all tasks of `tasks_dirs` when none are named) on `run`; returns
    eval.json entries, key -> record, with every metric lm-eval reported."""
    import lm_eval

    from moescale.eval.harness import MoescaleLM

    include = [Path(d) for d in tasks_dirs]
    for d in include:
        if not d.is_dir():
            raise UserError(f"--tasks-dir {d} is not a directory of lm-eval task YAML files.")
    names = list(tasks)
    if CLOZE in names:
        include.append(build_cloze_task(run.config))
    if not names:
        from lm_eval.tasks import TaskManager

        names = TaskManager(include_path=[str(p) for p in include],
                            include_defaults=False).all_subtasks  # fmt: skip
        if not names:
            raise UserError(f"no lm-eval task YAML in {', '.join(map(str, include))}.")
    tm = _task_manager(names, include)
    model = MoescaleLM(run=run, batch_size=batch_size)
    out = lm_eval.simple_evaluate(
        model=model, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
        bootstrap_iters=bootstrap_iters, log_samples=False,
    )  # fmt: skip
    return _records(out, run, num_fewshot, limit)


def _records(
    out: dict[str, Any], run: LoadedRun, num_fewshot: int | None, limit: float | None
) -> dict[str, dict[str, Any]]:
    """simple_evaluate's results as eval.json records, one per task (groups included)."""
    records = {}
    n_samples = out.get("n-samples", {})
    for task, metrics in out["results"].items():
        values = {k.removesuffix(",none"): v for k, v in metrics.items()
                  if k != "alias" and isinstance(v, int | float)}  # fmt: skip
        records[task_key(task, num_fewshot, limit, run.step)] = {
            "kind": "task",
            "task": task,
            "step": run.step,
            "num_fewshot": out.get("n-shot", {}).get(task, num_fewshot),
            "limit": limit,
            "samples": n_samples.get(task, {}).get("effective"),
            "metrics": values,
            "lm_eval_version": out.get("lm_eval_version"),
        }
    return records
