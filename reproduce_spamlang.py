"""
reproduce.py's experiments on SpamLang: 1 (head rank on one backbone) and 2 (V/D at a fixed batch, with the
bounded-head control). Each has its plan (the runs, before any starts) and its summary (tables and figures).
"""
import math
import os

import torch
import torch.nn.functional as F

import checkpoint
import plot
import spamlang
import stats
from options import ConfigError
from reproduce_runs import (
    EDGE, FIGURES, OURS, Tally, by_seed, ci, cosine, head_of, head_specs, heads_of, hidden_states,
    in_parallel, lr_score, lr_table, md, numbers, paired_by_seed, pm, run_dir, save_run, say, spread,
    to_target, write_table)


# -----------------------------------------------------------------------------
# the plans: every run, before any starts


def plan_heads(c):
    """Experiment 1 (SpamLang): one backbone, only the head changes."""
    steps, interval = c['e1_max_iters'], c['e1_eval_interval']
    base = dict(data='spamlang', vocab_size=c['e1_vocab_size'], n_embd=c['e1_n_embd'],
                n_layer=c['e1_n_layer'], n_head=c['n_head'], block_size=c['e1_block_size'],
                batch_size=c['e1_batch_size'], max_iters=steps,
                warmup_iters=max(1, int(c['warmup'] * steps)), eval_interval=interval,
                eval_iters=c['e1_eval_iters'], log_interval=interval, save_checkpoints=False)
    return [dict(key=h['key'], label=h['label'], info=dict(head=h['spec']), args={**base, **h['args']})
            for h in heads_of(c, '1')]


def exp2_key(head, D, V):
    """The configuration key of a cell of experiment 2, e.g. linear_D16_V256."""
    return f"{head['key']}_D{D}_V{V}"


def plan_exp2(c):
    """Every (head, D, V) cell at a fixed batch: steps ∝ V for the same exposure budget per symbol, evaluated
    e2_evals times on the same held-out sequences."""
    B, evals, configs = c['e2_batch_size'], c['e2_evals'], []
    for V in numbers(c, 'e2_vocab_sizes', int):  # cheap vocabularies first
        interval = math.ceil(c['e2_exposures'] * (V - 1) / B / evals)
        steps = interval * evals
        n_eval = math.ceil(c['e2_eval_sequences'] / B)
        for spec in head_specs(c, 'e2_heads'):
            for D in numbers(c, 'e2_n_embds', int):
                h = head_of(spec, D)
                args = dict(data='spamlang', vocab_size=V, n_embd=D, n_layer=c['e2_n_layer'],
                            n_head=c['n_head'], block_size=c['e2_block_size'], batch_size=B, max_iters=steps,
                            eval_interval=interval, warmup_iters=max(1, int(c['warmup'] * steps)),
                            eval_iters=n_eval, log_interval=steps, **h['args'])  # the control reads its ckpt
                info = dict(head=h['spec'], D=D, V=V, batch_size=B, steps=steps, eval_sequences=B * n_eval,
                            exposures=round(B * steps / (V - 1), 2))
                configs.append(dict(key=exp2_key(h, D, V), label=f"{h['label']}, D = {D}, V = {V:,}",
                                    info=info, args=args))
    return configs


# -----------------------------------------------------------------------------
# the summaries of experiments 1 and 2; 1 also returns the best lr's runs of each head (heads), which
# experiment 4 (reproduce_text.summary_exp4) reads


