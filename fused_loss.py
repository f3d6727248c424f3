"""
The loss without the logits (train.py --loss=fused): F.cross_entropy(h Wᵀ, targets, ignore_index=-1) for
h (N, D) and W (V, D), never holding the N×V logits. On CUDA with Triton: the kernel of triton_ce.py.
Elsewhere (and as the reference that kernel is tested against): a loop over chunks of tokens that computes
each chunk's softmax, its loss and its gradients in the forward pass, so backward only scales them. Memory:
one (chunk, V) buffer instead of (N, V) logits and their gradient.

    loss = fused_loss.linear_cross_entropy(h, W, targets)     # model.fused_linear_cross_entropy calls this
"""
import torch

# The loss. 'naive' forms the N×V logits and lets autograd keep them and their gradient: ~3 N×V fp32 buffers
# at the peak (N = 8192, V = 131,072: 13 GB). 'fused' walks over chunks of tokens and, for each, forms the
# chunk's logits, its loss, and its gradient G_c = softmax − onehot, then folds G_c at once into ∇h (G_c W)
# and ∇W (G_cᵀ h_c): memory O(chunk·V + V·D), the same matmuls, the same result to fp32 rounding.
#
# The chunk: on CPU 512 tokens (small chunks rewrite ∇W once per chunk, large ones stream (c, V) buffers
# through memory several times; 512 was fastest in the README's measurements). On CUDA, as many tokens as fit
# a budget of one chunk's (c, V) buffers: each matmul stays large enough to run near peak at any V.
FUSED_CPU_CHUNK = 512
FUSED_CUDA_BYTES = 2**31  # one fp32 (c, V) softmax plus its compute-dtype copy, at most


def fused_chunk(device_type, vocab_size):
    if device_type != 'cuda':
        return FUSED_CPU_CHUNK
    return max(256, FUSED_CUDA_BYTES // (6 * vocab_size) // 256 * 256)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softmax(h Wᵀ) over the tokens whose target is ≥ 0, with its gradients computed in
    the forward pass, chunk by chunk, so the N×V logits never exist; backward only scales ∇h and ∇W by the
    incoming gradient."""

    @staticmethod
    def forward(ctx, h, W, targets, chunk_size, need_dh, need_dW):
        # h (N, D) and W (V, D) in the compute dtype (fp32 or bf16), targets (N,) long with -1 = ignored
        N, D = h.shape
        V = W.size(0)
        valid = targets >= 0                                          # (N,)
        n_valid = valid.sum()                                         # a tensor: no device sync
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty(N, D, device=h.device) if need_dh else h.new_empty(0)  # (N, D), fp32: see below
        dW = torch.zeros(V, D, dtype=torch.float32, device=h.device) if need_dW else None  # fp32 accumulator
        # reused by every chunk
        buf = torch.empty(min(chunk_size, N), V, dtype=torch.float32, device=h.device)
        for s in range(0, N, chunk_size):
            hc, yc, ok = h[s:s + chunk_size], targets[s:s + chunk_size], valid[s:s + chunk_size]
            y0 = yc.clamp(min=0).unsqueeze(1)                         # (c, 1), ignored rows point at 0
            p = buf[:len(hc)]                                         # (c, V): the logits, then the softmax
            if h.dtype == torch.float32:
                torch.mm(hc, W.t(), out=p)
            else:
                p.copy_(hc @ W.t())                                   # compute-dtype matmul, fp32 softmax
            p.sub_(p.amax(1, keepdim=True))                           # in place: allocates no (c, V) buffer
            logit_y = p.gather(1, y0).squeeze(1)                      # (c,), shifted like the row
            z = p.exp_().sum(1)                                       # (c,)
            p.div_(z.unsqueeze(1))
            loss += ((z.log() - logit_y) * ok).sum()                  # −log p_y = log Σ exp − logit_y
            if not (need_dh or need_dW):
                continue
            p.scatter_add_(1, y0, -ok.float().unsqueeze(1))           # G_c = p − onehot (ignored rows: w = 0)
            w = (ok / n_valid).unsqueeze(1)                           # (c, 1) fp32 row scale, 1/n_valid or 0
            G = p if p.dtype == h.dtype else p.to(h.dtype)            # matmuls in the compute dtype
            if need_dh:  # scaled in fp32: in fp16, (G W)/n_valid falls below its range before any loss scale
                dh[s:s + chunk_size] = (G @ W).float() * w            # scales (c, D), never (c, V)
            if need_dW:
                if G.dtype == torch.float32:
                    dW.addmm_(G.t(), hc * w)                          # (V, D) += (V, c) @ (c, D)
                else:
                    dW += G.t() @ (hc * w.to(h.dtype))
            del G  # the compute-dtype copy, before the next chunk: one chunk's (c, V) buffers live at a time
        ctx.save_for_backward(dh, dW)
        ctx.h_dtype, ctx.W_dtype = h.dtype, W.dtype
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dW = ctx.saved_tensors
        # scale in fp32, then cast: a GradScaler's 65,536 is not an fp16 number (its largest is 65,504)
        gh = (dh * grad_loss).to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        gW = (dW * grad_loss).to(ctx.W_dtype) if ctx.needs_input_grad[1] else None
        return gh, gW, None, None, None, None


_cuda_kernel = []  # filled at the first CUDA call: triton_ce's loss, or None where Triton cannot run


def cuda_kernel():
    """triton_ce.triton_linear_cross_entropy when Triton can run here, else None. Imported at the first
    CUDA call only, so a CPU run never loads it (torch.compile traces through this import)."""
    if not _cuda_kernel:
        try:
            import triton_ce
            ok = triton_ce.available()[0]
        except ImportError:
            ok = False
        _cuda_kernel.append(triton_ce.triton_linear_cross_entropy if ok else None)
    return _cuda_kernel[0]


def linear_cross_entropy(h, W, targets, chunk_size=None):
    """loss = F.cross_entropy(h Wᵀ, targets, ignore_index=-1), without the (N, V) logits: on CUDA with
    Triton the kernel of triton_ce.py (unless a chunk size is asked for), else the chunked loop below."""
    kernel = cuda_kernel() if h.is_cuda and chunk_size is None else None
    if kernel is not None:
        return kernel(h, W, targets)
    return chunked_linear_cross_entropy(h, W, targets, chunk_size)


def chunked_linear_cross_entropy(h, W, targets, chunk_size=None):
    """loss = F.cross_entropy(h Wᵀ, targets, ignore_index=-1), without the (N, V) logits: chunks of tokens.

    h (..., D), W (V, D) (the real rows only: never the padding), targets (...) long. Under autocast the
    matmuls run in the autocast dtype and the softmax in fp32, as on the naive path. Works under no_grad too.
    """
    D = h.size(-1)
    h, targets = h.reshape(-1, D), targets.reshape(-1)
    dev = h.device.type
    autocasting = torch.is_autocast_enabled(dev)
    dtype = torch.get_autocast_dtype(dev) if autocasting else torch.promote_types(h.dtype, W.dtype)
    chunk_size = chunk_size or fused_chunk(dev, W.size(0))
    grad = torch.is_grad_enabled()
    need_dh = grad and h.requires_grad
    need_dW = grad and W.requires_grad
    with torch.autocast(dev, enabled=False):
        return FusedLinearCrossEntropy.apply(h.to(dtype), W.to(dtype), targets, chunk_size, need_dh, need_dW)
