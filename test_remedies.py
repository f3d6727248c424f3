"""
Tests of remedies.py: the heads beyond the paper and the meter for any head.

    python -m pytest -q test_remedies.py
"""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import meter
import measure
import remedies
from model import GPT, GPTConfig

HERE = os.path.dirname(os.path.abspath(__file__))
V, D = 100, 8


def gpt(head, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=D, head=head, **kw)
    return GPT(GPTConfig(**cfg))


def batch(seed=1, B=4, T=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


@pytest.mark.parametrize('name', list(remedies.HEADS))
def test_each_head_trains_at_the_linear_heads_logit_scale(name):
    model = gpt(name)
    x, y = batch()
    logits, loss = model(x, y)
    assert logits.shape == (4, 8, V) and math.isfinite(loss.item())
    loss.backward()
    for pn, p in model.lm_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pn
    # the logit scale at init, on inputs match_scale never saw: the linear head's 0.02·√D within 15%
    head = model.lm_head
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(4096, D, generator=g)]
    xs = xs * len(head.example_inputs()) if head.same_inputs else [
        torch.randn(4096, D, generator=g) for _ in head.example_inputs()]
    with torch.no_grad():
        std = head(*xs).float().std().item()
    assert std == pytest.approx(0.02 * math.sqrt(D), rel=0.15)
    # the fused loss path gives the same number (it is computed from the logits)
    model.fused = True
    assert model(x, y)[1].item() == pytest.approx(loss.item(), rel=1e-6)


def test_flops_per_token_counts_each_heads_own_matmuls():
    base = gpt('linear')
    blocks = sum(p.numel() for p in base.transformer.h.parameters() if p.dim() == 2)
    attention = 12 * 2 * 8 * D

    def flops(head_weights):
        return 6 * (blocks + head_weights) + attention

    Vp = 128  # V = 100 padded to a multiple of 64
    M, K = 4 * D, remedies.MOS_MIXTURES
    want = {'linear': V * D, 'whiten': Vp * D, 'overparam': 4 * D * (D + Vp), 'blocks': Vp * 2 * D,
            'mlp': M * D + Vp * M, 'prehead': 2 * M * D + Vp * D, 'mos': K * D + K * D * D + K * Vp * D,
            'sigsoftmax': Vp * D}
    for name, weights in want.items():
        assert gpt(name).flops_per_token() == flops(weights), name


def test_unknown_head_and_head_rank_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown head 'mlpx'"):
        gpt('mlpx')
    with pytest.raises(ValueError, match="head_rank applies only to factorized heads"):
        gpt('mlp', head_rank=4)
    assert gpt('overparam', head_rank=12).lm_head.rank == 12 and gpt('overparam').lm_head.rank == 4 * D
    with pytest.raises(ValueError, match="n_layer ≥ 2"):
        torch.manual_seed(0)
        GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=D, head='blocks'))


def test_whiten_sends_back_the_ridge_least_squares_preimage():
    model = gpt('whiten')
    head = model.lm_head
    h = torch.randn(6, D, requires_grad=True)
    g = torch.randn(6, V)
    dh, dW = torch.autograd.grad(head(h), (h, head.weight), g)
    W = head.effective_weight().detach().double()
    lam = remedies.WHITEN_EPS * (W.T @ W).trace() / D
    # min_x ‖W x − g_t‖² + λ‖x‖², by an explicit least-squares solve of the stacked system
    A = torch.cat([W, lam.sqrt() * torch.eye(D, dtype=W.dtype)])
    b = torch.cat([g.double().T, torch.zeros(D, 6, dtype=W.dtype)])
    want = torch.linalg.lstsq(A, b).solution.T
    assert torch.allclose(dh.double(), want, rtol=1e-4, atol=1e-7)
    # W's own gradient is the plain head's
    assert torch.allclose(dW[:V], g.T @ h.detach(), atol=1e-6)
    # the meter's hidden-state step goes through this backward pass: U_H = −dh Wᵀ with the whitened dh
    y = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(2))
    G = torch.softmax(head(h).detach().double(), -1) - F.one_hot(y, V).double()
    A = torch.cat([W, lam.sqrt() * torch.eye(D, dtype=W.dtype)])
    dh = torch.linalg.lstsq(A, torch.cat([G.T, torch.zeros(D, 6, dtype=W.dtype)])).solution.T
    U_H = -dh @ W.T
    want = (-(G * U_H).sum() / (G.norm() * U_H.norm())).item()
    assert remedies.head_meter(head, h.detach(), y)['c_H'] == pytest.approx(want, abs=1e-5)


