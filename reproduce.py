"""
Reproduce the paper's findings at laptop scale, figures and tables included, in one command
(arXiv 2603.10145).

    python reproduce.py --quick --text=input.txt       # experiments 1, 3, 4, small: ≤ 3 min on 2 CPU cores
    python reproduce.py --text=input.txt               # experiments 1–6, the CPU preset (the defaults): ≈ 2 h
    python reproduce.py --preset=gpu --text=input.txt  # config/reproduce_gpu.py, sized for one H200
    python reproduce.py --experiments=1 --e1_heads=narrow:4,wide --seeds=5 --out=results/mine
    python reproduce.py --experiments=7                # beyond the paper: remedies.py's heads on SpamLang,
    python reproduce.py --preset=hmm7                  # on hmm.py's language (config/reproduce_hmm7.py),
    python reproduce.py --preset=text7 --text=input.txt    # on text (config/reproduce_text7.py)

input.txt: any UTF-8 text, e.g. Tiny Shakespeare:
https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
Every run is `python train.py --key=value ...`, forked from a process that has imported torch (its output
in <out>/<exp>/<run>/stdout.txt beside log.jsonl and run.json); heads are train.py's, written
head[:head_rank] (narrow:8). Each configuration sweeps its lrs on the first --sweep_seeds seeds, the others
run at its best lr. An --out holding results is refused unless --reuse or --overwrite.
"""
import concurrent.futures
import csv
import dataclasses
import glob
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import runpy
import shutil
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import fit_head
import hmm
import options
import runtime
import textdata
import measure
import plot
import remedies
import spamlang
import stats
from options import ConfigError, TrainingError
from model import FACTORIZED, GPT, HEADS, GPTConfig, check_config, fused_linear_cross_entropy

# -----------------------------------------------------------------------------
# defaults: the CPU preset (experiments 1–6 in ≈ 2 h on 2 cores); --preset=NAME takes the keys that
# are not given from config/reproduce_NAME.py
preset = 'cpu'            # cpu (these values) | quick | gpu | text7, hmm7 (experiment 7) | tiny (tests)
quick = False             # = --preset=quick
experiments = '1,2,3,4,5,6'  # a comma-separated subset, run in this order (4 reads the runs of 1 and 3)
text = ''                 # a UTF-8 .txt file for experiment 3 (skipped, with a note, without one)
out = 'results/{preset}'  # the results folder
reuse = False             # keep the finished runs in --out whose train.py arguments are the same
overwrite = False         # delete the results in --out first
dry_run = False           # print the plan's runs and its estimated GPU time (estimate.py), then stop
device = 'auto'           # train.py --device of every run, and of experiment 3's analysis
compile = None            # train.py --compile; None = train.py's default (on for CUDA)
threads = 1               # torch threads of every run (0: torch's default); 1 is far faster on shared cores
jobs = 2                  # runs at once (processes, and experiment 3's fits); one per core with threads = 1
seed = 1337
sweep_seeds = 1           # the lr grid runs on seeds seed … seed + sweep_seeds − 1, never reported
seeds = 3                 # fresh seeds per configuration at its best lr (the ones reported), after those
n_head = 4                # attention heads of every model
warmup = 0.1              # linear warmup over this fraction of each run's steps, then cosine to lr/10
# experiment 1: head rank on SpamLang; heads are train.py's, written head[:head_rank][/head_basis]
e1_heads = ('narrow:2/select,narrow:4/select,narrow:8/select,narrow:16/select,narrow:32/select,'
            'narrow:2,narrow:4,narrow:8,narrow:16,narrow:32,wide,linear,tied')
e1_lrs = '1e-3,3e-3,1e-2,3e-2'  # the lr grid of every head
e1_vocab_size = 1024
e1_n_embd = 64
e1_n_layer = 2
e1_block_size = 32
e1_batch_size = 32
e1_max_iters = 800         # 25 exposures per symbol
e1_eval_interval = 40
e1_eval_iters = 4          # held-out batches per evaluation
# experiment 2: SpamLang at a fixed batch: the exposures per symbol a head needs to learn it, as V/D grows
e2_heads = 'linear,tied'   # train.py's heads, as e1_heads
e2_n_embds = '16,32'       # widths D
e2_vocab_sizes = '256,1024,4096,8192'
e2_lrs = '3e-3,1e-2,3e-2,1e-1'  # the lr grid of every cell (1e-3 was never the best by loss in a first run)
e2_lr_extensions = 1       # a cell whose best lr is at the grid's edge runs the next lr beyond it, once
e2_batch_size = 64         # sequences per step, the same in every cell: steps ∝ V at a fixed exposure budget
e2_exposures = 32.0        # the budget: sequences per symbol (steps ⌈exposures·(V − 1)/batch⌉, whole evals)
e2_evals = 16              # evaluations per run, evenly spaced: the resolution of the steps to the target
e2_target_loss = 0.1       # the target: the loss on positions ≥ 1 at most this fraction of log(V − 1)
e2_target_acc = 0.9        # ... and, reported beside it, the first evaluation with this top-1 accuracy
e2_n_layer = 2
e2_block_size = 2          # [BOS, s]: one determined position per sequence
e2_eval_sequences = 2048   # held-out sequences per evaluation (whole batches)
e2_control_steps = 1500    # the expressivity control: AdamW steps of the bounded head's fit on a frozen
e2_control_lr = 1e-2       # backbone (1,024 symbols a step, cosine to 0), on each cell's first fresh seed
# experiment 3: text, head rank on one backbone: fixed-basis heads (rank the only difference; linear is r = D)
e3_heads = 'narrow:2/select,narrow:8/select,linear'  # r = 2: the positive control
e3_lrs = '1e-3,3e-3,1e-2'  # every head's best lay inside 3e-4 … 1e-2 in a first run
e3_encoding = 'cl100k_base'
e3_n_embd = 64
e3_n_layer = 2
e3_block_size = 64
e3_batch_size = 16
e3_max_iters = 720         # the longest budget, cooldown included: 737k tokens ≈ 2.7 epochs of Tiny
                           # Shakespeare's train split (271k tokens)
