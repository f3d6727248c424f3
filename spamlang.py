"""
SpamLang (PAPER.md §3): each sequence repeats one symbol, drawn uniformly from the vocabulary, for its whole
length ("AAAA…"). A width D ≥ 2 can express a perfect solution for any V, so failing to learn it is an
optimization failure: the gradient bottleneck of the LM head.

Our choices (the paper's text is not available): token 0 is a BOS token that starts every sequence and is
never a symbol, so the V − 1 symbols are 1..V−1. Position 0 (predicting the symbol from BOS) is
unpredictable, with loss log(V − 1) at best; every later position is determined. We report loss and top-1
accuracy on positions ≥ 1 separately from position 0.

    python spamlang.py                      # a few sequences and the statistics
    python spamlang.py --vocab_size=16384 --batch_size=32 --steps=1000
"""
import math
import sys

import torch
import torch.nn.functional as F

BOS = 0


def get_batch(batch_size, block_size, vocab_size, generator, device='cpu'):
    """x, y: (B, T) long tensors on `device`; x = [BOS, s, s, …], y = [s, s, …] with one symbol s per row."""
    if vocab_size < 2:
        raise ValueError(f"SpamLang needs vocab_size ≥ 2 (BOS plus at least one symbol), got {vocab_size}")
    sym = torch.randint(1, vocab_size, (batch_size, 1), generator=generator, device=device)  # (B, 1)
    y = sym.expand(batch_size, block_size).contiguous()                                      # (B, T)
    x = torch.cat([torch.full_like(sym, BOS), y[:, :-1]], dim=1)                             # (B, T)
    return x, y


def make_generator(seed, device='cpu'):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@torch.no_grad()
def metrics(logits, y):
    """Loss and top-1 accuracy at position 0 and on positions ≥ 1, from logits (B, T, V) and targets (B, T)."""
    logits = logits.float()
    loss = F.cross_entropy(logits.transpose(1, 2), y, reduction='none')  # (B, T)
    correct = (logits.argmax(-1) == y).float()                           # (B, T)
    out = {'loss_pos0': loss[:, 0].mean().item(), 'acc_pos0': correct[:, 0].mean().item()}
    if y.size(1) > 1:
        out.update(loss=loss[:, 1:].mean().item(), acc=correct[:, 1:].mean().item())
    return out


def exposures_per_symbol(sequences_seen, vocab_size):
    """Expected number of sequences per symbol so far: the exposure control of PAPER.md §6."""
    return sequences_seen / (vocab_size - 1)


def optimal_loss_pos0(vocab_size):
    return math.log(vocab_size - 1)


if __name__ == '__main__':
    cfg = dict(vocab_size=1024, block_size=12, batch_size=32, steps=1000, seed=0)
    if {'-h', '--help'} & set(sys.argv[1:]):
        sys.exit(print(__doc__ + f"options (--key=INT): {cfg}"))
    for arg in sys.argv[1:]:
        key, _, val = arg.removeprefix('--').partition('=')
        if key not in cfg or not val.lstrip('-').isdigit():
            sys.exit(f"error: bad argument {arg!r}; use --key=INT with key in {', '.join(cfg)}")
        cfg[key] = int(val)
    g = make_generator(cfg['seed'])
    x, y = get_batch(4, cfg['block_size'], cfg['vocab_size'], g)
    print(f"SpamLang, V = {cfg['vocab_size']} (BOS = {BOS}, symbols 1..{cfg['vocab_size'] - 1}), T = {cfg['block_size']}")
    for i in range(4):
        print(f"  x = {x[i].tolist()}\n  y = {y[i].tolist()}")
    counts = torch.zeros(cfg['vocab_size'])
    for _ in range(cfg['steps']):
        x, _ = get_batch(cfg['batch_size'], 2, cfg['vocab_size'], g)
        counts += torch.bincount(x[:, 1], minlength=cfg['vocab_size'])
    seen = counts[1:]
    n = cfg['steps'] * cfg['batch_size']
    print(f"after {cfg['steps']} steps of {cfg['batch_size']} sequences: "
          f"{exposures_per_symbol(n, cfg['vocab_size']):.2f} expected exposures per symbol, "
          f"observed min {seen.min():.0f} / mean {seen.mean():.2f} / max {seen.max():.0f}, "
          f"{(seen == 0).sum():.0f} symbols never seen")
    print(f"best possible loss at position 0: log(V - 1) = {optimal_loss_pos0(cfg['vocab_size']):.3f}; "
          f"at positions ≥ 1: 0")
