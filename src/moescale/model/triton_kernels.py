"""Triton versions of model/kernels.py's memory-bound steps (that module says what each computes;
its PyTorch versions are the oracles in tests/model/test_kernels.py). Imported only where Triton
is installed; all arithmetic in float32, rows addressed in int64 (S x D passes exceed 2^31
elements at 32k tokens, G 8).

Each kernel reads every input element once and writes every output element once, so each runs
at memory bandwidth: that is the whole point (the PyTorch versions make 3-8 passes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _block(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(n), cap)


def _warps(block: int) -> int:
    return 8 if block >= 2048 else 4


@triton.jit
def _gather_sum_kernel(src_ptr, inv_ptr, out_ptr, D, K, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_row = cols < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(K):
        s = tl.load(inv_ptr + t * K + k).to(tl.int64)
        keep = in_row & (cols * 0 + s >= 0)  # a vector mask (the interpreter wants one)
        row = tl.load(src_ptr + s * D + cols, mask=keep, other=0.0)
        acc += row.to(tl.float32)
    tl.store(out_ptr + t * D + cols, acc.to(out_ptr.dtype.element_ty), mask=in_row)


def gather_sum(src_SD: torch.Tensor, inv_TK: torch.Tensor, out_dtype: torch.dtype):
    src_SD, inv_TK = src_SD.contiguous(), inv_TK.contiguous()
    n_tok, k = inv_TK.shape
    d = src_SD.shape[1]
    out_TD = src_SD.new_empty(n_tok, d, dtype=out_dtype)
    if n_tok == 0:
        return out_TD
    block = _block(d, 4096)
    grid = (n_tok, triton.cdiv(d, block))
    _gather_sum_kernel[grid](src_SD, inv_TK, out_TD, d, k, BLOCK_D=block, num_warps=_warps(block))
    return out_TD


@triton.jit
def _swiglu_fwd_kernel(ab_ptr, w_ptr, g_ptr, F, BLOCK_F: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    m = cols < F
    a = tl.load(ab_ptr + s * 2 * F + cols, mask=m, other=0.0).to(tl.float32)
    b = tl.load(ab_ptr + s * 2 * F + F + cols, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + s).to(tl.float32)
    g = a * tl.sigmoid(a) * b * w
    tl.store(g_ptr + s * F + cols, g.to(g_ptr.dtype.element_ty), mask=m)


def swiglu_fwd(ab_SH: torch.Tensor, w_S: torch.Tensor) -> torch.Tensor:
    ab_SH, w_S = ab_SH.contiguous(), w_S.contiguous()
    n_slots, f = ab_SH.shape[0], ab_SH.shape[1] // 2
    g_SF = ab_SH.new_empty(n_slots, f)
    if n_slots == 0:
        return g_SF
    block = _block(f, 4096)
    grid = (n_slots, triton.cdiv(f, block))
    _swiglu_fwd_kernel[grid](ab_SH, w_S, g_SF, f, BLOCK_F=block, num_warps=_warps(block))
    return g_SF


@triton.jit
def _swiglu_bwd_kernel(ab_ptr, w_ptr, dg_ptr, dab_ptr, dw_ptr, kept_ptr, F, BLOCK_F: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    w = tl.load(w_ptr + s).to(tl.float32)
    acc = tl.zeros([BLOCK_F], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        cols = f0 + tl.arange(0, BLOCK_F)
        m = cols < F
        a = tl.load(ab_ptr + s * 2 * F + cols, mask=m, other=0.0).to(tl.float32)
        b = tl.load(ab_ptr + s * 2 * F + F + cols, mask=m, other=0.0).to(tl.float32)
        dg = tl.load(dg_ptr + s * F + cols, mask=m, other=0.0).to(tl.float32)
        sig = tl.sigmoid(a)
        silu = a * sig
        acc += dg * silu * b
        da = dg * w * b * sig * (1.0 + a * (1.0 - sig))
        tl.store(dab_ptr + s * 2 * F + cols, da.to(dab_ptr.dtype.element_ty), mask=m)
        db = dg * w * silu
        tl.store(dab_ptr + s * 2 * F + F + cols, db.to(dab_ptr.dtype.element_ty), mask=m)
        tl.store(dg_ptr + s * F + cols, (silu * b * w).to(dg_ptr.dtype.element_ty), mask=m)
    kept = s < tl.load(kept_ptr).to(tl.int64)
    tl.store(dw_ptr + s, tl.where(kept, tl.sum(acc, axis=0), 0.0).to(dw_ptr.dtype.element_ty))


def swiglu_bwd(ab_SH, w_S, dg_SF, n_kept):
    """kernels.swiglu_bwd; g * w is written over `dg_SF` (which must be contiguous)."""
    ab_SH, w_S = ab_SH.contiguous(), w_S.contiguous()
    assert dg_SF.is_contiguous()
    n_slots, f = dg_SF.shape
    dab_SH = torch.empty_like(ab_SH)
    dw_S = torch.empty_like(w_S)
    if n_slots == 0:
        return dab_SH, dw_S, dg_SF
    block = _block(f, 1024)
    kept = n_kept.reshape(1).to(torch.int64)
    _swiglu_bwd_kernel[(n_slots,)](ab_SH, w_S, dg_SF, dab_SH, dw_S, kept, f, BLOCK_F=block,
                                   num_warps=_warps(block))  # fmt: skip
    return dab_SH, dw_S, dg_SF


@triton.jit
def _cross_entropy_kernel(logits_ptr, targets_ptr, loss_ptr, grad_ptr, V, IGNORE: tl.constexpr,
                          WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * V
    m_vec = tl.full([BLOCK_V], -1e30, dtype=tl.float32)  # finite: exp(m - m_new) never 0/0
    s_vec = tl.zeros([BLOCK_V], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m_vec, x)
        s_vec = s_vec * tl.exp(m_vec - m_new) + tl.exp(x - m_new)
        m_vec = m_new
    m = tl.max(m_vec, axis=0)
    lse = m + tl.log(tl.sum(s_vec * tl.exp(m_vec - m), axis=0))
    target = tl.load(targets_ptr + row).to(tl.int64)
    valid = target != IGNORE
    x_t = tl.load(base + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - x_t, 0.0))
    if WRITE_GRAD:  # softmax - one_hot(target), scaled in backward
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            g = tl.where(valid, g, 0.0)
            tl.store(grad_ptr + row * V + cols, g.to(grad_ptr.dtype.element_ty), mask=cols < V)


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy whose forward also writes the gradient (softmax - one-hot, in the
    logits' dtype): one read of the logits for the loss and one for the gradient, against
    F.cross_entropy's float32 copy, softmax and backward passes over (tokens x vocab)."""

    @staticmethod
    def forward(ctx, logits_NV, targets_N, ignore_index):
        logits_NV, targets_N = logits_NV.contiguous(), targets_N.contiguous()
        n, v = logits_NV.shape
        loss_N = logits_NV.new_empty(n, dtype=torch.float32)
        grad = logits_NV.requires_grad
        grad_NV = torch.empty_like(logits_NV) if grad else loss_N
        block = _block(v, 4096)
        _cross_entropy_kernel[(n,)](logits_NV, targets_N, loss_N, grad_NV, v, IGNORE=ignore_index,
                                    WRITE_GRAD=grad, BLOCK_V=block, num_warps=8)  # fmt: skip
        n_valid = (targets_N != ignore_index).sum().clamp_min(1)
        if grad:
            ctx.save_for_backward(grad_NV, n_valid)
        return loss_N.sum() / n_valid

    @staticmethod
    def backward(ctx, dloss):
        grad_NV, n_valid = ctx.saved_tensors
        return grad_NV.mul_((dloss / n_valid).to(grad_NV.dtype)), None, None


def cross_entropy(logits_NV: torch.Tensor, targets_N: torch.Tensor, ignore_index: int = -100):
    return _CrossEntropy.apply(logits_NV, targets_N, ignore_index)
