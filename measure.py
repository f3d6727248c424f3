"""
The full measurement of the gradient bottleneck (Godey & Artzi 2026, arXiv 2603.10145) and its command line
(meter.py holds the live meter that train.py logs; the definition it is tested against is here): how much of
the logit gradient G the head W destroys, on a checkpoint, a freshly initialized model or a Hugging Face LM:

    python measure.py --ckpt=out/spamlang_wide/ckpt.pt          # held-out batches of its training data
    python measure.py --init --vocab_size=32768 --n_embd=256    # fresh model, the baseline
                                                                # (train.py's flag names)
    python measure.py --init --head=narrow --head_rank=4        # a factorized head D→r→V
    python measure.py --hf=gpt2 --data=input.txt                # any HF causal LM
                                                                # (needs `pip install transformers`)
    python measure.py --hf=EleutherAI/pythia-160m --json_out=p.json --plot=p.png

Printed (and written with --json_out=FILE): the destroyed ratio r = ‖P_ker(Wᵀ) G‖_F / ‖G‖_F over all measured
tokens, the visible cosine c = √(1 − r²), the random-subspace baseline √(1 − rank(W)/V), the per-token
distribution of r, the spectrum of G (ranks, energy in the top D / 2D / k components, components for
70 / 99 / 99.9% energy, the Eckart–Young floor) and the direction test (loss decrease of equal-norm logit
steps). --plot=FILE.png draws the energy curve (needs matplotlib). Every option is --key=value; see the
defaults below.

"""
import math
import os
import sys
import time
import json

import torch
import torch.nn.functional as F

import checkpoint
import options
import runtime
import spamlang
import textdata
from meter import RANK_RTOL
from model import GPT, GPTConfig, check_config
from options import ConfigError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
ENERGY_LEVELS = (0.7, 0.99, 0.999)
STEP_SIZES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # direction test: per-token RMS size of the logit step (ours)

# -----------------------------------------------------------------------------
# defaults, each overridable with --key=value
ckpt = ''                # a train.py checkpoint
hf = ''                  # a Hugging Face model name or local folder
init = False             # a freshly initialized GPT built from the model flags below
data = ''                # '' = the checkpoint's data (--ckpt) or SpamLang; else a .txt or train.py token file
# model flags for --init (the same names and defaults as train.py)
vocab_size = 1024
n_embd = 64
n_layer = 2
n_head = 4
head = 'linear'
head_rank = None
block_size = 0           # sequence length; 0 = the checkpoint's, 32 for --init, min(1024, context) for --hf
# what is measured
n_tokens = 8192          # tokens in the measured set (r, c and per-token statistics)
batch_size = 8           # sequences per forward pass
chunk = 512              # rows of G held at once: memory O(chunk·V + V·D)
spectrum_tokens = 2048   # the first tokens of the set, for the spectrum (cost ∝ tokens²·V)
direction_tokens = 1024  # the first tokens of the set, for the direction test
step_tokens = 0          # the first tokens of the set, for the realizable share, c_H, c_W, c* (one step's;
                         # 0 = the checkpoint's tokens per step, batch_size × block_size otherwise)
top_k = 1000             # the spectrum reports the energy held by the top k components too
dtype = 'float64'        # precision of G and its projections: float64 or float32
device = 'auto'          # auto = cuda if available, else cpu
seed = 0
plot = ''                # --plot=FILE.png: the energy curve (matplotlib)
json_out = ''            # --json_out=FILE: the results for machines
# -----------------------------------------------------------------------------
DEFAULTS = options.defaults_of(globals())

# -----------------------------------------------------------------------------
# the definition (every faster formula, meter.live_meter's and per_token's, is tested against it)

def column_basis(W, rtol=RANK_RTOL):
    """(V, D) -> (V, k) orthonormal basis of W's column space in fp64, k = numerical rank (SVD, O(V·D²))."""
    U, S, _ = torch.linalg.svd(W.detach().double(), full_matrices=False)
    return U[:, S > rtol * S[0]]


