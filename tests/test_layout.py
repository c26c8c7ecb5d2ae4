"""The shape of the code base: small files, short functions, no module named like the stdlib,
and the torch-free half of the package importable without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "moescale"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
TORCH_FREE = ["moescale.run", "moescale.fmt", "moescale.config", "moescale.accounting",
              "moescale.laws", "moescale.commands.fit", "moescale.commands.plan",
              "moescale.commands.collect", "moescale.commands.report", "moescale.study.spec",
              "moescale.study.grid", "moescale.study.collect", "moescale.study.driver",
              "moescale.study.executors", "moescale.study.slurm", "moescale.train.optim",
              "moescale.study.analyze", "moescale.study.analysis_data",
              "moescale.study.analysis_family", "moescale.study.analysis_fits",
              "moescale.study.analysis_frontier", "moescale.study.analysis_compare",
              "moescale.study.analysis_hyper", "moescale.study.analysis_claims",
              "moescale.study.analysis_words", "moescale.study.analysis_warnings",
              "moescale.report", "moescale.report.page", "moescale.report.plots",
              "moescale.report.plots_curves", "moescale.report.tables",
              "moescale.report.style"]  # fmt: skip


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_files_are_small():
    long = {str(p.relative_to(SRC)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}  # fmt: skip
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_functions_are_short():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_module_shadows_the_standard_library():
    clashes = [str(p.relative_to(SRC)) for p in modules() if p.stem in sys.stdlib_module_names]
    assert not clashes


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_do_not_import_torch(module: str):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