e3_schedule_evals = 24     # evaluations along the stable phase (the meter's curve), on e3_eval_iters batches
e3_eval_iters = 8          # ... the annealed ends, the sweep and experiment 5 read every validation window
e3_budgets = 4             # warmup–stable–decay: cooldown branches at 1/4 … 4/4 of the stable phase
e3_cooldown = 0.2          # the last fraction of every budget: linear to lr/10
e3_freq_bins = '64,1024'   # loss by frequency: the 64 most frequent types (train split), the next 1,024, rest
e3_fit_lr = 1e-3           # the probe (warm-started from the run's own head): AdamW on frozen hidden states
e3_ceiling_lrs = '3e-3,3e-2'  # the ceilings (from the linear head's best rank-r approximation): one fit
                           # per lr, the best on the stopping windows kept (r = 2 likes 3e-2, r = 8 3e-3)
e3_fit_patience = 2        # a fit stops after this many half-epoch evaluations without improvement on the
e3_fit_max_epochs = 1.5    # even validation windows, or at this cap; it is reported on the odd windows
e3_spectrum_tokens = 2048  # the first validation tokens, for the spectrum of G
e3_gate_unigram = 0.5      # stage gate: the widest head must end ≥ this many nats below the unigram loss
e3_gate_bigram = 0.3       # ... and ≤ this many nats above the bigram loss
# experiment 5: the wide head (r = D) at experiment 3's sizes: its basis × a head lr multiplier, the backbone
# at the linear head's best lr (swept on e3_lrs); wide/select at ×1 is the linear head itself
e5_bases = 'select,random,trained'
e5_head_lr_mults = '0.333,1,3'
e5_trained_head_lr_mults = '0.1,0.333,1'  # the trained factorization's: its best was ×⅓ of ⅓, 1, 3 at first
# experiment 6: head rank on hmm.py's language, against its exact floor, at experiment 3's sizes and schedule;
# log p(y | x) has rank ≤ S + 1, so with S + 1 ≤ r a rank-r head can express the floor: a gap is optimization
e6_heads = 'narrow:2/select,narrow:8/select,linear'
e6_lrs = '1e-3,3e-3,1e-2'
e6_vocab_size = 4096
e6_states = 6              # S: log p(y | x) has rank ≤ 7 < 8
e6_eval_iters = 16         # held-out batches per evaluation, the same at every evaluation
# experiment 7 (beyond the paper, `--experiments=7`): remedies.py's heads against their matched controls and
# twins; the fixed-basis heads of rank {2D} and {4D} match blocks' and mlp's parameters
e7_heads = ('linear,whiten,overparam,wide:{2D}/random,blocks,blocks_sg,blocksum,wide:{4D}/random,mlp,prehead,'
            'mos,mos1,sigsoftmax')
e7_lrs = '1e-2,3e-2'       # the lr grid (every head's best sat at 1e-2 or 3e-2 in a first run) ...
e7_head_lr_mults = '0.333,3'  # the head's lr: these × the best lr (× 1 is the lr sweep's run), then ...
e7_lr_extensions = 3       # ... each grid extended beyond its edge where its best value sits, ≤ 3 times
e7_seeds = 5               # fresh seeds of experiment 7's decisive heads, paired by seed (not --seeds) ...
e7_decisive = 'linear,wide:{2D}/random,blocks,blocks_sg,blocksum'  # ... blocks, its twin and its controls
e7_other_seeds = 3         # ... and of every other head: the first of the same seeds
e7_data = 'spamlang'       # spamlang; hmm:S (hmm.py's language); text (--text's tokens; V from the text)
e7_vocab_size = 1024       # V/D = 128: the linear head ends at 30–80% accuracy (the stage gate)
e7_n_embd = 8
e7_n_layer = 2
e7_block_size = 32
e7_batch_size = 32
e7_max_iters = 800         # 25 exposures per symbol
e7_eval_interval = 100     # evaluations, each with a checkpoint the meter reads
e7_eval_iters = 4
e7_meter_sequences = 8     # held-out sequences the meter reads (positions ≥ 1)
e7_fit_steps = 800         # frozen-trunk fits and transfers: AdamW steps on the head alone, cosine from
e7_fit_lr = 1e-2           # this lr (first fresh seed)
# -----------------------------------------------------------------------------
DEFAULTS = options.defaults_of(globals())
HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, 'train.py')
# a run: train.py as __main__ in a process forked from a server that imported torch once (multiprocessing's
# forkserver; spawn where there is none): `python train.py --key=value ...` without its ≈ 3 s of imports
LAUNCH = multiprocessing.get_context(
    'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn')
LAUNCH.set_forkserver_preload(['torch', 'torch._dynamo', 'torch.optim'])
PROCESSES = threading.Lock()  # a child's exit status reads once, and every start polls every child: both here
TITLES = {'1': 'head rank on SpamLang', '2': 'SpamLang at a fixed batch, as V/D grows',
          '3': 'text, head rank on one backbone', '4': 'the meter along training',
          '5': 'the wide head on text: its basis and its learning rate',
          '6': 'head rank on a language with an exact floor',
          '7': 'beyond the paper: heads that might widen the gradient channel'}
