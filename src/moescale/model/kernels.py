"""The memory-bound steps around the grouped expert GEMMs, each as plain PyTorch (the oracle, and
the CPU path) and, on CUDA with Triton installed, as one fused Triton kernel
(model/triton_kernels.py): with E*G experts every token is copied k*G times, so at fine
granularity these passes over (slots x width) tensors, not the matmuls, are what fine granularity
costs (README, Measured speed).

- `gather_sum`: out[t] = sum_k src[inv[t, k]] in float32 (inv < 0: a dropped slot, skipped). It
  undoes the sort by expert and sums a token's slots in one pass, deterministically (no atomics),
  forward for the outputs and backward for the input gradients.
- `swiglu_fwd`: g = silu(a) * b * w for the packed [a | b] pre-activations of each slot and its
  routing weight w: the activation and the routing weight in one pass.
- `swiglu_bwd`: from dg, the gradients of a and b (packed like the input), of w (a row sum), and
  g * w again for the down-projection's weight gradient, written over dg (one pass, no
  saved activation).
- `cross_entropy`: the mean next-token loss from (tokens x vocab) logits, its gradient written in
  the same pass (where the vocabulary dominates a small model's step, the float32 copies and
  softmax passes of F.cross_entropy cost as much as its matmuls).

Legend: S slots (tokens x slots per token, sorted by expert), F expert hidden, D width.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

HAVE_TRITON = importlib.util.find_spec("triton") is not None


def _triton():
    from moescale.model import triton_kernels  # imports Triton (a second) only when used

    return triton_kernels


def use_triton(t: torch.Tensor) -> bool:
    return HAVE_TRITON and t.is_cuda


def gather_sum_torch(src_SD: torch.Tensor, inv_TK: torch.Tensor, out_dtype: torch.dtype):
    pad_SD = torch.cat([src_SD, src_SD.new_zeros(1, src_SD.shape[1])])  # row S: a dropped slot
    idx = torch.where(inv_TK < 0, src_SD.shape[0], inv_TK)
    acc = torch.promote_types(src_SD.dtype, torch.float32)
    return pad_SD[idx].sum(1, dtype=acc).to(out_dtype)


def gather_sum(src_SD: torch.Tensor, inv_TK: torch.Tensor, out_dtype: torch.dtype):
    if use_triton(src_SD):
        return _triton().gather_sum(src_SD, inv_TK, out_dtype)
    return gather_sum_torch(src_SD, inv_TK, out_dtype)


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Arithmetic in float32 at least (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def swiglu_fwd_torch(ab_SH: torch.Tensor, w_S: torch.Tensor) -> torch.Tensor:
    a, b = _acc(ab_SH).chunk(2, dim=1)
    return (F.silu(a) * b * _acc(w_S)[:, None]).to(ab_SH.dtype)


def swiglu_fwd(ab_SH: torch.Tensor, w_S: torch.Tensor) -> torch.Tensor:
    if use_triton(ab_SH):
        return _triton().swiglu_fwd(ab_SH, w_S)
    return swiglu_fwd_torch(ab_SH, w_S)


def swiglu_bwd_torch(ab_SH, w_S, dg_SF, n_kept):
    """Returns (d[a|b], dw, g*w); rows at and past `n_kept` (a 0-d tensor: dropped slots, whose
    rows the grouped GEMM leaves unwritten) get dw = 0 and undefined other rows."""
    a, b = _acc(ab_SH).chunk(2, dim=1)
    dg, w = _acc(dg_SF), _acc(w_S)[:, None]
    sig = torch.sigmoid(a)
    silu = a * sig
    kept = torch.arange(len(w_S), device=w_S.device) < n_kept
    dw_S = torch.where(kept, (dg * silu * b).sum(1), 0.0).to(w_S.dtype)
    da = dg * w * b * sig * (1 + a * (1 - sig))
    dab_SH = torch.cat([da, dg * w * silu], 1).to(ab_SH.dtype)
    return dab_SH, dw_S, (silu * b * w).to(dg_SF.dtype)


def swiglu_bwd(ab_SH, w_S, dg_SF, n_kept):
    if use_triton(ab_SH):
        return _triton().swiglu_bwd(ab_SH, w_S, dg_SF, n_kept)
    return swiglu_bwd_torch(ab_SH, w_S, dg_SF, n_kept)


def cross_entropy(logits_NV: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float32 arithmetic whatever the logits' dtype (-100: ignored)."""
    if use_triton(logits_NV):
        return _triton().cross_entropy(logits_NV, targets_N)
    return F.cross_entropy(logits_NV.float(), targets_N)
