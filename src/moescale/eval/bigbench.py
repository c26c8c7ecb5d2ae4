"""Multiple-choice BIG-bench tasks (Srivastava et al. 2022), offline, from the `bigbench` sdist.

`--tasks bigbench:TASK` builds an lm-eval multiple_choice task from BIG-bench's JSON task
`bigbench/benchmark_tasks/TASK/task.json` (or, for a task split into subtasks, every
`TASK/SUBTASK/task.json`, pooled into one task). An example is an "input" and its
"target_scores" {choice: score}; the gold is the first choice of the highest score; examples
without target_scores, or with fewer than two choices, are left out. A task with no JSON file
(a programmatic task.py) is refused. The prompt follows BIG-bench's JSON task format: the
task's "task_prefix", then "example_input_prefix" (default "\\nQ: ", leading whitespace dropped)
and the input, then when "append_choices_to_input" (default true) each choice after
"choice_prefix" (default "\\n  choice: "), then "example_output_prefix" (default "\\nA: ",
trailing whitespace dropped); each choice is scored after a space.

The tasks are read from a local copy of the `bigbench` source distribution (358 MB), never
fetched by default: `--bigbench PATH` or `$MOESCALE_BIGBENCH`, the sdist's .tar.gz (its members
read with tarfile, nothing unpacked) or an unpacked copy, or a copy an earlier `--fetch-bigbench`
left in `<cache>/bigbench/`. Only `--fetch-bigbench` downloads it there, with
`pip download bigbench --no-deps --no-binary :all:`. A built task lies in
`<cache>/eval_tasks/bigbench-TASK-<hash>/` (the hash of its JSON files), and is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml

from moescale.atomic import atomic_write_text
from moescale.data.cache import cache_root, file_lock
from moescale.errors import UserError

logger = logging.getLogger(__name__)

PREFIX = "bigbench:"
ENV = "MOESCALE_BIGBENCH"
SDIST_SIZE = "358 MB"
_FORMAT = 1  # in the cache directory's hash: a new prompt or item layout rebuilds
_TASK_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_TASKS_DIR = "bigbench/benchmark_tasks/"


def lm_eval_name(task: str) -> str:
    """The lm-eval task name of BIG-bench's `task`."""
    return f"bigbench_{task}"


def _member_task(rel: str, task: str) -> bool:
    """Whether `rel` (a path below benchmark_tasks/) is `task`'s JSON or a subtask's JSON."""
    parts = rel.split("/")
    return parts[0] == task and parts[-1] == "task.json" and len(parts) in (2, 3)


