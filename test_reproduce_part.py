"""Tests of reproduce.py and plot.py (to be merged into test_all.py). The end-to-end ones run the tiny preset
(config/reproduce_tiny.py) as subprocesses, each train.py child on one thread."""
import glob
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import common
import plot
import reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, OMP_NUM_THREADS='1')
PNG = b'\x89PNG\r\n\x1a\n'


def write_text(path, lines=300):
    words = ('the a of to and in that is was he for it with as his on be at by this had not are but from or have an '
             'they which one you were her all she there would their we him been has when who will more no if out so').split()
    rng = random.Random(0)
    path.write_text('\n'.join(' '.join(rng.choice(words) for _ in range(12)) for _ in range(lines)))
    return str(path)


def repro(*args):
    return subprocess.run([sys.executable, os.path.join(HERE, 'reproduce.py'), *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def tree(root):
    return sorted((p, os.path.getmtime(p)) for p in glob.glob(f"{root}/**", recursive=True))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('reproduce')
    text = write_text(root / 'tiny.txt')
    p = repro('--preset=tiny', f'--text={text}', f'--out={root}/out', '--device=cpu')
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    return str(root / 'out'), text, p.stdout


@pytest.mark.slow
def test_tiny_preset_writes_tables_figures_and_summaries(tiny):
    out, _, stdout = tiny
    for figs in reproduce.FIGURES.values():
        for f in figs:
            with open(os.path.join(out, f), 'rb') as fh:
                assert fh.read(8) == PNG, f
    summary = open(os.path.join(out, 'summary.md')).read()
    for e, title in reproduce.TITLES.items():
        assert f"## Experiment {e}: {title}" in summary
    assert 'Stage gate' in summary and '| head | best lr |' in summary
    meta = json.load(open(os.path.join(out, 'meta.json')))
    assert {'command', 'commit', 'date', 'torch', 'cpu_count', 'wall_s', 'runs'} <= set(meta)
    assert meta['runs']['trained'] == 14 and meta['runs']['reused'] == 0 and 'total' in meta['wall_s']
    e1 = json.load(open(os.path.join(out, 'exp1_head_rank.json')))
    assert e1['controls']['ours'] and {r['edge'] for r in e1['rows']} == {'one lr'}  # e1_lrs is one value: flagged
    grid = json.load(open(os.path.join(out, 'exp2_rank_grid.json')))
    assert grid['cells'] and all(len(cell['acc']) == 2 and 'loss_over_logV' in cell for cell in grid['cells'])
    e3 = json.load(open(os.path.join(out, 'exp3_text.json')))
    assert set(e3['baselines']) == {'unigram', 'bigram'} and 'passed' in e3['gate'] and e3['verdict']
    for h in e3['heads'].values():
        assert len(h['final_val_loss']) == len(h['probe_loss']) == 2
        assert all(len(v) == 2 for v in h['loss_by_frequency'].values()) and len(h['loss_by_frequency']) == 3
        assert all(math.isfinite(v) for v in h['spectrum']['ey_floor'])
    # the sweep runs every lr on seed 1337; seed 1338 runs once per head, at its best lr
    names = sorted(os.listdir(os.path.join(out, 'exp3')))
    for h, info in e3['heads'].items():
        tag = h.replace(':', '')
        assert [n for n in names if n.startswith(tag) and n.endswith('_s1338')] == [f"{tag}_lr{info['best_lr']:g}_s1338"]
    run = json.load(open(glob.glob(os.path.join(out, 'exp3', '*', 'run.json'))[0]))
    assert run['config']['type'] == 'config' and 'compile' in run['config'] and run['evals']
    assert not glob.glob(os.path.join(out, 'exp3', '*', '*.pt'))  # analysed, then deleted (no --keep_ckpt)
    # progress: one line before each run, with its count, elapsed time and an estimate; text runs echo their evals
    progress = [l for l in stdout.splitlines() if l.startswith('[')]
    assert len(progress) == 14 and re.fullmatch(r"\[1/14\] exp1 r = 2 lr 3e-3 seed 1337 … [\d.]+ s; .*", progress[0])
    assert re.search(r"\[14/14\] exp3 .* seed 1338 … [\d.]+ (s|min); [\d.]+ (s|min) left", stdout)
    assert re.search(r"^      eval 0: val loss", stdout, re.M)


@pytest.mark.slow
def test_existing_out_is_refused_and_reuse_skips_finished_runs(tiny, tmp_path):
    out, text, _ = tiny
    before = tree(out)
    p = repro('--preset=tiny', f'--text={text}', f'--out={out}', '--device=cpu')
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'already holds results' in p.stderr
    assert '--reuse' in p.stderr and '--overwrite' in p.stderr and tree(out) == before  # nothing written or deleted
    copy = str(tmp_path / 'copy')
    shutil.copytree(out, copy)
    p = repro('--preset=tiny', '--experiments=1', '--seeds=3', f'--out={copy}', '--device=cpu', '--reuse')
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('reused:') == 4 and '2 runs trained, 4 reused' in p.stdout  # seed 1339 is new
    assert json.load(open(os.path.join(copy, 'meta.json')))['runs']['trained'] == 2


def test_a_failing_run_stops_with_one_line_naming_it(tmp_path):
    text = tmp_path / 'short.txt'
    text.write_text('to be or not to be, that is the question ' * 4)
    p = repro('--preset=tiny', '--experiments=3', f'--text={text}', f'--out={tmp_path}/out', '--e3_block_size=64')
    assert p.returncode == 1 and p.stderr.count('\n') == 1
    assert re.match(r"error: run \S+narrow2_lr0.001_s1337 failed \(exit status 1\): \S+ is too short", p.stderr)


def test_overwrite_deletes_only_what_reproduce_wrote(tmp_path):
    (tmp_path / 'exp1').mkdir()
    for f in ('meta.json', 'exp1_head_rank.png', 'notes.txt'):
        (tmp_path / f).write_text('x')
    reproduce.prepare_out(dict(out=str(tmp_path), reuse=False, overwrite=True))
    assert sorted(os.listdir(tmp_path)) == ['notes.txt']


@pytest.mark.parametrize('args, msg', [
    (['--e1_head=wide'], 'did you mean --e1_heads?'),
    (['--e1_heads=narrow:0'], "bad item 'narrow:0'"),
    (['--e1_heads=linear:4'], "bad item 'linear:4'"),
    (['--e2_lrs=1e-3,x'], "bad item 'x'"),
    (['--experiments=1,5'], 'subset of 1,2,3,4'),
    (['--quick', '--preset=gpu'], '--quick is --preset=quick'),
    (['--reuse', '--overwrite'], 'give one of the two'),
    (['--seeds=0'], '--seeds must be positive'),
    (['--preset=huge'], 'presets: cpu'),
    (['--text=/nonexistent.txt'], 'is not a file'),
])
def test_bad_flags_are_refused(args, msg):
    with pytest.raises(common.ConfigError, match=re.escape(msg)):
        reproduce.plan(reproduce.options(args + ['--device=cpu']))


def test_bad_flag_is_one_line_exit_1():
    p = repro('--quick', '--e1_lrs=1e-3,fast')
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and p.stderr.startswith('error: --e1_lrs=1e-3,fast: bad item')
    assert not p.stdout


@pytest.mark.parametrize('name', ['cpu'] + sorted(f[len('reproduce_'):-3] for f in os.listdir(os.path.join(HERE, 'config'))
                                                   if f.startswith('reproduce_') and f.endswith('.py')))
def test_every_preset_validates(name, tmp_path):
    if name != 'cpu':
        for k, v in common.read_config_file(os.path.join(HERE, 'config', f'reproduce_{name}.py')).items():
            assert type(v) is type(reproduce.DEFAULTS[k]) or reproduce.DEFAULTS[k] is None, k
    c = reproduce.options([f'--preset={name}', '--device=cpu', f"--text={write_text(tmp_path / 't.txt', 5)}"])
    specs = reproduce.plan(c)
    assert {s['exp'] for s in specs} == {f'exp{e}' for e in c['exps'] if e != '4'}
    assert all(s['lr'] is not None or not s['sweep'] for s in specs)


def test_plot_py_draws_a_real_log(tiny, tmp_path):
    out, _, _ = tiny
    for log in (glob.glob(os.path.join(out, exp, '*', 'log.jsonl'))[0] for exp in ('exp1', 'exp3')):
        png = str(tmp_path / (os.path.basename(os.path.dirname(log)) + '.png'))
        p = subprocess.run([sys.executable, os.path.join(HERE, 'plot.py'), log, f'--out={png}'], capture_output=True,
                           text=True, env=ENV, timeout=120)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == png and open(png, 'rb').read(8) == PNG
    p = subprocess.run([sys.executable, os.path.join(HERE, 'plot.py'), os.path.join(out, 'meta.json')],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith('error:') and p.stderr.count('\n') == 1


def test_baselines_match_a_hand_computed_example():
    # train 0 1 0 1 2 (V = 3): unigram (c + 1)/(5 + 3) = 3/8, 3/8, 2/8; contexts c(0) = c(1) = 2; successors t(0) = 1
    # ({1}), t(1) = 2 ({0, 2}); c(0, 1) = 2, c(1, 2) = 1. Witten–Bell: λ_0 = 2/3, λ_1 = 1/2, λ_2 = 0 (never a context).
    b = reproduce.baselines([0, 1, 0, 1, 2], [0, 1, 2], [1, 2, 0], 3)
    p_uni = [3 / 8, 2 / 8, 3 / 8]
    p_bi = [2 / 3 * 2 / 2 + 1 / 3 * 3 / 8, 1 / 2 * 1 / 2 + 1 / 2 * 2 / 8, 3 / 8]
    assert b['unigram'] == pytest.approx(-np.mean(np.log(p_uni)))
    assert b['bigram'] == pytest.approx(-np.mean(np.log(p_bi)))


def test_spread_is_the_sample_std_and_one_seed_shows_a_dash():
    s = reproduce.spread([1.0, 2.0, 3.0, 4.0])
    assert s['std'] == pytest.approx(np.std([1, 2, 3, 4], ddof=1)) and s['n'] == 4
    assert reproduce.pm(s, '{:.2f}') == '2.50 ± 1.29 (1.00–4.00)'
    one = reproduce.spread([0.5, None])
    assert one['std'] is None and reproduce.pm(one, scale=100) == '50.0 ± -'


def test_best_lr_flags_the_edges_and_tokens_to_interpolates():
    run = lambda lr, acc, loss: dict(lr=lr, evals=[dict(val_acc=acc, val_loss=loss)])
    assert reproduce.best_lr('exp1', [run(1e-3, .5, 1), run(3e-3, .9, 1), run(1e-2, .9, .5)]) == (1e-2, 'high edge')
    assert reproduce.best_lr('exp1', [run(1e-3, .5, 1), run(3e-3, .9, 1), run(1e-2, .2, .5)]) == (3e-3, '')
    assert reproduce.best_lr('exp3', [run(1e-3, 0, 4), run(3e-3, 0, 5)]) == (1e-3, 'low edge')
    evals = [dict(tokens=0, val_loss=9.0), dict(tokens=100, val_loss=7.0), dict(tokens=200, val_loss=5.0)]
    assert reproduce.tokens_to(evals, 6.0) == pytest.approx(150) and reproduce.tokens_to(evals, 9.5) == 0