def summary_exp1(c, runs):
    """Experiment 1: head rank on SpamLang."""
    D, V = c['e1_n_embd'], c['e1_vocab_size']
    rows, heads, lines = [], [], []
    for h in heads_of(c, '1'):
        t = lr_table(runs[h['key']], head=h['spec'], rank=h['rank'])
        rows += t['rows']
        best = next(r for r in t['rows'] if r['best'])
        heads.append(dict(label=h['label'], rank=h['rank'], plain=h['spec'] in ('linear', 'tied'),
                          runs=t['best_runs'], rows=t['rows']))
        final_acc = spread([r['evals'][-1]['val_acc'] for r in t['best_runs']])
        others = ', '.join(f"{plot.sci(r['lr'])}: {100 * r['acc_mean']:.1f}"
                           for r in t['rows'] if not r['best'])
        lines.append([h['label'], f"{plot.sci(t['lr'])}{EDGE[t['edge']]}", pm(final_acc, scale=100),
                      others or '-',
                      f"{best['destroyed']:.4f}", f"{best['visible_over_chance']:.2f}"])
    controls = dict(data='SpamLang', vocab_size=V, n_embd=D, n_layer=c['e1_n_layer'],
                    block_size=c['e1_block_size'],
                    batch_size=c['e1_batch_size'], max_iters=c['e1_max_iters'], lrs=numbers(c, 'e1_lrs'),
                    exposures_per_symbol=round(c['e1_max_iters'] * c['e1_batch_size'] / (V - 1), 2),
                    varies='only the head and its lr: same data stream, init seed, schedule and held-out '
                           'batches',
                    ours=OURS + [f"accuracy and the meter on positions ≥ 1 of {c['e1_eval_iters']} "
                                 f"held-out batches"])
    plot.exp1(os.path.join(c['out'], FIGURES['1'][0]), heads, V, D,
              f"{c['seeds']} seeds, {controls['exposures_per_symbol']:g} exposures per symbol")
    table = md(['head', 'best lr', 'final acc % (positions ≥ 1, fresh seeds)',
                'acc % at the other lrs (mean, sweep seed)', 'destroyed', 'visible/chance'], lines)
    pairs = paired_heads(c, runs)
    table += '\n\n' + md(['comparison', 'accuracy difference, pp [95% CI], paired t', 'loss difference'],
                          [[p['comparison'], ci(p['acc'], '{:+.1f}', 100, p=True), ci(p['loss'], '{:+.3f}')]
                           for p in pairs])
    write_table(c, 'exp1_head_rank', rows, controls, paired=pairs)
    return dict(controls=controls, table=table, notes=[], heads=heads)


def paired_heads(c, runs):
    """Experiment 1's paired comparisons over the fresh seeds: each fixed-selector head against the trained
    factorization of the same rank, and every head against linear (final accuracy and loss)."""
    heads = {h['spec']: h for h in heads_of(c, '1')}
    final = {spec: [r for r in runs[h['key']] if not r['sweep']] for spec, h in heads.items()}
    pairs = []
    for spec, h in heads.items():
        others = []
        if spec.endswith('/select') and spec[:-len('/select')] in heads:
            others.append(spec[:-len('/select')])
        if spec != 'linear' and 'linear' in heads:
            others.append('linear')
        for other in others:
            pair = dict(comparison=f"{h['label']} − {heads[other]['label']}", a=spec, b=other)
            for k in ('acc', 'loss'):
                a = by_seed(final[spec], lambda r: r['evals'][-1][f'val_{k}'])
                b = by_seed(final[other], lambda r: r['evals'][-1][f'val_{k}'])
                pair[k] = paired_by_seed(a, b)
            pairs.append(pair)
    return pairs