def destroyed_ratio(G, W):
    """The definition, for any G (N, V): r = ‖G − PG‖/‖G‖, c = ⟨G, PG⟩/(‖G‖‖PG‖), P the projector onto
    col(W)."""
    G = G.double()
    Q = column_basis(W).to(G.device)
    PG = (G @ Q) @ Q.T                                                           # (N, V)
    r = ((G - PG).norm() / G.norm()).item()
    c = ((G * PG).sum() / (G.norm() * PG.norm())).item()
    return {'destroyed_ratio': r, 'visible_cosine': c}


# -----------------------------------------------------------------------------
# the full measurement, chunk by chunk: never N×V at once

def logit_grad(logits, targets, dtype=torch.float64):
    """G = softmax(logits) − onehot(targets), one row per token: the gradient of the summed loss. (n, V)"""
    G = torch.softmax(logits.to(dtype), dim=-1)
    G[torch.arange(len(targets), device=G.device), targets] -= 1
    return G


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


def spectrum_stats(sig2, rank_W, top_k=1000, rtol=RANK_RTOL, ey_k=None):
    """Ranks and energy fractions (cumulative σ² / Σσ²) of a spectrum σ² (descending). A first-order update
    of the hidden states and the head changes the logits by a matrix of rank at most ey_k (update_rank; 2r
    for a plain head of rank r), so by Eckart–Young the energy beyond the top ey_k components is out of reach
    of any such update: the floor."""
    ey_k = 2 * rank_W if ey_k is None else ey_k
    sig2 = sig2.double()
    energy = sig2.cumsum(0) / sig2.sum()
    s = sig2.sqrt()
    p = s / s.sum()
    p = p[p > 0]
    at = lambda k: energy[min(k, len(energy)) - 1].item()  # energy held by the top k components
    effective_rank = math.exp(-(p * p.log()).sum().item())  # Roy & Vetterli: exp(entropy of σ/Σσ), ours
    out = {'numerical_rank': int((s > rtol * s[0]).sum()),
           'effective_rank': effective_rank,
           'energy_top_r': at(rank_W), 'energy_top_2r': at(2 * rank_W), 'energy_top_k': at(top_k),
           'top_k': top_k, 'ey_k': ey_k, 'ey_floor': max(0.0, 1 - at(ey_k))}
    for level in ENERGY_LEVELS:
        level_t = torch.tensor(level - 1e-12, dtype=energy.dtype, device=energy.device)
        out[f'components_{level:g}'] = int(torch.searchsorted(energy, level_t).item()) + 1
    return out


def head_update(S, factors=None):
    """The change of the effective matrix W that a gradient step on the head's own parameters makes, for the
    gradient S = ∂L/∂W (V, D): S itself for a plain head; for W = B·A (factors = (B, A, A trained)), first
    order, ΔW = (S Aᵀ) A + B (Bᵀ S), without the second term when A is fixed."""
    if factors is None:
        return S
    B, A = (f.to(S) for f in factors[:2])
    dW = (S @ A.T) @ A
    if factors[2]:
        dW = dW + B @ (B.T @ S)
    return dW


def update_bases(H, W, factors=None):
    """Orthonormal bases (fp64) of the four spaces that bound a first-order logit change ΔU (N, V) of the
    tokens H (N, D), by name: W_ = col(W) ⊂ R^V (the rows of the hidden-state term ΔH Wᵀ), H_ = col(H) ⊂ R^N,
    K_ ⊂ R^N (the columns of the head's B-term: col(H Aᵀ) for W = B·A, col(H) for a plain head) and B_ ⊂ R^V
    (the rows of the A-term H ΔAᵀ Bᵀ: col(B) when A is trained; col(W), i.e. no such term, otherwise)."""
    Q_W, Q_H = column_basis(W), column_basis(H)
    if factors is None:
        return dict(W_=Q_W, H_=Q_H, K_=Q_H, B_=Q_W)
    B, A, trained = factors
    Q_K = column_basis(H.double() @ A.double().T)
    return dict(W_=Q_W, H_=Q_H, K_=Q_K, B_=column_basis(B) if trained else Q_W)


