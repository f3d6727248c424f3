"""
A text-like synthetic language with an exact floor: a hidden Markov model whose every symbol belongs to one
hidden state, so the state is known from the last symbol. Unlimited tokens, drawn on the fly.

Our design (the paper, arXiv 2603.10145, uses real text and SpamLang; this language is ours): S states with a
Zipfian chain between them (row s of the transition matrix puts weight 1/k^a on its k-th most likely next
state, in an order drawn per row) and Zipfian emissions: the V − 1 symbols 1..V−1 are dealt to the S states
in equal groups (by a random permutation), and each state emits its group with weight 1/k^b on its k-th
symbol. Token 0 is BOS, as in SpamLang: every sequence starts with it, and the first state is drawn from the
chain's stationary distribution π, so the chain is stationary at every position.

The floor is exact. Since the next symbol y reveals the next state s', H(y | x) = H(s' | s(x)) + H(y | s'):
    entropy rate     = Σ_s π_s H(P[s, :]) + Σ_s π_s H(E[s, :])   (positions ≥ 1)
    first position   = H(π) + Σ_s π_s H(E[s, :])                 (predicting y_1 from BOS)
A model that sees the last symbol can reach it, and log p(y | x) = log P[s(x), s(y)] + log E[s(y), y] has
at most S distinct rows: its rank (≤ S + 1 with the first position's row) is a knob to set against the
model's width D and the head's rank r.

    python train.py --data=hmm --head=wide        # S = 64 states, V = --vocab_size
    python train.py --data=hmm:16 --head=narrow   # S = 16
    python hmm.py                                 # a few sequences and the floor at V = 1,024, S = 64
"""
import math

import torch

from options import ConfigError

BOS = 0
STATES = 64          # S of --data=hmm
CHAIN_EXPONENT = 1.0  # a: the transition rows' Zipf exponent (ours)
EMIT_EXPONENT = 1.0  # b: the emissions' Zipf exponent (ours)
LANGUAGE_SEED = 0    # the language itself is fixed; a run's --seed only draws its samples


def entropy(p):
    """Entropy in nats of each row of p (..., K)."""
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def zipf(n, exponent):
    w = torch.arange(1, n + 1, dtype=torch.float64) ** -exponent
    return w / w.sum()


