"""
The test suite: real behaviour on CPU, no GPU and no network needed. Under 5 minutes on 2 cores.

    python -m pytest -q test_all.py
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common
import measure
import spamlang
from common import ConfigError
from model import FACTORIZED, GPT, GPTConfig, HEADS, fused_linear_cross_entropy

HERE = os.path.dirname(os.path.abspath(__file__))
# one thread per child process: tiny models gain nothing from more, and oversubscribed cores run many times slower
CHILD_ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def tiny(head='linear', **kw):
    return GPTConfig(**{**dict(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=32, head=head), **kw})


def run_train(*args, timeout=300):
    """`python train.py args` in a real process; returns (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, os.path.join(HERE, 'train.py'), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=HERE, env=CHILD_ENV)
    return p.returncode, p.stdout, p.stderr


def train_run(tmp_path, name, **overrides):
    """`python train.py` with these options into tmp_path/name; returns its last evaluation record."""
    args = [f'--{k}={v}' for k, v in {'out_dir': tmp_path / name, 'log_interval': 10**9, **overrides}.items()]
    code, out, err = run_train(*args)
    assert code == 0, err
    return [r for r in read_log(tmp_path / name) if r['type'] == 'eval'][-1]


def read_log(out_dir, kind=None):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if kind is None or r['type'] == kind]

# -----------------------------------------------------------------------------
# heads

