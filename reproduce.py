"""
Reproduce the paper's findings at laptop scale, with figures and tables, in one command (issue 5).

    python reproduce.py --quick --text=../shared/data/tinyshakespeare.txt  # experiments 1, 3 (and 4): ≤ 5 min, 2 cores
    python reproduce.py --text=../shared/data/tinyshakespeare.txt          # all four on the CPU preset: ≤ 60 min
    python reproduce.py --preset=gpu --device=cuda --text=input.txt        # larger sizes (not yet measured on a GPU)
    python reproduce.py --experiments=1 --e1_heads=r4,wide --seeds=5       # any preset key can be overridden

Experiments (PAPER.md §3, §4, §6; the controls of each are written into its table):
  1  head rank on SpamLang: V, D, data and exposures fixed, only the head changes (r ∈ e1_heads), lr sweep per head.
  2  V/D on SpamLang at equal exposures per symbol: a (D, V) grid, every run sees each symbol e2_exposures times
     (lr ∈ e2_lrs, the best per cell; the cpu preset runs 3e-3 alone to stay within 60 min, --e2_lrs=1e-3,3e-3 sweeps).
  3  real text (--text=FILE.txt, tokenized with cl100k_base, V = 100,277), head rank: validation loss vs tokens
     and the "×-fold" (tokens the narrowest head needed / tokens a wider head needs to reach its final loss).
  4  the meter along training: grad_destroyed vs step for the runs of 1 and 3, beside √(1 − rank/V).

Every run is train.train() in-process (its stdout goes to <out>/<exp>/<run>/stdout.txt), with seed = --seed + i
for i < --seeds. Results go to --out (default results/<preset>): one folder per run (log.jsonl, run.json), the
tables as CSV and JSON, the figures as PNG, summary.md (every table as markdown) and meta.json (hardware, date,
commit, command, wall times). Options are --key=value (bare --quick, --reuse, --keep_ckpt mean True); a bad one
stops with one line on stderr and exit status 1, before any run. Experiments run in the order given (4 reads the
tables that 1 and 3 wrote to the same --out). --reuse skips every run whose folder already holds a finished run
with the same config, so an interrupted invocation can be continued, or its figures redrawn, in seconds.
"""
import contextlib
import csv
import io
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

import train

DEFAULTS = dict(
    quick=False,          # = --preset=quick
    preset='cpu',         # quick | cpu | gpu | tiny (the test grid): the sizes below
    experiments='',       # comma-separated subset of 1,2,3,4; '' = the preset's
    text='',              # a .txt file for experiment 3 (skipped, with a note, when none is given)
    device='auto',        # auto | cpu | cuda | cuda:N | mps (train.py's --device)
    out='results/{preset}',
    seeds=3,              # runs per configuration, seeds --seed + 0 .. --seeds − 1
    seed=1337,
    reuse=False,          # skip a run whose out folder holds a finished run.json with the same config
    keep_ckpt=False,      # let train.py save ckpt.pt at every eval (off by default: a text run's is ~150 MB)
)

# The sizes of each experiment, per preset. Lists are comma-separated strings, so `--e1_lrs=1e-3,3e-3` works.
# Heads: 'rK' = the factorized head B·A of rank K (train.py --head=narrow --head_rank=K); 'wide' = rank D; 'linear'
# = plain untied V×D matrix; 'tied' = the token embedding.
_E1_CPU = dict(e1_vocab_size=1024, e1_n_embd=64, e1_n_layer=2, e1_n_head=4, e1_block_size=32, e1_batch_size=32,
               e1_max_iters=800, e1_warmup_iters=80, e1_eval_interval=40, e1_eval_iters=4,
               e1_heads='r2,r4,r8,r16,r32,wide,linear,tied', e1_lrs='1e-3,3e-3', e1_target=0.99)
_E2_CPU = dict(e2_n_embds='16,32,64,128', e2_vocab_sizes='256,1024,4096,16384', e2_exposures=16.0,
               e2_scale='batch', e2_steps=250, e2_batch_size=32, e2_head='linear', e2_lrs='3e-3', e2_n_layer=2,
               e2_n_head=4, e2_block_size=2, e2_warmup_iters=25, e2_eval_sequences=2048)
_E3_CPU = dict(e3_n_embd=64, e3_n_layer=2, e3_n_head=4, e3_block_size=64, e3_batch_size=16, e3_max_iters=150,
               e3_warmup_iters=20, e3_eval_interval=20, e3_eval_iters=2, e3_heads='r8,r32,wide', e3_lr=3e-3)
PRESETS = {
    'cpu': dict(experiments='1,2,3,4', **_E1_CPU, **_E2_CPU, **_E3_CPU),
    # --quick: experiments 1 and 3 (4 is read from their logs), fewer heads, one lr, smaller sizes; still 3 seeds
    'quick': {**_E1_CPU, **_E2_CPU, **_E3_CPU} | dict(
        experiments='1,3,4', e1_vocab_size=256, e1_n_embd=32, e1_block_size=8, e1_max_iters=300,
        e1_warmup_iters=30, e1_eval_interval=25, e1_heads='r2,r8,wide,linear', e1_lrs='3e-3',
        e3_n_embd=32, e3_block_size=32, e3_batch_size=8, e3_max_iters=120, e3_warmup_iters=20,
        e3_eval_interval=20, e3_eval_iters=2, e3_heads='r8,wide'),
    # toward the paper's scale (~100M-parameter models, V = 128k, D = 768); not yet measured on a GPU
    'gpu': dict(
        experiments='1,2,3,4',
        e1_vocab_size=131072, e1_n_embd=768, e1_n_layer=12, e1_n_head=12, e1_block_size=64, e1_batch_size=64,
        e1_max_iters=5000, e1_warmup_iters=200, e1_eval_interval=250, e1_eval_iters=4,
        e1_heads='r32,r64,r128,r256,r512,wide,linear,tied', e1_lrs='3e-4,1e-3', e1_target=0.99,
        e2_n_embds='64,128,256,512,768', e2_vocab_sizes='1024,4096,16384,65536,131072', e2_exposures=32.0,
        e2_scale='batch', e2_steps=2000, e2_batch_size=64, e2_head='linear', e2_lrs='3e-4,1e-3', e2_n_layer=4,
        e2_n_head=4, e2_block_size=8, e2_warmup_iters=100, e2_eval_sequences=4096,
        e3_n_embd=768, e3_n_layer=12, e3_n_head=12, e3_block_size=256, e3_batch_size=32, e3_max_iters=5000,
        e3_warmup_iters=200, e3_eval_interval=250, e3_eval_iters=8, e3_heads='r32,r128,wide', e3_lr=6e-4),
    # the test grid: seconds on a CPU
    'tiny': dict(
        experiments='1,2,3,4',
        e1_vocab_size=32, e1_n_embd=16, e1_n_layer=1, e1_n_head=2, e1_block_size=4, e1_batch_size=8,
        e1_max_iters=8, e1_warmup_iters=2, e1_eval_interval=4, e1_eval_iters=1, e1_heads='r2,wide',
        e1_lrs='1e-3,3e-3', e1_target=0.99,
        e2_n_embds='8,16', e2_vocab_sizes='16,32', e2_exposures=2.0, e2_scale='batch', e2_steps=4,
        e2_batch_size=8, e2_head='linear', e2_lrs='1e-3,3e-3', e2_n_layer=1, e2_n_head=2, e2_block_size=4,
        e2_warmup_iters=1, e2_eval_sequences=8,
        e3_n_embd=8, e3_n_layer=1, e3_n_head=2, e3_block_size=8, e3_batch_size=2, e3_max_iters=6,
        e3_warmup_iters=1, e3_eval_interval=2, e3_eval_iters=1, e3_heads='r2,wide', e3_lr=3e-3),
}
LIST_KEYS = {'e1_heads': 'head', 'e1_lrs': float, 'e2_lrs': float, 'e2_n_embds': int, 'e2_vocab_sizes': int,
             'e3_heads': 'head'}