FIGURES = {'1': ['exp1_head_rank.png'], '2': ['exp2_fixed_batch.png'],
           '3': ['exp3_text.png'], '4': ['exp4_meter.png'], '5': [], '6': ['exp6_hmm.png'],
           '7': ['exp7_remedies.png']}
EDGE = {**plot.ARROWS, 'one lr': ' (one lr)', '': ''}  # the best lr's flag, after it in the tables
OURS = ["AdamW (0.9, 0.95), weight decay 0.1 on matrices, warmup then cosine to lr/10, grad clip 1 "
        "(train.py's)",
        "lrs swept on the first sweep_seeds seeds, the others at the best; ↓/↑: the best lr at the grid's "
        "low/high edge",
        "std over seeds with ddof = 1"]
HEAD_SPEC = re.compile(rf"({'|'.join(HEADS)})|({'|'.join(FACTORIZED)})(:[1-9][0-9]*)?"
                       r"(/(trained|random|select))?|" + '|'.join(remedies.HEADS) + "|overparam:[1-9][0-9]*")
SAY_LOCK = threading.Lock()
FORWARD_AD = threading.Lock()  # torch's forward-mode autodiff levels are global: one thread at a time
GLOBAL_RNG = threading.Lock()  # ... and so is its default generator, which a model's init draws from


def say(line):
    """Print one line whole: runs in parallel threads would otherwise interleave a line and its newline."""
    with SAY_LOCK:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()

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
    """A comma-separated option of train.py's heads, each written head[:rank][/basis] (narrow:8/select:
    rank 8, a fixed selector A)."""
    text = str(c[key])
    if key in ('e7_heads', 'e7_decisive'):  # the fixed-basis controls' ranks, written r = {2D} or {4D}
        text = text.replace('{2D}', str(2 * c['e7_n_embd'])).replace('{4D}', str(4 * c['e7_n_embd']))
    specs = [s.strip() for s in text.split(',')]
    for spec in specs:
        if not HEAD_SPEC.fullmatch(spec):
            raise ConfigError(f"--{key}={c[key]}: bad item {spec!r}; give heads ({', '.join(HEADS)}; "
                              f"narrow:8 sets the rank, /select, /random or /trained the basis of a "
                              f"factorized head), comma-separated")
    return specs


def head_of(spec, D):
    """A head spec as a dict: spec, key (its runs' name), args (train.py's), rank (of W) and label."""
    spec, _, basis = spec.partition('/')
    name, _, r = spec.partition(':')
    args = dict(head=name)
    if r:
        args['head_rank'] = int(r)
    if basis and basis != 'trained':
        args['head_basis'] = basis
    rank = plot.rank_of(dict(n_embd=D, **args))
    label = f"r = {rank}" if name == 'narrow' else f"{name} (r = {rank})"
    if name in FACTORIZED:
        label += {'select': ', selector', 'random': ', fixed random A'}.get(basis, ', B·A')
    full = spec + (f"/{basis}" if basis else '')
    key = full.replace(':', '').replace('/', '_')
    return dict(spec=full, key=key, args=args, rank=rank, label=label)


def heads_of(c, e):
    """The heads of experiment 1, 3 or 6 (3 and 6: narrowest first, at experiment 3's width), each
    head_of's dict."""
    heads = [head_of(spec, c[f"e{'1' if e == '1' else '3'}_n_embd"]) for spec in head_specs(c, f'e{e}_heads')]
    if e in '36':
        heads.sort(key=lambda h: h['rank'])
    return heads


def exp2_key(head, D, V):
    """The configuration key of a cell of experiment 2, e.g. linear_D16_V256."""
    return f"{head['key']}_D{D}_V{V}"


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
    if not c['dry_run']:  # a plan for a GPU can be estimated anywhere
        c['device'] = str(runtime.pick_device(c['device']))
    zero_ok = ('threads', 'e3_eval_iters', 'e3_gate_unigram', 'e3_gate_bigram', 'e2_lr_extensions',
               'e7_lr_extensions')
    options.positive(c, *[k for k, v in DEFAULTS.items() if type(v) in (int, float) and k not in zero_ok])
    if min(c[k] for k in zero_ok) < 0 or c['warmup'] >= 1:
        raise ConfigError(f"--{', --'.join(zero_ok)} must be ≥ 0 and --warmup < 1")
    chosen_experiments(c)  # refuses a bad --experiments before the checks below
    wsd_schedule(c)  # experiments 3 and 5's schedule, checked even when no text is given
    if c['text'] and not os.path.isfile(c['text']):
        raise ConfigError(f"--text={c['text']!r} is not a file: give a UTF-8 .txt file, or drop --text")
    if c['e7_other_seeds'] > c['e7_seeds']:
        raise ConfigError(f"--e7_other_seeds={c['e7_other_seeds']} exceeds --e7_seeds={c['e7_seeds']}: the "
                          "other heads run the first of the decisive heads' seeds; lower it or raise "
                          "--e7_seeds")
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
        raise ConfigError(f"--experiments must be a comma-separated subset of {','.join(TITLES)}, "
                          f"got {c['experiments']!r}")
    notes = {}
    for e in ('3', '5'):
        if e in run and not c['text']:
            run.remove(e)
            notes[e] = "skipped: no text given (--text=FILE.txt)"
    return dict(run=run, notes=notes)

