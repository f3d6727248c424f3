"""
Reproduce the paper's findings at laptop scale, figures and tables included, in one command
(arXiv 2603.10145).

    python reproduce.py --quick --text=input.txt       # experiments 1, 3, 4, small: ≤ 5 min on 2 CPU cores
    python reproduce.py --text=input.txt               # all four, the CPU preset (the defaults): ≤ 60 min
    python reproduce.py --preset=gpu --text=input.txt  # config/reproduce_gpu.py, sized for one H200
    python reproduce.py --experiments=1 --e1_heads=narrow:4,wide --seeds=5 --out=results/mine

input.txt: any UTF-8 text, e.g. Tiny Shakespeare:
https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
Every run is one `python train.py --key=value ...` (its output in <out>/<exp>/<run>/stdout.txt beside
log.jsonl and run.json); heads are train.py's, written head[:head_rank] (narrow:8). Each configuration sweeps
its lrs on the first --sweep_seeds seeds, the others run at its best lr. An --out holding results is refused
unless --reuse or --overwrite.
"""
import csv
import dataclasses
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
# defaults: the CPU preset (all four experiments in ≤ 60 min on 2 cores); --preset=NAME takes the keys that
# are not given from config/reproduce_NAME.py
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
sweep_seeds = 1           # the lr grid runs on the first sweep_seeds seeds, the others at the best lr found
n_head = 4                # attention heads of every model
warmup = 0.1              # linear warmup over this fraction of each run's steps, then cosine to lr/10
# experiment 1: head rank on SpamLang
e1_heads = 'narrow:2,narrow:4,narrow:8,narrow:16,narrow:32,wide,linear,tied'  # head[:head_rank], train.py's
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
e3_freq_bins = '64,1024'   # loss by frequency: the 64 most frequent types (train split), the next 1,024, rest
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
FIGURES = {'1': ['exp1_head_rank.png'], '2': ['exp2_vd_heatmap.png', 'exp2_rank_heatmap.png'],
           '3': ['exp3_text.png'], '4': ['exp4_meter.png']}
EDGE = {**plot.ARROWS, 'one lr': ' (one lr)', '': ''}  # the best lr's flag, after it in the tables
OURS = ["AdamW (0.9, 0.95), weight decay 0.1 on matrices, warmup then cosine to lr/10, grad clip 1 "
        "(train.py's)",
        "lrs swept on the first sweep_seeds seeds, the others at the best; ↓/↑: the best lr at the grid's "
        "low/high edge",
        "std over seeds with ddof = 1"]
HEAD_SPEC = re.compile(rf"({'|'.join(HEADS)})|({'|'.join(FACTORIZED)}):[1-9][0-9]*")
say = functools.partial(print, flush=True)

# -----------------------------------------------------------------------------
# options


def numbers(c, key, kind=float):
    """A comma-separated option as a list of positive numbers of `kind` (float or int)."""
    values = []
    for item in str(c[key]).split(','):
        item = item.strip()
        try:
            value = kind(item)
        except ValueError:
            value = math.nan
        if not 0 < value < math.inf:
            raise ConfigError(f"--{key}={c[key]}: bad item {item!r}; give positive {kind.__name__}s, "
                              f"comma-separated")
        values.append(value)
    return values


def head_specs(c, key):
    """A comma-separated option of train.py's heads, each written head[:rank] (narrow:8 sets the rank)."""
    specs = [s.strip() for s in str(c[key]).split(',')]
    for spec in specs:
        if not HEAD_SPEC.fullmatch(spec):
            raise ConfigError(f"--{key}={c[key]}: bad item {spec!r}; give heads ({', '.join(HEADS)}; "
                              f"narrow:8 sets the rank), comma-separated")
    return specs


def heads_of(c, e):
    """The heads of experiment 1 or 3 (3: narrowest first), each a dict: spec (head[:rank]), key (its runs'
    name), args (train.py's), rank (of W) and label."""
    D = c[f'e{e}_n_embd']
    heads = []
    for spec in head_specs(c, f'e{e}_heads'):
        name, _, r = spec.partition(':')
        args = dict(head=name)
        if r:
            args['head_rank'] = int(r)
        rank = plot.rank_of(dict(n_embd=D, **args))
        label = f"r = {rank}" if name == 'narrow' else f"{name} (r = {rank})"
        heads.append(dict(spec=spec, key=spec.replace(':', ''), args=args, rank=rank, label=label))
    if e == '3':
        heads.sort(key=lambda h: h['rank'])
    return heads


def exp2_grids(c):
    """The two grids of experiment 2: widths D on the (D, V) grid, head ranks r on the (r, V) grid."""
    return [dict(x='D', values=numbers(c, 'e2_n_embds', int), stem='exp2_vd_grid', figure=FIGURES['2'][0]),
            dict(x='r', values=numbers(c, 'e2_ranks', int), stem='exp2_rank_grid', figure=FIGURES['2'][1])]


def exp2_key(x, v, V):
    """The configuration key of a cell of experiment 2's grids, e.g. D16_V256."""
    return f"{x}{v}_V{V}"