def test_blocks_twin_has_the_same_forward_and_cuts_the_second_gradient_path():
    x, y = batch()
    full, twin = gpt('blocks'), gpt('blocks_sg')
    twin.load_state_dict(full.state_dict())
    grads = []
    for model in (full, twin):
        logits, loss = model(x, y)
        earlier = model.lm_head.earlier  # the output of the block before the last, as the hook caught it
        grads.append((logits.detach(), torch.autograd.grad(loss, earlier)[0]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1], atol=1e-8)
    # the twin's gradient into the earlier output is the one through the last block alone
    model = twin
    logits, loss = model(x, y)
    e = model.lm_head.earlier
    last = model.transformer.ln_f(model.transformer.h[-1](e))
    direct = F.cross_entropy(model.lm_head(last).view(-1, V), y.view(-1))
    assert torch.allclose(torch.autograd.grad(loss, e)[0], torch.autograd.grad(direct, e)[0], atol=1e-7)


def test_mos_chunks_give_the_same_loss_and_gradients(monkeypatch):
    x, y = batch(B=8)
    model = gpt('mos')
    loss = model(x, y)[1]
    ref = torch.autograd.grad(loss, list(model.parameters()))
    monkeypatch.setattr(remedies, 'MOS_CHUNK', 5)  # 64 tokens in 13 chunks, each recomputed in backward
    chunked = model(x, y)[1]
    assert chunked.item() == pytest.approx(loss.item(), rel=1e-6)
    for a, b in zip(ref, torch.autograd.grad(chunked, list(model.parameters()))):
        assert torch.allclose(a, b, atol=1e-6)
    # log p: every token's probabilities sum to one
    with torch.no_grad():
        assert torch.allclose(model(x)[0].exp().sum(-1), torch.ones(8, 8), atol=1e-5)


def test_mos_logits_are_the_log_of_the_mixture_and_stay_finite():
    """u = log Σ_k π_k softmax(W tanh(P_k h)), π = softmax(Π h), against float64 log space; and with logits
    spread past fp32's range (every softmax one-hot), the loss and its gradients stay finite."""
    head = gpt('mos').lm_head
    g = torch.Generator().manual_seed(3)
    h, y = torch.randn(16, D, generator=g), torch.randint(0, V, (16,), generator=g)
    P, W, prior = (p.detach().double() for p in (head.P, head.effective_weight(), head.prior))
    z = torch.tanh(h.double() @ P.t()).view(16, head.mixtures, D) @ W.t()                 # (16, K, V)
    log_pi = F.log_softmax(h.double() @ prior.t(), dim=-1)                                # (16, K)
    ref = torch.logsumexp(log_pi.unsqueeze(-1) + F.log_softmax(z, dim=-1), dim=1)
    with torch.no_grad():
        assert torch.allclose(head(h).double(), ref, atol=1e-5)
        head.weight.mul_(1e4)
    loss = F.cross_entropy(head(h), y)
    grads = torch.autograd.grad(loss, list(head.parameters()))
    assert math.isfinite(loss.item()) and all(torch.isfinite(x).all() for x in grads)