ENCODING = 'cl100k_base'


class ReproError(ValueError):
    """Bad input: one line on stderr, exit status 1."""

# -----------------------------------------------------------------------------
# options


def parse_args(argv):
    """--key=value over DEFAULTS and the chosen preset, typed like the default. Returns the config dict."""
    pairs = []
    for arg in argv:
        key, eq, raw = arg.removeprefix('--').partition('=')
        if not arg.startswith('--') or not key:
            raise ReproError(f"bad argument {arg!r}: use --key=value, e.g. --quick or --seeds=3")
        pairs.append((key, raw if eq else None))
    c = dict(DEFAULTS)
    for key, raw in pairs:  # the preset first: it decides the other keys' defaults
        if key in ('quick', 'preset'):
            c[key] = coerce(key, raw, DEFAULTS[key])
    preset = 'quick' if c['quick'] else c['preset']
    if c['quick'] and c['preset'] not in ('cpu', 'quick'):
        raise ReproError(f"--quick is the 'quick' preset: drop --preset={c['preset']} or --quick")
    if preset not in PRESETS:
        raise ReproError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    c['preset'] = preset
    c.update(PRESETS[preset])
    for key, raw in pairs:
        if key in ('quick', 'preset'):
            continue
        if key not in c:
            raise ReproError(f"unknown option --{key}; allowed: {', '.join(c)}")
        c[key] = coerce(key, raw, c[key])
    return validate(c)


def coerce(key, raw, default):
    if raw is None:  # a bare --flag
        if type(default) is not bool:
            raise ReproError(f"--{key} needs a value: --{key}=...")
        return True
    try:
        return train.coerce(key, raw, {key: default}, {})
    except train.ConfigError as e:
        raise ReproError(str(e))


def parse_list(key, raw):
    kind = LIST_KEYS[key]
    items = [s.strip() for s in str(raw).split(',') if s.strip()]
    if not items:
        raise ReproError(f"--{key} is empty: give a comma-separated list")
    out = []
    for s in items:
        try:
            if kind == 'head':
                head_spec(s)
                out.append(s)
            else:
                v = kind(s)
                if not v > 0 or not math.isfinite(v):
                    raise ValueError
                out.append(v)
        except ValueError:
            what = "heads like r4, wide, linear, tied" if kind == 'head' else f"positive {kind.__name__}s"
            raise ReproError(f"--{key}: bad item {s!r} in {raw!r}; give {what}, comma-separated")
    return out


def head_spec(s):
    """'r8' -> ('narrow', 8); 'wide' | 'linear' | 'tied' -> (name, None). ValueError otherwise."""
    if s in ('wide', 'linear', 'tied'):
        return s, None
    if s.startswith('r') and s[1:].isdigit() and int(s[1:]) > 0:
        return 'narrow', int(s[1:])
    raise ValueError(s)


def head_rank(s, D):
    name, r = head_spec(s)
    return r if r is not None else D


def head_label(s, D):
    return {'wide': f'wide (r = D = {D})', 'linear': 'linear (plain)', 'tied': 'tied'}.get(s, f'r = {s[1:]}')


def validate(c):
    if c['seeds'] < 1:
        raise ReproError(f"--seeds must be at least 1, got {c['seeds']}")
    exps = [s.strip() for s in c['experiments'].split(',') if s.strip()]
    if not exps or any(e not in ('1', '2', '3', '4') for e in exps):
        raise ReproError(f"--experiments must be a comma-separated subset of 1,2,3,4, got {c['experiments']!r}")
    c['experiments'] = ','.join(dict.fromkeys(exps))  # in the order given (4 reads the tables of 1 and 3)
    lists = {k: parse_list(k, c[k]) for k in LIST_KEYS}
    for k, v in c.items():
        if k[:3] in ('e1_', 'e2_', 'e3_') and k not in LIST_KEYS and type(v) in (int, float) and not v > 0:
            raise ReproError(f"--{k} must be positive, got {v}")
    if not 0 < c['e1_target'] <= 1:
        raise ReproError(f"--e1_target is an accuracy in (0, 1], got {c['e1_target']}")
    if c['e2_scale'] not in ('batch', 'steps'):
        raise ReproError(f"--e2_scale must be batch (fixed steps, batch ∝ V) or steps (fixed batch, steps ∝ V), "
                         f"got {c['e2_scale']!r}")
    if c['e2_head'] not in ('linear', 'tied', 'wide'):
        raise ReproError(f"--e2_head must be linear, tied or wide (a full-rank head), got {c['e2_head']!r}")
    models = [(c['e1_vocab_size'], c['e1_n_embd'], c['e1_n_head'], 'e1')]
    models += [(V, D, c['e2_n_head'], 'e2') for D in lists['e2_n_embds'] for V in lists['e2_vocab_sizes']]
    models += [(100277, c['e3_n_embd'], c['e3_n_head'], 'e3')]
    for V, D, H, e in models:
        if D % H:
            raise ReproError(f"--{e}_n_head={H} must divide the width D = {D}")
        if V < 2:
            raise ReproError(f"vocabulary sizes must be at least 2, got {V}")
    if c['text'] and not os.path.isfile(c['text']):
        raise ReproError(f"--text={c['text']!r} not found: give a .txt file (e.g. tinyshakespeare.txt) or drop --text")
    if c['text'] and os.path.getsize(c['text']) == 0:
        raise ReproError(f"--text={c['text']} is empty: give a text with content")
    try:
        c['device'] = train.resolve({**train.DEFAULTS, 'device': c['device'], 'preset': 'cpu'}, set())['device']
        c['out'] = c['out'].format(preset=c['preset'])
    except train.ConfigError as e:
        raise ReproError(str(e))
    except (KeyError, IndexError, ValueError) as e:
        raise ReproError(f"--out={c['out']!r}: bad {{field}} ({e}); the only field is {{preset}}")
    c['_lists'] = lists
    return c


