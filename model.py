"""
The transformer and every LM head variant. The head is where the paper's gradient bottleneck lives:
a V×D output matrix W passes back to the backbone only G·W, the part of the logit gradient G (N×V)
that lies in W's D-dimensional column space.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=1024, n_embd=64, head='narrow', head_rank=4))
    logits, loss = model(idx, targets)          # (B, T, V), scalar
    W = model.lm_head.effective_weight()        # (V, D): what measure.py projects onto

Heads (chosen by name with --head=, see HEADS at the bottom):
    linear   plain untied V×D matrix
    tied     shares the token embedding wte
    narrow   factorized D→r→V, r = head_rank (default n_embd // 16): the paper's rank-r head
    wide     the same factorization with r = n_embd by default, so wide vs narrow differs only in r
A factorized head's A is trained (the paper's), fixed random or a fixed selector (head_basis=select: rank is
then the only difference from linear, which it equals at r = D). Heads beyond the paper, their controls and a
meter for any head: remedies.py, loaded only when named.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from options import ConfigError

PAD_MULTIPLE = 64  # V is padded up to a multiple of this for matmul speed; padded rows never reach a logit


@dataclass
class GPTConfig:
    vocab_size: int = 1024
    block_size: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = False
    head: str = 'linear'
    head_rank: int | None = None  # factorized heads only; None = the head's default rank
    head_basis: str = 'trained'  # factorized heads' A: trained | random (fixed) | select (fixed, r ≤ D)

    @property
    def padded_vocab_size(self):
        return -(-self.vocab_size // PAD_MULTIPLE) * PAD_MULTIPLE


MODEL_KEYS = tuple(GPTConfig.__dataclass_fields__)  # what a checkpoint's model is built from


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        hs = C // self.n_head
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

# -----------------------------------------------------------------------------
# LM heads. Each maps the final hidden state (B, T, D) to logits (B, T, V) and exposes effective_weight(),
# the V×D matrix W with logits = h Wᵀ. Weights are stored with V padded to a multiple of PAD_MULTIPLE;
# the padded rows are cut off before any softmax, so they get no probability mass and no gradient.

class LMHead(nn.Module):
    """Base class: a subclass stores its (Vp, D) matrix as `weight`, or overrides padded_weight()."""

    def __init__(self, config, transformer):
        super().__init__()
        self.vocab_size, self.n_embd = config.vocab_size, config.n_embd

    def padded_weight(self):  # (Vp, D)
        return self.weight

    def effective_weight(self):  # (V, D), the matrix measure.py projects onto
        return self.padded_weight()[:self.vocab_size]

    def forward(self, h):  # (B, T, D) -> (B, T, V)
        return F.linear(h, self.padded_weight())[..., :self.vocab_size]

    def fused_loss(self, h, targets, chunk_size=None):  # (N, D), (N,) -> scalar; no (N, V) logits
        return fused_linear_cross_entropy(h, self.padded_weight()[:self.vocab_size], targets, chunk_size)


class LinearHead(LMHead):
    """Plain untied V×D matrix, GPT-2 init N(0, 0.02)."""

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        self.weight = nn.Parameter(torch.randn(config.padded_vocab_size, config.n_embd) * 0.02)


class TiedHead(LMHead):
    """Shares its weight with the token embedding wte: one Parameter under two names, as in nanoGPT."""

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        self.weight = transformer.wte.weight


class FactorizedHead(LMHead):
    """W = B·A with A: r×D and B: Vp×r, no nonlinearity between them, so rank(W) ≤ r.

    Init (ours; README, Heads): A has orthonormal rows (r ≤ D) or columns (r > D), scaled so every column of A
    has unit norm on average; B ~ N(0, 0.02): each entry of B·A has std 0.02, the plain head's scale, at every
    r (naive N(0, 0.02) factors learn far slower even at r = D). head_basis=random keeps this A fixed;
    select fixes A = the first r rows of I: B·A is the plain head with D − r columns held at zero (at r = D
    the same parameters, init draw and Adam steps as LinearHead; logits start √(r/D) as large).
    """

    def __init__(self, config, transformer):
        super().__init__(config, transformer)
        self.rank = r = head_rank(config.head, config.n_embd, config.head_rank)
        D = config.n_embd
        if config.head_basis == 'select':
            self.register_buffer('A', torch.eye(D)[:r])
        else:
            A = torch.empty(r, D)
            nn.init.orthogonal_(A)
            A = A * math.sqrt(max(1.0, D / r))
            if config.head_basis == 'trained':
                self.A = nn.Parameter(A)
            else:
                self.register_buffer('A', A)
        self.B = nn.Parameter(torch.randn(config.padded_vocab_size, r) * 0.02)

    def padded_weight(self):
        return self.B @ self.A

    def forward(self, h):  # never forms the V×D product in the forward pass: D→r→V
        return F.linear(F.linear(h, self.A), self.B)[..., :self.vocab_size]

    def fused_loss(self, h, targets, chunk_size=None):
        # logits = (h Aᵀ) Bᵀ: fuse the loss over (h Aᵀ, B), cost N·V·r; autograd carries h Aᵀ back to h and A
        return fused_linear_cross_entropy(F.linear(h, self.A), self.B[:self.vocab_size], targets, chunk_size)


def head_rank(head, n_embd, rank=None):
    """r of a factorized head: rank if given, else its default: narrow n_embd // 16 (ours), at least 1;
    wide n_embd."""
    return rank or (max(1, n_embd // 16) if head == 'narrow' else n_embd)


class NarrowHead(FactorizedHead):
    """The paper's rank-r head. Default r = n_embd // 16 (ours: at the CPU preset, D = 64, r = 4 fails
    SpamLang where r = D succeeds; see README). The paper's narrowest is r = 32 at D ≈ 4096."""


