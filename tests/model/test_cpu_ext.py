"""The C++ CPU expert loop: used by `grouped` on CPU where it builds, the Python loop otherwise.

Its values against the reference (forward and backward, dropped slots, starved experts, float32
and float64) are checked by tests/model/test_experts.py, where `grouped` runs it and `loop` runs
its pure-PyTorch twin."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

from moescale.model import cpu_ext
from moescale.model.experts import expert_forward

from .test_experts import random_routing, rel_err, run_backend

HAVE_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


def _inputs(G: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(G)
    n_exp, hid, k, t, d = 4 * G, 64 // G, 2 * G, 128, 32
    idx, w = random_routing(t, n_exp, k, gen, starve=1, drop_frac=0.1)
    x = torch.randn(t, d, generator=gen, dtype=dtype)
    w13 = torch.randn(n_exp, d, 2 * hid, generator=gen, dtype=dtype) * 0.2
    w2 = torch.randn(n_exp, hid, d, generator=gen, dtype=dtype) * 0.2
    return x, idx, w.to(dtype), w13, w2


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
@pytest.mark.parametrize("G", [1, 8])
def test_grouped_runs_the_cpp_loop_and_agrees_with_its_python_twin(G: int):
    assert cpu_ext.get() is not None, "a C++ compiler is here, so the extension must build"
    x, idx, w, w13, w2 = _inputs(G)
    y = expert_forward(x.requires_grad_(), idx, w, w13, w2, backend="grouped")
    assert type(y.grad_fn).__name__ == "_CppLoopExpertsBackward"
    y_cpp, g_cpp = run_backend("grouped", x, idx, w, w13, w2)
    y_py, g_py = run_backend("loop", x, idx, w, w13, w2)
    assert rel_err(y_cpp, y_py) < 1e-6
    for a, b in zip(g_cpp, g_py, strict=True):
        assert rel_err(a, b) < 1e-6


def test_without_a_build_the_python_loop_runs_after_one_warning(monkeypatch, tmp_path, caplog):
    def no_compiler(directory: Path, name: str) -> ModuleType:
        raise RuntimeError("Error building extension\nc++: command not found")

    monkeypatch.setattr(cpu_ext, "_loaded", None)
    monkeypatch.setattr(cpu_ext, "_failed", False)
    monkeypatch.setenv("MOESCALE_CACHE", str(tmp_path))  # no earlier build to load
    monkeypatch.setattr(cpu_ext, "_build", no_compiler)
    x, idx, w, w13, w2 = _inputs(4)
    with caplog.at_level(logging.WARNING, logger="moescale.model.cpu_ext"):
        y = expert_forward(x.requires_grad_(), idx, w, w13, w2, backend="grouped")
        expert_forward(x, idx, w, w13, w2, backend="grouped")
    assert type(y.grad_fn).__name__ == "_LoopExpertsBackward"
    warnings = [r.message for r in caplog.records if "unavailable" in r.message]
    assert len(warnings) == 1 and "command not found" in warnings[0]
    y_ref, _ = run_backend("reference", x, idx, w, w13, w2)
    assert rel_err(y.detach(), y_ref) < 1e-5


def test_an_edited_source_or_another_torch_never_loads_an_old_build(monkeypatch, tmp_path):
    before = cpu_ext.build_dir()
    assert torch.__version__.replace("+", "_") in before.name
    edited = tmp_path / "experts_cpu.cpp"
    edited.write_text(cpu_ext.SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(cpu_ext, "SOURCE", edited)
    assert cpu_ext.build_dir() != before
