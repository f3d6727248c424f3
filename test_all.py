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

import spamlang
import train
from model import FACTORIZED, GPT, GPTConfig, HEADS

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny(head='linear', **kw):
    return GPTConfig(**{**dict(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=32, head=head), **kw})


def run_train(*args, timeout=300):
    """`python train.py args` in a real process; returns (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, os.path.join(HERE, 'train.py'), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=HERE)
    return p.returncode, p.stdout, p.stderr


def train_inproc(tmp_path, name, **overrides):
    cfg = {**train.DEFAULTS, 'out_dir': str(tmp_path / name), 'log_interval': 10**9, **overrides}
    return train.train(cfg, set(overrides))


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]

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

def test_parser_good_values():
    c, given = train.parse_args(['--head=wide', '--learning_rate=1', '--max_iters=7', '--compile=False',
                                 '--head_rank=12', '--bias=true', '--data=123'])
    assert c['head'] == 'wide' and c['learning_rate'] == 1.0 and type(c['learning_rate']) is float
    assert c['max_iters'] == 7 and c['compile'] is False and c['head_rank'] == 12 and c['bias'] is True
    assert c['data'] == '123' and given == {'head', 'learning_rate', 'max_iters', 'compile', 'head_rank', 'bias', 'data'}
    assert train.parse_args(['--head_rank=None'])[0]['head_rank'] is None


@pytest.mark.parametrize('args,msg', [(['--nope=1'], 'unknown option --nope; allowed: out_dir'),
                                      (['--max_iters=1.5'], '--max_iters expects int'),
                                      (['--max_iters=abc'], '--max_iters expects int'),
                                      (['--learning_rate=fast'], 'expects float'),
                                      (['--compile=maybe'], 'expects bool'),
                                      (['--head_rank=2.5'], 'expects int'),
                                      (['head=wide'], 'use --key=value')])
def test_parser_rejects(args, msg):
    with pytest.raises(train.ConfigError, match=msg.replace('.', r'\.')):
        train.parse_args(args)

# -----------------------------------------------------------------------------
# training: the paper's effect, text, resume, bad input

SMALL = dict(vocab_size=256, n_embd=32, n_head=2, block_size=8, batch_size=32, max_iters=600, warmup_iters=30,
             eval_interval=600, eval_iters=4, learning_rate=1e-2, min_lr=1e-3)


def test_wide_learns_spamlang_and_narrow_does_not(tmp_path):
    torch.set_num_threads(2)
    wide = train_inproc(tmp_path, 'wide', **SMALL, head='wide')
    narrow = train_inproc(tmp_path, 'narrow', **SMALL, head='narrow', head_rank=1)
    assert wide['val_acc'] > 0.95, wide
    assert narrow['val_acc'] < 0.5, narrow
    log = read_log(tmp_path / 'wide')
    assert {'iter', 'tokens', 'val_loss', 'val_acc'} <= set(log[-1]) and log[-1]['iter'] == 600


def test_text_run_and_tokenization_cache(tmp_path):
    rng = np.random.default_rng(0)
    words = 'the head of a language model passes back only part of the gradient to its body'.split()
    text = '\n'.join(' '.join(rng.choice(words, 12)) for _ in range(300))
    path = tmp_path / 'small.txt'
    path.write_text(text)
    args = dict(data=str(path), head='wide', n_embd=32, n_head=2, block_size=16, batch_size=8, max_iters=30,
                warmup_iters=5, eval_interval=30, eval_iters=2)
    last = train_inproc(tmp_path, 'text', **args)
    cache = tmp_path / 'small.cl100k_base.tok'
    assert cache.exists()
    ids, meta = train.load_tokens(str(cache))
    assert meta['vocab_size'] == 100_277 and meta['dtype'] == 'uint32' and ids.max() < 100_277
    assert ckpt_config(tmp_path / 'text')['vocab_size'] == 100_277
    assert last['val_loss'] < math.log(100_277) - 3  # it learned the 16-word language
    mtime = cache.stat().st_mtime_ns
    one_step = {**args, 'max_iters': 1, 'eval_iters': 1}
    train_inproc(tmp_path, 'text2', **one_step)
    assert cache.stat().st_mtime_ns == mtime  # reused, not re-tokenized
    path.write_text(text + '\nmore')
    train_inproc(tmp_path, 'text3', **one_step)
    assert cache.stat().st_mtime_ns != mtime  # the text changed, so the cache was rebuilt
    last_tok = train_inproc(tmp_path, 'text4', **{**one_step, 'data': str(cache)})  # a token file is used directly
    assert math.isfinite(last_tok['val_loss'])


def ckpt_config(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=False)['config']


def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
    args = ['--vocab_size=64', '--n_embd=32', '--n_head=2', '--block_size=8', '--batch_size=8', '--max_iters=1500',
            '--warmup_iters=10', '--eval_interval=500', '--eval_iters=2', '--log_interval=1', '--head=wide',
            '--dropout=0.1']  # dropout, so the torch RNG state must be restored too
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    assert run_train(*args, f'--out_dir={full}')[0] == 0
    p = subprocess.Popen([sys.executable, 'train.py', *args, f'--out_dir={part}'], cwd=HERE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_path = os.path.join(part, 'log.jsonl')
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(log_path) and sum(1 for _ in open(log_path)) > 50):
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == train.REQUEUE_EXIT, err
    stopped = torch.load(os.path.join(part, 'ckpt.pt'), weights_only=False)['iter_num']
    assert 50 <= stopped < 1500 and 'saved' in out
    code, out, err = run_train(*args, f'--out_dir={part}', '--init_from=resume')
    assert code == 0, err
    a = torch.load(os.path.join(full, 'ckpt.pt'), weights_only=False)
    b = torch.load(os.path.join(part, 'ckpt.pt'), weights_only=False)
    assert a['iter_num'] == b['iter_num'] == 1500
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    iters = [r['iter'] for r in read_log(part) if 'loss' in r]
    assert iters == sorted(set(iters))  # each logged step once, across the interruption


def test_bad_input_is_one_clear_line(tmp_path):
    empty = tmp_path / 'empty.txt'
    empty.write_text('')
    short = tmp_path / 'short.txt'
    short.write_text('just a few words')
    bad_ids = tmp_path / 'bad.tok'
    train.write_tokens(str(bad_ids), np.array([1, 2, 150, 3] * 100), vocab_size=100, encoding='test')
    truncated = tmp_path / 'trunc.tok'
    train.write_tokens(str(truncated), np.arange(100), vocab_size=100, encoding='test')
    with open(truncated, 'r+b') as f:
        f.truncate(os.path.getsize(truncated) - 3)
    raw = tmp_path / 'raw.bin'
    raw.write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    cases = [(['--head=mlp'], 'unknown head'),
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
             (['--init_from=resume'], 'does not exist')]
    for args, msg in cases:
        code, out, err = run_train(*args, f'--out_dir={tmp_path}/run', '--max_iters=1')
        assert code != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and 'Traceback' not in err and msg in lines[0], (args, err)
    assert not os.path.exists(tmp_path / 'run' / 'ckpt.pt')


def test_failed_start_never_overwrites_a_checkpoint(tmp_path):
    out = str(tmp_path / 'run')
    train_inproc(tmp_path, 'run', vocab_size=64, n_embd=16, n_head=2, max_iters=5, eval_interval=5)
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    for args in (['--head=wide'], ['--init_from=resume', '--n_embd=32'], ['--init_from=resume', '--head_rank=0']):
        code, _, err = run_train(*args, f'--out_dir={out}')
        assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before
