"""
reproduce.py's experiment 7, beyond the paper: remedies.py's heads, each against its matched control or
stop-gradient twin, on SpamLang, hmm.py's language or text; the gradient each passes back (remedies.head_meter
on the fresh runs' checkpoints) and the frozen-trunk fits that separate the head from its backbone.
"""
import glob
import math
import os
import threading

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import hmm
import textdata
import measure
import plot
import remedies
import spamlang
from options import ConfigError
from model import GPT, GPTConfig
from reproduce_runs import (
    EDGE, OURS, Tally, ci, cosine, final_score, head_of, head_specs, in_parallel, lr_table, md, numbers,
    paired_by_seed, pm, read_log, run_dir, save_run, say, spread, sweep_choice, write_table)
from reproduce_text import baselines


# -----------------------------------------------------------------------------
# experiment 7: heads beyond the paper (remedies.py); its analysis reads the fresh runs' checkpoints

E7_PAIRS = (('whiten', 'linear'), ('overparam', 'linear'), ('blocks', 'wide:{2D}/random'),
            ('blocks', 'blocksum'), ('blocks', 'blocks_sg'), ('mlp', 'wide:{4D}/random'), ('mlp', 'prehead'),
            ('mos', 'mos1'), ('sigsoftmax', 'linear'))  # candidate, its matched control or twin
FITS = ('frozen_init', 'linear_on_its_trunk', 'it_on_linear_trunk')  # the frozen-trunk fits, by name
REUSED_FITS = ('frozen_init', 'it_on_linear_trunk')  # a remedies.SAME_FORWARD head's: its twin's, as fitted
FORWARD_AD = threading.Lock()  # torch's forward-mode autodiff levels are global: one thread at a time
GLOBAL_RNG = threading.Lock()  # ... and so is its default generator, which a model's init draws from


def plan_exp7(c):
    """Experiment 7 (SpamLang, hmm.py's language or text): one backbone, only the head changes; every
    evaluation keeps a checkpoint (the meter reads them; a sweep run's are deleted)."""
    steps, interval, D = c['e7_max_iters'], c['e7_eval_interval'], c['e7_n_embd']
    e7_corpus(c, load=False)  # a bad --e7_data is a one-line error now, before any run
    text = c['e7_data'] == 'text'  # its token file is set once it is written; V comes from it
    base = dict(data=c['e7_data'], vocab_size=None if text else c['e7_vocab_size'], n_embd=D,
                n_layer=c['e7_n_layer'], n_head=c['n_head'], block_size=c['e7_block_size'],
                batch_size=c['e7_batch_size'], max_iters=steps, warmup_iters=max(1, int(c['warmup'] * steps)),
                eval_interval=interval, eval_iters=c['e7_eval_iters'], log_interval=interval,
                keep_checkpoints=True)
    heads = [head_of(spec, D) for spec in head_specs(c, 'e7_heads')]
    return [dict(key=h['key'], label=h['spec'], info=dict(head=h['spec']), args={**base, **h['args']})
            for h in heads]


def e7_fresh_seeds(c, spec=None):
    """Experiment 7's fresh seeds: e7_seeds of them for a head of e7_decisive (and for spec=None), the first
    e7_other_seeds of the same for any other head."""
    n = c['e7_seeds'] if spec is None or spec in head_specs(c, 'e7_decisive') else c['e7_other_seeds']
    return [c['seed'] + c['sweep_seeds'] + i for i in range(n)]


def seed_note(per):
    """How many fresh seeds experiment 7's heads ran ({spec: its summary, with seeds}), in words."""
    counts = {spec: len(p['seeds']) for spec, p in per.items()}
    most = max(counts.values())
    fewer = [spec for spec, n in counts.items() if n < most]
    if not fewer:
        return f"{most} fresh seeds"
    return f"{most} fresh seeds ({min(counts.values())} for {', '.join(fewer)})"