def summary_exp2(c, runs):
    """Experiment 2: SpamLang at a fixed batch, every (head, D, V) cell: the exposures per symbol until the
    loss on positions ≥ 1 reaches its target (censored at the budget), the accuracy target beside it, the
    final accuracy and loss / log(V − 1); each cell at its best lr by the same criterion."""
    Vs, Ds = numbers(c, 'e2_vocab_sizes', int), numbers(c, 'e2_n_embds', int)
    heads = [head_of(spec, min(Ds)) for spec in head_specs(c, 'e2_heads')]
    bounded_fits(c, runs)
    rows, cells, lines = [], [], []
    for h in heads:
        for D in Ds:
            line = [h['spec'], D]
            for V in Vs:
                cell_runs = runs[exp2_key(h, D, V)]  # a head's key does not depend on D
                info = cell_runs[0]['info']
                t = lr_table(cell_runs, lr_score(c, 'exp2'), **info)
                rows += t['rows']
                b = t['best_runs']
                per = info["batch_size"] / (V - 1)  # exposures per step
                hits = [to_target(c, r) for r in b]
                to_loss = [None if s is None else round(s * per, 3) for s, _ in hits]
                to_acc = [None if a is None else round(a * per, 3) for _, a in hits]
                reached = [x for x in to_loss if x is not None]
                cell = dict(head=h['spec'], D=D, V=V, ratio=V / D, lr=t['lr'], edge=t['edge'],
                            seeds=[r['seed'] for r in b], budget=info['exposures'],
                            exposures_to_loss=to_loss, exposures_to_acc=to_acc,
                            reached=len(reached), geomean_to_loss=(stats.geometric(reached)['mean']
                                                                   if len(reached) == len(b) else None),
                            acc=[r['evals'][-1]['val_acc'] for r in b],
                            loss_over_logV=[r['evals'][-1]['val_loss'] / spamlang.optimal_loss_pos0(V)
                                            for r in b],
                            control=next(r['control'] for r in b if 'control' in r))
                cells.append(cell)
                if cell['geomean_to_loss'] is not None:
                    text = f"{cell['geomean_to_loss']:.1f}"
                elif reached:
                    text = f"> {info['exposures']:g} on {len(b) - len(reached)} of {len(b)} seeds"
                else:
                    text = f"> {info['exposures']:g}"
                acc = pm(spread(cell['acc']), '{:.0f}', scale=100)
                bounded = cell['control']['loss_over_logV']
                line.append(f"{text} (acc {acc}; bounded head {bounded:.3f}){EDGE[t['edge']]}")
            lines.append(line)
    controls = dict(data='SpamLang', heads=[h['spec'] for h in heads], n_layer=c['e2_n_layer'],
                    block_size=c['e2_block_size'], batch_size=c['e2_batch_size'],
                    exposures_per_symbol=c['e2_exposures'], varies='head, D, V, lr', lrs=numbers(c, 'e2_lrs'),
                    target=f"loss on positions ≥ 1 ≤ {c['e2_target_loss']:g}·log(V − 1); accuracy ≥ "
                           f"{c['e2_target_acc']:g}",
                    ours=OURS + [f"a fixed batch of {c['e2_batch_size']} sequences; steps ∝ V for "
                                 f"{c['e2_exposures']:g} exposures per symbol",
                                 f"{c['e2_evals']} evaluations per run on ≥ {c['e2_eval_sequences']} "
                                 "held-out sequences: the steps to a target are the first evaluation's that "
                                 "reaches it",
                                 "the best lr per cell: the most seeds reaching the loss target, then the "
                                 "fewest steps to it, then the final loss",
                                 f"the expressivity control: the head alone fitted on the frozen backbone of "
                                 f"each cell's first fresh seed ({c['e2_control_steps']} AdamW steps, lr "
                                 f"{c['e2_control_lr']:g}, cosine), its Frobenius norm at most the trained "
                                 "head's; its loss on every symbol / log(V − 1)",
                                 "censored: a run that never reaches the target is '> budget', never "
                                 "averaged; a cell's geometric mean only when every seed reached it"])
    write_table(c, 'exp2_fixed_batch', rows, controls, cells=cells)
    plot.exp2(os.path.join(c['out'], FIGURES['2'][0]), cells, Vs, Ds, c['e2_target_loss'],
              f"batch {c['e2_batch_size']} sequences, budget {c['e2_exposures']:g} exposures per symbol, "
              f"{c['seeds']} seeds")
    table = ("Exposures per symbol until the loss on positions ≥ 1 reaches "
             f"{c['e2_target_loss']:g}·log(V − 1), geometric mean over seeds ('> budget': not reached), "
             "the final accuracy % (mean ± std (min–max)), and the bounded head's loss / log(V − 1) on the "
             "frozen backbone (the expressivity control: below "
             f"{c['e2_target_loss']:g}, a head of this norm can express the target); ↓/↑: the best lr on the "
             "grid's edge:\n\n" +
             md(['head', 'D'] + [f"V = {V:,}" for V in Vs], lines))
    return dict(controls=controls, table=table, notes=[])