class Language:
    """The language of V symbols (BOS included) and S states: transition P (S, S), emissions E (S, G) over
    each state's group of G = (V − 1) // S symbols (the remainder of V − 1 is never emitted), group (S, G)
    the symbol ids, state_of (V,) the state of each symbol (-1: BOS and unused ids), π (S,)."""

    def __init__(self, vocab_size, states=STATES, seed=LANGUAGE_SEED):
        if states < 2 or (vocab_size - 1) // states < 2:
            raise ValueError(f"the HMM language needs S ≥ 2 states of ≥ 2 symbols each: V = {vocab_size} "
                             f"gives {(vocab_size - 1) // max(states, 1)} per state for S = {states}; raise "
                             f"--vocab_size, or choose S from 2 to {(vocab_size - 1) // 2} (--data=hmm:S)")
        self.vocab_size, self.states = vocab_size, states
        g = torch.Generator().manual_seed(seed)
        order = torch.argsort(torch.rand(states, states, generator=g, dtype=torch.float64), dim=1)
        self.P = zipf(states, CHAIN_EXPONENT)[torch.argsort(order, dim=1)]   # (S, S): row s ranks by order[s]
        G = (vocab_size - 1) // states
        self.group = (1 + torch.randperm(vocab_size - 1, generator=g))[:states * G].view(states, G)  # (S, G)
        self.E = zipf(G, EMIT_EXPONENT).expand(states, G)                    # (S, G): rank k emits 1/k^b
        self.state_of = torch.full((vocab_size,), -1, dtype=torch.long)
        self.state_of[self.group.flatten()] = torch.arange(states).repeat_interleave(G)
        # π: the chain's stationary distribution, by power iteration (the chain is dense, so it converges)
        pi = torch.full((states,), 1.0 / states, dtype=torch.float64)
        for _ in range(10_000):
            nxt = pi @ self.P
            if (nxt - pi).abs().max() < 1e-15:
                break
            pi = nxt
        self.pi = nxt / nxt.sum()
        self.cum_P = torch.cumsum(self.P, 1)
        self.cum_E = torch.cumsum(self.E[0], 0)
        self.cum_pi = torch.cumsum(self.pi, 0)

    def entropy_rate(self):
        """The floor at positions ≥ 1, in nats per token."""
        return float(self.pi @ entropy(self.P) + self.pi @ entropy(self.E))

    def first_entropy(self):
        """The floor at position 0 (y_1 from BOS)."""
        return float(entropy(self.pi) + self.pi @ entropy(self.E))

    def floor(self, block_size):
        """The least expected loss per token over a window of block_size positions: the first at
        first_entropy, the others at entropy_rate."""
        return (self.first_entropy() + (block_size - 1) * self.entropy_rate()) / block_size

    def log_prob(self, x, y):
        """log p(y | x) for symbols x, y (same shape, each ≥ 1 and a symbol of some state)."""
        s, t = self.state_of[x], self.state_of[y]
        rank = (self.group[t] == y.unsqueeze(-1)).float().argmax(-1)
        return torch.log(self.P[s, t]) + torch.log(self.E[t, rank])

    def get_batch(self, batch_size, block_size, generator):
        """x, y: (B, T) long tensors on the CPU: x = [BOS, y_1 … y_{T−1}], drawn with `generator` (CPU) by
        inverse CDFs, T steps of the chain for the whole batch at once."""
        u = torch.rand(batch_size, block_size, 2, generator=generator, dtype=torch.float64)
        state = torch.searchsorted(self.cum_pi, u[:, 0, 0].contiguous()).clamp_max(self.states - 1)
        states = [state]
        for t in range(1, block_size):
            state = torch.searchsorted(self.cum_P[state], u[:, t, :1].contiguous()).squeeze(1)
            state = state.clamp_max(self.states - 1)  # rounding: a u above the row's last cumsum
            states.append(state)
        states = torch.stack(states, 1)                                                       # (B, T)
        rank = torch.searchsorted(self.cum_E, u[..., 1].contiguous()).clamp_max(self.E.size(1) - 1)
        y = self.group[states, rank]                                                          # (B, T)
        x = torch.cat([torch.full_like(y[:, :1], BOS), y[:, :-1]], dim=1)                     # (B, T)
        return x, y


def corpus(data, vocab_size):
    """train.py's source for --data=hmm (S = STATES) or --data=hmm:S: kind, vocab_size, fingerprint and the
    language; a bad S or V is a one-line ConfigError."""
    states = STATES
    if data != 'hmm':
        if not data.startswith('hmm:') or not (data[4:].isascii() and data[4:].isdigit()):
            raise ConfigError(f"--data={data}: write hmm or hmm:S, S a whole number of states, e.g. hmm:16")
        states = int(data[4:])
    try:
        language = Language(vocab_size, states)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    name = f"hmm-V{vocab_size}-S{states}-a{CHAIN_EXPONENT:g}-b{EMIT_EXPONENT:g}-seed{LANGUAGE_SEED}"
    return dict(kind='hmm', vocab_size=vocab_size, language=language, fingerprint=name)


if __name__ == '__main__':
    lang = Language(1024)
    x, y = lang.get_batch(2, 8, torch.Generator().manual_seed(0))
    print(f"HMM language, V = 1,024, S = {lang.states}: x = {x.tolist()}\n  y = {y.tolist()}")
    print(f"floor: {lang.entropy_rate():.4f} nats at positions ≥ 1 (log V = {math.log(1024):.4f}), "
          f"{lang.first_entropy():.4f} at position 0, {lang.floor(32):.4f} over a window of 32")