# -----------------------------------------------------------------------------
# the plan: every run, before any starts


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


def wsd_schedule(c):
    """Experiments 3 and 5: warmup–stable–decay over e3_max_iters steps. The stable phase (stable steps) is
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


def plan(c):
    """Every run, each model checked before any starts: per experiment, every lr of each configuration
    (key, label, info, train.py args) on the sweep seeds, then every configuration once on each fresh seed,
    seed-major, at its best lr (None here, chosen once the sweep has run). Experiment 5 sweeps only the
    linear head (wide/select at ×1) and runs every cell at its best lr (lr_from)."""
    sweep = [c['seed'] + i for i in range(c['sweep_seeds'])]
    fresh = [c['seed'] + c['sweep_seeds'] + i for i in range(c['seeds'])]
    specs = []
    for e in chosen_experiments(c)['run']:
        if e == '4':  # it trains nothing: it reads the runs of 1 and 3
            continue
        configs = {'1': plan_heads, '2': plan_exp2, '7': plan_exp7}[e](c) if e in '127' else plan_text(c, e)
        lrs = numbers(c, f"e{'3' if e == '5' else e}_lrs")
        swept = configs
        if e == '5':
            swept = [x for x in configs if x['info']['basis'] == 'select' and x['info']['head_lr_mult'] == 1]
            if not swept:
                raise ConfigError("experiment 5 needs the linear head, wide/select at ×1: keep select in "
                                  "--e5_bases and 1 in --e5_head_lr_mults")
        for seed in sweep:
            for config in swept:
                for lr in lrs:
                    run = {k: v for k, v in config.items() if k not in ('trunk', 'branches')}
                    specs.append(dict(exp=f'exp{e}', **run, seed=seed, lr=lr, sweep=True))
            mults = [m for m in numbers(c, 'e7_head_lr_mults') if m != 1] if e == '7' else []
            for config in swept:  # the head lr runs, at the best lr: head_lr_runs makes them after the sweep
                for mult in mults:
                    specs.append(dict(exp='exp7', **config, seed=seed, lr=None, mult=mult, sweep=True,
                                      later=True))
        seeds = fresh if e != '7' else e7_seeds(c)
        own = {x['key']: seeds if e != '7' else e7_seeds(c, x['info']['head']) for x in configs}
        for seed in seeds:
            for config in configs:
                if seed not in own[config['key']]:
                    continue
                specs.append(dict(exp=f'exp{e}', **config, seed=seed, lr=None, sweep=False,
                                  lr_from=swept[0]['key'] if e == '5' else config['key']))
    numbers(c, 'e3_freq_bins', int)  # read after the runs: checked now
    for s in specs:
        try:
            check_config(GPTConfig(**{k: s['args'][k] for k in checkpoint.MODEL_KEYS
                                      if s['args'].get(k) is not None}))
        except ConfigError as e:  # which run of the plan, then what is wrong with it
            raise ConfigError(f"{s['exp']} {s['label']}: {e}")
    return specs


def written_by_reproduce(name):
    """Whether a file or folder of an --out is one that reproduce.py writes."""
    if name in ('meta.json', 'summary.md', 'exp1', 'exp2', 'exp3', 'exp5', 'exp6', 'exp7',
                'wide_diagnosis.json', 'wide_diagnosis.csv'):
        return True
    return name.startswith(('exp', 'remedies')) and name.endswith(('.csv', '.json', '.png'))


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
    """This invocation's runs: how many were trained and reused, the seconds of each trained run, and the
    train.py processes running now (stop_all ends them when reproduce.py is stopped)."""
    trained: int = 0
    reused: int = 0
    train_seconds: float = 0.0
    seconds: dict = dataclasses.field(default_factory=dict)  # 'exp1': [seconds of each trained run], ...
    running: set = dataclasses.field(default_factory=set)
    stopping: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add_trained(self, exp, seconds):
        with self.lock:
            self.trained += 1
            self.train_seconds = round(self.train_seconds + seconds, 1)
            self.seconds.setdefault(exp, []).append(seconds)

    def add_reused(self):
        with self.lock:
            self.reused += 1

    def stop_all(self):
        """No new run starts; every running train.py is terminated and waited for."""
        with self.lock:
            self.stopping = True
            procs = list(self.running)
        for p in procs:
            p.terminate()
        for p in procs:
            ended(p)

    def counts(self):
        """For meta.json."""
        return dict(trained=self.trained, reused=self.reused, train_seconds=self.train_seconds)


def in_parallel(c, tally, work, items):
    """work(item) for every item, c['jobs'] at a time (threads: each waits on its train.py or runs torch
    code that releases the GIL); results in the order of items. Ctrl-C or SIGTERM stops every run."""
    pool = concurrent.futures.ThreadPoolExecutor(c['jobs'])
    try:
        return list(pool.map(work, items))
    except BaseException:
        tally.stop_all()  # never leave a run orphaned
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
    mult = f", head lr ×{run['mult']:g}" if run.get('mult', 1) != 1 else ''
    return (f"[{i + 1}/{len(specs)}] {run['exp']} {run['label']} lr {plot.sci(run['lr'])}{mult} "
            f"seed {run['seed']} … {clock(time.time() - t0)}; {estimate}")


def run_experiment(c, e, specs, tally, t0):
    """Train (or reuse) the runs of experiment e among specs: the sweep runs, then the others at the best lr
    of their configuration's sweep (of lr_from's, in experiment 5). Returns the run records of each
    configuration, by its key."""
    runs = {}
    mine = [(i, s) for i, s in enumerate(specs) if s['exp'] == f'exp{e}']
    for sweep in (True, False):
        todo = []
        for i, spec in mine:
            if spec['sweep'] != sweep or spec.get('later'):  # later: made once the lr sweep has run
                continue
            lr, mult = spec['lr'], 1.0
            if lr is None:
                choice = sweep_choice(c, spec['exp'], runs[spec['lr_from']])
                lr, mult = choice['lr'], choice['mult']
            todo.append((i, named(dict(spec, lr=lr, mult=mult))))

        def work(item):
            say(progress(item[0], specs, item[1], tally, t0))
            return run_one(c, item[1], tally)

        for (_, run), rec in zip(todo, in_parallel(c, tally, work, todo)):
            runs.setdefault(run['key'], []).append(rec)
        extensions = c.get(f'e{e}_lr_extensions', 0) if sweep else 0
        for _ in range(extensions):
            more = grid_extensions(c, e, runs, mine)
            for (_, run), rec in zip(more, in_parallel(c, tally, work, more)):
                runs[run['key']].append(rec)
        if sweep and e == '7':  # the head's lr: its multipliers at the best lr, bracketed the same way
            for k in range(extensions + 1):
                more = grid_extensions(c, e, runs, mine, 'mult') if k else head_lr_runs(c, runs, mine)
                for (_, run), rec in zip(more, in_parallel(c, tally, work, more)):
                    runs[run['key']].append(rec)
    return runs


def named(run):
    """A run with its name: key, lr, the head lr multiplier where it is not 1, seed."""
    mult = run.get('mult', 1.0)
    return dict(run, name=f"{run['key']}_lr{run['lr']:g}{f'_x{mult:g}' * (mult != 1)}_s{run['seed']}")


def head_lr_runs(c, runs, mine):
    """Experiment 7's head lr runs (the plan's later specs, one per multiplier ≠ 1 in e7_head_lr_mults and
    sweep seed), each at its head's best lr."""
    return [(i, named(dict(spec, lr=sweep_choice(c, spec['exp'], runs[spec['key']])['lr'])))
            for i, spec in mine if spec.get('later')]


