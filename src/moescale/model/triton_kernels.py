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
