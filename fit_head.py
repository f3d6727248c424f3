"""
Fit an LM head on frozen hidden states, to convergence on a held-out part. reproduce.py's experiments use it
for two numbers:
  - the expressivity ceiling: a rank-r head W = B·A (B: V×r, A: r×D, both trained) fitted on the final hidden
    states of a frozen backbone, warm-started from the best rank-r approximation of its trained head;
  - the converged probe: a full-rank V×D head (A = None, W = B) fitted on a frozen backbone, warm-started from
    its trained head.

    B, A = rank_r_init(W, r)                          # truncated SVD: B·A is W's best rank-r approximation
    fit = fit_head(H, y, B, A)                        # {'B', 'A', 'holdout_loss', 'epochs', 'steps', ...}
    loss = head_loss(H_val, y_val, fit['B'], fit['A'])

The loss is fused_loss.linear_cross_entropy, so no N×V logits are held; hidden states and heads stay on the
device H is on.
"""
import math

import torch
import torch.nn.functional as F

import fused_loss

IMPROVEMENT_NATS = 1e-4  # a held-out loss must beat the best by more than this to reset the patience


def check_head(H, y, B, A):
    """ValueError unless H (N, D), y (N,) and the head B (V, k), A (k, D) or None (k = D) fit together."""
    if H.dim() != 2:
        raise ValueError(f"H must be (N, D) hidden states, got {tuple(H.shape)}: flatten (B, T, D) first")
    if y.dim() != 1 or y.size(0) != H.size(0):
        raise ValueError(f"y must be ({H.size(0)},) targets, got shape {tuple(y.shape)}: one per row of H")
    if B.dim() != 2:
        raise ValueError(f"B must be (V, k), got shape {tuple(B.shape)}: pass the head's output matrix")
    if A is None and B.size(1) != H.size(1):
        raise ValueError(f"a full-rank head B must be (V, {H.size(1)}), got {tuple(B.shape)}: match H's D")
    if A is not None and tuple(A.shape) != (B.size(1), H.size(1)):
        raise ValueError(f"A must be ({B.size(1)}, {H.size(1)}) for B {tuple(B.shape)} and H "
                         f"{tuple(H.shape)}, got {tuple(A.shape)}: W = B·A maps D to V")


def projected(h, A):
    """h Aᵀ for a factorized head, h itself for a full-rank one: the input the V-row matrix B sees."""
    if A is None:
        return h
    return h @ A.t()


@torch.no_grad()
def head_loss(H, y, B, A=None, chunk=4096):
    """Mean cross-entropy of softmax(H (B·A)ᵀ) against y (targets -1 ignored), without grad, `chunk` tokens'
    logits at a time."""
    check_head(H, y, B, A)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 tokens, got {chunk}: pass a positive chunk size")
    total = 0.0
    count = 0
    for s in range(0, H.size(0), chunk):
        logits = projected(H[s:s + chunk].float(), A) @ B.float().t()
        targets = y[s:s + chunk]
        total += F.cross_entropy(logits, targets, ignore_index=-1, reduction='sum').item()
        count += int((targets >= 0).sum())
    if count == 0:
        raise ValueError("head_loss: every target is -1 (ignored): pass at least one real target")
    return total / count


def rank_r_init(W, r):
    """(B, A) from the truncated SVD of W (V×D): B = U_r·diag(√S_r), A = diag(√S_r)·V_rᵀ, so B·A is W's best
    rank-r approximation (Eckart–Young) and both factors have the same scale."""
    if W.dim() != 2:
        raise ValueError(f"W must be a (V, D) head, got shape {tuple(W.shape)}: pass effective_weight()")
    if not 1 <= r <= min(W.shape):
        raise ValueError(f"rank r must be in 1..{min(W.shape)} for W {tuple(W.shape)}, got {r}: lower r")
    U, S, Vh = torch.linalg.svd(W.detach(), full_matrices=False)
    root = S[:r].sqrt()
    B = U[:, :r] * root
    A = root.unsqueeze(1) * Vh[:r]
    return B, A