def apply_preset(config, given, script, name):
    """The values of config/<script>_<name>.py for every key not given on the command line ('cpu' and ''
    are the script's own defaults). Returns the config; an unknown preset names the ones there are."""
    if name in ('', 'cpu'):
        return config
    path = os.path.join(HERE, 'config', f"{script}_{name}.py")
    if not os.path.isfile(path):
        there = sorted(f[len(script) + 1:-3] for f in os.listdir(os.path.join(HERE, 'config'))
                       if f.startswith(script + '_') and f.endswith('.py'))
        presets = ', '.join(['cpu', *there])
        raise ConfigError(f"--preset={name}: no config/{script}_{name}.py; presets: {presets}")
    for key, val in options.read_config_file(path).items():
        options.check_key(key, config, f" in {path}")
        if key not in given:
            config[key] = options.typed(key, val, config)
    return config


def parse_options(argv):
    """The config: the defaults, then the preset's values, then the command line's; every value checked."""
    c, given = options.parse_args(argv, DEFAULTS, __file__, types=dict(compile=bool))
    if c['quick'] and c['preset'] not in ('cpu', 'quick'):
        raise ConfigError(f"--quick is --preset=quick: drop --quick or --preset={c['preset']}")
    if c['quick']:
        c['preset'] = 'quick'
    c = apply_preset(c, given, 'reproduce', c['preset'])
    c['device'] = str(runtime.pick_device(c['device']))
    zero_ok = ('threads', 'e3_eval_iters', 'e3_gate_unigram', 'e3_gate_bigram')
    options.positive(c, *[k for k, v in DEFAULTS.items() if type(v) in (int, float) and k not in zero_ok])
    if min(c[k] for k in zero_ok) < 0 or c['warmup'] >= 1:
        raise ConfigError(f"--{', --'.join(zero_ok)} must be ≥ 0 and --warmup < 1")
    chosen_experiments(c)  # refuses a bad --experiments before the checks below
    if c['text'] and not os.path.isfile(c['text']):
        raise ConfigError(f"--text={c['text']!r} is not a file: give a UTF-8 .txt file, or drop --text")
    if c['reuse'] and c['overwrite']:
        raise ConfigError("--reuse keeps the finished runs in --out, --overwrite deletes them: "
                          "give one of the two")
    try:
        c['out'] = c['out'].format(preset=c['preset'])
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"--out={c['out']!r}: bad {{field}} ({e}); the only field is {{preset}}")
    return c


def chosen_experiments(c):
    """The experiments to run, in the order given (run), and a note for each one skipped (notes)."""
    run = list(dict.fromkeys(e.strip() for e in c['experiments'].split(',') if e.strip()))
    if not run or not set(run) <= set(TITLES):
        raise ConfigError(f"--experiments must be a comma-separated subset of 1,2,3,4, "
                          f"got {c['experiments']!r}")
    notes = {}
    if '3' in run and not c['text']:
        run.remove('3')
        notes['3'] = "skipped: no text given (--text=FILE.txt)"
    return dict(run=run, notes=notes)

# -----------------------------------------------------------------------------
# the plan: every run, before any starts


def plan_heads(c, e):
    """Experiments 1 (SpamLang) and 3 (text; its data is the token file, set once it is written): one
    backbone, only the head changes; 3 keeps the checkpoints for its analysis."""
    steps, interval = c[f'e{e}_max_iters'], c[f'e{e}_eval_interval']
    base = dict(data='spamlang' if e == '1' else None)
    if e == '1':
        base['vocab_size'] = c['e1_vocab_size']
    base.update(n_embd=c[f'e{e}_n_embd'], n_layer=c[f'e{e}_n_layer'], n_head=c['n_head'],
                block_size=c[f'e{e}_block_size'], batch_size=c[f'e{e}_batch_size'], max_iters=steps,
                warmup_iters=max(1, int(c['warmup'] * steps)), eval_interval=interval,
                eval_iters=c[f'e{e}_eval_iters'], log_interval=interval, save_checkpoints=e == '3')
    return [dict(key=h['key'], label=h['label'], info=dict(head=h['spec']), args={**base, **h['args']})
            for h in heads_of(c, e)]


def plan_exp2(c):
    """Both grids at equal exposures per symbol: fixed steps, batch ∝ V, a fixed count of held-out
    sequences."""
    steps, configs = c['e2_steps'], []
    for grid in exp2_grids(c):
        x = grid['x']
        for V in numbers(c, 'e2_vocab_sizes', int):  # cheap vocabularies first
            B = math.ceil(c['e2_exposures'] * (V - 1) / steps)
            n_eval = math.ceil(c['e2_eval_sequences'] / B)
            for v in grid['values']:
                if x == 'D':
                    D, head = v, dict(head=c['e2_head'])
                else:
                    D, head = c['e2_rank_n_embd'], dict(head='narrow', head_rank=v)
                args = dict(data='spamlang', vocab_size=V, n_embd=D, n_layer=c['e2_n_layer'],
                            n_head=c['n_head'], block_size=c['e2_block_size'], batch_size=B, max_iters=steps,
                            eval_interval=steps, warmup_iters=max(1, int(c['warmup'] * steps)),
                            eval_iters=n_eval, log_interval=steps, save_checkpoints=False, **head)
                info = dict(D=D, batch_size=B, steps=steps, eval_sequences=B * n_eval,
                            exposures=round(B * steps / (V - 1), 2))
                label = f"{x} = {v}, V = {V:,}"
                configs.append(dict(key=exp2_key(x, v, V), label=label, info=info, args=args))
    return configs


