"""
Figures: any training run's log.jsonl, and the figures of reproduce.py's experiments.

    python plot.py out/spamlang_wide/log.jsonl   # writes out/spamlang_wide/log.png and prints its path
    python plot.py out/spamlang_wide/log.jsonl --out=wide.png

A run's figure: training and validation loss vs step; on SpamLang the accuracy on positions ≥ 1; the meter's
grad_destroyed (positions ≥ 1 on SpamLang, position 0 dashed) beside the random baseline √(1 − rank(W)/V).
reproduce.py's experiments call exp1, exp2, exp3, exp4, exp6 and exp7 with the numbers of their tables.
"""
import json
import math
import os
import sys

import numpy as np

import options
from model import head_rank

# -----------------------------------------------------------------------------
out = ''                   # the PNG to write; '' = beside the log, with the log's name and .png
# -----------------------------------------------------------------------------
DEFAULTS = options.defaults_of(globals())
EDGE = {'low edge': 'lr at the grid\'s low edge', 'high edge': 'lr at the grid\'s high edge',
        'one lr': 'one lr, not swept'}
ARROWS = {'low edge': ' ↓', 'high edge': ' ↑'}  # the same flags as EDGE's first two, after a number


def sci(x):
    """3e-3 rather than 0.003."""
    m, e = f"{x:e}".split('e')
    return f"{float(m):g}e{int(e)}"


def pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def colors(n):
    """n distinct colours: tab10, then tab20's light shades."""
    plt = pyplot()
    return [plt.cm.tab10(i) if i < 10 else plt.cm.tab20(2 * (i - 10) + 1) for i in range(n)]


def band(ax, x, ys, color, label=None, style='-', scale=1.0):
    """The mean of the rows of ys (one per seed) as a line, their min–max as a band."""
    ys = scale * np.asarray(ys, dtype=float)
    ax.plot(x, np.nanmean(ys, 0), style, color=color, label=label, lw=1.5)
    if len(ys) > 1:
        ax.fill_between(x, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.15, lw=0)


def minmax_err(ys):
    """Error bars from the mean of ys to their min and max (None for a single value)."""
    return [[ys.mean() - ys.min()], [ys.max() - ys.mean()]] if len(ys) > 1 else None


def figure_path(key, path, example):
    """An option's figure file, checked before the work: writable, in a format matplotlib writes."""
    options.writable(key, path, example)
    from matplotlib.figure import Figure
    kinds = Figure().canvas.get_supported_filetypes()
    if os.path.splitext(path)[1][1:].lower() not in kinds:
        raise options.ConfigError(f"--{key}={path}: give a file ending in .{', .'.join(sorted(kinds))}")


def save(fig, path):
    fig.savefig(path, dpi=110, bbox_inches='tight')
    pyplot().close(fig)
    return path


def rank_of(cfg):
    """rank(W) of a train.py config: r of a factorized head (narrow's default D // 16), else D."""
    return min(cfg['n_embd'], head_rank(cfg['head'], cfg['n_embd'], cfg.get('head_rank')))

# -----------------------------------------------------------------------------
# one run: python plot.py out/RUN/log.jsonl