def fit_head(H, y, B, A=None, lr=1e-3, batch_tokens=4096, holdout=0.1, eval_every=None, patience=2,
             max_epochs=20, seed=0):
    """Fit the head W = B·A (or W = B when A is None) on hidden states H (N, D) and targets y (N,) of the
    training split, from the initial B and A (copied, never modified).

    The last `holdout` fraction of the N tokens is held out and never trained on. AdamW (betas 0.9, 0.95, no
    weight decay) on minibatches of batch_tokens, reshuffled each epoch by a generator seeded with seed. The
    held-out loss is evaluated before training and every eval_every steps (default: one epoch of the
    training part); the best parameters are kept; the fit stops when `patience` evaluations in a row do not
    beat the best by more than IMPROVEMENT_NATS, or after max_epochs (a float is allowed).

    Returns dict(B, A (None for a full-rank head), holdout_loss (the best), epochs (float: training tokens
    seen / training-part tokens), steps, evals (held-out losses, evals[0] at the initial parameters),
    stopped ('patience' or 'max_epochs'))."""
    check_head(H, y, B, A)
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}: e.g. 0.1")
    n = H.size(0)
    n_hold = int(round(n * holdout))
    n_train = n - n_hold
    if n_hold < 1 or n_train < 1:
        raise ValueError(f"{n} tokens with holdout={holdout} leave {n_train} to train, {n_hold} to hold out: "
                         f"pass more tokens")
    if batch_tokens < 1 or patience < 1 or max_epochs <= 0:
        raise ValueError(f"batch_tokens ({batch_tokens}) and patience ({patience}) must be >= 1, "
                         f"max_epochs ({max_epochs}) > 0: pass positive values")
    steps_per_epoch = math.ceil(n_train / batch_tokens)
    if eval_every is None:
        eval_every = steps_per_epoch
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 steps, got {eval_every}: or None for once per epoch")
    H_train = H[:n_train]
    y_train = y[:n_train]
    H_hold = H[n_train:]
    y_hold = y[n_train:]

    B = B.detach().float().clone().requires_grad_(True)
    if A is not None:
        A = A.detach().float().clone().requires_grad_(True)
    params = [B] if A is None else [B, A]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    best_loss = head_loss(H_hold, y_hold, B, A)
    best = [p.detach().clone() for p in params]
    evals = [best_loss]
    bad = 0
    steps = 0
    tokens_seen = 0
    max_steps = math.ceil(max_epochs * steps_per_epoch)
    stopped = 'max_epochs'
    while steps < max_steps and stopped != 'patience':
        # the permutation is drawn on the CPU generator, so a seed gives the same batches on any device
        order = torch.randperm(n_train, generator=gen).to(H.device)
        for s in range(0, n_train, batch_tokens):
            idx = order[s:s + batch_tokens]
            h = projected(H_train[idx].float(), A)
            loss = fused_loss.linear_cross_entropy(h, B, y_train[idx], None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            tokens_seen += len(idx)
            # the last step always evaluates, so the final parameters compete for best too
            if steps % eval_every != 0 and steps < max_steps:
                continue
            current = head_loss(H_hold, y_hold, B, A)
            evals.append(current)
            # patience needs a real improvement, but any improvement is worth keeping
            improved = current < best_loss - IMPROVEMENT_NATS
            if current < best_loss:
                best_loss = current
                best = [p.detach().clone() for p in params]
            if improved:
                bad = 0
            else:
                bad += 1
            if bad >= patience:
                stopped = 'patience'
                break
            if steps >= max_steps:
                break

    best_A = None if A is None else best[1]
    return dict(B=best[0], A=best_A, holdout_loss=best_loss, epochs=tokens_seen / n_train, steps=steps,
                evals=evals, stopped=stopped)