def update_rank(bases):
    """The largest rank of a first-order logit change ΔU (realizable's blocks): every reachable ΔU has its
    nonzero blocks in the rows of col(H) or the columns of col(W), and in the rows of col(H Aᵀ) or the
    columns of col(B), so rank ΔU ≤ min(rank H + rank W, rank HAᵀ + rank B), and a generic step reaches it
    (tested). Full ranks: 2D for a plain head, 2r for W = B·A with r ≤ D, 2D again for r > D (not
    min(2D, r) + D: the H ΔAᵀ Bᵀ and H Aᵀ ΔBᵀ terms share col(H)), 2·min(r, D) with A fixed."""
    k = {name: Q.size(1) for name, Q in bases.items()}
    return min(k['H_'] + k['W_'], k['K_'] + k['B_'])


@torch.no_grad()
def realizable(H, targets, W, bias=None, factors=None, chunk=512, dtype=torch.float64, null_perms=8, seed=0):
    """What one first-order step can do to the logits U of these N tokens (ours; measure() passes the tokens
    of one training step). The reachable changes are S = {ΔH Wᵀ + H ΔWᵀ}: for a plain head every ΔU whose
    rows lie in col(W) plus every ΔU whose columns lie in col(H); for W = B·A the hidden-state and A-terms
    have rows in col(B) (col(W) with A fixed), the B-term columns in col(H Aᵀ). Returns
        realizable_share   ‖P_S G‖²/‖G‖²: the share of G's energy that some step can realize (in blocks:
                           ‖G Π_W‖² + ‖Π_H G (Π_B − Π_W)‖² + ‖Π_K G (I − Π_B)‖²)
        c_H, c_W           cos(−G, U_H), cos(−G, U_W): U_H = G W Wᵀ, the change a gradient step on the hidden
                           states alone makes; U_W = H ΔWᵀ, ΔW = head_update(Gᵀ H), the head's alone
        c_star             max over a, b of cos(−G, a U_H + b U_W): the best mix of the two steps
        visible_over_chance_null   c²·V/rank(W) with W's rows permuted (null_perms draws): the figure a W
                           with the same spectrum but rows unrelated to the targets reaches (mean, sd)."""
    bases = {k: Q.to(H.device, dtype) for k, Q in update_bases(H, W, factors).items()}
    Wd, Hd = W.to(dtype), H.to(dtype)
    V = W.size(0)
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(V, generator=gen).to(H.device) for _ in range(null_perms)]
    g2 = t1 = 0.0
    null = [0.0] * null_perms
    XH = torch.zeros(bases['H_'].size(1), V, dtype=dtype, device=H.device)       # Q_Hᵀ G
    XK = torch.zeros(bases['K_'].size(1), V, dtype=dtype, device=H.device)       # Q_Kᵀ G
    S = torch.zeros_like(Wd)                                                     # (V, D): Gᵀ H
    gW2 = gWWtW = 0.0
    WtW = Wd.T @ Wd
    for i, j in _chunks(len(H), chunk):
        G = _grad_block(H, targets, W, bias, i, j, dtype)[1]                     # (n, V)
        g2 += G.pow(2).sum().item()
        t1 += (G @ bases['W_']).pow(2).sum().item()
        for p, perm in enumerate(perms):
            null[p] += (G @ bases['W_'][perm]).pow(2).sum().item()
        XH += bases['H_'][i:j].T @ G
        XK += bases['K_'][i:j].T @ G
        S += G.T @ Hd[i:j]
        M = G @ Wd                                                               # (n, D): the rows of G W
        gW2 += M.pow(2).sum().item()
        gWWtW += ((M @ WtW) * M).sum().item()
    t2 = (XH @ bases['B_']).pow(2).sum().item() - (XH @ bases['W_']).pow(2).sum().item()
    t3 = XK.pow(2).sum().item() - (XK @ bases['B_']).pow(2).sum().item()
    dW = head_update(S, factors)
    # inner products of G, U_H = G W Wᵀ and U_W = H ΔWᵀ from D-sized factors: no N×V product is formed
    gram = torch.tensor([[gWWtW, (Wd @ (Wd.T @ S) * dW).sum().item()],
                         [0.0, ((dW @ (Hd.T @ Hd)) * dW).sum().item()]], dtype=torch.float64)
    gram[1, 0] = gram[0, 1]
    v = torch.tensor([gW2, (S * dW).sum().item()], dtype=torch.float64)
    norms = gram.diagonal().clamp_min(1e-300).sqrt()
    best = (v @ torch.linalg.pinv(gram) @ v).clamp_min(0).item()
    rank = bases['W_'].size(1)
    chance = [x / g2 * V / rank for x in null]
    return {'realizable_share': min(1.0, (t1 + t2 + t3) / g2), 'realizable_rank': update_rank(bases),
            'c_H': (v[0] / (norms[0] * math.sqrt(g2))).item(),
            'c_W': (v[1] / (norms[1] * math.sqrt(g2))).item(),
            'c_star': min(1.0, math.sqrt(best / g2)),
            'visible_over_chance_null': {'mean': sum(chance) / len(chance),
                                         'sd': float(torch.tensor(chance).std()) if len(chance) > 1 else 0.0,
                                         'perms': null_perms}}