def e7_corpus(c, load=True):
    """Experiment 7's data as textdata.load_data gives it: SpamLang, hmm.py's language, or --text's tokens
    (cl100k compacted, in <out>/exp7; V from the text). A bad --e7_data is a ConfigError, checked without
    tokenizing when load is False."""
    if c['e7_data'] == 'text':
        if not c['text']:
            raise ConfigError("--e7_data=text reads --text: give --text=FILE.txt, or another --e7_data")
        if not load:
            return None
        folder = os.path.join(c['out'], 'exp7')
        os.makedirs(folder, exist_ok=True)
        path = textdata.tokenize_text(c['text'], c['e3_encoding'], folder, compact=True)
        return textdata.load_data(dict(data=path, block_size=c['e7_block_size']))
    if c['e7_data'] == 'spamlang':
        return textdata.load_data(dict(data='spamlang', vocab_size=c['e7_vocab_size']))
    if c['e7_data'].split(':')[0] != 'hmm':
        raise ConfigError(f"--e7_data={c['e7_data']}: give spamlang, text (with --text) or hmm[:S]")
    return hmm.corpus(c['e7_data'], c['e7_vocab_size'])


def e7_batches(c, seed, n, batch_size=None, split='train'):
    """n batches of experiment 7's data and size from the generator of `seed` (text: of `split`)."""
    gen = spamlang.make_generator(seed)
    corpus = e7_corpus(c)
    B = batch_size or c['e7_batch_size']
    return [textdata.get_batch(corpus, split, B, c['e7_block_size'], gen, 'cpu') for _ in range(n)]


def meter_batch(c):
    """The batch every checkpoint's meter reads: e7_meter_sequences held-out sequences, targets at position 0
    ignored (−1): G holds positions ≥ 1 only (SpamLang's determined ones)."""
    x, y = e7_batches(c, c['seed'] + 10_000, 1, c['e7_meter_sequences'], 'val')[0]
    y = y.clone()
    y[:, 0] = -1
    return x, y


def later_positions(logits, y):
    """Loss and top-1 accuracy on positions ≥ 1."""
    logits, y = logits[:, 1:].float(), y[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    return dict(loss=loss, acc=(logits.argmax(-1) == y).float().mean().item())


def scheduled_lr(cfg, it):
    """train.py's cosine schedule (warmup, then cosine to min_lr) at step it, from a run's config."""
    lr, warm, steps, low = cfg['learning_rate'], cfg['warmup_iters'], cfg['max_iters'], cfg['min_lr']
    if it < warm:
        return lr * (it + 1) / (warm + 1)
    ratio = min(1.0, (it - warm) / max(1, steps - warm))
    return low + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - low)


def checkpoint_meter(path, x, y):
    """From one checkpoint: remedies.head_meter on the batch x, y, and step_cos, the cosine of −G with the
    change of the whole model's logits (trunk included) over one real optimizer step: AdamW from the
    checkpoint's state at its scheduled lr, grad clip as trained, on this batch itself."""
    ckpt = checkpoint.load_checkpoint(path)
    cfg = ckpt['config']
    model = checkpoint.model_from_checkpoint(ckpt)
    with torch.no_grad():
        h = model.hidden(x)
    with FORWARD_AD:
        m = remedies.head_meter(model.lm_head, h, y, tokens=y.numel())
    opt = model.configure_optimizers(cfg['weight_decay'], cfg['learning_rate'], (cfg['beta1'], cfg['beta2']),
                                     'cpu', cfg['head_lr_mult'])
    opt.load_state_dict(ckpt['optimizer'])
    for group in opt.param_groups:
        group['lr'] = scheduled_lr(cfg, ckpt['iter_num']) * group['lr_mult']
    logits, loss = model(x, y)
    loss.backward()
    if cfg['grad_clip'] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg['grad_clip'])
    opt.step()
    with torch.no_grad():
        keep = y >= 0
        G = measure.logit_grad(logits.detach()[keep], y[keep])                   # (n, V), float64
        dU = (model(x)[0].double() - logits.detach().double())[keep]
        m['step_cos'] = (-(G * dU).sum() / (G.norm() * dU.norm()).clamp_min(1e-300)).item()
    return dict(m, iter=ckpt['iter_num'])


def fit_head_alone(c, model, seed):
    """Train model's head alone, its trunk frozen, on fresh batches of its data (e7_fit_steps AdamW steps,
    cosine from e7_fit_lr, no weight decay); the held-out loss and accuracy (positions ≥ 1) at each quarter:
    the last two agree when it has converged."""
    model.transformer.requires_grad_(False)
    params = [p for p in model.lm_head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c['e7_fit_lr'], betas=(0.9, 0.95), weight_decay=0.0)
    stream = e7_batches(c, seed + 20_000, c['e7_fit_steps'])
    held = e7_batches(c, c['seed'] + 30_000, c['e7_eval_iters'], split='val')
    steps, curve = c['e7_fit_steps'], []
    for step in range(steps):
        for group in opt.param_groups:
            group['lr'] = cosine(c['e7_fit_lr'], step, steps)
        x, y = stream[step]
        loss = model(x, y)[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 4) == 0 or step + 1 == steps:
            with torch.no_grad():
                ms = [later_positions(model(x)[0], y) for x, y in held]
            curve.append(dict(loss=float(np.mean([m['loss'] for m in ms])),
                              acc=float(np.mean([m['acc'] for m in ms]))))
    return dict(curve[-1], curve=curve)


