"""
The gradient-bottleneck meter (Godey & Artzi 2026, arXiv 2603.10145). The logit gradient G = softmax(logits)
− onehot(targets) (N×V) reaches the backbone only through G·W, so the part of G in ker(Wᵀ) is destroyed.
The destroyed ratio is r = ‖P_ker(Wᵀ) G‖_F / ‖G‖_F (measure.destroyed_ratio, the definition, by a V×k
basis of col(W)); the live meter computes it from D×D factors instead, tested against the definition:

    head_factor(W)                    D×k factor F with ‖P_col(W) g‖² = ‖Fᵀ Wᵀ g‖², from WᵀW: no V×D QR
    live_meter(logits, targets, W)    r and c of one batch, cheap (train.py: at every evaluation)
    model_meter(model, x, y)          live_meter on the model's own forward pass (--meter_every_step)

train.py imports this file; the full measurement of a model (per-token r, the spectrum of G, the direction
test) and its report are measure.py's:

    python measure.py --ckpt=out/spamlang_wide/ckpt.pt       # a train.py checkpoint, on held-out batches
    python measure.py --init --vocab_size=32768 --n_embd=256  # a freshly initialized model, the baseline
    python measure.py --hf=gpt2 --data=input.txt              # a Hugging Face causal LM (needs transformers)
"""
import math

import torch

METER_SEQUENCES = 8  # train.py --meter_every_step: sequences of a step's last micro-batch the meter reads
RANK_RTOL = 1e-5  # ours: a singular value of W (or G) below RANK_RTOL·σ_max counts as zero (W is in fp32)

# -----------------------------------------------------------------------------
# the core: projections onto col(W), from D×D factors

def head_factor(W, rtol=RANK_RTOL, gram=None):
    """F (D, k) with ‖P_col(W) g‖² = (Wᵀg)ᵀ(WᵀW)⁺(Wᵀg) = ‖Fᵀ Wᵀ g‖²: one O(V·D²) product and a D×D
    factorization, no V×D QR. Full-rank W: F = L⁻ᵀ from the Cholesky factor L of WᵀW. Factorized heads make
    WᵀW singular (rank r < D); then the pseudo-inverse from an eigendecomposition keeps the k = rank(W)
    eigenvalues above rtol²·λ_max.

    WᵀW is first formed in W's own dtype (the meter's main cost: fp32 runs ~2.5× faster than fp64 on CPU).
    Its entries then carry ~√V·ε relative error, which the inverse amplifies by κ(W)², so that factor is
    trusted only when W is well conditioned (smallest Cholesky pivot ≥ 0.1 of the largest); else WᵀW is
    formed again in fp64. gram: WᵀW in W's dtype, where the caller has formed it already."""
    W = W.detach()
    for dtype, floor in ((W.dtype, 0.1 if W.dtype != torch.float64 else rtol), (torch.float64, rtol)):
        if gram is None or dtype != W.dtype:
            gram = W.to(dtype).T @ W.to(dtype)
        M = gram.double()                                                # (D, D)
        L, info = torch.linalg.cholesky_ex(M)
        d = L.diagonal()
        if info.item() == 0 and d.min() > floor * d.max():
            eye = torch.eye(len(M), dtype=M.dtype, device=M.device)
            return torch.linalg.solve_triangular(L, eye, upper=False).T
    lam, U = torch.linalg.eigh(M)                                        # ascending, from the fp64 WᵀW
    keep = lam > (rtol ** 2) * lam[-1]
    return U[:, keep] / lam[keep].sqrt()                                 # (D, k)


def live_ratio(gW, g_sq, factor, V):
    """r and c over a batch from the rows of G·W (n, D) and ‖g‖² (n,): the live meter's formula; and the
    visible energy relative to chance, c²·V/rank(W) (1 for a random subspace of W's dimension, in
    expectation)."""
    visible = (gW.double() @ factor).pow(2).sum()
    total = g_sq.double().sum()
    frac = (visible / total).clamp(0, 1).item()  # ‖P_col g‖²/‖g‖² over the batch
    return {'grad_destroyed': math.sqrt(1 - frac), 'grad_cosine': math.sqrt(frac),
            'visible_over_chance': frac * V / factor.size(1)}


@torch.no_grad()
def logit_grad_stats(logits, targets, W):
    """Per token: ‖g‖² and g·W with g = softmax(logits) − onehot(target), from the logits (…, V), targets (…)
    and W (V, D); 0 for targets of −1. ‖g‖² comes from g itself (p_y − 1 is exact in fp32), not from
    Σp² − 2p_y + 1, which cancels to noise once a token is predicted with confidence. (N,), (N, D)"""
    V = logits.size(-1)
    y = targets.reshape(-1)
    ok = (y >= 0).float().unsqueeze(1)                                # (N, 1)
    g = torch.softmax(logits.reshape(-1, V).float(), dim=-1)          # (N, V)
    g.scatter_add_(1, y.clamp(min=0).unsqueeze(1), -ok)
    g.mul_(ok)
    return torch.linalg.vector_norm(g, dim=1).square(), g @ W.float()


@torch.no_grad()
def live_meter(logits, targets, W):
    """r and c of one batch from its logits (…, V) and targets (…) (−1: ignored), and grad_c_H = cos(−G, U_H),
    U_H = −G W Wᵀ the logit change of a gradient step on the hidden states alone (SGD geometry)."""
    W = W.detach()
    gsq, gW = logit_grad_stats(logits, targets, W)  # ignored targets are zeros: in neither sum
    gram = W.T @ W  # (D, D), O(V·D²): formed once, for the factor and for c_H
    out = live_ratio(gW, gsq, head_factor(W, gram=gram), logits.size(-1))
    U = ((gW @ gram.float()) * gW).sum()  # ‖G W Wᵀ‖², from D-sized factors
    return dict(out, grad_c_H=(gW.pow(2).sum() / (gsq.sum() * U).sqrt()).item())


@torch.no_grad()
def model_meter(model, x, y):
    """live_meter on the model's own forward pass over x (B, T) (eval mode: no dropout, no random draw):
    train.py's --meter_every_step, called before the optimizer step changes W. The model knows nothing of
    the meter."""
    training = model.training
    model.eval()
    logits, _ = model(x)
    model.train(training)
    with torch.autocast(x.device.type, enabled=False):  # W as trained: B·A in bf16 would read as full rank
        W = model.lm_head.effective_weight()
    return live_meter(logits, y, W)