def log(path, png=''):
    rows, skipped = [], []
    with open(path, errors='replace') as f:
        for i, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a crash, or not JSON at all
                skipped.append(i)
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows or rows[0].get('type') != 'config':
        raise options.ConfigError(f"{path} is not a train.py log.jsonl "
                                  f"(its first readable line is not the config row)")
    if skipped:
        print(f"warning: {path}: {len(skipped)} unreadable line(s) skipped, the first is line {skipped[0]}",
              file=sys.stderr)
    cfg, evals = rows[0], [r for r in rows if r.get('type') == 'eval']
    train = [r for r in rows if r.get('type') == 'train']
    spam = any('val_acc' in r for r in evals)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if spam else 2, figsize=(15 if spam else 10, 4))
    ax = axes[0]
    if train:
        ax.plot([r['iter'] for r in train], [r['loss'] for r in train], color='C0', label='train loss')
    ax.plot([r['iter'] for r in evals], [r['val_loss'] for r in evals], 'o-', ms=3, color='C1',
            label='validation loss' + (' (positions ≥ 1)' if spam else ''))
    if spam:
        ax.plot([r['iter'] for r in evals], [r['val_loss_pos0'] for r in evals], '--', color='C2',
                label='validation loss, position 0')
    ax.set(xlabel='step', ylabel='loss (nats per token)', title='loss')
    ax.legend(fontsize=8)
    if spam:
        axes[1].plot([r['iter'] for r in evals], [100 * r['val_acc'] for r in evals], 'o-', ms=3, color='C1')
        axes[1].set(xlabel='step', ylabel='accuracy on positions ≥ 1 (%)', ylim=(-2, 102),
                    title='SpamLang accuracy')
    bx = axes[-1]
    V, r = cfg['vocab_size'], rank_of(cfg)
    bx.plot([e['iter'] for e in evals], [e['grad_destroyed'] for e in evals], 'o-', ms=3, color='C3',
            label='grad_destroyed' + (' (positions ≥ 1)' if spam else ''))
    if spam and any('grad_destroyed_pos0' in e for e in evals):
        bx.plot([e['iter'] for e in evals], [e.get('grad_destroyed_pos0', np.nan) for e in evals], '--',
                color='C4', label='grad_destroyed, position 0')
    bx.axhline(math.sqrt(1 - r / V), color='k', ls=':', lw=1, label=f'random baseline √(1 − {r}/{V:,})')
    bx.set_yscale('logit')
    bx.set(xlabel='step', ylabel='‖P_ker(Wᵀ) G‖ / ‖G‖',
           title='the meter: destroyed fraction of the logit gradient')
    bx.legend(fontsize=8)
    fig.suptitle(f"{cfg['head']} head (rank {r}), V = {V:,}, D = {cfg['n_embd']}, data "
                 f"{os.path.basename(str(cfg['data']))}, lr {sci(cfg['learning_rate'])}, "
                 f"seed {cfg['seed']}", fontsize=10)
    fig.tight_layout()
    return save(fig, png or os.path.splitext(path)[0] + '.png')

# -----------------------------------------------------------------------------
# reproduce.py's figures


