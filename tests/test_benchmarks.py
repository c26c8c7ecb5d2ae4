"""The benchmark scripts still run (on tiny shapes) and write the JSON contract. No timing here:
the point is that an API change cannot silently break `make bench`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCH = ROOT.parent / "shared" / "validation" / "epoch_chinchilla_points.csv"


def run_bench(tmp_path, script, *args):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert data["machine"] and data["rows"]
    return data["rows"]


def test_moe_layer_benchmark_runs(tmp_path):
    rows = run_bench(
        tmp_path, "moe_layer.py", "--d-model", "32", "--d-ff", "64", "--tokens", "256",
        "--granularity", "1", "4", "--repeats", "1",
    )  # fmt: skip
    impls = {r["impl"] for r in rows}
    assert {"grouped", "reference", "dense", "gemm_floor"} <= impls
    assert all(r["ms"] > 0 for r in rows if "ms" in r)
    for of in ("dense/grouped", "gemm_floor/grouped"):
        ratios = [r for r in rows if r["impl"] == "ratio" and r["of"] == of]
        assert [r["granularity"] for r in ratios] == [1, 4]
        assert all(r["q25"] <= r["median"] <= r["q75"] and r["rounds"] == 1 for r in ratios)
    floors = [r for r in rows if r["impl"] == "floor_tflops"]
    assert [r["granularity"] for r in floors] == [1, 4] and all(r["ratio"] > 0 for r in floors)
    if "hf_default" in impls:  # transformers installed: how far any implementation could beat it
        assert {r["granularity"] for r in rows if r.get("of") == "hf_default/gemm_floor"} == {1, 4}


def test_train_step_benchmark_runs(tmp_path):
    rows = run_bench(
        tmp_path, "train_step.py", "--d-model", "32", "--layers", "1", "--heads", "2",
        "--d-ff", "64", "--vocab", "256", "--seq-len", "32", "--batch", "4", "--warmup", "1",
        "--repeats", "3",
    )  # fmt: skip
    assert {r["impl"] for r in rows} == {"dense", "moe_g1", "moe_g8"}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    for r in rows:
        spread = r["vs_g1_rounds"]
        assert spread["rounds"] == 3 and spread["q25"] <= spread["median"] <= spread["q75"]
        if r["impl"] == "moe_g1":  # its own peer: every round's ratio is exactly 1
            assert spread["q25"] == spread["q75"] == 1.0


@pytest.mark.skipif(not EPOCH.exists(), reason="Epoch's points are not beside the repository")
def test_fit_speed_benchmark_runs(tmp_path):
    rows = run_bench(
        tmp_path, "fit_speed.py", "--repeats", "1", "--draws", "8", "--epoch-starts", "4"
    )
    assert any(r["impl"].startswith("vp") for r in rows)


def test_distributed_benchmark_runs(tmp_path):
    rows = run_bench(
        tmp_path, "distributed.py", "--d-model", "32", "--layers", "1", "--d-ff", "64",
        "--seq-len", "32", "--batch", "4", "--warmup", "1", "--repeats", "1", "--steps", "1",
        "--threads", "1",
    )  # fmt: skip
    settings = {(r["arch"], r["setting"]) for r in rows}
    assert {("dense", "plain"), ("dense", "ddp1"), ("dense", "ddp2"), ("moe", "ep2")} <= settings
    for r in rows:
        if r["setting"] in ("ddp1", "ddp2"):  # same sums in the same order as one process
            assert r["loss_matches_plain"] and r["loss_max_rel_diff_vs_plain"] <= 1e-5, r