def grid_extensions(c, e, runs, mine, over='lr'):
    """The sweep runs that extend a configuration's grid of lrs (over='lr'; or of head lr multipliers at its
    best lr, over='mult') by one step beyond its edge where its best value sits there (the grid's mean
    ratio, rounded to 1 or 3 × 10^k), on every sweep seed."""
    extra, seen = [], set()
    for i, spec in mine:
        if not spec['sweep'] or spec['key'] in seen:
            continue
        seen.add(spec['key'])
        choice = sweep_choice(c, spec['exp'], runs[spec['key']])
        values = sorted(choice[f'{over}s'])
        if choice[f'{over}_edge'] not in ('low edge', 'high edge') or len(values) < 2:
            continue
        step = (values[-1] / values[0]) ** (1 / (len(values) - 1))
        want = values[0] / step if choice[f'{over}_edge'] == 'low edge' else values[-1] * step
        grid = [float(f"{m}e{k}") for m in (1, 3) for k in range(-9, 10)]  # 1 or 3 × 10^k, as written
        value = min(grid, key=lambda x: abs(math.log(x / want)))
        run = dict(spec, lr=value, mult=1.0) if over == 'lr' else dict(spec, lr=choice['lr'], mult=value)
        for seed in range(c['seed'], c['seed'] + c['sweep_seeds']):
            extra.append((i, named(dict(run, seed=seed))))
    return extra


def sweep_choice(c, exp, runs):
    """A configuration's choice from its sweep runs: the best lr among the runs at head lr multiplier 1 (lr,
    lr_edge, lrs), then the best multiplier among the runs at that lr (mult, mult_edge, mults; 1 where none
    was swept)."""
    swept = [r for r in runs if r['sweep']]
    plain = grouped(swept, 'mult').get(1.0, [])
    best = best_lr(plain, lr_score(c, exp))
    by_mult = grouped([r for r in swept if r['lr'] == best['lr']], 'mult')  # the runs at the best lr
    mult, mult_edge = best_of(by_mult, lr_score(c, exp))
    return dict(lr=best['lr'], lr_edge=best['edge'], lrs=sorted({r['lr'] for r in plain}), mult=mult,
                mult_edge=mult_edge, mults=sorted(by_mult), by_mult=by_mult)


