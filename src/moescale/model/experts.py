"""Expert compute: the one seam between routing and the matmuls.

Every backend computes, for routed slots s = (token t, expert e, weight w),

    gate | up = x_TD[t] @ w13_XDH[e]          (gate and up projections packed side by side)
    y_TD[t] += w * (silu(gate) * up) @ w2_XFD[e]

Slots whose expert index is X (== number of experts) were dropped by the capacity limit and are
skipped. Backends:

- `reference`: a plain loop over experts with boolean masks. Slow and obviously correct: the
  oracle every other backend is tested against, forward and backward.
- `grouped`: sort slots by expert once, then one matmul per expert on a contiguous slice (CPU, or
  a GPU without grouped GEMM), or the `grouped_mm` path on CUDA sm80+. The loop is a custom
  autograd function: it never keeps the (slots x d_model) copy of the input that autograd would
  save, re-gathers it in backward instead, and keeps each expert's working set in cache. That
  data movement, not FLOPs, is the cost of fine granularity. On CPU in float32/float64 the loop
  runs in C++ (model/cpu_ext.py) where it could be built, else in Python.
- `loop`: the same loop, always in Python: the C++ loop's pure-PyTorch twin.
- `grouped_mm`: one `torch._grouped_mm` per projection over all slots, with the activation, the
  routing weights and the un-permutation fused into memory-bound kernels (model/kernels.py:
  Triton on CUDA, PyTorch elsewhere), no host synchronisation and shapes independent of the
  routing. On CPU it runs (for tests and comparisons) but the loop is faster.

`expert_forward(..., backend="auto")` picks `grouped`, which is correct everywhere.
Legend: T tokens, D d_model, X routed experts (E*G), F expert hidden (d_ff/G), H = 2F, K slots per
token (k*G), M kept slots.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from moescale.model import cpu_ext, kernels

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
        out = (h @ w2_XFD[e]) * weight_TK[tok, slot, None]
        y_TD = y_TD.index_add(0, tok, out.to(y_TD.dtype))  # fp32 weights on bf16 experts
    return y_TD


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half and bfloat16, else the dtype itself (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def expert_counts(expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Kept slots per expert (index n_experts, a dropped slot, is not counted). Not `bincount`,
    which synchronises with the host on CUDA (it sizes its output by the largest index) and
    breaks a compiled graph."""
    flat = expert_idx.reshape(-1)
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))[:n_experts]


def _sort_slots(expert_idx_TK: torch.Tensor, n_experts: int):
    """Order kept slots by expert. Returns (slot order, token of each sorted slot, counts)."""
    k = expert_idx_TK.shape[1]
    flat_M = expert_idx_TK.reshape(-1)
    order = torch.argsort(flat_M, stable=True)
    counts_X = expert_counts(flat_M, n_experts)
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


class _CppLoopExperts(torch.autograd.Function):
    """_LoopExperts, expert by expert in C++ (model/csrc/experts_cpu.cpp): the same gathers,
    matmuls and scatter-adds, the activation fused into one pass each way; small float32 experts
    run in cache-sized blocks per thread instead (model/cpu_ext.py)."""

    @staticmethod
    def forward(ctx, x_TD, w_M, w13_XDH, w2_XFD, tok_M, counts):
        ext = cpu_ext.get()
        y_TD, ab_MH = ext.experts_forward(x_TD, w_M, w13_XDH, w2_XFD, tok_M, counts)
        ctx.ext, ctx.counts = ext, counts
        ctx.save_for_backward(x_TD, w_M, w13_XDH, w2_XFD, tok_M, ab_MH)
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, w_M, w13_XDH, w2_XFD, tok_M, ab_MH = ctx.saved_tensors
        grads = ctx.ext.experts_backward(dy_TD.contiguous(), x_TD, w_M, w13_XDH, w2_XFD, tok_M,
                                         ab_MH, ctx.counts)  # fmt: skip
        return (*grads, None, None)


def _grouped_mm_ok(x: torch.Tensor, n_hidden: int) -> bool:
    """torch._grouped_mm takes float32/bf16/fp16 with rows aligned to 16 bytes; on CUDA it needs
    sm80+ (torch >= 2.9)."""
    size = x.element_size()
    if not hasattr(torch, "_grouped_mm") or x.dtype not in (torch.float32, torch.bfloat16,
                                                             torch.float16):  # fmt: skip
        return False
    if (x.shape[1] * size) % 16 or (n_hidden * size) % 16:
        return False
    return not x.is_cuda or torch.cuda.get_device_capability(x.device) >= (8, 0)


