"""The C++ CPU expert loop (model/csrc/experts_cpu.cpp): built once per machine, loaded on use.

It runs the Python loop of model/experts.py (the pure-PyTorch twin, backend `loop`) without
Python between the operations: at the expert sizes of small models, dispatching ~25 operations
per expert from Python took a fifth of the layer's time. Gathers, matmuls and scatter-adds are
the same ATen calls; the SwiGLU activation, its gradient and the routing weights are one fused
pass each way (ATen took three forward and eight backward), worth 5-6 % of the layer at d_model
256 with two threads and 11-14 % with one (README, Measured speed). Its float32 exp is its own
(vectorized; within 2.5 ulp of float64 silu, tests/model/test_cpu_ext.py); float64 uses libm.
Where an expert's weights fit a core's L2 (float32, 3 * d_model * d_ff/G * 4 bytes up to the L2
forward and half of it backward, 2 and 1 MiB where measured; x86-64; where torch's kernels are
not AVX-512, which measured slower, half an L2 forward only) the loop is blocked instead: each
thread runs its share of the sorted slots (forward) or of the experts (backward) in blocks of 128
rows, gather to scatter-add, with oneDNN's small-matrix kernel (ATen's cpublas::brgemm). At G 8 on
two threads it took the layer's forward from 104 to 85 ms and its backward from 212-218 to
189-195 ms (README, Measured speed).

Its own loops (the activation passes, the blocked forward) use torch's intra-op threads through
ATen's parallel_for, a header template that is serial unless the extension is compiled with
OpenMP, and that must then bind to the OpenMP runtime torch itself loaded, or
torch.set_num_threads (the thread policy of train/device.py) would not reach it. Linux wheels of
torch run on GCC's libgomp, and a GCC build with -fopenmp links `libgomp.so.1`, which the loader
resolves to the copy torch already loaded: one runtime, one thread count. Elsewhere (another
compiler, or a torch without OpenMP) these loops are built serial, as they all were before
2026-11-25 (the activation passes then took 52 ms of a 368 ms fine-grained layer on one of two
idle cores; README, Measured speed): the same results, slower.

The first process that needs it compiles it with torch.utils.cpp_extension (a C++ compiler and
ninja; about 25 s here) into the moescale cache, under a name that carries the hash of the source
and flags and the torch and Python versions, so an edited source or another torch never loads a
stale build; later processes import the built module directly, and mark its folder used. Each
build removes the builds beside it that no process used for 30 days, and all but the 8 used
last, so edits of the source do not pile up builds. Where it cannot be built (no compiler), the
Python loop runs instead, after one warning: the same results to float rounding, slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from moescale.data.cache import cache_root, file_lock

logger = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "experts_cpu.cpp"
# no trapping math: a float-to-int conversion that may raise FE_INVALID otherwise keeps the
# compiler from vectorizing the float32 exp (nothing here reads floating-point exceptions)
CFLAGS = ("-O3", "-fno-trapping-math")
# ATen's parallel_for in the extension needs OpenMP where torch uses it (module doc); a
# compiler other than GCC drops the flag at build time (_build)
_TORCH_GOMP = sys.platform.startswith("linux") and torch.backends.openmp.is_available()
OPENMP = ("-fopenmp",) if _TORCH_GOMP else ()
_loaded: ModuleType | None = None
_failed = False
KEEP_BUILDS, KEEP_DAYS = 8, 30  # other builds kept beside the current one (module doc)


def _name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS + OPENMP).encode())
    return "moescale_experts_cpu_" + digest.hexdigest()[:12]


def build_dir() -> Path:
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / "build" / f"{_name()}-{tag.replace('+', '_')}"


def _import(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _build(directory: Path, name: str) -> ModuleType:
    """Compiles and imports the module (cpp_extension imports what it builds)."""
    from torch.utils.cpp_extension import load

    logger.info("building the C++ CPU expert loop once for this machine (about 25 s) in %s",
                directory)  # fmt: skip
    openmp = list(OPENMP)
    if openmp and not _compiler_is_gcc():
        logger.info("the C++ compiler is not GCC: the expert loop's own parallel loops are "
                    "built serial (its OpenMP would not follow torch's threads)")  # fmt: skip
        openmp = []
    if openmp:
        try:
            return load(name, [str(SOURCE)], extra_cflags=[*CFLAGS, *openmp],
                        extra_ldflags=openmp, build_directory=str(directory))  # fmt: skip
        except Exception as exc:  # a GCC without libgomp: serial loops beat the Python loop
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
            logger.warning("building the C++ expert loop with OpenMP failed (%s); building it "
                           "with serial loops", reason)  # fmt: skip
    return load(name, [str(SOURCE)], extra_cflags=list(CFLAGS), build_directory=str(directory))


def _compiler_is_gcc() -> bool:
    """Whether the compiler cpp_extension will call ($CXX, else c++) is GCC, whose -fopenmp
    links the libgomp that Linux wheels of torch load (clang's would link a second runtime)."""
    try:
        out = subprocess.run([os.environ.get("CXX", "c++"), "-v"], capture_output=True,
                             text=True, env={**os.environ, "LC_ALL": "C"}, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return "gcc version" in out.stderr and "clang" not in out.stderr


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def prune_builds(current: Path) -> list[Path]:
    """Removes the other builds of this module beside `current` that were last used over
    KEEP_DAYS ago, or are not among the KEEP_BUILDS used last; returns them. A build another
    process is making or loading right now was touched seconds ago, so it stays."""
    others = [p for p in current.parent.glob("moescale_experts_cpu_*")
              if p.is_dir() and p != current]  # fmt: skip
    used = {p: _mtime(p) for p in others}  # 0 for one another process removed meanwhile
    others.sort(key=used.__getitem__, reverse=True)
    cutoff = time.time() - KEEP_DAYS * 86400
    stale = [p for i, p in enumerate(others) if i >= KEEP_BUILDS or used[p] < cutoff]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale:
        logger.info("removed %d old builds of the C++ expert loop from %s", len(stale),
                    current.parent)  # fmt: skip
    return stale


def get() -> ModuleType | None:
    """The compiled module, or None where it cannot be built (warned once per process)."""
    global _loaded, _failed
    if _loaded is not None or _failed:
        return _loaded
    name, directory = _name(), build_dir()
    so = directory / f"{name}.so"
    try:
        if not so.exists():
            with file_lock(directory / "build.lock"):  # parallel workers build it once
                if not so.exists():
                    _loaded = _build(directory, name)
                    prune_builds(directory)
        if _loaded is None:  # built by an earlier process
            _loaded = _import(so, name)
            with contextlib.suppress(OSError):  # a read-only cache still loads
                os.utime(directory)  # used now: pruning goes by when a build was last used
    except Exception as exc:  # no compiler or ninja, a failed build: the Python loop runs
        _failed = True
        reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        logger.warning("C++ CPU expert loop unavailable (%s); running the Python loop (the "
                       "same results to float rounding, slower at small expert sizes)",
                       reason[0][:200])  # fmt: skip
    return _loaded