def seeds_of(c):
    return [c['seed'] + i for i in range(c['seeds'])]

# -----------------------------------------------------------------------------
# one training run, in-process


COUNTS = dict(trained=0, cached=0, train_seconds=0.0)  # this invocation's runs, for meta.json


def run_one(c, exp, name, overrides):
    """train.train() with `overrides` (every model and optimizer key given explicitly, preset 'cpu' so train.py
    adds nothing), its stdout captured to run_dir/stdout.txt. Returns the run record, also saved as run.json."""
    run_dir = os.path.join(c['out'], exp, name)
    overrides = {'device': c['device'], 'preset': 'cpu', 'log_interval': 10**9, 'overwrite': True,
                 'out_dir': run_dir, 'eval_iters': 4, **overrides}
    summary_path = os.path.join(run_dir, 'run.json')
    if c['reuse'] and os.path.isfile(summary_path):
        with open(summary_path) as f:
            rec = json.load(f)
        if rec.get('overrides') == json.loads(json.dumps(overrides)):
            rec['cached'] = True
            COUNTS['cached'] += 1
            return rec
    os.makedirs(run_dir, exist_ok=True)
    buf = io.StringIO()
    t0 = time.time()
    # without --keep_ckpt, train.py's checkpoint saves (every eval: ~150 MB, hashed and fsynced, for a text run)
    # are skipped: these runs are never resumed, and the eval records in log.jsonl are all the tables need
    try:
        with contextlib.redirect_stdout(buf):
            cfg = {**train.DEFAULTS, **overrides, 'save_checkpoints': c['keep_ckpt']}
            train.train(cfg, set(overrides) | {'save_checkpoints'})
    except (train.ConfigError, train.TrainingError) as e:
        raise ReproError(f"{exp}/{name}: {e}")
    finally:
        with open(os.path.join(run_dir, 'stdout.txt'), 'w') as f:
            f.write(buf.getvalue())
    seconds = time.time() - t0
    with open(os.path.join(run_dir, 'log.jsonl')) as f:
        evals = [r for r in map(json.loads, f) if 'val_loss' in r]
    if not c['keep_ckpt']:  # a checkpoint left by an earlier --keep_ckpt run of this folder is stale now
        for fn in ('ckpt.pt', 'prev_ckpt.pt'):
            if os.path.exists(os.path.join(run_dir, fn)):
                os.remove(os.path.join(run_dir, fn))
    COUNTS['trained'] += 1
    COUNTS['train_seconds'] += seconds
    rec = dict(exp=exp, name=name, seed=overrides['seed'], overrides=overrides, seconds=seconds, evals=evals,
               final=evals[-1])
    with open(summary_path, 'w') as f:
        json.dump(rec, f)
    return rec


def stats(xs):
    """mean, std (population), min, max of a list of numbers (NaN when empty)."""
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    if a.size == 0:
        return dict(mean=float('nan'), std=float('nan'), min=float('nan'), max=float('nan'), n=0)
    return dict(mean=float(a.mean()), std=float(a.std()), min=float(a.min()), max=float(a.max()), n=int(a.size))


def pm(s, fmt='{:.1f}', scale=1.0):
    """'mean ± std (min–max)' of a stats() dict."""
    if s['n'] == 0:
        return 'n/a'
    f = lambda v: fmt.format(v * scale)
    return f"{f(s['mean'])} ± {f(s['std'])} ({f(s['min'])}–{f(s['max'])})"


def spread(name, s):
    """A stats() dict as table columns name_mean, name_std, name_min, name_max (4 decimals)."""
    return {f'{name}_{k}': round(s[k], 4) for k in ('mean', 'std', 'min', 'max')}