class _GroupedMMExperts(torch.autograd.Function):
    """All slots sorted by expert, one grouped GEMM per projection, the memory-bound steps fused
    (model/kernels.py). No host synchronisation and no shape that depends on the routing: the
    dropped slots (capacity) sort last, past the last group, where the GEMMs leave their rows
    unwritten and the kernels skip them. Backward re-gathers the input instead of keeping the
    (slots x d_model) copy, and recomputes the activation from the saved pre-activations."""

    @staticmethod
    def forward(ctx, x_TD, weight_TK, w13_XDH, w2_XFD, expert_idx_TK):
        n_tok, k = expert_idx_TK.shape
        n_exp = w13_XDH.shape[0]
        flat_S = expert_idx_TK.reshape(-1)
        order_S = torch.argsort(flat_S, stable=True)
        offs_X = torch.cumsum(expert_counts(flat_S, n_exp), 0, dtype=torch.int32)
        n_kept = offs_X[-1]
        pos_S = torch.empty_like(order_S)  # where each slot went in the sorted order
        pos_S[order_S] = torch.arange(len(order_S), device=order_S.device)
        inv_TK = torch.where(pos_S < n_kept, pos_S, -1).view(n_tok, k)
        tok_S = order_S // k
        w_S = weight_TK.reshape(-1)[order_S].float()
        ab_SH = torch._grouped_mm(x_TD.index_select(0, tok_S), w13_XDH, offs=offs_X)
        g_SF = kernels.swiglu_fwd(ab_SH, w_S)
        out_SD = torch._grouped_mm(g_SF, w2_XFD, offs=offs_X)
        ctx.save_for_backward(x_TD, w_S, w13_XDH, w2_XFD, ab_SH, order_S, inv_TK, offs_X)
        ctx.weight_dtype = weight_TK.dtype
        return kernels.gather_sum(out_SD, inv_TK, x_TD.dtype)

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, w_S, w13_XDH, w2_XFD, ab_SH, order_S, inv_TK, offs_X = ctx.saved_tensors
        tok_S = order_S // inv_TK.shape[1]
        dy_SD = dy_TD.to(x_TD.dtype).index_select(0, tok_S)
        dg_SF = torch._grouped_mm(dy_SD, w2_XFD.transpose(1, 2), offs=offs_X)
        dab_SH, dw_S, gw_SF = kernels.swiglu_bwd(ab_SH, w_S, dg_SF, offs_X[-1])
        dw2 = torch._grouped_mm(gw_SF.t(), dy_SD, offs=offs_X)
        dw13 = torch._grouped_mm(x_TD.index_select(0, tok_S).t(), dab_SH, offs=offs_X)
        dx_SD = torch._grouped_mm(dab_SH, w13_XDH.transpose(1, 2), offs=offs_X)
        dx_TD = kernels.gather_sum(dx_SD, inv_TK, x_TD.dtype)
        dweight = torch.empty_like(w_S).index_copy_(0, order_S, dw_S)
        return dx_TD, dweight.view(inv_TK.shape).to(ctx.weight_dtype), dw13, dw2, None


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
    backend: str = "grouped",
) -> torch.Tensor:
    dtype = _compute_dtype(x_TD)
    with torch.autocast(x_TD.device.type, enabled=False):
        x_TD, w13_XDH, w2_XFD = x_TD.to(dtype), w13_XDH.to(dtype), w2_XFD.to(dtype)
        n_hidden = w2_XFD.shape[1]
        # traced, torch._grouped_mm takes bf16 only (its meta function): other dtypes loop
        traceable = dtype == torch.bfloat16 or not torch.compiler.is_compiling()
        ok = _grouped_mm_ok(x_TD, n_hidden)
        if backend == "grouped_mm" and traceable and not ok:
            raise ValueError(
                f"backend grouped_mm needs float32/bf16/fp16 rows of 16-byte multiples "
                f"(d_model {x_TD.shape[1]}, expert hidden {n_hidden}, {dtype}); use grouped"
            )
        if traceable and ok and (backend == "grouped_mm" or x_TD.is_cuda and backend != "loop"):
            return _GroupedMMExperts.apply(x_TD, weight_TK, w13_XDH, w2_XFD, expert_idx_TK)
        cpp = backend != "loop" and x_TD.is_cpu and dtype in (torch.float32, torch.float64)
        return _loop_experts(x_TD, expert_idx_TK, weight_TK.to(dtype), w13_XDH, w2_XFD, cpp)


def _loop_experts(x_TD, expert_idx_TK, weight_TK, w13_XDH, w2_XFD, cpp=False) -> torch.Tensor:
    order_M, tok_M, counts_X = _sort_slots(expert_idx_TK, w13_XDH.shape[0])
    w_M = weight_TK.reshape(-1)[order_M]
    if cpp and cpu_ext.get() is not None:
        tensors = (t.contiguous() for t in (x_TD, w_M, w13_XDH, w2_XFD, tok_M))
        return _CppLoopExperts.apply(*tensors, counts_X.tolist())
    return _LoopExperts.apply(x_TD, w_M, w13_XDH, w2_XFD, tok_M, counts_X.tolist())


def grouped_mm_experts(*args: torch.Tensor) -> torch.Tensor:
    return grouped_experts(*args, backend="grouped_mm")


def loop_experts(*args: torch.Tensor) -> torch.Tensor:
    return grouped_experts(*args, backend="loop")


BACKENDS: dict[str, Backend] = {
    "reference": reference_experts,
    "grouped": grouped_experts,
    "grouped_mm": grouped_mm_experts,
    "loop": loop_experts,
}


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
    """Before `torch.compile` of a model: run the per-expert loop and the reference eagerly.
    Compiled, they would specialise on every routing's token counts and recompile without end.
    The grouped_mm path compiles with the rest of the model: its shapes do not depend on the
    routing and it never synchronises with the host, so one graph serves every step. Not a
    decorator: `torch.compiler.disable` imports torch._dynamo, about a second of start-up that
    every run of a study would pay."""
    global _loop_experts, reference_experts
    from moescale.model import parallel  # its token exchange too: the split sizes are data

    if not getattr(_loop_experts, "_moescale_eager", False):
        _loop_experts = torch.compiler.disable(_loop_experts)
        _loop_experts._moescale_eager = True  # type: ignore[attr-defined]
        reference_experts = BACKENDS["reference"] = torch.compiler.disable(reference_experts)
        parallel.expert_parallel_forward = torch.compiler.disable(parallel.expert_parallel_forward)
