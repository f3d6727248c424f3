"""
A fused linear cross-entropy for the LM head on CUDA (Triton + cuBLAS): the loss of softmax(h Wᵀ) and its
gradients dh = G W and dW = Gᵀ h, G = softmax − onehot, without ever writing the N×V logits to GPU memory.

    from triton_ce import available, triton_linear_cross_entropy
    ok, why = available()
    loss = triton_linear_cross_entropy(h, W, targets)  # h (..., D), W (V, D), targets (...) long, -1 ignored

It has the contract of fused_loss.linear_cross_entropy (which stays the CPU path and the reference this file
is tested against): mean cross-entropy over the tokens whose target is ≥ 0, gradients computed in the forward
pass, backward only scales them by the incoming gradient. Under autocast the matmuls run in the autocast dtype
and the softmax in fp32. A batch whose targets are all ignored gives a NaN loss and NaN gradients, like the
reference (it divides by n_valid = 0); F.cross_entropy gives a NaN loss there too (but zero gradients).

From the chunked version to this one. fused_loss.py walks over chunks of TOKENS: per chunk it forms all V
logits of c rows, so each row's softmax is exact at once, and folds G_c into dh and dW. Its dW accumulates
over N/c chunks. At N = 8,192, V = 131,072 a 64 MiB budget allows c = 256 bf16 rows, so fp32 dW (2 GiB at
D = 4,096) is read and written 32 times: 128 GiB of traffic, ~27 ms at 4.8 TB/s, against ~40 ms for all
three matmuls at peak; and each dW update is a K = 256 matmul, ~64 flop per byte of dW, below the H200's
~200 flop/byte ridge. Row chunks with stored logits do 3 matmuls but are bound by memory traffic, not by the
tensor cores.

So this file walks over chunks of the VOCABULARY instead, where each dW row block is written once (K = N).
The price: G needs each row's logsumexp (lse) before any of its entries exists, and a V-chunk sees only part
of a row, so the lse comes from a first pass of its own. Two passes over the logits, 4 N·V·D matmuls:
  Pass 1 (one Triton kernel, _lse_kernel): programs on a grid (row block, V segment) form logit tiles with
    tl.dot over D, on chip, and keep an online (max, sum-exp) per row, the flash-attention recurrence, plus
    the target's logit when it falls in a tile. Each writes its segment's partials, 3 arrays of shape (S, N)
    in fp32; a few torch ops combine them into lse (N,) and the loss. Splitting V over S segments gives
    enough programs to fill the GPU even when N/BM row blocks alone would not.
  Pass 2 (a loop over V-chunks of cv columns): the chunk's logits L = h W_cᵀ (torch.mm, cuBLAS) land in one
    reused (N, cv) buffer; a Triton elementwise kernel (_grad_kernel) turns it in place into
    G = (exp(L − lse) − onehot(y)) · w_n, w_n = 1/n_valid (0 for ignored rows); then dW_c = Gᵀ h (torch.mm,
    written once) and dh += G W_c in fp32 (cuBLAS's fp32 output where torch has addmm(out_dtype=), else
    through a small row-blocked temp).
Why not 3 matmuls? dh alone could come out of pass 1 (online rescaling of Σ_v exp(l − m) W_v, as
flash-attention rescales its output), but dW_v = Σ_n p_nv h_n sums over rows, each normalized by its own
lse, and that factor cannot be pulled out of the sum: dW needs the final lse, so a second logit pass
(1 matmul) plus dW (1) follows a first pass that does at least 1: 4 with or without the online dh. Storing
the logits instead costs N·V·2 bytes (2 GiB in bf16), 32× the budget. Hence the speed bound: at most 3/4 of
the three bare matmuls, less the elementwise passes over the (N, cv) chunk (memory-bound, small next to the
matmuls at D ≥ 768). Learned from: Cut Cross-Entropy (arXiv 2411.09009: logits only on chip, lse first,
gradient by recomputing them) and Liger-Kernel (arXiv 2410.10989: gradients in the forward pass, chunk by
chunk); the code is ours.

Memory beyond the gradient outputs, e = bytes per element of the compute dtype:
    N·cv·e (the G chunk, ≤ G_BYTES = 32 MiB) + min(N, rb)·D·e (dh's matmul temp, ≤ TEMP_BYTES = 16 MiB)
    + cv·D·e (fp16 only: dW's temp, ≤ 16 MiB) + 3·S·N·4 + a few (N,) vectors (lse, weights: ~0.1 MiB)
so ≤ 64 MiB at N = 8,192, V = 131,072, D ∈ {768, 4096}. Gradients are kept in bf16 when the compute dtype is
bf16 (its exponent range is fp32's, and the backward's scale-and-cast needs no fp32 copy), in fp32 otherwise
(fp16 values of G·h/n_valid underflow: for fp16 the 1/n_valid is applied after the matmuls, in fp32).

Measured 2026-12-04 (one H200, torch 2.11 + triton 3.6, bf16, N = 8,192, V = 131,072, forward + backward;
`python bench.py --sections=1` times it beside the other losses, as its `triton` row):
    D = 768:  13.4 ms, 0.47 of the bare matmuls (6.3 ms); pass 1 4.1 ms; 0 MiB beyond the gradients
    D = 4096: 60.0 ms, 0.56 of the bare matmuls (33.8 ms); pass 1 17.2 ms; 0 MiB beyond the gradients
    (naive: 20.3 / 49.0 ms and 12 GiB; the chunked loop: 24.0 / 59.8 ms and 2.1 / 3.1 GiB beyond)

Tests (a GPU, else the Triton interpreter on CPU, ~20 s): python3 -m pytest -q test_triton_ce.py
Benchmark (CUDA):                                          python3 bench.py --sections=1
"""
import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports: available() says why it cannot run
    triton = None

