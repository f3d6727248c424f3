"""
Heads beyond the paper: can the output layer let more of the gradient through? (arXiv 2603.10145 asks and
leaves it open.) Each candidate, its controls and twins, chosen like the paper's heads with --head=NAME;
model.py imports this file only when --head names one of them, so `python train.py --head=wide` never reads
it. And head_meter, the gradient meter for any head.

    python train.py --head=mlp               # u = W·gelu(A·h), D → 4D → V
    python train.py --head=blocks            # the head reads the last two blocks side by side

Every head that reads one D-dim hidden state h_t has a per-token Jacobian J_t = ∂u_t/∂h_t of rank ≤ D: none
sends more than D numbers per token back. A head can change which projection of g_t survives (whiten,
sigsoftmax, mlp, mos: J_t varies), how large the batch's realizable update is (overparam, mlp), or read more
than one hidden state (blocks, K = 2: channel 2D). The logit scale at init is matched to the linear head's
(0.02·√D on unit-variance inputs) for every head (match_scale). Per-token costs, in multiply-adds of the
forward pass (V vocabulary, D width, M = 4D, K blocks or mixtures):

    whiten      V·D, backward + D² (one D×D solve per step)     the linear head, g_t·W(WᵀW + λI)⁻¹ sent back
    overparam   r·(D + V), r = 4D                               W = B·A, both trained
    blocks      2D·V (+ a LayerNorm)                            reads [h_L, h_{L−1}]: channel 2D
    blocks_sg   the same                                        h_{L−1} detached: the same forward, one path
    blocksum    D·V                                             reads h_L + h_{L−1}: channel D (a control)
    mlp         M·D + M·V                                       u = W·gelu(A·h)
    prehead     2·M·D + D·V                                     u = W·C·gelu(A·h): extra compute, col(W) only
    mos         K·D² + K·D·V (+ K·V exp)                        K = 4 softmaxes mixed (arXiv 1711.03953)
    mos1        D² + D·V                                        the same with K = 1 (its control)
    sigsoftmax  D·V (+ V)                                       u = z + log σ(z), z = W·h (arXiv 1805.10829)

None has a fused loss: their loss comes from their logits (--loss=fused computes the same number).
GPT.flops_per_token (MFU, estimate.py) counts each head's own matmul weights (matmul_weights). train.py's live
meter reads effective_weight(): for heads whose Jacobian varies per token (mlp, prehead, mos, mos1,
sigsoftmax) that is their last matrix W, so its grad_destroyed is the share of G outside col(W), not what
reaches h. head_meter below is exact for every head.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import meter
from options import ConfigError

WHITEN_EPS = 1e-3   # ours: whiten's ridge λ = WHITEN_EPS · tr(WᵀW)/D keeps the solve well posed
MLP_MULT = 4        # ours: the hidden width M of mlp and prehead, × D
MOS_MIXTURES = 4    # ours: K of mos
MOS_CHUNK = 1024    # tokens whose K softmaxes are held at once (recomputed in the backward pass)
SCALE_TOKENS = 512  # unit-variance inputs that match_scale measures the logit scale on
JACOBIAN_FLOATS = 2**24  # per-token Jacobians (n·V·k floats) held at once by the meter


class RemedyHead(nn.Module):
    """Base, with model.LMHead's interface (model.py imports this file, so it cannot import model.py): its
    V×k matrix is `weight`, stored with V padded as model.GPTConfig pads it; the loss comes from its logits.
    inputs(h) is what it reads (the meter's variables); forward(*inputs) its logits; jacobian() the V×k
    matrix J with J_t = J for every token, or None when J_t varies per token."""
    moves = None  # how many of the inputs (the first ones) a gradient step can move; None: all
    same_inputs = False  # match_scale: one draw for every input (blocks: at init h_L ≈ ln(x_{L−1}))

    def __init__(self, config, transformer):
        super().__init__()
        self.vocab_size, self.n_embd = config.vocab_size, config.n_embd

    def padded_weight(self):
        return self.weight

    def effective_weight(self):  # (V, k): the matrix the logits are read from (train.py's live meter)
        return self.padded_weight()[:self.vocab_size]

    def inputs(self, h):
        return (h,)

    def jacobian(self):
        return self.effective_weight()

    def fused_loss(self, h, targets, chunk_size=None):
        logits = self(h)
        logits = logits.float().reshape(-1, logits.size(-1))
        return F.cross_entropy(logits, targets.reshape(-1), ignore_index=-1)

    def match_scale(self, weight):
        """Scale `weight` (the last matrix before the logits) so that the logits of unit-variance inputs
        have the linear head's std at init, 0.02·√D."""
        if weight.is_meta:  # estimate.py counts parameters on the meta device: nothing to measure there
            return
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            xs = [torch.randn(SCALE_TOKENS, x.size(-1), generator=gen) for x in self.example_inputs()]
            xs = [xs[0]] * len(xs) if self.same_inputs else xs
            for _ in range(3):  # log p (mos) is not linear in the scale: a few rounds
                weight.mul_(0.02 * math.sqrt(self.n_embd) / self(*xs).float().std().item())

    def example_inputs(self):
        return (torch.zeros(1, self.n_embd),)

    @property
    def matmul_weights(self):  # GPT.flops_per_token: the weights a token's logits multiply (V padded)
        return sum(p.numel() for p in self.parameters() if p.dim() == 2)


class _Whiten(torch.autograd.Function):
    """logits = h Wᵀ; the backward pass sends g W (WᵀW + λI)⁻¹ to h, the least-squares preimage of g's part
    in col(W), instead of g W; W's own gradient is unchanged."""

    @staticmethod
    def forward(h, W, eps):
        return F.linear(h, W)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, W, eps = inputs
        ctx.save_for_backward(h, W)
        ctx.save_for_forward(h, W)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, g):
        h, W = ctx.saved_tensors
        gram = (W.T.float() @ W.float()).double()                                       # (D, D)
        lam = ctx.eps * gram.diagonal().sum() / len(gram)
        gram = gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        g = g.to(torch.promote_types(h.dtype, W.dtype))  # under autocast g is bf16/fp16, h and W are not
        gh = g @ W.to(g.dtype)                                                         # (..., D)
        dh = torch.linalg.solve(gram, gh.reshape(-1, gh.size(-1)).T.double()).T      # gram is symmetric
        dW = g.reshape(-1, g.size(-1)).T @ h.reshape(-1, h.size(-1)).to(g.dtype)
        return dh.to(h.dtype).view_as(h), dW.to(W.dtype), None

    @staticmethod
    def jvp(ctx, h_t, W_t, _):  # forward mode (the meter's U_H and U_θ): the linear map's; None: no tangent
        h, W = ctx.saved_tensors
        parts = [F.linear(h_t, W) if h_t is not None else None, F.linear(h, W_t) if W_t is not None else None]
        return sum(p for p in parts if p is not None)


