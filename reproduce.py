"""
Reproduce the paper's findings at laptop scale, figures and tables included, in one command (arXiv 2603.10145).

    python reproduce.py --quick --text=input.txt       # experiments 1, 3, 4 at small sizes: ≤ 5 min on 2 CPU cores
    python reproduce.py --text=input.txt               # all four, the CPU preset (the defaults below): ≤ 60 min
    python reproduce.py --preset=gpu --text=input.txt  # config/reproduce_gpu.py, sized for one H200
    python reproduce.py --experiments=1 --e1_heads=narrow:4,wide --seeds=5 --out=results/mine

input.txt: any UTF-8 text, e.g. Tiny Shakespeare:
https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
Every run is one `python train.py --key=value ...` (its output in <out>/<exp>/<run>/stdout.txt beside log.jsonl and
run.json); heads are train.py's, written head[:head_rank] (narrow:8). Each configuration sweeps its lrs on the first
--sweep_seeds seeds, the others run at its best lr. An --out holding results is refused unless --reuse or --overwrite.
"""
import csv
import functools
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import options
import runtime
import textdata
import measure_cli
import plot
import spamlang
from options import ConfigError, TrainingError
from model import FACTORIZED, HEADS, GPTConfig, check_config, fused_linear_cross_entropy

# -----------------------------------------------------------------------------
# defaults: the CPU preset (all four experiments in ≤ 60 min on 2 cores); --preset=NAME takes the keys that are
# not given from config/reproduce_NAME.py
preset = 'cpu'            # cpu (these values) | quick | gpu | tiny (the test grid)
quick = False             # = --preset=quick
experiments = '1,2,3,4'   # a comma-separated subset, run in this order (4 reads the runs of 1 and 3)
text = ''                 # a UTF-8 .txt file for experiment 3 (skipped, with a note, without one)
out = 'results/{preset}'  # the results folder
reuse = False             # keep the finished runs in --out whose train.py arguments are the same
overwrite = False         # delete the results in --out first
device = 'auto'           # train.py --device of every run, and of experiment 3's analysis
compile = None            # train.py --compile; None = train.py's default (on for CUDA)
threads = 1               # OMP_NUM_THREADS of every run (0: torch's default); 1 is far faster on shared cores
seeds = 3                 # runs per configuration: seeds --seed, --seed + 1, ...
seed = 1337
sweep_seeds = 1           # the lr grid runs on the first sweep_seeds seeds, the others at each configuration's best lr
n_head = 4                # attention heads of every model
warmup = 0.1              # linear warmup over this fraction of each run's steps, then cosine to lr/10
# experiment 1: head rank on SpamLang
e1_heads = 'narrow:2,narrow:4,narrow:8,narrow:16,narrow:32,wide,linear,tied'  # head[:head_rank] (train.py's heads)
e1_lrs = '1e-3,3e-3,1e-2,3e-2'  # the lr grid of every head
e1_vocab_size = 1024
e1_n_embd = 64
e1_n_layer = 2
e1_block_size = 32
e1_batch_size = 32
e1_max_iters = 800         # 25 exposures per symbol
e1_eval_interval = 40
e1_eval_iters = 4          # held-out batches per evaluation
# experiment 2: SpamLang at equal exposures per symbol
e2_n_embds = '16,32,64'    # the (D, V) grid, head e2_head
e2_head = 'linear'
e2_ranks = '2,4,8,16'      # the (r, V) grid: --head=narrow --head_rank=r on one D = e2_rank_n_embd backbone
e2_rank_n_embd = 64
e2_vocab_sizes = '256,1024,4096'  # V of both grids
e2_lrs = '1e-3,3e-3,1e-2,3e-2'  # the lr grid of every cell
e2_exposures = 16.0        # sequences per symbol in every cell: batch = ⌈exposures·(V − 1)/steps⌉
e2_steps = 250
e2_n_layer = 2
e2_block_size = 2          # [BOS, s]: one determined position per sequence
e2_eval_sequences = 2048   # held-out sequences per cell (whole batches)
# experiment 3: text, head rank on one backbone
e3_heads = 'narrow:2,narrow:8,narrow:32,wide'  # r = 2 is the positive control, wide the full-rank head
e3_lrs = '3e-4,1e-3,3e-3,1e-2'  # 3e-2 ended 0.11–0.57 nats behind every head's best in a first run
e3_encoding = 'cl100k_base'
e3_n_embd = 64
e3_n_layer = 2
e3_block_size = 64
e3_batch_size = 16
e3_max_iters = 720         # 737k tokens ≈ 2.7 epochs of Tiny Shakespeare's train split (271k tokens)
e3_eval_interval = 180
e3_eval_iters = 0          # 0: every non-overlapping window of the validation split
e3_freq_bins = '64,1024'   # loss by frequency: the 64 most frequent types (train split), the next 1,024, the rest
e3_probe_steps = 100       # the probe: a fresh full-rank linear head fitted on each frozen backbone
e3_probe_lr = 1e-2
e3_spectrum_tokens = 2048  # the first validation tokens, for the spectrum of G
e3_gate_unigram = 0.5      # stage gate: the widest head must end ≥ this many nats below the unigram loss
e3_gate_bigram = 0.3       # ... and ≤ this many nats above the bigram loss
# -----------------------------------------------------------------------------
DEFAULTS = options.defaults_of(globals())
HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, 'train.py')
TITLES = {'1': 'head rank on SpamLang', '2': 'SpamLang at equal exposures: (D, V) and (r, V) grids',
          '3': 'text, head rank on one backbone', '4': 'the meter along training'}