def bounded_fit(c, rec):
    """Experiment 2's expressivity control, from a run's final checkpoint: the head alone (a V×D matrix, from
    the trained one) fitted by AdamW on the frozen backbone's hidden states at position 1 of every [BOS, s],
    its Frobenius norm projected back to at most the trained head's after each step. Its loss over every
    symbol / log(V − 1), at the start and at 4 points of the fit: what a head this large can express on this
    backbone."""
    path = os.path.join(run_dir(c, rec), 'ckpt.pt')
    model = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path)).to(c['device'])
    model.eval().requires_grad_(False)
    V = model.config.vocab_size
    s = torch.arange(1, V, device=c['device'])
    x = torch.stack([torch.full_like(s, spamlang.BOS), s], dim=1)  # (V − 1, 2)
    H = hidden_states(model, x).view(V - 1, 2, -1)[:, 1]  # (V − 1, D)
    W = model.lm_head.effective_weight().detach().clone().requires_grad_(True)  # (V, D)
    bound = W.norm().item()
    steps = c['e2_control_steps']
    opt = torch.optim.AdamW([W], lr=c['e2_control_lr'], betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(c['seed'])
    log_v = spamlang.optimal_loss_pos0(V)

    def full_loss():  # 4,096 symbols' logits at a time
        with torch.no_grad():
            total = sum(F.cross_entropy(h @ W.T, t, reduction='sum').item()
                        for h, t in zip(H.split(4096), s.split(4096)))
        return total / (V - 1) / log_v

    curve = [full_loss()]
    for step in range(steps):
        for group in opt.param_groups:
            group['lr'] = cosine(c['e2_control_lr'], step, steps)
        idx = torch.randint(V - 1, (min(1024, V - 1),), generator=gen).to(c['device'])
        loss = F.cross_entropy(H[idx] @ W.T, s[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W.mul_(min(1.0, bound / W.norm().item()))  # back into the ball of the trained head's norm
        if (step + 1) % max(1, steps // 4) == 0 or step + 1 == steps:
            curve.append(full_loss())
    return dict(loss_over_logV=curve[-1], curve=curve, head_norm=bound, norm=W.norm().item(), steps=steps,
                lr=c['e2_control_lr'])


def bounded_fits(c, runs):
    """bounded_fit of every cell's first fresh run that has none with these settings (jobs at a time),
    saved in its run.json; then its checkpoint goes."""
    first = c['seed'] + c['sweep_seeds']
    todo = [r for rs in runs.values() for r in rs if r['seed'] == first and not r['sweep']]
    settings = dict(steps=c['e2_control_steps'], lr=c['e2_control_lr'])

    def work(r):
        if {k: r.get('control', {}).get(k) for k in settings} != settings:
            if not os.path.exists(os.path.join(run_dir(c, r), 'ckpt.pt')):
                raise ConfigError(f"{run_dir(c, r)} was fitted with other control settings and its "
                                  "checkpoint is gone: run experiment 2 again without --reuse")
            r['control'] = bounded_fit(c, r)
            save_run(c, r)
        return r

    say(f"exp2: the expressivity control of {len(todo)} cells (bounded head, frozen backbone)")
    in_parallel(c, Tally(), work, todo)
    for r in todo:
        path = os.path.join(run_dir(c, r), 'ckpt.pt')
        if os.path.exists(path):
            os.remove(path)