@pytest.mark.parametrize('spec,twin', list(remedies.SAME_FORWARD.items()))
def test_same_forward_heads_fit_as_their_twin_on_a_frozen_trunk(spec, twin):
    """reproduce.py reuses the twin's frozen-trunk fits: same init, same logits, same parameter gradients."""
    x, y = batch()
    a, b = gpt(spec), gpt(twin)
    for m in (a, b):
        m.transformer.requires_grad_(False)
    (la, lossa), (lb, lossb) = a(x, y), b(x, y)
    assert torch.equal(la, lb)
    ga = torch.autograd.grad(lossa, list(a.lm_head.parameters()))
    gb = torch.autograd.grad(lossb, list(b.lm_head.parameters()))
    assert len(ga) == len(gb) and all(torch.equal(u, v) for u, v in zip(ga, gb))


def meter_inputs(model, x):
    with torch.no_grad():
        return model.hidden(x)


@pytest.mark.parametrize('name,factored', [('linear', False), ('wide', True), ('narrow', True)])
def test_head_meter_equals_the_closed_forms_on_the_papers_heads(name, factored):
    model = gpt(name)
    x, y = batch()
    h = meter_inputs(model, x)
    m = remedies.head_meter(model.lm_head, h, y, tokens=32)
    H, t = h.reshape(-1, D)[:32], y.reshape(-1)[:32]
    W = model.lm_head.effective_weight().detach()
    with torch.no_grad():
        live = meter.live_meter(model.lm_head(H), t, W)
    assert m['visible_share'] == pytest.approx(live['grad_cosine'] ** 2, rel=1e-5)
    factors = measure.head_factors(model.lm_head)
    ref = measure.realizable(H, t, W, factors=factors)
    assert m['c_H'] == pytest.approx(ref['c_H'], abs=1e-5)
    assert m['c_theta'] == pytest.approx(ref['c_W'], abs=1e-5)
    assert m['c_star'] == pytest.approx(ref['c_star'], abs=1e-5)


@pytest.mark.parametrize('name', ['mlp', 'sigsoftmax', 'mos', 'prehead'])
def test_per_token_visible_share_equals_brute_force(name, monkeypatch):
    monkeypatch.setattr(remedies, 'JACOBIAN_FLOATS', V * D * 5)  # 5 tokens' Jacobians at a time: 3 chunks
    model = gpt(name)
    x, y = batch()
    head = model.lm_head
    H = meter_inputs(model, x).reshape(-1, D)[:12]
    t = y.reshape(-1)[:12]
    shift = name == 'mos'
    got = remedies.head_meter(head, H, t)['visible_share']
    # brute force: each token's Jacobian by reverse mode, the projection of g_t onto its column space
    num = den = 0.0
    for h_t, y_t in zip(H, t):
        J = torch.autograd.functional.jacobian(lambda v: head(v.unsqueeze(0))[0], h_t).double()  # (V, D)
        if shift:
            J = J - J.mean(0)
        with torch.no_grad():
            g = torch.softmax(head(h_t.unsqueeze(0))[0].double(), -1)
        g[y_t] -= 1
        Q = torch.linalg.svd(J, full_matrices=False)[0]
        num += (Q.T @ g).pow(2).sum().item()
        den += g.pow(2).sum().item()
    assert got == pytest.approx(num / den, rel=1e-4)


def test_whiten_trains_under_autocast():
    """Under bf16 autocast (train.py's default on CUDA) whiten's backward receives a bf16 gradient beside fp32
    h and W: it crashed on the mixed matmul. Its gradients now match fp32's to bf16 precision."""
    x, y = batch()
    ref, low = gpt('whiten'), gpt('whiten')
    ref(x, y)[1].backward()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = low(x, y)[1]
    loss.backward()
    for (name, a), b in zip(ref.named_parameters(), low.parameters()):
        assert b.grad.dtype == a.dtype and (b.grad - a.grad).norm() <= 0.05 * a.grad.norm() + 1e-8, name


