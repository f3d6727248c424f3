"""
SpamLang (Godey & Artzi 2026, arXiv 2603.10145): each sequence repeats one symbol, drawn uniformly from the
vocabulary, for its whole length ("AAAA…"). A width D ≥ 2 can express a perfect solution for any V, so failing
to learn it is an optimization failure: the gradient bottleneck of the LM head.

Our choices (the paper's text is not available): token 0 is a BOS token that starts every sequence and is
never a symbol, so the V − 1 symbols are 1..V−1. Position 0 (predicting the symbol from BOS) is
unpredictable, with loss log(V − 1) at best; every later position is determined. We report loss and top-1
accuracy on positions ≥ 1 separately from position 0.

    python spamlang.py      # a few sequences, and how often each symbol is seen at V = 16,384
"""
import math

import torch
import torch.nn.functional as F

BOS = 0


def get_batch(batch_size, block_size, vocab_size, generator):
    """x, y: (B, T) long tensors on the generator's device: x = [BOS, s, s, …], y = [s, s, …], one symbol s
    per row."""
    if vocab_size < 2:
        raise ValueError(f"SpamLang needs vocab_size ≥ 2 (BOS plus at least one symbol), got {vocab_size}")
    sym = torch.randint(1, vocab_size, (batch_size, 1), generator=generator, device=generator.device)
    y = sym.expand(batch_size, block_size).contiguous()                                      # (B, T)
    x = torch.cat([torch.full_like(sym, BOS), y[:, :-1]], dim=1)                             # (B, T)
    return x, y


def make_generator(seed):
    """A CPU generator: data streams are drawn on the CPU, so a checkpoint's stream resumes on any device."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@torch.no_grad()
def metrics(logits, y):
    """Loss and top-1 accuracy at position 0 and on positions ≥ 1, from logits (B, T, V) and targets
    (B, T)."""
    logits = logits.float()
    loss = F.cross_entropy(logits.transpose(1, 2), y, reduction='none')  # (B, T)
    correct = (logits.argmax(-1) == y).float()                           # (B, T)
    out = {'loss_pos0': loss[:, 0].mean().item(), 'acc_pos0': correct[:, 0].mean().item()}
    if y.size(1) > 1:
        out.update(loss=loss[:, 1:].mean().item(), acc=correct[:, 1:].mean().item())
    return out


def exposures_per_symbol(sequences_seen, vocab_size):
    """Expected number of sequences per symbol so far: the control for comparing vocabularies."""
    return sequences_seen / (vocab_size - 1)


def optimal_loss_pos0(vocab_size):
    return math.log(vocab_size - 1)


if __name__ == '__main__':  # a few sequences, and how evenly a run sees the symbols (the exposure control)
    V, B, steps = 16384, 32, 1000
    x, y = get_batch(3, 8, 1024, make_generator(0))
    print(f"SpamLang, V = 1,024 (BOS = {BOS}, symbols 1..1023):\n  x = {x.tolist()}\n  y = {y.tolist()}")
    counts = torch.zeros(V)
    gen = make_generator(0)
    for _ in range(steps):
        counts += torch.bincount(get_batch(B, 1, V, gen)[1][:, 0], minlength=V)
    seen = counts[1:]
    print(f"V = {V:,}, {steps} steps of {B} sequences: {exposures_per_symbol(steps * B, V):.2f} expected "
          f"exposures per symbol, seen {seen.min():.0f} to {seen.max():.0f} times, {(seen == 0).sum():.0f} "
          f"never; best loss at position 0: log(V − 1) = {optimal_loss_pos0(V):.3f}, at positions ≥ 1: 0")
