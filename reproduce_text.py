"""
reproduce.py's experiments on text and on a language with a known floor: 3 (head rank on one backbone, text),
4 (the meter along training), 5 (the wide head on text: its basis and its lr) and 6 (head rank on hmm.py's
language). Their plans, the frozen-trunk analysis of experiment 3 and the summaries.
"""
import glob
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import fit_head
import hmm
import textdata
import measure
import plot
import stats
from options import ConfigError
from reproduce_runs import (
    EDGE, FIGURES, OURS, Tally, by_seed, ci, head_of, heads_of, hidden_states, in_parallel, lr_table, md,
    numbers, paired_by_seed, pm, run_dir, save_run, say, spread, write_table)


# -----------------------------------------------------------------------------
# the plan of experiments 3, 5 and 6: warmup–stable–decay (3 and 6 with cooldown branches)


def wsd_schedule(c):
    """Experiments 3, 5 and 6: warmup–stable–decay over e3_max_iters steps. The stable phase (stable steps) is
    cut into e3_budgets equal parts; the cooldown branch of budget k resumes the stable phase at its k-th
    checkpoint and decays over the last e3_cooldown of the budget. Returns stable, the stable phase's eval
    interval, and the branches as (stable steps, cooldown steps), the last ending at e3_max_iters."""
    total, parts = c['e3_max_iters'], c['e3_budgets']
    stable = round(total * (1 - c['e3_cooldown']))
    per_part = max(1, round(c['e3_schedule_evals'] / parts))
    if stable % parts or (stable // parts) % per_part:
        raise ConfigError(f"--e3_max_iters={total}: its stable phase ({stable} steps) must split into "
                          f"--e3_budgets={parts} parts of a whole number of evaluations ({per_part} each, "
                          f"--e3_schedule_evals); e.g. --e3_max_iters={parts * per_part * 10}")
    step = stable // parts
    ratio = c['e3_cooldown'] / (1 - c['e3_cooldown'])
    branches = [(k * step, max(1, round(k * step * ratio))) for k in range(1, parts)]
    return dict(stable=stable, interval=step // per_part, branches=branches + [(stable, total - stable)])


def plan_text(c, e):
    """Experiments 3, 5 (their data, the token file, is set once it is written) and 6 (hmm.py's language):
    the sweep runs (one warmup–stable–decay run each, evaluated at its end on every validation window, or
    on e6_eval_iters held-out batches) and, for 3 and 6, the fresh seeds' stable phase with its cooldown
    branches (wsd_schedule)."""
    total, wsd = c['e3_max_iters'], wsd_schedule(c)
    base = dict(data=None, n_embd=c['e3_n_embd'], n_layer=c['e3_n_layer'], n_head=c['n_head'],
                block_size=c['e3_block_size'], batch_size=c['e3_batch_size'], schedule='wsd',
                warmup_iters=max(1, int(c['warmup'] * total)))
    if e == '6':
        base.update(data=f"hmm:{c['e6_states']}", vocab_size=c['e6_vocab_size'])
    evals = c['e6_eval_iters'] if e == '6' else 0
    full = dict(base, max_iters=total, cooldown_iters=total - wsd['stable'], eval_interval=total,
                eval_iters=evals, log_interval=total, save_checkpoints=e == '5')
    if e == '5':
        configs = []
        for basis in [b.strip() for b in str(c['e5_bases']).split(',')]:
            mults = 'e5_trained_head_lr_mults' if basis == 'trained' else 'e5_head_lr_mults'
            for mult in numbers(c, mults):
                h = head_of(f"wide/{basis}", c['e3_n_embd'])
                configs.append(dict(key=f"{h['key']}_x{mult:g}", label=f"{h['label']}, head lr ×{mult:g}",
                                    info=dict(head=h['spec'], basis=basis, head_lr_mult=mult),
                                    args={**full, **h['args'], 'head_lr_mult': mult}))
        return configs
    trunk = dict(base, max_iters=wsd['stable'], cooldown_iters=0, eval_interval=wsd['interval'],
                 eval_iters=evals or c['e3_eval_iters'], log_interval=wsd['interval'], keep_checkpoints=True)
    return [dict(key=h['key'], label=h['label'], info=dict(head=h['spec']), args={**full, **h['args']},
                 trunk={**trunk, **h['args']}, branches=wsd['branches'])
            for h in heads_of(c, e)]


# -----------------------------------------------------------------------------
# experiment 3: the baselines (experiment 7's text gate too), the frozen-trunk analysis (probes, ceilings,
# frequency bins), the summary


def baselines(train, x, y, V):
    """Loss (nats per token) on the pairs x → y of count models of the train split: the unigram, add-one
    smoothed over the V types, and a bigram interpolated with it by Witten–Bell (ours):
    p(w | v) = λ c(v, w)/c(v) + (1 − λ) p_uni(w), λ = c(v) / (c(v) + t(v)), t(v) = the number of distinct
    successors of v (λ = 0 if c(v) = 0)."""
    train = np.asarray(train, dtype=np.int64)
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    uni = (np.bincount(train, minlength=V) + 1) / (len(train) + V)
    pairs, counts = np.unique(train[:-1] * V + train[1:], return_counts=True)
    cv = np.bincount(train[:-1], minlength=V)
    tv = np.bincount(pairs // V, minlength=V)
    i = np.minimum(np.searchsorted(pairs, x * V + y), len(pairs) - 1)
    lam = cv[x] / np.maximum(cv[x] + tv[x], 1)
    p = lam * np.where(pairs[i] == x * V + y, counts[i], 0) / np.maximum(cv[x], 1) + (1 - lam) * uni[y]
    return dict(unigram=float(-np.log(uni[y]).mean()), bigram=float(-np.log(p).mean()))


def frequency_bins(train, V, sizes):
    """The bin of each of the V types by its count in the train split: 0 for the sizes[0] most frequent, 1
    for the next sizes[1], ..., len(sizes) for the rest."""
    rank = np.empty(V, dtype=np.int64)
    rank[np.argsort(-np.bincount(train, minlength=V), kind='stable')] = np.arange(V)
    return np.searchsorted(np.cumsum(sizes), rank, side='right')


def fit_settings(c):
    """What an analysis depends on beyond the run: a --reuse with other settings analyses again."""
    return dict(probe_lr=c['e3_fit_lr'], ceiling_lrs=c['e3_ceiling_lrs'], patience=c['e3_fit_patience'],
                max_epochs=c['e3_fit_max_epochs'], stop='val even windows', report='val odd windows')


def fit(c, train, stop, B, A, lr):
    """fit_head on the train split's hidden states and targets `train`, stopped on `stop` (the even
    validation windows: the backbone trained on every train token, so no slice of the train split can
    tell a fit that generalizes from one that memorizes); evaluated every half epoch."""
    H = torch.cat([train[0], stop[0]])
    y = torch.cat([train[1], stop[1]])
    every = max(1, len(train[1]) // 2 // 4096)
    return fit_head.fit_head(H, y, B, A, lr=lr, batch_tokens=4096, holdout=len(stop[1]) / len(y),
                             eval_every=every, patience=c['e3_fit_patience'],
                             max_epochs=c['e3_fit_max_epochs'], seed=c['seed'])


def analyse(c, rec, data, windows, bins, ranks):
    """From a fresh run's final checkpoint (its longest cooldown branch): the loss per validation window (and
    its standard error), by frequency bin, the spectrum of G, and the probe: a full-rank head
    fitted on the frozen backbone's train-split hidden states, warm-started from the run's own head. The
    linear head's runs also fit the ceiling of each rank r in ranks: a trained B·A on this backbone, started
    from the best rank-r approximation of its head. Fits stop on the even validation windows and are
    reported, with the run's own head, on the odd ones (report_*)."""
    path = os.path.join(c['out'], 'exp3', rec['name'], f"cool{rec['branches'][-1]['iters']}", 'ckpt.pt')
    model = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path)).to(c['device'])
    model.eval().requires_grad_(False)
    (xv, yv), (xt, yt) = [(x.to(c['device']), y.to(c['device'])) for x, y in windows]
    W = model.lm_head.effective_weight()
    Hv, y = hidden_states(model, xv), yv.reshape(-1)
    with torch.no_grad():
        loss = torch.cat([F.cross_entropy(h @ W.T, t, reduction='none') for h, t in zip(Hv.split(4096),
                                                                                        y.split(4096))])
    per_window = loss.view(len(yv), -1).mean(1)
    b = torch.as_tensor(bins, device=y.device)[y]
    n = min(c['e3_spectrum_tokens'], len(y))
    m = measure.measure(Hv[:n], y[:n], W, spectrum_tokens=n, direction_tokens=0)
    train = (hidden_states(model, xt), yt.reshape(-1))
    # interleaved, not halves: both sets then sample every part of the split (its halves are other plays)
    Hw = Hv.view(len(yv), yv.size(1), -1)  # (windows, T, D)
    stop = (Hw[0::2].flatten(0, 1), yv[0::2].reshape(-1))
    report = (Hw[1::2].flatten(0, 1), yv[1::2].reshape(-1))
    probe = fit(c, train, stop, W.detach().clone(), None, c['e3_fit_lr'])
    ceilings = {}
    if rec['info']['head'] == 'linear':
        for r in ranks:
            B, A = fit_head.rank_r_init(W.detach(), r)
            tried = {lr: fit(c, train, stop, B, A, lr) for lr in numbers(c, 'e3_ceiling_lrs')}
            lr = min(tried, key=lambda k: tried[k]['holdout_loss'])  # chosen on the stopping windows
            ceiling = tried[lr]
            ceilings[str(r)] = dict(loss=fit_head.head_loss(*report, ceiling['B'], ceiling['A']),
                                    epochs=ceiling['epochs'], stopped=ceiling['stopped'], lr=lr,
                                    start=fit_head.head_loss(*report, B, A))
    by_bin = [loss[b == k].mean().item() if (b == k).any() else None for k in range(int(bins.max()) + 1)]
    spectrum = dict(tokens=n, rank_W=m['rank_W'], destroyed_ratio=m['destroyed_ratio'],
                    ey_floor=m['ey_floor'])
    return dict(settings=fit_settings(c), loss=loss.mean().item(),
                loss_se=stats.std_error(per_window.tolist()), report_loss=fit_head.head_loss(*report, W),
                probe_loss=fit_head.head_loss(*report, probe['B']), probe_epochs=probe['epochs'],
                probe_stopped=probe['stopped'], ceilings=ceilings, loss_by_frequency=by_bin,
                spectrum=spectrum)


def analyse_all(c, fresh, data, windows, bins, ranks):
    """analyse every fresh run not analysed yet (jobs at a time), saved in its run.json; then its checkpoint
    goes."""
    todo = [r for runs in fresh.values() for r in runs
            if r.get('analysis', {}).get('settings') != fit_settings(c)]
    todo.sort(key=lambda r: r['info']['head'] != 'linear')  # the ceilings' runs first: the longest
    for r in todo:
        ceilings = ', ceilings' if r['info']['head'] == 'linear' else ''
        say(f"exp3: analysing {r['name']}: window losses, probe{ceilings}")

    def work(r):
        r['analysis'] = analyse(c, r, data, windows, bins, ranks)
        save_run(c, r)
        return r

    in_parallel(c, Tally(), work, todo)
    for runs in fresh.values():
        for r in runs:
            for f in glob.glob(os.path.join(c['out'], 'exp3', r['name'], 'cool*', '*.pt')):
                os.remove(f)


def decomposition(per, spec, ref):
    """The head's rank effect against ref (linear), per seed, on the odd (report) validation windows:
    the gap own − ref's own, split into expressivity (the rank-r ceiling − ref's probe, both on ref's
    backbone), backbone (this probe − ref's probe) and the rest (head optimization); and own − probe. Each a
    paired interval over the seeds."""
    h, r = per[spec], per[ref]
    seeds = [s for s in h['seeds'] if s in r['seeds']]

    def at(p, key):
        return {s: v for s, v in zip(p['seeds'], p[key])}

    own, probe, ceiling = at(h, 'report_loss'), at(h, 'probe_loss'), at(h, 'ceiling_loss')
    r_own, r_probe = at(r, 'report_loss'), at(r, 'probe_loss')
    parts = dict(gap=[own[s] - r_own[s] for s in seeds],
                 expressivity=[ceiling[s] - r_probe[s] if ceiling[s] is not None else None for s in seeds],
                 backbone=[probe[s] - r_probe[s] for s in seeds],
                 own_minus_probe=[own[s] - probe[s] for s in seeds])
    parts['rest'] = [g - e - b if e is not None else None
                     for g, e, b in zip(parts['gap'], parts['expressivity'], parts['backbone'])]
    out = {k: stats.paired(v, [0.0] * len(v)) for k, v in parts.items()}
    return dict(seeds=seeds, per_seed=parts, **out)


def summary_exp3(c, runs, tokens):
    """Experiment 3: text (the token file `tokens`), head rank on one backbone, fixed-basis heads. The lr
    sweep on the sweep seed; on each fresh seed the stable phase and its cooldown branches (the annealed
    curve, the ×-fold), the final checkpoint analysed (window losses, probe, ceilings) and deleted; the
    widest head is checked against the stage gate."""
    D, T = c['e3_n_embd'], c['e3_block_size']
    data = textdata.load_data(dict(data=tokens, block_size=T))
    V = data['vocab_size']
    train_ids = np.asarray(data['train'], dtype=np.int64)
    xv, yv = textdata.val_windows(data, T)  # every window of the validation split, as train.py --eval_iters=0
    windows = [(xv, yv), textdata.val_windows(data, T, split='train')]
    base = baselines(train_ids, xv.numpy().ravel(), yv.numpy().ravel(), V)
    sizes = numbers(c, 'e3_freq_bins', int)
    bins = frequency_bins(train_ids, V, sizes)
    names = [f"top {sizes[0]:,}"] + [f"next {n:,}" for n in sizes[1:]] + ['the rest']
    heads = heads_of(c, '3')
    ref = heads[-1]['spec']  # the widest head
    ranks = sorted({h['rank'] for h in heads if h['rank'] < D})
    tables = {h['spec']: lr_table(runs[h['key']], head=h['spec'], rank=h['rank']) for h in heads}
    fresh = {spec: t['best_runs'] for spec, t in tables.items()}
    analyse_all(c, fresh, data, windows, bins, ranks)
    ref_a = {r['seed']: r['analysis'] for r in fresh[ref]}  # the ceilings were fitted on ref's backbones

    def ceiling(seed, rank):
        """The rank-r ceiling on ref's backbone of this seed (r = D: ref's probe); None without one."""
        if seed not in ref_a:
            return None
        if rank >= D:
            return ref_a[seed]['probe_loss']
        return ref_a[seed]['ceilings'][str(rank)]['loss']

    per, rows = {}, []
    for h in heads:
        t, rs = tables[h['spec']], fresh[h['spec']]
        rows += t['rows']
        a = [r['analysis'] for r in rs]
        per[h['spec']] = dict(label=h['label'], rank=h['rank'], best_lr=t['lr'], edge=t['edge'],
                              seeds=[r['seed'] for r in rs],
                              final_val_loss=[r['branches'][-1]['val_loss'] for r in rs],
                              final_val_loss_se=[x['loss_se'] for x in a],
                              report_loss=[x['report_loss'] for x in a],
                              probe_loss=[x['probe_loss'] for x in a],
                              probe_epochs=[x['probe_epochs'] for x in a],
                              probe_stopped=[x['probe_stopped'] for x in a],
                              ceiling_fits={k: {f: [x['ceilings'][k][f] for x in a] for f in fit}
                                            for k, fit in a[0]['ceilings'].items()},  # the linear head's
                              ceiling_loss=[ceiling(r['seed'], h['rank']) for r in rs],
                              annealed={r['seed']: [[b['tokens'], b['val_loss']] for b in r['branches']]
                                        for r in rs},
                              loss_by_frequency={n: [x['loss_by_frequency'][k] for x in a]
                                                 for k, n in enumerate(names)},
                              spectrum={k: [x['spectrum'][k] for x in a] for k in a[0]['spectrum']})
    curves = {spec: p['annealed'] for spec, p in per.items()}
    xfold = stats.xfold_curve(curves, ref, stats.levels_between(curves, ref, 20))
    split = {spec: decomposition(per, spec, ref) for spec in per if spec != ref}
    wl = float(np.mean(per[ref]['final_val_loss']))
    passed = wl <= base['unigram'] - c['e3_gate_unigram'] and wl <= base['bigram'] + c['e3_gate_bigram']
    verdict = (f"Stage gate {'passed' if passed else 'FAILED'}: the widest head ends at {wl:.3f} nats, "
               f"{wl - base['unigram']:+.2f} from the unigram loss {base['unigram']:.3f} "
               f"(gate: ≤ −{c['e3_gate_unigram']:g}) and {wl - base['bigram']:+.2f} from the bigram loss "
               f"{base['bigram']:.3f} (≤ +{c['e3_gate_bigram']:g}).")
    if not passed:
        verdict += " This experiment cannot conclude anything about the effect of head rank on text."
    narrowest = heads[0]['spec']
    final = {spec: dict(zip(p['seeds'], p['final_val_loss'])) for spec, p in per.items()}
    control = (f"Positive control, {per[narrowest]['label']} − {per[ref]['label']}: "
               f"{ci(paired_by_seed(final[narrowest], final[ref]), '{:+.3f}', p=True)} nats in final "
               f"validation loss (every window; paired over fresh seeds)")
    lines = []
    for spec, p in per.items():
        d = split.get(spec)
        se = np.mean(p['final_val_loss_se'])
        lines.append([p['label'], f"{plot.sci(p['best_lr'])}{EDGE[p['edge']]}",
                      f"{ci(stats.interval(p['final_val_loss']))} (± {se:.3f})",
                      ci(stats.interval(p['report_loss'])), ci(stats.interval(p['probe_loss'])),
                      ci(stats.interval(p['ceiling_loss'])),
                      *([ci(d[k], '{:+.3f}') for k in ('gap', 'expressivity', 'backbone', 'rest')] if d else
                        ['-'] * 4),
                      ci(d['own_minus_probe'] if d else stats.paired(
                          p['report_loss'], p['probe_loss']), '{:+.3f}')])
    fold_lines = xfold_lines(xfold, per)
    tokens_seen = c['e3_max_iters'] * c['e3_batch_size'] * T
    val_share = np.bincount(bins[yv.numpy().ravel()], minlength=len(names)) / yv.numel()
    wsd = wsd_schedule(c)
    controls = dict(data=os.path.basename(c['text']), encoding=c['e3_encoding'], vocab_size=V, n_embd=D,
                    block_size=T, n_layer=c['e3_n_layer'], batch_size=c['e3_batch_size'],
                    max_iters=c['e3_max_iters'], tokens=tokens_seen, train_tokens=len(train_ids),
                    epochs=round(tokens_seen / len(train_ids), 2), val_tokens=int(yv.numel()),
                    lrs=numbers(c, 'e3_lrs'), frequency_bins=names,
                    val_share_by_bin=val_share.round(4).tolist(),
                    budgets=[b + k for b, k in wsd['branches']],
                    varies='only the head (a fixed selector of r coordinates: rank is the only difference) '
                           'and its lr',
                    ours=OURS[1:] + [
                        "AdamW (0.9, 0.95), weight decay 0.1 on matrices, grad clip 1; "
                        f"warmup–stable–decay: linear warmup over {c['warmup']:g} of the steps, "
                        "constant, linear to lr/10 over the "
                        f"last {c['e3_cooldown']:g} of each budget (cooldown branches from the stable phase)",
                        "vocabulary compacted to the ids that occur; 90% train, 10% validation (every "
                        "window)",
                        "baselines from train counts: add-one unigram, Witten–Bell bigram",
                        f"probe (AdamW lr {c['e3_fit_lr']:g}, from the run's own head) and ceilings (lr "
                        f"{c['e3_ceiling_lrs']}, the best on the stopping windows, from the best rank-r "
                        "approximation of the linear head): "
                        "fitted on the frozen final hidden states of the train split's windows until the "
                        "loss on the even validation windows has not improved for "
                        f"{c['e3_fit_patience']} half-epoch evaluations, or for at most "
                        f"{c['e3_fit_max_epochs']:g} epochs (a budget, not convergence); probe, ceiling and "
                        "own head reported on the odd windows (the backbone trained on every train token, "
                        "so a train slice cannot stop a fit)",
                        "intervals: 95%, t over the fresh seeds, paired by seed; ×-fold: geometric mean of "
                        "tokens(head)/tokens(linear) to reach each annealed loss (log-tokens interpolated "
                        "between budgets)",
                        "(± x): the validation loss's standard error over its windows",
                        f"spectrum on {c['e3_spectrum_tokens']} val tokens"])
    gate = dict(passed=passed, widest_final_loss=wl)
    write_table(c, 'exp3_text', rows, controls, baselines=base, gate=gate, verdict=verdict,
                positive_control=control, heads=per, decomposition=split, xfold=xfold)
    plot.exp3(os.path.join(c['out'], FIGURES['3'][0]), per, xfold, base, names,
              f"{controls['data']}, {c['e3_encoding']} compacted (V = {V:,}), D = {D}, "
              f"{controls['epochs']:g} epochs, {len(per[ref]['seeds'])} fresh seeds")
    table = md(['head', 'best lr (sweep seed)', 'final val loss [95% CI] (± window SE)',
                'own head, odd windows', 'probe, odd windows',
                'ceiling (rank r on the linear backbone), odd windows', 'own − linear\'s own, odd windows',
                '= expressivity',
                '+ backbone', '+ rest (head optimization)', 'own − probe'], lines)
    table += '\n\n×-fold in tokens to reach an annealed loss, against linear:\n\n' + md(
        ['head', 'target loss', 'tokens / linear\'s, geometric mean [95% CI]', 'seeds'], fold_lines)
    return dict(controls=controls, table=table, notes=[verdict, control],
                heads=[dict(label=h['label'], rank=h['rank'], runs=fresh[h['spec']]) for h in heads])


def xfold_lines(xfold, per):
    """Rows of the ×-fold table: every fifth level of each head's curve."""
    lines = []
    for spec, points in xfold.items():
        for q in points[::max(1, len(points) // 5)]:
            bound = f"> {q['lower_bound']:.2f}" if q['censored'] else ''
            lines.append([per[spec]['label'], f"{q['level']:.3f}", ci(q['ratio'], '{:.2f}'),
                          f"{q['n_ok']} ok, {q['censored']} never {bound}".strip()])
    return lines


# -----------------------------------------------------------------------------
# experiment 6: head rank against hmm.py's exact floor


def summary_exp6(c, runs):
    """Experiment 6: head rank on hmm.py's language. Per head: the annealed curve of each fresh seed, its
    final loss above the exact floor, paired against the widest head, and the ×-fold in tokens against it."""
    lang = hmm.Language(c['e6_vocab_size'], c['e6_states'])
    floor = lang.floor(c['e3_block_size'])
    heads = heads_of(c, '6')
    ref = heads[-1]['spec']
    per, rows, lines = {}, [], []
    for h in heads:
        t = lr_table(runs[h['key']], head=h['spec'], rank=h['rank'])
        rows += t['rows']
        rs = t['best_runs']
        per[h['spec']] = dict(label=h['label'], rank=h['rank'], best_lr=t['lr'], edge=t['edge'],
                              seeds=[r['seed'] for r in rs],
                              final_val_loss=[r['branches'][-1]['val_loss'] for r in rs],
                              above_floor=[r['branches'][-1]['val_loss'] - floor for r in rs],
                              annealed={r['seed']: [[b['tokens'], b['val_loss']] for b in r['branches']]
                                        for r in rs})
    final = {spec: dict(zip(p['seeds'], p['final_val_loss'])) for spec, p in per.items()}
    for spec, p in per.items():
        p['minus_widest'] = paired_by_seed(final[spec], final[ref])
        gap = '(reference)' if spec == ref else ci(p['minus_widest'], '{:+.3f}', p=True)
        above = ci(stats.interval(p['above_floor']), '{:+.3f}')
        lines.append([p['label'], f"{plot.sci(p['best_lr'])}{EDGE[p['edge']]}",
                      ci(stats.interval(p['final_val_loss'])), above, gap])
    curves = {spec: p['annealed'] for spec, p in per.items()}
    xfold = stats.xfold_curve(curves, ref, stats.levels_between(curves, ref, 20))
    controls = dict(data=f"hmm.py, V = {c['e6_vocab_size']:,}, S = {c['e6_states']} states",
                    floor=floor, entropy_rate=lang.entropy_rate(), first_position=lang.first_entropy(),
                    log_prob_rank_at_most=c['e6_states'] + 1, n_embd=c['e3_n_embd'],
                    n_layer=c['e3_n_layer'], block_size=c['e3_block_size'], batch_size=c['e3_batch_size'],
                    max_iters=c['e3_max_iters'], lrs=numbers(c, 'e6_lrs'),
                    varies='only the head (a fixed selector of r coordinates) and its lr',
                    ours=OURS[1:] + [
                        "experiment 3's sizes and warmup–stable–decay schedule with its cooldown branches",
                        f"{c['e6_eval_iters']} held-out batches per evaluation, the same at every evaluation "
                        "(a generator seeded apart from training's)",
                        "floor: the exact least loss over a window (hmm.Language.floor)"])
    write_table(c, 'exp6_hmm', rows, controls, heads=per, xfold=xfold)
    plot.exp6(os.path.join(c['out'], FIGURES['6'][0]), per, xfold, floor,
              f"hmm.py V = {c['e6_vocab_size']:,}, S = {c['e6_states']}, D = {c['e3_n_embd']}, "
              f"{len(per[ref]['seeds'])} fresh seeds")
    table = md(['head', 'best lr (sweep seed)', 'final val loss [95% CI]', 'above the floor',
                "− the widest head's, paired [95% CI]"], lines)
    table += '\n\n×-fold in tokens to reach an annealed loss, against the widest head:\n\n' + md(
        ['head', 'target loss', "tokens / the widest head's, geometric mean [95% CI]", 'seeds'],
        xfold_lines(xfold, per))
    note = (f"The floor: {floor:.4f} nats per token over a window of {c['e3_block_size']} ("
            f"{lang.entropy_rate():.4f} at positions ≥ 1, {lang.first_entropy():.4f} at position 0); "
            f"log p(y | x) has rank ≤ {c['e6_states'] + 1}, so every head of rank ≥ {c['e6_states'] + 1} "
            "can express it.")
    return dict(controls=controls, table=table, notes=[note])


# -----------------------------------------------------------------------------
# experiment 4: the meter along training, at matched steps and at a matched loss


def at_loss(run, level, key):
    """The eval row's key at the run's first evaluation with a validation loss ≤ level (None: never)."""
    return next((x.get(key) for x in run['evals'] if x['val_loss'] <= level), None)


def summary_exp4(c, heads):
    """Experiment 4: the meter along training, from the best lr's runs of experiments 1 and 3 of this
    invocation (heads: '1' and '3' to their summaries' heads), at matched steps (start, middle, end) and at a
    matched validation loss: the lowest that every run of the panel reaches. None if neither ran."""
    panels, rows = [], []
    for e, data in (('1', 'SpamLang'), ('3', 'text')):
        if e not in heads:
            continue
        level = max(min(x['val_loss'] for x in q['evals']) for h in heads[e] for q in h['runs'])
        for h in heads[e]:
            run = h['runs'][0]
            V, r = run['config']['vocab_size'], h['rank']
            destroyed = np.array([[x.get('grad_destroyed', np.nan) for x in q['evals']] for q in h['runs']])
            visible = np.array([[x.get('visible_over_chance', np.nan) for x in q['evals']]
                                for q in h['runs']])
            at = dict(init=0, mid=destroyed.shape[1] // 2, end=-1)
            row = dict(data=data, head=h['label'], V=V, baseline=round(math.sqrt(1 - r / V), 6))
            for k, i in at.items():
                row[f"destroyed_{k}"] = pm(spread(destroyed[:, i]), '{:.6f}' if V > 9999 else '{:.4f}')
            for k, i in at.items():
                row[f"visible/chance_{k}"] = pm(spread(visible[:, i]), '{:.2f}')
            row['mid'] = f"step {run['evals'][at['mid']]['iter']} of {run['evals'][-1]['iter']}"
            row['matched_loss'] = round(level, 4)
            for key, name, fmt in (('iter', 'step', '{:.0f}'), ('grad_destroyed', 'destroyed', '{:.4f}'),
                                   ('visible_over_chance', 'visible/chance', '{:.2f}')):
                row[f"{name}_matched"] = pm(spread([at_loss(q, level, key) for q in h['runs']]), fmt)
            rows.append(row)
        panels.append(dict(title=f"{data} (experiment {e}), V = {V:,}", V=V, heads=heads[e]))
    if not panels:
        return None
    controls = dict(meter="train.py's at each eval, first held-out batch: ‖P_ker(Wᵀ) G‖_F / ‖G‖_F; SpamLang: "
                          "positions ≥ 1",
                    baseline='√(1 − rank(W)/V), random', visible_over_chance='c²·V/rank(W), 1 = chance',
                    runs='best lr',
                    matched="at matched steps (init, mid, end) and at the first evaluation with a validation "
                            "loss ≤ matched_loss, the lowest loss every run of the panel reaches (ours)")
    write_table(c, 'exp4_meter', rows, controls)
    plot.exp4(os.path.join(c['out'], FIGURES['4'][0]), panels)
    return dict(controls=controls, table=md(list(rows[0]), [list(r.values()) for r in rows]), notes=[])


# -----------------------------------------------------------------------------
# experiment 5: the wide head on text, its basis × its head lr


def summary_exp5(c, runs, tokens):
    """Experiment 5: the wide head (r = D) on experiment 3's text and sizes, its basis A (the selector, i.e.
    the linear head; fixed random orthogonal; trained) × a head lr multiplier, the backbone at the linear
    head's best lr; every cell on the fresh seeds, paired against the linear head (select, ×1)."""
    T = c['e3_block_size']
    data = textdata.load_data(dict(data=tokens, block_size=T))
    xv, yv = textdata.val_windows(data, T)
    configs = plan_text(c, '5')
    ref = next(x for x in configs if x['info']['basis'] == 'select' and x['info']['head_lr_mult'] == 1)
    sweep = lr_table(runs[ref['key']], head=ref['info']['head'])
    every = [r for x in configs for r in runs[x['key']]]
    ses = in_parallel(c, Tally(), lambda r: window_se(c, r, xv, yv), every)
    se = dict(zip([r['name'] for r in every], ses))
    final = {}
    for x in configs:
        fresh = [r for r in runs[x['key']] if not r['sweep']]
        final[x['key']] = by_seed(fresh, lambda r: r['evals'][-1]['val_loss'])
    cells, lines = [], []
    for x in configs:
        fresh = [r for r in runs[x['key']] if not r['sweep']]
        cell = dict(x['info'], label=x['label'], lr=fresh[0]['lr'], seeds=sorted(final[x['key']]),
                    final_val_loss=[final[x['key']][s] for s in sorted(final[x['key']])],
                    window_se=[se[r['name']] for r in fresh],
                    loss=stats.interval(list(final[x['key']].values())),
                    minus_linear=paired_by_seed(final[x['key']], final[ref['key']]))
        cells.append(cell)
        lines.append([x['info']['basis'], f"×{x['info']['head_lr_mult']:g}",
                      f"{ci(cell['loss'])} (± {np.mean(cell['window_se']):.3f})",
                      '(reference)' if x is ref else ci(cell['minus_linear'], '{:+.3f}', p=True)])
    controls = dict(data=os.path.basename(c['text']), head='wide (r = D = %d)' % c['e3_n_embd'],
                    backbone_lr=sweep['lr'], backbone_lr_edge=sweep['edge'], lrs=numbers(c, 'e3_lrs'),
                    varies="the head's basis A and its lr multiplier; the backbone's lr is the linear "
                           "head's best",
                    ours=["the sizes, data and warmup–stable–decay schedule of experiment 3 (its last "
                          "budget)",
                          "lr swept on the linear head (wide/select ×1) on the sweep seed; every cell at it "
                          "on the fresh seeds",
                          "A: select = the first D rows of I (the linear head, parameter for parameter); "
                          "random = a fixed orthogonal matrix; trained = the paper's factorization "
                          "(orthogonal init)",
                          "intervals: 95%, t over the fresh seeds, paired by seed with the linear head; "
                          "(± x): the standard error over validation windows"])
    write_table(c, 'wide_diagnosis', sweep['rows'], controls, cells=cells)
    table = md(['A', 'head lr', 'final val loss [95% CI] (± window SE)', '− linear, paired [95% CI]'], lines)
    note = (f"Backbone lr {plot.sci(sweep['lr'])}{EDGE[sweep['edge']]}: the linear head's best of "
            f"{', '.join(plot.sci(v) for v in numbers(c, 'e3_lrs'))} on the sweep seed.")
    return dict(controls=controls, table=table, notes=[note])


def window_se(c, rec, xv, yv):
    """The standard error of a run's final validation loss over the validation windows, from its final
    checkpoint (then deleted)."""
    path = os.path.join(run_dir(c, rec), 'ckpt.pt')
    if 'window_se' not in rec:
        model = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path)).to(c['device']).eval()
        with torch.no_grad():
            logits = torch.cat([model(x.to(c['device']))[0].float() for x in xv.split(64)])  # (n, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), yv.reshape(-1).to(c['device']), reduction='none')
        rec['window_se'] = stats.std_error(loss.view(len(yv), -1).mean(1).tolist())
        save_run(c, rec)
    if os.path.exists(path):
        os.remove(path)
    return rec['window_se']