class WhitenHead(RemedyHead):
    """The plain V×D head, init N(0, 0.02); only its backward pass to h differs (_Whiten). It changes which
    projection of g_t reaches h (W's conditioning no longer scales it), not the rank."""

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        self.weight = nn.Parameter(torch.randn(config.padded_vocab_size, config.n_embd) * 0.02)

    def forward(self, h):
        return _Whiten.apply(h, self.effective_weight(), WHITEN_EPS)


class OverparamHead(RemedyHead):
    """W = B·A with r = 4D by default (--head_rank), both trained: the plain head's function class, set up
    like model.FactorizedHead (A with orthonormal columns, B ~ N(0, 0.02): B·A has the plain head's scale).
    Its first-order logit change has rank ≤ 2D like the plain head's, not min(2D, r) + D = 3D
    (measure.update_rank: the B- and A-terms share col(H)); what changes is the geometry of the step."""
    takes_rank = True  # model.check_config lets --head_rank through

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        D = config.n_embd
        self.rank = config.head_rank or MLP_MULT * D
        A = torch.empty(self.rank, D)
        nn.init.orthogonal_(A)
        self.A = nn.Parameter(A * math.sqrt(max(1.0, D / self.rank)))
        self.B = nn.Parameter(torch.randn(config.padded_vocab_size, self.rank) * 0.02)

    def padded_weight(self):
        return self.B @ self.A

    def forward(self, h):
        return F.linear(F.linear(h, self.A), self.B[:self.vocab_size])