FIGURES = {'1': ['exp1_head_rank.png'], '2': ['exp2_vd_heatmap.png', 'exp2_rank_heatmap.png'], '3': ['exp3_text.png'],
           '4': ['exp4_meter.png']}
EDGE = {'low edge': ' ↓', 'high edge': ' ↑', 'one lr': ' (one lr)', '': ''}
OURS = ["AdamW (0.9, 0.95), weight decay 0.1 on matrices, warmup then cosine to lr/10, grad clip 1 (train.py's)",
        "lrs swept on the first sweep_seeds seeds, the others at the best; ↓/↑: the best lr at the grid's low/high edge",
        "std over seeds with ddof = 1"]
COUNTS = dict(trained=0, reused=0, train_seconds=0.0)
say = functools.partial(print, flush=True)


def items(c, key, kind=float):
    """A comma-separated option as a list: positive numbers of `kind`, or heads head[:rank] (kind 'head')."""
    out = [s.strip() for s in str(c[key]).split(',')]
    for s in out:
        try:
            assert re.fullmatch(rf"({'|'.join(HEADS)})|({'|'.join(FACTORIZED)}):[1-9][0-9]*", s) if kind == 'head' else (
                0 < kind(s) < math.inf)
        except (AssertionError, ValueError):
            what = f"heads ({', '.join(HEADS)}; narrow:8 sets the rank)" if kind == 'head' else f"positive {kind.__name__}s"
            raise ConfigError(f"--{key}={c[key]}: bad item {s!r}; give {what}, comma-separated")
    return out if kind == 'head' else [kind(s) for s in out]


def head(spec, D):  # train.py's arguments, rank(W) and a label of a head written head[:rank]
    name, _, r = spec.partition(':')
    args = dict(head=name, **({'head_rank': int(r)} if r else {}))
    rank = plot.rank_of(dict(n_embd=D, **args))
    return args, rank, f"r = {rank}" if name == 'narrow' else f"{name} (r = {rank})"

# -----------------------------------------------------------------------------


def apply_preset(config, given, script, name):
    """The values of config/<script>_<name>.py for every key not given on the command line ('cpu' and '' are the
    script's own defaults). Returns the config; an unknown preset names the ones there are."""
    if name in ('', 'cpu'):
        return config
    path = os.path.join(HERE, 'config', f"{script}_{name}.py")
    if not os.path.isfile(path):
        there = sorted(f[len(script) + 1:-3] for f in os.listdir(os.path.join(HERE, 'config'))
                       if f.startswith(script + '_') and f.endswith('.py'))
        raise ConfigError(f"--preset={name}: no config/{script}_{name}.py; presets: {', '.join(['cpu', *there])}")
    for key, val in options.read_config_file(path).items():
        options.check_key(key, config, f" in {path}")
        if key not in given:
            config[key] = options.typed(key, val, config)
    return config


def parse_options(argv):
    c, given = options.parse_args(argv, DEFAULTS, __file__, types=dict(compile=bool))
    if c['quick'] and c['preset'] not in ('cpu', 'quick'):
        raise ConfigError(f"--quick is --preset=quick: drop --quick or --preset={c['preset']}")
    c['preset'] = 'quick' if c['quick'] else c['preset']
    c = apply_preset(c, given, 'reproduce', c['preset'])
    c['device'] = str(runtime.pick_device(c['device']))
    zero_ok = ('threads', 'e3_eval_iters', 'e3_gate_unigram', 'e3_gate_bigram')
    options.positive(c, *(k for k, v in DEFAULTS.items() if type(v) in (int, float) and k not in zero_ok))
    if min(c[k] for k in zero_ok) < 0 or c['warmup'] >= 1:
        raise ConfigError(f"--{', --'.join(zero_ok)} must be ≥ 0 and --warmup < 1")
    c['exps'], c['notes'] = list(dict.fromkeys(e.strip() for e in c['experiments'].split(',') if e.strip())), {}
    if not c['exps'] or not set(c['exps']) <= set(TITLES):
        raise ConfigError(f"--experiments must be a comma-separated subset of 1,2,3,4, got {c['experiments']!r}")
    if '3' in c['exps'] and not c['text']:
        c['exps'], c['notes']['3'] = [e for e in c['exps'] if e != '3'], "skipped: no text given (--text=FILE.txt)"
    if c['text'] and not os.path.isfile(c['text']):
        raise ConfigError(f"--text={c['text']!r} is not a file: give a UTF-8 .txt file, or drop --text")
    if c['reuse'] and c['overwrite']:
        raise ConfigError("--reuse keeps the finished runs in --out, --overwrite deletes them: give one of the two")
    try:
        c['out'] = c['out'].format(preset=c['preset'])
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"--out={c['out']!r}: bad {{field}} ({e}); the only field is {{preset}}")
    return c


def plan_heads(c, e, V=None):
    """Experiments 1 and 3: one backbone, only the head changes (3: by rank, checkpoints kept for the analysis)."""
    p, D = lambda k: c[f'e{e}_{k}'], c[f'e{e}_n_embd']
    base = dict(data='spamlang' if V else None, **({'vocab_size': V} if V else {}), n_embd=D, n_layer=p('n_layer'),
                n_head=c['n_head'], block_size=p('block_size'), batch_size=p('batch_size'), max_iters=p('max_iters'),
                warmup_iters=max(1, int(c['warmup'] * p('max_iters'))), eval_interval=p('eval_interval'),
                eval_iters=p('eval_iters'), log_interval=p('eval_interval'), save_checkpoints=e == '3')
    heads = sorted(items(c, f'e{e}_heads', 'head'), key=lambda h: head(h, D)[1] if e == '3' else 0)
    return [(h.replace(':', ''), head(h, D)[2], dict(head=h), {**base, **head(h, D)[0]}) for h in heads]