def write_table(c, stem, rows, controls, runs=None, columns=None):
    """stem.csv (rows), stem.json ({controls, rows, runs}); returns the markdown of the rows."""
    columns = columns or (list(rows[0]) if rows else [])
    with open(os.path.join(c['out'], stem + '.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(c['out'], stem + '.json'), 'w') as f:
        json.dump(dict(controls=controls, rows=rows, runs=runs or []), f, indent=1)
    md = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    md += ['| ' + ' | '.join(str(r.get(k, '')) for k in columns) + ' |' for r in rows]
    return '\n'.join(md)


def say(line):
    print(line, flush=True)

# -----------------------------------------------------------------------------
# experiment 1: head rank on SpamLang


def steps_to(evals, target, key='val_acc'):
    """First evaluated step whose accuracy is ≥ target (resolution: the eval interval), or None."""
    return next((r['iter'] for r in evals if r[key] >= target), None)


def exp1(c):
    D, V = c['e1_n_embd'], c['e1_vocab_size']
    base = dict(data='spamlang', vocab_size=V, n_embd=D, n_layer=c['e1_n_layer'], n_head=c['e1_n_head'],
                block_size=c['e1_block_size'], batch_size=c['e1_batch_size'], max_iters=c['e1_max_iters'],
                warmup_iters=c['e1_warmup_iters'], eval_interval=c['e1_eval_interval'], eval_iters=c['e1_eval_iters'])
    runs, rows = [], []
    for spec in c['_lists']['e1_heads']:
        head, rank = head_spec(spec)
        for lr in c['_lists']['e1_lrs']:
            group = []
            for seed in seeds_of(c):
                o = dict(base, head=head, head_rank=rank, learning_rate=lr, min_lr=lr / 10, seed=seed)
                rec = run_one(c, 'exp1', f"{spec}_lr{lr:g}_s{seed}", o)
                rec.update(head=spec, lr=lr, rank=head_rank(spec, D),
                           steps_to_target=steps_to(rec['evals'], c['e1_target']))
                say(f"exp1 {spec:>6s} lr {lr:g} seed {seed}: acc {100 * rec['final']['val_acc']:.1f}% "
                    f"(positions ≥ 1), steps to {100 * c['e1_target']:g}%: {rec['steps_to_target'] or 'not reached'}, "
                    f"{rec['seconds']:.1f} s{' (cached)' if rec.get('cached') else ''}")
                group.append(rec)
            runs += group
            acc = stats([r['final']['val_acc'] for r in group])
            reached = [r['steps_to_target'] for r in group if r['steps_to_target'] is not None]
            st = stats(reached)
            rows.append(dict(
                head=spec, rank=head_rank(spec, D), lr=lr, seeds=';'.join(str(r['seed']) for r in group),
                **spread('acc', acc), final_acc=pm(acc, scale=100),
                reached=f"{len(reached)}/{len(group)}",
                steps_to_target=('not reached' if not reached else pm(st, '{:.0f}') +
                                 ('' if len(reached) == len(group) else f' ({len(reached)}/{len(group)} seeds)')),
                destroyed_final=round(stats([r['final']['grad_destroyed'] for r in group])['mean'], 4),
                best_lr=False))
    # best lr per head: highest mean final accuracy, then fewest steps to the target (not reached = never)
    for spec in c['_lists']['e1_heads']:
        mine = [r for r in rows if r['head'] == spec]
        def score(r):
            steps = [x['steps_to_target'] for x in runs if x['head'] == spec and x['lr'] == r['lr']]
            return (round(r['acc_mean'], 3), -sum(s if s is not None else 10**9 for s in steps))
        max(mine, key=score)['best_lr'] = True
    controls = dict(
        data='SpamLang', vocab_size=V, n_embd=D, n_layer=c['e1_n_layer'], n_head=c['e1_n_head'],
        block_size=c['e1_block_size'], batch_size=c['e1_batch_size'], max_iters=c['e1_max_iters'],
        warmup_iters=c['e1_warmup_iters'], schedule='AdamW, linear warmup then cosine to lr/10',
        exposures_per_symbol=c['e1_max_iters'] * c['e1_batch_size'] / (V - 1),
        eval=f"every {c['e1_eval_interval']} steps, {c['e1_eval_iters']} fixed held-out batches per seed; "
             f"accuracy on positions ≥ 1", target=c['e1_target'], seeds=seeds_of(c),
        varies='only the head (and the lr, swept per head); same data stream, init seed and schedule')
    md = write_table(c, 'exp1_head_rank', rows, controls, runs=[run_row(r) for r in runs],
                     columns=['head', 'rank', 'lr', 'best_lr', 'seeds', 'final_acc', 'reached', 'steps_to_target',
                              'acc_mean', 'acc_std', 'acc_min', 'acc_max', 'destroyed_final'])
    write_runs_csv(c, 'exp1_runs', runs, ['head', 'rank', 'lr', 'seed', 'final_acc', 'final_loss',
                                           'steps_to_target', 'grad_destroyed', 'seconds'])
    plot_exp1(c, runs, rows)
    return dict(markdown=md, controls=controls)


def run_row(r):
    """One run as a flat dict: its config keys and final numbers."""
    f = r['final']
    return dict(name=r['name'], seed=r['seed'], head=r.get('head'), rank=r.get('rank'), lr=r.get('lr'),
                final_acc=f.get('val_acc'), final_loss=f['val_loss'], grad_destroyed=f['grad_destroyed'],
                steps_to_target=r.get('steps_to_target'), tokens=f['tokens'], seconds=round(r['seconds'], 2),
                **{k: r[k] for k in ('V', 'D', 'batch_size', 'max_iters', 'exposures') if k in r})


def write_runs_csv(c, stem, runs, columns):
    with open(os.path.join(c['out'], stem + '.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        w.writeheader()
        w.writerows(run_row(r) for r in runs)


def curves(group, x='iter', y='val_acc'):
    """Mean, min and max of y over the runs of a group at the evaluated steps they share."""
    xs = [r[x] for r in group[0]['evals']]
    ys = np.array([[e[y] for e in r['evals']][:len(xs)] for r in group], dtype=float)
    return np.array(xs), ys.mean(0), ys.min(0), ys.max(0)


def pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_exp1(c, runs, rows):
    plt = pyplot()
    D, V = c['e1_n_embd'], c['e1_vocab_size']
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(c['_lists']['e1_heads'])))
    for color, spec in zip(colors, c['_lists']['e1_heads']):
        best = next(r for r in rows if r['head'] == spec and r['best_lr'])
        group = [r for r in runs if r['head'] == spec and r['lr'] == best['lr']]
        xs, mean, lo, hi = curves(group)
        style = '--' if spec in ('linear', 'tied') else '-'
        ax.plot(xs, 100 * mean, style, color=color, label=f"{head_label(spec, D)}, lr {best['lr']:g}")
        ax.fill_between(xs, 100 * lo, 100 * hi, color=color, alpha=0.15)
    ax.axhline(100 * c['e1_target'], color='k', lw=0.8, ls=':')
    ax.set(xlabel='training step', ylabel='accuracy on positions ≥ 1 (%)', ylim=(-2, 102),
           title=f'SpamLang, V = {V:,}, D = {D}, best lr per head\nmean of {c["seeds"]} seeds, band: min–max')
    ax.legend(fontsize=8, loc='center right')
    # right: final accuracy vs rank, every lr
    markers = 'osD^v'
    for k, lr in enumerate(c['_lists']['e1_lrs']):
        for spec in c['_lists']['e1_heads']:
            r = next(r for r in rows if r['head'] == spec and r['lr'] == lr)
            x = r['rank'] * {'linear': 1.12, 'tied': 1.25}.get(spec, 1.0)  # plain heads beside r = D
            accs = [x_['final']['val_acc'] for x_ in runs if x_['head'] == spec and x_['lr'] == lr]
            m = float(np.mean(accs))
            bx.errorbar(x, 100 * m, yerr=[[100 * max(0.0, m - min(accs))], [100 * max(0.0, max(accs) - m)]],
                        fmt=markers[k % len(markers)], color=f'C{k}', capsize=3, mfc='none' if spec in ('linear', 'tied') else None,
                        label=f'lr {lr:g}' if spec == c['_lists']['e1_heads'][0] else None)
            if spec in ('linear', 'tied') and k == 0:
                bx.annotate(spec, (x, 100 * r['acc_mean']), textcoords='offset points', fontsize=7,
                            xytext=(4, -12) if spec == 'linear' else (4, 6))
    bx.set(xscale='log', xlabel='head rank r (plain heads: rank D, drawn beside it, hollow)',
           ylabel='final accuracy, positions ≥ 1 (%)', ylim=(-2, 102),
           title=f'final accuracy at step {c["e1_max_iters"]}, every lr\nmean of {c["seeds"]} seeds, bar: min–max')
    bx.set_xticks(sorted({head_rank(s, D) for s in c['_lists']['e1_heads']}))
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    bx.xaxis.set_major_formatter(ScalarFormatter())
    bx.xaxis.set_minor_formatter(NullFormatter())
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(c['out'], 'exp1_head_rank.png'), dpi=110)
    plt.close(fig)

# -----------------------------------------------------------------------------
# experiment 2: V/D at equal exposures per symbol


def exp2_sizes(c, V):
    """(batch, steps) for vocabulary V so that batch·steps/(V − 1) ≈ e2_exposures: fixed steps and batch ∝ V
    (e2_scale=batch), or fixed batch and steps ∝ V (e2_scale=steps)."""
    need = c['e2_exposures'] * (V - 1)
    if c['e2_scale'] == 'batch':
        return max(1, math.ceil(need / c['e2_steps'])), c['e2_steps']
    return c['e2_batch_size'], max(1, math.ceil(need / c['e2_batch_size']))


def exp2(c):
    Ds, Vs, lrs = c['_lists']['e2_n_embds'], c['_lists']['e2_vocab_sizes'], c['_lists']['e2_lrs']
    runs, rows = [], []
    for V in Vs:  # cheap vocabularies first
        B, steps = exp2_sizes(c, V)
        # a count of sequences, not of batches: the batch grows with V, and 2 batches score 34 symbols at V = 256
        eval_iters = math.ceil(c['e2_eval_sequences'] / B)
        for D in Ds:
            cell = []
            for lr in lrs:
                group = []
                for seed in seeds_of(c):
                    o = dict(data='spamlang', vocab_size=V, n_embd=D, n_layer=c['e2_n_layer'], n_head=c['e2_n_head'],
                             block_size=c['e2_block_size'], batch_size=B, max_iters=steps, head=c['e2_head'],
                             learning_rate=lr, min_lr=lr / 10,
                             warmup_iters=min(c['e2_warmup_iters'], max(1, steps // 10)),
                             eval_interval=steps, eval_iters=eval_iters, seed=seed)
                    rec = run_one(c, 'exp2', f"D{D}_V{V}_lr{lr:g}_s{seed}", o)
                    rec.update(V=V, D=D, lr=lr, batch_size=B, max_iters=steps, exposures=round(B * steps / (V - 1), 2))
                    say(f"exp2 D {D:4d} V {V:6d} (V/D {V / D:g}) lr {lr:g} seed {seed}: acc "
                        f"{100 * rec['final']['val_acc']:.1f}% after {rec['exposures']:g} exposures/symbol ({steps} "
                        f"steps × {B}), {rec['seconds']:.1f} s{' (cached)' if rec.get('cached') else ''}")
                    group.append(rec)
                runs += group
                acc, loss = stats([r['final']['val_acc'] for r in group]), stats([r['final']['val_loss'] for r in group])
                cell.append(dict(D=D, V=V, V_over_D=round(V / D, 3), lr=lr, batch_size=B, steps=steps,
                                 exposures=group[0]['exposures'], eval_sequences=eval_iters * B,
                                 seeds=';'.join(str(r['seed']) for r in group), final_acc=pm(acc, scale=100),
                                 **spread('acc', acc), loss_mean=round(loss['mean'], 4),
                                 destroyed_mean=round(stats([r['final']['grad_destroyed'] for r in group])['mean'], 4),
                                 best_lr=False))
            # best lr per cell: highest mean accuracy, then lowest mean loss on the determined positions
            max(cell, key=lambda r: (round(r['acc_mean'], 3), -r['loss_mean']))['best_lr'] = True
            rows += cell
    controls = dict(
        data='SpamLang', head=c['e2_head'], n_layer=c['e2_n_layer'], n_head=c['e2_n_head'],
        block_size=c['e2_block_size'], learning_rates=lrs, schedule='AdamW, warmup then cosine to lr/10',
        exposures_per_symbol=c['e2_exposures'],
        scaling=('fixed steps, batch ∝ V' if c['e2_scale'] == 'batch' else 'fixed batch, steps ∝ V') +
                ': every run sees each symbol the same expected number of times (sequences · 1/(V − 1))',
        eval=f"≥ {c['e2_eval_sequences']} fixed held-out sequences (whole batches) at the end; accuracy on positions "
             f"≥ 1", seeds=seeds_of(c),
        varies='D (width) and V (vocabulary) only (and the lr, swept per cell; the heat map shows the best)')
    md = write_table(c, 'exp2_vd_grid', rows, controls, runs=[run_row(r) for r in runs],
                     columns=['D', 'V', 'V_over_D', 'lr', 'best_lr', 'batch_size', 'steps', 'exposures',
                              'eval_sequences', 'seeds', 'final_acc', 'acc_mean', 'acc_std', 'acc_min', 'acc_max',
                              'loss_mean', 'destroyed_mean'])
    write_runs_csv(c, 'exp2_runs', runs, ['V', 'D', 'lr', 'seed', 'batch_size', 'max_iters', 'exposures', 'final_acc',
                                           'final_loss', 'grad_destroyed', 'seconds'])
    plot_exp2(c, [r for r in rows if r['best_lr']])
    return dict(markdown=md, controls=controls)


def plot_exp2(c, rows):
    plt = pyplot()
    Ds, Vs = sorted(c['_lists']['e2_n_embds']), sorted(c['_lists']['e2_vocab_sizes'])
    cell = {(r['D'], r['V']): r for r in rows}  # the best lr's row of each cell
    acc = np.array([[cell[D, V]['acc_mean'] for V in Vs] for D in Ds])
    std = np.array([[cell[D, V]['acc_std'] for V in Vs] for D in Ds])
    lrs = c['_lists']['e2_lrs']
    edges = lambda xs: np.log2(np.concatenate([[xs[0] ** 1.5 / xs[1] ** 0.5] if len(xs) > 1 else [xs[0] / 2],
                                               [math.sqrt(a * b) for a, b in zip(xs, xs[1:])],
                                               [xs[-1] ** 1.5 / xs[-2] ** 0.5] if len(xs) > 1 else [xs[0] * 2]]))
    xe, ye = edges(np.array(Vs, float)), edges(np.array(Ds, float))
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    mesh = ax.pcolormesh(xe, ye, 100 * acc, cmap='RdYlGn', vmin=0, vmax=100, shading='flat')
    for i, D in enumerate(Ds):
        for j, V in enumerate(Vs):
            lr = f"\nlr {cell[D, V]['lr']:g}" if len(lrs) > 1 else ''
            ax.text(math.log2(V), math.log2(D), f"{100 * acc[i, j]:.0f} ± {100 * std[i, j]:.0f}{lr}", ha='center',
                    va='center', fontsize=8)
    # lines of constant V/D are diagonals in (log2 V, log2 D)
    x = np.linspace(xe[0], xe[-1], 50)
    for k in range(0, 16, 2):
        y = x - k
        keep = (y >= ye[0]) & (y <= ye[-1])
        if keep.sum() > 1:
            ax.plot(x[keep], y[keep], 'k--', lw=0.7, alpha=0.6)
            ax.annotate(f'V/D = {2 ** k:g}', (x[keep][-1], y[keep][-1]), xytext=(-3, -3), textcoords='offset points',
                        fontsize=7, ha='right', va='top', bbox=dict(fc='white', alpha=0.6, lw=0, pad=0.5))
    ax.set_aspect('equal')
    ax.set_xticks([math.log2(V) for V in Vs], [f'{V:,}' for V in Vs])
    ax.set_yticks([math.log2(D) for D in Ds], [str(D) for D in Ds])
    ax.set(xlabel='vocabulary V', ylabel='width D',
           title=f"SpamLang, final accuracy (%) on positions ≥ 1, mean ± std of {c['seeds']} seeds\n"
                 f"{c['e2_head']} head, {c['e2_exposures']:g} exposures per symbol in every cell\n"
                 + (f"best lr of {', '.join(f'{lr:g}' for lr in lrs)}" if len(lrs) > 1 else f"lr {lrs[0]:g}"))
    fig.colorbar(mesh, ax=ax, label='accuracy (%)')
    fig.tight_layout()
    fig.savefig(os.path.join(c['out'], 'exp2_vd_heatmap.png'), dpi=110)
    plt.close(fig)

# -----------------------------------------------------------------------------
# experiment 3: real text, head rank


def tokenize(c):
    """The --text file as a train.py token file under <out>/exp3 (the text's own folder may be read-only);
    reused while the text is unchanged."""
    path = c['text']
    st = os.stat(path)
    source = dict(path=os.path.basename(path), bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    folder = os.path.join(c['out'], 'exp3')
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, f"{os.path.splitext(os.path.basename(path))[0]}.{ENCODING}.tok")
    if os.path.exists(dst):
        try:
            if train.read_token_header(dst).get('source') == source:
                return dst
        except train.ConfigError:
            pass
    try:
        enc = train.get_encoding(ENCODING)
    except train.ConfigError as e:
        raise ReproError(str(e))
    with open(path, encoding='utf-8', errors='replace') as f:
        ids = enc.encode_ordinary(f.read())
    train.write_tokens(dst, ids, enc.n_vocab, ENCODING, source)
    say(f"exp3: tokenized {path}: {len(ids):,} tokens with {ENCODING} (V = {enc.n_vocab:,}) -> {dst}")
    return dst


def tokens_to_reach(evals, target):
    """Tokens at which the val-loss curve first reaches `target`, linear between evaluations; None if never."""
    prev = None
    for r in evals:
        if r['val_loss'] <= target:
            if prev is None or prev['val_loss'] == r['val_loss']:
                return r['tokens']
            f = (prev['val_loss'] - target) / (prev['val_loss'] - r['val_loss'])
            return prev['tokens'] + f * (r['tokens'] - prev['tokens'])
        prev = r
    return None


def exp3(c):
    if not c['text']:
        say("exp3: skipped: no text given (pass --text=FILE.txt, e.g. --text=../shared/data/tinyshakespeare.txt)")
        return None
    data = tokenize(c)
    D = c['e3_n_embd']
    heads = sorted(c['_lists']['e3_heads'], key=lambda s: head_rank(s, D))
    runs = []
    for seed in seeds_of(c):  # seed-major: a stopped invocation still leaves complete paired comparisons
        for spec in heads:
            head, rank = head_spec(spec)
            o = dict(data=data, n_embd=D, n_layer=c['e3_n_layer'], n_head=c['e3_n_head'],
                     block_size=c['e3_block_size'], batch_size=c['e3_batch_size'], max_iters=c['e3_max_iters'],
                     warmup_iters=c['e3_warmup_iters'], eval_interval=c['e3_eval_interval'],
                     eval_iters=c['e3_eval_iters'], head=head, head_rank=rank, learning_rate=c['e3_lr'],
                     min_lr=c['e3_lr'] / 10, seed=seed)
            rec = run_one(c, 'exp3', f"{spec}_s{seed}", o)
            rec.update(head=spec, rank=head_rank(spec, D), lr=c['e3_lr'])
            say(f"exp3 {spec:>6s} seed {seed}: val loss {rec['final']['val_loss']:.4f} after "
                f"{rec['final']['tokens']:,} tokens, {rec['seconds']:.1f} s{' (cached)' if rec.get('cached') else ''}")
            runs.append(rec)
    V = train.read_token_header(data)['vocab_size']
    narrow = heads[0]
    rows = []
    for spec in heads:
        group = [r for r in runs if r['head'] == spec]
        folds, needed = [], []
        for r in group:  # against the narrowest head of the same seed (same data order, same eval batches)
            ref = next(x for x in runs if x['head'] == narrow and x['seed'] == r['seed'])
            t = tokens_to_reach(r['evals'], ref['final']['val_loss'])
            r['tokens_to_narrow_final'] = t
            needed.append(t)
            folds.append(None if not t else ref['final']['tokens'] / t)
        loss = stats([r['final']['val_loss'] for r in group])
        fs = stats(folds)
        rows.append(dict(
            head=spec, rank=head_rank(spec, D), seeds=';'.join(str(r['seed']) for r in group),
            final_val_loss=pm(loss, '{:.3f}'), **spread('loss', loss),
            tokens_to_narrowest_final=('not reached' if fs['n'] == 0 else pm(stats(needed), '{:,.0f}') +
                                       ('' if fs['n'] == len(group) else f" ({fs['n']}/{len(group)} seeds)")),
            fold=('not reached' if fs['n'] == 0 else pm(fs, '{:.2f}') +
                  ('' if fs['n'] == len(group) else f" ({fs['n']}/{len(group)} seeds)")),
            fold_mean=round(fs['mean'], 3) if fs['n'] else None, fold_std=round(fs['std'], 3) if fs['n'] else None,
            fold_reached=f"{fs['n']}/{len(group)}",
            destroyed_final=round(stats([r['final']['grad_destroyed'] for r in group])['mean'], 4)))
    controls = dict(
        data=os.path.basename(c['text']), encoding=ENCODING, vocab_size=V, split='first 90% train, last 10% val',
        n_embd=D, n_layer=c['e3_n_layer'], n_head=c['e3_n_head'], block_size=c['e3_block_size'],
        batch_size=c['e3_batch_size'], max_iters=c['e3_max_iters'],
        tokens=c['e3_max_iters'] * c['e3_batch_size'] * c['e3_block_size'], learning_rate=c['e3_lr'],
        schedule='AdamW, warmup then cosine to lr/10',
        eval=f"every {c['e3_eval_interval']} steps, {c['e3_eval_iters']} fixed val batches per seed",
        fold=f"tokens of the narrowest head ({narrow}) at its final loss / tokens a wider head needs to reach "
             f"that loss, same seed, linear between evaluations", seeds=seeds_of(c), varies='only the head')
    md = write_table(c, 'exp3_text', rows, controls, runs=[run_row(r) for r in runs],
                     columns=['head', 'rank', 'seeds', 'final_val_loss', 'tokens_to_narrowest_final', 'fold',
                              'loss_mean', 'loss_std', 'loss_min', 'loss_max', 'fold_mean', 'fold_std', 'fold_reached',
                              'destroyed_final'])
    write_runs_csv(c, 'exp3_runs', runs, ['head', 'rank', 'lr', 'seed', 'final_loss', 'tokens', 'grad_destroyed',
                                           'seconds'])
    plot_exp3(c, runs, heads, rows)
    return dict(markdown=md, controls=controls)


def plot_exp3(c, runs, heads, rows):
    plt = pyplot()
    D = c['e3_n_embd']
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    by_seed = {r['seed']: r for r in runs if r['head'] == heads[0]}
    for k, spec in enumerate(heads):
        group = [r for r in runs if r['head'] == spec]
        xs, mean, lo, hi = curves(group, 'tokens', 'val_loss')
        ax.plot(xs, mean, color=f'C{k}', label=head_label(spec, D))
        ax.fill_between(xs, lo, hi, color=f'C{k}', alpha=0.15)
        # right: paired by seed (same data order, same validation batches), minus the narrowest head
        diff = np.array([[e['val_loss'] - f['val_loss'] for e, f in zip(r['evals'], by_seed[r['seed']]['evals'])]
                         for r in group])
        bx.plot(xs, diff.mean(0), color=f'C{k}', label=head_label(spec, D))
        bx.fill_between(xs, diff.min(0), diff.max(0), color=f'C{k}', alpha=0.15)
    narrow = next(r for r in rows if r['head'] == heads[0])
    ax.axhline(narrow['loss_mean'], color='k', ls=':', lw=0.8, label=f"{heads[0]} final loss (mean)")
    ax.set(xlabel='training tokens', ylabel='validation loss (nats/token)',
           title=f"{os.path.basename(c['text'])}, cl100k_base (V = 100,277), D = {D}\n"
                 f"mean of {c['seeds']} seeds, band: min–max (seeds differ in their validation batches)")
    ax.legend(fontsize=8)
    bx.set(xlabel='training tokens', ylabel=f'val loss − {heads[0]} val loss, same seed',
           title=f'paired difference to the narrowest head ({heads[0]})\nbelow 0: the wider head is ahead')
    text = '\n'.join(f"{r['head']}: " + (f"{r['fold_mean']:.2f}× ± {r['fold_std']:.2f} ({r['fold_reached']} seeds reach it)"
                                         if r['fold_mean'] else "never reaches it") for r in rows[1:])
    if text:
        bx.text(0.98, 0.97, f"tokens to reach {heads[0]}'s final loss,\n×-fold (mean ± std over seeds):\n{text}",
                transform=bx.transAxes, ha='right', va='top', fontsize=8,
                bbox=dict(facecolor='white', alpha=0.8, edgecolor='0.8'))
    bx.axhline(0, color='k', lw=0.8)
    bx.legend(fontsize=8, loc='lower left')
    fig.tight_layout()
    fig.savefig(os.path.join(c['out'], 'exp3_text.png'), dpi=110)
    plt.close(fig)

# -----------------------------------------------------------------------------
# experiment 4: the meter along training (no new runs: the eval records of experiments 1 and 3)


def load_runs(c, stem):
    path = os.path.join(c['out'], stem + '.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        table = json.load(f)
    out = []
    for row in table['runs']:
        with open(os.path.join(c['out'], stem.split('_')[0], row['name'], 'run.json')) as f:
            out.append({**json.load(f), **{k: row[k] for k in ('head', 'rank', 'lr')}})
    return table, out


def exp4(c):
    panels = []
    e1 = load_runs(c, 'exp1_head_rank')
    if e1:
        table, runs = e1
        best = {(r['head'], r['lr']) for r in table['rows'] if r['best_lr']}
        panels.append(('SpamLang (experiment 1, best lr per head)', table['controls']['vocab_size'],
                       [r for r in runs if (r['head'], r['lr']) in best], 'iter', 'training step'))
    e3 = load_runs(c, 'exp3_text')
    if e3:
        table, runs = e3
        panels.append((f"text (experiment 3, {table['controls']['data']})", table['controls']['vocab_size'], runs,
                       'iter', 'training step'))
    if not panels:
        say("exp4: skipped: it reads the runs of experiments 1 and 3, and neither has run in this --out folder")
        return None
    rows = []
    for title, V, runs, _, _ in panels:
        for spec in dict.fromkeys(r['head'] for r in runs):
            group = [r for r in runs if r['head'] == spec]
            rank = group[0]['rank']
            d = [[e['grad_destroyed'] for e in r['evals']] for r in group]
            first, mid, last = (stats([x[i] for x in d]) for i in (0, len(d[0]) // 2, -1))
            fmt = '{:.6f}' if V >= 10000 else '{:.4f}'  # at V = 100k, 1 − r is ~1e-4
            rows.append(dict(data=title.split(' (')[0], head=spec, rank=rank, V=V, lr=group[0]['lr'],
                             seeds=';'.join(str(r['seed']) for r in group),
                             random_baseline=round(math.sqrt(1 - rank / V), 6),
                             destroyed_init=pm(first, fmt), destroyed_mid=pm(mid, fmt),
                             destroyed_final=pm(last, fmt), change=round(last['mean'] - first['mean'], 6),
                             mid_step=group[0]['evals'][len(d[0]) // 2]['iter'],
                             final_step=group[0]['evals'][-1]['iter']))
    controls = dict(meter='measure.live_meter at every evaluation, on the first fixed held-out batch (all positions, '
                          'including position 0 on SpamLang): r = ‖P_ker(Wᵀ) G‖_F / ‖G‖_F',
                    baseline='√(1 − rank(W)/V): a random subspace of W\'s dimension', seeds=seeds_of(c))
    md = write_table(c, 'exp4_meter', rows, controls,
                     columns=['data', 'head', 'rank', 'V', 'lr', 'seeds', 'random_baseline', 'destroyed_init',
                              'destroyed_mid', 'mid_step', 'destroyed_final', 'final_step', 'change'])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for ax, (title, V, runs, x, xlabel) in zip(axes[0], panels):
        heads = list(dict.fromkeys(r['head'] for r in runs))
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(heads)))
        for color, spec in zip(colors, heads):
            group = [r for r in runs if r['head'] == spec]
            xs, mean, lo, hi = curves(group, x, 'grad_destroyed')
            ax.plot(xs, mean, color=color, label=head_label(spec, group[0]['rank']))
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
            ax.axhline(math.sqrt(1 - group[0]['rank'] / V), color=color, ls=':', lw=1)
        ax.set(xlabel=xlabel, ylabel='destroyed ratio ‖P_ker G‖ / ‖G‖',
               title=f"{title}\nV = {V:,}; dotted: random baseline √(1 − rank/V)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(c['out'], 'exp4_meter.png'), dpi=110)
    plt.close(fig)
    return dict(markdown=md, controls=controls)

# -----------------------------------------------------------------------------


EXPERIMENTS = {'1': ('head rank on SpamLang', exp1), '2': ('V/D on SpamLang at equal exposure', exp2),
               '3': ('real text, head rank', exp3), '4': ('the meter along training', exp4)}
FIGURES = {'1': 'exp1_head_rank.png', '2': 'exp2_vd_heatmap.png', '3': 'exp3_text.png', '4': 'exp4_meter.png'}


def main(argv):
    c = parse_args(argv)
    os.makedirs(c['out'], exist_ok=True)
    meta_path = os.path.join(c['out'], 'meta.json')
    meta = dict(command='python reproduce.py ' + ' '.join(argv), preset=c['preset'], device=c['device'],
                torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(c['device']) if c['device'].startswith('cuda') else None,
                date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), commit=train.code_version(),
                config={k: v for k, v in c.items() if not k.startswith('_')}, wall_s={})
    say(f"reproduce.py: preset {c['preset']}, experiments {c['experiments']}, seeds "
        f"{', '.join(map(str, seeds_of(c)))}, device {c['device']}, out {c['out']}")
    t_all, done = time.time(), {}
    COUNTS.update(trained=0, cached=0, train_seconds=0.0)
    for e in c['experiments'].split(','):
        name, fn = EXPERIMENTS[e]
        say(f"== experiment {e}: {name}")
        t0 = time.time()
        res = fn(c)
        meta['wall_s'][e] = round(time.time() - t0, 1)
        if res is not None:
            done[e] = res
            say(f"experiment {e} done in {meta['wall_s'][e]:.0f} s:\n{res['markdown']}\n"
                f"figure: {os.path.join(c['out'], FIGURES[e])}")
        meta['runs'] = {**COUNTS, 'train_seconds': round(COUNTS['train_seconds'], 1)}
        with open(meta_path, 'w') as f:  # after every experiment, so a stopped run still says what it did
            json.dump(meta, f, indent=1)
    meta['wall_s']['total'] = round(time.time() - t_all, 1)
    meta['runs'] = {**COUNTS, 'train_seconds': round(COUNTS['train_seconds'], 1)}
    with open(meta_path, 'w') as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(c['out'], 'summary.md'), 'w') as f:
        f.write(f"# {meta['command']}\n\n{meta['date']}, commit {meta['commit']}, torch {meta['torch']}, device "
                f"{meta['device']}{' (' + meta['gpu'] + ')' if meta['gpu'] else ''}, {meta['cpu_count']} CPUs, "
                f"wall {meta['wall_s']['total']:.0f} s ({meta['runs']['trained']} runs trained, {meta['runs']['cached']} "
                f"reused from an earlier invocation with --reuse)\n")
        for e, res in done.items():
            f.write(f"\n## Experiment {e}: {EXPERIMENTS[e][0]} ({meta['wall_s'][e]:.0f} s)\n\n![]({FIGURES[e]})\n\n"
                    f"Controls: {json.dumps(res['controls'])}\n\n{res['markdown']}\n")
    say(f"done in {meta['wall_s']['total']:.0f} s: tables, figures, summary.md and meta.json in {c['out']}")
    return done


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ReproError as e:
        sys.exit(f"error: {e}")
