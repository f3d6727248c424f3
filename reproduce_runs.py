"""
The machinery of reproduce.py's experiments: list options and heads as the options name them
(head[:rank][/basis]); runs, each `python train.py --key=value ...` forked from a process that has imported
torch, several at once, a run already done reused; the lr choice on the sweep seeds (final loss, or steps to
a target for experiment 2) and its grid extensions (the head lr's too, for experiment 7); the tables every
experiment writes (JSON, CSV, markdown); two helpers of the head fits. No experiment's plan or summary is
here.
"""
import concurrent.futures
import csv
import dataclasses
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import runpy
import shutil
import sys
import threading
import time

import numpy as np
import torch

import plot
import remedies
import spamlang
import stats
from options import ConfigError, TrainingError
from model import FACTORIZED, HEADS

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, 'train.py')
# a run: train.py as __main__ in a process forked from a server that imported torch once (multiprocessing's
# forkserver; spawn where there is none): `python train.py --key=value ...` without its ≈ 3 s of imports
LAUNCH = multiprocessing.get_context(
    'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn')
LAUNCH.set_forkserver_preload(['torch', 'torch._dynamo', 'torch.optim'])
PROCESSES = threading.Lock()  # a child's exit status reads once, and every start polls every child: both here
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


def say(line):
    """Print one line whole: runs in parallel threads would otherwise interleave a line and its newline."""
    with SAY_LOCK:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()


# -----------------------------------------------------------------------------
# list options, and heads as the options name them: head[:rank][/basis], remedies.py's by name


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
    if len(set(values)) < len(values):  # two runs of one configuration would share a folder
        raise ConfigError(f"--{key}={c[key]}: an item is given twice; give each once")
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
    if len(set(specs)) < len(specs):
        raise ConfigError(f"--{key}={c[key]}: a head is given twice; give each once")
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
# shared by the experiments' head fits


def cosine(lr, step, steps):
    """The lr of a fit at `step` of `steps`: cosine from lr to 0."""
    return lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def hidden_states(model, x):
    """The final hidden states (N, D) of the windows x (n, T), in the model's eval mode, without grad."""
    with torch.no_grad():
        return torch.cat([model.hidden(xb).reshape(-1, model.config.n_embd) for xb in x.split(64)])
