"""Study throughput with 1 worker x all cores' threads vs one worker per core x 1 thread, or, on
a GPU, with 1 run at a time vs several small runs packed on the GPU (`gpuNxT`: N runs per GPU,
T threads each; executor.gpus 1, train.device cuda). A setting may end in `:process` or
`:forkserver` (executor.start): each run a fresh interpreter, or forked from a process that has
imported torch and moescale (the default for CPU runs on Linux).

The same small study (the quickstart's three architectures and sizes at a reduced budget,
branches on) is trained from scratch under each executor setting, one after the other, in fresh
directories that share the tokenized corpus; the table gives wall time, tokens/s over the whole
study and the ratio to the first setting. This measurement chose the default
(`executor.workers: 0` = one worker per core, 1 thread each).

    python benchmarks/study_workers.py [--json OUT] [--tokens 60000] [--settings 1x2,2x1]
    python benchmarks/study_workers.py --settings 2x1:process,2x1:forkserver   # start-up cost
    python benchmarks/study_workers.py --tokens 500000 --settings gpu1x2,gpu4x2,gpu8x1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moescale.console import configure_console  # noqa: E402
from moescale.study.driver import run_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def spec_for(out: Path, tokens: int, workers: int, threads: int, gpu: bool, start: str) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec = copy.deepcopy(spec)
    spec["out_dir"] = str(out)
    spec["tokens"] = {"budgets": [tokens // 2, tokens]}
    spec.pop("hyper", None)
    spec["executor"] = {"kind": "local", "workers": workers, "threads": threads, "retries": 0,
                        "start": start}  # fmt: skip
    if gpu:
        spec["base"]["train"]["device"] = "cuda"
        spec["executor"].update(workers=0, gpus=1, runs_per_gpu=workers)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--tokens", type=int, default=60_000, help="largest budget per model")
    p.add_argument("--settings", default="1x2,2x1",
                   help="[gpu]WORKERSxTHREADS[:process|:forkserver], comma-separated")
    args = p.parse_args()
    configure_console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(args.settings.split(",")):
            gpu = setting.startswith("gpu")
            shape, _, start = setting.removeprefix("gpu").partition(":")
            workers, threads = (int(x) for x in shape.split("x"))
            out = Path(tmp) / f"{i}{'g' if gpu else 'w'}{workers}t{threads}"
            spec = spec_for(out, args.tokens, workers, threads, gpu, start or "auto")
            t0 = time.perf_counter()
            outcome = run_study(spec, report=False)
            wall = time.perf_counter() - t0
            tokens = sum(r["tokens"] - r["start_step"] * r["batch_tokens"]
                         for r in outcome.collected.rows)  # fmt: skip
            rows.append({"setting": setting, "workers": workers, "threads": threads,
                         "start": start or "auto",
                         "device": "cuda" if gpu else "cpu", "runs": len(outcome.tasks),
                         "wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall)})
    base = rows[0]["tokens_per_s"]
    head = ("setting", "runs", "wall s", "tokens/s", "ratio")  # gpuNxT: N runs per GPU
    print("\n{:>24s} {:>5s} {:>8s} {:>9s} {:>6s}".format(*head))
    for r in rows:
        r["ratio"] = round(r["tokens_per_s"] / base, 3)
        print(f"{r['setting']:>24s} {r['runs']:>5d} {r['wall_s']:>8.1f} "
              f"{r['tokens_per_s']:>9d} {r['ratio']:>6.2f}")
    if args.json:
        info = {"cpu_count": os.cpu_count(), "tokens": args.tokens}
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