def plan(c):
    """Every run, each model checked before any starts: per experiment, every lr of each configuration
    (key, label, info, train.py args) on the first sweep_seeds seeds, then the other seeds seed-major, at
    its best lr (None here, chosen once the sweep has run)."""
    seeds = [c['seed'] + i for i in range(c['seeds'])]
    specs = []
    for e in chosen_experiments(c)['run']:
        if e == '4':  # it trains nothing: it reads the runs of 1 and 3
            continue
        configs = plan_exp2(c) if e == '2' else plan_heads(c, e)
        lrs = numbers(c, f'e{e}_lrs')
        for i, seed in enumerate(seeds):
            grid = lrs if i < c['sweep_seeds'] else [None]
            for config in configs:
                for lr in grid:
                    specs.append(dict(exp=f'exp{e}', **config, seed=seed, lr=lr, sweep=lr is not None))
    numbers(c, 'e3_freq_bins', int)  # read after the runs: checked now
    for s in specs:
        try:
            check_config(GPTConfig(**{k: s['args'][k] for k in checkpoint.MODEL_KEYS if k in s['args']}))
        except ConfigError as e:  # which run of the plan, then what is wrong with it
            raise ConfigError(f"{s['exp']} {s['label']}: {e}")
    return specs


def written_by_reproduce(name):
    """Whether a file or folder of an --out is one that reproduce.py writes."""
    if name in ('meta.json', 'summary.md', 'exp1', 'exp2', 'exp3'):
        return True
    return name.startswith('exp') and name.endswith(('.csv', '.json', '.png'))


def prepare_out(c):
    """Refuse an --out that holds results unless --reuse or --overwrite; --overwrite deletes what reproduce
    wrote."""
    out = c['out']
    there = os.listdir(out) if os.path.isdir(out) else []
    mine = sorted(f for f in there if written_by_reproduce(f))
    if mine and not (c['reuse'] or c['overwrite']):
        shown = ', '.join(mine[:3]) + (', …' if len(mine) > 3 else '')
        raise ConfigError(f"--out={out} already holds results ({shown}): pass --reuse to keep its finished "
                          f"runs, --overwrite to delete them, or another --out")
    if c['overwrite']:
        for f in mine:
            path = os.path.join(out, f)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    os.makedirs(out, exist_ok=True)

# -----------------------------------------------------------------------------
# the runs


@dataclasses.dataclass
class Tally:
    """This invocation's runs: how many were trained and reused, and the seconds of each trained run."""
    trained: int = 0
    reused: int = 0
    train_seconds: float = 0.0
    seconds: dict = dataclasses.field(default_factory=dict)  # 'exp1': [seconds of each trained run], ...

    def add_trained(self, exp, seconds):
        self.trained += 1
        self.train_seconds = round(self.train_seconds + seconds, 1)
        self.seconds.setdefault(exp, []).append(seconds)

    def counts(self):
        """For meta.json."""
        return dict(trained=self.trained, reused=self.reused, train_seconds=self.train_seconds)


def clock(s):
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def progress(i, specs, run, tally, t0):
    """The line before run i of specs: its count, the time since t0, and the time left from the mean time
    per trained run so far (of the same experiment when it has one)."""
    trained = [t for ts in tally.seconds.values() for t in ts]
    if trained:
        left = sum(np.mean(tally.seconds.get(s['exp']) or trained) for s in specs[i:])
        estimate = clock(left) + ' left'
    else:
        estimate = 'time left: later'
    return (f"[{i + 1}/{len(specs)}] {run['exp']} {run['label']} lr {plot.sci(run['lr'])} "
            f"seed {run['seed']} … {clock(time.time() - t0)}; {estimate}")


def run_experiment(c, e, specs, tally, t0):
    """Train (or reuse) the runs of experiment e among specs, in order; a run without an lr runs at the best
    lr of its configuration's sweep. Returns the run records of each configuration, by its key."""
    runs = {}
    for i, spec in enumerate(specs):
        if spec['exp'] != f'exp{e}':
            continue
        done = runs.setdefault(spec['key'], [])
        lr = spec['lr']
        if lr is None:
            lr = best_lr(spec['exp'], [r for r in done if r['sweep']])['lr']
        run = dict(spec, lr=lr, name=f"{spec['key']}_lr{lr:g}_s{spec['seed']}")
        say(progress(i, specs, run, tally, t0))
        done.append(run_one(c, run, tally))
    return runs


def outcome(rec):
    """A finished run's result in a few words."""
    last = rec['evals'][-1]
    if 'val_acc' in last:
        return f"acc {100 * last['val_acc']:.1f}%, loss {last['val_loss']:.3f} on positions ≥ 1"
    return f"val loss {last['val_loss']:.4f} after {last['tokens']:,} tokens"


def comparable(args):
    """train.py arguments as --reuse compares them: paths by their last part, so an --out may move."""
    return {k: os.path.basename(str(v)) if k in ('out_dir', 'data') else v for k, v in args.items()}


