"""The C++ CPU expert loop: used by `grouped` on CPU where it builds, the Python loop otherwise.

Its values against the reference (forward and backward, dropped slots, starved experts, float32
and float64) are checked by tests/model/test_experts.py, where `grouped` runs it and `loop` runs
its pure-PyTorch twin."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from moescale.model import cpu_ext
from moescale.model.experts import _sort_slots, expert_forward

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


def _swiglu_reference(ab, w, dgw):
    """g * w = silu(a) * b * w in float64, and by autograd the gradients the fused backward
    returns: (g * w, d(a|b), dw) for the upstream gradient dgw of g * w."""
    ab64, w64 = ab.double().requires_grad_(), w.double().requires_grad_()
    n = ab.shape[1] // 2
    gw = torch.nn.functional.silu(ab64[:, :n]) * ab64[:, n:] * w64[:, None]
    gw.backward(dgw.double())
    return gw.detach(), ab64.grad, w64.grad


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,hidden", [(3, 5), (200, 24), (1000, 128)])
def test_fused_swiglu_kernels_match_autograd_on_random_and_extreme_inputs(rows, hidden, dtype):
    """The one-pass activation kernels (their own float32 exp) against PyTorch's silu and
    autograd: fresh random inputs, hidden sizes off the vector width, rows below and above the
    parallel grain, and pre-activations far into both tails of the sigmoid."""
    ext = cpu_ext.get()
    assert ext is not None
    gen = torch.Generator().manual_seed(rows + hidden)
    ab = torch.randn(rows, 2 * hidden, generator=gen, dtype=dtype) * 4
    ab[0, : min(hidden, 4)] = torch.tensor([-100.0, 100.0, -30.0, 90.0])[: min(hidden, 4)]
    w = torch.rand(rows, generator=gen, dtype=dtype)
    dgw = torch.randn(rows, hidden, generator=gen, dtype=dtype)
    want_g, want_dab, want_dw = _swiglu_reference(ab, w, dgw)
    g = torch.empty(rows, hidden, dtype=dtype)
    ext.swiglu_forward(ab, w, g)
    gw, dab, dw = torch.empty_like(g), torch.empty_like(ab), torch.empty_like(w)
    ext.swiglu_backward(ab, w, dgw, gw, dab, dw)
    eps = 1e-6 if dtype == torch.float32 else 1e-14
    for got, want in ((g, want_g), (gw, want_g), (dab, want_dab)):
        torch.testing.assert_close(got.double(), want, rtol=10 * eps, atol=10 * eps)
    # a sum of `hidden` products: its rounding error scales with the sum of their magnitudes
    a, b = ab.double()[:, :hidden], ab.double()[:, hidden:]
    magnitude = (dgw.double() * torch.nn.functional.silu(a) * b).abs().sum(1)
    assert ((dw.double() - want_dw).abs() <= eps * magnitude + 1e-30).all()


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
def test_fused_float32_silu_is_as_accurate_as_pytorchs():
    """With b = w = 1 the forward kernel is silu: its own exp keeps it within 2.5 float32 ulp
    of float64 silu everywhere a sigmoid is a normal float (PyTorch's own: about 1.2 ulp)."""
    ext = cpu_ext.get()
    assert ext is not None
    a = torch.linspace(-87, 87, 200_001)
    g = torch.empty(len(a), 1)
    ext.swiglu_forward(torch.stack([a, torch.ones_like(a)], 1), torch.ones(len(a)), g)
    want = torch.nn.functional.silu(a.double())
    rel = (g[:, 0].double() - want).abs() / want.abs().clamp_min(1e-300)
    assert rel.max() < 2.5 * 2**-23


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
def test_fused_swiglu_propagates_nan_and_refuses_mismatched_buffers():
    ext = cpu_ext.get()
    assert ext is not None
    ab = torch.randn(4, 2 * 67)  # a full vector or more, and a tail
    ab[1, 2] = ab[2, 66] = float("nan")
    w, g = torch.rand(4), torch.empty(4, 67)
    ext.swiglu_forward(ab, w, g)
    assert g.isnan().nonzero().tolist() == [[1, 2], [2, 66]]
    with pytest.raises(RuntimeError, match="g must be 4 x 67"):
        ext.swiglu_forward(ab, w, torch.empty(4, 7))
    with pytest.raises(RuntimeError, match="ab must be rows x 2F"):
        ext.swiglu_forward(ab[:, :5], w, g)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ext.swiglu_forward(ab.bfloat16(), w.bfloat16(), g.bfloat16())


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


def test_an_edited_source_or_flags_or_another_torch_never_load_an_old_build(monkeypatch, tmp_path):
    before = cpu_ext.build_dir()
    assert torch.__version__.replace("+", "_") in before.name
    edited = tmp_path / "experts_cpu.cpp"
    edited.write_text(cpu_ext.SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(cpu_ext, "SOURCE", edited)
    edited_dir = cpu_ext.build_dir()
    assert edited_dir != before
    monkeypatch.setattr(cpu_ext, "CFLAGS", (*cpu_ext.CFLAGS, "-g"))
    flagged_dir = cpu_ext.build_dir()
    assert flagged_dir not in (before, edited_dir)
    monkeypatch.setattr(cpu_ext, "OPENMP", () if cpu_ext.OPENMP else ("-fopenmp",))
    assert cpu_ext.build_dir() not in (before, edited_dir, flagged_dir)


def test_a_new_build_removes_old_builds_but_not_recent_ones_or_other_files(tmp_path, monkeypatch):
    """Each edit of the source makes a new build; old ones go, the ones used lately stay."""
    monkeypatch.setattr(cpu_ext, "KEEP_BUILDS", 3)
    current = tmp_path / "moescale_experts_cpu_current"
    now = time.time()
    ages = {"fresh0": 0, "fresh1": 1, "fresh2": 2, "fresh3": 3, "old": 40}  # days since used
    for name, days in ages.items():
        d = tmp_path / f"moescale_experts_cpu_{name}"
        d.mkdir()
        (d / "x.so").write_bytes(b"")
        os.utime(d, (now - days * 86400, now - days * 86400))
    for keep in (current, tmp_path / "another_tool_build"):
        keep.mkdir()
        os.utime(keep, (now - 90 * 86400, now - 90 * 86400))
    removed = cpu_ext.prune_builds(current)
    assert sorted(p.name[len("moescale_experts_cpu_"):] for p in removed) == ["fresh3", "old"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["another_tool_build", *(f"moescale_experts_cpu_{n}" for n in
                    ("current", "fresh0", "fresh1", "fresh2"))]  # fmt: skip
    assert cpu_ext.prune_builds(current) == []
    monkeypatch.setattr(cpu_ext, "KEEP_BUILDS", 10)  # within the count, unused for a month
    unused = tmp_path / "moescale_experts_cpu_fresh2"
    os.utime(unused, (now - 31 * 86400, now - 31 * 86400))
    assert cpu_ext.prune_builds(current) == [unused] and not unused.exists()


def test_loading_a_build_marks_it_used_and_building_one_prunes_old_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("MOESCALE_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_ext, "_failed", False)
    directory = cpu_ext.build_dir()
    old = directory.parent / "moescale_experts_cpu_000000000000-old"
    old.mkdir(parents=True)
    month_ago = time.time() - 40 * 86400
    os.utime(old, (month_ago, month_ago))

    def fake_build(d: Path, n: str) -> ModuleType:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{n}.so").write_bytes(b"")
        return ModuleType(n)

    monkeypatch.setattr(cpu_ext, "_loaded", None)
    monkeypatch.setattr(cpu_ext, "_build", fake_build)
    assert cpu_ext.get() is not None and not old.exists()  # built here: old builds pruned
    os.utime(directory, (month_ago, month_ago))
    monkeypatch.setattr(cpu_ext, "_loaded", None)
    monkeypatch.setattr(cpu_ext, "_import", lambda path, n: ModuleType(n))
    assert cpu_ext.get() is not None  # built before: imported, and its folder marked used
    assert directory.stat().st_mtime > time.time() - 60


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and torch.backends.openmp.is_available()),
    reason="torch's threads are not GCC's OpenMP here: the kernels are built serial",
)
def test_kernels_run_on_torchs_threads_through_torchs_own_openmp(restore_threads):
    """The activation kernels follow torch.set_num_threads, also to a count above the cores
    (a second OpenMP runtime would keep its own default, the cores, and ignore the thread
    policy), and only torch's libgomp is mapped. Without -fopenmp they all ran on one thread."""
    if not cpu_ext._compiler_is_gcc():
        pytest.skip("not GCC: the kernels are built serial (cpu_ext._build)")
    ext = cpu_ext.get()
    assert ext is not None
    rows = 64 * 16  # 16 tasks of the kernels' grain
    used = {}
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        used[n] = ext.parallel_threads(rows)
    assert used == {1: 1, 2: 2, 3: 3}
    assert ext.parallel_threads(64) == 1  # one grain: not worth a second thread
    maps = Path("/proc/self/maps").read_text().splitlines()
    assert len({line.split()[-1] for line in maps if "libgomp" in line}) == 1


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
def test_fused_swiglu_gives_the_same_bits_on_any_number_of_threads(restore_threads):
    ext = cpu_ext.get()
    assert ext is not None
    gen = torch.Generator().manual_seed(7)
    rows, hidden = 1000, 48
    ab, w = torch.randn(rows, 2 * hidden, generator=gen), torch.rand(rows, generator=gen)
    dgw = torch.randn(rows, hidden, generator=gen)
    outs = []
    for n in (1, 3):
        torch.set_num_threads(n)
        g, gw, dab, dw = (torch.empty(rows, hidden), torch.empty(rows, hidden),
                          torch.empty_like(ab), torch.empty(rows))  # fmt: skip
        ext.swiglu_forward(ab, w, g)
        ext.swiglu_backward(ab, w, dgw, gw, dab, dw)
        outs.append((g, gw, dab, dw))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


def test_a_compiler_other_than_gcc_builds_the_kernels_without_openmp(monkeypatch, tmp_path):
    """clang's -fopenmp would link its own runtime beside torch's libgomp."""
    import torch.utils.cpp_extension

    calls = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(cpu_ext, "OPENMP", ("-fopenmp",))
    for gcc in (False, True):
        monkeypatch.setattr(cpu_ext, "_compiler_is_gcc", lambda gcc=gcc: gcc)
        cpu_ext._build(tmp_path, "x")
    assert [(c["extra_cflags"], c.get("extra_ldflags")) for c in calls] == [
        ([*cpu_ext.CFLAGS], None),
        ([*cpu_ext.CFLAGS, "-fopenmp"], ["-fopenmp"]),
    ]


def test_a_failed_openmp_build_falls_back_to_serial_loops(monkeypatch, tmp_path, caplog):
    import torch.utils.cpp_extension

    calls = []

    def load(*args, **kw):
        calls.append(kw["extra_cflags"])
        if "-fopenmp" in kw["extra_cflags"]:
            raise RuntimeError("Error building extension\n/usr/bin/ld: cannot find -lgomp")
        return "serial module"

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    monkeypatch.setattr(cpu_ext, "OPENMP", ("-fopenmp",))
    monkeypatch.setattr(cpu_ext, "_compiler_is_gcc", lambda: True)
    with caplog.at_level(logging.WARNING, logger="moescale.model.cpu_ext"):
        assert cpu_ext._build(tmp_path, "x") == "serial module"
    assert calls == [[*cpu_ext.CFLAGS, "-fopenmp"], [*cpu_ext.CFLAGS]]
    assert "cannot find -lgomp" in caplog.text


def test_compiler_check_tells_gcc_from_clang_and_from_none(monkeypatch, tmp_path):
    for name, says in (("g++", "gcc version 12.2.0 (Debian 12.2.0-14)"),
                       ("clang++", "clang version 18.1.0"),
                       ("clang-gcc-compat", "clang version 18 ... gcc version 4.2.1 compatible")):
        fake = tmp_path / name
        fake.write_text(f"#!/bin/sh\necho '{says}' >&2\n")
        fake.chmod(0o755)
        monkeypatch.setenv("CXX", str(fake))
        assert cpu_ext._compiler_is_gcc() == (name == "g++"), name
    monkeypatch.setenv("CXX", str(tmp_path / "missing"))
    assert not cpu_ext._compiler_is_gcc()


def _sorted_inputs(G: int, tokens: int):
    """Sorted slots as the C++ loop takes them: an expert starved at each end and one in the
    middle, a tenth of the slots dropped, so blocks and thread ranges cross empty experts."""
    gen = torch.Generator().manual_seed(100 + G)
    n_exp, hid, k, d = 8 * G, 64 // G, 2 * G, 32
    scores = torch.rand(tokens, n_exp, generator=gen)
    scores[:, [0, n_exp // 2, n_exp - 1]] = -1.0
    idx = scores.topk(k, dim=-1).indices
    idx = torch.where(torch.rand(tokens, k, generator=gen) < 0.1, n_exp, idx)
    order, tok, counts = _sort_slots(idx, n_exp)
    w_M = torch.rand(tokens * k, generator=gen)[order].contiguous()
    x = torch.randn(tokens, d, generator=gen)
    w13 = torch.randn(n_exp, d, 2 * hid, generator=gen) * 0.2
    w2 = torch.randn(n_exp, hid, d, generator=gen) * 0.2
    return x, w_M, w13, w2, tok.contiguous(), counts.tolist()


def _have_blocked(ext) -> bool:
    return ext.blocked_fits(torch.zeros(1, 8), torch.zeros(1, 4, 8), 1, False)


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("G", [1, 4])
def test_blocked_loop_matches_the_per_operation_loop(G: int, threads: int, restore_threads):
    """The blocked float32 forward (per-thread slot ranges, cache-sized blocks, brgemm) and
    backward (per-thread expert ranges) against the per-operation loop on fresh random
    routings: the output, the pre-activations backward keeps, and all four gradients.
    Autograd-level agreement with the reference backend is tests/model/test_experts.py's (it
    runs the blocked loop at its sizes)."""
    ext = cpu_ext.get()
    assert ext is not None
    if not _have_blocked(ext):
        pytest.skip("no float32 brgemm here (or not x86-64): the per-operation loop runs")
    torch.set_num_threads(threads)
    x, w_M, w13, w2, tok, counts = _sorted_inputs(G, tokens=1000)
    assert len(tok) > 10 * 128  # several blocks per thread
    y_blk, ab_blk = ext.experts_forward(x, w_M, w13, w2, tok, counts, blocked=1)
    y_ops, ab_ops = ext.experts_forward(x, w_M, w13, w2, tok, counts, blocked=0)
    assert rel_err(y_blk, y_ops) < 1e-6 and rel_err(ab_blk, ab_ops) < 1e-6
    dy = torch.randn(y_ops.shape, generator=torch.Generator().manual_seed(5))
    g_blk = ext.experts_backward(dy, x, w_M, w13, w2, tok, ab_blk, counts, blocked=1)
    g_ops = ext.experts_backward(dy, x, w_M, w13, w2, tok, ab_ops, counts, blocked=0)
    for a, b in zip(g_blk, g_ops, strict=True):  # dx, dw, dw13, dw2
        assert rel_err(a, b) < 1e-5
    starved = [e for e, n in enumerate(counts) if n == 0]
    assert starved and (g_blk[2][starved] == 0).all() and (g_blk[3][starved] == 0).all()


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
def test_blocked_loop_is_picked_for_small_float32_experts_only():
    ext = cpu_ext.get()
    assert ext is not None
    if not _have_blocked(ext):
        pytest.skip("no float32 brgemm here (or not x86-64): the per-operation loop runs")
    x = torch.zeros(8192, 256)
    w2_g = {g: torch.zeros(8 * g, 1024 // g, 256) for g in (1, 2, 8)}  # d_ff 1024 at G g
    fits = {(g, bwd): ext.blocked_fits(x, w2, 16384 * g, bwd)
            for g, w2 in w2_g.items() for bwd in (False, True)}  # fmt: skip
    # experts of 3 MB (G 1), 1.5 MB (G 2) and 384 kB (G 8) of weights, against the limits
    limit = {bwd: ext.blocked_weight_limit(bwd) for bwd in (False, True)}
    weights = {g: 3 * 256 * (1024 // g) * 4 for g in w2_g}
    assert fits == {(g, bwd): weights[g] <= limit[bwd] for g in w2_g for bwd in (False, True)}
    if limit == {False: 2 << 20, True: 1 << 20}:  # a 2 MiB L2 with AVX-512, as measured
        assert fits == {(1, False): False, (1, True): False, (2, False): True,
                        (2, True): False, (8, False): True, (8, True): True}  # fmt: skip
    assert not ext.blocked_fits(x.double(), w2_g[8].double(), 131072, False)
    huge = torch.empty(2**20, 256)  # a private 1 GB output per thread
    assert not ext.blocked_fits(huge, w2_g[8], 2**24, False)
    x64, w_M, w13, w2, tok, counts = _sorted_inputs(2, tokens=50)
    with pytest.raises(RuntimeError, match="needs float32"):
        ext.experts_forward(x64.double(), w_M.double(), w13.double(), w2.double(), tok, counts,
                            blocked=1)  # fmt: skip


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
def test_blocked_limits_follow_the_l2_and_shrink_without_avx512():
    """With AVX-512 kernels the forward takes experts up to a core's L2 and the backward half
    of that; held to AVX2 (measured slower there) half and never."""
    ext = cpu_ext.get()
    assert ext is not None
    if not _have_blocked(ext):
        pytest.skip("no float32 brgemm here (or not x86-64): the per-operation loop runs")
    fwd, bwd = ext.blocked_weight_limit(False), ext.blocked_weight_limit(True)
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    l2 = fwd if avx512 else 2 * fwd
    assert l2 >= 256 << 10  # no L2 of a current x86 core is smaller
    assert bwd == (l2 // 2 if avx512 else 0)
    if not avx512:
        return
    code = ("import torch; from moescale.model import cpu_ext; ext = cpu_ext.get(); "
            "print(torch.backends.cpu.get_cpu_capability(), ext.blocked_weight_limit(False), "
            "ext.blocked_weight_limit(True))")  # fmt: skip
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()  # fmt: skip
    assert out == ["AVX2", str(fwd // 2), "0"]


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: the Python loop runs instead")
def test_expert_loop_refuses_indices_and_weights_that_do_not_fit():
    """The loops index rows by hand: a bad token index or mismatched weights must raise, not
    read or write outside the tensors."""
    ext = cpu_ext.get()
    assert ext is not None
    x, w_M, w13, w2, tok, counts = _sorted_inputs(2, tokens=50)
    bad = tok.clone()
    bad[-1] = len(x)
    for blocked in (0, 1) if _have_blocked(ext) else (0,):
        with pytest.raises(RuntimeError, match=r"token indices must lie in \[0, 50\)"):
            ext.experts_forward(x, w_M, w13, w2, bad, counts, blocked=blocked)
        with pytest.raises(RuntimeError, match="do not fit"):
            ext.experts_forward(x, w_M, w13[:, :-1].contiguous(), w2, tok, counts, blocked=blocked)
        with pytest.raises(RuntimeError, match="one routing weight per kept slot"):
            ext.experts_forward(x, w_M[:-1], w13, w2, tok, counts, blocked=blocked)
        short = list(counts)
        short[next(e for e, n in enumerate(counts) if n)] -= 1  # one slot fewer than tok holds
        with pytest.raises(RuntimeError, match="counts must add up to the kept slots"):
            ext.experts_forward(x, w_M, w13, w2, tok, short, blocked=blocked)
        _, ab = ext.experts_forward(x, w_M, w13, w2, tok, counts, blocked=0)
        with pytest.raises(RuntimeError, match="counts must add up to the kept slots"):
            ext.experts_backward(x, x, w_M, w13, w2, tok, ab, short, blocked=blocked)
    with pytest.raises(RuntimeError, match="blocked must be -1"):
        ext.experts_forward(x, w_M, w13, w2, tok, counts, blocked=2)
