"""Expert compute: the one seam between routing and the matmuls.

Every backend computes, for routed slots s = (token t, expert e, weight w),

    gate | up = x_TD[t] @ w13_XDH[e]          (gate and up projections packed side by side)
    y_TD[t] += w * (silu(gate) * up) @ w2_XFD[e]

Slots whose expert index is X (== number of experts) were dropped by the capacity limit and are
skipped. Backends:

- `reference`: a plain loop over experts with boolean masks. Slow and obviously correct: the
  oracle every other backend is tested against, forward and backward.
- `grouped`: sort slots by expert once, then one matmul per expert on a contiguous slice (CPU, or
  a GPU without grouped GEMM) or one `torch._grouped_mm` per projection (CUDA sm80+). The loop
  is a custom autograd function: it never keeps the (slots x d_model) copy of the input that
  autograd would save, re-gathers it in backward instead, and keeps each expert's working set in
  cache. That data movement, not FLOPs, is the cost of fine granularity.

`expert_forward(..., backend="auto")` picks `grouped`, which is correct everywhere.
Legend: T tokens, D d_model, X routed experts (E*G), F expert hidden (d_ff/G), H = 2F, K slots per
token (k*G), M kept slots.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Backend = Callable[..., torch.Tensor]
silu_backward = torch.ops.aten.silu_backward.grad_input  # grad * d silu(a) / da, into an out=


def reference_experts(
    x_TD: torch.Tensor,
    expert_idx_TK: torch.Tensor,
    weight_TK: torch.Tensor,
    w13_XDH: torch.Tensor,
    w2_XFD: torch.Tensor,
) -> torch.Tensor:
    y_TD = torch.zeros_like(x_TD)
    n_hidden = w2_XFD.shape[1]
    for e in range(w13_XDH.shape[0]):
        tok, slot = torch.nonzero(expert_idx_TK == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        x = x_TD[tok]
        gate, up = w13_XDH[e, :, :n_hidden], w13_XDH[e, :, n_hidden:]
        h = F.silu(x @ gate) * (x @ up)
        y_TD = y_TD.index_add(0, tok, (h @ w2_XFD[e]) * weight_TK[tok, slot, None])
    return y_TD


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half and bfloat16, else the dtype itself (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def _sort_slots(expert_idx_TK: torch.Tensor, n_experts: int):
    """Order kept slots by expert. Returns (slot order, token of each sorted slot, counts)."""
    k = expert_idx_TK.shape[1]
    flat_M = expert_idx_TK.reshape(-1)
    order = torch.argsort(flat_M, stable=True)
    counts_X = torch.bincount(flat_M, minlength=n_experts + 1)[:n_experts]
    kept = int(counts_X.sum())
    order = order[:kept]  # dropped slots carry index n_experts and sort last
    return order, order // k, counts_X


class _LoopExperts(torch.autograd.Function):
    """Sorted slots, one matmul per expert per projection; backward by hand (see module doc)."""

    @staticmethod
    def forward(ctx, x_TD, w_M, w13_XDH, w2_XFD, tok_M, counts):
        n_hidden = w2_XFD.shape[1]
        # a token's k*G slots are summed in float32 at least (a bf16 sum's error would grow with G)
        acc = accumulate_dtype(x_TD.dtype)
        y_TD = torch.zeros_like(x_TD, dtype=acc)
        ab_MH = x_TD.new_empty(tok_M.shape[0], 2 * n_hidden)  # gate and up pre-activations
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            sl = slice(start, start + n)
            tok = tok_M[sl]
            ab = torch.mm(x_TD.index_select(0, tok), w13_XDH[e], out=ab_MH[sl])
            a, b = ab[:, :n_hidden], ab[:, n_hidden:]
            g = F.silu(a).mul_(b).mul_(w_M[sl, None])
            y_TD.index_add_(0, tok, (g @ w2_XFD[e]).to(acc))  # no-op in float32
            start += n
        ctx.counts = counts
        ctx.save_for_backward(x_TD, w_M, w13_XDH, w2_XFD, tok_M, ab_MH)
        return y_TD.to(x_TD.dtype)

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, w_M, w13_XDH, w2_XFD, tok_M, ab_MH = ctx.saved_tensors
        n_hidden = w2_XFD.shape[1]
        dy_TD = dy_TD.contiguous()
        acc = accumulate_dtype(x_TD.dtype)
        dx_TD = torch.zeros_like(x_TD, dtype=acc)
        dw_M = torch.zeros_like(w_M)
        dw13 = torch.zeros_like(w13_XDH)
        dw2 = torch.zeros_like(w2_XFD)
        dab_MH = torch.empty_like(ab_MH)
        start = 0
        for e, n in enumerate(ctx.counts):
            if n == 0:
                continue
            sl = slice(start, start + n)
            tok = tok_M[sl]
            a, b = ab_MH[sl, :n_hidden], ab_MH[sl, n_hidden:]
            x = x_TD.index_select(0, tok)
            dy = dy_TD.index_select(0, tok)
            silu = F.silu(a)
            g = silu * b  # unweighted expert activation
            w = w_M[sl, None]
            dgw = dy @ w2_XFD[e].T  # grad of the weighted activation g * w
            torch.linalg.vecdot(dgw, g, out=dw_M[sl])
            torch.mm(g.mul_(w).T, dy, out=dw2[e])
            dg = dgw.mul_(w)
            dab = dab_MH[sl]
            torch.mul(dg, silu, out=dab[:, n_hidden:])
            # one fused pass for d silu(a) / da (recomputing the sigmoid was 5 passes over M x F)
            silu_backward(dg.mul_(b), a, grad_input=dab[:, :n_hidden])
            torch.mm(x.T, dab, out=dw13[e])
            dx_TD.index_add_(0, tok, (dab @ w13_XDH[e].T).to(acc))
            start += n
        return dx_TD.to(x_TD.dtype), dw_M, dw13, dw2, None, None


def _grouped_mm_ok(x: torch.Tensor) -> bool:
    """torch._grouped_mm runs on CUDA sm80+ (torch >= 2.9) in any float dtype; on CPU it exists
    but was slower than the loop below in our benchmark, so the CPU takes the loop."""
    if not (x.is_cuda and hasattr(torch, "_grouped_mm")):
        return False
    return torch.cuda.get_device_capability(x.device) >= (8, 0)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Under autocast, the expert matmuls run in the autocast dtype, like nn.Linear would."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def grouped_experts(
    x_TD: torch.Tensor,
    expert_idx_TK: torch.Tensor,
    weight_TK: torch.Tensor,
    w13_XDH: torch.Tensor,
    w2_XFD: torch.Tensor,
) -> torch.Tensor:
    dtype = _compute_dtype(x_TD)
    with torch.autocast(x_TD.device.type, enabled=False):
        x_TD, w13_XDH, w2_XFD = x_TD.to(dtype), w13_XDH.to(dtype), w2_XFD.to(dtype)
        n_tok, k = expert_idx_TK.shape
        n_experts, n_hidden = w13_XDH.shape[0], w2_XFD.shape[1]
        order_M, tok_M, counts_X = _sort_slots(expert_idx_TK, n_experts)
        w_M = weight_TK.reshape(-1)[order_M].to(dtype)
        if not _grouped_mm_ok(x_TD):
            return _LoopExperts.apply(x_TD, w_M, w13_XDH, w2_XFD, tok_M, counts_X.tolist())
        offs_X = torch.cumsum(counts_X, 0).to(torch.int32)
        ab_MH = torch._grouped_mm(x_TD[tok_M], w13_XDH, offs=offs_X)
        g_MF = F.silu(ab_MH[:, :n_hidden]) * ab_MH[:, n_hidden:] * w_M[:, None]
        out_MD = torch._grouped_mm(g_MF, w2_XFD, offs=offs_X)
        # Back to slot order, then sum each token's K slots: no atomics (index_add_ would be
        # non-deterministic on CUDA), accumulation in float32. Dropped slots stay zero.
        out_SD = out_MD.new_zeros(n_tok * k, out_MD.shape[1]).index_copy(0, order_M, out_MD)
        acc = accumulate_dtype(dtype)
        return out_SD.view(n_tok, k, out_SD.shape[-1]).sum(1, dtype=acc).to(dtype)


BACKENDS: dict[str, Backend] = {"reference": reference_experts, "grouped": grouped_experts}


def expert_forward(
    x_TD: torch.Tensor,
    expert_idx_TK: torch.Tensor,
    weight_TK: torch.Tensor,
    w13_XDH: torch.Tensor,
    w2_XFD: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    fn = BACKENDS["grouped" if backend == "auto" else backend]
    return fn(x_TD, expert_idx_TK, weight_TK, w13_XDH, w2_XFD)


def exclude_from_compile() -> None:
    """Before `torch.compile` of a model: run the expert compute eagerly. Compiled, it would
    specialise on every routing's token counts and recompile without end (it is a few large
    matmuls; the rest of the model compiles). Not a decorator: `torch.compiler.disable` imports
    torch._dynamo, about a second of start-up that every run of a study would pay."""
    global expert_forward
    from moescale.model import parallel  # its token exchange too: the split sizes are data

    if not getattr(expert_forward, "_moescale_eager", False):
        expert_forward = torch.compiler.disable(expert_forward)
        expert_forward._moescale_eager = True  # type: ignore[attr-defined]
        parallel.expert_parallel_forward = torch.compiler.disable(parallel.expert_parallel_forward)