def finished_run(d, args):
    """The record of the finished run in folder d if it ran with these train.py arguments, else None."""
    path = os.path.join(d, 'run.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rec = json.load(f)
    theirs = comparable(rec.get('args', {}))
    same = theirs == comparable(json.loads(json.dumps(args)))  # args as run.json holds them
    return rec if same and rec.get('evals') else None


def run_one(c, run, tally):
    """One train.py run in <out>/<exp>/<name>; run.json: the run, its args, config row, eval rows, seconds.
    With --reuse, a finished run with the same arguments is read back instead."""
    d = os.path.join(c['out'], run['exp'], run['name'])
    args = {**run['args'], 'learning_rate': run['lr'], 'min_lr': run['lr'] / 10, 'seed': run['seed'],
            'out_dir': d, 'overwrite': True, 'device': c['device']}
    if c['compile'] is not None:
        args['compile'] = c['compile']
    if c['reuse']:
        rec = finished_run(d, args)
        if rec is not None:
            tally.reused += 1
            say(f"      reused: {outcome(rec)} (finished earlier with the same arguments)")
            return {**rec, 'sweep': run['sweep']}
    shutil.rmtree(d, ignore_errors=True)  # unfinished, or run with other arguments
    os.makedirs(d)
    t0 = time.time()
    train(c, args, d, echo_evals=run['exp'] == 'exp3')
    with open(os.path.join(d, 'log.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    prev = os.path.join(d, 'prev_ckpt.pt')
    if os.path.exists(prev):
        os.remove(prev)  # only the final checkpoint is used
    rec = dict({k: run[k] for k in ('exp', 'key', 'name', 'label', 'info', 'lr', 'seed', 'sweep')}, args=args,
               config=rows[0], seconds=round(time.time() - t0, 2),
               evals=[r for r in rows if r.get('type') == 'eval'])
    with open(os.path.join(d, 'run.json'), 'w') as f:
        json.dump(rec, f)
    tally.add_trained(run['exp'], rec['seconds'])
    say(f"      {outcome(rec)}, {rec['seconds']:.1f} s")
    return rec


def train(c, args, d, echo_evals):
    """One `python train.py --key=value ...` process, its stdout then its stderr in d/stdout.txt (its eval
    lines echoed if asked); a failure raises TrainingError naming the run and its last line on stderr."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if c['threads']:
        env['OMP_NUM_THREADS'] = str(c['threads'])
    command = [sys.executable, TRAIN, *(f"--{k}={v}" for k, v in args.items() if v is not None)]
    err = []
    with open(os.path.join(d, 'stdout.txt'), 'w') as log:
        p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            reader = threading.Thread(target=err.extend, args=(p.stderr,))  # so that neither pipe fills up
            reader.start()
            for line in p.stdout:
                log.write(line)
                if echo_evals and line.startswith('eval'):
                    say('      ' + line.rstrip())
        except BaseException:  # Ctrl-C, or a SIGTERM to reproduce.py alone: never leave the run orphaned
            p.terminate()
            p.wait()
            raise
        p.wait()
        reader.join()
        log.writelines(err)
    if p.returncode:
        last = next((x.strip() for x in reversed(err) if x.strip()), 'nothing on stderr')
        last = last.removeprefix('error: ')
        raise TrainingError(f"run {d} failed (exit status {p.returncode}): {last} (output: {d}/stdout.txt)")


def best_lr(exp, runs):
    """The best lr of sweep runs (lr) and its flag (edge: 'one lr', 'low edge', 'high edge' or ''):
    SpamLang the best mean accuracy, then loss; text the lowest mean loss."""
    finals = {}
    for r in runs:
        finals.setdefault(r['lr'], []).append(r['evals'][-1])

    def score(lr):
        acc = 0 if exp == 'exp3' else round(np.mean([e['val_acc'] for e in finals[lr]]), 3)
        return acc, -np.mean([e['val_loss'] for e in finals[lr]])

    lrs = sorted(finals)
    best = max(lrs, key=score)
    if len(lrs) == 1:
        edge = 'one lr'
    elif best == lrs[0]:
        edge = 'low edge'
    elif best == lrs[-1]:
        edge = 'high edge'
    else:
        edge = ''
    return dict(lr=best, edge=edge)

# -----------------------------------------------------------------------------
# tables: JSON and CSV in --out, markdown in summary.md


def spread(xs):
    """mean, sample std (ddof = 1; None for a single value), min, max, n of the values that are not None."""
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    if not a.size:
        return dict(mean=None, std=None, min=None, max=None, n=0)
    std = float(a.std(ddof=1)) if a.size > 1 else None
    return dict(mean=float(a.mean()), std=std, min=float(a.min()), max=float(a.max()), n=int(a.size))


def pm(s, fmt='{:.1f}', scale=1.0):
    """A spread as 'mean ± std (min–max)', std '-' for a single value."""
    def f(v):
        return fmt.format(v * scale)

    if not s['n']:
        return 'n/a'
    if s['n'] == 1:
        return f"{f(s['mean'])} ± -"
    return f"{f(s['mean'])} ± {f(s['std'])} ({f(s['min'])}–{f(s['max'])})"


def md(header, rows):
    """A markdown table."""
    return '\n'.join('| ' + ' | '.join(map(str, r)) + ' |' for r in [header, ['---'] * len(header), *rows])


def write_table(c, stem, rows, controls, **extra):
    """stem.json: {controls, rows, ...extra}; stem.csv: the rows (lists joined by spaces)."""
    with open(os.path.join(c['out'], stem + '.json'), 'w') as f:
        json.dump(dict(controls=controls, rows=rows, **extra), f, indent=1)
    with open(os.path.join(c['out'], stem + '.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows({k: ' '.join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
                    for r in rows)


def lr_table(exp, runs, **info):
    """A configuration's runs over its lrs: rows (one per lr, over its seeds, the best marked), the best lr
    (lr), its flag (edge) and its runs (best_runs)."""
    best = best_lr(exp, [r for r in runs if r['sweep']])
    rows = []
    for lr in sorted({r['lr'] for r in runs}):
        finals = [r['evals'][-1] for r in runs if r['lr'] == lr]
        row = dict(**info, lr=lr, best=lr == best['lr'], edge=best['edge'] if lr == best['lr'] else '',
                   n_seeds=len(finals))
        for k in ('loss', 'acc'):
            if f'val_{k}' not in finals[0]:
                continue
            for stat, v in spread([e[f'val_{k}'] for e in finals]).items():
                if stat != 'n':
                    row[f"{k}_{stat}"] = None if v is None else round(v, 4)
        row['destroyed'] = round(np.mean([e['grad_destroyed'] for e in finals]), 6)
        row['visible_over_chance'] = round(np.mean([e.get('visible_over_chance', np.nan) for e in finals]), 4)
        row['runs'] = [r['name'] for r in runs if r['lr'] == lr]
        rows.append(row)
    best_runs = [r for r in runs if r['lr'] == best['lr']]
    return dict(rows=rows, lr=best['lr'], edge=best['edge'], best_runs=best_runs)

# -----------------------------------------------------------------------------
# the experiments: each writes its tables and figures to --out and returns its summary (controls, a markdown
# table, notes); 1 and 3 also return the best lr's runs of each head (heads), which experiment 4 reads


def summary_exp1(c, runs):
    """Experiment 1: head rank on SpamLang."""
    D, V = c['e1_n_embd'], c['e1_vocab_size']
    rows, heads, lines = [], [], []
    for h in heads_of(c, '1'):
        t = lr_table('exp1', runs[h['key']], head=h['spec'], rank=h['rank'])
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
    write_table(c, 'exp1_head_rank', rows, controls)
    plot.exp1(os.path.join(c['out'], FIGURES['1'][0]), heads, V, D,
              f"{c['seeds']} seeds, {controls['exposures_per_symbol']:g} exposures per symbol")
    table = md(['head', 'best lr', 'final acc % (positions ≥ 1)', 'acc % at the other lrs (mean)',
                'destroyed', 'visible/chance'], lines)
    return dict(controls=controls, table=table, notes=[], heads=heads)


def summary_exp2(c, runs):
    """Experiment 2: SpamLang at equal exposures per symbol, the (D, V) and (r, V) grids. Its summary's
    controls are the (r, V) grid's."""
    Vs = numbers(c, 'e2_vocab_sizes', int)
    tables = []
    for grid in exp2_grids(c):
        x, xs = grid['x'], grid['values']
        rows, cells = [], {}
        for V in Vs:
            for v in xs:
                cell_runs = runs[exp2_key(x, v, V)]
                t = lr_table('exp2', cell_runs, **{**cell_runs[0]['info'], x: v, 'V': V})
                rows += t['rows']
                b = t['best_runs']
                cells[v, V] = {x: v, 'V': V, 'ratio': V / v, 'lr': t['lr'], 'edge': t['edge'],
                               'seeds': [r['seed'] for r in b], 'acc': [r['evals'][-1]['val_acc'] for r in b],
                               'loss_over_logV': [r['evals'][-1]['val_loss'] / spamlang.optimal_loss_pos0(V)
                                                  for r in b]}
        head = c['e2_head'] if x == 'D' else f"narrow (rank r), D = {c['e2_rank_n_embd']}"
        controls = dict(data='SpamLang', head=head, n_layer=c['e2_n_layer'], block_size=c['e2_block_size'],
                        steps=c['e2_steps'], varies=f"{x}, V, lr", exposures_per_symbol=c['e2_exposures'],
                        lrs=numbers(c, 'e2_lrs'),
                        ours=OURS + ["equal exposures: batch ∝ V",
                                     f"≥ {c['e2_eval_sequences']} held-out sequences per cell"])
        write_table(c, grid['stem'], rows, controls, cells=list(cells.values()))
        plot.grid(os.path.join(c['out'], grid['figure']), cells, x, xs, Vs,
                  f"{head}, {c['e2_exposures']:g} exposures per symbol, {c['seeds']} seeds")
        lines = []
        for v in xs:
            line = [v]
            for V in Vs:
                d = cells[v, V]
                acc = pm(spread(d['acc']), scale=100)
                line.append(f"{acc} ({np.mean(d['loss_over_logV']):.2f}){EDGE[d['edge']]}")
            lines.append(line)
        tables.append(md([f"{x} \\ V"] + [f"{V:,}" for V in Vs], lines))
    table = ("Accuracy % on positions ≥ 1 at each cell's best lr, mean ± std (min–max), and in brackets the "
             "loss there / log(V − 1); ↓/↑: the best lr on the grid's edge:\n\n" + '\n\n'.join(tables))
    return dict(controls=controls, table=table, notes=[])


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


def analyse(c, rec, data, xv, yv, bins):
    """From a run's final checkpoint: the loss by frequency bin, a fresh full-rank probe fitted on the frozen
    backbone (the same windows, steps and lr for every head), and the spectrum of G on the first validation
    tokens."""
    ckpt = checkpoint.load_checkpoint(os.path.join(c['out'], 'exp3', rec['name'], 'ckpt.pt'))
    cfg, dev = ckpt['config'], c['device']
    model = checkpoint.model_from_checkpoint(ckpt).to(dev)
    model.eval().requires_grad_(False)
    V, D = cfg['vocab_size'], cfg['n_embd']
    y = yv.reshape(-1).to(dev)
    W = model.lm_head.effective_weight()
    with torch.no_grad():
        H = torch.cat([model.hidden(x.to(dev)).reshape(-1, D) for x in xv.split(64)])
        loss = torch.cat([F.cross_entropy(h @ W.T, t, reduction='none')
                          for h, t in zip(H.split(4096), y.split(4096))])
    b = torch.as_tensor(bins, device=dev)[y]
    n = min(c['e3_spectrum_tokens'], len(y))
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
        probe_loss = sum(F.cross_entropy(probe(h), t, reduction='sum').item()
                         for h, t in zip(H.split(4096), y.split(4096)))
    by_bin = [loss[b == k].mean().item() if (b == k).any() else None for k in range(int(bins.max()) + 1)]
    spectrum = dict(tokens=n, rank_W=m['rank_W'], destroyed_ratio=m['destroyed_ratio'],
                    ey_floor=m['ey_floor'])
    return dict(loss=loss.mean().item(), probe_loss=probe_loss / len(y), loss_by_frequency=by_bin,
                spectrum=spectrum)


def tokens_to(evals, level):
    """Tokens at which a validation-loss curve first reaches `level` (which it does), linear between
    evaluations."""
    L = np.array([e['val_loss'] for e in evals], dtype=float)
    t = np.array([e['tokens'] for e in evals], dtype=float)
    i = int(np.argmax(L <= level))
    if i == 0:
        return t[0]
    return t[i - 1] + (L[i - 1] - level) / (L[i - 1] - L[i]) * (t[i] - t[i - 1])


def fold_changes(per, best):
    """×-fold in tokens, same seed: for each head but the widest (ref), the tokens it needs / the tokens
    each wider head needs to reach the worst final loss of ref and every wider head (a loss all of them
    reach). None: a head reached it at step 0."""
    heads, fold = list(per), {}
    for i, ref in enumerate(heads[:-1]):
        level = max(v for h in heads[i:] for v in per[h]['final_val_loss'])
        ratios = {}
        for h in heads[i + 1:]:
            ratios[h] = []
            for seed, r in best[h].items():
                if seed in best[ref]:
                    t = tokens_to(r['evals'], level)
                    ratios[h].append(tokens_to(best[ref][seed]['evals'], level) / t if t else None)
        fold[ref] = dict(level=level, fold=ratios)
    return fold


def summary_exp3(c, runs, tokens):
    """Experiment 3: text (the token file `tokens`), head rank on one backbone. The best lr's runs are
    analysed from their final checkpoints, which are then deleted; the widest head is checked against the
    stage gate."""
    D, T = c['e3_n_embd'], c['e3_block_size']
    data = textdata.load_data(dict(data=tokens, block_size=T))
    V = data['vocab_size']
    train_ids = np.asarray(data['train'], dtype=np.int64)
    xv, yv = textdata.val_windows(data, T)  # every window of the validation split, as train.py --eval_iters=0
    base = baselines(train_ids, xv.numpy().ravel(), yv.numpy().ravel(), V)
    sizes = numbers(c, 'e3_freq_bins', int)
    bins = frequency_bins(train_ids, V, sizes)
    names = [f"top {sizes[0]:,}"] + [f"next {n:,}" for n in sizes[1:]] + ['the rest']
    per, best, rows, heads = {}, {}, [], []
    for h in heads_of(c, '3'):
        t = lr_table('exp3', runs[h['key']], head=h['spec'], rank=h['rank'])
        for r in t['best_runs']:
            if 'analysis' in r:  # analysed by an earlier invocation (--reuse)
                continue
            folder = os.path.join(c['out'], 'exp3', r['name'])
            if not os.path.isfile(os.path.join(folder, 'ckpt.pt')):
                raise ConfigError(f"exp3/{r['name']} was never analysed and its checkpoint is gone: "
                                  f"use --overwrite")
            say(f"exp3: analysing {r['name']}: loss by frequency, probe, spectrum")
            r['analysis'] = analyse(c, r, data, xv, yv, bins)
            with open(os.path.join(folder, 'run.json'), 'w') as f:
                json.dump(r, f)
        for r in runs[h['key']]:
            ckpt = os.path.join(c['out'], 'exp3', r['name'], 'ckpt.pt')
            if os.path.exists(ckpt):
                os.remove(ckpt)  # the checkpoints were only for the analysis
        a = [r['analysis'] for r in t['best_runs']]
        rows += t['rows']
        best[h['spec']] = {r['seed']: r for r in t['best_runs']}
        heads.append(dict(label=h['label'], rank=h['rank'], runs=t['best_runs']))
        per[h['spec']] = dict(label=h['label'], rank=h['rank'], best_lr=t['lr'], edge=t['edge'],
                              seeds=[r['seed'] for r in t['best_runs']],
                              final_val_loss=[r['evals'][-1]['val_loss'] for r in t['best_runs']],
                              probe_loss=[x['probe_loss'] for x in a],
                              loss_by_frequency={n: [x['loss_by_frequency'][k] for x in a]
                                                 for k, n in enumerate(names)},
                              spectrum={k: [x['spectrum'][k] for x in a] for k in a[0]['spectrum']})
    fold = fold_changes(per, best)
    narrowest, widest = list(per)[0], list(per)[-1]
    wl = float(np.mean(per[widest]['final_val_loss']))
    passed = wl <= base['unigram'] - c['e3_gate_unigram'] and wl <= base['bigram'] + c['e3_gate_bigram']
    verdict = (f"Stage gate {'passed' if passed else 'FAILED'}: the widest head ends at {wl:.3f} nats, "
               f"{wl - base['unigram']:+.2f} from the unigram loss {base['unigram']:.3f} "
               f"(gate: ≤ −{c['e3_gate_unigram']:g}) and {wl - base['bigram']:+.2f} from the bigram loss "
               f"{base['bigram']:.3f} (≤ +{c['e3_gate_bigram']:g}).")
    if not passed:
        verdict += " This experiment cannot conclude anything about the effect of head rank on text."
    diff = [best[narrowest][s]['evals'][-1]['val_loss'] - r['evals'][-1]['val_loss']
            for s, r in best[widest].items()]
    control = (f"Positive control, {per[narrowest]['label']}: {np.mean(diff):+.3f} nats vs "
               f"{per[widest]['label']} at the end, same seed (worse on {sum(d > 0 for d in diff)} of "
               f"{len(diff)} seeds)")
    lines = []
    for h, p in per.items():
        folds = '; '.join(f"{pm(spread(f['fold'][h]), '{:.2f}')} vs {per[ref]['label']} at {f['level']:.3f}"
                          for ref, f in fold.items() if h in f['fold'])
        lines.append([p['label'], f"{plot.sci(p['best_lr'])}{EDGE[p['edge']]}",
                      pm(spread(p['final_val_loss']), '{:.3f}'), pm(spread(p['probe_loss']), '{:.3f}'),
                      ' / '.join(f"{np.mean(p['loss_by_frequency'][n]):.2f}" for n in names),
                      f"{np.mean(p['spectrum']['destroyed_ratio']):.5f}",
                      f"{np.mean(p['spectrum']['ey_floor']):.3f}",
                      folds or '-'])
    tokens_seen = c['e3_max_iters'] * c['e3_batch_size'] * T
    val_share = np.bincount(bins[yv.numpy().ravel()], minlength=len(names)) / yv.numel()
    controls = dict(data=os.path.basename(c['text']), encoding=c['e3_encoding'], vocab_size=V, n_embd=D,
                    block_size=T,
                    n_layer=c['e3_n_layer'], batch_size=c['e3_batch_size'], max_iters=c['e3_max_iters'],
                    tokens=tokens_seen, train_tokens=len(train_ids),
                    epochs=round(tokens_seen / len(train_ids), 2),
                    val_tokens=int(yv.numel()), lrs=numbers(c, 'e3_lrs'), frequency_bins=names,
                    val_share_by_bin=val_share.round(4).tolist(), varies='only the head and its lr',
                    ours=OURS + ["vocabulary compacted to the ids that occur; 90% train, 10% validation "
                                 "(every window)",
                                 "baselines from train counts: add-one unigram, Witten–Bell bigram",
                                 f"probe: a fresh linear head, AdamW lr {c['e3_probe_lr']:g}, "
                                 f"{c['e3_probe_steps']} steps, same windows",
                                 "×-fold: tokens of the narrower head / of the wider to the worst final "
                                 "loss of both and every head between, same seed",
                                 f"spectrum on {c['e3_spectrum_tokens']} val tokens"])
    gate = dict(passed=passed, widest_final_loss=wl)
    write_table(c, 'exp3_text', rows, controls, baselines=base, gate=gate,
                verdict=verdict, positive_control=control, heads=per, fold=fold)
    plot.exp3(os.path.join(c['out'], FIGURES['3'][0]), per, best, base, names,
              f"{controls['data']}, {c['e3_encoding']} compacted (V = {V:,}), D = {D}, "
              f"{controls['epochs']:g} epochs")
    table = md(['head', 'best lr', 'final val loss', 'probe val loss',
                f"loss by frequency ({' / '.join(names)})", 'destroyed (G on val)', 'Eckart–Young floor',
                '×-fold in tokens'], lines)
    return dict(controls=controls, table=table, notes=[verdict, control], heads=heads)


def summary_exp4(c, heads):
    """Experiment 4: the meter along training, from the best lr's runs of experiments 1 and 3 of this
    invocation (heads: '1' and '3' to their summaries' heads). None if neither ran."""
    panels, rows = [], []
    for e, data in (('1', 'SpamLang'), ('3', 'text')):
        if e not in heads:
            continue
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
            rows.append(row)
        panels.append(dict(title=f"{data} (experiment {e}), V = {V:,}", V=V, heads=heads[e]))
    if not panels:
        return None
    controls = dict(meter="train.py's at each eval, first held-out batch: ‖P_ker(Wᵀ) G‖_F / ‖G‖_F; SpamLang: "
                          "positions ≥ 1",
                    baseline='√(1 − rank(W)/V), random', visible_over_chance='c²·V/rank(W), 1 = chance',
                    runs='best lr')
    write_table(c, 'exp4_meter', rows, controls)
    plot.exp4(os.path.join(c['out'], FIGURES['4'][0]), panels)
    return dict(controls=controls, table=md(list(rows[0]), [list(r.values()) for r in rows]), notes=[])

# -----------------------------------------------------------------------------


def summarise(c, e, runs, tokens, done):
    """Experiment e's summary from its runs (by configuration key); experiment 4 reads the summaries done
    so far."""
    if e == '1':
        return summary_exp1(c, runs)
    if e == '2':
        return summary_exp2(c, runs)
    if e == '3':
        return summary_exp3(c, runs, tokens)
    return summary_exp4(c, {x: done[x]['heads'] for x in ('1', '3') if x in done})


def section(e, summary, seconds):
    """Experiment e's part of summary.md: title, figures, notes, table and controls."""
    figures = ''.join(f"![]({f})\n" for f in FIGURES[e])
    notes = ''.join(f"\n{n}\n" for n in summary['notes'])
    controls = ''.join(f"- {k}: {'; '.join(v) if k == 'ours' else v}\n"
                       for k, v in summary['controls'].items())
    return (f"## Experiment {e}: {TITLES[e]} ({clock(seconds)})\n\n{figures}{notes}\n{summary['table']}\n\n"
            f"Controls:\n{controls}")


def write_summary(c, meta, sections, notes):
    """meta.json, and summary.md: every experiment's section, or its note."""
    with open(os.path.join(c['out'], 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    parts = [sections.get(e) or f"## Experiment {e}: {TITLES[e]}\n\n{notes[e]}\n"
             for e in sorted({*sections, *notes})]
    with open(os.path.join(c['out'], 'summary.md'), 'w') as f:
        f.write(f"# {meta['command']}\n\n{meta['date']}, commit {meta['commit']}, torch {meta['torch']}, "
                f"device {meta['gpu'] or meta['device']}, {meta['cpu_count']} CPUs; "
                f"{meta['runs']['trained']} runs trained, {meta['runs']['reused']} reused\n\n")
        f.write('\n'.join(parts))


def main(argv):
    c = parse_options(argv)
    chosen = chosen_experiments(c)
    notes = chosen['notes']
    torch.set_num_threads(c['threads'] or torch.get_num_threads())  # experiment 3's analysis runs here
    specs = plan(c)
    prepare_out(c)
    tokens = None
    if '3' in chosen['run']:
        exp3 = os.path.join(c['out'], 'exp3')
        os.makedirs(exp3, exist_ok=True)
        tokens = textdata.tokenize_text(c['text'], c['e3_encoding'], exp3, compact=True)
        for s in specs:
            if s['exp'] == 'exp3':
                s['args']['data'] = tokens
    tally = Tally()
    gpu = torch.cuda.get_device_name(c['device']) if c['device'].startswith('cuda') else None
    meta = dict(command=' '.join(['python reproduce.py', *argv]), date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                commit=runtime.code_version(), device=c['device'], gpu=gpu, platform=platform.platform(),
                cpu_count=os.cpu_count(), threads=c['threads'] or os.environ.get('OMP_NUM_THREADS'),
                torch=torch.__version__, wall_s={}, runs=tally.counts(), runs_by_experiment={},
                config=dict(c, exps=chosen['run'], notes=notes))  # notes: the same dict, filled in as we go
    say(f"reproduce.py: preset {c['preset']}, experiments {','.join(chosen['run'])}, {len(specs)} runs, "
        f"seeds {c['seed']}..{c['seed'] + c['seeds'] - 1}, device {c['device']}, out {c['out']}")
    t0 = time.time()
    last = t0
    done, sections = {}, {}
    order = [e for e in chosen['run'] if e != '4'] + [e for e in chosen['run'] if e == '4']  # 4 reads 1 and 3
    for e in order:
        runs = run_experiment(c, e, specs, tally, t0)
        summary = summarise(c, e, runs, tokens, done)
        meta['wall_s'][e] = round(time.time() - last, 1)
        last = time.time()
        finished = [r for rs in runs.values() for r in rs]
        meta['runs_by_experiment'][e] = dict(runs=len(finished),
                                             train_seconds=round(sum(r['seconds'] for r in finished), 1))
        if summary is None:
            notes[e] = ("skipped: it reads the runs of experiments 1 and 3: add them "
                        "(--reuse keeps finished runs)")
        else:
            done[e] = summary
            sections[e] = section(e, summary, meta['wall_s'][e])
            say(sections[e])
        meta['runs'] = tally.counts()
        write_summary(c, meta, sections, notes)
    meta['wall_s']['total'] = round(time.time() - t0, 1)
    write_summary(c, meta, sections, notes)
    skipped = ''.join(f"experiment {e}: {note}\n" for e, note in notes.items())
    say(f"{skipped}done in {clock(meta['wall_s']['total'])} ({tally.trained} runs trained, {tally.reused} "
        f"reused): summary.md, tables, figures in {c['out']}")
    return sections


if __name__ == '__main__':
    options.one_line_errors()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind like Ctrl-C: train() stops its run
    main(sys.argv[1:])
