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

This file holds the options, the plan and the order of work; each experiment's plan, analysis and summary
is in a file of its own: reproduce_spamlang.py (1, 2), reproduce_text.py (3–6), reproduce_remedies.py (7),
all on the machinery of reproduce_runs.py (forked runs, reuse, lr choice, tables).
"""
import json
import os
import platform
import re
import shutil
import signal
import sys
import time

import numpy as np
import torch

import checkpoint
import options
import runtime
import textdata
import plot
from options import ConfigError
from model import GPTConfig, check_config
from reproduce_runs import (
    FIGURES, HERE, Tally, grid_extensions, head_lr_runs, in_parallel, named, numbers, run_one, say,
    sweep_choice)
from reproduce_spamlang import plan_exp2, plan_heads, summary_exp1, summary_exp2
from reproduce_text import plan_text, summary_exp3, summary_exp4, summary_exp5, summary_exp6, wsd_schedule
from reproduce_remedies import e7_corpus, e7_fresh_seeds, plan_exp7, summary_exp7


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
TITLES = {'1': 'head rank on SpamLang', '2': 'SpamLang at a fixed batch, as V/D grows',
          '3': 'text, head rank on one backbone', '4': 'the meter along training',
          '5': 'the wide head on text: its basis and its learning rate',
          '6': 'head rank on a language with an exact floor',
          '7': 'beyond the paper: heads that might widen the gradient channel'}


# -----------------------------------------------------------------------------
# options


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
    elif not re.fullmatch(r'auto|cpu|mps|cuda(:\d+)?', c['device']):  # but only for a device train.py takes
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {c['device']!r}")
    zero_ok = ('seed', 'threads', 'e3_eval_iters', 'e3_gate_unigram', 'e3_gate_bigram', 'e2_lr_extensions',
               'e7_lr_extensions')
    options.positive(c, *[k for k, v in DEFAULTS.items() if type(v) in (int, float) and k not in zero_ok])
    if min(c[k] for k in zero_ok) < 0 or c['warmup'] >= 1:
        raise ConfigError(f"--{', --'.join(zero_ok)} must be ≥ 0 and --warmup < 1")
    chosen_experiments(c)  # refuses a bad --experiments before the checks below
    wsd_schedule(c)  # experiments 3, 5 and 6's schedule, checked even when no text is given
    if c['text'] and not os.path.isfile(c['text']):
        raise ConfigError(f"--text={c['text']!r} is not a file: give a UTF-8 .txt file, or drop --text")
    if c['text']:
        textdata.read_text(c['text'])  # a binary or non-UTF-8 file is refused now, before --overwrite deletes
    sizes = [c['e1_vocab_size'], c['e6_vocab_size'], c['e7_vocab_size'], *numbers(c, 'e2_vocab_sizes', int)]
    if min(sizes) < 2:
        raise ConfigError("every vocabulary size needs V ≥ 2 (a BOS token and at least one symbol)")
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
# the plan: every run, before any starts (each experiment's own plan is in its file)


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
        seeds = fresh if e != '7' else e7_fresh_seeds(c)
        own = {x['key']: seeds if e != '7' else e7_fresh_seeds(c, x['info']['head']) for x in configs}
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
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out={out} is a file: give a folder for the results")
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
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out={out} cannot be made ({e.strerror}): choose another --out")


# -----------------------------------------------------------------------------
# the runs, experiment by experiment, and the summary


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


def summarise(c, e, runs, tokens, done):
    """Experiment e's summary from its runs (by configuration key): each experiment writes its tables and
    figures to --out and returns controls, a markdown table and notes (1 and 3 also heads, the best lr's runs
    of each head); experiment 4 reads the summaries done so far."""
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


def earlier_results(c):
    """With --reuse, what an earlier invocation wrote to --out: its summary.md's sections by experiment, and
    its meta.json (kept inside the new one), so that adding experiments to a folder loses neither."""
    summary, meta_path = os.path.join(c['out'], 'summary.md'), os.path.join(c['out'], 'meta.json')
    sections = {}
    if c['reuse'] and os.path.exists(summary):
        for part in re.split(r'^(?=## Experiment )', open(summary).read(), flags=re.M)[1:]:
            sections[part.split()[2].rstrip(':')] = part.rstrip('\n') + '\n'
    meta = json.load(open(meta_path)) if c['reuse'] and os.path.exists(meta_path) else None
    return sections, meta


def write_summary(c, meta, sections, notes, kept):
    """meta.json, and summary.md: every experiment's section, or its note, or (kept) an earlier one's."""
    with open(os.path.join(c['out'], 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    parts = [sections.get(e) or (f"## Experiment {e}: {TITLES[e]}\n\n{notes[e]}\n" if e in notes else kept[e])
             for e in sorted({*sections, *notes, *kept})]
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
        for e, note in notes.items():
            say(f"experiment {e}: {note}")
        return
    prepare_out(c)
    kept, previous = earlier_results(c)
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
    if previous:
        meta['previous'] = previous
    fresh = c['seed'] + c['sweep_seeds']
    seeds7 = f" (experiment 7: {fresh}…{e7_fresh_seeds(c)[-1]})" if '7' in chosen['run'] else ''
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
        write_summary(c, meta, sections, notes, kept)
    meta['wall_s']['total'] = round(time.time() - t0, 1)
    write_summary(c, meta, sections, notes, kept)
    skipped = ''.join(f"experiment {e}: {note}\n" for e, note in notes.items())
    say(f"{skipped}done in {clock(meta['wall_s']['total'])} ({tally.trained} runs trained, {tally.reused} "
        f"reused): summary.md, tables, figures in {c['out']}")
    return sections


if __name__ == '__main__':
    options.one_line_errors()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind like Ctrl-C: train() stops its run
    main(sys.argv[1:])