def read_task_files(source: Path, task: str) -> dict[str, str]:
    """{path below benchmark_tasks/: text} of `task`'s task.json files in the sdist `source`
    (a .tar.gz, or a directory holding an unpacked one); also says whether the task exists."""
    found: dict[str, str] = {}
    seen_task = False
    if source.is_file():
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    _, sep, rel = member.name.partition(_TASKS_DIR)
                    if not sep:
                        continue
                    seen_task |= rel.split("/")[0] == task
                    if member.isfile() and _member_task(rel, task):
                        f = tar.extractfile(member)
                        found[rel] = f.read().decode("utf-8") if f else ""
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"cannot read the bigbench sdist {source}: {e}") from None
    else:
        roots = [p for p in (source / _TASKS_DIR, *source.glob("*/" + _TASKS_DIR)) if p.is_dir()]
        if not roots:
            raise UserError(f"{source} holds no {_TASKS_DIR}: give the bigbench sdist .tar.gz "
                            "or the directory it unpacks to.")  # fmt: skip
        root = roots[0]
        seen_task = (root / task).is_dir()
        for path in sorted([root / task / "task.json", *root.glob(f"{task}/*/task.json")]):
            if path.is_file():
                found[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    if not seen_task:
        raise UserError(f"BIG-bench has no task {task!r} in {source} (the names are the "
                        f"directories of {_TASKS_DIR}).")  # fmt: skip
    if not found:
        raise UserError(f"BIG-bench's {task} has no task.json (a programmatic task): only JSON "
                        "multiple-choice tasks can be run.")  # fmt: skip
    top = f"{task}/task.json"
    subtasks = {k: v for k, v in found.items() if k != top}
    return subtasks if subtasks else found  # a parent task.json only describes its subtasks


def _prompt(spec: dict[str, Any], text: str, choices: list[str]) -> str:
    """BIG-bench's JSON task prompt of one example, without the answer."""
    prompt = str(spec.get("task_prefix", "")) + str(spec.get("example_input_prefix", "\nQ: "))
    prompt = prompt.lstrip() + text
    if spec.get("append_choices_to_input", True):
        prefix = str(spec.get("choice_prefix", "\n  choice: "))
        prompt += "".join(prefix + c for c in choices)
    return (prompt + str(spec.get("example_output_prefix", "\nA: "))).rstrip()


def bigbench_items(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """{input, choices, answer} items of a BIG-bench JSON task's multiple-choice examples."""
    items = []
    for ex in spec.get("examples", []):
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(scores, dict) or len(scores) < 2 or not isinstance(ex.get("input"), str):
            continue
        choices = [str(c) for c in scores]
        values = [float(v) for v in scores.values()]
        items.append({"input": _prompt(spec, ex["input"], choices), "choices": choices,
                      "answer": values.index(max(values))})  # fmt: skip
    return items


def task_yaml(task: str, data_file: Path, hf_cache: Path) -> dict[str, Any]:
    """The lm-eval config of BIG-bench's `task` over a local JSONL file."""
    return {
        "task": lm_eval_name(task),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(hf_cache)},
        "output_type": "multiple_choice",
        "test_split": "test",
        "fewshot_split": "test",
        "doc_to_text": "{{input}}",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": float(_FORMAT)},
    }


def locate_sdist(path: str | Path | None, fetch: bool, cache_dir: str | Path | None) -> Path:
    """The local bigbench sdist: `path`, else $MOESCALE_BIGBENCH, else one fetched earlier into
    <cache>/bigbench/; downloaded there only when `fetch`."""
    given = path or os.environ.get(ENV)
    if given:
        source = Path(given).expanduser()
        if not source.exists():
            raise UserError(f"the bigbench sdist {source} (from {'--bigbench' if path else ENV}) "
                            "does not exist.")  # fmt: skip
        return source
    target = cache_root(cache_dir) / "bigbench"
    fetched = sorted(target.glob("bigbench-*.tar.gz"))
    if fetched:
        return fetched[-1]
    if not fetch:
        raise UserError(
            f"{PREFIX}TASK reads BIG-bench from a local copy of the `bigbench` source "
            f"distribution ({SDIST_SIZE}), which is never downloaded unasked: give --bigbench PATH "
            f"(or ${ENV}) naming the sdist .tar.gz or its unpacked directory, or pass "
            f"--fetch-bigbench to download it once into {target}."
        )
    logger.warning("eval: downloading the bigbench sdist (%s) into %s", SDIST_SIZE, target)
    cmd = [sys.executable, "-m", "pip", "download", "bigbench", "--no-deps", "--no-binary",
           ":all:", "-d", str(target)]  # fmt: skip
    if subprocess.run(cmd, check=False).returncode != 0:
        raise UserError(f"`{' '.join(cmd[2:])}` failed: see pip's message above.")
    fetched = sorted(target.glob("bigbench-*.tar.gz"))
    if not fetched:
        raise UserError(f"pip download left no bigbench-*.tar.gz in {target}.")
    return fetched[-1]


def build_bigbench_task(task: str, source: Path, cache_dir: str | Path | None = None) -> Path:
    """The directory holding BIG-bench's `task` read from the sdist `source` (built once)."""
    if not _TASK_NAME.match(task):
        raise UserError(f"{PREFIX}{task}: a BIG-bench task name is letters, digits and _.")
    files = read_task_files(source, task)
    digest = hashlib.sha256(json.dumps([_FORMAT, files], sort_keys=True).encode()).hexdigest()
    directory = cache_root(cache_dir) / "eval_tasks" / f"bigbench-{task}-{digest[:16]}"
    data_file, task_file = directory / "bigbench.jsonl", directory / f"{lm_eval_name(task)}.yaml"
    with file_lock(directory / ".lock"):
        if not task_file.exists():
            items = []
            for rel, text in sorted(files.items()):
                try:
                    items += bigbench_items(json.loads(text))
                except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
                    msg = f"BIG-bench's {rel} in {source} is not a JSON task: {e}"
                    raise UserError(msg) from None
            if not items:
                raise UserError(f"BIG-bench's {task} has no multiple-choice example "
                                "(target_scores): only those can be run.")  # fmt: skip
            atomic_write_text(data_file, "".join(json.dumps(i) + "\n" for i in items))
            config = task_yaml(task, data_file, directory / "hf_cache")
            atomic_write_text(task_file, yaml.safe_dump(config, sort_keys=False))
            logger.info("eval: wrote %d BIG-bench %s items to %s", len(items), task, data_file)
    return directory
