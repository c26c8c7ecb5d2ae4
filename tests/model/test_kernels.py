"""The fused memory-bound kernels (Triton) against their PyTorch versions, forward and backward
pieces, on fresh random inputs; on a machine without a GPU Triton's interpreter runs them on CPU
tensors (tests/conftest.py)."""

import pytest
import torch

from moescale.model import kernels

triton_kernels = pytest.importorskip("moescale.model.triton_kernels")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def slots(n_slots: int, width: int, dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_slots, width, generator=gen).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_tok,k,d", [(7, 3, 40), (16, 1, 8), (5, 16, 130)])
def test_gather_sum_matches_torch(dtype, n_tok, k, d):
    gen = torch.Generator().manual_seed(n_tok * k + d)
    src = slots(n_tok * k, d, dtype, seed=d)
    inv = torch.randperm(n_tok * k, generator=gen).view(n_tok, k)
    inv[torch.rand(n_tok, k, generator=gen) < 0.2] = -1  # dropped slots add nothing
    inv = inv.to(DEVICE)
    out = triton_kernels.gather_sum(src, inv, dtype)
    ref = kernels.gather_sum_torch(src, inv, dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    # float32 accumulation against a float64 sum of the same inputs
    exact = kernels.gather_sum_torch(src.double(), inv, torch.float64)
    assert rel_err(triton_kernels.gather_sum(src, inv, torch.float32), exact) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_slots,f", [(9, 24), (4, 1500)])
def test_swiglu_forward_and_backward_match_torch(dtype, n_slots, f):
    ab = slots(n_slots, 2 * f, dtype, seed=f)
    w = torch.rand(n_slots, generator=torch.Generator().manual_seed(f)).to(DEVICE)
    dg = slots(n_slots, f, dtype, seed=f + 1)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(triton_kernels.swiglu_fwd(ab, w), kernels.swiglu_fwd_torch(ab, w)) < tol
    n_kept = torch.tensor(n_slots - 2, device=DEVICE)
    ref = kernels.swiglu_bwd_torch(ab, w, dg, n_kept)
    out = triton_kernels.swiglu_bwd(ab, w, dg.clone(), n_kept)
    for name, a, b in zip(["d[a|b]", "dw", "g*w"], out, ref, strict=True):
        assert a.dtype == b.dtype and rel_err(a, b) < tol, name
    assert torch.all(out[1][n_slots - 2 :] == 0)  # dropped slots: no weight gradient


def test_swiglu_torch_backward_is_autograd_of_forward():
    """The hand-written backward against autograd of the forward, in float64."""
    ab = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, requires_grad=True)
    dg = torch.randn(6, 5, dtype=torch.float64)
    (kernels.swiglu_fwd_torch(ab, w) * dg).sum().backward()
    dab, dw, gw = kernels.swiglu_bwd_torch(ab.detach(), w.detach(), dg, torch.tensor(6))
    assert rel_err(dab, ab.grad) < 1e-12 and rel_err(dw, w.grad) < 1e-12
    assert rel_err(gw, kernels.swiglu_fwd_torch(ab.detach(), w.detach())) < 1e-12


@pytest.mark.filterwarnings("ignore:overflow encountered")  # unwritten rows past the groups
@pytest.mark.parametrize("G,drop", [(1, 0.0), (4, 0.25)])
def test_grouped_mm_backend_with_triton_kernels_matches_reference(monkeypatch, G, drop):
    """The whole grouped_mm backend with its Triton kernels (interpreted on CPU) against the
    reference loop, forward and backward, dropped slots included."""
    from tests.model.test_experts import random_routing, rel_err, run_backend

    if DEVICE == "cpu":
        monkeypatch.setattr(kernels, "use_triton", lambda t: True)  # interpreted
    gen = torch.Generator().manual_seed(G)
    n_tok, d, d_ff, n_exp, k = 24, 16, 32, 4 * G, 2 * G
    x = torch.randn(n_tok, d, generator=gen)
    w13 = torch.randn(n_exp, d, 2 * d_ff // G, generator=gen) * 0.3
    w2 = torch.randn(n_exp, d_ff // G, d, generator=gen) * 0.3
    idx, w = random_routing(n_tok, n_exp, k, gen, starve=1, drop_frac=drop)
    x, idx, w, w13, w2 = (t.to(DEVICE) for t in (x, idx, w, w13, w2))
    y_ref, g_ref = run_backend("reference", x, idx, w, w13, w2)
    y, g = run_backend("grouped_mm", x, idx, w, w13, w2)
    assert rel_err(y, y_ref) < 1e-5
    for name, a, b in zip(["x", "weights", "w13", "w2"], g, g_ref, strict=True):
        assert rel_err(a, b) < 1e-5, name
    assert torch.all(g[1][idx == n_exp] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,v", [(6, 50), (3, 5000)])
def test_cross_entropy_loss_and_gradient_match_torch(dtype, n, v):
    gen = torch.Generator().manual_seed(v)
    logits = (torch.randn(n, v, generator=gen) * 4).to(DEVICE, dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[1] = -100  # ignored: no loss, no gradient, not counted in the mean
    targets = targets.to(DEVICE)
    grads = []
    for fn in (triton_kernels.cross_entropy, torch.nn.functional.cross_entropy):
        x = logits.detach().clone().requires_grad_()
        loss = fn(x if fn is triton_kernels.cross_entropy else x.float(), targets)
        (loss * 3).backward()
        grads.append((loss.detach(), x.grad))
    (loss, grad), (loss_ref, grad_ref) = grads
    assert loss.dtype == torch.float32 and abs(float(loss - loss_ref)) < 1e-5 * float(loss_ref)
    assert grad.dtype == dtype and torch.all(grad[1] == 0)
    assert rel_err(grad, grad_ref) < (1e-5 if dtype == torch.float32 else 1e-2)
    with torch.no_grad():  # evaluation: the loss only
        assert abs(float(triton_kernels.cross_entropy(logits, targets) - loss_ref)) < 1e-4
