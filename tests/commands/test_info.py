"""End-to-end: the `moescale` command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def moescale(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "moescale.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        **kw,
    )


def test_info_json_has_contract_keys():
    r = moescale("info", "examples/fine_grained.yaml", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in (
        "params_total",
        "params_active",
        "params_embedding",
        "flops_per_token",
        "routed_experts",
        "active_experts",
        "expert_hidden",
    ):
        assert key in info
    assert (info["routed_experts"], info["active_experts"], info["expert_hidden"]) == (32, 8, 128)


def test_info_table_compares_configs():
    r = moescale("info", "examples/dense.yaml", "examples/moe.yaml")
    assert r.returncode == 0, r.stderr
    assert "params_active" in r.stdout and "examples/moe.yaml" in r.stdout


def test_bad_config_is_one_clear_line_without_traceback():
    r = moescale("info", "examples/fine_grained.yaml", "--set", "model.moe.top_k=9")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "model.moe.top_k: 9 is more than model.moe.experts = 8" in r.stderr
