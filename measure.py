"""
The gradient-bottleneck meter (Godey & Artzi 2026, arXiv 2603.10145): everything about the logit gradient
G = softmax(logits) − onehot(targets) (N×V). G reaches the backbone only through G·W, so the part of G in
ker(Wᵀ) is destroyed. destroyed_ratio is the definition, r = ‖P_ker(Wᵀ) G‖_F / ‖G‖_F; the live meter and
per_token compute the same quantity by faster formulas, each tested against it:

    column_basis(W)                   orthonormal basis of col(W), (V, k)
    destroyed_ratio(G, W)             the definition, for any G: {'destroyed_ratio', 'visible_cosine'}
    head_factor(W)                    D×k factor F with ‖P_col(W) g‖² = ‖Fᵀ Wᵀ g‖², from WᵀW: no V×D QR
    live_meter(logits, targets, W)    r and c of one batch, cheap (train.py: every evaluation; every step
                                      with --meter_every_step)
    measure(H, targets, W)            from hidden states (N, D), chunk by chunk: r, c, the per-token r, the
                                      spectrum of G and the direction test

On the command line (measure_cli.py: where the model and the batches come from, and the printed report):

    python measure.py --ckpt=out/spamlang_wide/ckpt.pt       # a train.py checkpoint, on held-out batches
    python measure.py --init --vocab_size=32768 --n_embd=256  # a freshly initialized model, the baseline
    python measure.py --hf=gpt2 --data=input.txt              # a Hugging Face causal LM (needs transformers)
"""
import math
import sys

import torch
import torch.nn.functional as F

RANK_RTOL = 1e-5  # ours: a singular value of W (or G) below RANK_RTOL·σ_max counts as zero (W is stored in fp32)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
ENERGY_LEVELS = (0.7, 0.99, 0.999)
STEP_SIZES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # direction test: per-token RMS size of the logit step (ours)

# -----------------------------------------------------------------------------
# the core: projections onto col(W)

def column_basis(W, rtol=RANK_RTOL):
    """(V, D) -> (V, k) orthonormal basis of W's column space in fp64, k = numerical rank (via SVD, O(V·D²))."""
    U, S, _ = torch.linalg.svd(W.detach().double(), full_matrices=False)
    return U[:, S > rtol * S[0]]


def logit_grad(logits, targets, dtype=torch.float64):
    """G = softmax(logits) − onehot(targets), one row per token: the gradient of the summed loss. (n, V)"""
    G = torch.softmax(logits.to(dtype), dim=-1)
    G[torch.arange(len(targets), device=G.device), targets] -= 1
    return G


def destroyed_ratio(G, W):
    """Exact reference for any G (N, V): r = ‖G − PG‖/‖G‖, c = ⟨G, PG⟩/(‖G‖‖PG‖), P = the projector onto col(W)."""
    G = G.double()
    Q = column_basis(W).to(G.device)
    PG = (G @ Q) @ Q.T                                                           # (N, V)
    r = ((G - PG).norm() / G.norm()).item()
    c = ((G * PG).sum() / (G.norm() * PG.norm())).item()
    return {'destroyed_ratio': r, 'visible_cosine': c}


def head_factor(W, rtol=RANK_RTOL):
    """F (D, k) with ‖P_col(W) g‖² = (Wᵀg)ᵀ(WᵀW)⁺(Wᵀg) = ‖Fᵀ Wᵀ g‖²: one O(V·D²) product and a D×D factorization,
    no V×D QR. Full-rank W: F = L⁻ᵀ from the Cholesky factor L of WᵀW. Factorized heads make WᵀW singular (rank
    r < D); then the pseudo-inverse from an eigendecomposition keeps the k = rank(W) eigenvalues above rtol²·λ_max.

    WᵀW is first formed in W's own dtype (the meter's main cost: fp32 runs ~2.5× faster than fp64 on CPU). Its
    entries then carry ~√V·ε relative error, which the inverse amplifies by κ(W)², so that factor is trusted only
    when W is well conditioned (smallest Cholesky pivot ≥ 0.1 of the largest); else WᵀW is formed again in fp64."""
    W = W.detach()
    for dtype, floor in ((W.dtype, 0.1 if W.dtype != torch.float64 else rtol), (torch.float64, rtol)):
        M = (W.to(dtype).T @ W.to(dtype)).double()                               # (D, D)
        L, info = torch.linalg.cholesky_ex(M)
        d = L.diagonal()
        if info.item() == 0 and d.min() > floor * d.max():
            return torch.linalg.solve_triangular(L, torch.eye(len(M), dtype=M.dtype, device=M.device), upper=False).T
    lam, U = torch.linalg.eigh(M)                                                # ascending, from the fp64 WᵀW
    keep = lam > (rtol ** 2) * lam[-1]
    return U[:, keep] / lam[keep].sqrt()                                         # (D, k)