def exp1(path, heads, V, D, subtitle):
    """heads: dicts with label, rank, plain (a plain head), runs (the best lr's run records) and rows (one
    per lr: lr, best, edge, acc_mean, acc_min, acc_max)."""
    plt = pyplot()
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4.6))
    for color, h in zip(colors(len(heads)), heads):
        best = next(r for r in h['rows'] if r['best'])
        flag = f", {EDGE[best['edge']]}" if best['edge'] else ''
        steps = [e['iter'] for e in h['runs'][0]['evals']]
        accs = [[e['val_acc'] for e in r['evals']] for r in h['runs']]
        label = f"{h['label']}: lr {sci(best['lr'])}{flag}"
        band(ax, steps, accs, color, label, '--' if h['plain'] else '-', 100)
        # plain heads beside r = D
        x = h['rank'] * (1.12 if h['plain'] else 1.0) ** (1 + h['label'].startswith('tied'))
        m, lo, hi = (100 * best[k] for k in ('acc_mean', 'acc_min', 'acc_max'))
        bx.errorbar(x, m, yerr=[[m - lo], [hi - m]], fmt='o', color=color,
                    mfc='none' if h['plain'] else color, capsize=3, ms=6)
        cx.plot([r['lr'] for r in h['rows']], [100 * r['acc_mean'] for r in h['rows']],
                's--' if h['plain'] else 'o-', color=color, ms=4)
        cx.plot([best['lr']], [m], '*', color=color, ms=13, mec='k', mew=0.6)
    ax.set(xlabel='training step', ylabel='accuracy on positions ≥ 1 (%)', ylim=(-2, 102),
           title=f'SpamLang V = {V:,}, D = {D}: best lr per head\nmean, band: min–max over seeds')
    bx.set_xscale('log', base=2)
    ranks = sorted({h['rank'] for h in heads})
    bx.set_xticks(ranks, [str(r) for r in ranks])
    bx.set(xlabel='rank of the head r (plain heads hollow, beside r = D)',
           ylabel='final accuracy, positions ≥ 1 (%)', ylim=(-2, 102),
           title='final accuracy at the best lr\nmean, bar: min–max over seeds')
    cx.set_xscale('log')
    cx.set(xlabel='learning rate', ylabel='final accuracy, positions ≥ 1 (%)', ylim=(-2, 102),
           title='the lr sweep (sweep seeds), ★ = the best lr\n'
                 'a ★ at either end: the best lr is at the grid\'s edge')
    fig.legend(*ax.get_legend_handles_labels(), loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title=subtitle, title_fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def exp2(path, cells, Vs, Ds, target, subtitle):
    """cells: dicts with head, D, V, budget, reached, geomean_to_loss (None unless every seed reached the
    target), loss_over_logV (per seed), control (its loss_over_logV), lr, edge. Left: the exposures per symbol
    to the target loss against V, one line per (head, D); a cell that did not reach it on every seed sits at
    its budget as a hollow triangle (a lower bound). Right: the final loss / log(V − 1) and the expressivity
    control beside the target (a fraction of log(V − 1))."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6))
    heads = list(dict.fromkeys(d['head'] for d in cells))
    styles = ['-', '--', ':', '-.']
    for (D, color) in zip(Ds, colors(len(Ds))):
        for head, style in zip(heads, styles * len(heads)):
            mine = sorted((d for d in cells if d['head'] == head and d['D'] == D), key=lambda d: d['V'])
            x = [d['V'] for d in mine]
            y = [d['geomean_to_loss'] if d['geomean_to_loss'] is not None else d['budget'] for d in mine]
            ax.plot(x, y, style, color=color, lw=1.3, label=f"{head}, D = {D}")
            for d, yy in zip(mine, y):
                censored = d['geomean_to_loss'] is None
                marker = dict(marker='^', mfc='none', ms=7) if censored else dict(marker='o', mfc=color, ms=5)
                ax.plot([d['V']], [yy], ls='none', color=color, **marker)
                ax.annotate(f"{sci(d['lr'])}{ARROWS.get(d['edge'], '')}", (d['V'], yy), xytext=(3, -9),
                            textcoords='offset points', fontsize=6, color=color)
            ratio = np.array([d['loss_over_logV'] for d in mine], dtype=float)
            bars = [ratio.mean(1) - ratio.min(1), ratio.max(1) - ratio.mean(1)]
            bx.errorbar(x, ratio.mean(1), yerr=bars, fmt='o' + style, color=color, capsize=3, ms=4, lw=1.3)
            bx.plot(x, [d['control']['loss_over_logV'] for d in mine], 'x', color=color, ms=7)
    for a in (ax, bx):
        a.set_xscale('log', base=2)
        a.set_xticks(Vs, [f"{V:,}" for V in Vs])
        a.set_xlabel('vocabulary V')
    ax.set_yscale('log')
    ax.set(ylabel='exposures per symbol to the target loss',
           title='exposures to loss ≤ 0.1·log(V − 1) on positions ≥ 1 (geometric mean over seeds)\n'
                 '△ = not reached on every seed: the budget, a lower bound; text: the best lr')
    bx.axhline(target, color='0.5', lw=0.8, ls='--')
    bx.set_yscale('log')
    bx.set(ylabel='loss on positions ≥ 1 / log(V − 1)',
           title='final loss at the best lr (mean, bar: min–max over seeds); ×: the head alone refitted on\n'
                 'the frozen backbone, its norm ≤ the trained head\'s (expressivity); dashed: the target')
    fig.legend(*ax.get_legend_handles_labels(), loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title=subtitle, title_fontsize=8)
    fig.suptitle('SpamLang at a fixed batch: as V/D grows', fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def annealed(ax, bx, heads, xfold, cs):
    """The annealed loss of every head against tokens (ax) and its ×-fold curve against the widest head
    (bx), as experiments 3 and 6 draw them."""
    for color, h in zip(cs, heads.values()):
        flag = f", {EDGE[h['edge']]}" if h['edge'] else ''
        curves = list(h['annealed'].values())
        tokens = [t for t, _ in curves[0]]
        label = f"{h['label']}: lr {sci(h['best_lr'])}{flag}"
        band(ax, tokens, [[loss for _, loss in q] for q in curves], color, label)
    ax.set(xlabel='training tokens (budget, cooldown included)', ylabel='validation loss (nats per token)',
           title='annealed loss at each budget (the end of its cooldown)\nmean, band: min–max over seeds')
    for color, (k, points) in zip(cs, xfold.items()):
        ok = [q for q in points if q['ratio']['mean'] is not None]
        if ok:
            x = [q['level'] for q in ok]
            ratio = [q['ratio']['mean'] for q in ok]
            bx.plot(x, ratio, color=color, marker='o', ms=3, label=heads[k]['label'])
            lo = [q['ratio']['lo'] if q['ratio']['lo'] is not None else q['ratio']['mean'] for q in ok]
            hi = [q['ratio']['hi'] if q['ratio']['hi'] is not None else q['ratio']['mean'] for q in ok]
            bx.fill_between(x, lo, hi, color=color, alpha=0.2)
    bx.axhline(1, color='k', lw=0.7)
    bx.set_yscale('log')
    bx.invert_xaxis()
    ref = list(heads.values())[-1]['label']
    bx.set(xlabel='target validation loss (annealed)', ylabel=f"tokens to reach it / {ref}'s",
           title='×-fold in tokens, geometric mean over seeds, band: paired 95% CI\n(only levels every seed '
                 'of both reaches)')


def exp3(path, heads, xfold, base, bins, subtitle):
    """heads {head: dict with label, best_lr, edge, annealed {seed: [[tokens, loss], ...]}, report_loss,
    probe_loss, ceiling_loss (on the odd validation windows), loss_by_frequency {bin: per
    seed}} narrowest first, the widest (the reference of xfold) last; xfold {head: [dicts with level, ratio
    {mean, lo, hi}, censored, lower_bound]}."""
    plt = pyplot()
    fig, ((ax, bx), (cx, dx)) = plt.subplots(2, 2, figsize=(13, 9))
    cs = colors(len(heads))
    annealed(ax, bx, heads, xfold, cs)
    for name, ls in (('unigram', ':'), ('bigram', '--')):
        ax.axhline(base[name], color='k', ls=ls, lw=1, label=f"{name} baseline {base[name]:.3f}")
    w = 0.8 / len(heads)
    for k, (color, h) in enumerate(zip(cs, heads.values())):
        shift = (k - (len(heads) - 1) / 2) * w
        for j, b in enumerate(bins):
            ys = np.array(h['loss_by_frequency'][b], dtype=float)
            cx.bar(j + shift, ys.mean(), w, color=color, yerr=minmax_err(ys), capsize=2)
        bars = (('report_loss', None), ('probe_loss', '//'), ('ceiling_loss', '..'))
        for j, (key, hatch) in enumerate(bars):
            ys = np.array([v for v in h[key] if v is not None], dtype=float)
            if ys.size:
                dx.bar(j + shift, ys.mean(), w, color=color, hatch=hatch, edgecolor='white',
                       yerr=minmax_err(ys), capsize=2)
    cx.set_xticks(range(len(bins)), [f"{b} types" if b != 'the rest' else 'the rest' for b in bins])
    cx.set(ylabel='validation loss (nats per token)',
           title='loss by frequency of the target type (train split)\n'
                 'final checkpoint, bar: min–max over seeds')
    dx.set_xticks([0, 1, 2], ['its own head', 'full-rank probe\n(its frozen backbone)',
                              'ceiling: rank-r head fitted\non the linear backbone'])
    for name, ls in (('unigram', ':'), ('bigram', '--')):
        dx.axhline(base[name], color='k', ls=ls, lw=1)
    dx.set_ylim(base['bigram'] - 1, base['unigram'] + 0.5)
    dx.set(ylabel='validation loss, odd windows (nats per token)',
           title='expressivity apart from optimization')
    fig.legend(*ax.get_legend_handles_labels(), loc='upper center', bbox_to_anchor=(0.5, 0.0), ncol=3,
               fontsize=8)
    fig.suptitle(subtitle, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def exp6(path, heads, xfold, floor, subtitle):
    """heads {head: dict with label, best_lr, edge, annealed {seed: [[tokens, loss], ...]}}, the widest last;
    xfold as exp3's; floor: the language's exact least loss."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6))
    annealed(ax, bx, heads, xfold, colors(len(heads)))
    ax.axhline(floor, color='k', ls='--', lw=1, label=f"the floor {floor:.3f} (exact)")
    fig.legend(*ax.get_legend_handles_labels(), loc='upper center', bbox_to_anchor=(0.5, 0.0), ncol=3,
               fontsize=8)
    fig.suptitle(subtitle, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def exp7(path, per, level, subtitle):
    """Experiment 7, per head (mean over seeds, min–max band): the held-out accuracy (HMM: loss) against
    tokens and against seconds of training, c*, the visible share and the real step's cosine against tokens,
    and c* against the held-out loss (the dotted line: a loss every head reaches)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    (ax, tx, bx), (cx, sx, dx) = axes
    for (spec, p), color, style in zip(per.items(), colors(len(per)), ['-', '--', ':', '-.'] * len(per)):
        curves = p['meter']
        x = [m['tokens'] for m in curves[0]]
        acc = curves[0][0]['val_acc'] is not None  # SpamLang: accuracy; the HMM language: loss
        key, scale = ('val_acc', 100) if acc else ('val_loss', 1)
        band(ax, x, [[m[key] for m in cv] for cv in curves], color, spec, style, scale=scale)
        for cv in curves:
            tx.plot([m['seconds'] for m in cv], [scale * m[key] for m in cv], style, color=color, lw=0.8)
            dx.plot([m['val_loss'] for m in cv], [m['c_star'] for m in cv], style, color=color, lw=0.8)
        band(bx, x, [[m['c_star'] for m in cv] for cv in curves], color, None, style)
        band(cx, x, [[m['visible_share'] for m in cv] for cv in curves], color, None, style)
        band(sx, x, [[m['step_cos'] for m in cv] for cv in curves], color, None, style)
    dx.axvline(level, color='0.5', lw=0.8, ls=':')
    dx.invert_xaxis()
    label = 'held-out accuracy, positions ≥ 1 (%)' if acc else 'held-out loss'
    ax.set(xlabel='tokens', ylabel=label, title='learning, against tokens')
    tx.set(xlabel='seconds of training (2 runs on 2 cores)', ylabel=label, title='... against wall-clock')
    bx.set(xlabel='tokens', ylabel='c*', title='c*: the best first-order step (inputs + head) vs −G')
    cx.set(xlabel='tokens', ylabel='visible share', yscale='log',
           title='the share of ‖G‖² that reaches the head\'s inputs')
    sx.set(xlabel='tokens', ylabel='step cos', title='cos(−G, the logit change of one real AdamW step)')
    dx.set(xlabel='held-out loss (falling →)', ylabel='c*', title='c* at equal loss (one line per seed)')
    fig.legend(*ax.get_legend_handles_labels(), loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title=subtitle, title_fontsize=8)
    fig.suptitle('Heads beyond the paper (remedies.py)', fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def exp4(path, panels):
    """panels: dicts with title, V, heads [dicts with label, rank, runs (run records: their eval rows)]."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 8.5), squeeze=False)
    for j, p in enumerate(panels):
        ax, bx = axes[0, j], axes[1, j]
        for color, h in zip(colors(len(p['heads'])), p['heads']):
            x = [e['iter'] for e in h['runs'][0]['evals']]
            band(ax, x, [[e['grad_destroyed'] for e in r['evals']] for r in h['runs']], color, h['label'])
            ax.axhline(math.sqrt(1 - h['rank'] / p['V']), color=color, ls=':', lw=1)
            ratios = [[e.get('visible_over_chance', np.nan) for e in r['evals']] for r in h['runs']]
            band(bx, x, ratios, color)
        ax.set_yscale('logit')
        ax.set(xlabel='training step', ylabel='destroyed ratio ‖P_ker(Wᵀ) G‖ / ‖G‖',
               title=f"{p['title']}\ndotted: random baseline √(1 − r/V); mean, band: min–max over seeds")
        bx.axhline(1, color='k', ls=':', lw=1)
        bx.set(xlabel='training step', ylabel='visible / chance = c²·V / r',
               title='visible fraction over chance')
        bx.legend(*ax.get_legend_handles_labels(), loc='upper center', bbox_to_anchor=(0.5, -0.14), ncol=3,
                  fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def main(argv):
    logs = [a for a in argv if not a.startswith('-')]
    c, _ = options.parse_args([a for a in argv if a.startswith('-')], DEFAULTS, __file__)
    if len(logs) != 1 or not os.path.isfile(logs[0]):
        raise options.ConfigError(f"give one log.jsonl written by train.py (got {' '.join(logs) or 'none'}): "
                                 f"python plot.py out/RUN/log.jsonl [--out=FILE.png]")
    if c['out']:  # checked before the figure is drawn
        figure_path('out', c['out'], 'wide.png')
    print(log(logs[0], c['out']))


if __name__ == '__main__':
    options.one_line_errors()
    main(sys.argv[1:])