@torch.no_grad()
def direction_test(H, targets, W, bias=None, chunk=512, dtype=torch.float64, step_sizes=STEP_SIZES,
                   factors=None):
    """Loss decrease of equal-norm logit steps Z − ε√N·u/‖u‖ (ours) along
        u = G                   the direct logit gradient,
        u = G W Wᵀ              what a gradient step on each token's hidden state realizes (Δh_i = −η g_i W),
        u = G W Wᵀ + H ΔWᵀ      hidden states plus the head's own step, ΔW = head_update(Gᵀ H / N).
    Each hidden state is a per-token input and takes its own token's gradient; the head is shared, so its step
    is that of the mean loss, Gᵀ H / N, made through the head's own parameters (factors = (B, A) when
    W = B·A). The hidden-state figure does not depend on N; the head's does, as a shared update must: the more
    distinct targets a batch holds, the smaller each row's share (compare models at equal N; the N used is
    reported). ε is the per-token RMS size of the step. Three passes over G: the head's gradient, the
    directions' norms, the losses."""
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
            dtype=torch.float64, factors=None, step_tokens=1024):
    """Everything, from final hidden states H (N, D), targets (N,) and the effective output matrix W (V, D);
    factors = (B, A, A trained) when W = B·A (a factorized head: its own update enters the direction test,
    the realizable share and the Eckart–Young rank). The realizable share, c_H, c_W, c* and the null are
    taken on the first step_tokens tokens: one training step's (they depend on N)."""
    H, W = H.float(), W.detach().float()
    bias = None if bias is None else bias.detach().float()
    if factors is not None:
        factors = (factors[0].detach().float(), factors[1].detach().float(), bool(factors[2]))
    V, D = W.shape
    total, visible, loss, rank = per_token(H, targets, W, bias, chunk, dtype)
    frac = (visible.sum() / total.sum()).clamp(0, 1).item()
    r_tok = (1 - visible / total).clamp(0, 1).sqrt()
    out = {'n_tokens': len(H), 'V': V, 'D': D, 'rank_W': rank, 'loss': loss,
           'destroyed_ratio': math.sqrt(1 - frac), 'visible_cosine': math.sqrt(frac),
           'random_baseline': math.sqrt(1 - rank / V), 'visible_over_chance': frac * V / rank,
           'per_token': {'mean': r_tok.mean().item(),
                         **{f'q{int(100 * q):02d}': r_tok.quantile(q).item() for q in QUANTILES}}}
    if step_tokens > 0:
        n = min(step_tokens, len(H))
        out['step'] = {'n_tokens': n, **realizable(H[:n], targets[:n], W, bias, factors, chunk, dtype)}
    if spectrum_tokens > 0:
        n = min(spectrum_tokens, len(H))
        sig2 = spectrum(H[:n], targets[:n], W, bias, chunk, dtype)
        ey_k = update_rank(update_bases(H[:n], W, factors))
        out['spectrum'] = {'n_tokens': n, **spectrum_stats(sig2, rank, top_k, ey_k=ey_k)}
        out.update(ey_floor=out['spectrum']['ey_floor'], ey_k=out['spectrum']['ey_k'])
        out['_sig2'] = sig2  # for --plot; not written to JSON
    if direction_tokens > 0:
        n = min(direction_tokens, len(H))
        out['direction'] = {'n_tokens': n, 'steps': direction_test(H[:n], targets[:n], W, bias, chunk, dtype,
                                                                   factors=factors)}
        first = out['direction']['steps'][0]  # the smallest step: the first-order figure
        out['direction'].update(ratio_hidden=first['ratio_hidden'],
                                ratio_hidden_head=first['ratio_hidden_head'])
    return out

