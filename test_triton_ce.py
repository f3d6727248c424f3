"""
Tests of triton_ce.py: on a CUDA GPU where there is one, else on CPU through the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported), where the kernels run on CPU tensors, tl.dot included.
Tiny shapes whose tiles are ragged in N (37 rows, 16-row blocks), V (300 columns: 32-column tiles, pass-1
segments that end mid-tile or are empty, pass-2 chunks of 128) and D (24 = 16 + 8). The reference is the
naive loss: F.cross_entropy on fp32 logits, by autograd.

    python3 -m pytest -q test_triton_ce.py
"""
import os

import pytest
import torch
import torch.nn.functional as F

# on a CUDA machine the kernels run on the GPU; elsewhere in the interpreter, which must be set before triton
# is imported, or its kernels want a GPU
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
if DEVICE == 'cpu':
    os.environ['TRITON_INTERPRET'] = '1'
else:
    pytestmark = pytest.mark.cuda  # on the GPU these belong with the suite's CUDA tests (-m cuda)

pytest.importorskip('triton', reason='triton is not installed: the fused CUDA loss cannot be tested')

import triton_ce  # noqa: E402
from triton_ce import fused_ce_forward, triton_linear_cross_entropy  # noqa: E402

N, V, D = 37, 300, 24


def make(dtype=torch.float32, seed=0, ignore=(5, 11)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(dtype)
    W = (torch.randn(V, D, generator=g) * 0.5).to(dtype)  # logits of std ~2.5: a softmax far from uniform
    y = torch.randint(0, V, (N,), generator=g)
    y[0] = V - 1  # the last column, in the ragged last tile of V
    y[list(ignore)] = -1
    return h.to(DEVICE), W.to(DEVICE), y.to(DEVICE)


def naive(h, W, y, scale=1.0):
    """loss, dh, dW of the naive loss on fp32 logits from the same (possibly bf16) values, all fp32."""
    h = h.detach().float().requires_grad_()
    W = W.detach().float().requires_grad_()
    loss = F.cross_entropy(h @ W.t(), y, ignore_index=-1)
    (loss * scale).backward()
    return loss.detach(), h.grad, W.grad


def fused(h, W, y, scale=1.0, **kw):
    h = h.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    loss = triton_linear_cross_entropy(h, W, y, **kw)
    (loss * scale).backward()
    return loss.detach(), h.grad, W.grad


def assert_matches(got, ref, loss_tol=1e-6, rtol=1e-5, atol_frac=1e-6):
    """loss, dh, dW against the reference's: the loss to loss_tol, the gradients as `close` says."""
    assert torch.allclose(got[0], ref[0], rtol=loss_tol, atol=loss_tol)
    assert close(got[1], ref[1], rtol, atol_frac)
    assert close(got[2], ref[2], rtol, atol_frac)


def close(a, b, rtol, atol_frac):
    """|a − b| ≤ rtol·|b| + atol_frac·max|b|: the atol part covers entries near 0 of a gradient."""
    a, b = a.float(), b.float()
    return torch.allclose(a, b, rtol=rtol, atol=atol_frac * b.abs().max().item())


def test_available_here():
    ok, why = triton_ce.available()
    assert ok, why


# fp32: the Triton dot runs in IEEE fp32, the rest in fp32: only the order of sums differs, ~1e-6 relative
@pytest.mark.parametrize('segments,chunk_v', [(None, 128), (7, 300), (1, 96), (16, 1000)])
def test_fp32_matches_naive(segments, chunk_v):
    # 7 segments of 64 columns leave two empty; 16 leave most empty; chunk_v 96 is not a multiple of 128
    h, W, y = make()
    ref = naive(h, W, y)
    loss, dh, dW = fused_ce_forward(h, W, y, True, True, chunk_v=chunk_v, segments=segments)
    assert dh.dtype == torch.float32 and dW.dtype == torch.float32
    assert_matches((loss, dh, dW), ref)


def test_fp32_public_function_and_tiles():
    # other tiles: 32-row blocks (a ragged one of 5 rows), 64-column tiles, D in one ragged 32-wide k-tile
    h, W, y = make()
    ref = naive(h, W, y)
    blocks = dict(BM=32, BV=64, BK=32)
    loss, dh, dW = fused_ce_forward(h, W, y, True, True, chunk_v=128, segments=3, blocks=blocks)
    assert_matches((loss, dh, dW), ref)
    out = fused(h.reshape(1, N, D), W, y.reshape(1, N), chunk_v=128)  # leading dims, as GPT.forward has
    assert torch.allclose(out[0], ref[0], rtol=1e-6, atol=1e-6)
    assert close(out[1], ref[1].reshape(1, N, D), 1e-5, 1e-6)
    assert close(out[2], ref[2], 1e-5, 1e-6)


# bf16 inputs: pass 1 accumulates in fp32 from the same bf16 values, so the loss stays at fp32 accuracy; the
# gradients go through bf16 logits, a bf16 G and bf16 matmul outputs: ~3 roundings of 2⁻⁸ each: 2% of max
def test_bf16_matches_naive():
    h, W, y = make(torch.bfloat16)
    ref = naive(h, W, y)
    loss, dh, dW = fused(h, W, y, chunk_v=128)
    assert dh.dtype == torch.bfloat16 and dW.dtype == torch.bfloat16
    assert_matches((loss, dh, dW), ref, 1e-5, 2e-2, 2e-2)


def test_autocast_bf16_on_fp32_weights():
    # under autocast the matmuls run in bf16 (same tolerance as above), and the gradients come back in fp32
    h, W, y = make()
    ref = naive(h.bfloat16(), W.bfloat16(), y)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss, dh, dW = fused(h, W, y, chunk_v=128)
    assert dh.dtype == torch.float32 and dW.dtype == torch.float32
    assert_matches((loss, dh, dW), ref, 1e-5, 2e-2, 2e-2)


def test_ignored_row_block():
    # rows 0..15 are pass 1's first 16-row block: all ignored, they must add nothing and get zero gradients
    h, W, y = make(ignore=range(16))
    ref = naive(h, W, y)
    loss, dh, dW = fused(h, W, y, chunk_v=128)
    assert torch.allclose(loss, ref[0], rtol=1e-6, atol=1e-6)
    assert (dh[:16] == 0).all()
    assert close(dh, ref[1], 1e-5, 1e-6)
    assert close(dW, ref[2], 1e-5, 1e-6)


def test_all_ignored_is_nan_like_the_reference():
    # fused_loss.chunked_linear_cross_entropy divides by n_valid = 0: NaN loss and gradients; we match it
    from fused_loss import chunked_linear_cross_entropy
    h, W, y = make()
    y[:] = -1
    loss, dh, dW = fused(h, W, y)
    h2 = h.clone().requires_grad_()
    ref = chunked_linear_cross_entropy(h2, W, y)
    assert torch.isnan(loss) and torch.isnan(ref)
    assert torch.isnan(dh).all() and torch.isnan(dW).all()


def test_backward_scales_by_incoming_grad():
    h, W, y = make()
    ref = naive(h, W, y, scale=-3.5)
    loss, dh, dW = fused(h, W, y, scale=-3.5, chunk_v=128)
    assert close(dh, ref[1], 1e-5, 1e-6)
    assert close(dW, ref[2], 1e-5, 1e-6)


def test_fp16_gradscaler_scale_does_not_overflow():
    # 65,536 is not an fp16 number: the scale must be applied in fp32 (fp16 tolerance: 2⁻¹¹ per rounding)
    h, W, y = make(torch.float16)
    ref = naive(h, W, y, scale=65536.0)
    loss, dh, dW = fused(h, W, y, scale=65536.0, chunk_v=128)
    assert dh.dtype == torch.float16 and dW.dtype == torch.float16
    assert torch.isfinite(dh).all() and torch.isfinite(dW).all()
    assert close(dh, ref[1], 5e-3, 5e-3)
    assert close(dW, ref[2], 5e-3, 5e-3)


def test_no_grad_and_partial_grads():
    h, W, y = make()
    ref = naive(h, W, y)
    with torch.no_grad():
        loss = triton_linear_cross_entropy(h.requires_grad_(), W, y)
    assert torch.allclose(loss, ref[0], rtol=1e-6, atol=1e-6)
    h = h.detach()
    Wg = W.clone().requires_grad_()
    triton_linear_cross_entropy(h, Wg, y).backward()  # dW only: dh is never formed
    assert close(Wg.grad, ref[2], 1e-5, 1e-6)


def test_validation():
    h, W, y = make()
    with pytest.raises(ValueError):
        fused_ce_forward(h, W[:, :-1], y, True, True)
    with pytest.raises(ValueError):
        fused_ce_forward(h, W.double(), y, True, True)
    with pytest.raises(ValueError):
        fused_ce_forward(h, W, y.int(), True, True)


needs_op = pytest.mark.skipif(not triton_ce.HAS_CUSTOM_OP, reason='this torch has no torch.library.custom_op')


@needs_op
def test_opcheck():
    # schema, fake (meta) implementation, autograd registration, as torch.compile will see them
    h, W, y = make()
    h.requires_grad_()
    W.requires_grad_()
    torch.library.opcheck(torch.ops.gradbottleneck.fused_ce.default, (h, W, y, True, True, 128))


@needs_op
def test_compile_fullgraph():
    # the custom op is opaque to dynamo: no graph break; aot_eager traces fwd + bwd without a C++ compiler
    h, W, y = make()
    ref = naive(h, W, y)

    def step(h, W, y):
        return triton_linear_cross_entropy(h, W, y, chunk_v=128) * 2.0

    compiled = torch.compile(step, fullgraph=True, backend='aot_eager')
    hc = h.clone().requires_grad_()
    Wc = W.clone().requires_grad_()
    loss = compiled(hc, Wc, y)
    loss.backward()
    assert torch.allclose(loss, 2 * ref[0], rtol=1e-6, atol=1e-6)
    assert close(hc.grad, 2 * ref[1], 1e-5, 1e-6)
    assert close(Wc.grad, 2 * ref[2], 1e-5, 1e-6)