class WideHead(FactorizedHead):
    """Full-rank factorization, r = n_embd by default; head_rank may also be set above n_embd."""


HEADS = {'linear': LinearHead, 'tied': TiedHead, 'narrow': NarrowHead, 'wide': WideHead}
FACTORIZED = {name for name, cls in HEADS.items() if issubclass(cls, FactorizedHead)}


def check_config(config):
    """Raise ConfigError (a ValueError), a one-line message naming the problem and the fix; else the head."""
    for key in ('block_size', 'n_layer', 'n_head', 'n_embd'):
        if getattr(config, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(config, key)}")
    cls = HEADS.get(config.head)
    if cls is None:
        import remedies
        cls = remedies.HEADS.get(config.head)
    if cls is None:
        raise ConfigError(f"unknown head {config.head!r}: choose one of {', '.join(HEADS)} or remedies.HEADS")
    if config.head_rank is not None:
        if not (issubclass(cls, FactorizedHead) or getattr(cls, 'takes_rank', False)):
            raise ConfigError(f"head_rank applies only to factorized heads, not to --head={config.head}: "
                              "drop --head_rank")
        if not isinstance(config.head_rank, int) or config.head_rank <= 0:
            raise ConfigError(f"head_rank must be a positive integer, got {config.head_rank!r}")
    if config.head_basis not in ('trained', 'random', 'select'):
        raise ConfigError(f"head_basis must be trained, random or select, got {config.head_basis!r}")
    if config.head_basis != 'trained' and config.head not in FACTORIZED:  # the paper's factorized heads
        raise ConfigError(f"head_basis={config.head_basis} applies only to factorized heads: drop it")
    rank = head_rank(config.head, config.n_embd, config.head_rank)
    if config.head_basis == 'select' and rank > config.n_embd:
        raise ConfigError(f"head_basis=select picks r ≤ n_embd coordinates, got r = {rank} > {config.n_embd}")
    if config.vocab_size < 2:
        raise ConfigError(f"vocab_size must be at least 2, got {config.vocab_size}")
    if config.n_embd % config.n_head:
        raise ConfigError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    return cls