class BlocksHead(RemedyHead):
    """Reads the final hidden state h_L and the output of the block before it, normalized by its own
    LayerNorm, side by side: u = W [h_L; ln(x_{L−1})], W: V×2D, J_t = W of rank ≤ 2D, a 2D-wide channel with
    two gradient paths into the trunk. The earlier output is caught by a forward hook on that block.
    detach: the same forward pass, the earlier input's gradient cut (blocks_sg); sum: the control
    u = W (h_L + ln(x_{L−1})) (blocksum, channel D)."""
    detach, sum, same_inputs = False, False, True

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        if config.n_layer < 2:
            raise ConfigError(f"--head={config.head} reads the last two blocks: it needs --n_layer ≥ 2")
        self.ln_e = nn.LayerNorm(config.n_embd, bias=config.bias)
        width = config.n_embd if self.sum else 2 * config.n_embd
        self.weight = nn.Parameter(torch.randn(config.padded_vocab_size, width) * 0.02)
        self.earlier = None
        transformer.h[-2].register_forward_hook(self.keep)
        self.match_scale(self.weight)

    def keep(self, module, args, out):
        self.earlier = out

    def inputs(self, h):
        e = self.ln_e(self.earlier.detach() if self.detach else self.earlier)
        return h, e

    def example_inputs(self):
        return torch.zeros(1, self.n_embd), torch.zeros(1, self.n_embd)

    def forward(self, h, e=None):
        if e is None:
            h, e = self.inputs(h)
        x = h + e if self.sum else torch.cat([h, e], dim=-1)
        return F.linear(x, self.effective_weight())

    def jacobian(self):  # with respect to (h, e) side by side
        W = self.effective_weight()
        return torch.cat([W, W], dim=1) if self.sum else W


class BlocksDetachedHead(BlocksHead):
    detach = True
    moves = 1  # a step moves h_L only: the earlier input's gradient is cut

    def jacobian(self):  # with respect to h_L, the one input whose gradient reaches the trunk
        return self.effective_weight()[:, :self.n_embd]


class BlockSumHead(BlocksHead):
    sum = True


class MLPHead(RemedyHead):
    """u = W·gelu(A·h), D → M → V, M = 4D: J_t = W·diag(gelu′(A h_t))·A varies per token, rank ≤ D; the
    batch's realizable update has rank ≤ 2M. A ~ N(0, 1/D), W scaled to the linear head's logit scale."""

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        M = MLP_MULT * config.n_embd
        self.A = nn.Parameter(torch.randn(M, config.n_embd) / math.sqrt(config.n_embd))
        self.weight = nn.Parameter(torch.randn(config.padded_vocab_size, M))
        self.match_scale(self.weight)

    def jacobian(self):
        return None

    def forward(self, h):
        return F.linear(F.gelu(F.linear(h, self.A)), self.effective_weight())


class PreheadHead(RemedyHead):
    """The compute control of mlp: a pre-head MLP h → C·gelu(A·h), D → M → D, then the plain V×D head. Its
    Jacobian's column space stays in col(W) (rank ≤ D); it adds the mlp head's extra computation."""

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        D, M = config.n_embd, MLP_MULT * config.n_embd
        self.A = nn.Parameter(torch.randn(M, D) / math.sqrt(D))
        self.C = nn.Parameter(torch.randn(D, M) / math.sqrt(M))
        self.weight = nn.Parameter(torch.randn(config.padded_vocab_size, D))
        self.match_scale(self.weight)

    def jacobian(self):
        return None

    def forward(self, h):
        return F.linear(F.linear(F.gelu(F.linear(h, self.A)), self.C), self.effective_weight())