def plan_exp2(c):
    """Both grids at equal exposures per symbol: fixed steps, batch ∝ V, a fixed count of held-out sequences."""
    configs, steps = [], c['e2_steps']
    for x, xs in (('D', items(c, 'e2_n_embds', int)), ('r', items(c, 'e2_ranks', int))):
        for V in items(c, 'e2_vocab_sizes', int):  # cheap vocabularies first
            B = math.ceil(c['e2_exposures'] * (V - 1) / steps)
            n_eval = math.ceil(c['e2_eval_sequences'] / B)
            for v in xs:
                D = v if x == 'D' else c['e2_rank_n_embd']
                a = dict(data='spamlang', vocab_size=V, n_embd=D, n_layer=c['e2_n_layer'], n_head=c['n_head'],
                         block_size=c['e2_block_size'], batch_size=B, max_iters=steps, eval_interval=steps,
                         warmup_iters=max(1, int(c['warmup'] * steps)), eval_iters=n_eval, log_interval=steps,
                         save_checkpoints=False, **(dict(head=c['e2_head']) if x == 'D' else head(f'narrow:{v}', D)[0]))
                configs.append((f"{x}{v}_V{V}", f"{x} = {v}, V = {V:,}", dict(D=D, batch_size=B, steps=steps, eval_sequences=
                                B * n_eval, exposures=round(B * steps / (V - 1), 2)), a))
    return configs


def plan(c):
    """Every run, each model checked before any starts: per experiment, every lr of each configuration (key, label,
    info, train.py args) on the first sweep_seeds seeds, then the other seeds seed-major, at its best lr (None here)."""
    plans = {'1': lambda: plan_heads(c, '1', c['e1_vocab_size']), '2': plan_exp2, '3': lambda: plan_heads(c, '3')}
    seeds, n, specs = [c['seed'] + i for i in range(c['seeds'])], c['sweep_seeds'], []
    for e in (e for e in c['exps'] if e in plans):
        configs, lrs = plans[e](c) if e == '2' else plans[e](), items(c, f'e{e}_lrs')
        specs += [dict(exp=f'exp{e}', key=k, label=lbl, info=info, args=a, seed=s, lr=lr, sweep=bool(lr))
                  for s, grid in [(s, lrs) for s in seeds[:n]] + [(s, [None]) for s in seeds[n:]]
                  for k, lbl, info, a in configs for lr in grid]
    items(c, 'e3_freq_bins', int)
    for s in specs:
        try:
            check_config(GPTConfig(**{k: s['args'][k] for k in checkpoint.MODEL_KEYS if k in s['args']}))
        except ValueError as e:
            raise ConfigError(f"{s['exp']} {s['label']}: {e}")
    return specs


def prepare_out(c):
    """Refuse an --out that holds results unless --reuse or --overwrite; --overwrite deletes what reproduce wrote."""
    out = c['out']
    mine = sorted(f for f in (os.listdir(out) if os.path.isdir(out) else []) if f in ('meta.json', 'summary.md')
                  or f in ('exp1', 'exp2', 'exp3') or (f.startswith('exp') and f.endswith(('.csv', '.json', '.png'))))
    if mine and not (c['reuse'] or c['overwrite']):
        raise ConfigError(f"--out={out} already holds results ({', '.join(mine[:3])}{', …' * (len(mine) > 3)}): pass "
                          f"--reuse to keep its finished runs, --overwrite to delete them, or another --out")
    for p in (os.path.join(out, f) for f in mine if c['overwrite']):
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(out, exist_ok=True)

# -----------------------------------------------------------------------------


def clock(s):
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def run_all(c, specs, summarise):
    """Run the specs in order; summarise each experiment after its last run. Returns the runs by configuration."""
    recs, spent, t0 = {}, {}, time.time()
    left = {s['exp']: sum(x['exp'] == s['exp'] for x in specs) for s in specs}
    for i, s in enumerate(specs):
        group = recs.setdefault((s['exp'], s['key']), [])
        s['lr'] = s['lr'] or best_lr(s['exp'], [r for r in group if r['sweep']])[0]
        s['name'] = f"{s['key']}_lr{s['lr']:g}_s{s['seed']}"
        done = [t for ts in spent.values() for t in ts]  # the mean time per trained run, of its experiment if any
        est = clock(sum(np.mean(spent.get(r['exp']) or done) for r in specs[i:])) + ' left' if done else 'time left: later'
        say(f"[{i + 1}/{len(specs)}] {s['exp']} {s['label']} lr {plot.sci(s['lr'])} seed {s['seed']} … "
            f"{clock(time.time() - t0)}; {est}")
        group.append(run_one(c, s, spent))
        left[s['exp']] -= 1
        if not left[s['exp']]:
            summarise(s['exp'][-1], recs)
    return recs