# -----------------------------------------------------------------------------

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        head = check_config(config)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.apply(self._init_weights)  # GPT-2 init; heads below set their own
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):  # residual projections, scaled per GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.lm_head = head(config, self.transformer)
        self.fused = False  # train.py's --loss=fused: the training loss without the (B, T, V) logits

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden(self, idx):  # (B, T) -> (B, T, D): the final hidden state the head reads
        B, T = idx.size()
        if T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None):
        """(logits (B, T, V), loss). With self.fused and targets: the loss without the logits (None), see
        fused_linear_cross_entropy."""
        x = self.hidden(idx)  # (B, T, D)
        if targets is not None and self.fused:
            return None, self.lm_head.fused_loss(x, targets)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        # the loss: fp32 logits even under bf16 autocast; targets of -1 are ignored
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, head_lr_mult=1.0):
        # decay matrices only (≥ 2-D: attention/MLP weights, embeddings, head factors), not gains or biases;
        # lr_mult: the training loop sets each group's lr to the schedule's × this (the head's: head_lr_mult)
        head = {id(p) for p in self.lm_head.parameters()}  # tied: the shared embedding counts as the head
        params = [p for p in self.parameters() if p.requires_grad]
        groups = []
        for in_head, lr_mult in ((False, 1.0), (True, head_lr_mult)):
            mine = [p for p in params if (id(p) in head) == in_head]
            matrices = [p for p in mine if p.dim() >= 2]
            others = [p for p in mine if p.dim() < 2]
            groups.append({'params': matrices, 'weight_decay': weight_decay, 'lr_mult': lr_mult})
            groups.append({'params': others, 'weight_decay': 0.0, 'lr_mult': lr_mult})
        groups = [g for g in groups if g['params']]
        fused = device_type == 'cuda'
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self):
        """Forward + backward FLOPs per token (PaLM, appendix B): 6 per weight that takes part in a matmul
        (the blocks and the head; not the embedding lookups, which are reads) + 12·L·T·D for attention."""
        cfg = self.config
        blocks = sum(p.numel() for p in self.transformer.h.parameters() if p.dim() == 2)
        rank = getattr(self.lm_head, 'rank', None)
        head = cfg.vocab_size * cfg.n_embd if rank is None else rank * (cfg.n_embd + cfg.vocab_size)
        head = getattr(self.lm_head, 'matmul_weights', head)  # heads beyond the paper count their own
        return 6 * (blocks + head) + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Continue idx (B, T) by max_new_tokens sampled tokens, each from softmax(logits / temperature) cut
        to the top_k most likely (temperature 0: greedy). Returns (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size:])[0][:, -1, :].float()  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.size(-1):
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float('-inf'))
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# -----------------------------------------------------------------------------
# the loss: naive (GPT.forward, the reference) or fused (fused_loss.py). --loss=auto takes fused from the
# smallest V at which it made a training step ≥ 5% faster (bench.py; None: at no V measured; mps: naive).
# Measured 2026-12-04 (README, Measured): cpu on 2 cores, torch 2.13 (fused/naive tokens/s at V = 2,048,
# 8,192, 32,768: eager 1.01, 1.28, 1.75, compiled 1.00, 0.99, 1.62); cuda on one H200, torch 2.11 (V = 16,384:
# 0.77 eager, 0.76 compiled).
FUSED_FROM_VOCAB = {('cpu', False): 8192, ('cpu', True): 32768, ('cuda', False): None, ('cuda', True): None}


def default_loss(device_type, vocab_size, compiled):
    smallest = FUSED_FROM_VOCAB.get((device_type, compiled))
    return 'fused' if smallest is not None and vocab_size >= smallest else 'naive'


def fused_linear_cross_entropy(h, W, targets, chunk_size=None):
    """loss = F.cross_entropy(h Wᵀ, targets, ignore_index=-1) without the (N, V) logits (--loss=fused):
    fused_loss.py, imported at the first call, so a run on the naive loss never loads it."""
    import fused_loss
    return fused_loss.linear_cross_entropy(h, W, targets, chunk_size)