def train_seconds(rows):
    """{iter: seconds} of a run's training steps up to each evaluation, from its log's train rows (each the
    mean step time since the one before; evaluations and saves are not counted)."""
    clock, last, total = {0: 0.0}, 0, 0.0
    for row in rows:
        total += row['dt_ms'] / 1000 * (row['iter'] - last)
        last = row['iter']
        clock[last] = total
    return clock


def fresh_model(rec):
    """A run's model at init (its seed's draw, as train.py draws it), on the CPU. The draw uses torch's global
    generator, which the analysis threads share: one thread at a time."""
    with GLOBAL_RNG:
        torch.manual_seed(rec['seed'])
        return GPT(GPTConfig(**{k: rec['config'][k] for k in checkpoint.MODEL_KEYS if k in rec['config']}))


def trunk_of(c, rec):
    """The trained trunk (transformer.*) of a fresh run's final checkpoint."""
    state = checkpoint.load_checkpoint(os.path.join(run_dir(c, rec), 'ckpt.pt'))['model']
    return {k: v for k, v in state.items() if k.startswith('transformer.')}


def analyse_exp7(c, fresh):
    """Every fresh run: the meter at each evaluation's checkpoint; the first fresh seed's runs also: the head
    fitted alone on the frozen trunk at init, the linear head refitted on its trained trunk, and it fitted on
    the linear head's trained trunk (the frozen-trunk transfer). Saved in run.json; then the checkpoints
    go."""
    x, y = meter_batch(c)
    first = c['seed'] + c['sweep_seeds']
    settings = dict(meter_sequences=c['e7_meter_sequences'], fit_steps=c['e7_fit_steps'],
                    fit_lr=c['e7_fit_lr'])
    linear = next((r for r in fresh.get('linear', []) if r['seed'] == first), None)
    todo = [(spec, r) for spec, runs in fresh.items() for r in runs
            if r.get('analysis', {}).get('settings') != settings]
    transfer = linear is not None and any(r['seed'] == first for _, r in todo)
    linear_trunk = trunk_of(c, linear) if transfer else None  # read once: every head is fitted on it
    twins = {s: t for s, t in remedies.SAME_FORWARD.items() if s in fresh and t in fresh}  # fits reused
    say(f"exp7: the meter at every checkpoint of {len(todo)} runs; frozen-trunk fits and transfers")

    def work(item):
        spec, r = item
        d = run_dir(c, r)
        paths = sorted(glob.glob(os.path.join(d, 'ckpt_*.pt')), key=lambda p: int(p[:-3].split('_')[-1]))
        if not paths:
            raise ConfigError(f"{d} was analysed with other settings and its checkpoints are gone: run "
                              "experiment 7 again without --reuse")
        a = dict(settings=settings, meter=[checkpoint_meter(p, x, y) for p in paths])
        if r['seed'] == first and spec not in twins:
            a['frozen_init'] = fit_head_alone(c, fresh_model(r), r['seed'])
        if r['seed'] == first and linear_trunk is not None:
            plain = fresh_model(linear)
            plain.load_state_dict(trunk_of(c, r), strict=False)
            a['linear_on_its_trunk'] = fit_head_alone(c, plain, r['seed'])
            if spec == 'linear':  # the same fit
                a['it_on_linear_trunk'] = a['linear_on_its_trunk']
            elif spec not in twins:
                mine = fresh_model(r)
                mine.load_state_dict(linear_trunk, strict=False)
                a['it_on_linear_trunk'] = fit_head_alone(c, mine, r['seed'])
        r['analysis'] = a
        save_run(c, r)

    in_parallel(c, Tally(), work, todo)
    for spec, twin in twins.items():
        r = next((r for r in fresh[spec] if r['seed'] == first), None)
        done = next((t for t in fresh[twin] if t['seed'] == first), None)
        if r is not None and done is not None:
            r['analysis'].update({k: done['analysis'][k] for k in REUSED_FITS if k in done['analysis']})
            save_run(c, r)
    for runs in fresh.values():
        for r in runs:
            for f in glob.glob(os.path.join(run_dir(c, r), '*.pt')):
                os.remove(f)