def live_ratio(gW, g_sq, factor, V):
    """r and c over a batch from the rows of G·W (n, D) and ‖g‖² (n,): the live meter's formula; and the visible
    energy relative to chance, c²·V/rank(W) (1 for a random subspace of W's dimension, in expectation)."""
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
    """r and c of one batch from its logits (…, V) and targets (…) (−1: ignored)."""
    gsq, gW = logit_grad_stats(logits, targets, W.detach())  # ignored targets hold zeros: they add to neither sum
    return live_ratio(gW, gsq, head_factor(W), logits.size(-1))


# -----------------------------------------------------------------------------
# the full measurement, chunk by chunk: never N×V at once

def _chunks(n, size):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _grad_block(H, targets, W, bias, i, j, dtype):
    """Logits and G of tokens i..j. (n, V) each"""
    logits = H[i:j] @ W.T
    if bias is not None:
        logits = logits + bias
    return logits, logit_grad(logits, targets[i:j], dtype)


@torch.no_grad()
def per_token(H, targets, W, bias=None, chunk=512, dtype=torch.float64):
    """‖g_i‖² and ‖P_col(W) g_i‖² for every token, and the mean loss."""
    Q = column_basis(W).to(H.device, dtype)                                      # (V, k)
    total, visible, loss = [], [], 0.0
    for i, j in _chunks(len(H), chunk):
        logits, G = _grad_block(H, targets, W, bias, i, j, dtype)
        total.append(G.pow(2).sum(1).double())
        visible.append((G @ Q).pow(2).sum(1).double())
        loss += F.cross_entropy(logits.float(), targets[i:j], reduction='sum').item()
    return torch.cat(total), torch.cat(visible), loss / len(H), Q.size(1)


@torch.no_grad()
def spectrum(H, targets, W, bias=None, chunk=512, dtype=torch.float64):
    """σ² of G (descending), from the smaller Gram matrix: G Gᵀ (N×N, block by block) when N ≤ V, else GᵀG."""
    N, V = len(H), W.size(0)
    blocks = _chunks(N, chunk)
    if N <= V:
        K = torch.zeros(N, N, dtype=torch.float64, device=H.device)              # (N, N)
        for a, (i, j) in enumerate(blocks):
            Ga = _grad_block(H, targets, W, bias, i, j, dtype)[1]
            for k, l in blocks[:a + 1]:  # G_b is rebuilt rather than stored: memory stays O(chunk·V)
                Gb = Ga if (k, l) == (i, j) else _grad_block(H, targets, W, bias, k, l, dtype)[1]
                block = (Ga @ Gb.T).double()
                K[i:j, k:l], K[k:l, i:j] = block, block.T
    else:
        K = torch.zeros(V, V, dtype=torch.float64, device=H.device)              # (V, V)
        for i, j in blocks:
            G = _grad_block(H, targets, W, bias, i, j, dtype)[1]
            K += (G.T @ G).double()
    return torch.linalg.eigvalsh(K).flip(0).clamp(min=0)


def spectrum_stats(sig2, rank_W, top_k=1000, rtol=RANK_RTOL):
    """Ranks and energy fractions (cumulative σ² / Σσ²) of a spectrum σ² (descending). A first-order update of the
    hidden states and a head of rank r changes the logits by at most rank 2r, so by Eckart–Young the energy beyond
    the top k = 2r components is out of reach of any such update: the floor."""
    sig2 = sig2.double()
    energy = sig2.cumsum(0) / sig2.sum()
    s = sig2.sqrt()
    p = s / s.sum()
    p = p[p > 0]
    at = lambda k: energy[min(k, len(energy)) - 1].item()  # energy held by the top k components
    out = {'numerical_rank': int((s > rtol * s[0]).sum()),
           'effective_rank': math.exp(-(p * p.log()).sum().item()),  # Roy & Vetterli: exp(entropy of σ/Σσ), ours
           'energy_top_r': at(rank_W), 'energy_top_2r': at(2 * rank_W), 'energy_top_k': at(top_k), 'top_k': top_k,
           'ey_k': 2 * rank_W, 'ey_floor': max(0.0, 1 - at(2 * rank_W))}
    for level in ENERGY_LEVELS:
        level_t = torch.tensor(level - 1e-12, dtype=energy.dtype, device=energy.device)
        out[f'components_{level:g}'] = int(torch.searchsorted(energy, level_t).item()) + 1
    return out


def head_update(S, factors=None):
    """The change of the effective matrix W that a gradient step on the head's own parameters makes, for the
    gradient S = ∂L/∂W (V, D): S itself for a plain head; for W = B·A, ΔW = (S Aᵀ) A + B (Bᵀ S), first order."""
    if factors is None:
        return S
    B, A = (f.to(S) for f in factors)
    return (S @ A.T) @ A + B @ (B.T @ S)