def outcome(rec):
    """A finished run's result in a few words."""
    if rec.get('branches'):
        end = rec['branches'][-1]
        return (f"annealed val loss {end['val_loss']:.4f} after {end['tokens']:,} tokens "
                f"({len(rec['branches'])} cooldown branches)")
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
    A run with branches (experiments 3 and 6, fresh seeds) is a stable phase, then its cooldown branches in
    <name>/cool<steps>, each resumed from a checkpoint of the stable phase; in experiment 3 the longest branch
    keeps its checkpoint (for the analysis). With --reuse, a finished run with the same arguments is read back
    instead."""
    d = os.path.join(c['out'], run['exp'], run['name'])
    args = {**run.get('trunk', run['args']), 'learning_rate': run['lr'], 'min_lr': run['lr'] / 10,
            'seed': run['seed'], 'out_dir': d, 'overwrite': True, 'device': c['device']}
    if run.get('mult', 1.0) != 1:  # experiment 7's head lr sweep (experiment 5 sets it in its args)
        args['head_lr_mult'] = run['mult']
    if c['compile'] is not None:
        args['compile'] = c['compile']
    if c['reuse']:
        rec = finished_run(d, args)
        if rec is not None:
            tally.add_reused()
            say(f"      reused: {outcome(rec)} (finished earlier with the same arguments)")
            return {**rec, 'sweep': run['sweep']}
    shutil.rmtree(d, ignore_errors=True)  # unfinished, or run with other arguments
    os.makedirs(d)
    t0 = time.time()
    train(c, tally, args, d, echo_evals=run['exp'] in ('exp3', 'exp6') and not run.get('branches'))
    rows = read_log(d)
    rec = dict({k: run[k] for k in ('exp', 'key', 'name', 'label', 'info', 'lr', 'seed', 'sweep')}, args=args,
               mult=run.get('mult', 1.0), config=rows[0], evals=[r for r in rows if r.get('type') == 'eval'])
    branches = run.get('branches', [])
    if branches:
        keep = run['exp'] == 'exp3'  # its analysis reads the longest branch's checkpoint
        rec['branches'] = [cooldown(c, tally, args, d, stable, cool, last=keep and k == len(branches) - 1)
                           for k, (stable, cool) in enumerate(branches)]
    control = run['exp'] == 'exp2' and run['seed'] == c['seed'] + c['sweep_seeds']  # its ckpt is read
    every = run['exp'] == 'exp7' and not run['sweep']  # experiment 7 reads every evaluation's checkpoint
    for f in os.listdir(d):
        stale = f.startswith(('ckpt_', 'prev_')) or branches or run['exp'] in ('exp2', 'exp7') and not control
        if f.endswith('.pt') and stale and not (every and f.startswith('ckpt')):
            os.remove(os.path.join(d, f))  # only the final checkpoint is read (the longest branch's)
    rec['seconds'] = round(time.time() - t0, 2)
    save_run(c, rec)
    tally.add_trained(run['exp'], rec['seconds'])
    say(f"      {run['name']}: {outcome(rec)}, {rec['seconds']:.1f} s")
    return rec


def cooldown(c, tally, args, d, stable, cool, last):
    """The cooldown branch of a stable phase in d: resumed from its checkpoint at step `stable`, `cool` more
    steps decaying linearly to lr/10, evaluated at its end on every validation window. Its record: the steps,
    tokens and that evaluation."""
    b = os.path.join(d, f'cool{stable + cool}')
    os.makedirs(b)
    os.link(os.path.join(d, f'ckpt_{stable}.pt'), os.path.join(b, 'ckpt.pt'))
    every = 0 if args['data'].endswith('.tok') else args['eval_iters']  # text: every validation window
    branch = dict(args, out_dir=b, init_from='resume', allow_changes=True, overwrite=False,
                  max_iters=stable + cool, cooldown_iters=cool, eval_interval=stable + cool, eval_iters=every,
                  keep_checkpoints=False)
    train(c, tally, branch, b, echo_evals=False)
    final = read_log(b, 'eval')[-1]
    for f in os.listdir(b):
        if f.endswith('.pt') and not (last and f == 'ckpt.pt'):
            os.remove(os.path.join(b, f))
    return dict(stable_iters=stable, cooldown_iters=cool, iters=stable + cool, tokens=final['tokens'],
                val_loss=final['val_loss'])


def run_dir(c, rec):
    """A run's folder in this --out (its args name the folder it ran in, which may have moved)."""
    return os.path.join(c['out'], rec['exp'], rec['name'])


def save_run(c, rec):
    """A run's record, (re)written in its folder's run.json."""
    with open(os.path.join(run_dir(c, rec), 'run.json'), 'w') as f:
        json.dump(rec, f)