@pytest.mark.parametrize('head', list(HEADS))
def test_head_shapes_and_effective_matrix(head):
    torch.manual_seed(0)
    model = GPT(tiny(head))
    idx = torch.randint(0, 100, (3, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 8, 100) and loss.ndim == 0
    W = model.lm_head.effective_weight()  # (V, D)
    assert W.shape == (100, 32)
    h = model.hidden(idx)
    torch.testing.assert_close(logits, h @ W.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('head,rank', [('narrow', None), ('narrow', 3), ('wide', None), ('wide', 48)])
def test_factorized_rank(head, rank):
    model = GPT(tiny(head, head_rank=rank))
    r = model.lm_head.rank
    assert r == (rank or {'narrow': 32 // 16, 'wide': 32}[head])
    assert torch.linalg.matrix_rank(model.lm_head.effective_weight().detach()).item() == min(r, 32)


def test_tied_head_shares_storage():
    model = GPT(tiny('tied'))
    assert model.lm_head.padded_weight().data_ptr() == model.transformer.wte.weight.data_ptr()
    idx = torch.randint(0, 100, (2, 8))
    model(idx, idx)[1].backward()
    # the embedding gets gradient from both its uses; a copy would get it only at the used rows
    assert (model.transformer.wte.weight.grad[:100].abs().sum(1) > 0).all()


@pytest.mark.parametrize('head', list(HEADS))
def test_padded_rows_get_no_mass_and_no_gradient(head):
    cfg = tiny(head, vocab_size=70)  # padded to 128
    model = GPT(cfg)
    assert model.lm_head.padded_weight().shape[0] == cfg.padded_vocab_size == 128
    idx = torch.randint(0, 70, (2, 8))
    logits, loss = model(idx, idx)
    assert logits.shape[-1] == 70
    torch.testing.assert_close(torch.softmax(logits, -1).sum(-1), torch.ones(2, 8))
    loss.backward()
    grads = {'linear': lambda m: m.lm_head.weight.grad, 'tied': lambda m: m.transformer.wte.weight.grad,
             'narrow': lambda m: m.lm_head.B.grad, 'wide': lambda m: m.lm_head.B.grad}[head](model)
    assert grads[70:].abs().max() == 0
    assert model.lm_head.effective_weight().shape[0] == 70


@pytest.mark.parametrize('rank', [1, 4, 16, 64, 256])
def test_factorized_init_scale_matches_linear(rank):
    torch.manual_seed(0)
    cfg = dict(vocab_size=4096, n_embd=64)
    ref = GPT(GPTConfig(**cfg, head='linear')).lm_head.effective_weight().detach()
    W = GPT(GPTConfig(**cfg, head='wide', head_rank=rank)).lm_head.effective_weight().detach()
    assert abs(W.std() / ref.std() - 1) < 0.05
    # the logits a unit-norm hidden state sees have the same scale too
    h = torch.randn(512, 64)
    h = h / h.norm(dim=1, keepdim=True)
    assert abs((h @ W.T).std() / (h @ ref.T).std() - 1) < 0.1


def test_bad_head_config():
    for bad, msg in [(dict(head='mlp'), 'unknown head'), (dict(head='narrow', head_rank=0), 'positive'),
                     (dict(head='wide', head_rank=-3), 'positive'), (dict(head='linear', head_rank=8), 'only'),
                     (dict(vocab_size=1), 'at least 2')]:
        with pytest.raises(ValueError, match=msg):
            GPT(tiny(**bad))

# -----------------------------------------------------------------------------
# SpamLang

def test_spamlang_structure_and_determinism():
    x, y = spamlang.get_batch(64, 10, 50, spamlang.make_generator(3))
    x2, y2 = spamlang.get_batch(64, 10, 50, spamlang.make_generator(3))
    x3, _ = spamlang.get_batch(64, 10, 50, spamlang.make_generator(4))
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    assert (x[:, 0] == spamlang.BOS).all()
    assert (x[:, 1:] == y[:, :1]).all() and (y == y[:, :1]).all()  # one symbol repeated
    assert ((y >= 1) & (y < 50)).all()


def test_spamlang_uniform_symbols():
    V, n = 64, 63 * 400
    x, _ = spamlang.get_batch(n, 2, V, spamlang.make_generator(0))
    counts = torch.bincount(x[:, 1], minlength=V)[1:].double()
    chi2 = (((counts - n / (V - 1)) ** 2) / (n / (V - 1))).sum().item()
    assert chi2 < 62 + 4 * math.sqrt(2 * 62)  # χ² with 62 degrees of freedom, far from its tail
    assert spamlang.exposures_per_symbol(n, V) == 400


def test_spamlang_metrics_split_position_zero():
    x, y = spamlang.get_batch(8, 5, 20, spamlang.make_generator(0))
    logits = torch.full((8, 5, 20), -10.0)
    logits.scatter_(2, y.unsqueeze(-1), 10.0)  # a perfect predictor, which cannot exist at position 0
    m = spamlang.metrics(logits, y)
    assert m['acc'] == 1.0 and m['acc_pos0'] == 1.0 and m['loss'] < 1e-6

# -----------------------------------------------------------------------------
# the --key=value parser

OPTIONS = dict(head='linear', learning_rate=1e-3, max_iters=2000, compile=None, head_rank=None, bias=False,
               data='spamlang')
TYPES = dict(compile=bool, head_rank=int)


def test_parser_types_values_like_their_defaults():
    c, given = common.parse_args(['--head=wide', '--learning_rate=1', '--max_iters=7', '--compile=False',
                                  '--head_rank=12', '--bias', '--data=123'], OPTIONS, __file__, TYPES)
    assert c['head'] == 'wide' and c['learning_rate'] == 1.0 and type(c['learning_rate']) is float
    assert c['max_iters'] == 7 and c['compile'] is False and c['head_rank'] == 12 and c['bias'] is True
    assert c['data'] == '123' and given == {'head', 'learning_rate', 'max_iters', 'compile', 'head_rank', 'bias', 'data'}
    assert common.parse_args(['--head_rank=None'], OPTIONS, __file__, TYPES)[0]['head_rank'] is None


def test_parser_config_file_then_command_line(tmp_path):
    cfg = tmp_path / 'my.py'
    cfg.write_text("max_iters = 50\nhead = 'narrow'\n")
    c, given = common.parse_args([str(cfg), '--head=wide'], OPTIONS, __file__, TYPES)
    assert c['max_iters'] == 50 and c['head'] == 'wide' and given == {'max_iters', 'head'}
    cfg.write_text("max_itres = 50\n")
    with pytest.raises(ConfigError, match='unknown option --max_itres in .*did you mean --max_iters'):
        common.parse_args([str(cfg)], OPTIONS, __file__, TYPES)


@pytest.mark.parametrize('args,msg', [(['--nope=1'], 'unknown option --nope'),
                                      (['--max_iter=1'], 'did you mean --max_iters?'),
                                      (['--max_iters=1.5'], '--max_iters expects int'),
                                      (['--max_iters=abc'], '--max_iters expects int'),
                                      (['--learning_rate=fast'], 'expects float'),
                                      (['--compile=maybe'], 'expects bool'),
                                      (['--head_rank=2.5'], 'expects int'),
                                      (['--max_iters'], '--max_iters needs a value'),
                                      (['head=wide'], 'use --key=value')])
def test_parser_rejects(args, msg):
    with pytest.raises(ConfigError, match=msg.replace('.', r'\.').replace('?', r'\?')):
        common.parse_args(args, OPTIONS, __file__, TYPES)


def test_every_script_prints_its_options_with_help():
    for script in ('train.py', 'measure.py', 'bench.py'):
        p = subprocess.run([sys.executable, script, '--help'], cwd=HERE, capture_output=True, text=True, env=CHILD_ENV)
        assert p.returncode == 0 and 'options (--key=value' in p.stdout, script
    p = subprocess.run([sys.executable, 'train.py', '--help'], cwd=HERE, capture_output=True, text=True, env=CHILD_ENV)
    assert '--head=linear' in p.stdout and 'one of linear, tied, narrow, wide' in p.stdout

# -----------------------------------------------------------------------------
# training: the paper's effect, text, resume, bad input

SMALL = dict(vocab_size=256, n_embd=32, n_head=2, block_size=8, batch_size=32, max_iters=300, warmup_iters=30,
             eval_interval=300, eval_iters=4, learning_rate=3e-3, min_lr=1e-4)


def test_wide_learns_spamlang_and_narrow_does_not(tmp_path):
    torch.set_num_threads(2)
    wide = train_run(tmp_path, 'wide', **SMALL, head='wide')
    narrow = train_run(tmp_path, 'narrow', **SMALL, head='narrow')  # default r = n_embd // 16 = 2
    assert wide['val_acc'] > 0.95, wide  # measured: 100%
    assert narrow['val_acc'] < 0.3, narrow  # measured: 3-6%
    log = read_log(tmp_path / 'wide')
    assert {'iter', 'tokens', 'val_loss', 'val_acc'} <= set(log[-1]) and log[-1]['iter'] == 300


def test_text_run_and_tokenization_cache(tmp_path):
    rng = np.random.default_rng(0)
    words = 'the head of a language model passes back only part of the gradient to its body'.split()
    text = '\n'.join(' '.join(rng.choice(words, 12)) for _ in range(300))
    path = tmp_path / 'small.txt'
    path.write_text(text)
    args = dict(data=str(path), head='wide', n_embd=32, n_head=2, block_size=16, batch_size=8, max_iters=30, learning_rate=1e-2,
                warmup_iters=5, eval_interval=30, eval_iters=2)
    last = train_run(tmp_path, 'text', **args)
    cache = tmp_path / 'small.cl100k_base.tok'
    assert cache.exists()
    ids, meta = common.load_tokens(str(cache))
    assert meta['vocab_size'] == 100_277 and meta['dtype'] == 'uint32' and ids.max() < 100_277
    assert ckpt_config(tmp_path / 'text')['vocab_size'] == 100_277
    assert last['val_loss'] < math.log(100_277) - 3  # it learned the 16-word language
    mtime = cache.stat().st_mtime_ns
    one_step = {**args, 'max_iters': 1, 'eval_iters': 1}
    train_run(tmp_path, 'text2', **one_step)
    assert cache.stat().st_mtime_ns == mtime  # reused, not re-tokenized
    path.write_text(text + '\nmore')
    train_run(tmp_path, 'text3', **one_step)
    assert cache.stat().st_mtime_ns != mtime  # the text changed, so the cache was rebuilt
    last_tok = train_run(tmp_path, 'text4', **{**one_step, 'data': str(cache)})  # a token file is used directly
    assert math.isfinite(last_tok['val_loss'])


def ckpt_config(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=False)['config']


def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
    args = ['--vocab_size=64', '--n_embd=32', '--n_head=2', '--block_size=8', '--batch_size=8', '--max_iters=600',
            '--warmup_iters=10', '--eval_interval=200', '--eval_iters=2', '--log_interval=1', '--head=wide',
            '--dropout=0.1']  # dropout, so the torch RNG state must be restored too
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    assert run_train(*args, f'--out_dir={full}')[0] == 0
    p = subprocess.Popen([sys.executable, 'train.py', *args, f'--out_dir={part}'], cwd=HERE, env=CHILD_ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_path = os.path.join(part, 'log.jsonl')
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(log_path) and sum(1 for _ in open(log_path)) > 20):
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == common.REQUEUE_EXIT, err
    stopped = torch.load(os.path.join(part, 'ckpt.pt'), weights_only=False)['iter_num']
    assert 20 <= stopped < 600 and 'saved' in out
    code, out, err = run_train(*args, f'--out_dir={part}', '--init_from=resume')
    assert code == 0, err
    a = torch.load(os.path.join(full, 'ckpt.pt'), weights_only=False)
    b = torch.load(os.path.join(part, 'ckpt.pt'), weights_only=False)
    assert a['iter_num'] == b['iter_num'] == 600
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    iters = [r['iter'] for r in read_log(part, 'train')]
    assert iters == sorted(set(iters))  # each logged step once, across the interruption


def test_bad_input_is_one_clear_line(tmp_path):
    empty = tmp_path / 'empty.txt'
    empty.write_text('')
    short = tmp_path / 'short.txt'
    short.write_text('just a few words')
    bad_ids = tmp_path / 'bad.tok'
    common.write_tokens(str(bad_ids), np.array([1, 2, 150, 3] * 100), vocab_size=100, encoding='test')
    truncated = tmp_path / 'trunc.tok'
    common.write_tokens(str(truncated), np.arange(100), vocab_size=100, encoding='test')
    with open(truncated, 'r+b') as f:
        f.truncate(os.path.getsize(truncated) - 3)
    raw = tmp_path / 'raw.bin'
    raw.write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    cases = [(['--head=mlp'], '--head must be one of linear, tied, narrow, wide'),
             (['--head=narrow', '--head_rank=0'], 'head_rank must be a positive integer'),
             (['--head=wide', '--head_rank=-2'], 'head_rank must be a positive integer'),
             (['--vocab_size=1'], 'vocab_size must be at least 2'),
             ([f'--data={tmp_path}/missing.txt'], 'not found'),
             ([f'--data={empty}'], 'empty'),
             ([f'--data={short}'], 'too short'),
             ([f'--data={bad_ids}'], 'token id 150 ≥ vocab_size 100'),
             ([f'--data={truncated}'], 'truncated'),
             ([f'--data={raw}'], 'no GBTOKENS header'),
             (['--max_iters=ten'], 'expects int'),
             (['--init_from=resume'], 'not found: start with --init_from=scratch')]
    for args, msg in cases:
        code, out, err = run_train(*args, f'--out_dir={tmp_path}/run', '--max_iters=1')
        assert code != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and 'Traceback' not in err and msg in lines[0], (args, err)
    assert not os.path.exists(tmp_path / 'run' / 'ckpt.pt')


def test_failed_start_never_overwrites_a_checkpoint(tmp_path):
    out = str(tmp_path / 'run')
    train_run(tmp_path, 'run', vocab_size=64, n_embd=16, n_head=2, max_iters=5, eval_interval=5)
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    for args in (['--head=wide'], ['--init_from=resume', '--n_embd=32'], ['--init_from=resume', '--head_rank=0']):
        code, _, err = run_train(*args, f'--out_dir={out}')
        assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before

# -----------------------------------------------------------------------------
# checkpoints that survive preemption and bad data (issue 6): real processes, injected faults

TINY_RUN = ['--vocab_size=64', '--n_embd=16', '--n_head=2', '--block_size=8', '--batch_size=8', '--warmup_iters=2',
            '--eval_iters=1', '--log_interval=1']


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    out = str(tmp_path / 'run')  # a bigger model saved every step, so most of the time is spent writing
    p = subprocess.Popen([sys.executable, 'train.py', '--vocab_size=8192', '--n_embd=128', '--n_head=2',
                          '--block_size=8', '--batch_size=2', '--eval_interval=1', '--eval_iters=1',
                          '--max_iters=10000', f'--out_dir={out}'], cwd=HERE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=CHILD_ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(os.path.join(out, 'prev_ckpt.pt')):
        time.sleep(0.01)
    time.sleep(np.random.default_rng().uniform(0, 0.5))
    p.kill()
    p.wait()
    ckpt = common.load_checkpoint(os.path.join(out, 'ckpt.pt'))  # verified: complete and unchanged
    assert ckpt['iter_num'] >= 1
    common.load_checkpoint(os.path.join(out, 'prev_ckpt.pt'))


def test_corrupt_checkpoints_are_refused_or_fall_back(tmp_path):
    out = tmp_path / 'run'
    assert run_train(*TINY_RUN, '--max_iters=4', '--eval_interval=2', f'--out_dir={out}')[0] == 0
    ckpt, prev = out / 'ckpt.pt', out / 'prev_ckpt.pt'
    assert common.load_checkpoint(str(prev))['iter_num'] == 2
    good = ckpt.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # torch.load reads this silently; the digest does not
    for bad, what in ((good[:len(good) // 2], 'truncated'), (bytes(flipped), 'bit flip')):
        ckpt.write_bytes(bad)
        code, _, err = run_train('--init_from=resume', '--max_iters=6', '--allow_changes=True', f'--out_dir={out}')
        assert code == 1 and 'truncated or corrupt' in err and '--resume_fallback=True' in err, (what, err)
        assert len(err.strip().splitlines()) == 1
        assert ckpt.read_bytes() == bad  # nothing overwritten
    code, outp, err = run_train('--init_from=resume', '--resume_fallback=True', '--max_iters=6',
                                '--allow_changes=True', f'--out_dir={out}')
    assert code == 0, err
    assert 'resuming from the previous one' in outp and 'at iter 2' in outp
    assert common.load_checkpoint(str(ckpt))['iter_num'] == 6


def test_resume_refuses_other_data_and_other_shapes(tmp_path):
    tok_a, tok_b = str(tmp_path / 'a.tok'), str(tmp_path / 'b.tok')
    rng = np.random.default_rng(0)
    common.write_tokens(tok_a, rng.integers(0, 50, 2000), vocab_size=50, encoding='enc-a')
    common.write_tokens(tok_b, rng.integers(0, 50, 2000), vocab_size=50, encoding='enc-a')
    out = str(tmp_path / 'run')
    base = [a for a in TINY_RUN if not a.startswith('--vocab_size')]
    assert run_train(*base, f'--data={tok_a}', '--max_iters=2', '--eval_interval=2', f'--out_dir={out}')[0] == 0
    saved = common.load_checkpoint(os.path.join(out, 'ckpt.pt'))['config']
    assert saved['encoding'] == 'enc-a' and saved['vocab_size'] == 50 and saved['head'] == 'linear'
    assert len(saved['data_fingerprint']) == 16 and saved['code_version']
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    # the same path, other content: a swapped data file
    os.replace(tok_b, tok_a)
    cases = [([], 'data_fingerprint'),
             (['--n_embd=32'], "--n_embd=32 differs from the checkpoint's 16"),
             (['--head=wide'], "--head='wide' differs"),
             (['--learning_rate=0.1'], '--allow_changes=True'),
             (['--encoding=cl100k_base'], "differs from the checkpoint's 'enc-a'")]
    for extra, msg in cases:
        code, _, err = run_train('--init_from=resume', f'--out_dir={out}', *extra)
        assert code == 1 and msg in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before
    code, _, err = run_train(f'--data={tok_a}', '--encoding=cl100k_base', f'--out_dir={tmp_path}/other')
    assert code == 1 and 'was tokenized with enc-a' in err, err  # a token file from another tokenizer
    code, _, err = run_train('--init_from=resume', '--max_iters=4', '--allow_changes=True', f'--out_dir={out}')
    assert code == 0, err  # intended changes (new data, more steps) are allowed when said so
    assert common.load_checkpoint(os.path.join(out, 'ckpt.pt'))['iter_num'] == 4


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / 'run'
    code, _, err = run_train(*TINY_RUN, '--learning_rate=1e30', '--warmup_iters=0', '--grad_clip=0',
                             '--max_iters=50', '--eval_interval=1000', f'--out_dir={out}')
    assert code == 1 and ('loss is nan' in err or 'loss is inf' in err), err
    assert len(err.strip().splitlines()) == 1 and 'nonfinite_batch.pt' in err
    ckpt = common.load_checkpoint(str(out / 'ckpt.pt'))
    assert all(torch.isfinite(v).all() for v in ckpt['model'].values())
    assert f"(iter {ckpt['iter_num']})" in err
    assert set(torch.load(out / 'nonfinite_batch.pt')) == {'x', 'y'}


def test_failed_save_leaves_the_previous_checkpoint(tmp_path):
    import resource
    out = tmp_path / 'run'
    assert run_train(*TINY_RUN, '--max_iters=2', '--eval_interval=2', f'--out_dir={out}')[0] == 0
    before = (out / 'ckpt.pt').read_bytes()
    limit = len(before) // 2  # the file-size limit makes the next checkpoint write fail, as a full disk would
    p = subprocess.run([sys.executable, 'train.py', '--init_from=resume', '--max_iters=4', '--allow_changes=True',
                        f'--out_dir={out}'], cwd=HERE, capture_output=True, text=True, timeout=120, env=CHILD_ENV,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert p.returncode == 1 and 'could not save' in p.stderr and 'previous checkpoint (iter 2) is intact' in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert (out / 'ckpt.pt').read_bytes() == before
    assert not [f for f in os.listdir(out) if '.tmp' in f]  # no half-written leftovers


def test_save_checkpoints_false_writes_no_checkpoint(tmp_path):
    last = train_run(tmp_path, 'run', vocab_size=64, n_embd=16, n_head=2, max_iters=4, eval_interval=2,
                        save_checkpoints=False)
    assert last['iter'] == 4 and read_log(tmp_path / 'run')[-1]['iter'] == 4
    assert not [f for f in os.listdir(tmp_path / 'run') if f.endswith('.pt')]


# -----------------------------------------------------------------------------
# measure.py


def _qr_ratio(G, W):
    """Reference r with P from a QR of W (full column rank), independent of measure.column_basis."""
    Q, _ = torch.linalg.qr(W.detach().double())
    G = G.double()
    return ((G - G @ Q @ Q.T).norm() / G.norm()).item()


def test_measure_cosine_is_sqrt_one_minus_r_squared():
    g = torch.Generator().manual_seed(0)
    for V, D, N in [(50, 5, 30), (200, 40, 7), (64, 63, 100), (30, 29, 1)]:
        W = torch.randn(V, D, generator=g)
        G = torch.randn(N, V, generator=g) * torch.rand(N, 1, generator=g)  # any G, not only softmax − onehot
        m = measure.destroyed_ratio(G, W)
        assert 0 < m['destroyed_ratio'] < 1
        assert abs(m['visible_cosine'] - math.sqrt(1 - m['destroyed_ratio'] ** 2)) < 1e-10
        assert abs(m['destroyed_ratio'] - _qr_ratio(G, W)) < 1e-10


def test_measure_zero_when_G_lies_in_col_W():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(300, 16, generator=g)
    G = torch.randn(50, 16, generator=g, dtype=torch.float64) @ W.double().T  # rows in col(W)
    assert measure.destroyed_ratio(G, W)['destroyed_ratio'] < 1e-7
    live = measure.live_ratio(G @ W.double(), G.pow(2).sum(1), measure.head_factor(W), W.size(0))
    assert live['grad_destroyed'] < 1e-5 and abs(live['grad_cosine'] - 1) < 1e-10


@pytest.mark.parametrize('V,D,N', [(400, 40, 500), (1000, 10, 200), (256, 128, 100)])
def test_measure_random_subspace_baseline(V, D, N):
    # ‖Pg‖²/‖g‖² summed over N isotropic rows is Beta(ND/2, N(V−D)/2): mean D/V, std √(2(D/V)(1 − D/V)/(NV))
    std = math.sqrt(2 * (D / V) * (1 - D / V) / (N * V))
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        W, G = torch.randn(V, D, generator=g), torch.randn(N, V, generator=g)
        r = measure.destroyed_ratio(G, W)['destroyed_ratio']
        assert abs(r ** 2 - (1 - D / V)) < 5 * std, (r ** 2, 1 - D / V, std)


LIVE_HEADS = [('linear', None), ('tied', None), ('wide', None), ('wide', 48), ('narrow', None), ('narrow', 1), ('narrow', 7)]


@pytest.mark.parametrize('head,rank', LIVE_HEADS)
def test_measure_live_formula_equals_qr_projection(head, rank):
    torch.manual_seed(0)
    model = GPT(tiny(head, head_rank=rank, vocab_size=300))  # padded to 320: padded rows must be excluded
    W = model.lm_head.effective_weight()
    # QR of a matrix with W's column space: W itself, or B for W = B·A (A has full row rank when r ≤ D)
    basis = model.lm_head.B[:300] if head in FACTORIZED and model.lm_head.rank < 32 else W
    idx, y = torch.randint(0, 300, (4, 8)), torch.randint(0, 300, (4, 8))
    logits, loss = model(idx, y)
    ref = _qr_ratio(measure.logit_grad(logits.detach().reshape(-1, 300), y.reshape(-1)), basis)
    assert abs(measure.destroyed_ratio(measure.logit_grad(logits.detach().reshape(-1, 300), y.reshape(-1)), W)
               ['destroyed_ratio'] / ref - 1) < 1e-9
    live = measure.live_meter(logits, y, W)  # the eval path: Σp² − 2p_y + 1 and P·W − W[y]
    assert abs(live['grad_destroyed'] / ref - 1) < 1e-5
    assert abs(live['grad_cosine'] / math.sqrt(1 - ref ** 2) - 1) < 1e-5
    meter = measure.StepMeter(model.lm_head)  # the per-step path: the naive loss fills the meter's dict
    logits, loss = model(idx, y, stats=meter.stats)
    (loss * 7.0).backward()
    step = meter.read()
    assert abs(step['grad_destroyed'] / ref - 1) < 1e-5
    assert abs(step['grad_cosine'] / math.sqrt(1 - ref ** 2) - 1) < 1e-5
    assert meter.read() is None  # consumed
    with torch.no_grad():
        model(idx, y)
    assert meter.read() is None  # no gradient, no reading
    if 'stats' in GPT.forward.__code__.co_varnames:  # the fused loss fills the meter's dict instead of hooks
        model.zero_grad()
        _, loss = model(idx, y, loss='fused', stats=meter.stats)
        loss.backward()
        fused = meter.read()
        assert abs(fused['grad_destroyed'] / ref - 1) < 1e-5
        assert abs(fused['grad_cosine'] / math.sqrt(1 - ref ** 2) - 1) < 1e-5


@pytest.mark.parametrize('cond', [1.0, 30.0, 1e3, 1e5, float('inf')])
def test_measure_live_factor_on_ill_conditioned_and_singular_W(cond):
    g = torch.Generator().manual_seed(0)
    V, D = 500, 24
    U, _ = torch.linalg.qr(torch.randn(V, D, generator=g, dtype=torch.float64))
    Vt, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(cond), D, dtype=torch.float64) if math.isfinite(cond) else \
        torch.cat([torch.ones(D - 5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)])  # rank D − 5
    W = ((U * s) @ Vt.T * 0.02).float()  # fp32, as a trained head is stored
    Q = U if math.isfinite(cond) else U[:, :D - 5]
    G = torch.randn(64, V, generator=g, dtype=torch.float64) + 5 * torch.randn(64, D, generator=g, dtype=torch.float64) @ U.T
    ref = ((G - G @ Q @ Q.T).norm() / G.norm()).item()
    live = measure.live_ratio(G @ W.double(), G.pow(2).sum(1), measure.head_factor(W), W.size(0))
    assert abs(live['grad_destroyed'] / ref - 1) < 1e-5, (live, ref)


@pytest.mark.parametrize('head', ['linear', 'narrow'])
def test_measure_realizable_logit_update_has_rank_at_most_2D(head):
    torch.manual_seed(0)
    D, V = 8, 100
    model = GPT(tiny(head, n_embd=D, vocab_size=V, block_size=16, head_rank=2 if head == 'narrow' else None))
    idx, y = torch.randint(0, V, (4, 16)), torch.randint(0, V, (4, 16))
    h = model.hidden(idx)
    h.retain_grad()
    logits = model.lm_head(h)
    F_ = torch.nn.functional
    F_.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction='sum').backward()
    H, dH = h.detach().reshape(-1, D), h.grad.reshape(-1, D)
    lm = model.lm_head
    W = lm.effective_weight().detach()
    if head == 'linear':
        dW = lm.weight.grad[:V]
    else:  # W = B·A: first-order change of the product
        dW = lm.B.grad[:V] @ lm.A.detach() + lm.B.detach()[:V] @ lm.A.grad
    H, dH, W, dW = H.double(), dH.double(), W.double(), dW.double()  # fp64 products: rank is exact
    M = dH @ W.T + H @ dW.T  # (N, V): the logit change of a joint gradient step
    G = measure.logit_grad(logits.detach().reshape(-1, V), y.reshape(-1))
    torch.testing.assert_close(dH, G @ W, rtol=1e-4, atol=1e-6)  # autograd's ∇h is G·W
    assert torch.linalg.matrix_rank(M).item() <= 2 * D
    assert torch.linalg.matrix_rank(G).item() > 2 * D  # so the bound bites


def test_measure_spectrum_rank_and_gram_paths():
    g = torch.Generator().manual_seed(0)
    V, D = 20, 8
    W = torch.randn(V, D, generator=g)
    H, y = torch.randn(200, D, generator=g), torch.randint(0, V, (200,), generator=g)
    sig2 = measure.spectrum(H, y, W, chunk=64)  # N > V: GᵀG
    s = measure.spectrum_stats(sig2, D)
    assert s['numerical_rank'] == V - 1  # rows of G sum to 0: rank ≤ V − 1, and reached here
    G = measure.logit_grad(H @ W.T, y)
    torch.testing.assert_close(sig2[:V], torch.linalg.svdvals(G).pow(2), rtol=1e-9, atol=1e-12)
    W2 = torch.randn(50, D, generator=g)
    y2 = torch.randint(0, 50, (30,), generator=g)
    sig2 = measure.spectrum(H[:30], y2, W2, chunk=8)  # N ≤ V: the N×N Gram, assembled from 4×4 blocks
    torch.testing.assert_close(sig2, torch.linalg.svdvals(measure.logit_grad(H[:30] @ W2.T, y2)).pow(2),
                               rtol=1e-5, atol=1e-9)  # fp32 logits, summed in another order
    s = measure.spectrum_stats(sig2, 4, top_k=10)
    energy = sig2.cumsum(0) / sig2.sum()
    assert s['ey_k'] == 8 and abs(s['ey_floor'] - (1 - energy[7].item())) < 1e-12 and abs(s['energy_top_k'] - energy[9].item()) < 1e-12
    assert energy[s['components_0.7'] - 1] >= 0.7 > energy[s['components_0.7'] - 2]


def test_measure_direction_test_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    V, D, N = 60, 6, 40
    W, H = torch.randn(V, D, generator=g), torch.randn(N, D, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    rows = measure.direction_test(H, y, W, chunk=16, step_sizes=(0.01, 1.0))
    Wd, Hd = W.double(), H.double()
    Z = Hd @ Wd.T
    G = measure.logit_grad(Z, y)
    uH = G @ Wd @ Wd.T
    dirs = {'G': G, 'H': uH, 'HW': uH + Hd @ (G.T @ Hd / N).T}  # the head's step of the mean loss
    loss = lambda z: torch.nn.functional.cross_entropy(z, y).item()
    for row in rows:
        for name, u in dirs.items():
            dec = loss(Z) - loss(Z - row['step'] * math.sqrt(N) * u / u.norm())
            assert abs(row[f'decrease_{name}'] - dec) < 1e-9 * max(1, abs(dec))
    assert rows[0]['decrease_G'] > rows[0]['decrease_H'] > 0  # the direct gradient is steepest to first order
    assert rows[0]['decrease_G'] > rows[0]['decrease_HW'] > 0


def test_measure_destroyed_grows_as_head_rank_shrinks():
    V, D = 512, 64
    ratios = []
    for rank in (64, 16, 4, 1):
        m = measure.main(['--init', f'--vocab_size={V}', f'--n_embd={D}', '--head=wide', f'--head_rank={rank}',
                          '--n_layer=1', '--n_tokens=1024', '--spectrum_tokens=0', '--direction_tokens=0'])
        assert m['rank_W'] == rank and m['D'] == D and m['V'] == V
        assert abs(m['destroyed_ratio'] - m['random_baseline']) < 0.02  # at init: a random rank-r subspace
        ratios.append(m['destroyed_ratio'])
    assert ratios == sorted(ratios) and ratios[-1] - ratios[0] > 0.05, ratios


def test_measure_checkpoint_cli_json_and_chunking(tmp_path):
    train_run(tmp_path, 'run', vocab_size=128, n_embd=16, n_head=2, block_size=8, max_iters=30, eval_interval=30,
                 eval_iters=1)
    ckpt = str(tmp_path / 'run' / 'ckpt.pt')
    out = tmp_path / 'm.json'
    m = measure.main([f'--ckpt={ckpt}', '--n_tokens=300', '--batch_size=8', '--chunk=64', '--top_k=20',
                      f'--json={out}'])
    res = json.loads(out.read_text())
    for key in ('destroyed_ratio', 'visible_cosine', 'random_baseline', 'n_tokens', 'V', 'D', 'per_token',
                'spectrum', 'direction'):
        assert key in res, key
    assert res['n_tokens'] == 300 and res['V'] == 128 and res['D'] == 16 and 'iter 30' in res['source']
    assert abs(res['random_baseline'] - math.sqrt(1 - 16 / 128)) < 1e-12
    for key in ('numerical_rank', 'effective_rank', 'energy_top_r', 'energy_top_2r', 'energy_top_k',
                'components_0.7', 'components_0.99', 'components_0.999', 'ey_floor', 'ey_k'):
        assert key in res['spectrum'], key
    assert res['per_token']['q05'] <= res['per_token']['q50'] <= res['per_token']['q95'] <= 1
    # the same tokens, from the checkpoint's model by hand: the QR reference; and chunking changes nothing
    H, Y, W, _, _, _ = measure.source_ckpt(measure.parse_args([f'--ckpt={ckpt}', '--n_tokens=300']), 'cpu')
    H, Y = H[:300], Y[:300]
    ref = _qr_ratio(measure.logit_grad(H @ W.detach().T, Y), W)
    assert abs(m['destroyed_ratio'] / ref - 1) < 1e-9
    m7 = measure.measure(H, Y, W, chunk=7, spectrum_tokens=100, direction_tokens=50)
    m300 = measure.measure(H, Y, W, chunk=300, spectrum_tokens=100, direction_tokens=50)
    assert abs(m7['destroyed_ratio'] - m300['destroyed_ratio']) < 1e-12
    assert m7['spectrum']['numerical_rank'] == m300['spectrum']['numerical_rank']
    assert abs(m7['direction']['steps'][2]['ratio_hidden_head'] - m300['direction']['steps'][2]['ratio_hidden_head']) < 1e-9


def test_measure_plot(tmp_path):
    pytest.importorskip('matplotlib')
    measure.main(['--init', '--n_tokens=256', '--direction_tokens=0', f'--plot={tmp_path}/e.png'])
    assert (tmp_path / 'e.png').stat().st_size > 1000


def test_measure_live_meter_in_train_log(tmp_path):
    train_run(tmp_path, 'run', vocab_size=128, n_embd=16, n_head=2, block_size=8, max_iters=20, eval_interval=10,
                 eval_iters=1, log_interval=5, meter_every_step=True)
    log = read_log(tmp_path / 'run')
    evals = [r for r in log if r['type'] == 'eval']
    steps = [r for r in log if r['type'] in ('train', 'meter')]
    assert [r['iter'] for r in evals] == [0, 10, 20]
    assert [r['iter'] for r in steps] == list(range(1, 21))  # every step metered
    for r in evals + steps:
        assert 0 < r['grad_destroyed'] < 1 and abs(r['grad_destroyed'] ** 2 + r['grad_cosine'] ** 2 - 1) < 1e-9
    assert 'loss' in steps[4] and 'loss' not in steps[0]  # log_interval steps keep their full record
    train_run(tmp_path, 'plain', vocab_size=128, n_embd=16, n_head=2, block_size=8, max_iters=4, eval_interval=4,
                 eval_iters=1, log_interval=2)
    log = read_log(tmp_path / 'plain')
    assert all('grad_destroyed' in r for r in log if r['type'] == 'eval')  # evals always carry the meter
    assert not any('grad_destroyed' in r for r in log if r['type'] == 'train')  # steps only when asked


def _tiny_hf(path, arch):
    transformers = pytest.importorskip('transformers')
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    text = ' '.join(['the head of a language model passes back only part of the gradient to its body'] * 40)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk)
    V = len(tok) + 7  # the output matrix has padded rows beyond the tokenizer, as in Pythia
    torch.manual_seed(0)
    if arch == 'gpt2':  # tied lm_head, ln_f
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                      eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    else:  # GPTNeoX (Pythia): untied embed_out, final_layer_norm
        cfg = transformers.GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False,
                                         bos_token_id=0, eos_token_id=0)
        model = transformers.GPTNeoXForCausalLM(cfg)
    with torch.no_grad():  # trained-looking final norm, so skipping it would show
        for name, p in model.named_parameters():
            if 'ln_f' in name or 'final_layer_norm' in name:
                p.copy_(torch.randn_like(p))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / 'text.txt').write_text(text)
    return tok


@pytest.mark.parametrize('arch', ['gpt2', 'gpt_neox'])
def test_measure_hf_tiny_model_offline(tmp_path, monkeypatch, arch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TRANSFORMERS_OFFLINE', '1')
    tok = _tiny_hf(tmp_path, arch)
    model, tok2, W, bias = measure.load_hf(str(tmp_path))
    out = model.get_output_embeddings().weight
    assert W.data_ptr() == out.data_ptr() and W.shape == (len(tok), 32) and out.size(0) == len(tok) + 7
    tied = W.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == (arch == 'gpt2')
    c = measure.parse_args([f'--hf={tmp_path}', f'--data={tmp_path}/text.txt', '--block_size=32', '--n_tokens=256',
                            '--batch_size=4'])
    H, Y, W, bias, _, desc = measure.source_hf(c, 'cpu')
    ids = tok(open(tmp_path / 'text.txt').read(), return_tensors='pt')['input_ids'][0]
    xs = torch.stack([ids[k * 32:(k + 1) * 32] for k in range(8)])
    ys = torch.stack([ids[k * 32 + 1:(k + 1) * 32 + 1] for k in range(8)])
    with torch.no_grad():
        logits = model(xs).logits[..., :len(tok)].reshape(-1, len(tok))  # the model's own logits
    assert torch.equal(Y, ys.reshape(-1))
    torch.testing.assert_close(H @ W.detach().T, logits, rtol=1e-4, atol=1e-4)  # final norm respected
    ref = _qr_ratio(measure.logit_grad(logits, Y), W)
    code = subprocess.run([sys.executable, 'measure.py', f'--hf={tmp_path}', f'--data={tmp_path}/text.txt',
                           '--block_size=32', '--n_tokens=256', '--batch_size=4', '--spectrum_tokens=128',
                           '--direction_tokens=64', f'--json={tmp_path}/m.json'], cwd=HERE, capture_output=True,
                          text=True, timeout=120, env={**CHILD_ENV, 'HF_HUB_OFFLINE': '1'})
    assert code.returncode == 0, code.stderr
    res = json.loads((tmp_path / 'm.json').read_text())
    assert res['V'] == len(tok) and res['D'] == 32 and res['n_tokens'] == 256
    assert abs(res['destroyed_ratio'] / ref - 1) < 1e-6, (res['destroyed_ratio'], ref)
    assert ('untied' in res['source']) == (arch != 'gpt2')


def test_measure_bad_input_is_one_clear_line(tmp_path):
    garbage = tmp_path / 'bad.pt'
    garbage.write_bytes(b'not a checkpoint')
    nanogpt = tmp_path / 'nanogpt.pt'
    torch.save({'model_args': {}, 'iter_num': 3}, nanogpt)  # another project's checkpoint
    for args, msg in [([f'--ckpt={garbage}'], 'truncated or corrupt'), ([f'--ckpt={nanogpt}'], 'not a checkpoint of this project'),
                      ([f'--ckpt={tmp_path}'], 'is a folder'),
                      (['--init', '--nope=1'], 'unknown option --nope'),
                      ([], 'exactly one of'),
                      (['--init', '--hf=gpt2'], 'exactly one of'),
                      (['--init', '--head=mlp'], 'unknown head'),
                      (['--init', '--n_tokens=lots'], 'expects int'),
                      (['--init', '--data=/nonexistent.txt'], 'not found')]:
        with pytest.raises(ConfigError, match=msg):
            measure.main(args)
    # the command line: one line on stderr, no traceback, exit status 1; --hf without transformers installed
    no_tf = ("import sys, runpy; sys.modules['transformers'] = None; sys.argv = ['measure.py', '--hf=gpt2']; "
             "runpy.run_path('measure.py', run_name='__main__')")
    for args, msg in [(['measure.py', f'--ckpt={tmp_path}/missing.pt'], 'not found'),
                      (['-c', no_tf], 'needs the transformers package')]:
        p = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=120, env=CHILD_ENV)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and 'Traceback' not in p.stderr and msg in lines[0], (args, p.stderr)

# -----------------------------------------------------------------------------
# the fused loss, compile, DDP



def _naive_vs_fused(model, idx, y, chunk):
    """Loss and every parameter's gradient, on the naive path and on the fused path with `chunk` tokens."""
    out = []
    for kind in ('naive', 'fused'):
        model.zero_grad()
        if kind == 'naive':
            loss = model(idx, y)[1]
        else:
            loss = model.lm_head.fused_loss(model.hidden(idx), y, chunk_size=chunk)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    return out


@pytest.mark.parametrize('head,rank', [('linear', None), ('tied', None), ('narrow', 3), ('wide', None), ('wide', 48)])
def test_fused_loss_matches_naive_every_head(head, rank):
    torch.manual_seed(0)
    model = GPT(tiny(head, head_rank=rank, vocab_size=70, block_size=9))  # V = 70 padded to 128: padding stays out
    idx = torch.randint(0, 70, (3, 9))                       # N = 27 tokens, chunks of 4: the last one holds 3
    y = torch.randint(0, 70, (3, 9))
    y[0, :5] = -1                                            # ignored targets
    (ln, gn), (lf, gf) = _naive_vs_fused(model, idx, y, chunk=4)
    torch.testing.assert_close(lf, ln, rtol=1e-6, atol=1e-6)
    for name in gn:  # hidden states (via the backbone's weights) and the head's weights or factors
        torch.testing.assert_close(gf[name], gn[name], rtol=1e-5, atol=1e-7, msg=name)
    # the same through GPT.forward, the path train.py takes
    assert model(idx, y, loss='fused')[0] is None
    torch.testing.assert_close(model(idx, y, loss='fused')[1], ln, rtol=1e-6, atol=1e-6)


def test_fused_loss_function_gradients_and_bf16():
    torch.manual_seed(0)
    N, V, D = 37, 300, 16
    h = torch.randn(N, D, requires_grad=True)
    W = (torch.randn(V, D) * 0.5).requires_grad_()
    y = torch.randint(0, V, (N,))
    y[::5] = -1
    ref = F.cross_entropy(h @ W.T, y, ignore_index=-1)
    dh, dW = torch.autograd.grad(ref, (h, W))
    for chunk in (1, 8, 37, 64):
        loss = fused_linear_cross_entropy(h, W, y, chunk_size=chunk)
        gh, gW = torch.autograd.grad(2.5 * loss, (h, W))  # an upstream scale, as under grad accumulation
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gh, 2.5 * dh, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gW, 2.5 * dW, rtol=1e-5, atol=1e-7)
    # bf16 inputs, and fp32 inputs under bf16 autocast: bf16 matmuls, fp32 softmax, as on the naive path
    hb, Wb = h.detach().bfloat16().requires_grad_(), W.detach().bfloat16().requires_grad_()
    loss = fused_linear_cross_entropy(hb, Wb, y, chunk_size=8)
    gh, gW = torch.autograd.grad(loss, (hb, Wb))
    assert gh.dtype == gW.dtype == torch.bfloat16 and loss.dtype == torch.float32
    ref_b = F.cross_entropy((hb @ Wb.T).float(), y, ignore_index=-1)
    rh, rW = torch.autograd.grad(ref_b, (hb, Wb))
    torch.testing.assert_close(loss, ref_b, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gh.float(), rh.float(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gW.float(), rW.float(), rtol=2e-2, atol=2e-3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss_ac = fused_linear_cross_entropy(h, W, y, chunk_size=8)
    torch.testing.assert_close(loss_ac, ref, rtol=2e-2, atol=2e-2)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss_ac, (h, W)))


@pytest.mark.parametrize('head', ['linear', 'narrow'])
def test_fused_stats_feed_the_live_meter(head):
    torch.manual_seed(0)
    model = GPT(tiny(head, vocab_size=70))
    idx, y = torch.randint(0, 70, (4, 8)), torch.randint(0, 70, (4, 8))
    y[1, :3] = -1
    stats = {}
    with torch.no_grad():
        model(idx, y, loss='fused', stats=stats)
        logits = model(idx)[0].reshape(-1, 70)
    W = model.lm_head.effective_weight().detach()
    yy = y.reshape(-1)
    G = torch.softmax(logits, -1)
    G[yy >= 0, yy[yy >= 0]] -= 1
    G[yy < 0] = 0                                            # (N, V), unscaled: softmax − onehot
    torch.testing.assert_close(stats['gsq'], G.square().sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats['gW'], G @ W, rtol=1e-4, atol=1e-6)
    assert stats['n_valid'] == 29
    r = measure.live_ratio(stats['gW'], stats['gsq'], measure.head_factor(W), W.size(0))['grad_destroyed']
    assert abs(r - measure.live_meter(logits, y, W)['grad_destroyed']) < 1e-5
    # a training step with the meter reads the same stats from the fused path, at no extra pass
    meter = measure.StepMeter(model.lm_head)
    model(idx, y, loss='fused', stats=meter.stats)[1].backward()
    assert abs(meter.read()['grad_destroyed'] - r) < 1e-5


def test_loss_flag_and_compiled_training_matches_eager(tmp_path):
    code, _, err = run_train('--loss=exact', f'--out_dir={tmp_path}/a')
    assert code == 1 and '--loss must be one of auto, naive, fused' in err
    for V, want in ((64, 'naive'), (8192, 'fused')):
        train_run(tmp_path, f'V{V}', vocab_size=V, max_iters=1, eval_iters=1, n_layer=1)
        assert read_log(tmp_path / f'V{V}', 'config')[0]['loss'] == want
    args = dict(vocab_size=70, n_embd=32, n_head=2, block_size=8, batch_size=8, max_iters=3, warmup_iters=1,
                eval_interval=3, eval_iters=2, log_interval=1, head='wide')
    runs = {name: (train_run(tmp_path, name, **args, **kw), read_log(tmp_path / name))
            for name, kw in [('eager', dict(loss='naive')), ('fused', dict(loss='fused')),
                             ('compiled', dict(loss='fused', compile=True))]}
    losses = {name: [r['loss'] for r in log if r['type'] == 'train'] for name, (_, log) in runs.items()}
    # step 0's loss precedes any update: equal to fp32 rounding; later steps see Adam's updates, still close
    for name in ('fused', 'compiled'):
        assert abs(losses[name][0] - losses['eager'][0]) < 1e-5, losses
        assert np.allclose(losses[name], losses['eager'], rtol=1e-3), losses
        assert abs(runs[name][0]['val_loss'] - runs['eager'][0]['val_loss']) < 1e-3
    state = torch.load(tmp_path / 'compiled' / 'ckpt.pt', weights_only=False)['model']
    assert not any(k.startswith('_orig_mod') for k in state)  # the eager module is saved, loadable as is
    GPT(GPTConfig(**{k: args.get(k, getattr(GPTConfig, k)) for k in common.MODEL_KEYS})).load_state_dict(state)


def test_torchrun_two_processes_match_one(tmp_path):
    args = ['--vocab_size=64', '--n_embd=32', '--n_head=2', '--block_size=8', '--batch_size=8', '--max_iters=20',
            '--warmup_iters=5', '--eval_interval=20', '--eval_iters=2', '--log_interval=5', '--head=wide',
            '--gradient_accumulation_steps=2']  # the global batch: 2 micro-batches of 8 sequences
    env = CHILD_ENV  # 2 processes on 2 cores: one thread each
    one = subprocess.run([sys.executable, 'train.py', *args, f'--out_dir={tmp_path}/one'], cwd=HERE, env=env,
                         capture_output=True, text=True, timeout=120)
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          'train.py', *args, f'--out_dir={tmp_path}/two'], cwd=HERE, env=env,
                         capture_output=True, text=True, timeout=180)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('2 processes') == 1 and two.stdout.count('eval 20:') == 1  # only rank 0 speaks
    a = torch.load(tmp_path / 'one' / 'ckpt.pt', weights_only=False)
    b = torch.load(tmp_path / 'two' / 'ckpt.pt', weights_only=False)
    assert a['iter_num'] == b['iter_num'] == 20
    # each process took a different micro-batch (had both taken the same, the mean gradient would differ)
    for k in a['model']:
        torch.testing.assert_close(b['model'][k], a['model'][k], rtol=1e-4, atol=1e-5, msg=k)
    la, lb = read_log(tmp_path / 'one'), read_log(tmp_path / 'two')
    assert abs(la[-1]['val_loss'] - lb[-1]['val_loss']) < 1e-4
    assert len(la) == len(lb)