@torch.no_grad()
def direction_test(H, targets, W, bias=None, chunk=512, dtype=torch.float64, step_sizes=STEP_SIZES, factors=None):
    """Loss decrease of equal-norm logit steps Z − ε√N·u/‖u‖ (ours) along
        u = G                   the direct logit gradient,
        u = G W Wᵀ              what a gradient step on each token's hidden state realizes (Δh_i = −η g_i W),
        u = G W Wᵀ + H ΔWᵀ      hidden states plus the head's own step, ΔW = head_update(Gᵀ H / N).
    Each hidden state is a per-token input and takes its own token's gradient; the head is shared, so its step is
    that of the mean loss, Gᵀ H / N, made through the head's own parameters (factors = (B, A) when W = B·A). The
    hidden-state figure does not depend on N; the head's does, as a shared update must: the more distinct targets a
    batch holds, the smaller each row's share (compare models at equal N; the N used is reported). ε is the
    per-token RMS size of the step. Three passes over G: the head's gradient, the directions' norms, the losses."""
    N, dt = len(H), dtype
    Wd, Hd = W.to(dt), H.to(dt)
    S, loss0 = torch.zeros_like(Wd), 0.0                                         # (V, D), Gᵀ H / N
    for i, j in _chunks(N, chunk):
        logits, G = _grad_block(H, targets, W, bias, i, j, dt)
        S += G.T @ Hd[i:j] / N
        loss0 += F.cross_entropy(logits.double(), targets[i:j], reduction='sum').item()
    dW = head_update(S, factors)                                                 # (V, D)

    def directions(i, j):
        logits, G = _grad_block(H, targets, W, bias, i, j, dt)
        uH = (G @ Wd) @ Wd.T                                                     # (n, V)
        return logits, {'G': G, 'H': uH, 'H+W': uH + Hd[i:j] @ dW.T}
    norms = dict.fromkeys(('G', 'H', 'H+W'), 0.0)
    for i, j in _chunks(N, chunk):
        for u, d in directions(i, j)[1].items():
            norms[u] += d.pow(2).sum().item()
    norms = {u: math.sqrt(v) for u, v in norms.items()}
    losses = {u: [0.0] * len(step_sizes) for u in norms}
    for i, j in _chunks(N, chunk):
        logits, dirs = directions(i, j)
        for u, d in dirs.items():
            for e, eps in enumerate(step_sizes):
                z = logits.to(dt) - (eps * math.sqrt(N) / norms[u]) * d
                losses[u][e] += F.cross_entropy(z, targets[i:j], reduction='sum').item()
    rows = []
    for e, eps in enumerate(step_sizes):
        dec = {u: loss0 / N - losses[u][e] / N for u in norms}
        rows.append({'step': eps, 'decrease_G': dec['G'], 'decrease_H': dec['H'], 'decrease_HW': dec['H+W'],
                     'ratio_hidden': dec['H'] / dec['G'], 'ratio_hidden_head': dec['H+W'] / dec['G']})
    return rows


def measure(H, targets, W, bias=None, chunk=512, spectrum_tokens=2048, direction_tokens=1024, top_k=1000,
            dtype=torch.float64, factors=None):
    """Everything, from final hidden states H (N, D), targets (N,) and the effective output matrix W (V, D);
    factors = (B, A) when W = B·A (a factorized head: its own update enters the direction test)."""
    H, W = H.float(), W.detach().float()
    bias = None if bias is None else bias.detach().float()
    factors = None if factors is None else tuple(f.detach().float() for f in factors)
    V, D = W.shape
    total, visible, loss, rank = per_token(H, targets, W, bias, chunk, dtype)
    frac = (visible.sum() / total.sum()).clamp(0, 1).item()
    r_tok = (1 - visible / total).clamp(0, 1).sqrt()
    out = {'n_tokens': len(H), 'V': V, 'D': D, 'rank_W': rank, 'loss': loss,
           'destroyed_ratio': math.sqrt(1 - frac), 'visible_cosine': math.sqrt(frac),
           'random_baseline': math.sqrt(1 - rank / V), 'visible_over_chance': frac * V / rank,
           'per_token': {'mean': r_tok.mean().item(),
                         **{f'q{int(100 * q):02d}': r_tok.quantile(q).item() for q in QUANTILES}}}
    if spectrum_tokens > 0:
        n = min(spectrum_tokens, len(H))
        sig2 = spectrum(H[:n], targets[:n], W, bias, chunk, dtype)
        out['spectrum'] = {'n_tokens': n, **spectrum_stats(sig2, rank, top_k)}
        out.update(ey_floor=out['spectrum']['ey_floor'], ey_k=out['spectrum']['ey_k'])
        out['_sig2'] = sig2  # for --plot; not written to JSON
    if direction_tokens > 0:
        n = min(direction_tokens, len(H))
        out['direction'] = {'n_tokens': n, 'steps': direction_test(H[:n], targets[:n], W, bias, chunk, dtype,
                                                                   factors=factors)}
        first = out['direction']['steps'][0]  # the smallest step: the first-order figure
        out['direction'].update(ratio_hidden=first['ratio_hidden'], ratio_hidden_head=first['ratio_hidden_head'])
    return out


if __name__ == '__main__':
    import measure_cli  # the command line: models, batches and the report
    measure_cli.main(sys.argv[1:])