class MoSHead(RemedyHead):
    """A mixture of K softmaxes (Yang et al. 2018, arXiv 1711.03953): p = Σ_k π_k(h) softmax(W tanh(P_k h)),
    π = softmax(Π h); its logits are u = log p (softmax(u) = p). log p is no longer a rank-D map of h, so
    no rank bound holds for the batch's update; J_t varies per token. MOS_CHUNK tokens at a time, each chunk
    recomputed in the backward pass: never K·N·V floats at once."""
    mixtures = MOS_MIXTURES

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        D, K = config.n_embd, self.mixtures
        self.prior = nn.Parameter(torch.randn(K, D) * 0.02) if K > 1 else None  # K = 1: no mixture
        self.P = nn.Parameter(torch.randn(K * D, D) / math.sqrt(D))
        self.weight = nn.Parameter(torch.randn(config.padded_vocab_size, D))
        self.match_scale(self.weight)

    def jacobian(self):
        return None

    @property
    def matmul_weights(self):  # W is applied once per mixture
        return super().matmul_weights + (self.mixtures - 1) * self.weight.numel()

    def mixture(self, h):  # (n, D) -> (n, V): log p
        K, W = self.mixtures, self.effective_weight()
        # against a (D, V) copy of W: on CPU at D = 8, MKL forms ∇W from it ~7× faster than from W's view
        z = torch.tanh(F.linear(h, self.P)).view(*h.shape[:-1], K, -1) @ W.t().contiguous()  # (n, K, V)
        if self.prior is None:
            return F.log_softmax(z[..., 0, :].float(), dim=-1)
        pi = F.softmax(F.linear(h, self.prior).float(), dim=-1)                             # (n, K)
        q = F.softmax(z.float(), dim=-1)                                                    # (n, K, V)
        with torch.autocast(h.device.type, enabled=False):  # mixed in fp32 under bf16 autocast too
            p = (pi.unsqueeze(-2) @ q).squeeze(-2)                                          # (n, V)
        # mixed as probabilities: half the passes over (n, K, V) that log space takes; p underflows
        # (held at the smallest normal float) only where every q_k does
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()

    def forward(self, h):
        flat = h.reshape(-1, h.size(-1))
        if flat.size(0) <= MOS_CHUNK or not torch.is_grad_enabled():
            out = torch.cat([self.mixture(c) for c in flat.split(MOS_CHUNK)])
        else:
            out = torch.cat([checkpoint(self.mixture, c, use_reentrant=False) for c in flat.split(MOS_CHUNK)])
        return out.view(*h.shape[:-1], -1)


class MoS1Head(MoSHead):
    mixtures = 1


class SigsoftmaxHead(RemedyHead):
    """sigsoftmax (Kanai et al. 2018, arXiv 1805.10829): u = z + log σ(z), z = W h, so softmax(u) ∝
    exp(z)·σ(z); J_t = diag(2 − σ(z_t))·W varies per token, rank ≤ D."""

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        self.weight = nn.Parameter(torch.randn(config.padded_vocab_size, config.n_embd))
        self.match_scale(self.weight)

    def jacobian(self):
        return None

    def forward(self, h):
        z = F.linear(h, self.effective_weight())
        return z + F.logsigmoid(z)


# heads whose forward pass, init and parameter gradients are another head's (only the gradient into the
# trunk differs): on a frozen trunk they fit exactly as that head does (reproduce.py reuses its fits)
SAME_FORWARD = {'whiten': 'linear', 'blocks_sg': 'blocks'}
HEADS = {'whiten': WhitenHead, 'overparam': OverparamHead, 'blocks': BlocksHead,
         'blocks_sg': BlocksDetachedHead, 'blocksum': BlockSumHead, 'mlp': MLPHead, 'prehead': PreheadHead,
         'mos': MoSHead, 'mos1': MoS1Head, 'sigsoftmax': SigsoftmaxHead}

# -----------------------------------------------------------------------------
# the meter for any head: what of the logit gradient G reaches the head's inputs, and what one step can do


def head_logits(head, inputs, params):
    """The head's logits (N, V) as a function of its inputs and its parameters (a dict), for autograd and
    forward-mode derivatives."""
    return torch.func.functional_call(head, params, inputs)


def jacobians(head, inputs, shift_invariant=False):
    """Per-token Jacobians J_t (n, V, k) of the logits with respect to the inputs side by side (k = Σ their
    widths), by forward-mode autodiff, one token at a time under vmap. shift_invariant: J_t with its mean over
    the V logits removed (logits that are log-probabilities are defined only up to a shift)."""
    params = {k: p.detach() for k, p in head.named_parameters()}
    widths = [x.size(-1) for x in inputs]

    def one(x):  # (k,) -> (V,)
        parts = x.split(widths)
        return head_logits(head, tuple(p.unsqueeze(0) for p in parts), params)[0]

    J = torch.func.vmap(torch.func.jacfwd(one))(torch.cat(inputs, dim=-1))          # (n, V, k)
    return J - J.mean(dim=1, keepdim=True) if shift_invariant else J