def run_one(c, s, spent):
    """One train.py process, its stdout and stderr in stdout.txt; run.json: args, config row, eval rows, seconds."""
    d, e = os.path.join(c['out'], s['exp'], s['name']), lambda rec: rec['evals'][-1]
    result = lambda rec: (f"acc {100 * e(rec)['val_acc']:.1f}%, loss {e(rec)['val_loss']:.3f} on positions ≥ 1" if
                          'val_acc' in e(rec) else f"val loss {e(rec)['val_loss']:.4f} after {e(rec)['tokens']:,} tokens")
    args = {**s['args'], 'learning_rate': s['lr'], 'min_lr': s['lr'] / 10, 'seed': s['seed'], 'out_dir': d,
            'overwrite': True, 'device': c['device'],
            **({} if c['compile'] is None else {'compile': c['compile']})}
    if c['reuse'] and os.path.isfile(os.path.join(d, 'run.json')):
        with open(os.path.join(d, 'run.json')) as f:
            rec = json.load(f)
        same = lambda a: {k: os.path.basename(str(v)) if k in ('out_dir', 'data') else v for k, v in a.items()}
        if same(rec.get('args', {})) == same(json.loads(json.dumps(args))) and rec.get('evals'):  # --out may move
            COUNTS['reused'] += 1
            say(f"      reused: {result(rec)} (finished earlier with the same arguments)")
            return {**rec, 'sweep': s['sweep']}
    shutil.rmtree(d, ignore_errors=True)  # unfinished, or run with other arguments
    os.makedirs(d)
    t0, err, env = time.time(), [], dict(os.environ, PYTHONUNBUFFERED='1')
    env.update({'OMP_NUM_THREADS': str(c['threads'])} if c['threads'] else {})
    with open(os.path.join(d, 'stdout.txt'), 'w') as log:
        p = subprocess.Popen([sys.executable, TRAIN, *(f"--{k}={v}" for k, v in args.items() if v is not None)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            (reader := threading.Thread(target=lambda: err.extend(p.stderr))).start()
            for line in p.stdout:
                log.write(line)
                say('      ' + line.rstrip()) if s['exp'] == 'exp3' and line.startswith('eval') else None
        except BaseException:  # Ctrl-C, or a SIGTERM to reproduce.py alone: stop the run, never leave it orphaned
            p.terminate(), p.wait()
            raise
        p.wait()
        reader.join()
        log.writelines(err)
    if p.returncode:
        last = next((x.strip() for x in reversed(err) if x.strip()), 'nothing on stderr').removeprefix('error: ')
        raise TrainingError(f"run {d} failed (exit status {p.returncode}): {last} (output: {d}/stdout.txt)")
    with open(os.path.join(d, 'log.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    os.remove(prev) if os.path.exists(prev := os.path.join(d, 'prev_ckpt.pt')) else None  # only the final one is used
    rec = dict({k: s[k] for k in ('exp', 'key', 'name', 'label', 'info', 'lr', 'seed', 'sweep')}, args=args,
               config=rows[0], seconds=round(time.time() - t0, 2), evals=[r for r in rows if r.get('type') == 'eval'])
    with open(os.path.join(d, 'run.json'), 'w') as f:
        json.dump(rec, f)
    spent.setdefault(s['exp'], []).append(rec['seconds'])
    COUNTS.update(trained=COUNTS['trained'] + 1, train_seconds=round(COUNTS['train_seconds'] + rec['seconds'], 1))
    say(f"      {result(rec)}, {rec['seconds']:.1f} s")
    return rec


def best_lr(exp, recs):
    """(best lr, edge flag) of sweep runs: SpamLang the best mean accuracy, then loss; text the lowest mean loss."""
    by = {}
    for r in recs:
        by.setdefault(r['lr'], []).append(r['evals'][-1])
    mean, lrs = lambda lr, k: np.mean([e[k] for e in by[lr]]), sorted(by)
    best = max(lrs, key=lambda lr: (0 if exp == 'exp3' else round(mean(lr, 'val_acc'), 3), -mean(lr, 'val_loss')))
    return best, 'one lr' if len(lrs) == 1 else 'low edge' if best == lrs[0] else 'high edge' if best == lrs[-1] else ''

# -----------------------------------------------------------------------------


def spread(xs):
    """mean, sample std (ddof = 1; None for a single value), min, max, n."""
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    return dict(mean=None, std=None, min=None, max=None, n=0) if not a.size else dict(
        mean=float(a.mean()), std=float(a.std(ddof=1)) if a.size > 1 else None, min=float(a.min()), max=float(a.max()),
        n=int(a.size))


def write_table(c, stem, rows, controls, **extra):
    """stem.json: {controls, rows, ...extra}; stem.csv: the rows (lists joined by spaces); summary.md the table."""
    with open(os.path.join(c['out'], stem + '.json'), 'w') as f:
        json.dump(dict(controls=controls, rows=rows, **extra), f, indent=1)
    with open(os.path.join(c['out'], stem + '.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows({k: ' '.join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows)


def lr_rows(exp, runs, **info):
    """One row per lr of a configuration (over its seeds), the best marked; and the best lr, its flag and runs."""
    best, flag = best_lr(exp, [r for r in runs if r['sweep']])
    rows = []
    for lr in sorted({r['lr'] for r in runs}):
        fin = [r['evals'][-1] for r in runs if r['lr'] == lr]
        rows.append(dict(**info, lr=lr, best=lr == best, edge=flag if lr == best else '', n_seeds=len(fin), **{
            f"{k}_{s}": None if v is None else round(v, 4) for k in ('loss', 'acc') if f'val_{k}' in fin[0]
            for s, v in spread([e[f'val_{k}'] for e in fin]).items() if s != 'n'},
            destroyed=round(np.mean([e['grad_destroyed'] for e in fin]), 6),
            visible_over_chance=round(np.mean([e.get('visible_over_chance', np.nan) for e in fin]), 4),
            runs=[r['name'] for r in runs if r['lr'] == lr]))
    return rows, best, flag, [r for r in runs if r['lr'] == best]

# -----------------------------------------------------------------------------
# experiment summaries: (controls, markdown table, notes), the tables and figures written to --out


def summary_exp1(c, recs):
    D, V = c['e1_n_embd'], c['e1_vocab_size']
    rows, heads, lines = [], [], []
    for h in items(c, 'e1_heads', 'head'):
        runs, (_, rank, lbl) = recs[('exp1', h.replace(':', ''))], head(h, D)
        rs, best, flag, b = lr_rows('exp1', runs, head=h, rank=rank)
        rows, row = rows + rs, next(r for r in rs if r['best'])
        heads.append(dict(label=lbl, rank=rank, plain=h in ('linear', 'tied'), runs=b, rows=rs))
        lines.append([lbl, f"{plot.sci(best)}{EDGE[flag]}", plot.pm(spread([r['evals'][-1]['val_acc'] for r in b]), scale=100),
                      ', '.join(f"{plot.sci(r['lr'])}: {100 * r['acc_mean']:.1f}" for r in rs if not r['best']) or '-',
                      f"{row['destroyed']:.4f}", f"{row['visible_over_chance']:.2f}"])
    c['_best']['1'] = heads
    controls = dict(data='SpamLang', vocab_size=V, n_embd=D, n_layer=c['e1_n_layer'], block_size=c['e1_block_size'],
                    batch_size=c['e1_batch_size'], max_iters=c['e1_max_iters'], lrs=items(c, 'e1_lrs'),
                    exposures_per_symbol=round(c['e1_max_iters'] * c['e1_batch_size'] / (V - 1), 2),
                    varies='only the head and its lr: same data stream, init seed, schedule and held-out batches',
                    ours=OURS + [f"accuracy and the meter on positions ≥ 1 of {c['e1_eval_iters']} held-out batches"])
    write_table(c, 'exp1_head_rank', rows, controls)
    plot.exp1(os.path.join(c['out'], FIGURES['1'][0]), heads, V, D,
              f"{c['seeds']} seeds, {controls['exposures_per_symbol']:g} exposures per symbol")
    return controls, plot.md(['head', 'best lr', 'final acc % (positions ≥ 1)', 'acc % at the other lrs (mean)',
                              'destroyed', 'visible/chance'], lines), []


def summary_exp2(c, recs):
    tables, Vs = [], items(c, 'e2_vocab_sizes', int)
    for x, xs, stem, fig in (('D', items(c, 'e2_n_embds', int), 'exp2_vd_grid', FIGURES['2'][0]),
                             ('r', items(c, 'e2_ranks', int), 'exp2_rank_grid', FIGURES['2'][1])):
        rows, cells = [], {}
        for V, v in ((V, v) for V in Vs for v in xs):
            runs = recs[('exp2', f"{x}{v}_V{V}")]
            rs, best, flag, b = lr_rows('exp2', runs, **{**runs[0]['info'], x: v, 'V': V})
            rows += rs
            cells[v, V] = {x: v, 'V': V, 'ratio': V / v, 'lr': best, 'edge': flag, 'seeds': [r['seed'] for r in b],
                           'acc': [r['evals'][-1]['val_acc'] for r in b],
                           'loss_over_logV': [r['evals'][-1]['val_loss'] / spamlang.optimal_loss_pos0(V) for r in b]}
        controls = dict(data='SpamLang', head=c['e2_head'] if x == 'D' else f"narrow (rank r), D = {c['e2_rank_n_embd']}",
                        n_layer=c['e2_n_layer'], block_size=c['e2_block_size'], steps=c['e2_steps'], varies=f"{x}, V, lr",
                        exposures_per_symbol=c['e2_exposures'], lrs=items(c, 'e2_lrs'), ours=OURS + [
                            "equal exposures: batch ∝ V", f"≥ {c['e2_eval_sequences']} held-out sequences per cell"])
        write_table(c, stem, rows, controls, cells=list(cells.values()))
        plot.grid(os.path.join(c['out'], fig), cells, x, xs, Vs, f"{controls['head']}, {c['e2_exposures']:g} exposures "
                                                                  f"per symbol, {c['seeds']} seeds")
        tables.append(plot.md([f"{x} \\ V"] + [f"{V:,}" for V in Vs], [[v] + [
            f"{plot.pm(spread(d['acc']), scale=100)} ({np.mean(d['loss_over_logV']):.2f}){EDGE[d['edge']]}"
            for d in (cells[v, V] for V in Vs)] for v in xs]))
    return controls, ("Accuracy % on positions ≥ 1 at each cell's best lr, mean ± std (min–max), and in brackets the "
                      "loss there / log(V − 1); ↓/↑: the best lr on the grid's edge:\n\n" + '\n\n'.join(tables)), []


def baselines(train, x, y, V):
    """Loss (nats per token) on the pairs x → y of count models of the train split: the unigram, add-one smoothed
    over the V types, and a bigram interpolated with it by Witten–Bell (ours): p(w | v) = λ c(v, w)/c(v) +
    (1 − λ) p_uni(w), λ = c(v) / (c(v) + t(v)), t(v) = the number of distinct successors of v (λ = 0 if c(v) = 0)."""
    train, x, y = (np.asarray(a, dtype=np.int64) for a in (train, x, y))
    uni = (np.bincount(train, minlength=V) + 1) / (len(train) + V)
    pairs, counts = np.unique(train[:-1] * V + train[1:], return_counts=True)
    cv, tv = np.bincount(train[:-1], minlength=V), np.bincount(pairs // V, minlength=V)
    i = np.minimum(np.searchsorted(pairs, x * V + y), len(pairs) - 1)
    lam = cv[x] / np.maximum(cv[x] + tv[x], 1)
    p = lam * np.where(pairs[i] == x * V + y, counts[i], 0) / np.maximum(cv[x], 1) + (1 - lam) * uni[y]
    return dict(unigram=float(-np.log(uni[y]).mean()), bigram=float(-np.log(p).mean()))


def analyse(c, rec, data, xv, yv, bins):
    """From a run's final checkpoint: the loss by frequency bin, a fresh full-rank probe fitted on the frozen backbone
    (the same windows, steps and lr for every head), and the spectrum of G on the first validation tokens."""
    ckpt = checkpoint.load_checkpoint(os.path.join(c['out'], 'exp3', rec['name'], 'ckpt.pt'))
    cfg, dev = ckpt['config'], c['device']
    model = checkpoint.model_from_checkpoint(ckpt).to(dev)
    model.eval().requires_grad_(False)
    V, D, y, W = cfg['vocab_size'], cfg['n_embd'], yv.reshape(-1).to(dev), model.lm_head.effective_weight()
    with torch.no_grad():
        H = torch.cat([model.hidden(x.to(dev)).reshape(-1, D) for x in xv.split(64)])
        loss = torch.cat([F.cross_entropy(h @ W.T, t, reduction='none') for h, t in zip(H.split(4096), y.split(4096))])
    b, n = torch.as_tensor(bins, device=dev)[y], min(c['e3_spectrum_tokens'], len(y))
    m = measure_cli.measure(H[:n], y[:n], W, spectrum_tokens=n, direction_tokens=0)
    torch.manual_seed(c['seed'])
    probe = torch.nn.Linear(D, V, bias=False).to(dev)
    torch.nn.init.normal_(probe.weight, std=0.02)
    opt = torch.optim.AdamW(probe.parameters(), lr=c['e3_probe_lr'], betas=(0.9, 0.95), weight_decay=0.0)
    gen = spamlang.make_generator(c['seed'] + 7)  # the same training windows for every head
    for _ in range(c['e3_probe_steps']):
        xb, yb = textdata.get_batch(data, 'train', cfg['batch_size'], cfg['block_size'], gen, dev)
        with torch.no_grad():
            h = model.hidden(xb)
        opt.zero_grad(set_to_none=True)
        fused_linear_cross_entropy(h, probe.weight, yb).backward()  # no (N, V) logits: 2× faster on CPU
        opt.step()
    with torch.no_grad():
        probe_loss = sum(F.cross_entropy(probe(h), t, reduction='sum').item() for h, t in zip(H.split(4096), y.split(4096)))
    return dict(loss=loss.mean().item(), probe_loss=probe_loss / len(y), loss_by_frequency=[
        loss[b == k].mean().item() if (b == k).any() else None for k in range(int(bins.max()) + 1)], spectrum=dict(
        tokens=n, rank_W=m['rank_W'], destroyed_ratio=m['destroyed_ratio'], ey_floor=m['ey_floor']))


def tokens_to(evals, level):
    """Tokens at which a validation-loss curve first reaches `level` (which it does), linear between evaluations."""
    L, t = (np.array([e[k] for e in evals], dtype=float) for k in ('val_loss', 'tokens'))
    i = int(np.argmax(L <= level))
    return t[i] if i == 0 else t[i - 1] + (L[i - 1] - level) / (L[i - 1] - L[i]) * (t[i] - t[i - 1])


def summary_exp3(c, recs):
    D, T = c['e3_n_embd'], c['e3_block_size']
    data = textdata.load_data(dict(data=c['_tok'], block_size=T))
    V, train_ids = data['vocab_size'], np.asarray(data['train'], dtype=np.int64)
    xv, yv = textdata.val_windows(data, T)  # every window of the validation split, as train.py --eval_iters=0
    base = baselines(train_ids, xv.numpy().ravel(), yv.numpy().ravel(), V)
    sizes, order = items(c, 'e3_freq_bins', int), np.empty(V, dtype=np.int64)
    order[np.argsort(-np.bincount(train_ids, minlength=V), kind='stable')] = np.arange(V)
    bins = np.searchsorted(np.cumsum(sizes), order, side='right')  # bin of each type, by its train-split frequency
    names = [f"top {sizes[0]:,}"] + [f"next {n:,}" for n in sizes[1:]] + ['the rest']
    per, best, rows = {}, {}, []
    for h in sorted(items(c, 'e3_heads', 'head'), key=lambda h: head(h, D)[1]):
        runs, (_, rank, lbl) = recs[('exp3', h.replace(':', ''))], head(h, D)
        rs, lr, flag, b = lr_rows('exp3', runs, head=h, rank=rank)
        for r in (r for r in b if 'analysis' not in r):
            if not os.path.isfile(os.path.join(c['out'], 'exp3', r['name'], 'ckpt.pt')):
                raise ConfigError(f"exp3/{r['name']} was never analysed and its checkpoint is gone: use --overwrite")
            say(f"exp3: analysing {r['name']}: loss by frequency, probe, spectrum")
            r['analysis'] = analyse(c, r, data, xv, yv, bins)
            with open(os.path.join(c['out'], 'exp3', r['name'], 'run.json'), 'w') as f:
                json.dump(r, f)
        for p in (os.path.join(c['out'], 'exp3', r['name'], 'ckpt.pt') for r in runs):
            os.remove(p) if os.path.exists(p) else None  # the checkpoints were only for the analysis
        a, best[h], rows = [r['analysis'] for r in b], {r['seed']: r for r in b}, rows + rs
        c['_best'].setdefault('3', []).append(dict(label=lbl, rank=rank, runs=b))
        per[h] = dict(label=lbl, rank=rank, best_lr=lr, edge=flag, seeds=[r['seed'] for r in b],
                      final_val_loss=[r['evals'][-1]['val_loss'] for r in b], probe_loss=[x['probe_loss'] for x in a],
                      loss_by_frequency={n: [x['loss_by_frequency'][k] for x in a] for k, n in enumerate(names)},
                      spectrum={k: [x['spectrum'][k] for x in a] for k in a[0]['spectrum']})
    heads, fold = list(per), {}  # ×-fold at the worst final loss of a narrower head and every wider one: all reach it
    for i, ref in enumerate(heads[:-1]):
        level = max(v for h in heads[i:] for v in per[h]['final_val_loss'])
        t = lambda r: tokens_to(r['evals'], level)
        fold[ref] = dict(level=level, fold={h: [t(best[ref][s]) / t(r) if t(r) else None  # None: reached at step 0
                                                for s, r in best[h].items() if s in best[ref]] for h in heads[i + 1:]})
    wide, wl = per[heads[-1]], float(np.mean(per[heads[-1]]['final_val_loss']))
    passed = wl <= base['unigram'] - c['e3_gate_unigram'] and wl <= base['bigram'] + c['e3_gate_bigram']
    verdict = (f"Stage gate {'passed' if passed else 'FAILED'}: the widest head ends at {wl:.3f} nats, "
               f"{wl - base['unigram']:+.2f} from the unigram loss {base['unigram']:.3f} (gate: ≤ −{c['e3_gate_unigram']:g})"
               f" and {wl - base['bigram']:+.2f} from the bigram loss {base['bigram']:.3f} (≤ +{c['e3_gate_bigram']:g})." +
               ('' if passed else " This experiment cannot conclude anything about the effect of head rank on text."))
    diff = [best[heads[0]][s]['evals'][-1]['val_loss'] - r['evals'][-1]['val_loss'] for s, r in best[heads[-1]].items()]
    control = (f"Positive control, {per[heads[0]]['label']}: {np.mean(diff):+.3f} nats vs {wide['label']} at the end, "
               f"same seed (worse on {sum(d > 0 for d in diff)} of {len(diff)} seeds)")
    lines = [[p['label'], f"{plot.sci(p['best_lr'])}{EDGE[p['edge']]}", plot.pm(spread(p['final_val_loss']), '{:.3f}'),
              plot.pm(spread(p['probe_loss']), '{:.3f}'), ' / '.join(f"{np.mean(p['loss_by_frequency'][n]):.2f}" for n in names),
              f"{np.mean(p['spectrum']['destroyed_ratio']):.5f}", f"{np.mean(p['spectrum']['ey_floor']):.3f}",
              '; '.join(f"{plot.pm(spread(f['fold'][h]), '{:.2f}')} vs {per[ref]['label']} at {f['level']:.3f}"
                        for ref, f in fold.items() if h in f['fold']) or '-'] for h, p in per.items()]
    tokens = c['e3_max_iters'] * c['e3_batch_size'] * T
    controls = dict(data=os.path.basename(c['text']), encoding=c['e3_encoding'], vocab_size=V, n_embd=D, block_size=T,
                    n_layer=c['e3_n_layer'], batch_size=c['e3_batch_size'], max_iters=c['e3_max_iters'], tokens=tokens,
                    train_tokens=len(train_ids), epochs=round(tokens / len(train_ids), 2), val_tokens=int(yv.numel()),
                    lrs=items(c, 'e3_lrs'), frequency_bins=names, val_share_by_bin=(np.bincount(bins[yv.numpy().ravel()],
                    minlength=len(names)) / yv.numel()).round(4).tolist(), varies='only the head and its lr',
                    ours=OURS + ["vocabulary compacted to the ids that occur; 90% train, 10% validation (every window)",
                                 "baselines from train counts: add-one unigram, Witten–Bell bigram", f"probe: a fresh "
                                 f"linear head, AdamW lr {c['e3_probe_lr']:g}, {c['e3_probe_steps']} steps, same windows",
                                 "×-fold: tokens of the narrower head / of the wider to the worst final loss of both and "
                                 f"every head between, same seed", f"spectrum on {c['e3_spectrum_tokens']} val tokens"])
    write_table(c, 'exp3_text', rows, controls, baselines=base, gate=dict(passed=passed, widest_final_loss=wl),
                verdict=verdict, positive_control=control, heads=per, fold=fold)
    plot.exp3(os.path.join(c['out'], FIGURES['3'][0]), per, best, base, names, f"{controls['data']}, {c['e3_encoding']} "
              f"compacted (V = {V:,}), D = {D}, {controls['epochs']:g} epochs")
    return controls, plot.md(['head', 'best lr', 'final val loss', 'probe val loss',
                              f"loss by frequency ({' / '.join(names)})", 'destroyed (G on val)', 'Eckart–Young floor',
                              '×-fold in tokens'], lines), [verdict, control]


def summary_exp4(c, recs):
    panels, rows = [], []  # from the best lr's runs of experiments 1 and 3 in this invocation
    for e, data in ((e, data) for e, data in (('1', 'SpamLang'), ('3', 'text')) if e in c['_best']):
        for h in c['_best'][e]:
            V, r, run = h['runs'][0]['config']['vocab_size'], h['rank'], h['runs'][0]
            d, v = (np.array([[x.get(k, np.nan) for x in q['evals']] for q in h['runs']])
                    for k in ('grad_destroyed', 'visible_over_chance'))
            at = dict(init=0, mid=d.shape[1] // 2, end=-1)
            rows.append(dict(data=data, head=h['label'], V=V, baseline=round(math.sqrt(1 - r / V), 6), **{
                f"destroyed_{k}": plot.pm(spread(d[:, i]), '{:.6f}' if V > 9999 else '{:.4f}') for k, i in at.items()},
                             **{f"visible/chance_{k}": plot.pm(spread(v[:, i]), '{:.2f}') for k, i in at.items()},
                             mid=f"step {run['evals'][at['mid']]['iter']} of {run['evals'][-1]['iter']}"))
        panels.append(dict(title=f"{data} (experiment {e}), V = {V:,}", V=V, heads=c['_best'][e]))
    if not panels:
        return None
    controls = dict(meter="train.py's at each eval, first held-out batch: ‖P_ker(Wᵀ) G‖_F / ‖G‖_F; SpamLang: positions ≥ 1",
                    baseline='√(1 − rank(W)/V), random', visible_over_chance='c²·V/rank(W), 1 = chance', runs='best lr')
    write_table(c, 'exp4_meter', rows, controls)
    plot.exp4(os.path.join(c['out'], FIGURES['4'][0]), panels)
    return controls, plot.md(list(rows[0]), [list(r.values()) for r in rows]), []

# -----------------------------------------------------------------------------


def main(argv):
    c, _ = parse_options(argv), COUNTS.update(trained=0, reused=0, train_seconds=0.0)
    torch.set_num_threads(c['threads'] or torch.get_num_threads())  # experiment 3's analysis runs here
    specs, c['_best'], _ = plan(c), {}, prepare_out(c)  # _best: the best lr's runs of each head; experiment 4 reads them
    if '3' in c['exps']:
        os.makedirs(os.path.join(c['out'], 'exp3'), exist_ok=True)
        c['_tok'] = textdata.tokenize_text(c['text'], c['e3_encoding'], os.path.join(c['out'], 'exp3'), compact=True)
        for s in (s for s in specs if s['exp'] == 'exp3'):
            s['args']['data'] = c['_tok']
    meta = dict(command=' '.join(['python reproduce.py', *argv]), date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                commit=runtime.code_version(), device=c['device'], gpu=torch.cuda.get_device_name(c['device']) if
                c['device'].startswith('cuda') else None, platform=platform.platform(), cpu_count=os.cpu_count(),
                threads=c['threads'] or os.environ.get('OMP_NUM_THREADS'), torch=torch.__version__, wall_s={}, runs=COUNTS,
                runs_by_experiment={}, config={k: v for k, v in c.items() if not k.startswith('_')})
    say(f"reproduce.py: preset {c['preset']}, experiments {','.join(c['exps'])}, {len(specs)} runs, seeds "
        f"{c['seed']}..{c['seed'] + c['seeds'] - 1}, device {c['device']}, out {c['out']}")
    done, t_all, last = {}, time.time(), [time.time()]

    def summarise(e, recs):
        res = SUMMARIES[e](c, recs)
        meta['wall_s'][e], last[0] = round(time.time() - last[0], 1), time.time()
        runs = [r for (x, _), rs in recs.items() if x == f'exp{e}' for r in rs]
        meta['runs_by_experiment'][e] = dict(runs=len(runs), train_seconds=round(sum(r['seconds'] for r in runs), 1))
        if res is None:
            c['notes'][e] = "skipped: it reads the runs of experiments 1 and 3: add them (--reuse keeps finished runs)"
        else:
            done[e] = (f"## Experiment {e}: {TITLES[e]} ({clock(meta['wall_s'][e])})\n\n" + ''.join(
                f"![]({f})\n" for f in FIGURES[e]) + ''.join(f"\n{n}\n" for n in res[2]) + f"\n{res[1]}\n\nControls:\n" +
                ''.join(f"- {k}: {'; '.join(v) if k == 'ours' else v}\n" for k, v in res[0].items()))
            say(done[e])
        write_summary(c, meta, done)

    recs = run_all(c, specs, summarise)
    for e in (e for e in c['exps'] if e not in done and e not in c['notes']):  # without runs of its own: 4
        summarise(e, recs)
    meta['wall_s']['total'] = round(time.time() - t_all, 1)
    write_summary(c, meta, done)
    say(''.join(f"experiment {e}: {note}\n" for e, note in c['notes'].items()) + f"done in {clock(meta['wall_s']['total'])}"
        f" ({COUNTS['trained']} runs trained, {COUNTS['reused']} reused): summary.md, tables, figures in {c['out']}")
    return done


def write_summary(c, meta, done):
    """meta.json, and summary.md: every experiment's figures, notes, table and controls."""
    with open(os.path.join(c['out'], 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    parts = [done.get(e) or f"## Experiment {e}: {TITLES[e]}\n\n{c['notes'][e]}\n" for e in sorted({*done, *c['notes']})]
    with open(os.path.join(c['out'], 'summary.md'), 'w') as f:
        f.write(f"# {meta['command']}\n\n{meta['date']}, commit {meta['commit']}, torch {meta['torch']}, device "
                f"{meta['gpu'] or meta['device']}, {meta['cpu_count']} CPUs; {meta['runs']['trained']} runs trained, "
                f"{meta['runs']['reused']} reused\n\n" + '\n'.join(parts))


SUMMARIES = {'1': summary_exp1, '2': summary_exp2, '3': summary_exp3, '4': summary_exp4}
if __name__ == '__main__':
    options.one_line_errors()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: unwind like Ctrl-C (run_one stops its run)
    main(sys.argv[1:])