# -----------------------------------------------------------------------------
# where the hidden states come from: a train.py checkpoint, a fresh model, or a Hugging Face LM

def batches_from(data_cfg, c, n_batches, block, device):
    """(x, y) batches of a train.py config's data: held-out split for text, fresh draws for SpamLang."""
    data = textdata.load_data(data_cfg)
    gen = spamlang.make_generator(c['seed'] + 12345)
    batches = [textdata.get_batch(data, 'val', c['batch_size'], block, gen, device)
               for _ in range(n_batches)]
    return data, batches


def head_factors(lm_head):
    """(B, A, A trained) of a factorized head (its real rows only), None for a plain one."""
    if not hasattr(lm_head, 'A'):
        return None
    return lm_head.B[:lm_head.vocab_size], lm_head.A, isinstance(lm_head.A, torch.nn.Parameter)


@torch.no_grad()
def hidden_of_gpt(model, batches):
    H, Y = [], []
    for x, y in batches:
        H.append(model.hidden(x).reshape(-1, model.config.n_embd))
        Y.append(y.reshape(-1))
    return torch.cat(H), torch.cat(Y)


def source_ckpt(c, device):
    path = c['ckpt']
    ck = checkpoint.load_checkpoint(path)  # verified against its digest, as train.py's resume does
    saved = ck['config']
    try:
        model = checkpoint.model_from_checkpoint(ck)
    except Exception as e:
        why = f"{path} is not a readable train.py checkpoint ({type(e).__name__}: {e})"
        raise ConfigError(why.splitlines()[0])
    model.to(device).eval()
    block = c['block_size'] or saved['block_size']
    if block > saved['block_size']:
        raise ConfigError(f"--block_size={block} exceeds the checkpoint's block_size {saved['block_size']}")
    data_cfg = {**saved, 'data': c['data'] or saved['data']}
    data, batches = batches_from(data_cfg, c, -(-c['n_tokens'] // (c['batch_size'] * block)), block, device)
    if data['vocab_size'] != saved['vocab_size']:
        raise ConfigError(f"--data has V = {data['vocab_size']:,} "
                          f"but the checkpoint's model has V = {saved['vocab_size']:,}")
    H, Y = hidden_of_gpt(model, batches)
    desc = (f"checkpoint {path} (iter {ck.get('iter_num', '?')}, {saved['head']} head, "
            f"data {data_cfg['data']})")
    accumulation = saved.get('gradient_accumulation_steps') or 1
    per_step = saved.get('batch_size', 0) * saved['block_size'] * accumulation  # 0: unknown
    about = dict(source=desc, head=saved['head'], iter=ck.get('iter_num'), data=data_cfg['data'],
                 step_tokens=per_step)
    return H, Y, model.lm_head.effective_weight(), None, head_factors(model.lm_head), about


def source_init(c, device):
    block = c['block_size'] or 32
    cfg = dict(vocab_size=c['vocab_size'], n_embd=c['n_embd'], n_layer=c['n_layer'], n_head=c['n_head'],
               block_size=block, head=c['head'], head_rank=c['head_rank'])
    data_cfg = {'data': c['data'] or 'spamlang', 'vocab_size': c['vocab_size'], 'block_size': block,
                'encoding': 'cl100k_base'}
    torch.manual_seed(c['seed'])
    data, batches = batches_from(data_cfg, c, -(-c['n_tokens'] // (c['batch_size'] * block)), block, device)
    cfg['vocab_size'] = data['vocab_size']
    check_config(GPTConfig(**cfg))
    torch.manual_seed(c['seed'])
    model = GPT(GPTConfig(**cfg)).to(device).eval()
    H, Y = hidden_of_gpt(model, batches)
    rank = getattr(model.lm_head, 'rank', None)
    desc = f"fresh init, {c['head']} head{f' (r = {rank})' if rank else ''}, data {data_cfg['data']}"
    about = dict(source=desc, head=c['head'], iter=0, data=data_cfg['data'])
    return H, Y, model.lm_head.effective_weight(), None, head_factors(model.lm_head), about


def load_hf(name, device='cpu'):
    """(model, tokenizer, W, bias): W (V, D) is the model's own output matrix, cut to the tokenizer's V (the
    rows beyond it are padding); tied or untied, the same tensor the model multiplies by."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("--hf needs the transformers package: pip install transformers")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name)
        model = transformers.AutoModelForCausalLM.from_pretrained(name)
    except Exception as e:
        raise ConfigError(f"cannot load {name!r} with transformers ({type(e).__name__}: {e})".splitlines()[0])
    model.float().to(device).eval()  # fp32 whatever the stored dtype (Pythia ships fp16)
    out = model.get_output_embeddings()
    if out is None or not hasattr(out, 'weight'):
        raise ConfigError(f"{name}: the model exposes no linear output embedding (get_output_embeddings)")
    V = min(len(tok), out.weight.size(0))
    bias = getattr(out, 'bias', None)
    return model, tok, out.weight[:V], None if bias is None else bias[:V]


@torch.no_grad()
def hf_hidden(model, x, W, bias):
    """Final hidden states (B, T, D), the final norm applied: the input of the output matrix. Checked against
    the model's own logits at the last position, so a model whose logits are not H Wᵀ (+ b) is refused."""
    try:
        out = model(x, output_hidden_states=True, logits_to_keep=1)
    except TypeError:  # older models without logits_to_keep
        out = model(x, output_hidden_states=True)
    H = out.hidden_states[-1]
    ours = H[:, -1] @ W.T + (0 if bias is None else bias)
    theirs = out.logits[:, -1, :W.size(0)]
    if not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * theirs.abs().max().item()):
        raise ConfigError("the model's logits are not (last hidden state) @ W.T: "
                           "unsupported head (softcapping, scaling or a nonlinear head)")
    return H


def source_hf(c, device):
    model, tok, W, bias = load_hf(c['hf'], device)
    V = W.size(0)
    ctx = getattr(model.config, 'max_position_embeddings', None) or getattr(model.config, 'n_positions', 1024)
    block = c['block_size'] or min(1024, ctx)
    if block > ctx:
        raise ConfigError(f"--block_size={block} exceeds {c['hf']}'s context, {ctx} positions: give ≤ {ctx}")
    n_seq = -(-c['n_tokens'] // block)
    if c['data'] in ('', 'spamlang'):
        gen = spamlang.make_generator(c['seed'] + 12345)
        xs, ys = spamlang.get_batch(n_seq, block, V, gen)
        what = 'SpamLang'
    else:
        if not os.path.isfile(c['data']):
            raise ConfigError(f"data file {c['data']!r} not found: pass a .txt file or --data=spamlang")
        text = textdata.read_text(c['data'])  # --hf tokenizes text itself: a token file is refused as binary
        ids = tok(text, return_tensors='pt', verbose=False)['input_ids'][0]
        if len(ids) < block + 1:
            raise ConfigError(f"{c['data']} has {len(ids):,} tokens, fewer than block_size + 1 = {block + 1}")
        n_seq = min(n_seq, (len(ids) - 1) // block)  # consecutive windows from the start of the text
        xs = torch.stack([ids[k * block:(k + 1) * block] for k in range(n_seq)])
        ys = torch.stack([ids[k * block + 1:(k + 1) * block + 1] for k in range(n_seq)])
        what = c['data']
    if int(ys.max()) >= V:
        raise ConfigError(f"token id {int(ys.max())} ≥ the output matrix's V = {V}")
    H, Y = [], []
    for i in range(0, n_seq, c['batch_size']):
        x, y = xs[i:i + c['batch_size']].to(device), ys[i:i + c['batch_size']].to(device)
        H.append(hf_hidden(model, x, W, bias).reshape(-1, W.size(1)))
        Y.append(y.reshape(-1))
    tied = W.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    desc = f"{c['hf']} ({type(model).__name__}, {'tied' if tied else 'untied'} head), data {what}"
    about = dict(source=desc, head='tied' if tied else 'untied', iter=None, data=what)
    return torch.cat(H), torch.cat(Y), W, bias, None, about

# -----------------------------------------------------------------------------
# command line

def parse_args(argv):
    c, given = options.parse_args(argv, DEFAULTS, __file__, types=dict(head_rank=int),
                                  choices=dict(dtype=('float64', 'float32')))
    if sum(map(bool, (c['ckpt'], c['hf'], c['init']))) != 1:
        raise ConfigError("say what to measure: exactly one of --ckpt=PATH, --hf=NAME or --init")
    model_flags = sorted(given & {'vocab_size', 'n_embd', 'n_layer', 'n_head', 'head', 'head_rank'})
    if model_flags and not c['init']:  # a checkpoint or a HF model brings its own shape
        raise ConfigError(f"--{model_flags[0]} builds the model of --init only: drop it")
    if c['init'] and c['vocab_size'] < 2:
        raise ConfigError(f"--vocab_size must be at least 2, got {c['vocab_size']}")
    if 'vocab_size' in given and c['data'] not in ('', 'spamlang') and c['data'].split(':')[0] != 'hmm':
        raise ConfigError("--vocab_size: text takes V from its tokenizer (cl100k_base); drop --vocab_size")
    options.positive(c, 'n_tokens', 'batch_size', 'chunk', 'top_k')
    # 0: step_tokens and block_size their defaults, the spectrum and the direction test off
    options.positive(c, 'step_tokens', 'block_size', 'spectrum_tokens', 'direction_tokens', zero_ok=True)
    if c['plot'] and not c['spectrum_tokens']:
        raise ConfigError("--plot draws G's spectrum: give --spectrum_tokens > 0, or drop --plot")
    if c['plot'] and c['plot'] == c['json_out']:
        raise ConfigError("--plot and --json_out name the same file: give each its own")
    if c['json_out']:  # output paths are checked before the work, not after it
        options.writable('json_out', c['json_out'], 'out/m.json')
    if c['plot']:
        try:
            import matplotlib  # noqa: F401  (optional: only --plot needs it)
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install matplotlib")
        import plot
        plot.figure_path('plot', c['plot'], 'out/m.png')
    c['device'] = str(runtime.pick_device(c['device'], auto=('cuda', 'cpu')))
    return c


def report(m, desc, seconds):
    """The readable table."""
    print(f"{desc}\nN = {m['n_tokens']:,} tokens, V = {m['V']:,}, D = {m['D']}, rank(W) = {m['rank_W']}, "
          f"loss {m['loss']:.4f}, {seconds:.1f} s")
    print(f"  destroyed ratio r    {m['destroyed_ratio']:.4f}    (random {m['rank_W']}-dim subspace: "
          f"√(1 − rank/V) = {m['random_baseline']:.4f})")
    print(f"  visible cosine c     {m['visible_cosine']:.4f}    "
          f"(visible energy c² = {m['visible_over_chance']:.2f}× chance, rank/V)")
    pt = m['per_token']
    print("  per-token r          mean {:.4f}, quantiles 5/25/50/75/95%: {}".format(
        pt['mean'], ' / '.join(f"{pt[f'q{int(100 * q):02d}']:.4f}" for q in QUANTILES)))
    if 'spectrum' in m:
        s, r = m['spectrum'], m['rank_W']
        print(f"  spectrum of G ({s['n_tokens']:,} tokens): numerical rank {s['numerical_rank']:,}, "
              f"effective rank {s['effective_rank']:.1f}")
        print(f"    energy in top r = {r}: {s['energy_top_r']:.4f}, "
              f"top 2r = {2 * r}: {s['energy_top_2r']:.4f}, "
              f"top k = {s['top_k']}: {s['energy_top_k']:.4f}  (r = rank(W))")
        counts = ', '.join(f"{100 * l:g}%: {s[f'components_{l:g}']:,}" for l in ENERGY_LEVELS)
        print("    components for {}".format(counts))
        print(f"    Eckart–Young floor Σ_(i>k) σ² / Σ σ² at k = {s['ey_k']} (the largest rank of a "
              f"first-order step): {s['ey_floor']:.4f}")
    if 'step' in m:
        s = m['step']
        null = s['visible_over_chance_null']
        print(f"  one step ({s['n_tokens']:,} tokens): realizable share of ‖G‖² {s['realizable_share']:.4f} "
              f"(hidden states and head, first order; rank ≤ {s['realizable_rank']})")
        print(f"    cos(−G, step): hidden states c_H {s['c_H']:.4f}, head c_W {s['c_W']:.4f}, best mix c* "
              f"{s['c_star']:.4f}")
        print(f"    visible energy over chance with the rows of W permuted (the null): {null['mean']:.2f} "
              f"± {null['sd']:.2f} ({null['perms']} draws)")
    if 'direction' in m:
        d = m['direction']
        print(f"  direction test ({d['n_tokens']:,} tokens): loss decrease of equal-norm logit steps")
        print(f"    {'step ε':>8s} {'along G':>11s} {'hidden':>11s} {'hidden+head':>11s} "
              f"{'ratio H':>9s} {'ratio H+W':>9s}")
        print("    (ratio = decrease / decrease along G; hidden+head: each head's own parameter step)")
        for row in d['steps']:
            print(f"    {row['step']:8g} {row['decrease_G']:11.3e} {row['decrease_H']:11.3e} "
                  f"{row['decrease_HW']:11.3e} {row['ratio_hidden']:9.4f} {row['ratio_hidden_head']:9.4f}")


def draw(m, path):
    import matplotlib  # optional; parse_args has checked that it is there
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sig2, D, r = m['_sig2'], m['D'], m['rank_W']
    energy = (sig2.cumsum(0) / sig2.sum()).cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(energy) + 1), energy, label='cumulative σ² of G')
    for k, style, name in ((r, '--', 'r = rank(W)'), (2 * r, ':', '2r')):
        ax.axvline(k, color='k', ls=style, lw=1, label=f'{name} = {k}')
    floor = m['spectrum']['ey_floor']
    ax.axhline(1 - floor, color='r', lw=1, label=f"top-{m['ey_k']} energy = 1 − floor ({floor:.3f})")
    ax.set(xscale='log', xlabel='components', ylabel='energy fraction', ylim=(0, 1.01),
           title=f"V = {m['V']:,}, D = {D}, N = {m['spectrum']['n_tokens']:,}")
    ax.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    c = parse_args(argv)
    t0 = time.time()
    source = source_ckpt if c['ckpt'] else source_hf if c['hf'] else source_init
    H, Y, W, bias, factors, about = source(c, c['device'])
    n = min(c['n_tokens'], len(H))
    keep = Y[:n] >= 0
    step = c['step_tokens'] or about.get('step_tokens') or c['batch_size'] * (c['block_size'] or 32)
    m = measure(H[:n][keep], Y[:n][keep], W, bias, c['chunk'], c['spectrum_tokens'], c['direction_tokens'],
                c['top_k'], getattr(torch, c['dtype']), factors, step)
    report(m, about['source'], time.time() - t0)
    if c['json_out']:
        with open(c['json_out'], 'w') as f:
            record = {**about, **{k: v for k, v in m.items() if not k.startswith('_')}}  # V, D, rank_W in m
            json.dump(record, f, indent=1)
        print(f"wrote {c['json_out']}")
    if c['plot'] and 'spectrum' in m:
        draw(m, c['plot'])
        print(f"wrote {c['plot']}")
    return m


if __name__ == '__main__':
    options.one_line_errors()
    main(sys.argv[1:])