@torch.no_grad()
def visible_share(head, inputs, G, shift_invariant=False):
    """Σ_t v_tᵀ(J_tᵀJ_t)⁺v_t / Σ_t ‖g_t‖², v_t = J_tᵀg_t: the share of G's energy that reaches the head's
    inputs (for a linear head, ‖G Π_W‖²/‖G‖², the live meter's 1 − r²). Heads with one J for every token use
    meter.live_ratio's closed form; the others the per-token Jacobians."""
    J = head.jacobian() if isinstance(head, RemedyHead) else head.effective_weight()
    if J is not None:
        gsq = G.pow(2).sum(1)
        live = meter.live_ratio(G @ J.detach().float(), gsq, meter.head_factor(J), G.size(1))
        return live['grad_cosine'] ** 2
    visible = 0.0
    step = max(1, JACOBIAN_FLOATS // (G.size(1) * sum(x.size(-1) for x in inputs)))  # tokens at a time
    for i in range(0, G.size(0), step):
        Jt = jacobians(head, tuple(x[i:i + step] for x in inputs), shift_invariant).double()  # (n, V, k)
        v = torch.einsum('nvk,nv->nk', Jt, G[i:i + step].double())                             # (n, k)
        gram = Jt.transpose(1, 2) @ Jt                                                         # (n, k, k)
        # gram's eigenvalues are σ²: the meter's rank rule (σ < RANK_RTOL·σ_max is zero) cuts at RANK_RTOL²
        x = torch.linalg.pinv(gram, hermitian=True, rtol=meter.RANK_RTOL ** 2) @ v.unsqueeze(-1)
        visible += (v.unsqueeze(1) @ x).sum().item()
    return visible / G.double().pow(2).sum().item()


def head_meter(head, h, targets, tokens=256):
    """The meter for any head on the tokens of one batch (the first `tokens` with a target ≥ 0):
        visible_share   the share of ‖G‖² that reaches the inputs (visible_share; for mos, shift-invariant)
        c_H, c_theta    cos(−G, U_H), cos(−G, U_θ): U_H the first-order logit change of a gradient step on
                        the head's inputs alone, with the head's own backward pass (whiten's included), U_θ
                        of a step on its parameters alone; one backward pass and two forward-mode products
        c_star          max over a, b of cos(−G, a U_H + b U_θ)
    G = softmax(u) − onehot(y) (for mos, u = log p). SGD geometry: training uses Adam."""
    read = head.inputs(h) if isinstance(head, RemedyHead) else (h,)  # the paper's heads read h alone
    inputs = tuple(x.detach().reshape(-1, x.size(-1)) for x in read)
    y = targets.reshape(-1)
    keep = (y >= 0).nonzero().flatten()[:tokens]
    inputs = tuple(x[keep].float().requires_grad_(True) for x in inputs)
    y = y[keep]
    params = {k: p.detach().requires_grad_(True) for k, p in head.named_parameters() if p.requires_grad}
    u = head_logits(head, inputs, params).float()                                      # (n, V)
    G = (torch.softmax(u, dim=-1) - F.one_hot(y, u.size(-1))).detach()
    names = list(params)
    grads = torch.autograd.grad(u, [*inputs, *params.values()], G, allow_unused=True)
    zero = [torch.zeros_like(x) for x in [*inputs, *params.values()]]
    grads = [z if g is None else g for g, z in zip(grads, zero)]
    moves = getattr(head, 'moves', None) or len(inputs)
    d_in = [d if k < moves else torch.zeros_like(d) for k, d in enumerate(grads[:len(inputs)])]
    d_par = dict(zip(names, grads[len(inputs):]))
    fixed = {k: p.detach() for k, p in params.items()}
    xs = tuple(x.detach() for x in inputs)
    U_H = torch.func.jvp(lambda *a: head_logits(head, a, fixed), xs, tuple(-d for d in d_in))[1]
    step = {k: -d for k, d in d_par.items()}
    U_T = torch.func.jvp(lambda p: head_logits(head, xs, p), (fixed,), (step,))[1]
    g, a, b = (t.double().flatten() for t in (-G, U_H, U_T))
    gram = torch.stack([torch.stack([a @ a, a @ b]), torch.stack([a @ b, b @ b])])
    v = torch.stack([g @ a, g @ b])
    best = (v @ torch.linalg.pinv(gram) @ v).clamp_min(0).item()

    def cos(x):
        return (g @ x / (g.norm() * x.norm()).clamp_min(1e-300)).item()

    shift = isinstance(head, MoSHead)
    return {'visible_share': visible_share(head, xs[:moves], G, shift), 'c_H': cos(a), 'c_theta': cos(b),
            'c_star': min(1.0, math.sqrt(best) / g.norm().item()), 'tokens': len(y)}