G_BYTES = 32 * 2**20  # the (N, cv) G chunk of pass 2
TEMP_BYTES = 16 * 2**20  # each compute-dtype temp: dh's row-blocked G W_c, fp16's dW_c


def interpreting():
    return os.environ.get('TRITON_INTERPRET') == '1'


def available():
    """(True, '') when the kernels can run here: Triton imports, and CUDA or its interpreter is there."""
    if triton is None:
        return False, 'triton is not installed'
    if interpreting():
        return True, ''
    if not torch.cuda.is_available():
        return False, 'no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU, slowly)'
    return True, ''


def grad_dtype(dtype):
    # bf16 keeps fp32's exponent range, so bf16 gradients neither underflow nor need an fp32 copy to scale
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


# =============================================================================
# Kernels
# =============================================================================

if triton is not None:

    @triton.jit
    def _lse_kernel(h_ptr, w_ptr, y_ptr, m_ptr, s_ptr, t_ptr, N, V, D, S,
                    BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr,
                    UPCAST: tl.constexpr):
        # one program: rows [pid_m·BM, +BM) × vocab segment pid_s; writes its (max, sum-exp, target logit)
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        rows = pid_m * BM + tl.arange(0, BM)
        row_ok = rows < N
        y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
        seg = tl.cdiv(tl.cdiv(V, S), BV) * BV  # segments are whole tiles; the last ones may be short or empty
        v_start = pid_s * seg
        v_end = tl.minimum(v_start + seg, V)
        m = tl.full((BM,), float('-inf'), tl.float32)
        s = tl.zeros((BM,), tl.float32)
        t = tl.zeros((BM,), tl.float32)
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * D
        for v0 in range(v_start, v_end, BV):
            cols = v0 + tl.arange(0, BV)
            col_ok = cols < v_end
            w_cols = w_ptr + cols.to(tl.int64)[None, :] * D
            acc = tl.zeros((BM, BV), tl.float32)
            for k0 in range(0, D, BK):
                ks = k0 + tl.arange(0, BK)
                k_ok = ks < D
                a = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BM, BK)
                b = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BK, BV)
                if UPCAST:  # the interpreter's tl.dot mishandles bf16 operands (numpy has no bf16)
                    acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision='ieee')
                elif IEEE:  # fp32 inputs: no tf32 rounding, so fp32 results match torch's to ~1e-6
                    acc = tl.dot(a, b, acc, input_precision='ieee')
                else:
                    acc = tl.dot(a, b, acc)
            acc = tl.where(col_ok[None, :], acc, float('-inf'))
            # every tile has a valid column, so m_new is finite and exp(m − m_new) is never exp(nan)
            m_new = tl.maximum(m, tl.max(acc, 1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(acc - m_new[:, None]), 1)
            m = m_new
            t += tl.sum(tl.where(cols[None, :] == y[:, None], acc, 0.0), 1)
        out = pid_s * N + rows
        tl.store(m_ptr + out, m, mask=row_ok)
        tl.store(s_ptr + out, s, mask=row_ok)
        tl.store(t_ptr + out, t, mask=row_ok)

    @triton.jit
    def _grad_kernel(g_ptr, lse_ptr, w_ptr, y_ptr, N, C, c0, BR: tl.constexpr, BC: tl.constexpr):
        # in place on the (N, C) logits of columns [c0, c0 + C): G = (exp(l − lse) − onehot(y)) · w
        rows = tl.program_id(0) * BR + tl.arange(0, BR)
        cols = tl.program_id(1) * BC + tl.arange(0, BC)
        row_ok = rows < N
        ok = row_ok[:, None] & (cols < C)[None, :]
        ptrs = g_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :]
        logit = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        w = tl.load(w_ptr + rows, mask=row_ok, other=0.0)
        y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
        onehot = tl.where(cols[None, :] + c0 == y[:, None], 1.0, 0.0)
        g = (tl.exp(logit - lse[:, None]) - onehot) * w[:, None]
        tl.store(ptrs, g.to(g_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _scale_cast_kernel(x_ptr, g_ptr, out_ptr, n, BLOCK: tl.constexpr):
        # out = x · g in fp32, rounded once to out's dtype: no fp32 copy of x, and g = 65,536 never meets fp16
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr).to(tl.float32)
        tl.store(out_ptr + offs, (x * g).to(out_ptr.dtype.element_ty), mask=ok)

    # A few configs for an H100/H200 class GPU, so compile + tune stays at seconds; tuned once per (V, D).
    _LSE_CONFIGS = [
        triton.Config({'BM': 128, 'BV': 128, 'BK': 64}, num_warps=8, num_stages=3),
        triton.Config({'BM': 128, 'BV': 256, 'BK': 64}, num_warps=8, num_stages=3),
        triton.Config({'BM': 64, 'BV': 256, 'BK': 64}, num_warps=4, num_stages=4),
        triton.Config({'BM': 128, 'BV': 128, 'BK': 64}, num_warps=4, num_stages=4),
    ]
    _lse_kernel_tuned = triton.autotune(configs=_LSE_CONFIGS, key=['V', 'D'])(_lse_kernel)

# The interpreter's config: small tiles, so tiny test shapes still have ragged tiles in N, V and D.
INTERPRET_BLOCKS = dict(BM=16, BV=32, BK=16)


def num_segments(N, V, device):
    """S, how many vocab segments pass 1 splits V into: about 4 programs per SM, each ≥ 1,024 columns."""
    if device.type != 'cuda':
        return max(1, min(4, math.ceil(V / 64)))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = math.ceil(N / 128)
    return max(1, min(math.ceil(V / 1024), math.ceil(4 * sms / row_blocks)))


def chunk_columns(N, V, dtype):
    """cv, pass 2's V-chunk: a multiple of 128 whose (N, cv) G chunk fits G_BYTES."""
    e = torch.finfo(dtype).bits // 8
    cv = max(128, G_BYTES // (max(N, 1) * e) // 128 * 128)
    return min(cv, math.ceil(V / 128) * 128)


_ADDMM_FP32 = {}


def addmm_fp32_ok(device):
    """Whether torch.addmm(out_dtype=fp32) adds a bf16/fp16 product into fp32 here (CUDA, recent torch)."""
    if device.type != 'cuda':
        return False
    if device not in _ADDMM_FP32:
        try:
            a = torch.ones(16, 16, dtype=torch.bfloat16, device=device)
            c = torch.ones(16, 16, dtype=torch.float32, device=device)
            torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
            _ADDMM_FP32[device] = bool((c == 17).all())
        except (TypeError, RuntimeError, NotImplementedError):
            _ADDMM_FP32[device] = False
    return _ADDMM_FP32[device]


def scale_cast(x, g, out):
    """out = (x · g) in fp32, cast to out.dtype; g a 0-dim tensor on x's device (no host sync)."""
    n = x.numel()
    if n == 0:
        return out
    BLOCK = 1024
    _scale_cast_kernel[(triton.cdiv(n, BLOCK),)](x, g, out, n, BLOCK=BLOCK)
    return out


def lse_and_target(h, W, targets, segments=None, blocks=None):
    """Pass 1, per row: lse = log Σ_v exp(h_n · W_v) and the target logit h_n · W_{y_n} (0 if ignored)."""
    N, D = h.shape
    V = W.size(0)
    S = segments or num_segments(N, V, h.device)
    part = torch.empty(3, S, N, dtype=torch.float32, device=h.device)  # (max, sum-exp, target logit) × S
    ieee = h.dtype == torch.float32
    if blocks is None and not interpreting():
        grid = lambda meta: (triton.cdiv(N, meta['BM']), S)
        _lse_kernel_tuned[grid](h, W, targets, part[0], part[1], part[2], N, V, D, S, IEEE=ieee, UPCAST=False)
    else:
        b = blocks or INTERPRET_BLOCKS
        _lse_kernel[(triton.cdiv(N, b['BM']), S)](h, W, targets, part[0], part[1], part[2], N, V, D, S,
                                                  IEEE=ieee, UPCAST=interpreting() and not ieee, **b)
    m, s, t = part
    M = m.amax(0)  # finite: every row has at least one non-empty segment
    lse = M + torch.log((s * torch.exp(m - M)).sum(0))  # empty segments have m = −inf, s = 0: they add 0
    return lse, t.sum(0)  # the target falls in exactly one segment; the others add 0


def fused_ce_forward(h, W, targets, need_dh, need_dW, chunk_v=0, segments=None, blocks=None):
    """loss (fp32, 0-dim), dh (N, D) and dW (V, D) in grad_dtype(h.dtype), or (0,) where not needed.

    h (N, D), W (V, D) contiguous in one dtype (bf16, fp16 or fp32), targets (N,) int64, -1 = ignored.
    chunk_v, segments and blocks override pass 2's chunk, pass 1's segments and its tiles (for the tests)."""
    if h.dim() != 2 or W.dim() != 2 or h.size(1) != W.size(1):
        raise ValueError(f"want h (N, D) and W (V, D), got {tuple(h.shape)} and {tuple(W.shape)}")
    if h.dtype != W.dtype or h.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"h and W must share one of fp32/bf16/fp16, got {h.dtype} and {W.dtype}")
    if targets.shape != (h.size(0),) or targets.dtype != torch.int64:
        raise ValueError(f"want targets ({h.size(0)},) int64, got {tuple(targets.shape)} {targets.dtype}")
    h, W, targets = h.contiguous(), W.contiguous(), targets.contiguous()
    N, D = h.shape
    V = W.size(0)
    dt = h.dtype
    gd = grad_dtype(dt)
    valid = targets >= 0
    n_valid = valid.sum()  # a tensor: no host sync
    # inf if every target is ignored: NaN loss and gradients, like fused_loss.py
    inv_n = 1.0 / n_valid.float()
    lse, logit_y = lse_and_target(h, W, targets, segments, blocks)
    loss = ((lse - logit_y) * valid).sum() * inv_n
    dh = h.new_empty(0, dtype=gd)
    dW = h.new_empty(0, dtype=gd)
    if not (need_dh or need_dW) or N == 0:
        return loss, dh, dW
    # fp16: G stays unscaled (G/n_valid would underflow) and 1/n_valid is applied in fp32 after the matmuls
    post = dt == torch.float16
    w = valid.float() if post else valid.float() * inv_n  # (N,) row weights, 0 for ignored rows
    cv = chunk_v or chunk_columns(N, V, dt)
    e = torch.finfo(dt).bits // 8
    # dh += G W_c into fp32: addmm_ for fp32; cuBLAS's fp32 output when torch has it; else through a temp
    direct = dt == torch.float32 or addmm_fp32_ok(h.device)
    rb = N if direct else max(1, min(N, TEMP_BYTES // (D * e)))
    buf = h.new_empty(N * min(cv, V))  # the only N×cv buffer: logits, then G, of each chunk
    dh32 = torch.zeros(N, D, dtype=torch.float32, device=h.device) if need_dh else None
    tmp = h.new_empty(rb, D) if need_dh and not direct else None
    if need_dW:
        dW = torch.empty(V, D, dtype=gd, device=h.device)
    wtmp = h.new_empty(min(cv, V), D) if need_dW and post else None
    BR, BC = (16, 32) if interpreting() else (32, 256)
    for c0 in range(0, V, cv):
        c1 = min(c0 + cv, V)
        C = c1 - c0
        G = buf[:N * C].view(N, C)
        Wc = W[c0:c1]
        torch.mm(h, Wc.t(), out=G)
        _grad_kernel[(triton.cdiv(N, BR), triton.cdiv(C, BC))](G, lse, w, targets, N, C, c0, BR=BR, BC=BC)
        if need_dW:
            if post:
                torch.mm(G.t(), h, out=wtmp[:C])
                scale_cast(wtmp[:C], inv_n, dW[c0:c1])
            else:
                torch.mm(G.t(), h, out=dW[c0:c1])  # K = N: each dW row block written once, never re-read
        if need_dh:
            if dt == torch.float32:
                dh32.addmm_(G, Wc)
            elif direct:
                torch.addmm(dh32, G, Wc, out_dtype=torch.float32, out=dh32)
            else:
                for r0 in range(0, N, rb):  # G W_c comes in the compute dtype: add it to fp32 dh by rows
                    r1 = min(r0 + rb, N)
                    torch.mm(G[r0:r1], Wc, out=tmp[:r1 - r0])
                    dh32[r0:r1] += tmp[:r1 - r0]
    del buf, tmp, wtmp  # before dh's cast, so the chunk buffers and dh's bf16 copy never coexist
    if need_dh:
        if post:
            dh32.mul_(inv_n)
        dh = dh32 if gd == torch.float32 else dh32.to(gd)
    return loss, dh, dW


# =============================================================================
# torch.library registration: opaque to torch.compile (no graph break), with fake shapes and an autograd rule
# =============================================================================

def _fake(h, W, targets, need_dh, need_dW, chunk_v):
    gd = grad_dtype(h.dtype)
    loss = h.new_empty((), dtype=torch.float32)
    dh = h.new_empty(tuple(h.shape) if need_dh else (0,), dtype=gd)
    dW = W.new_empty(tuple(W.shape) if need_dW else (0,), dtype=gd)
    return loss, dh, dW


def _backward_grads(dh, dW, grad_loss, dtypes, need):
    # scale the saved gradients by the incoming one in fp32, cast once (a GradScaler's 65,536 overflows fp16)
    g = grad_loss.float()
    gh = _scale_cast_op(dh, g, dtypes[0]) if need[0] else None
    gW = _scale_cast_op(dW, g, dtypes[1]) if need[1] else None
    return gh, gW


HAS_CUSTOM_OP = hasattr(torch, 'library') and hasattr(torch.library, 'custom_op') \
    and hasattr(torch.library, 'register_autograd')

if HAS_CUSTOM_OP:

    @torch.library.custom_op('gradbottleneck::fused_ce', mutates_args=())
    def fused_ce(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor, need_dh: bool, need_dW: bool,
                 chunk_v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return fused_ce_forward(h, W, targets, need_dh, need_dW, chunk_v)

    fused_ce.register_fake(_fake)

    @torch.library.custom_op('gradbottleneck::scale_cast', mutates_args=())
    def _scale_cast_op(x: torch.Tensor, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return scale_cast(x, g, torch.empty(x.shape, dtype=dtype, device=x.device))

    @_scale_cast_op.register_fake
    def _(x, g, dtype):
        return x.new_empty(x.shape, dtype=dtype)

    def _setup_context(ctx, inputs, output):
        h, W, targets, need_dh, need_dW, chunk_v = inputs
        loss, dh, dW = output
        ctx.save_for_backward(dh, dW)
        ctx.dtypes = (h.dtype, W.dtype)
        ctx.need = (need_dh, need_dW)
        ctx.set_materialize_grads(False)  # else autograd allocates zero grads for dh and dW: (N + V)·D more

    def _backward(ctx, grad_loss, grad_dh, grad_dW):
        dh, dW = ctx.saved_tensors
        gh, gW = _backward_grads(dh, dW, grad_loss, ctx.dtypes, ctx.need)
        return gh, gW, None, None, None, None

    torch.library.register_autograd('gradbottleneck::fused_ce', _backward, setup_context=_setup_context)

    def _apply(h, W, targets, need_dh, need_dW, chunk_v):
        return fused_ce(h, W, targets, need_dh, need_dW, chunk_v)[0]

else:  # older torch: a plain autograd.Function (torch.compile graph-breaks on it, eager is the same)

    def _scale_cast_op(x, g, dtype):
        return scale_cast(x, g, torch.empty(x.shape, dtype=dtype, device=x.device))

    class _FusedCE(torch.autograd.Function):

        @staticmethod
        def forward(ctx, h, W, targets, need_dh, need_dW, chunk_v):
            loss, dh, dW = fused_ce_forward(h, W, targets, need_dh, need_dW, chunk_v)
            ctx.save_for_backward(dh, dW)
            ctx.dtypes = (h.dtype, W.dtype)
            ctx.need = (need_dh, need_dW)
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            dh, dW = ctx.saved_tensors
            gh, gW = _backward_grads(dh, dW, grad_loss, ctx.dtypes, ctx.need)
            return gh, gW, None, None, None, None

    def _apply(h, W, targets, need_dh, need_dW, chunk_v):
        return _FusedCE.apply(h, W, targets, need_dh, need_dW, chunk_v)


def triton_linear_cross_entropy(h, W, targets, chunk_v=None):
    """loss = F.cross_entropy(h Wᵀ, targets, ignore_index=-1), without the (N, V) logits, on CUDA.

    h (..., D), W (V, D) (the real rows only), targets (...) long. Under autocast the matmuls run in the
    autocast dtype, the softmax in fp32. chunk_v: pass 2's V-chunk (default: what fits G_BYTES).
    Works under no_grad."""
    ok, why = available()
    if not ok:
        raise RuntimeError(f"triton_linear_cross_entropy cannot run here: {why}")
    D = h.size(-1)
    h, targets = h.reshape(-1, D), targets.reshape(-1)
    dev = h.device.type
    if dev != 'cuda' and not interpreting():
        raise ValueError(f"triton_linear_cross_entropy wants CUDA tensors, got {dev}")
    autocast = torch.is_autocast_enabled(dev) if hasattr(torch, 'get_autocast_dtype') else False
    dtype = torch.get_autocast_dtype(dev) if autocast else torch.promote_types(h.dtype, W.dtype)
    grad = torch.is_grad_enabled()
    need_dh = grad and h.requires_grad
    need_dW = grad and W.requires_grad
    with torch.autocast(dev, enabled=False):
        h = h.to(dtype).contiguous()
        W = W.to(dtype).contiguous()
        return _apply(h, W, targets.long().contiguous(), need_dh, need_dW, chunk_v or 0)