def test_per_token_visible_share_keeps_directions_of_small_singular_values():
    """An ill-conditioned head (κ = 10³): directions with σ ≥ RANK_RTOL·σ_max count, as everywhere in the
    meter (a cutoff applied to σ², the Gram matrix's eigenvalues, dropped those below 3·10⁻³·σ_max)."""
    torch.manual_seed(0)
    head = gpt('sigsoftmax').lm_head
    U = torch.linalg.qr(torch.randn(V, D, dtype=torch.float64))[0]
    R = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))[0]
    with torch.no_grad():
        head.weight[:V] = ((U * torch.logspace(0, -3, D, dtype=torch.float64) * 3) @ R.T).float()
    h, y = torch.randn(40, D), torch.randint(0, V, (40,))
    with torch.no_grad():
        z = (h @ head.weight[:V].T).double()
    G = torch.softmax(z + F.logsigmoid(z), -1)
    G[torch.arange(40), y] -= 1
    num = 0.0
    for t in range(40):  # each token's Jacobian of log(e^z σ(z)) is diag(2 − σ(z)) W
        J = (2 - torch.sigmoid(z[t]))[:, None] * head.weight[:V].detach().double()
        Uj, S, _ = torch.linalg.svd(J, full_matrices=False)
        num += (Uj[:, S > meter.RANK_RTOL * S[0]].T @ G[t]).pow(2).sum().item()
    got = remedies.visible_share(head, (h,), G.float())
    assert got == pytest.approx(num / G.pow(2).sum().item(), rel=1e-4)


def logit_change_rank(head, N):
    """The rank of a first-order logit change ΔU (N, V) at N random input tokens, along random tangents of
    the head's inputs and parameters: the size of the channel one step opens. (Random inputs: a LayerNorm's
    outputs at init sum to zero, which would lower rank H to D − 1.)"""
    g = torch.Generator().manual_seed(3)
    widths = [D] * (len(head.example_inputs()) if isinstance(head, remedies.RemedyHead) else 1)
    inputs = tuple(torch.randn(N, w, generator=g) for w in widths)
    params = {k: p.detach() for k, p in head.named_parameters()}

    def f(xs, ps):
        return remedies.head_logits(head, xs, ps).double()

    tangents = tuple(torch.randn(i.shape, generator=g) for i in inputs)
    ptangents = {k: torch.randn(p.shape, generator=g) for k, p in params.items()}
    dU = torch.func.jvp(f, (inputs, params), (tangents, ptangents))[1]
    return torch.linalg.matrix_rank(dU, rtol=1e-7).item()


@pytest.mark.parametrize('name,bound', [('linear', 2 * D), ('overparam', 2 * D), ('blocks', 4 * D),
                                        ('blocksum', 2 * D), ('mlp', 2 * 4 * D), ('prehead', 2 * D),
                                        ('sigsoftmax', None), ('mos', None)])
def test_rank_of_the_first_order_logit_change(name, bound):
    """2D plain, overparam (not 3D: the B- and A-terms share col(H)) and prehead, 2KD blocks, 2M mlp; none for
    sigsoftmax and mos, whose logits are not linear in a rank-D map: their ΔU fills min(N, V)."""
    rank = logit_change_rank(gpt(name).lm_head, 96)
    if bound is None:
        assert rank > 8 * D
    else:
        assert rank == bound


@pytest.mark.slow
def test_train_py_runs_a_remedy_head_and_logs_the_meter(tmp_path):
    out = tmp_path / 'run'
    cmd = [sys.executable, os.path.join(HERE, 'train.py'), '--head=mlp', '--max_iters=4', '--eval_interval=2',
           '--log_interval=2', '--eval_iters=1', '--batch_size=4', '--n_embd=16', '--vocab_size=64',
           f'--out_dir={out}', '--device=cpu']
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, p.stderr
    assert 'mlp head' in p.stdout and p.stdout.count('grad destroyed') == 3
    bad = subprocess.run(cmd[:2] + ['--head=mlpx', f'--out_dir={tmp_path}/bad'], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: unknown head 'mlpx'")
    assert len(bad.stderr.strip().splitlines()) == 1