def read_log(d, kind=None):
    """The rows of d/log.jsonl (of one type if given)."""
    with open(os.path.join(d, 'log.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if kind is None or r.get('type') == kind]


def launch(target, *args):
    """A started LAUNCH process running target(*args)."""
    p = LAUNCH.Process(target=target, args=args)
    with PROCESSES:
        p.start()
    return p


def ended(p, timeout=None):
    """Whether the launched process p has ended, after waiting up to timeout seconds (None: until it has).
    Unguarded, a thread's start() could read a status another thread then reads again, as 255."""
    multiprocessing.connection.wait([p.sentinel], timeout)
    with PROCESSES:
        return p.exitcode is not None


def train_py(argv, out, err, threads):
    """In a launched process: `python train.py *argv`, stdout appended to the file `out`, stderr to `err`."""
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, 'w', encoding='utf-8', buffering=1, closefd=False)
    sys.stderr = open(2, 'w', encoding='utf-8', buffering=1, closefd=False)
    if threads:
        torch.set_num_threads(threads)
    sys.argv = [TRAIN, *argv]
    try:
        runpy.run_path(TRAIN, run_name='__main__')
    except Exception:  # ended as the interpreter ends `python train.py`: its sys.excepthook, exit status 1
        sys.excepthook(*sys.exc_info())
        sys.exit(1)


def train(c, tally, args, d, echo_evals):
    """One train.py run (train_py in a launched process), its stdout then its stderr in d/stdout.txt (its
    eval lines echoed if asked); a failure raises TrainingError naming the run and its last line on stderr."""
    out, err = os.path.join(d, 'stdout.txt'), os.path.join(d, 'stderr.txt')
    open(err, 'w').close()
    argv = [f"--{k}={v}" for k, v in args.items() if v is not None]
    with open(out, 'a+', encoding='utf-8', errors='replace') as log:  # read from its end, written at its end
        with tally.lock:
            if tally.stopping:
                raise TrainingError("stopped")
            p = launch(train_py, argv, out, err, c['threads'])
            tally.running.add(p)
        try:
            pending = ''
            while True:
                finished = ended(p, 0.2)  # then what it wrote is all in the file
                pending += log.read()
                *lines, pending = pending.split('\n')  # whole lines: it may be writing the next one
                for line in lines:
                    if echo_evals and line.startswith('eval'):
                        say('      ' + line)
                if finished:
                    break
        except BaseException:  # Ctrl-C, or a SIGTERM to reproduce.py alone: never leave the run orphaned
            p.terminate()
            raise
        finally:
            ended(p)
            with tally.lock:
                tally.running.discard(p)
        with open(err, encoding='utf-8', errors='replace') as f:
            lines = f.readlines()
        log.writelines(lines)
    os.remove(err)
    if p.exitcode:
        last = next((x.strip() for x in reversed(lines) if x.strip()), 'nothing on stderr')
        last = last.removeprefix('error: ')
        raise TrainingError(f"run {d} failed (exit status {p.exitcode}): {last} (output: {d}/stdout.txt)")


def final_score(runs):
    """The default order of lrs, from one lr's sweep runs: SpamLang the best mean accuracy, then loss; text
    the lowest mean loss."""
    finals = [r['evals'][-1] for r in runs]
    acc = round(np.mean([e['val_acc'] for e in finals]), 3) if 'val_acc' in finals[0] else 0
    return acc, -np.mean([e['val_loss'] for e in finals])


def to_target(c, rec):
    """Experiment 2: the steps at the first evaluation whose loss on positions ≥ 1 is at most e2_target_loss
    · log(V − 1), and at the first with accuracy ≥ e2_target_acc; None when the budget ran out first
    (censored, never averaged)."""
    loss_at = c['e2_target_loss'] * spamlang.optimal_loss_pos0(rec['args']['vocab_size'])
    evals = [e for e in rec['evals'] if e['iter'] > 0]
    loss = next((e['iter'] for e in evals if e['val_loss'] <= loss_at), None)
    acc = next((e['iter'] for e in evals if e['val_acc'] >= c['e2_target_acc']), None)
    return loss, acc


def lr_score(c, exp):
    """How an experiment orders its lrs: experiment 2 by the runs that reach the target loss, then their mean
    steps to it (fewer is better), then the final loss (the target's measure); the others by final_score."""
    if exp != 'exp2':
        return final_score

    def score(runs):
        steps = [to_target(c, r)[0] for r in runs]
        reached = [s for s in steps if s is not None]
        return len(reached), -np.mean(reached) if reached else 0.0, -np.mean([r['evals'][-1]['val_loss']
                                                                             for r in runs])
    return score


def best_lr(runs, score=final_score):
    """The best lr of sweep runs (lr) by score (larger is better, from one lr's runs) and its flag (edge:
    'one lr', 'low edge', 'high edge' or '')."""
    best, edge = best_of(grouped(runs, 'lr'), score)
    return dict(lr=best, edge=edge)


def grouped(runs, key):
    """{value: the runs with that value} of a run field (a missing head lr multiplier is 1)."""
    groups = {}
    for r in runs:
        groups.setdefault(r.get(key, 1.0) if key == 'mult' else r[key], []).append(r)
    return groups


def best_of(groups, score):
    """The best value of a grid ({value: runs}) by score (larger is better, from one value's runs) and its
    flag: 'one lr', 'low edge', 'high edge' or ''."""
    values = sorted(groups)
    best = max(values, key=lambda v: score(groups[v]))
    if len(values) == 1:
        return best, 'one lr'
    return best, {values[0]: 'low edge', values[-1]: 'high edge'}.get(best, '')

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


def lr_table(runs, score=final_score, **info):
    """A configuration's lr sweep: rows (one per lr, over the sweep seeds, the best marked), the best lr (lr)
    by score (best_lr's), its flag (edge), and the fresh seeds' runs at it (best_runs), the only ones
    reported."""
    sweep = grouped([r for r in runs if r['sweep']], 'mult').get(1.0, [])  # experiment 7's head lr: its own
    best = best_lr(sweep, score)
    rows = []
    for lr in sorted({r['lr'] for r in sweep}):
        finals = [r['evals'][-1] for r in sweep if r['lr'] == lr]
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
        row['runs'] = [r['name'] for r in sweep if r['lr'] == lr]
        rows.append(row)
    return dict(rows=rows, lr=best['lr'], edge=best['edge'], best_runs=[r for r in runs if not r['sweep']])


def ci(x, fmt='{:.3f}', scale=1.0, p=False):
    """An interval as 'mean [lo, hi]' (95%, t over seeds), with the paired test's p if asked."""
    if x['mean'] is None:
        return 'n/a'
    if x['lo'] is None:
        return f"{fmt.format(x['mean'] * scale)} (one seed)"
    text = f"{fmt.format(x['mean'] * scale)} [{fmt.format(x['lo'] * scale)}, {fmt.format(x['hi'] * scale)}]"
    return text + (f", p = {x['p']:.2g}" if p else '')


def by_seed(runs, value):
    """{seed: value(run)} of a configuration's fresh runs."""
    return {r['seed']: value(r) for r in runs}


def paired_by_seed(a, b):
    """stats.paired over the seeds that a and b ({seed: value}) share."""
    seeds = sorted(set(a) & set(b))
    return stats.paired([a[s] for s in seeds], [b[s] for s in seeds])


# -----------------------------------------------------------------------------
# the experiments: each writes its tables and figures to --out and returns its summary (controls, a markdown
# table, notes); 1 and 3 also return the best lr's runs of each head (heads), which experiment 4 reads


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


def cosine(lr, step, steps):
    """The lr of a fit at `step` of `steps`: cosine from lr to 0."""
    return lr * 0.5 * (1 + math.cos(math.pi * step / steps))


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


def hidden_states(model, x):
    """The final hidden states (N, D) of the windows x (n, T), in the model's eval mode, without grad."""
    with torch.no_grad():
        return torch.cat([model.hidden(xb).reshape(-1, model.config.n_embd) for xb in x.split(64)])


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


# -----------------------------------------------------------------------------
# experiment 7: heads beyond the paper (remedies.py); its analysis reads the fresh runs' checkpoints

E7_PAIRS = (('whiten', 'linear'), ('overparam', 'linear'), ('blocks', 'wide:{2D}/random'),
            ('blocks', 'blocksum'), ('blocks', 'blocks_sg'), ('mlp', 'wide:{4D}/random'), ('mlp', 'prehead'),
            ('mos', 'mos1'), ('sigsoftmax', 'linear'))  # candidate, its matched control or twin


FITS = ('frozen_init', 'linear_on_its_trunk', 'it_on_linear_trunk')  # the frozen-trunk fits, by name
REUSED_FITS = ('frozen_init', 'it_on_linear_trunk')  # a remedies.SAME_FORWARD head's: its twin's, as fitted


def e7_seeds(c, spec=None):
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


def summarise(c, e, runs, tokens, done):
    """Experiment e's summary from its runs (by configuration key); experiment 4 reads the summaries done
    so far."""
    if e == '1':
        return summary_exp1(c, runs)
    if e == '2':
        return summary_exp2(c, runs)
    if e == '3':
        return summary_exp3(c, runs, tokens)
    if e == '5':
        return summary_exp5(c, runs, tokens)
    if e == '6':
        return summary_exp6(c, runs)
    if e == '7':
        return summary_exp7(c, runs)
    return summary_exp4(c, {x: done[x]['heads'] for x in ('1', '3') if x in done})


def section(e, summary, seconds):
    """Experiment e's part of summary.md: title, figures, notes, table and controls."""
    figures = ''.join(f"![]({f})\n" for f in summary.get('figures', FIGURES[e]))
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


def text_vocab(c, specs):
    """The dry run's text runs at --text's V: its compacted cl100k ids, counted in memory (nothing is
    written). Without a --text the plan has no text runs."""
    text_exps = ('exp3', 'exp5', 'exp7') if c['e7_data'] == 'text' else ('exp3', 'exp5')
    runs = [args for s in specs if s['exp'] in text_exps for args in (s['args'], s.get('trunk')) if args]
    if runs:
        ids = textdata.get_encoding(c['e3_encoding']).encode_ordinary(textdata.read_text(c['text']))
        V = len(set(ids))
        for args in runs:
            args['vocab_size'] = V


def main(argv):
    c = parse_options(argv)
    chosen = chosen_experiments(c)
    notes = chosen['notes']
    torch.set_num_threads(c['threads'] or torch.get_num_threads())  # experiment 3's analysis runs here
    specs = plan(c)
    if c['dry_run']:
        import estimate  # the GPU time of a plan, by an estimate: read only here
        text_vocab(c, specs)
        compiled = c['compile'] if c['compile'] is not None else c['device'].startswith('cuda')
        for line in estimate.report(estimate.estimate(specs, c['jobs'], compiled), c['jobs'], compiled):
            say(line)
        return
    prepare_out(c)
    tokens = None
    if {'3', '5'} & set(chosen['run']):
        folder = os.path.join(c['out'], 'exp3')
        os.makedirs(folder, exist_ok=True)
        tokens = textdata.tokenize_text(c['text'], c['e3_encoding'], folder, compact=True)
        for s in specs:
            if s['exp'] in ('exp3', 'exp5'):
                s['args']['data'] = tokens
            if 'trunk' in s and s['exp'] == 'exp3':
                s['trunk']['data'] = tokens
    if '7' in chosen['run'] and c['e7_data'] == 'text':
        for s in specs:
            if s['exp'] == 'exp7':
                s['args']['data'] = e7_corpus(c)['path']
    tally = Tally()
    gpu = torch.cuda.get_device_name(c['device']) if c['device'].startswith('cuda') else None
    meta = dict(command=' '.join(['python reproduce.py', *argv]), date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                commit=runtime.code_version(), device=c['device'], gpu=gpu, platform=platform.platform(),
                cpu_count=os.cpu_count(), threads=c['threads'] or os.environ.get('OMP_NUM_THREADS'),
                torch=torch.__version__, wall_s={}, runs=tally.counts(), runs_by_experiment={},
                config=dict(c, exps=chosen['run'], notes=notes))  # notes: the same dict, filled in as we go
    fresh = c['seed'] + c['sweep_seeds']
    seeds7 = f" (experiment 7: {fresh}…{e7_seeds(c)[-1]})" if '7' in chosen['run'] else ''
    say(f"reproduce.py: preset {c['preset']}, experiments {','.join(chosen['run'])}, {len(specs)} runs, "
        f"lr sweeps on seed {c['seed']}…{fresh - 1}, fresh seeds {fresh}…{fresh + c['seeds'] - 1}{seeds7}, "
        f"device {c['device']}, out {c['out']}")
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