def model_cost(c, spec):
    """A head's cost in experiment 7's model: its parameters, the whole model's (non-embedding) parameters,
    and the FLOPs of one training step's forward and backward per token, counted by torch's
    FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    h = head_of(spec, c['e7_n_embd'])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=e7_corpus(c)['vocab_size'], block_size=c['e7_block_size'],
                          n_layer=c['e7_n_layer'], n_head=c['n_head'], n_embd=c['e7_n_embd'], **h['args']))
    x, y = e7_batches(c, 0, 1)[0]
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, y)[1].backward()
    head_params = sum(p.numel() for p in model.lm_head.parameters())
    return dict(head_params=head_params, params=model.get_num_params(),
                flops_per_token=counter.get_total_flops() / x.numel())


def e7_gate(c, corpus, linear):
    """Experiment 7's stage gate on the linear head's mean final accuracy (SpamLang) or loss: gate, verdict,
    the data's name, the tables' stem and the baselines (extra)."""
    none = linear is None
    if corpus['kind'] == 'spamlang':  # the linear head between 30% and 80% accuracy, where a head can differ
        gate = dict(linear_acc=linear, passed=not none and 0.3 <= linear <= 0.8)
        verdict = '' if none else f"the linear head's final accuracy {100 * linear:.1f}% (the gate: 30–80%)"
        return gate, verdict, 'SpamLang', 'remedies', {}
    if corpus['kind'] == 'hmm':  # the linear head at least halfway from the unigram loss down to the floor
        lang = corpus['language']
        extra = dict(floor=lang.floor(c['e7_block_size']), unigram=lang.first_entropy())
        gate = dict(linear_loss=linear, passed=not none and
                    linear - extra['floor'] <= 0.5 * (extra['unigram'] - extra['floor']))
        verdict = '' if none else (f"the linear head's final loss {linear:.4f}, the floor "
                                   f"{extra['floor']:.4f}, the unigram loss {extra['unigram']:.4f} (the "
                                   "gate: halfway from the unigram loss to the floor)")
        return gate, verdict, f"hmm.py, S = {lang.states} states", 'remedies_hmm', extra
    # text: experiment 3's gate, on the validation windows train.py evaluates
    x, y = textdata.val_windows(corpus, c['e7_block_size'], c['e7_eval_iters'] * c['e7_batch_size'])
    extra = baselines(corpus['train'], x.flatten(), y.flatten(), corpus['vocab_size'])
    gate = dict(linear_loss=linear, passed=not none and linear <= extra['unigram'] - c['e3_gate_unigram']
                and linear <= extra['bigram'] + c['e3_gate_bigram'])
    verdict = '' if none else (f"the linear head's final loss {linear:.3f}, {linear - extra['unigram']:+.2f} "
                               f"from the unigram loss (the gate: ≤ −{c['e3_gate_unigram']:g}) and "
                               f"{linear - extra['bigram']:+.2f} from the bigram loss "
                               f"(≤ +{c['e3_gate_bigram']:g})")
    name = f"{os.path.basename(c['text'])}, {c['e3_encoding']} compacted"
    return gate, verdict, name, 'remedies_text', extra


def e7_pairs(c, specs):
    """The (candidate, control) pairs of E7_PAIRS whose heads both ran, at e7_n_embd; and every other head
    against linear."""
    D = c['e7_n_embd']
    pairs = [(a, b.format(**{'2D': 2 * D, '4D': 4 * D})) for a, b in E7_PAIRS]
    pairs = [(a, b) for a, b in pairs if a in specs and b in specs]
    return pairs + [(a, 'linear') for a in specs if a != 'linear' and (a, 'linear') not in pairs
                    and 'linear' in specs]


def summary_exp7(c, runs):
    """Experiment 7: each head at its best lr over the fresh seeds: accuracy, loss, tokens to the linear
    head's final loss, the meter along training, the frozen-trunk fits; candidates against their controls,
    paired by seed; costs."""
    specs = head_specs(c, 'e7_heads')
    heads = {spec: head_of(spec, c['e7_n_embd']) for spec in specs}
    tables = {spec: lr_table(runs[h['key']], final_score, head=spec) for spec, h in heads.items()}
    choices = {spec: sweep_choice(c, 'exp7', runs[h['key']]) for spec, h in heads.items()}
    fresh = {spec: t['best_runs'] for spec, t in tables.items()}
    analyse_exp7(c, fresh)
    # the target: the linear head's mean final accuracy (SpamLang, where its loss is not monotone), or loss
    key, sign = ('val_acc', -1) if c['e7_data'] == 'spamlang' else ('val_loss', 1)
    target = None
    if 'linear' in fresh:
        target = float(np.mean([r['evals'][-1][key] for r in fresh['linear']]))
    per, rows, lines = {}, [], []
    for spec in specs:
        t, mine = tables[spec], fresh[spec]
        rows += t['rows']
        cost = model_cost(c, spec)
        finals = [r['evals'][-1] for r in mine]
        meters = [r['analysis']['meter'] for r in mine]
        first = next((r['analysis'] for r in mine if 'frozen_init' in r['analysis']), {})
        hits = [[e for e in r['evals'] if e['iter'] > 0 and target is not None
                 and sign * e[key] <= sign * target][:1] for r in mine]  # the first evaluation at the target
        logs = [read_log(run_dir(c, r), 'train') for r in mine]
        clocks = [train_seconds(rows) for rows in logs]  # {iter: seconds of training steps up to it}
        tokens = [hit[0]['tokens'] if hit else None for hit in hits]
        wall = [clock.get(hit[0]['iter']) if hit else None for hit, clock in zip(hits, clocks)]
        ms = [np.median([row['dt_ms'] for row in rows]) for rows in logs]
        choice = choices[spec]
        head_lr = [dict(mult=m, **{k: float(np.mean([r['evals'][-1][k] for r in rs]))
                                   for k in ('val_acc', 'val_loss') if k in rs[0]['evals'][-1]})
                   for m, rs in sorted(choice['by_mult'].items())]
        per[spec] = dict(best_lr=t['lr'], edge=t['edge'], head_lr_mult=choice['mult'],
                         head_lr_edge=choice['mult_edge'], head_lr_sweep=head_lr,
                         seeds=[r['seed'] for r in mine], **cost,
                         ms_per_step=float(np.median(ms)), final_val_loss=[e['val_loss'] for e in finals],
                         final_val_acc=[e.get('val_acc') for e in finals], tokens_to_target=tokens,
                         seconds_to_target=wall,
                         c_star=[m[-1]['c_star'] for m in meters], c_H=[m[-1]['c_H'] for m in meters],
                         visible_share=[m[-1]['visible_share'] for m in meters],
                         step_cos=[m[-1]['step_cos'] for m in meters],
                         meter=[[dict(m, val_loss=e['val_loss'], val_acc=e.get('val_acc'), tokens=e['tokens'],
                                      seconds=clock.get(e['iter'])) for m, e in zip(ms_, r['evals'])]
                                for ms_, r, clock in zip(meters, mine, clocks)],
                         **{k: first.get(k) for k in FITS})
        p = per[spec]
        reached = [x for x in tokens if x is not None]
        fits = [f"{100 * p[k]['acc']:.1f}" if p[k] else '-' for k in FITS]
        mult = f" ×{choice['mult']:g}{EDGE[choice['mult_edge']] if len(choice['mults']) > 1 else ''}"
        lines.append([spec, f"{plot.sci(t['lr'])}{EDGE[t['edge']]}{mult}", f"{p['head_params']:,}",
                      f"{p['flops_per_token'] / 1e6:.2f}", f"{p['ms_per_step']:.1f}",
                      pm(spread(p['final_val_acc']), scale=100), pm(spread(p['final_val_loss']), '{:.3f}'),
                      f"{np.mean(reached):,.0f} ({len(reached)}/{len(tokens)})" if reached else
                      f"> budget (0/{len(tokens)})",
                      f"{np.mean(p['visible_share']):.4f}", f"{np.mean(p['c_star']):.3f}",
                      f"{np.mean(p['step_cos']):.3f}", *fits])
    level = max(float(np.mean(p['final_val_loss'])) for p in per.values())  # every head's mean gets there
    for p in per.values():
        p['at_level'] = dict(level=level, **{k: [next((m[k] for m in curve if m['val_loss'] <= level), None)
                                                  for curve in p['meter']]
                                             for k in ('c_star', 'visible_share', 'tokens')})
    pairs = []
    for a, b in e7_pairs(c, specs):
        pair = dict(comparison=f"{a} − {b}", a=a, b=b)
        for k in ('final_val_acc', 'final_val_loss', 'c_star', 'visible_share', 'step_cos'):
            pair[k] = paired_by_seed(*(dict(zip(per[x]['seeds'], per[x][k])) for x in (a, b)))
        shared = sorted(set(per[a]['seeds']) & set(per[b]['seeds']))
        for k, name in (('tokens_to_target', 'faster_in'), ('seconds_to_target', 'sooner_in')):
            ta, tb = (dict(zip(per[x]['seeds'], per[x][k])) for x in (a, b))
            pair[name] = sum(ta[s] is not None and (tb[s] is None or ta[s] < tb[s]) for s in shared)
        pair['seeds'] = len(shared)
        pairs.append(pair)
    corpus, D, T = e7_corpus(c), c['e7_n_embd'], c['e7_block_size']
    V = corpus['vocab_size']
    gate, verdict, data, stem, extra = e7_gate(c, corpus, target)
    controls = dict(data=data, **extra, vocab_size=V, n_embd=D, n_layer=c['e7_n_layer'],
                    block_size=c['e7_block_size'], batch_size=c['e7_batch_size'], max_iters=c['e7_max_iters'],
                    lrs=numbers(c, 'e7_lrs'), head_lr_mults=numbers(c, 'e7_head_lr_mults'),
                    seeds=c['e7_seeds'], decisive=head_specs(c, 'e7_decisive'),
                    other_seeds=c['e7_other_seeds'],
                    tokens=c['e7_max_iters'] * c['e7_batch_size'] * T,
                    exposures_per_symbol=round(c['e7_max_iters'] * c['e7_batch_size'] / (V - 1), 2)
                    if corpus['kind'] == 'spamlang' else None, target={key: target},
                    matched_loss_level=level,
                    varies='only the head and its lr: same data, init seed, schedule, held-out batches',
                    ours=OURS + ["every head's logit scale at init matched to the linear's (remedies.py)",
                                 "the head's lr: multipliers e7_head_lr_mults of the best lr swept at that "
                                 "lr (the trunk's fixed), extended the same way; fresh seeds at the best "
                                 "pair",
                                 f"the meter on {c['e7_meter_sequences']} held-out sequences (positions ≥ 1) "
                                 "at every evaluation's checkpoint; c_H, c_θ, c* in SGD geometry; step_cos: "
                                 "one real AdamW step from the checkpoint on that batch",
                                 f"frozen-trunk fits: the head alone, {c['e7_fit_steps']} AdamW steps, "
                                 f"cosine from lr {c['e7_fit_lr']:g}, first fresh seed",
                                 "accuracy and the fits' losses on positions ≥ 1",
                                 "stage gate (SpamLang): the linear head's final accuracy in 30–80%; (hmm) "
                                 "its final loss at least halfway from the unigram loss down to the floor; "
                                 "(text) experiment 3's, against the unigram and bigram losses"])
    write_table(c, stem, rows, controls, heads=per, paired=pairs, gate=gate)
    figure = f"exp7_{stem}.png"
    plot.exp7(os.path.join(c['out'], figure), per, level,
              f"{data}, V = {V:,}, D = {D}, {seed_note(per)}, {controls['tokens']:,} tokens")
    verdict = (f"Stage gate {'passed' if gate['passed'] else 'FAILED'}: {verdict}." if target is not None else
               "No stage gate: linear is not among --e7_heads.")
    table = md(['head', 'best lr, head lr ×', 'head params', 'MFLOPs/token (step)', 'ms/step (2 jobs)',
                'final acc %', 'final loss', f"tokens to linear's final {key[4:]} (seeds)", 'visible share',
                'c*', 'step cos', 'frozen trunk at init: acc %', 'linear on its trunk: acc %',
                "it on linear's trunk: acc %"], lines)
    table += '\n\n' + md(['comparison', 'Δ acc pp [95% CI]', 'Δ loss', 'Δ c*', 'Δ visible share',
                          'Δ step cos', 'reaches the target first'],
                         [[p['comparison'], ci(p['final_val_acc'], '{:+.1f}', 100, p=True),
                           ci(p['final_val_loss'], '{:+.3f}'), ci(p['c_star'], '{:+.3f}'),
                           ci(p['visible_share'], '{:+.4f}'), ci(p['step_cos'], '{:+.3f}'),
                           f"{p['faster_in']}/{p['seeds']} seeds in tokens, {p['sooner_in']}/{p['seeds']} in "
                           "time"] for p in pairs])
    return dict(controls=controls, table=table, notes=[verdict], figures=[figure])
