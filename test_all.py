"""
The test suite, and the project's specification: what each module is for, checked against independent
references (hand-built cases, float64 QR, explicit softmax, autograd) on CPU, with no GPU and no network.

    python -m pytest -q test_all.py                  # everything: 2.5 minutes on 2 idle cores
    python -m pytest -q test_all.py -m "not slow"    # the in-process tests only: under 10 seconds

Tests marked `slow` run train.py, measure.py, bench.py, sample.py or torchrun in subprocesses. Sections, in
order: model, SpamLang, options, data, checkpoints, train.py (subprocesses), measure.py, the fused
loss / autocast / compile / DDP, bench.py, sample.py. Tolerances come from the arithmetic: fp32 rounding
(≈ 1e-7 relative, 1e-5 after the sums of a meter), bf16 and fp16 epsilons (torch.finfo), or the standard
error of a random quantity.
"""
import csv
import glob
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import matplotlib  # noqa: F401  (requirements.txt: a missing one fails the suite, it is never skipped)
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers  # requirements.txt, as matplotlib
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import bench
import checkpoint
import estimate
import hmm
import options
import runtime
import textdata
import meter
import mfu
import measure
import reproduce
import reproduce_remedies
import reproduce_runs
import reproduce_text
import spamlang
from options import ConfigError
from fused_loss import cuda_kernel
from model import FACTORIZED, FUSED_FROM_VOCAB, GPT, GPTConfig, HEADS, MODEL_KEYS, fused_linear_cross_entropy

HERE = os.path.dirname(os.path.abspath(__file__))
# torchrun's variables: a stray one in the test's environment would turn every child into a DDP process
DDP_VARS = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'GROUP_WORLD_SIZE',
            'ROLE_RANK', 'ROLE_WORLD_SIZE', 'ROLE_NAME', 'MASTER_ADDR', 'MASTER_PORT')


def child_env(environ, gpu=False):
    """The environment of a child process: without torchrun's variables, one thread (tiny models gain nothing
    from more, and oversubscribed cores run many times slower), and no GPU unless asked: the references the
    tests compare with are CPU fp32, so a child's --device=auto must be the CPU on a CUDA machine too."""
    env = {k: v for k, v in environ.items() if k not in DDP_VARS and not k.startswith('TORCHELASTIC_')}
    return {**env, 'OMP_NUM_THREADS': '1', **({} if gpu else {'CUDA_VISIBLE_DEVICES': ''})}


CHILD_ENV = child_env(os.environ)
GPU_ENV = child_env(os.environ, gpu=True)  # for the tests marked cuda
# CUDA behaviour has its own tests, run only where torch sees a GPU: the one skip this suite allows
# (pytest -rs lists them)


def cuda_only(test):
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
    return pytest.mark.cuda(skip(test))


def measure_main(args):
    """measure.py in this process, on the CPU (its --device=auto would take a GPU where there is one)."""
    return measure.main([*args, '--device=cpu'])


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """No test leaves the process-wide thread count changed."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny(head='linear', **kw):
    defaults = dict(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=32, head=head)
    return GPTConfig(**{**defaults, **kw})


def run_train(*args, timeout=300):
    """`python train.py args` in a real process; returns (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, os.path.join(HERE, 'train.py'), *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, cwd=HERE, env=CHILD_ENV)
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


def rows_written(out_dir):
    """Lines of a log.jsonl that a running process is still writing (a last partial line is not parsed)."""
    path = os.path.join(out_dir, 'log.jsonl')
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def softmax_minus_onehot(logits, targets):
    """G = softmax(z) − onehot(y) in float64, written out: the reference for measure.logit_grad and meters."""
    z = logits.detach().double().reshape(-1, logits.size(-1))
    y = targets.reshape(-1)
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    p[torch.arange(len(y)), y] -= 1
    return p


def cross_entropy_ref(logits, targets):
    """Per-token −log softmax(z)_y in float64, written out. (n,)"""
    z = logits.detach().double().reshape(-1, logits.size(-1))
    y = targets.reshape(-1)
    m = z.max(1).values
    return m + torch.log(torch.exp(z - m[:, None]).sum(1)) - z[torch.arange(len(y)), y]


def qr_ratio(G, basis):
    """Reference r = ‖G − P G‖/‖G‖ with P from a float64 QR of `basis` (full column rank, spanning col(W)),
    independent of measure.column_basis and head_factor."""
    Q, _ = torch.linalg.qr(basis.detach().double())
    G = G.double()
    return ((G - G @ Q @ Q.T).norm() / G.norm()).item()


def col_basis(lm_head):
    """A full-column-rank matrix spanning col(W): W itself, or B for a factorized W = B·A of rank r < D."""
    if hasattr(lm_head, 'B') and lm_head.rank < lm_head.n_embd:
        return lm_head.B[:lm_head.vocab_size]
    return lm_head.effective_weight()


def rel_err(a, b):
    """Norm-wise relative error ‖a − b‖/‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def test_child_processes_get_no_stray_torchrun_variables():
    env = child_env({'PATH': '/bin', 'RANK': '3', 'WORLD_SIZE': '8', 'LOCAL_RANK': '3', 'MASTER_ADDR': 'x',
                     'MASTER_PORT': '29500', 'TORCHELASTIC_RUN_ID': 'r', 'OMP_NUM_THREADS': '8'})
    assert env == {'PATH': '/bin', 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}
    assert not set(DDP_VARS) & set(CHILD_ENV)
    assert 'CUDA_VISIBLE_DEVICES' not in child_env({'PATH': '/bin'}, gpu=True)  # for the cuda tests

# -----------------------------------------------------------------------------
# model: the heads, the init, the optimizer groups, the FLOP count


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


@pytest.mark.parametrize('n_layer', [1, 4])
def test_init_std_residual_projections_scaled(n_layer):
    """GPT-2 init: N(0, 0.02) for every matrix and embedding, 0.02/√(2·n_layer) for the residual projections
    (c_proj), LayerNorm gains 1 and biases 0."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, n_embd=128, n_head=2, n_layer=n_layer, block_size=16, bias=True))
    seen = set()
    for name, p in model.named_parameters():
        p = p.detach()
        if 'ln_' in name:
            assert (p == (1.0 if name.endswith('weight') else 0.0)).all(), name
            continue
        if name.endswith('.bias'):
            assert (p == 0).all(), name
            continue
        want = 0.02 / math.sqrt(2 * n_layer) if name.endswith('c_proj.weight') else 0.02
        # the sample std of n draws of N(0, σ²) has relative std 1/√(2n): 6 of them is far in the tail
        assert abs(p.std().item() / want - 1) < 6 / math.sqrt(2 * p.numel()), (name, p.std().item(), want)
        assert abs(p.mean().item()) < 6 * want / math.sqrt(p.numel()), name
        seen.add(name.split('.')[-2])
    assert {'c_proj', 'c_attn', 'c_fc', 'wte', 'wpe', 'lm_head'} <= seen


@pytest.mark.parametrize('head', list(HEADS))
def test_weight_decay_on_matrices_only(head):
    """configure_optimizers: every parameter exactly once; weight decay on the matrices (attention and MLP
    weights, embeddings, the head's matrix or factors), none on LayerNorm gains and biases."""
    model = GPT(tiny(head, bias=True, head_rank=3 if head in FACTORIZED else None))
    opt = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), 'cpu')
    by_decay = {}
    for group in opt.param_groups:
        assert group['lr'] == 3e-4 and group['betas'] == (0.9, 0.95)
        by_decay.setdefault(group['weight_decay'], []).extend(group['params'])
    assert set(by_decay) == {0.1, 0.0}
    names = {id(p): n for n, p in model.named_parameters()}
    listed = [id(p) for ps in by_decay.values() for p in ps]
    assert sorted(listed) == sorted(names) and len(listed) == len(set(listed))  # all, once (tied: wte once)
    decayed = {names[id(p)] for p in by_decay[0.1]}
    plain = {names[id(p)] for p in by_decay[0.0]}
    assert all('ln_' in n or n.endswith('.bias') for n in plain), plain
    assert all(n.endswith(('weight', '.A', '.B')) and 'ln_' not in n for n in decayed), decayed
    assert {'transformer.wte.weight', 'transformer.wpe.weight',
            'transformer.h.0.attn.c_attn.weight'} <= decayed
    head_params = {'linear': {'lm_head.weight'}, 'tied': set(), 'narrow': {'lm_head.A', 'lm_head.B'},
                   'wide': {'lm_head.A', 'lm_head.B'}}[head]
    assert head_params <= decayed
    assert any(n.endswith('.bias') for n in plain) and any('ln_' in n for n in plain)


@pytest.mark.parametrize('head,rank', [('linear', None), ('tied', None), ('narrow', 3), ('wide', None),
                                       ('wide', 48)])
def test_flops_per_token_hand_count(head, rank):
    """6 × (matmul weights: the blocks' 12·D² per layer, the head's V·D or r·(D + V); no embeddings)
    + 12·L·T·D."""
    L, D, V, T = 3, 32, 100, 8
    model = GPT(tiny(head, head_rank=rank, n_layer=L, n_embd=D, vocab_size=V, block_size=T, bias=True))
    r = model.lm_head.rank if head in FACTORIZED else None
    head_weights = V * D if r is None else r * (D + V)
    assert model.flops_per_token() == 6 * (L * 12 * D * D + head_weights) + 12 * L * T * D


def test_bad_head_config():
    for bad, msg in [(dict(head='mlpx'), 'unknown head'), (dict(head='narrow', head_rank=0), 'positive'),
                     (dict(head='wide', head_rank=-3), 'positive'),
                     (dict(head='linear', head_rank=8), 'only'), (dict(vocab_size=1), 'at least 2')]:
        with pytest.raises(ValueError, match=msg):
            GPT(tiny(**bad))


def test_select_basis_at_full_rank_is_the_linear_head_and_below_it_zeroes_columns():
    """head_basis=select: at r = D the same init draw, logits, gradients and Adam steps as the linear head
    (rank is the only difference); at r < D, W = [B, 0] and the held columns stay zero through a step."""
    x = torch.randint(0, 100, (4, 8))
    models = []
    for head, kw in (('linear', {}), ('wide', dict(head_basis='select'))):
        torch.manual_seed(0)
        model = GPT(tiny(head, **kw))
        opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')
        for _ in range(3):
            _, loss = model(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad()
        models.append(model)
    lin, sel = models
    assert 'A' not in dict(sel.lm_head.named_parameters())  # a fixed selector: a buffer, never trained
    assert torch.equal(lin.lm_head.effective_weight(), sel.lm_head.effective_weight())
    assert torch.equal(lin(x)[0], sel(x)[0])
    torch.manual_seed(0)
    narrow = GPT(tiny('narrow', head_rank=5, head_basis='select'))
    opt = narrow.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')
    narrow(x, x)[1].backward()
    opt.step()
    W = narrow.lm_head.effective_weight()
    assert torch.equal(W[:, :5], narrow.lm_head.B[:100]) and not W[:, 5:].any()


def test_random_basis_stays_fixed_and_is_saved():
    torch.manual_seed(0)
    model = GPT(tiny('wide', head_basis='random'))
    A = model.lm_head.A.clone()
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')
    x = torch.randint(0, 100, (4, 8))
    model(x, x)[1].backward()
    opt.step()
    assert torch.equal(model.lm_head.A, A) and 'lm_head.A' in model.state_dict()
    assert torch.allclose(A @ A.T, torch.eye(32), atol=1e-5)  # orthogonal, at r = D of scale 1


@pytest.mark.parametrize('head', ['linear', 'tied', 'wide'])
def test_head_lr_mult_reaches_the_heads_param_groups_only(head):
    model = GPT(tiny(head))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', head_lr_mult=3.0)
    head_ids = {id(p) for p in model.lm_head.parameters()}
    for group in opt.param_groups:
        assert {id(p) in head_ids for p in group['params']} == {group['lr_mult'] == 3.0}
    assert sum(len(g['params']) for g in opt.param_groups if g['lr_mult'] == 3.0) == len(head_ids)


def test_bad_head_basis():
    for bad, msg in [(dict(head='linear', head_basis='random'), 'only to factorized'),
                     (dict(head='wide', head_basis='select', head_rank=40), 'r = 40 > 32'),
                     (dict(head='wide', head_basis='fixed'), 'trained, random or select')]:
        with pytest.raises(ValueError, match=msg):
            GPT(tiny(**bad))


def test_generate_is_deterministic_under_a_seed_and_respects_top_k():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    x = torch.zeros(4, 3, dtype=torch.long)
    run = lambda seed, **kw: model.generate(x, 12, generator=torch.Generator().manual_seed(seed), **kw)
    a, b = run(1), run(1)
    assert torch.equal(a, b) and a.shape == (4, 15) and torch.equal(a[:, :3], x)
    assert not torch.equal(run(1), run(2))  # another seed, other samples
    # top_k = 1 is greedy whatever the seed and temperature; temperature 0 is greedy too
    greedy = run(1, temperature=0)
    assert torch.equal(run(3, top_k=1, temperature=5.0), greedy)
    # every token drawn with top_k = 3 is among the 3 most likely at its step (teacher-forced check)
    out = run(4, top_k=3, temperature=2.0)
    for t in range(3, out.size(1)):
        logits = model(out[:, max(0, t - 8):t])[0][:, -1]
        top3 = torch.topk(logits, 3).indices
        assert (top3 == out[:, t:t + 1]).any(1).all(), t
    # the context is cut to block_size: generating past it works
    assert model.generate(x, 10, temperature=0).shape == (4, 13)

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
    assert spamlang.optimal_loss_pos0(V) == math.log(63)


def test_spamlang_metrics_split_position_zero():
    x, y = spamlang.get_batch(8, 5, 20, spamlang.make_generator(0))
    logits = torch.full((8, 5, 20), -10.0)
    logits.scatter_(2, y.unsqueeze(-1), 10.0)  # a perfect predictor, which cannot exist at position 0
    m = spamlang.metrics(logits, y)
    assert m['acc'] == 1.0 and m['acc_pos0'] == 1.0 and m['loss'] < 1e-6


def test_spamlang_metrics_hand_built_values():
    """Position 0 and positions ≥ 1 each get their own loss and accuracy: a batch whose 4 numbers differ."""
    V, T = 10, 4
    y = torch.tensor([[3] * T, [7] * T, [7] * T, [5] * T])
    logits = torch.zeros(4, T, V)
    logits[:, 0, 7] = 2.0                      # position 0: a bias towards 7, right for rows 1 and 2 only
    for b, s in enumerate([3, 7, 7, 5]):
        logits[b, 1:, s] = 4.0                 # positions ≥ 1: the symbol, except in row 3 ...
    logits[3, 1:, 5], logits[3, 1:, 2] = 0.0, 1.0  # ... which predicts 2 instead of 5
    lse0, lse1 = math.log(V - 1 + math.exp(2)), math.log(V - 1 + math.exp(4))
    lse3 = math.log(V - 1 + math.exp(1))
    loss_pos0 = (2 * lse0 + 2 * (lse0 - 2)) / 4                 # rows 0, 3 miss the bias; rows 1, 2 hit it
    loss = (3 * (lse1 - 4) + lse3) / 4                          # per row, positions 1..3 alike
    m = spamlang.metrics(logits, y)
    assert m['loss_pos0'] == pytest.approx(loss_pos0, rel=1e-6) and m['acc_pos0'] == 0.5
    assert m['loss'] == pytest.approx(loss, rel=1e-6) and m['acc'] == 0.75
    only0 = spamlang.metrics(logits[:, :1], y[:, :1])  # T = 1: position 0 alone, nothing on positions ≥ 1
    assert set(only0) == {'loss_pos0', 'acc_pos0'} and only0['acc_pos0'] == 0.5

# -----------------------------------------------------------------------------
# options.py: the --key=value parser


OPTIONS = dict(head='linear', learning_rate=1e-3, max_iters=2000, compile=None, head_rank=None, bias=False,
               data='spamlang')
TYPES = dict(compile=bool, head_rank=int)


def test_parser_types_values_like_their_defaults():
    c, given = options.parse_args(['--head=wide', '--learning_rate=1', '--max_iters=7', '--compile=False',
                                  '--head_rank=12', '--bias', '--data=123'], OPTIONS, __file__, TYPES)
    assert c['head'] == 'wide' and c['learning_rate'] == 1.0 and type(c['learning_rate']) is float
    assert c['max_iters'] == 7 and c['compile'] is False and c['head_rank'] == 12 and c['bias'] is True
    assert c['data'] == '123' and given == {'head', 'learning_rate', 'max_iters', 'compile', 'head_rank',
                                            'bias', 'data'}
    assert options.parse_args(['--head_rank=None'], OPTIONS, __file__, TYPES)[0]['head_rank'] is None


def test_parser_config_file_then_command_line(tmp_path):
    cfg = tmp_path / 'my.py'
    cfg.write_text("max_iters = 50\nhead = 'narrow'\n")
    c, given = options.parse_args([str(cfg), '--head=wide'], OPTIONS, __file__, TYPES)
    assert c['max_iters'] == 50 and c['head'] == 'wide' and given == {'max_iters', 'head'}
    # a string, unquoted
    assert options.parse_args([str(cfg)], OPTIONS, __file__, TYPES)[0]['head'] == 'narrow'
    cfg.write_text("max_itres = 50\n")
    with pytest.raises(ConfigError, match='unknown option --max_itres in .*did you mean --max_iters'):
        options.parse_args([str(cfg)], OPTIONS, __file__, TYPES)


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
        options.parse_args(args, OPTIONS, __file__, TYPES)


@pytest.mark.slow
def test_every_script_prints_its_options_with_help():
    for script in ('train.py', 'measure.py', 'bench.py', 'sample.py', 'plot.py', 'reproduce.py',
                   'reading_path.py'):
        p = subprocess.run([sys.executable, script, '--help'], cwd=HERE, capture_output=True, text=True,
                           env=CHILD_ENV)
        assert p.returncode == 0 and f'python {script}' in p.stdout, script  # the docstring's commands
        assert script == 'reading_path.py' or 'options (--key=value' in p.stdout, script
        if script == 'train.py':
            assert '--head=linear' in p.stdout
            # the defaults block's comment, not that of a later line that sets device
            assert '--device=auto                    auto (cuda, then mps, then cpu)' in p.stdout
            assert 'linear, tied, narrow, wide; beyond the paper: remedies.HEADS' in p.stdout
    for bad in ('nothing.py', 'README.md'):  # a file that is not there, one that is not Python
        p = subprocess.run([sys.executable, 'reading_path.py', bad], cwd=HERE, capture_output=True, text=True)
        assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'give one file of this folder' in p.stderr


def test_peak_flops_matches_whole_names():
    """MFU's denominator: the longest table key that is a whole word of the GPU's name (A100 is not A10, L40S
    is not L40); an unknown GPU gives (None, None)."""
    table = mfu.PEAK_FLOPS
    for name, key in [('NVIDIA A100-SXM4-80GB', 'A100'), ('NVIDIA A100 80GB PCIe', 'A100'),
                      ('NVIDIA A10', 'A10'), ('NVIDIA A10G', 'A10G'), ('NVIDIA L40S', 'L40S'),
                      ('NVIDIA L40', 'L40'), ('NVIDIA L4', 'L4'), ('NVIDIA H100 80GB HBM3', 'H100'),
                      ('NVIDIA GH200 480GB', 'GH200'), ('NVIDIA H200', 'H200'),
                      ('NVIDIA GeForce RTX 4090', 'RTX 4090')]:
        assert mfu.peak_flops(name) == (table[key], key), name
    assert mfu.peak_flops('NVIDIA A100-SXM4-80GB')[0] == 312e12 and table['A10'] == 125e12  # data sheets
    for unknown in ('Tesla T4', 'NVIDIA A1000', 'cpu', ''):
        assert mfu.peak_flops(unknown) == (None, None), unknown

# -----------------------------------------------------------------------------
# textdata.py: data (token files, tokenizing, batches)


def text_data(ids, split=0.9):
    ids = np.asarray(ids)
    n = int(split * len(ids))
    return dict(kind='text', train=ids[:n], val=ids[n:], vocab_size=int(ids.max()) + 1)


def test_text_batches_are_shifted_by_one():
    """Next-token prediction: y is x moved one token on, both from the same window of the split asked for."""
    data = text_data(np.arange(2000, dtype=np.uint16))
    g = torch.Generator().manual_seed(0)
    for split, lo, hi in (('train', 0, 1800), ('val', 1800, 2000)):
        x, y = textdata.get_batch(data, split, 64, 16, g, 'cpu')
        assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)                                   # the ids are consecutive, so y = x + 1
        assert torch.equal(x[:, 1:], x[:, :1] + torch.arange(1, 16))  # contiguous windows
        assert x.min() >= lo and y.max() < hi                          # inside its split
    x2, _ = textdata.get_batch(data, 'train', 64, 16, torch.Generator().manual_seed(0), 'cpu')
    x3, _ = textdata.get_batch(data, 'train', 64, 16, torch.Generator().manual_seed(0), 'cpu')
    assert torch.equal(x2, x3)  # the generator alone decides the windows


def test_validation_windows_are_fixed_and_shifted():
    data = text_data(np.arange(1000, dtype=np.uint16))  # val = ids 900..999: 99 targets → 12 windows of 8
    x, y = textdata.val_windows(data, 8)
    assert x.shape == (12, 8) and torch.equal(x.reshape(-1), torch.arange(900, 996)) and torch.equal(y, x + 1)
    x5, y5 = textdata.val_windows(data, 8, max_windows=5)
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])


def test_token_file_round_trip_and_checks(tmp_path):
    path = str(tmp_path / 'a.tok')
    ids = np.array([0, 5, 99, 3, 3, 7])
    textdata.write_tokens(path, ids, vocab_size=100, encoding='enc', source={'path': 'a.txt'})
    got, meta = textdata.load_tokens(path)
    assert np.array_equal(got, ids) and meta['dtype'] == 'uint16' and meta['vocab_size'] == 100
    assert meta['encoding'] == 'enc' and meta['n_tokens'] == 6 and meta['id_map'] is None
    assert len(meta['fingerprint']) == 16
    textdata.write_tokens(str(tmp_path / 'b.tok'), ids[::-1], vocab_size=100, encoding='enc')
    # content, not name
    assert textdata.load_tokens(str(tmp_path / 'b.tok'))[1]['fingerprint'] != meta['fingerprint']
    big = str(tmp_path / 'big.tok')
    textdata.write_tokens(big, np.array([70_000, 1]), vocab_size=100_277, encoding='enc')
    assert textdata.load_tokens(big)[1]['dtype'] == 'uint32' and textdata.load_tokens(big)[0][0] == 70_000
    textdata.write_tokens(path, np.array([1, 2, 100]), vocab_size=100, encoding='enc')  # an id equal to V
    with pytest.raises(ConfigError, match='token id 100 ≥ vocab_size 100'):
        textdata.load_tokens(path)
    for bad in (np.array([70_000, 1]), np.array([-1, 1]), np.array([1.5])):  # would wrap in uint16: refused
        with pytest.raises(ConfigError, match='must be integers that fit uint16'):
            textdata.write_tokens(str(tmp_path / 'w.tok'), bad, vocab_size=65_536, encoding='enc')
    with pytest.raises(ConfigError, match='one entry per id'):
        textdata.write_tokens(str(tmp_path / 'm.tok'), ids, vocab_size=100, encoding='enc',
                              id_map=np.arange(5))
    (tmp_path / 'raw.bin').write_bytes(b'\x00\x01' * 600)
    with pytest.raises(ConfigError, match='no GBTOKENS header'):
        textdata.load_tokens(str(tmp_path / 'raw.bin'))


SAMPLE_TEXT = ('The head of a language model passes back only part of the gradient to its body.\n'
               'Everything outside the column space of the output matrix is lost in backpropagation.\n') * 8


def test_compacted_vocabulary_round_trips(tmp_path):
    """compact=True keeps the K token ids that occur, renumbered 0..K−1 in the tokenizer's order, with the map
    back: id_map[compact ids] are the tokenizer's ids."""
    text = tmp_path / 'text.txt'
    text.write_text(SAMPLE_TEXT)
    cache = tmp_path / 'cache'
    cache.mkdir()
    full_path = textdata.tokenize_text(str(text), 'cl100k_base', str(cache))
    compact_path = textdata.tokenize_text(str(text), 'cl100k_base', str(cache), compact=True)
    assert full_path != compact_path and os.path.dirname(compact_path) == str(cache)
    full, meta_full = textdata.load_tokens(full_path)
    ids, meta = textdata.load_tokens(compact_path)
    K = len(np.unique(full))
    assert meta_full['vocab_size'] == 100_277 and meta_full['id_map'] is None
    assert meta['vocab_size'] == K and len(meta['id_map']) == K and len(ids) == len(full)
    assert ids.min() == 0 and ids.max() == K - 1 and len(np.unique(ids)) == K
    assert np.array_equal(meta['id_map'][ids], full)
    assert np.all(np.diff(meta['id_map'].astype(np.int64)) > 0)  # the tokenizer's order
    enc = textdata.get_encoding('cl100k_base')
    assert enc.decode(meta['id_map'][ids].tolist()) == SAMPLE_TEXT
    mtime = os.stat(compact_path).st_mtime_ns
    assert textdata.tokenize_text(str(text), 'cl100k_base', str(cache), compact=True) == compact_path
    assert os.stat(compact_path).st_mtime_ns == mtime  # reused while the text is unchanged
    cfg = dict(data=str(text), block_size=8, encoding='cl100k_base', compact_vocab=True)
    data = textdata.load_data(cfg, str(cache))
    assert data['vocab_size'] == K and np.array_equal(data['id_map'], meta['id_map'])


@pytest.mark.parametrize('content,msg', [(b'some text\x00\x01\x02 with NUL bytes', 'NUL bytes'),
                                         (bytes(range(128, 256)) * 4, 'not UTF-8')])
def test_binary_file_given_as_text_is_refused(tmp_path, content, msg):
    path = tmp_path / 'model.txt'
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=msg) as e:
        textdata.load_data(dict(data=str(path), block_size=8, encoding='cl100k_base'), str(tmp_path))
    assert '\n' not in str(e.value)
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tok')]


def test_too_short_text_leaves_no_token_file(tmp_path):
    path = tmp_path / 'short.txt'
    path.write_text('just a few words of text')
    with pytest.raises(ConfigError, match='too short'):
        textdata.load_data(dict(data=str(path), block_size=32, encoding='cl100k_base'), str(tmp_path))
    assert not [f for f in os.listdir(tmp_path) if '.tok' in f]

# -----------------------------------------------------------------------------
# checkpoint.py: checkpoints, random states, resume rules


def test_checkpoint_digest_previous_and_fallback(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    state = lambda it: dict(model={'w': torch.full((3, 4), float(it))}, config={'head': 'wide'}, iter_num=it)
    checkpoint.save_checkpoint(path, state(1))
    assert not os.path.exists(checkpoint.previous_checkpoint(path))
    checkpoint.save_checkpoint(path, state(2))
    assert checkpoint.load_checkpoint(path)['iter_num'] == 2
    assert checkpoint.load_checkpoint(str(tmp_path / 'prev_ckpt.pt'))['iter_num'] == 1  # the one before, kept
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'prev_ckpt.pt']  # no temp files left
    # a value changed inside a file torch.load still reads: only the digest notices
    ck = torch.load(path, weights_only=False)
    ck['model']['w'][1, 2] += 1e-3
    torch.save(ck, path)
    with pytest.raises(ConfigError, match='truncated or corrupt.*--resume_fallback=True'):
        checkpoint.load_checkpoint(path)
    assert checkpoint.load_checkpoint(path, fallback=True)['iter_num'] == 1
    with pytest.raises(ConfigError, match='is a folder'):
        checkpoint.load_checkpoint(str(tmp_path))
    torch.save({'model_args': {}}, str(tmp_path / 'other.pt'))
    with pytest.raises(ConfigError, match='not a checkpoint of this project'):
        checkpoint.load_checkpoint(str(tmp_path / 'other.pt'))
    a = checkpoint.state_digest(state(1)).hexdigest()
    assert a == checkpoint.state_digest(state(1)).hexdigest() != checkpoint.state_digest(state(3)).hexdigest()


def test_rng_state_restores_the_data_stream():
    gen = spamlang.make_generator(5)
    textdata.get_batch(dict(kind='spamlang', vocab_size=50), 'train', 4, 3, gen, 'cpu')
    saved = checkpoint.get_rng_state(gen, 'cpu')
    after = [spamlang.get_batch(4, 3, 50, gen)[0], torch.rand(3), np.random.rand(),
             __import__('random').random()]
    gen2 = spamlang.make_generator(99)
    checkpoint.set_rng_state(saved, gen2, 'cpu')
    again = [spamlang.get_batch(4, 3, 50, gen2)[0], torch.rand(3), np.random.rand(),
             __import__('random').random()]
    assert torch.equal(after[0], again[0]) and torch.equal(after[1], again[1]) and after[2:] == again[2:]


def test_the_reading_path_of_train_py_is_within_its_budget_and_imports_are_one_way():
    """What `python train.py --head=wide` loads at start (module-level imports, transitively) stays within
    reading_path.BUDGET raw lines; the fused loss, the CUDA kernel, text data and checkpoints load lazily. No
    import cycle anywhere, a script's `__main__` block included (a cycle raises SystemExit)."""
    import reading_path
    files = reading_path.reading_path('train.py')
    assert set(files) == {'train.py', 'meter.py', 'model.py', 'options.py', 'runtime.py', 'spamlang.py'}
    assert sum(reading_path.line_count(f) for f in files) <= reading_path.BUDGET
    graph = reading_path.import_graph()
    assert any(line.startswith('train.py') and 'checkpoint*' in line for line in graph)


def test_a_cuda_device_passes_set_devices_own_argument_check(monkeypatch):
    """train.py hands pick_device's value to torch.cuda.set_device, whose argument check refuses a bare
    'cuda'. That check, _get_device_index, is run here on the value itself; only CUDA's presence is
    pretended, since the call behind the check does not exist in a CPU build."""
    from torch.cuda._utils import _get_device_index
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    for name, index in (('cuda', 0), ('auto', 0), ('cuda:1', 1)):
        assert _get_device_index(runtime.pick_device(name)) == index, name
        assert _get_device_index(str(runtime.pick_device(name))) == index, name  # train.py keeps it as str
    assert _get_device_index(runtime.pick_device('cuda', local_rank=1)) == 1  # torchrun's second process
    with pytest.raises(ConfigError, match='sees 2 GPU'):
        runtime.pick_device('cuda:2')
    with pytest.raises(ConfigError, match='under torchrun'):
        runtime.pick_device('cuda:1', local_rank=0)


class DrawsOnItsGeneratorsDevice(torch.overrides.TorchFunctionMode):
    """Fails a random draw whose result lies on another device than its generator. CUDA refuses a CPU
    generator for a CUDA tensor, but the CPU and meta devices take any: without this check a CPU run cannot
    see the bug."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        gen = kwargs.get('generator')
        if gen is not None and isinstance(out, torch.Tensor) and out.device != gen.device:
            raise AssertionError(f"{func.__name__} drew on {out.device} with a generator on {gen.device}")
        return out


def test_every_batch_source_draws_on_its_generator_then_moves(tmp_path):
    """Batches for another device than the CPU generator's ('meta' stands in for CUDA): each draw happens
    on the generator's device, then the batch moves. SpamLang, text, the eval batches and measure.py's."""
    spam = dict(kind='spamlang', vocab_size=50)
    text = text_data(np.arange(2000, dtype=np.uint16) % 97)
    tok = tmp_path / 'ids.tok'
    textdata.write_tokens(str(tok), np.arange(2000) % 97, vocab_size=97, encoding='test')
    with DrawsOnItsGeneratorsDevice():
        with pytest.raises(AssertionError, match='drew on meta'):  # the check itself can fail
            torch.randint(5, (3,), generator=torch.Generator(), device='meta')
        for data in (spam, text):
            for split in ('train', 'val'):
                x, y = textdata.get_batch(data, split, 4, 8, spamlang.make_generator(0), 'meta')
                assert x.device.type == y.device.type == 'meta' and x.shape == y.shape == (4, 8)
        for data_cfg in (dict(data='spamlang', vocab_size=50), dict(data=str(tok), block_size=8)):
            _, batches = measure.batches_from(data_cfg, dict(seed=0, batch_size=4), 2, 8, 'meta')
            assert all(t.device.type == 'meta' for b in batches for t in b)


@cuda_only
def test_cuda_batches_arrive_from_pinned_memory_and_match_the_cpu_draw():
    device = runtime.pick_device('cuda')
    for data in (dict(kind='spamlang', vocab_size=50), text_data(np.arange(2000, dtype=np.uint16) % 97)):
        x, y = textdata.get_batch(data, 'train', 4, 8, spamlang.make_generator(3), device)
        cx, cy = textdata.get_batch(data, 'train', 4, 8, spamlang.make_generator(3), 'cpu')
        assert x.device == device and torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)


def test_resume_config_keeps_shape_and_asks_for_changes():
    invocation = {k: 'then' for k in checkpoint.INVOCATION_KEYS}
    saved = dict(invocation, head='wide', n_embd=32, learning_rate=1e-3, max_iters=10, seed=1,
                 eval_interval=5, keep_checkpoints=True)
    now = dict(saved, **{k: 'now' for k in invocation}, n_embd=64, learning_rate=3e-3, max_iters=20,
               eval_interval=500, keep_checkpoints=False)  # the last two: the defaults, not given
    with pytest.raises(ConfigError,
                       match="--n_embd=64 differs from the checkpoint's 32: a resumed model keeps"):
        checkpoint.resume_config(now, {'n_embd'}, saved, allow_changes=True)
    with pytest.raises(ConfigError, match='--learning_rate=0.003 differs.*--allow_changes=True'):
        checkpoint.resume_config(now, {'learning_rate'}, saved, allow_changes=False)
    given = {'learning_rate', 'max_iters'}
    c = checkpoint.resume_config(now, given, saved, allow_changes=True)
    assert c == dict(saved, **{k: 'now' for k in invocation}, learning_rate=3e-3, max_iters=20)
    # this invocation's keys are always now's; the run's cadence is the checkpoint's unless given again
    assert checkpoint.resume_config(now, set(), saved, False) == dict(saved, **{k: 'now' for k in invocation})
    c = checkpoint.resume_config(now, {'eval_interval'}, saved, False)
    assert c['eval_interval'] == 500 and c['keep_checkpoints'] is True

# -----------------------------------------------------------------------------
# train.py as a script: the paper's effect, schedule, meter, evaluation, text, resume, signals, bad input

SMALL = dict(vocab_size=256, n_embd=32, n_head=2, block_size=8, batch_size=32, max_iters=300, warmup_iters=30,
             eval_interval=300, eval_iters=4, learning_rate=3e-3, min_lr=1e-4)
TINY_RUN = ['--vocab_size=64', '--n_embd=16', '--n_head=2', '--block_size=8', '--batch_size=8',
            '--warmup_iters=2', '--eval_iters=1', '--log_interval=1']


@pytest.mark.slow
def test_wide_learns_spamlang_and_narrow_does_not(tmp_path):
    wide = train_run(tmp_path, 'wide', **SMALL, head='wide')
    narrow = train_run(tmp_path, 'narrow', **SMALL, head='narrow')  # default r = n_embd // 16 = 2
    assert wide['val_acc'] > 0.95, wide  # measured: 100%
    assert narrow['val_acc'] < 0.3, narrow  # measured: 3-6%
    log = read_log(tmp_path / 'wide')
    assert {'iter', 'tokens', 'val_loss', 'val_acc'} <= set(log[-1]) and log[-1]['iter'] == 300
    # the meter on positions ≥ 1 and at position 0 apart: at init both are rows of a uniform guess, equal
    # within the sampling spread (r of 32 position-0 rows, rank 32 of V = 256: σ ≈ 0.003; measured 0.0001
    # apart); once positions ≥ 1 are learned their G no longer looks like position 0's (0.9635 vs 0.9363)
    first = read_log(tmp_path / 'wide', 'eval')[0]
    assert abs(first['grad_destroyed'] - first['grad_destroyed_pos0']) < 0.012, first
    assert abs(wide['grad_destroyed'] - wide['grad_destroyed_pos0']) > 0.012, wide
    assert wide['val_loss_pos0'] > math.log(SMALL['vocab_size'] - 1) - 0.1  # position 0 stays unpredictable


# Two short runs that log everything (every step's lr and meter, an evaluation and a checkpoint at every
# step), so that their records can be recomputed from the checkpoints: prev_ckpt.pt holds the model and the
# data stream just before the last step, ckpt.pt the model after it.
METER_RUN = dict(vocab_size=96, n_embd=16, n_head=2, block_size=8, batch_size=8, max_iters=6, warmup_iters=3,
                 learning_rate=1e-2, min_lr=1e-3, log_interval=1, eval_interval=1, eval_iters=2,
                 meter_every_step=True)
METER_VARIANTS = {'naive': dict(head='linear', loss='naive'),  # V = 96: padded rows to keep out of the meter
                  'fused_accum2': dict(head='narrow', head_rank=4, loss='fused',
                                       gradient_accumulation_steps=2)}


@pytest.fixture(scope='module', params=list(METER_VARIANTS))
def metered_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    opts = {**METER_RUN, **METER_VARIANTS[request.param]}
    code, _, err = run_train(*[f'--{k}={v}' for k, v in opts.items()], f'--out_dir={out}')
    assert code == 0, err
    return out, {'gradient_accumulation_steps': 1, **opts}


def lr_at(it, o):
    """The schedule, written out: linear warmup to learning_rate, then a half cosine down to min_lr
    at max_iters."""
    lr, lo, warm, top = o['learning_rate'], o['min_lr'], o['warmup_iters'], o['max_iters']
    if it < warm:
        return lr * (it + 1) / (warm + 1)
    return lo + 0.5 * (1 + math.cos(math.pi * (it - warm) / (top - warm))) * (lr - lo)


@pytest.mark.slow
@pytest.mark.xdist_group('metered_run')
def test_train_lr_warmup_then_cosine_to_min_lr(metered_run):
    out, o = metered_run
    rows = read_log(out, 'train')
    assert [r['iter'] for r in rows] == list(range(1, o['max_iters'] + 1))
    for r in rows:  # the row of iter k logs step k − 1's learning rate
        assert r['lr'] == pytest.approx(lr_at(r['iter'] - 1, o), rel=1e-12, abs=0), r
    assert rows[-1]['lr'] > o['min_lr'] and min(r['lr'] for r in rows) >= o['min_lr'] * (1 - 1e-12)
    ckpt = checkpoint.load_checkpoint(str(out / 'ckpt.pt'))  # and every parameter group stepped with it
    groups = ckpt['optimizer']['param_groups']
    assert [g['lr'] for g in groups] == [rows[-1]['lr']] * len(groups) and len(groups) == 3  # head apart


@pytest.mark.slow
def test_wsd_cooldown_branch_from_a_kept_checkpoint_equals_a_straight_run(tmp_path):
    """--schedule=wsd: warmup, constant, then linear to min_lr over the last cooldown_iters steps. A run with
    --keep_checkpoints keeps ckpt_<iter>.pt; a cooldown resumed from one of its stable-phase checkpoints ends
    exactly where a straight run of the same schedule ends (the ×-fold's branches rely on it)."""
    o = dict(vocab_size=96, n_embd=16, n_head=2, block_size=8, batch_size=8, warmup_iters=3,
             learning_rate=1e-2, min_lr=1e-3, log_interval=1, eval_interval=10, eval_iters=2, schedule='wsd')
    args = [f'--{k}={v}' for k, v in o.items()]
    trunk, branch, straight = tmp_path / 'trunk', tmp_path / 'branch', tmp_path / 'straight'
    code, _, err = run_train(*args, '--max_iters=30', '--keep_checkpoints', f'--out_dir={trunk}')
    assert code == 0, err
    assert sorted(os.listdir(trunk)) == sorted(['ckpt.pt', 'prev_ckpt.pt', 'log.jsonl'] +
                                               [f'ckpt_{i}.pt' for i in (0, 10, 20, 30)])
    assert all(r['lr'] == 1e-2 for r in read_log(trunk, 'train')[3:])  # no cooldown: constant after warmup
    os.makedirs(branch)
    os.link(trunk / 'ckpt_20.pt', branch / 'ckpt.pt')
    code, _, err = run_train(*args, '--max_iters=25', '--cooldown_iters=5', '--init_from=resume',
                             '--allow_changes', f'--out_dir={branch}')
    assert code == 0, err
    code, _, err = run_train(*args, '--max_iters=25', '--cooldown_iters=5', f'--out_dir={straight}')
    assert code == 0, err
    rows = read_log(straight, 'train')
    for r in rows:  # the row of iter k logs step k − 1's lr
        it = r['iter'] - 1
        want = 1e-2 * (it + 1) / 4 if it < 3 else 1e-2 - 9e-3 * max(0.0, 1 - (25 - it) / 5)
        assert r['lr'] == pytest.approx(want, rel=1e-12), r
    steps = [(r['loss'], r['lr']) for r in read_log(branch, 'train')]
    assert steps == [(r['loss'], r['lr']) for r in rows[20:]]
    assert read_log(branch, 'eval')[-1] == read_log(straight, 'eval')[-1]


@pytest.mark.slow
@pytest.mark.xdist_group('metered_run')
def test_train_step_meter_reads_W_before_the_step(metered_run):
    """--meter_every_step: the meter of step k is G of the step's last micro-batch against the W that produced
    it, i.e. before the optimizer moves W. Recomputed with a float64 QR from prev_ckpt.pt (the model and data
    stream just before the last step), for the naive loss and for the fused one with 2 micro-batches."""
    out, o = metered_run
    prev = checkpoint.load_checkpoint(str(out / 'prev_ckpt.pt'))
    assert prev['iter_num'] == o['max_iters'] - 1
    model = checkpoint.model_from_checkpoint(prev)
    gen = torch.Generator()
    gen.set_state(prev['rng']['train_gen'])
    data = dict(kind='spamlang', vocab_size=o['vocab_size'])
    micro = [textdata.get_batch(data, 'train', o['batch_size'], o['block_size'], gen, 'cpu')
             for _ in range(o['gradient_accumulation_steps'])]
    with torch.no_grad():
        refs = [qr_ratio(softmax_minus_onehot(model(x)[0], y), col_basis(model.lm_head)) for x, y in micro]
    row = read_log(out, 'train')[-1]
    assert row['iter'] == o['max_iters']
    assert abs(row['grad_destroyed'] / refs[-1] - 1) < 1e-5, (row, refs)
    assert abs(row['grad_cosine'] / math.sqrt(1 - refs[-1] ** 2) - 1) < 1e-5
    # W after the step
    after = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(str(out / 'ckpt.pt')))
    with torch.no_grad():
        x, y = micro[-1]
        moved = qr_ratio(softmax_minus_onehot(after(x)[0], y), col_basis(after.lm_head))
    assert abs(moved / refs[-1] - 1) > 1e-4, (moved, refs[-1])
    if len(refs) > 1:
        assert abs(refs[0] / refs[-1] - 1) > 1e-4  # the two micro-batches can be told apart


@pytest.mark.slow
@pytest.mark.xdist_group('metered_run')
def test_train_eval_rows_recompute_from_the_checkpoint(metered_run):
    """An eval row of SpamLang: loss and accuracy on positions ≥ 1 and at position 0 over the fixed held-out
    batches (generator seed + 1), the meter on the first batch's positions ≥ 1 and its position 0 apart,
    exposures and tokens: each recomputed from ckpt.pt with explicit formulas."""
    out, o = metered_run
    ckpt = checkpoint.load_checkpoint(str(out / 'ckpt.pt'))
    model = checkpoint.model_from_checkpoint(ckpt).eval()
    gen = spamlang.make_generator(ckpt['config']['seed'] + 1)
    batches = [spamlang.get_batch(o['batch_size'], o['block_size'], o['vocab_size'], gen)
               for _ in range(o['eval_iters'])]
    with torch.no_grad():
        logits = torch.cat([model(x)[0] for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    ce = cross_entropy_ref(logits, y).reshape(y.shape)
    hit = (logits.argmax(-1) == y).double()
    row = read_log(out, 'eval')[-1]
    assert row['iter'] == o['max_iters']
    assert row['val_loss'] == pytest.approx(ce[:, 1:].mean().item(), rel=1e-5)
    assert row['val_loss_pos0'] == pytest.approx(ce[:, 0].mean().item(), rel=1e-5)
    assert row['val_acc'] == pytest.approx(hit[:, 1:].mean().item(), abs=1e-6)
    assert row['val_acc_pos0'] == pytest.approx(hit[:, 0].mean().item(), abs=1e-6)
    first, yb = logits[:o['batch_size']], batches[0][1]
    basis = col_basis(model.lm_head)
    r1 = qr_ratio(softmax_minus_onehot(first[:, 1:], yb[:, 1:]), basis)
    r0 = qr_ratio(softmax_minus_onehot(first[:, :1], yb[:, :1]), basis)
    assert abs(row['grad_destroyed'] / r1 - 1) < 1e-5, (row, r1, r0)
    assert abs(row['grad_destroyed_pos0'] / r0 - 1) < 1e-5, (row, r1, r0)
    rank = model.lm_head.rank if hasattr(model.lm_head, 'rank') else o['n_embd']
    assert row['visible_over_chance'] == pytest.approx((1 - r1 ** 2) * o['vocab_size'] / rank, rel=1e-4)
    sequences = o['max_iters'] * o['batch_size'] * o['gradient_accumulation_steps']
    assert row['exposures_per_symbol'] == pytest.approx(sequences / (o['vocab_size'] - 1), rel=1e-12)
    assert row['tokens'] == sequences * o['block_size']
    assert [r['iter'] for r in read_log(out, 'eval')] == list(range(o['max_iters'] + 1))


@pytest.mark.slow
def test_train_live_meter_in_log(tmp_path):
    train_run(tmp_path, 'run', vocab_size=128, n_embd=16, n_head=2, block_size=8, max_iters=20,
              eval_interval=10, eval_iters=1, log_interval=5, meter_every_step=True)
    log = read_log(tmp_path / 'run')
    evals = [r for r in log if r['type'] == 'eval']
    steps = [r for r in log if r['type'] in ('train', 'meter')]
    assert [r['iter'] for r in evals] == [0, 10, 20]
    assert [r['iter'] for r in steps] == list(range(1, 21))  # every step metered
    for r in evals + steps:
        assert 0 < r['grad_destroyed'] < 1 and 0 < r['grad_c_H'] <= 1
        assert abs(r['grad_destroyed'] ** 2 + r['grad_cosine'] ** 2 - 1) < 1e-9
    assert 'loss' in steps[4] and 'loss' not in steps[0]  # log_interval steps keep their full record
    train_run(tmp_path, 'plain', vocab_size=128, n_embd=16, n_head=2, block_size=8, max_iters=4,
              eval_interval=4, eval_iters=1, log_interval=2)
    log = read_log(tmp_path / 'plain')
    assert all('grad_destroyed' in r for r in log if r['type'] == 'eval')  # evals always carry the meter
    assert not any('grad_destroyed' in r for r in log if r['type'] == 'train')  # steps only when asked


@pytest.mark.slow
def test_text_run_and_tokenization_cache(tmp_path):
    rng = np.random.default_rng(0)
    words = 'the head of a language model passes back only part of the gradient to its body'.split()
    text = '\n'.join(' '.join(rng.choice(words, 12)) for _ in range(300))
    path = tmp_path / 'small.txt'
    path.write_text(text)
    args = dict(data=str(path), head='wide', n_embd=32, n_head=2, block_size=16, batch_size=8, max_iters=30,
                learning_rate=1e-2, warmup_iters=5, eval_interval=30, eval_iters=2)
    last = train_run(tmp_path, 'text', **args)
    cache = tmp_path / 'small.cl100k_base.tok'
    assert cache.exists()
    ids, meta = textdata.load_tokens(str(cache))
    assert meta['vocab_size'] == 100_277 and meta['dtype'] == 'uint32' and ids.max() < 100_277
    assert ckpt_config(tmp_path / 'text')['vocab_size'] == 100_277
    # it predicts the next token better than a uniform guess over the K tokens that occur
    # (measured 3.02 < log 29 = 3.37; trained on targets equal to the inputs, no shift, it ends at 3.79)
    assert last['val_loss'] < math.log(len(np.unique(ids))), last
    mtime = cache.stat().st_mtime_ns
    one_step = {**args, 'max_iters': 1, 'eval_iters': 1}
    train_run(tmp_path, 'text2', **one_step)
    assert cache.stat().st_mtime_ns == mtime  # reused, not re-tokenized
    path.write_text(text + '\nmore')
    train_run(tmp_path, 'text3', **one_step)
    assert cache.stat().st_mtime_ns != mtime  # the text changed, so the cache was rebuilt
    # replaced by a text of the same size with its mtime put back (cp -p, rsync -t): rebuilt all the same
    before, st = textdata.load_tokens(str(cache))[1]['fingerprint'], path.stat()
    path.write_text((text + '\nmore').replace('head', 'hand'))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert textdata.load_tokens(textdata.tokenize_text(str(path), 'cl100k_base'))[1]['fingerprint'] != before
    # a token file is used directly
    last_tok = train_run(tmp_path, 'text4', **{**one_step, 'data': str(cache), 'eval_iters': 0})
    assert math.isfinite(last_tok['val_loss'])
    # resumed with --eval_iters=0 (every window) and no --data: the checkpoint's source is text: allowed
    code, _, err = run_train(f'--out_dir={tmp_path}/text4', '--init_from=resume', '--max_iters=2',
                             '--eval_iters=0', '--allow_changes=True')
    assert code == 0, err


def sigterm_after_rows(args, out_dir, rows, env, wait=120):
    """`python train.py args` into out_dir, sent SIGTERM once its log.jsonl has more than `rows` rows; returns
    (exit status, stdout, stderr)."""
    p = subprocess.Popen([sys.executable, 'train.py', *args, f'--out_dir={out_dir}'], cwd=HERE, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + wait
    while time.time() < deadline and rows_written(out_dir) <= rows:
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def ckpt_config(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=False)['config']


@pytest.mark.slow
def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
    """SIGTERM at a random step, exit 75, resume: the same weights bit for bit, and the same log: every step's
    loss (so the same data position) and learning rate, each step once, nothing of the first part lost."""
    # dropout, so the torch RNG state must be restored too
    args = ['--vocab_size=64', '--n_embd=32', '--n_head=2', '--block_size=8', '--batch_size=8',
            '--max_iters=600', '--warmup_iters=10', '--eval_interval=200', '--eval_iters=2',
            '--log_interval=1', '--head=wide', '--dropout=0.1']
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    assert run_train(*args, f'--out_dir={full}')[0] == 0
    code, out, err = sigterm_after_rows(args, part, 20, CHILD_ENV)
    assert code == runtime.REQUEUE_EXIT, err
    stopped = torch.load(os.path.join(part, 'ckpt.pt'), weights_only=False)['iter_num']
    assert 20 <= stopped < 600 and 'saved' in out
    code, out, err = run_train(*args, f'--out_dir={part}', '--init_from=resume')
    assert code == 0, err
    assert f'resuming {part}/ckpt.pt at iter {stopped}' in out
    a = torch.load(os.path.join(full, 'ckpt.pt'), weights_only=False)
    b = torch.load(os.path.join(part, 'ckpt.pt'), weights_only=False)
    assert a['iter_num'] == b['iter_num'] == 600
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    steps = lambda d: [(r['iter'], r['loss'], r['lr']) for r in read_log(d, 'train')]
    evals = lambda d: [(r['iter'], r['val_loss'], r['val_acc']) for r in read_log(d, 'eval')]
    assert [s[0] for s in steps(part)] == list(range(1, 601))  # each step once, the first part kept
    assert steps(part) == steps(full) and evals(part) == evals(full)
    assert [r['type'] for r in read_log(part)].count('config') == 1


@pytest.mark.slow
def test_a_config_file_is_named_on_the_first_line_and_the_command_line_wins(tmp_path):
    code, out, err = run_train('config/train_gpu.py', *TINY_RUN, '--n_layer=1', '--max_iters=1',
                               f'--out_dir={tmp_path}/run')
    assert code == 0, err
    assert out.splitlines()[0].startswith('options from config/train_gpu.py: linear head, V = 64,')
    config = read_log(tmp_path / 'run', 'config')[0]
    assert (config['n_embd'], config['n_layer'], config['max_iters']) == (16, 1, 1)  # the command line wins
    assert config['eval_interval'] == 1000  # the file's value where the command line is silent


SYNC_COUNTER = """
import sys, torch
calls, G = [], {'__name__': '__main__', '__file__': 'train.py'}
def counted(name):
    read = getattr(torch.Tensor, name)
    def wrapper(self, *args, **kwargs):  # the iteration at which a tensor is read back to the host
        # not AdamW's own reads of its step count: a CPU tensor on its CPU path, on the device (fused) on CUDA
        if not sys._getframe(1).f_globals.get('__name__', '').startswith('torch.optim'):
            calls.append(G.get('iter_num'))
        return read(self, *args, **kwargs)
    return wrapper
for name in ('item', 'tolist', '__bool__', '__float__', 'cpu', 'numpy'):
    setattr(torch.Tensor, name, counted(name))
sys.argv = ['train.py', *sys.argv[1:]]
exec(compile(open('train.py').read(), 'train.py', 'exec'), G)
print('READS AT', sorted(set(i for i in calls if i is not None)))
"""


@pytest.mark.slow
@pytest.mark.parametrize('loss', ['naive', 'fused'])
def test_no_step_between_two_log_steps_reads_a_tensor_back(tmp_path, loss):
    """On a GPU every read of a tensor by the host waits for the device. Counted on the CPU, in a real run of
    train.py: every Tensor.item/tolist/__bool__/__float__/cpu/numpy call, by the iteration it happens at. Only
    log steps (multiples of log_interval) and evaluations may read; a per-step read shows at the other
    steps."""
    args = [*TINY_RUN, '--log_interval=5', '--max_iters=12', '--eval_interval=1000', f'--loss={loss}']
    code = subprocess.run([sys.executable, '-c', SYNC_COUNTER, *args, f'--out_dir={tmp_path}/run'],
                          capture_output=True, text=True, timeout=120, cwd=HERE, env=CHILD_ENV)
    assert code.returncode == 0, code.stderr[-2000:]
    reads = json.loads(code.stdout.split('READS AT')[-1].strip())
    assert reads and set(reads) <= {0, 5, 10, 12}, reads  # start (eval 0), log steps, the final eval


@pytest.mark.slow
def test_second_signal_exits_at_once_without_saving(tmp_path):
    out = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, 'train.py', *TINY_RUN, '--max_iters=1000000',
                          '--eval_interval=1000000', f'--out_dir={out}'],
                         cwd=HERE, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and rows_written(out) < 5:  # config, eval 0, three steps: in the loop
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGINT)  # two different signals, so the kernel cannot merge them into one
    os.kill(p.pid, signal.SIGTERM)
    stdout, err = p.communicate(timeout=60)
    assert p.returncode == runtime.REQUEUE_EXIT, err
    assert 'SIGINT: saving after this step' in stdout
    assert 'second SIGTERM: exiting now, without saving' in stdout
    assert 'saved ' not in stdout
    # the start's checkpoint, untouched
    assert checkpoint.load_checkpoint(str(out / 'ckpt.pt'))['iter_num'] == 0


@pytest.mark.slow
def test_bad_input_is_one_clear_line(tmp_path):
    empty = tmp_path / 'empty.txt'
    empty.write_text('')
    short = tmp_path / 'short.txt'
    short.write_text('just a few words')
    binary = tmp_path / 'binary.txt'
    binary.write_bytes(b'\x7fELF\x02\x01\x01\x00\x00\x00' * 50)
    bad_ids = tmp_path / 'bad.tok'
    textdata.write_tokens(str(bad_ids), np.array([1, 2, 150, 3] * 100), vocab_size=100, encoding='test')
    truncated = tmp_path / 'trunc.tok'
    textdata.write_tokens(str(truncated), np.arange(100), vocab_size=100, encoding='test')
    with open(truncated, 'r+b') as f:
        f.truncate(os.path.getsize(truncated) - 3)
    raw = tmp_path / 'raw.bin'
    raw.write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    afile, logged, config = tmp_path / 'afile', tmp_path / 'logged', tmp_path / 'cfg.py'
    afile.write_text('')
    logged.mkdir()
    (logged / 'log.jsonl').write_text('{"type": "config"}\n')
    config.write_text("import math\nhed = 'wide'\n")
    cases = [(['--head=mlpx'], "unknown head 'mlpx': choose one of linear, tied, narrow, wide or remedies"),
             (['--head=narrow', '--head_rank=0'], 'head_rank must be a positive integer'),
             (['--head=wide', '--head_rank=-2'], 'head_rank must be a positive integer'),
             (['--vocab_size=1'], 'vocab_size must be at least 2'),
             ([f'--data={tmp_path}/missing.txt'], 'not found'),
             ([f'--data={empty}'], 'empty'),
             ([f'--data={short}'], 'too short'),
             ([f'--data={binary}'], 'NUL bytes'),
             ([f'--data={bad_ids}'], 'token id 150 ≥ vocab_size 100'),
             ([f'--data={truncated}'], 'truncated'),
             ([f'--data={raw}'], 'no GBTOKENS header'),
             (['--max_iters=ten'], 'expects int'),
             (['--init_from=resume'], 'not found: start with --init_from=scratch'),
             (['--block_size=1'], 'SpamLang needs --block_size ≥ 2'),  # no position to measure
             (['--gradient_accumulation_steps=-3'], '--gradient_accumulation_steps must be positive'),
             (['--beta1=1.5'], 'need 0 ≤ --dropout, --beta1, --beta2 < 1'),
             (['--warmup_iters=-5'], '--warmup_iters must be ≥ 0'),
             (['--eval_iters=-1'], '--eval_iters must be ≥ 0'),
             ([f'--out_dir={tmp_path}/{{head.x}}'], 'bad {field}'),
             ([f'--out_dir={afile}'], 'cannot be made'),
             ([f'--out_dir={logged}'], 'already holds a run'),  # a run that saved no checkpoint
             ([str(config)], "unknown option --hed in")]  # not --math: an import is no option
    for args, msg in cases:
        out_dir = [] if any(a.startswith('--out_dir') for a in args) else [f'--out_dir={tmp_path}/run']
        code, out, err = run_train(*args, *out_dir, '--max_iters=1')
        assert code != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and 'Traceback' not in err and msg in lines[0], (args, err)
    assert not os.path.exists(tmp_path / 'run' / 'ckpt.pt')
    assert (logged / 'log.jsonl').read_text() == '{"type": "config"}\n'  # untouched
    # no cache left
    assert not [f for f in os.listdir(tmp_path) if '.tok' in f and f not in ('bad.tok', 'trunc.tok')]


@pytest.mark.slow
def test_failed_start_never_overwrites_a_checkpoint(tmp_path):
    out = str(tmp_path / 'run')
    train_run(tmp_path, 'run', vocab_size=64, n_embd=16, n_head=2, max_iters=5, eval_interval=5)
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    for args in (['--head=wide'], ['--init_from=resume', '--n_embd=32'],
                 ['--init_from=resume', '--head_rank=0']):
        code, _, err = run_train(*args, f'--out_dir={out}')
        assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before


@pytest.mark.slow
def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL while a checkpoint is being written (seen by its temp file, which a killed process leaves
    behind): ckpt.pt and prev_ckpt.pt are still complete and verified."""
    rng = np.random.default_rng(20261201)  # a seeded schedule: the same pauses on every run
    out = tmp_path / 'run'  # a bigger model saved every step, so most of the time is spent writing
    args = ['--vocab_size=8192', '--n_embd=128', '--n_head=2', '--block_size=8', '--batch_size=2',
            '--eval_interval=1', '--eval_iters=1', '--max_iters=100000', f'--out_dir={out}']
    landed, seen = None, []
    for attempt in range(10):  # the temp file may be renamed between seeing it and the kill: then try again
        resume = ['--init_from=resume'] if attempt else []
        p = subprocess.Popen([sys.executable, 'train.py', *args, *resume],
                             cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CHILD_ENV)
        tmp = out / f'ckpt.pt.tmp{p.pid}'
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None and not (out / 'prev_ckpt.pt').exists():
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        while time.time() < deadline and p.poll() is None and not tmp.exists():
            pass  # spin: a write lasts milliseconds
        p.kill()
        seen.append(p.wait())  # -9, or the exit status of a run that had ended by itself
        if tmp.exists():
            landed = attempt
            break
    assert landed is not None, f'no kill landed while a checkpoint was being written: {seen}'
    ckpt = checkpoint.load_checkpoint(str(out / 'ckpt.pt'))  # verified: complete and unchanged
    prev = checkpoint.load_checkpoint(str(out / 'prev_ckpt.pt'))
    # both complete: the kill may land before the old ckpt.pt became prev_ckpt.pt (prev < ckpt) or after it,
    # before the new one was renamed into place (prev == ckpt)
    assert prev['iter_num'] <= ckpt['iter_num']


@pytest.mark.slow
def test_corrupt_checkpoints_are_refused_or_fall_back(tmp_path):
    out = tmp_path / 'run'
    assert run_train(*TINY_RUN, '--max_iters=4', '--eval_interval=2', f'--out_dir={out}')[0] == 0
    ckpt, prev = out / 'ckpt.pt', out / 'prev_ckpt.pt'
    assert checkpoint.load_checkpoint(str(prev))['iter_num'] == 2
    good = ckpt.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # torch.load reads this silently; the digest does not
    for bad, what in ((good[:len(good) // 2], 'truncated'), (bytes(flipped), 'bit flip')):
        ckpt.write_bytes(bad)
        code, _, err = run_train('--init_from=resume', '--max_iters=6', '--allow_changes=True',
                                 f'--out_dir={out}')
        assert code == 1 and 'truncated or corrupt' in err and '--resume_fallback=True' in err, (what, err)
        assert len(err.strip().splitlines()) == 1
        assert ckpt.read_bytes() == bad  # nothing overwritten
    code, outp, err = run_train('--init_from=resume', '--resume_fallback=True', '--max_iters=6',
                                '--allow_changes=True', f'--out_dir={out}')
    assert code == 0, err
    assert 'resuming from the previous one' in outp and 'at iter 2' in outp
    assert checkpoint.load_checkpoint(str(ckpt))['iter_num'] == 6


@pytest.mark.slow
def test_resume_refuses_other_data_and_other_shapes(tmp_path):
    tok_a, tok_b = str(tmp_path / 'a.tok'), str(tmp_path / 'b.tok')
    rng = np.random.default_rng(0)
    textdata.write_tokens(tok_a, rng.integers(0, 50, 2000), vocab_size=50, encoding='enc-a')
    textdata.write_tokens(tok_b, rng.integers(0, 50, 2000), vocab_size=50, encoding='enc-a')
    out = str(tmp_path / 'run')
    base = [a for a in TINY_RUN if not a.startswith('--vocab_size')]
    assert run_train(*base, f'--data={tok_a}', '--max_iters=2', '--eval_interval=2',
                     f'--out_dir={out}')[0] == 0
    saved = checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))['config']
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
    code, _, err = run_train('--init_from=resume', '--max_iters=4', '--allow_changes=True',
                             f'--out_dir={out}')
    assert code == 0, err  # intended changes (new data, more steps) are allowed when said so
    assert checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))['iter_num'] == 4


@pytest.mark.slow
def test_hmm_data_logs_its_floor_and_resumes_its_stream(tmp_path):
    args = [*TINY_RUN, '--data=hmm:4', '--eval_interval=3']
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    assert run_train(*args, '--max_iters=6', f'--out_dir={full}')[0] == 0
    assert run_train(*args, '--max_iters=3', f'--out_dir={part}')[0] == 0
    code, out, err = run_train(*args, '--max_iters=6', '--allow_changes=True', '--init_from=resume',
                               f'--out_dir={part}')
    assert code == 0, err
    # the language's stream resumes where it stopped: the same losses, step for step
    steps = lambda d: [(r['iter'], r['loss']) for r in read_log(d, 'train')]
    assert steps(part) == steps(full) and len(steps(full)) == 6
    floor = hmm.Language(64, 4).floor(8)
    evals = read_log(full, 'eval')
    assert len(evals) >= 2 and {r['floor'] for r in evals} == {floor} and f"(floor {floor:.4f})" in out
    code, _, err = run_train('--init_from=resume', '--data=hmm:8', '--max_iters=9', f'--out_dir={full}')
    assert code == 1 and "differs from the checkpoint's 'hmm:4'" in err and err.count('\n') == 1, err
    # measure.py reads the language back from the checkpoint's config
    c = measure.parse_args([f"--ckpt={full}/ckpt.pt", '--n_tokens=64', '--batch_size=4'])
    H, Y, W, _, _, _ = measure.source_ckpt(c, 'cpu')
    assert H.shape == (64, 16) and (hmm.Language(64, 4).state_of[Y] >= 0).all()
    code, _, err = run_train('--data=hmm:x', '--max_iters=1', f'--out_dir={tmp_path}/bad')
    assert code == 1 and err.strip() == 'error: --data=hmm:x: write hmm or hmm:S, S a whole number of ' \
        'states, e.g. hmm:16', err


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / 'run'
    code, _, err = run_train(*TINY_RUN, '--learning_rate=1e30', '--warmup_iters=0', '--grad_clip=0',
                             '--max_iters=50', '--eval_interval=1000', f'--out_dir={out}')
    assert code == 1 and ('loss is nan' in err or 'loss is inf' in err), err
    assert len(err.strip().splitlines()) == 1 and 'nonfinite_batch.pt' in err
    ckpt = checkpoint.load_checkpoint(str(out / 'ckpt.pt'))
    assert all(torch.isfinite(v).all() for v in ckpt['model'].values())
    assert f"(iter {ckpt['iter_num']})" in err
    assert set(torch.load(out / 'nonfinite_batch.pt')) == {'x', 'y'}
    code, _, err = run_train(*TINY_RUN, '--learning_rate=1e30', '--warmup_iters=0', '--grad_clip=0',
                             '--max_iters=50', '--eval_interval=1000', '--save_checkpoints=False',
                             f'--out_dir={tmp_path}/unsaved')
    assert code == 1 and 'no checkpoint was saved' in err and 'resume' not in err, err


@pytest.mark.slow
def test_failed_save_leaves_the_previous_checkpoint(tmp_path):
    import resource
    out = tmp_path / 'run'
    assert run_train(*TINY_RUN, '--max_iters=2', '--eval_interval=2', f'--out_dir={out}')[0] == 0
    before = (out / 'ckpt.pt').read_bytes()
    limit = len(before) // 2  # the file-size limit makes the next checkpoint write fail, as a full disk would
    p = subprocess.run([sys.executable, 'train.py', '--init_from=resume', '--max_iters=4',
                        '--allow_changes=True', f'--out_dir={out}'],
                       cwd=HERE, capture_output=True, text=True, timeout=120, env=CHILD_ENV,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert p.returncode == 1 and 'could not save' in p.stderr
    assert 'previous checkpoint (iter 2) is intact' in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert (out / 'ckpt.pt').read_bytes() == before
    assert not [f for f in os.listdir(out) if '.tmp' in f]  # no half-written leftovers


@pytest.mark.slow
def test_save_checkpoints_false_writes_no_checkpoint(tmp_path):
    last = train_run(tmp_path, 'run', vocab_size=64, n_embd=16, n_head=2, max_iters=4, eval_interval=2,
                     save_checkpoints=False)
    assert last['iter'] == 4 and read_log(tmp_path / 'run')[-1]['iter'] == 4
    assert not [f for f in os.listdir(tmp_path / 'run') if f.endswith('.pt')]
    # stopped by SIGTERM, it says nothing was saved and exits 1: a requeue (75) would find nothing to resume
    args = [*TINY_RUN, '--max_iters=100000', '--save_checkpoints=False']
    code, out, err = sigterm_after_rows(args, str(tmp_path / 'stopped'), 5, CHILD_ENV)
    assert code == 1 and 'nothing saved (--save_checkpoints=False)' in err, (out, err)
    assert 'saved /' not in out


def test_a_resumed_log_drops_the_rows_after_its_checkpoint(tmp_path):
    """A run stopped between checkpoints (a crash, a second signal) logged rows past its checkpoint; the
    resumed run logs them again, so open_log drops them, and a line cut short by the crash."""
    path = tmp_path / 'log.jsonl'
    rows = [{'type': 'config'}, {'type': 'eval', 'iter': 0}, {'type': 'train', 'iter': 100},
            {'type': 'eval', 'iter': 100}, {'type': 'train', 'iter': 120}]
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"type": "tra')
    with checkpoint.open_log(str(path), 100) as f:
        f.write(json.dumps({'type': 'train', 'iter': 120}) + '\n')
    assert read_log(tmp_path) == rows  # the resumed run's row 120 replaces the first one

# -----------------------------------------------------------------------------
# measure.py: r and c against a float64 QR, the live meter, the spectrum, the direction test, the sources


def test_logit_grad_is_softmax_minus_onehot():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(20, 30, generator=g) * 3, torch.randint(0, 30, (20,), generator=g)
    G = measure.logit_grad(z, y)
    torch.testing.assert_close(G, softmax_minus_onehot(z, y), rtol=1e-12, atol=1e-14)
    assert G.dtype == torch.float64 and G.sum(1).abs().max() < 1e-12  # rows of G sum to 0


def test_measure_cosine_is_sqrt_one_minus_r_squared():
    g = torch.Generator().manual_seed(0)
    for V, D, N in [(50, 5, 30), (200, 40, 7), (64, 63, 100), (30, 29, 1)]:
        W = torch.randn(V, D, generator=g)
        G = torch.randn(N, V, generator=g) * torch.rand(N, 1, generator=g)  # any G, not only softmax − onehot
        m = measure.destroyed_ratio(G, W)
        assert 0 < m['destroyed_ratio'] < 1
        assert abs(m['visible_cosine'] - math.sqrt(1 - m['destroyed_ratio'] ** 2)) < 1e-10
        assert abs(m['destroyed_ratio'] - qr_ratio(G, W)) < 1e-10


def test_measure_zero_when_G_lies_in_col_W():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(300, 16, generator=g)
    G = torch.randn(50, 16, generator=g, dtype=torch.float64) @ W.double().T  # rows in col(W)
    assert measure.destroyed_ratio(G, W)['destroyed_ratio'] < 1e-7
    live = meter.live_ratio(G @ W.double(), G.pow(2).sum(1), meter.head_factor(W), W.size(0))
    assert live['grad_destroyed'] < 1e-5 and abs(live['grad_cosine'] - 1) < 1e-10
    # all of it visible: V/rank × chance
    assert live['visible_over_chance'] == pytest.approx(300 / 16, rel=1e-9)


@pytest.mark.parametrize('V,D,N', [(400, 40, 500), (1000, 10, 200), (256, 128, 100)])
def test_measure_random_subspace_baseline(V, D, N):
    # ‖Pg‖²/‖g‖² summed over N isotropic rows is Beta(ND/2, N(V−D)/2): mean D/V, std √(2(D/V)(1 − D/V)/(NV))
    std = math.sqrt(2 * (D / V) * (1 - D / V) / (N * V))
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        W, G = torch.randn(V, D, generator=g), torch.randn(N, V, generator=g)
        r = measure.destroyed_ratio(G, W)['destroyed_ratio']
        assert abs(r ** 2 - (1 - D / V)) < 5 * std, (r ** 2, 1 - D / V, std)


def test_measure_visible_over_chance_is_one_for_random_subspaces():
    """c²·V/rank(W): for a fixed G and W's column space uniformly random of dimension k,
    E[‖P g‖²] = (k/V)‖g‖², so the mean over random rank-k heads is 1 (k = 8 < D = 32: the rank counts, not D).
    Tolerance: 5 standard errors."""
    g = torch.Generator().manual_seed(0)
    V, D, k, n = 512, 32, 8, 24
    Z, y = torch.randn(256, V, generator=g) * 2, torch.randint(0, V, (256,), generator=g)
    G = softmax_minus_onehot(Z, y)
    live = []
    for _ in range(n):
        W = torch.randn(V, k, generator=g) @ torch.randn(k, D, generator=g)  # rank k
        ratio = meter.live_ratio(G @ W.double(), G.pow(2).sum(1), meter.head_factor(W), V)
        live.append(ratio['visible_over_chance'])
        r = qr_ratio(G, torch.linalg.svd(W.double(), full_matrices=False)[0][:, :k])
        assert live[-1] == pytest.approx((1 - r ** 2) * V / k, rel=1e-5)
    m = measure.measure(torch.randn(64, D, generator=g), torch.randint(0, V, (64,), generator=g), W,
                        spectrum_tokens=0, direction_tokens=0)
    assert m['rank_W'] == k
    assert m['visible_over_chance'] == pytest.approx(m['visible_cosine'] ** 2 * V / k, rel=1e-9)
    mean, se = np.mean(live), np.std(live, ddof=1) / math.sqrt(n)
    assert abs(mean - 1) < 5 * se and se < 0.05, (mean, se)


LIVE_HEADS = [('linear', None), ('tied', None), ('wide', None), ('wide', 48), ('narrow', None), ('narrow', 1),
              ('narrow', 7)]


@pytest.mark.parametrize('head,rank', LIVE_HEADS)
def test_measure_live_formula_equals_qr_projection(head, rank):
    torch.manual_seed(0)
    model = GPT(tiny(head, head_rank=rank, vocab_size=300))  # padded to 320: padded rows must be excluded
    W = model.lm_head.effective_weight()
    basis = col_basis(model.lm_head)
    idx, y = torch.randint(0, 300, (4, 8)), torch.randint(0, 300, (4, 8))
    logits, loss = model(idx, y)
    G = softmax_minus_onehot(logits, y)
    ref = qr_ratio(G, basis)
    assert abs(measure.destroyed_ratio(G, W)['destroyed_ratio'] / ref - 1) < 1e-9
    live = meter.live_meter(logits, y, W)  # the eval path: Σp² − 2p_y + 1 and P·W − W[y]
    assert abs(live['grad_destroyed'] / ref - 1) < 1e-5
    assert abs(live['grad_cosine'] / math.sqrt(1 - ref ** 2) - 1) < 1e-5
    k = min(getattr(model.lm_head, 'rank', 32), 32)
    assert live['visible_over_chance'] == pytest.approx((1 - ref ** 2) * 300 / k, rel=1e-4)
    with torch.no_grad():  # c_H: measure.realizable's, from the hidden states
        H = model.hidden(idx).reshape(-1, model.config.n_embd)
    assert live['grad_c_H'] == pytest.approx(measure.realizable(H, y.reshape(-1), W)['c_H'], rel=1e-4)
    for fused in (False, True):  # --meter_every_step: the model's own forward pass, whichever loss trains it
        model.fused = fused
        model.train()
        step = meter.model_meter(model, idx, y)
        assert abs(step['grad_destroyed'] / ref - 1) < 1e-5
        assert abs(step['grad_cosine'] / math.sqrt(1 - ref ** 2) - 1) < 1e-5
        assert model.training  # left as it was


def test_measure_meters_ignore_targets_of_minus_one():
    """Tokens whose target is −1 are in no meter: not in live_meter (eval) nor in model_meter (every step), so
    each reads the QR reference on the other tokens."""
    torch.manual_seed(0)
    model = GPT(tiny('linear', vocab_size=50))
    idx, y = torch.randint(0, 50, (3, 8)), torch.randint(0, 50, (3, 8))
    y[0, :3], y[2, 5] = -1, -1
    keep = y.reshape(-1) >= 0
    with torch.no_grad():
        logits = model(idx)[0]
    W = model.lm_head.effective_weight()
    ref = qr_ratio(softmax_minus_onehot(logits.reshape(-1, 50)[keep], y.reshape(-1)[keep]), W)
    assert abs(meter.live_meter(logits, y, W)['grad_destroyed'] / ref - 1) < 1e-5
    gsq, gW = meter.logit_grad_stats(logits, y, W)
    assert gsq[~keep].abs().max() == 0 and gW[~keep].abs().max() == 0  # their rows are 0: in neither sum
    assert abs(meter.model_meter(model, idx, y)['grad_destroyed'] / ref - 1) < 1e-5


def test_model_meter_under_autocast_reads_w_in_its_own_dtype():
    """train.py runs --meter_every_step inside its autocast context: a factorized head's B·A formed in bf16
    there carries rounding far above the rank tolerance, and a rank-4 head read as rank 64 (r 0.96, not
    0.998)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, n_embd=64, n_layer=1, n_head=2, block_size=16, head='narrow',
                          head_rank=4))
    x, y = torch.randint(1, 1024, (8, 16)), torch.randint(1, 1024, (8, 16))
    ref = meter.model_meter(model, x, y)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = meter.model_meter(model, x, y)
    assert low['grad_destroyed'] == pytest.approx(ref['grad_destroyed'], abs=1e-3)
    assert low['visible_over_chance'] == pytest.approx(ref['visible_over_chance'], rel=0.05)


def test_measure_live_meter_on_positions_after_the_first():
    """SpamLang's meter on positions ≥ 1 is the QR reference on those rows only. Hand-built so that the two
    kinds of rows differ: W spans the batch's symbols (one-hot columns); positions ≥ 1 favour their symbol and
    put little mass outside the batch, position 0 is a uniform guess."""
    V, D = 64, 16
    x, y = spamlang.get_batch(12, 8, V, spamlang.make_generator(0))
    symbols = y[:, 0].unique()
    k = len(symbols)                                  # ≤ 12 < D: W has rank k
    W = torch.zeros(V, D)
    W[symbols, torch.arange(k)] = 1.0
    outside = torch.ones(V)
    outside[symbols] = 0.0
    logits = torch.zeros(12, 8, V)
    logits[:, 1:] += 4 * F.one_hot(y[:, 1:], V) - outside
    rest = meter.live_meter(logits[:, 1:], y[:, 1:], W)['grad_destroyed']
    ref = qr_ratio(softmax_minus_onehot(logits[:, 1:], y[:, 1:]), W[:, :k])
    assert abs(rest / ref - 1) < 1e-5, (rest, ref)
    whole = qr_ratio(softmax_minus_onehot(logits, y), W[:, :k])
    assert abs(rest / whole - 1) > 0.05, (rest, whole)  # position 0's rows would change it


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
    noise = torch.randn(64, V, generator=g, dtype=torch.float64)
    G = noise + 5 * torch.randn(64, D, generator=g, dtype=torch.float64) @ U.T
    ref = ((G - G @ Q @ Q.T).norm() / G.norm()).item()
    live = meter.live_ratio(G @ W.double(), G.pow(2).sum(1), meter.head_factor(W), W.size(0))
    assert abs(live['grad_destroyed'] / ref - 1) < 1e-5, (live, ref)
    assert meter.head_factor(W).size(1) == (D if math.isfinite(cond) else D - 5)  # the rank it counts


@pytest.mark.parametrize('head', ['linear', 'narrow'])
def test_measure_realizable_logit_update_has_rank_at_most_2D(head):
    torch.manual_seed(0)
    D, V = 8, 100
    model = GPT(tiny(head, n_embd=D, vocab_size=V, block_size=16, head_rank=2 if head == 'narrow' else None))
    idx, y = torch.randint(0, V, (4, 16)), torch.randint(0, V, (4, 16))
    h = model.hidden(idx)
    h.retain_grad()
    logits = model.lm_head(h)
    F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction='sum').backward()
    H, dH = h.detach().reshape(-1, D), h.grad.reshape(-1, D)
    lm = model.lm_head
    W = lm.effective_weight().detach()
    if head == 'linear':
        dW = lm.weight.grad[:V]
    else:  # W = B·A: first-order change of the product
        dW = lm.B.grad[:V] @ lm.A.detach() + lm.B.detach()[:V] @ lm.A.grad
    H, dH, W, dW = H.double(), dH.double(), W.double(), dW.double()  # fp64 products: rank is exact
    M = dH @ W.T + H @ dW.T  # (N, V): the logit change of a joint gradient step
    G = softmax_minus_onehot(logits, y)
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
    G = softmax_minus_onehot(H @ W.T, y)
    torch.testing.assert_close(sig2[:V], torch.linalg.svdvals(G).pow(2), rtol=1e-9, atol=1e-12)
    W2 = torch.randn(50, D, generator=g)
    y2 = torch.randint(0, 50, (30,), generator=g)
    sig2 = measure.spectrum(H[:30], y2, W2, chunk=8)  # N ≤ V: the N×N Gram, assembled from 4×4 blocks
    torch.testing.assert_close(sig2, torch.linalg.svdvals(softmax_minus_onehot(H[:30] @ W2.T, y2)).pow(2),
                               rtol=1e-5, atol=1e-9)  # fp32 logits, summed in another order
    s = measure.spectrum_stats(sig2, 4, top_k=10)
    energy = sig2.cumsum(0) / sig2.sum()
    assert s['ey_k'] == 8 and abs(s['ey_floor'] - (1 - energy[7].item())) < 1e-12
    assert abs(s['energy_top_k'] - energy[9].item()) < 1e-12
    assert energy[s['components_0.7'] - 1] >= 0.7 > energy[s['components_0.7'] - 2]


def test_measure_eckart_young_floor_at_the_rank_of_a_step():
    """The energy of G beyond its top k components, k the largest rank of a first-order step (2·rank(W) for a
    rank-r factorization, r ≤ D): out of reach of any update of the hidden states and the head. A hand-built
    spectrum, then a rank-3 head (D = 16) through measure()."""
    s = measure.spectrum_stats(torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0], dtype=torch.float64), 1, top_k=3)
    assert s['ey_k'] == 2 and s['ey_floor'] == pytest.approx(4 / 16, abs=1e-15)
    tops = (s['energy_top_r'], s['energy_top_2r'], s['energy_top_k'])
    assert tops == pytest.approx((8 / 16, 12 / 16, 14 / 16))
    assert (s['components_0.7'], s['components_0.99'], s['components_0.999']) == (2, 5, 5)
    assert s['numerical_rank'] == 5
    p = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0]).sqrt() / torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0]).sqrt().sum()
    assert s['effective_rank'] == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    V, D, r, N = 120, 16, 3, 90
    B, A = torch.randn(V, r, generator=g), torch.randn(r, D, generator=g)
    W = B @ A
    H, y = torch.randn(N, D, generator=g), torch.randint(0, V, (N,), generator=g)
    m = measure.measure(H, y, W, chunk=32, spectrum_tokens=N, direction_tokens=0, factors=(B, A, True))
    sig2 = torch.linalg.svdvals(softmax_minus_onehot(H @ W.T, y)).pow(2)
    assert m['rank_W'] == r and m['ey_k'] == 2 * r
    assert m['ey_floor'] == pytest.approx(1 - (sig2[:2 * r].sum() / sig2.sum()).item(), abs=1e-6)
    # the same matrix as a plain V×D head: its own step H ΔWᵀ reaches rank D, so k = r + D, not 2r
    plain = measure.measure(H, y, W, chunk=32, spectrum_tokens=N, direction_tokens=0, step_tokens=0)
    assert plain['ey_k'] == r + D and 'step' not in plain


def direction_ref(H, y, W, step, factors=None):
    """Loss decreases of the three equal-norm logit steps, by brute force in float64 from the fp32 logits H·Wᵀ
    that measure.py starts from: the head's step is the first-order change of W under a gradient step of the
    mean loss on the head's own parameters (W, or B and A), from autograd."""
    N = len(H)
    Hd, Wd = H.double(), W.double()
    Z = (H @ W.T).double()
    if factors is None:
        Wp = Wd.clone().requires_grad_()
        params, W_of = (Wp,), lambda eta, g: Wp - eta * g[0]
    else:
        B, A = (f.detach().double().requires_grad_() for f in factors[:2])
        params, W_of = (B, A), lambda eta, g: (B - eta * g[0]) @ (A - eta * g[1])
    W0 = W_of(0, (0, 0))
    loss = F.cross_entropy(Z + Hd @ (W0 - W0.detach()).T, y)  # the mean loss, its gradient taken at Z
    grads = torch.autograd.grad(loss, params)
    dW = -torch.func.jvp(lambda eta: W_of(eta, grads), (torch.zeros((), dtype=torch.float64),),
                         (torch.ones((), dtype=torch.float64),))[1]  # (V, D)
    G = softmax_minus_onehot(Z, y)
    uH = G @ Wd @ Wd.T
    dirs = {'G': G, 'H': uH, 'HW': uH + Hd @ dW.T}
    ce = lambda z: F.cross_entropy(z, y).item()
    return {name: ce(Z) - ce(Z - step * math.sqrt(N) * u / u.norm()) for name, u in dirs.items()}


@pytest.mark.parametrize('factorized', [False, True])
def test_measure_direction_test_matches_brute_force(factorized):
    g = torch.Generator().manual_seed(0)
    V, D, N = 60, 6, 40
    H, y = torch.randn(N, D, generator=g), torch.randint(0, V, (N,), generator=g)
    factors = (torch.randn(V, 3, generator=g), torch.randn(3, D, generator=g), True) if factorized else None
    W = factors[0] @ factors[1] if factorized else torch.randn(V, D, generator=g)
    rows = measure.direction_test(H, y, W, chunk=16, step_sizes=(0.01, 1.0), factors=factors)
    for row in rows:
        ref = direction_ref(H, y, W, row['step'], factors)
        for name, dec in ref.items():
            assert abs(row[f'decrease_{name}'] - dec) < 1e-9 * max(1, abs(dec)), (name, row, ref)
        assert row['ratio_hidden'] == row['decrease_H'] / row['decrease_G']
        assert row['ratio_hidden_head'] == row['decrease_HW'] / row['decrease_G']
    assert rows[0]['decrease_G'] > rows[0]['decrease_H'] > 0  # the direct gradient is steepest to first order
    # the head's step adds to it
    assert rows[0]['decrease_G'] > rows[0]['decrease_HW'] > rows[0]['decrease_H']


def test_measure_head_update_is_each_heads_own_step():
    """For W = B·A, a gradient step on B and A changes W by −η·(S Aᵀ A + B Bᵀ S) to first order (S = ∂L/∂W):
    the derivative of (B − η ∂L/∂B)(A − η ∂L/∂A) at η = 0, from autograd. For a plain head, S itself."""
    g = torch.Generator().manual_seed(0)
    V, D, r = 30, 8, 3
    B = torch.randn(V, r, generator=g, dtype=torch.float64, requires_grad=True)
    A = torch.randn(r, D, generator=g, dtype=torch.float64, requires_grad=True)
    S = torch.randn(V, D, generator=g, dtype=torch.float64)
    gB, gA = torch.autograd.grad((S * (B @ A)).sum(), (B, A))  # a loss whose ∂L/∂W is S
    step = lambda eta: (B - eta * gB) @ (A - eta * gA)
    zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
    _, dW = torch.func.jvp(step, (zero,), (one,))
    update = measure.head_update(S, (B.detach(), A.detach(), True))
    torch.testing.assert_close(update, -dW, rtol=1e-12, atol=1e-12)
    # A fixed: B's step alone
    gB = torch.autograd.grad((S * (B @ A)).sum(), B)[0]
    torch.testing.assert_close(measure.head_update(S, (B.detach(), A.detach(), False)), gB @ A.detach())
    assert measure.head_update(S) is S
    model = GPT(tiny('narrow', head_rank=3))
    B_, A_, trained = measure.head_factors(model.lm_head)
    assert B_.shape == (100, 3) and torch.equal(B_ @ A_, model.lm_head.effective_weight())  # real rows only
    assert trained and not measure.head_factors(GPT(tiny('narrow', head_basis='select')).lm_head)[2]
    assert measure.head_factors(GPT(tiny('linear')).lm_head) is None


def logit_step_jacobian(H, head, kind):
    """The Jacobian (N·V, parameters) of the logits U = H Wᵀ in the hidden states and the head's trained
    parameters (W; B and A; B alone with A fixed), by autograd in float64."""
    if kind == 'plain':
        params, f = (H, head), lambda H_, W_: H_ @ W_.T
    elif kind == 'trained':
        params, f = (H, *head), lambda H_, B_, A_: H_ @ (B_ @ A_).T
    else:
        params, f = (H, head[0]), lambda H_, B_: H_ @ (B_ @ head[1]).T
    J = torch.autograd.functional.jacobian(f, params)
    return torch.cat([j.reshape(-1, p.numel()) for j, p in zip(J, params)], 1)


@pytest.mark.parametrize('kind,r', [('plain', None), ('fixed', 2), ('fixed', 3), ('trained', 2),
                                    ('trained', 5)])
def test_realizable_share_and_cosines_match_brute_force(kind, r):
    """The realizable share against a least-squares solve over every first-order step (hidden states and
    head), its rank bound against the rank of a random step (r = 5 > D = 3: 2D = 6, not min(2D, r) + D = 8),
    and c_H, c_W, c* against the N×V directions formed explicitly."""
    g = torch.Generator().manual_seed(1)
    N, V, D = 14, 17, 3
    H = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (N,), generator=g)
    if kind == 'plain':
        head = torch.randn(V, D, generator=g, dtype=torch.float64)
        W, factors = head, None
    else:
        head = (torch.randn(V, r, generator=g, dtype=torch.float64),
                torch.randn(r, D, generator=g, dtype=torch.float64))
        W, factors = head[0] @ head[1], (*head, kind == 'trained')
    m = measure.realizable(H, y, W, factors=factors, chunk=5)
    G = measure.logit_grad(H @ W.T, y)
    J = logit_step_jacobian(H, head, kind)
    fit = J @ torch.linalg.lstsq(J, G.reshape(-1, 1), driver='gelsd').solution
    assert m['realizable_share'] == pytest.approx((fit.pow(2).sum() / G.pow(2).sum()).item(), rel=1e-9)
    assert 0 < m['realizable_share'] < 1
    step = (J @ torch.randn(J.size(1), 1, generator=g, dtype=torch.float64)).view(N, V)
    assert torch.linalg.matrix_rank(step).item() == m['realizable_rank']
    expected = {'plain': 2 * D, 'fixed': 2 * (r or 0), 'trained': 2 * min(r or 0, D)}
    assert m['realizable_rank'] == expected[kind]
    uH = G @ W @ W.T
    uW = H @ measure.head_update(G.T @ H, factors).T
    cos = lambda a, b: ((a * b).sum() / (a.norm() * b.norm())).item()
    assert m['c_H'] == pytest.approx(cos(G, uH), rel=1e-9) and m['c_W'] == pytest.approx(cos(G, uW), rel=1e-9)
    both = torch.stack([uH.flatten(), uW.flatten()], 1)
    best = both @ torch.linalg.lstsq(both, G.reshape(-1, 1)).solution
    assert m['c_star'] == pytest.approx(cos(G.flatten(), best.flatten()), rel=1e-9)
    assert m['c_star'] >= max(m['c_H'], m['c_W'])


def test_row_permuted_null_is_chance_on_random_heads_and_below_an_aligned_one():
    g = torch.Generator().manual_seed(2)
    N, V, D = 64, 400, 8
    H = torch.randn(N, D, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    W = torch.randn(V, D, generator=g)
    null = measure.realizable(H, y, W, null_perms=64)['visible_over_chance_null']
    # a random subspace of dimension k holds k/V of any vector's energy in expectation: 1× chance
    assert null['perms'] == 64 and abs(null['mean'] - 1) < 3 * null['sd'] / 8 + 0.05
    # a head whose rows point at the targets holds far more than its row-permuted copies
    aligned = W.clone()
    aligned[y] += 5 * H
    got = measure.realizable(H, y, aligned, null_perms=16)
    G = measure.logit_grad(H @ aligned.T, y)
    visible = measure.destroyed_ratio(G, aligned)['visible_cosine'] ** 2
    null = got['visible_over_chance_null']
    assert visible * V / D > null['mean'] + 5 * null['sd'] and null['mean'] < 2


def test_measure_hidden_direction_does_not_depend_on_N():
    """ratio_hidden (each token's own hidden-state step) at N = 1,024 and 4,096 tokens of the same fresh-init
    SpamLang model agrees within 2%, about 5× the spread between disjoint batches of 1,024
    (measured 0.2446 vs 0.2454)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_embd=32, n_layer=1, n_head=2, block_size=8)).eval()
    x, y = spamlang.get_batch(512, 8, 512, spamlang.make_generator(1))  # 128 sequences per 1,024 tokens
    with torch.no_grad():
        H = model.hidden(x).reshape(-1, 32)
    W, Y = model.lm_head.effective_weight().detach(), y.reshape(-1)
    ratio = {n: measure.direction_test(H[:n], Y[:n], W, step_sizes=(1e-3,))[0] for n in (1024, 4096)}
    assert abs(ratio[4096]['ratio_hidden'] / ratio[1024]['ratio_hidden'] - 1) < 0.02, ratio
    # the head's share is one shared update, so it does depend on N, as the docstring says
    # (measured 0.299 vs 0.231)
    assert ratio[1024]['ratio_hidden_head'] > 1.15 * ratio[4096]['ratio_hidden_head'], ratio


def test_measure_with_an_output_bias():
    """An output bias (some HF heads have one) enters the logits, G, r, the spectrum and direction test."""
    g = torch.Generator().manual_seed(0)
    V, D, N = 80, 8, 200
    W, b = torch.randn(V, D, generator=g) * 0.5, torch.randn(V, generator=g) * 2
    H, y = torch.randn(N, D, generator=g), torch.randint(0, V, (N,), generator=g)
    m = measure.measure(H, y, W, bias=b, chunk=64, spectrum_tokens=N, direction_tokens=50)
    Z = H @ W.T + b
    G = softmax_minus_onehot(Z, y)
    assert m['loss'] == pytest.approx(cross_entropy_ref(Z, y).mean().item(), rel=1e-6)
    assert m['destroyed_ratio'] == pytest.approx(qr_ratio(G, W), rel=1e-9)
    sig2 = torch.linalg.svdvals(G).pow(2)
    assert m['ey_floor'] == pytest.approx(1 - (sig2[:2 * D].sum() / sig2.sum()).item(), abs=1e-9)
    Zd, Gd = Z[:50].double(), G[:50]
    u = Gd @ W.double() @ W.double().T
    ce = lambda z: F.cross_entropy(z, y[:50]).item()
    dec_H = ce(Zd) - ce(Zd - 1e-3 * math.sqrt(50) * u / u.norm())
    assert m['direction']['steps'][0]['decrease_H'] == pytest.approx(dec_H, rel=1e-6)
    plain = measure.measure(H, y, W, spectrum_tokens=0, direction_tokens=0)
    assert abs(plain['destroyed_ratio'] - m['destroyed_ratio']) > 1e-3  # the bias mattered


def save_ckpt_like_train(path, model, iter_num=7, **config):
    """A checkpoint as train.py writes it (model, config, iteration), for measure.py's --ckpt."""
    cfg = {**{k: getattr(model.config, k) for k in MODEL_KEYS}, 'data': 'spamlang', 'encoding': 'cl100k_base',
           **config}
    checkpoint.save_checkpoint(str(path), dict(model=model.state_dict(), config=cfg, iter_num=iter_num))


def test_measure_checkpoint_in_process_and_its_refusals(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny('narrow', head_rank=3, vocab_size=90))
    ckpt = tmp_path / 'ckpt.pt'
    save_ckpt_like_train(ckpt, model)
    c = measure.parse_args([f'--ckpt={ckpt}', '--n_tokens=100', '--batch_size=4'])
    H, Y, W, bias, factors, about = measure.source_ckpt(c, 'cpu')
    desc = about['source']
    assert 'iter 7' in desc and 'narrow' in desc and bias is None and factors[0].shape == (90, 3)
    torch.testing.assert_close(W, model.lm_head.effective_weight())
    m = measure_main([f'--ckpt={ckpt}', '--n_tokens=100', '--batch_size=4', '--spectrum_tokens=0',
                      '--direction_tokens=0'])
    ref = qr_ratio(softmax_minus_onehot(H[:100] @ W.detach().T, Y[:100]), col_basis(model.lm_head))
    assert m['rank_W'] == 3 and m['destroyed_ratio'] == pytest.approx(ref, rel=1e-9)
    other = tmp_path / 'v50.tok'
    textdata.write_tokens(str(other), np.arange(500) % 50, vocab_size=50, encoding='enc')
    for args, msg in [([f'--ckpt={ckpt}', '--block_size=64'], 'exceeds the checkpoint'),
                      ([f'--ckpt={ckpt}', f'--data={other}'], 'V = 50 but the checkpoint'),
                      ([f'--ckpt={ckpt}', f'--json_out={tmp_path}/no/m.json'], 'cannot write it'),
                      ([f'--ckpt={ckpt}', f'--plot={tmp_path}'], 'cannot write it'),
                      ([f'--ckpt={ckpt}', '--n_tokens=0'], 'must be positive'),
                      ([f'--ckpt={ckpt}', '--dtype=float16'], 'must be one of float64, float32')]:
        with pytest.raises(ConfigError, match=msg):
            measure_main(args)


def test_measure_refuses_a_head_that_is_not_linear():
    """hf_hidden checks the model's own logits against H·Wᵀ (+ b): a softcapped head is refused."""
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(40, 8, generator=g), torch.randn(40, generator=g)
    H = torch.randn(2, 5, 8, generator=g) * 3

    def fake(cap):
        def model(x, output_hidden_states=True, logits_to_keep=None):
            z = H @ W.T + b
            return SimpleNamespace(hidden_states=[H], logits=cap * torch.tanh(z / cap) if cap else z)
        return model
    assert torch.equal(measure.hf_hidden(fake(None), None, W, b), H)
    with pytest.raises(ConfigError, match='unsupported head'):
        measure.hf_hidden(fake(30.0), None, W, b)
    with pytest.raises(ConfigError, match='unsupported head'):
        measure.hf_hidden(fake(None), None, W, None)  # the bias left out


def test_measure_bad_input_in_process(tmp_path):
    garbage = tmp_path / 'bad.pt'
    garbage.write_bytes(b'not a checkpoint')
    nanogpt = tmp_path / 'nanogpt.pt'
    torch.save({'model_args': {}, 'iter_num': 3}, nanogpt)  # another project's checkpoint
    for args, msg in [([f'--ckpt={garbage}'], 'truncated or corrupt'),
                      ([f'--ckpt={nanogpt}'], 'not a checkpoint of this project'),
                      ([f'--ckpt={tmp_path}'], 'is a folder'),
                      (['--init', '--nope=1'], 'unknown option --nope'),
                      ([], 'exactly one of'),
                      (['--init', '--hf=gpt2'], 'exactly one of'),
                      (['--init', '--head=mlpx'], 'unknown head'),
                      (['--init', '--n_tokens=lots'], 'expects int'),
                      (['--init', '--data=/nonexistent.txt'], 'not found'),
                      ([f'--ckpt={garbage}', '--vocab_size=100'], '--vocab_size builds the model of --init'),
                      (['--init', '--vocab_size=1'], 'vocab_size must be at least 2'),
                      (['--init', '--vocab_size=500', f'--data={garbage}'], 'text takes V from its'),
                      (['--init', '--block_size=-1'], '--block_size must be ≥ 0'),
                      (['--init', f'--plot={tmp_path}/m.xyz'], 'give a file ending in'),
                      (['--init', f'--plot={garbage}/m.png'], 'cannot write it'),  # a file as its folder
                      (['--init', f'--json_out={tmp_path}'], 'cannot write it'),  # a folder
                      (['--init', f'--plot={tmp_path}/m.png', f'--json_out={tmp_path}/m.png'], 'same file'),
                      (['--init', f'--plot={tmp_path}/m.png', '--spectrum_tokens=0'], '--spectrum_tokens >')]:
        with pytest.raises(ConfigError, match=msg):
            measure_main(args)
    assert garbage.read_bytes() == b'not a checkpoint' and not os.path.exists(tmp_path / 'm.png')


@pytest.mark.slow
def test_measure_bad_input_is_one_clear_line(tmp_path):
    # the command line: one line on stderr, no traceback, exit status 1; --hf without transformers installed
    no_tf = ("import sys, runpy; sys.modules['transformers'] = None; sys.argv = ['measure.py', '--hf=gpt2']; "
             "runpy.run_path('measure.py', run_name='__main__')")
    for args, msg in [(['measure.py', f'--ckpt={tmp_path}/missing.pt'], 'not found'),
                      (['-c', no_tf], 'needs the transformers package')]:
        p = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=120,
                           env=CHILD_ENV)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, (args, p.stderr)
        assert 'Traceback' not in p.stderr and msg in lines[0], (args, p.stderr)


def test_measure_destroyed_grows_as_head_rank_shrinks():
    V, D = 512, 64
    ratios = []
    for rank in (64, 16, 4, 1):
        m = measure_main(['--init', f'--vocab_size={V}', f'--n_embd={D}', '--head=wide',
                          f'--head_rank={rank}', '--n_layer=1', '--n_tokens=1024', '--spectrum_tokens=0',
                          '--direction_tokens=0'])
        assert m['rank_W'] == rank and m['D'] == D and m['V'] == V
        assert abs(m['destroyed_ratio'] - m['random_baseline']) < 0.02  # at init: a random rank-r subspace
        assert m['random_baseline'] == pytest.approx(math.sqrt(1 - rank / V), rel=1e-12)
        ratios.append(m['destroyed_ratio'])
    assert ratios == sorted(ratios) and ratios[-1] - ratios[0] > 0.05, ratios


@pytest.mark.slow
def test_measure_checkpoint_cli_json_and_chunking(tmp_path):
    train_run(tmp_path, 'run', vocab_size=128, n_embd=16, n_head=2, block_size=8, max_iters=30,
              eval_interval=30, eval_iters=1)
    ckpt = str(tmp_path / 'run' / 'ckpt.pt')
    out = tmp_path / 'm.json'
    m = measure_main([f'--ckpt={ckpt}', '--n_tokens=300', '--batch_size=8', '--chunk=64', '--top_k=20',
                      f'--json_out={out}'])
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
    opts = measure.parse_args([f'--ckpt={ckpt}', '--n_tokens=300'])
    H, Y, W, _, _, _ = measure.source_ckpt(opts, 'cpu')
    H, Y = H[:300], Y[:300]
    ref = qr_ratio(softmax_minus_onehot(H @ W.detach().T, Y), W)
    assert abs(m['destroyed_ratio'] / ref - 1) < 1e-9
    m7 = measure.measure(H, Y, W, chunk=7, spectrum_tokens=100, direction_tokens=50)
    m300 = measure.measure(H, Y, W, chunk=300, spectrum_tokens=100, direction_tokens=50)
    assert abs(m7['destroyed_ratio'] - m300['destroyed_ratio']) < 1e-12
    assert m7['spectrum']['numerical_rank'] == m300['spectrum']['numerical_rank']
    steps7, steps300 = m7['direction']['steps'], m300['direction']['steps']
    assert abs(steps7[2]['ratio_hidden_head'] - steps300[2]['ratio_hidden_head']) < 1e-9


def test_measure_plot(tmp_path):
    measure_main(['--init', '--n_tokens=256', '--direction_tokens=0', f'--plot={tmp_path}/e.png'])
    assert (tmp_path / 'e.png').stat().st_size > 1000


def _tiny_hf(path, arch):
    text = ' '.join(['the head of a language model passes back only part of the gradient to its body'] * 40)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator([text], trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk)
    V = len(tok) + 7  # the output matrix has padded rows beyond the tokenizer, as in Pythia
    torch.manual_seed(0)
    if arch == 'gpt2':  # tied lm_head, ln_f
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    else:  # GPTNeoX (Pythia): untied embed_out, final_layer_norm
        cfg = transformers.GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64,
                                         max_position_embeddings=64, tie_word_embeddings=False,
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


@pytest.mark.slow
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
    c = measure.parse_args([f'--hf={tmp_path}', f'--data={tmp_path}/text.txt', '--block_size=32',
                                '--n_tokens=256', '--batch_size=4'])
    H, Y, W, bias, _, about = measure.source_hf(c, 'cpu')
    desc = about['source']
    ids = tok(open(tmp_path / 'text.txt').read(), return_tensors='pt')['input_ids'][0]
    xs = torch.stack([ids[k * 32:(k + 1) * 32] for k in range(8)])
    ys = torch.stack([ids[k * 32 + 1:(k + 1) * 32 + 1] for k in range(8)])
    with torch.no_grad():
        logits = model(xs).logits[..., :len(tok)].reshape(-1, len(tok))  # the model's own logits
    assert torch.equal(Y, ys.reshape(-1))
    torch.testing.assert_close(H @ W.detach().T, logits, rtol=1e-4, atol=1e-4)  # final norm respected
    ref = qr_ratio(softmax_minus_onehot(logits, Y), W)
    code = subprocess.run([sys.executable, 'measure.py', f'--hf={tmp_path}', f'--data={tmp_path}/text.txt',
                           '--block_size=32', '--n_tokens=256', '--batch_size=4', '--spectrum_tokens=128',
                           '--direction_tokens=64', f'--json_out={tmp_path}/m.json'],
                          cwd=HERE, capture_output=True, text=True, timeout=120,
                          env={**CHILD_ENV, 'HF_HUB_OFFLINE': '1'})
    assert code.returncode == 0, code.stderr
    res = json.loads((tmp_path / 'm.json').read_text())
    assert res['V'] == len(tok) and res['D'] == 32 and res['n_tokens'] == 256
    assert abs(res['destroyed_ratio'] / ref - 1) < 1e-6, (res['destroyed_ratio'], ref)
    assert ('untied' in res['source']) == (arch != 'gpt2')

# -----------------------------------------------------------------------------
# the fused loss, autocast (bf16, fp16 with a GradScaler), compile, DDP


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


@pytest.mark.parametrize('head,rank', [('linear', None), ('tied', None), ('narrow', 3), ('wide', None),
                                       ('wide', 48)])
def test_fused_loss_matches_naive_every_head(head, rank):
    torch.manual_seed(0)
    # V = 70 padded to 128: padding stays out
    model = GPT(tiny(head, head_rank=rank, vocab_size=70, block_size=9))
    idx = torch.randint(0, 70, (3, 9))                       # N = 27 tokens, chunks of 4: the last holds 3
    y = torch.randint(0, 70, (3, 9))
    y[0, :5] = -1                                            # ignored targets
    (ln, gn), (lf, gf) = _naive_vs_fused(model, idx, y, chunk=4)
    torch.testing.assert_close(lf, ln, rtol=1e-6, atol=1e-6)
    for name in gn:  # hidden states (via the backbone's weights) and the head's weights or factors
        torch.testing.assert_close(gf[name], gn[name], rtol=1e-5, atol=1e-7, msg=name)
    # the same through GPT.forward, the path train.py takes with --loss=fused
    model.fused = True
    assert model(idx, y)[0] is None
    torch.testing.assert_close(model(idx, y)[1], ln, rtol=1e-6, atol=1e-6)
    assert model(idx)[0].shape == (3, 9, 70)  # without targets: the logits, whatever the loss


def test_fused_loss_function_gradients_and_bf16_inputs():
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
    # bf16 inputs (no autocast): bf16 matmuls, fp32 softmax and loss, as on the naive path with bf16 logits
    hb, Wb = h.detach().bfloat16().requires_grad_(), W.detach().bfloat16().requires_grad_()
    loss = fused_linear_cross_entropy(hb, Wb, y, chunk_size=8)
    gh, gW = torch.autograd.grad(loss, (hb, Wb))
    assert gh.dtype == gW.dtype == torch.bfloat16 and loss.dtype == torch.float32
    ref_b = F.cross_entropy((hb @ Wb.T).float(), y, ignore_index=-1)
    rh, rW = torch.autograd.grad(ref_b, (hb, Wb))
    eps = torch.finfo(torch.bfloat16).eps
    assert abs(loss.item() - ref_b.item()) <= 1e-6 * ref_b.item()  # the same bf16 logits: fp32 sums apart
    assert rel_err(gh, rh) < 2 * eps and rel_err(gW, rW) < 2 * eps


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_fused_loss_runs_its_matmuls_in_the_autocast_dtype(dtype):
    """Under autocast the fused loss computes the logits (and G·W, Gᵀh) in the autocast dtype, as the naive
    path does: its loss equals the naive path's to fp32 rounding (which differs from the fp32 loss by the
    rounding of the logits, at this seed 10-100× more); its gradients agree with the naive path's within the
    dtype's epsilon and differ from fp32's by a fraction of it (a norm over many entries: no cancellation by
    chance)."""
    g = torch.Generator().manual_seed(0)
    N, V, D = 64, 500, 32
    h = torch.randn(N, D, generator=g).requires_grad_()
    # logits of std ≈ 3: rounding shows in the loss
    W = (torch.randn(V, D, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    loss32 = fused_linear_cross_entropy(h, W, y, chunk_size=16)
    g32 = torch.autograd.grad(loss32, (h, W))
    with torch.autocast('cpu', dtype=dtype):
        loss = fused_linear_cross_entropy(h, W, y, chunk_size=16)
        naive = F.cross_entropy(F.linear(h, W).float(), y)
    assert loss.dtype == torch.float32
    gf, gn = torch.autograd.grad(loss, (h, W)), torch.autograd.grad(naive, (h, W))
    eps, eps32 = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    # the rounded logits show in the loss
    assert abs(naive.item() - loss32.item()) > 8 * eps32 * loss32.item()
    losses = (loss.item(), naive.item(), loss32.item())
    assert abs(loss.item() - naive.item()) <= 8 * eps32 * naive.item(), losses
    for a, b, c in zip(gf, gn, g32):
        # the naive path's rounding, within a few roundings
        assert rel_err(a, b) < 2 * eps, rel_err(a, b)
        # not fp32 (rounding of a 16-bit dtype leaves ~eps/4)
        assert rel_err(a, c) > 0.05 * eps, rel_err(a, c)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('head', list(HEADS))
def test_autocast_every_head_naive_and_fused(head, dtype):
    """A training step's loss and gradients under CPU autocast (fp16 with a GradScaler, as train.py does):
    finite, the fused path within 2·eps (norm-wise) of the naive one, both within 2·eps of fp32; no step
    skipped."""
    torch.manual_seed(0)
    model = GPT(tiny(head, vocab_size=300, block_size=16, head_rank=4 if head in FACTORIZED else None))
    idx, y = torch.randint(0, 300, (4, 16)), torch.randint(0, 300, (4, 16))
    y[0, :3] = -1
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step(loss_kind, ac_dtype):
        model.zero_grad(set_to_none=True)
        scaler = torch.amp.GradScaler('cpu', enabled=ac_dtype == torch.float16)
        ctx = torch.autocast('cpu', dtype=ac_dtype) if ac_dtype else torch.autocast('cpu', enabled=False)
        with ctx:
            model.fused = loss_kind == 'fused'
            _, loss = model(idx, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        scaler.step(opt)  # lr 0: the weights stay; a found inf would skip the step and halve the scale
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.update()
        assert scale is None or scaler.get_scale() == scale == 65536.0
        return loss.detach(), grads

    l32, g32 = step('naive', None)
    ln, gn = step('naive', dtype)
    lf, gf = step('fused', dtype)
    eps = torch.finfo(dtype).eps
    assert torch.isfinite(gn).all() and torch.isfinite(gf).all() and torch.isfinite(lf)
    assert rel_err(gf, gn) < 2 * eps and rel_err(gn, g32) < 2 * eps and rel_err(gf, g32) < 2 * eps
    assert abs(lf - ln) < 2 * eps * ln and abs(ln - l32) < 2 * eps * l32


def test_fused_backward_with_a_grad_scaler_scale_stays_finite_in_fp16():
    """GradScaler's first scale is 65,536, which is not an fp16 number (the largest is 65,504): the backward
    must scale in fp32, then cast. Finite gradients that, unscaled, match fp32 within fp16's epsilon."""
    g = torch.Generator().manual_seed(0)
    N, V, D = 48, 400, 32
    h = torch.randn(N, D, generator=g).requires_grad_()
    W = (torch.randn(V, D, generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    ref = torch.autograd.grad(fused_linear_cross_entropy(h, W, y), (h, W))
    with torch.autocast('cpu', dtype=torch.float16):
        loss = fused_linear_cross_entropy(h, W, y, chunk_size=16)
    scaler = torch.amp.GradScaler('cpu')
    assert scaler.get_scale() == 65536.0 > torch.finfo(torch.float16).max
    scaler.scale(loss).backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(W.grad).all()
    eps = torch.finfo(torch.float16).eps
    for got, want in zip((h.grad / 65536, W.grad / 65536), ref):
        assert rel_err(got, want) < 2 * eps, rel_err(got, want)


def test_fused_loss_keeps_small_hidden_gradients_in_fp16():
    """At N = 8,192 tokens, ∇h = G W / N sits near fp16's smallest normal before the loss scale applies: held
    in fp16 it lost 1% of its entries to zero (relative error 7·10⁻³); held in fp32, it is as good as the
    naive loss's."""
    g = torch.Generator().manual_seed(0)
    N, V, D = 8192, 512, 64
    h = torch.randn(N, D, generator=g).requires_grad_()
    W = (torch.randn(V, D, generator=g) * 0.02).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    ref = torch.autograd.grad(F.cross_entropy(F.linear(h, W), y), h)[0]
    with torch.autocast('cpu', dtype=torch.float16):
        fused = fused_linear_cross_entropy(h, W, y)
        naive = F.cross_entropy(F.linear(h, W).float(), y)
    got, want = (torch.autograd.grad(loss * 65536, h)[0] / 65536 for loss in (fused, naive))
    assert (got == 0).sum() == 0, (got == 0).float().mean()
    assert rel_err(got, ref) < 1.5 * rel_err(want, ref) + 1e-5, (rel_err(got, ref), rel_err(want, ref))


@pytest.mark.parametrize('head', ['linear', 'narrow'])
def test_live_meter_inputs_are_the_rows_of_g_and_gw(head):
    """The live meter's per-token inputs: ‖g‖² and g·W, with g = softmax − onehot (0 on ignored tokens)."""
    torch.manual_seed(0)
    model = GPT(tiny(head, vocab_size=70))
    idx, y = torch.randint(0, 70, (4, 8)), torch.randint(0, 70, (4, 8))
    y[1, :3] = -1
    with torch.no_grad():
        logits = model(idx)[0].reshape(-1, 70)
    W = model.lm_head.effective_weight().detach()
    yy = y.reshape(-1)
    G = torch.softmax(logits, -1)
    G[yy >= 0, yy[yy >= 0]] -= 1
    G[yy < 0] = 0                                            # (N, V), unscaled: softmax − onehot
    gsq, gW = meter.logit_grad_stats(logits, y, W)
    torch.testing.assert_close(gsq, G.square().sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gW, G @ W, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_loss_flag_and_compiled_training_matches_eager(tmp_path):
    code, _, err = run_train('--loss=exact', f'--out_dir={tmp_path}/a')
    assert code == 1 and '--loss must be one of auto, naive, fused' in err
    smallest = FUSED_FROM_VOCAB['cpu', False]  # --loss=auto follows the measured table
    for V, want in ((64, 'naive'), (smallest, 'fused')) if smallest else ((64, 'naive'),):
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
    GPT(GPTConfig(**{k: args.get(k, getattr(GPTConfig, k)) for k in MODEL_KEYS})).load_state_dict(state)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    """`torchrun --nproc_per_node=2 train.py` with no --gradient_accumulation_steps: one micro-batch per
    process, so 2 per step, each process its own; the same run as one process with
    --gradient_accumulation_steps=2."""
    args = ['--vocab_size=64', '--n_embd=32', '--n_head=2', '--block_size=8', '--batch_size=8',
            '--max_iters=20', '--warmup_iters=5', '--eval_interval=20', '--eval_iters=2', '--log_interval=5',
            '--head=wide']
    env = CHILD_ENV  # 2 processes on 2 cores: one thread each
    one = subprocess.run([sys.executable, 'train.py', *args, '--gradient_accumulation_steps=2',
                          f'--out_dir={tmp_path}/one'],
                         cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          'train.py', *args, f'--out_dir={tmp_path}/two'], cwd=HERE, env=env,
                         capture_output=True, text=True, timeout=180)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('2 processes') == 1 and two.stdout.count('eval 20:') == 1  # only rank 0 speaks
    assert read_log(tmp_path / 'two', 'config')[0]['gradient_accumulation_steps'] == 2
    a = torch.load(tmp_path / 'one' / 'ckpt.pt', weights_only=False)
    b = torch.load(tmp_path / 'two' / 'ckpt.pt', weights_only=False)
    assert a['iter_num'] == b['iter_num'] == 20
    # each process took a different micro-batch (had both taken the same, the mean gradient would differ)
    for k in a['model']:
        torch.testing.assert_close(b['model'][k], a['model'][k], rtol=1e-4, atol=1e-5, msg=k)
    la, lb = read_log(tmp_path / 'one'), read_log(tmp_path / 'two')
    assert abs(la[-1]['val_loss'] - lb[-1]['val_loss']) < 1e-4
    assert len(la) == len(lb)

# -----------------------------------------------------------------------------
# CUDA: run only where torch sees a GPU (marked cuda). The tests above pin the CPU (child_env), since their
# references are CPU fp32; these check what only a GPU run does: bf16 autocast, TF32, compile, pinned batches.

def run_on_gpu(*args, timeout=600):
    p = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       cwd=HERE, env=GPU_ENV)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow
@cuda_only
def test_cuda_train_wide_then_measure_its_checkpoint(tmp_path):
    """The headline command on one GPU (its defaults: bf16 autocast, compiled, --loss=auto), then
    measure.py on the checkpoint it wrote."""
    code, out, err = run_on_gpu('train.py', '--head=wide', '--max_iters=100', '--eval_interval=100',
                                '--log_interval=50', f'--out_dir={tmp_path}/run')
    assert code == 0, err[-3000:]
    config = read_log(tmp_path / 'run', 'config')[0]
    assert config['device'] == 'cuda:0' and config['dtype'] == 'bfloat16' and config['compile'] is True
    assert (config['vocab_size'], config['n_layer'], config['n_embd']) == (1024, 2, 64)  # the file's defaults
    assert 'device cuda:0' in out.splitlines()[0]
    train, last = read_log(tmp_path / 'run', 'train'), read_log(tmp_path / 'run', 'eval')[-1]
    assert last['iter'] == 100 and math.isfinite(last['val_loss']) and 0 < last['grad_destroyed'] < 1
    assert all(r['peak_mem_gb'] > 0 and math.isfinite(r['loss']) for r in train)
    code, out, err = run_on_gpu('measure.py', f'--ckpt={tmp_path}/run/ckpt.pt', '--n_tokens=1024',
                                f'--json_out={tmp_path}/m.json')
    assert code == 0, err[-3000:]
    m = json.load(open(tmp_path / 'm.json'))
    assert 0 < m['destroyed_ratio'] < 1 and m['visible_cosine'] == pytest.approx(
        math.sqrt(1 - m['destroyed_ratio'] ** 2), rel=1e-6)


@pytest.mark.slow
@cuda_only
def test_cuda_resume_after_sigterm_follows_the_uninterrupted_run(tmp_path):
    """On CUDA a resumed run restores the weights, the optimizer, the data stream and every RNG, as on the
    CPU. What it promises there (README): the same data at every step and the same losses to the tolerance
    below, not bit for bit: bf16 autocast and the GPU's reduction order leave rounding differences that
    Adam carries on."""
    args = ['--vocab_size=64', '--n_embd=32', '--n_head=2', '--block_size=8', '--batch_size=8',
            '--max_iters=300', '--warmup_iters=10', '--eval_interval=100', '--eval_iters=2',
            '--log_interval=1', '--head=wide', '--dropout=0.1', '--compile=False']
    full, part = tmp_path / 'full', tmp_path / 'part'
    assert run_on_gpu('train.py', *args, f'--out_dir={full}')[0] == 0
    code, _, err = sigterm_after_rows(args, part, 40, GPU_ENV, wait=300)
    assert code == runtime.REQUEUE_EXIT, err[-3000:]
    code, out, err = run_on_gpu('train.py', *args, f'--out_dir={part}', '--init_from=resume')
    assert code == 0 and 'resuming' in out, err[-3000:]
    a, b = (read_log(d, 'train') for d in (full, part))
    assert [r['iter'] for r in b] == list(range(1, 301))
    assert [r['lr'] for r in a] == [r['lr'] for r in b]
    worst = max(abs(x['loss'] - y['loss']) / abs(x['loss']) for x, y in zip(a, b))
    print(f"CUDA resume: largest relative loss difference over 300 steps {worst:.2e}, bitwise "
          f"{all(x['loss'] == y['loss'] for x, y in zip(a, b))}")
    assert worst < 1e-2  # a different data position would differ by O(1): SpamLang's symbols are drawn afresh


@cuda_only
def test_cuda_fused_loss_matches_naive_in_bf16():
    """The loss under bf16 autocast on the GPU: fused against naive, both with bf16 matmuls and an fp32
    softmax. Tolerance: a few bf16 epsilons (7.8e-3), the rounding of the bf16 logits and of G before its
    matmuls."""
    torch.manual_seed(0)
    N, V, D = 300, 1000, 64
    h = torch.randn(N, D, device='cuda', requires_grad=True)
    W = (torch.randn(V, D, device='cuda') * 0.2).requires_grad_()
    y = torch.randint(0, V, (N,), device='cuda')
    y[::7] = -1
    with torch.autocast('cuda', dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ W.T).float(), y, ignore_index=-1)
    rh, rW = torch.autograd.grad(ref, (h, W))
    eps = torch.finfo(torch.bfloat16).eps
    assert cuda_kernel() is not None, 'Triton cannot run here: --loss=fused would take the chunked loop'
    for chunk in (64, None):  # the chunked loop, then what --loss=fused runs on CUDA: triton_ce's kernel
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = fused_linear_cross_entropy(h, W, y, chunk_size=chunk)
        gh, gW = torch.autograd.grad(loss, (h, W))
        assert abs(loss.item() - ref.item()) < 1e-4 * ref.item(), chunk
        assert rel_err(gh, rh) < 4 * eps and rel_err(gW, rW) < 4 * eps, chunk


# -----------------------------------------------------------------------------
# bench.py


def test_bench_workers_measure_what_they_name():
    """The head variants compute the same loss gradients (so their times compare like with like), and each
    worker's derived numbers follow from its time: FLOP/s = 6·N·V·D / t, tokens/s = B·T / t,
    time per token = t / N."""
    N, V, D = 64, 300, 16
    h, W, y = bench.head_inputs(N, V, D, 'cpu', torch.float32)
    grads = {}
    for variant in ('naive', 'fused'):
        bench.head_fn(variant, h, W, y)()
        grads[variant] = (h.grad.clone(), W.grad.clone())
    for a, b in zip(grads['fused'], grads['naive']):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert bench.head_fn('liger', h, W, y) == bench.head_fn('cce_exact', h, W, y) == 'needs CUDA'  # one line
    head = bench.worker(dict(kind='head', variant='fused', device='cpu', N=N, V=V, D=D, reps=1))
    assert head['time_s'] > 0 and head['peak_mem_bytes'] >= 0
    assert head['beyond_grads_bytes'] == head['peak_mem_bytes'] - (N * D + V * D) * 4  # dh, dW in fp32
    assert head['tflops'] == pytest.approx(6 * N * V * D / head['time_s'] / 1e12, rel=1e-9)
    spec = dict(device='cpu', V=V, D=D, n_layer=1, n_head=2, T=8, B=4, warmup=1, steps=2)
    step = bench.worker(dict(kind='step', loss='fused', **spec))
    assert step['tok_per_s'] == pytest.approx(4 * 8 / step['time_s'], rel=1e-9)
    metered = bench.worker(dict(kind='meter', loss='naive', **spec))
    assert math.isfinite(metered['overhead_frac']) and metered['overhead_frac'] > -1
    m = bench.worker(dict(kind='measure', device='cpu', N=64, V=128, D=8))
    assert m['time_per_token_s'] == pytest.approx(m['time_s'] / 64, rel=1e-9)
    r = bench.worker(dict(kind='remedy', device='cpu', head='blocks', N=128, V=96, D=8, reps=1))
    assert r['head_params'] == 128 * 16 + 8 and r['meter_per_token_s'] > 0  # V padded to 128; + its LayerNorm
    assert r['time_per_token_s'] == pytest.approx(r['time_s'] / 128, rel=1e-9)


def test_bench_refuses_bad_options():
    for args, msg in [(['--sections=5'], 'give digits among 1, 2, 3, 4'), (['--sections='], 'give digits'),
                      (['--reps=0'], 'must be positive'), (['--quick=yes'], 'expects bool'),
                      (['--quick', '--json_out=/nonexistent/b.json'], 'cannot write it')]:  # before the work
        with pytest.raises(ConfigError, match=msg):
            bench.main(args)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match='needs a CUDA GPU'):
            bench.main(['--gpu_check'])


@pytest.mark.slow
def test_bench_quick_smoke_writes_json_rows(tmp_path, monkeypatch, capsys):
    """`bench.py --quick --sections=1 --json_out=FILE` on one small shape: a worker subprocess per variant,
    one row each, printed and written; flops_frac is the bare matmuls' time over the variant's."""
    monkeypatch.setattr(bench, 'QUICK_SHAPES', [(64, 512, 16)])
    monkeypatch.setattr(bench, 'VARIANTS', ('bare', 'naive', 'fused'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.delattr(F, 'linear_cross_entropy', raising=False)  # as in torch ≤ 2.11: no line for it here
    bench.main(['--quick', '--sections=1', '--reps=1', '--device=cpu', f'--json_out={tmp_path}/b.json'])
    res = json.loads((tmp_path / 'b.json').read_text())
    rows = res['rows']
    assert res['device'] == 'cpu' and res['torch'] == torch.__version__
    assert [(r['section'], r['variant'], r['N'], r['V'], r['D']) for r in rows] == \
        [('head', v, 64, 512, 16) for v in ('bare', 'naive', 'fused')]
    bare = rows[0]['time_s']
    for r in rows:
        assert 'error' not in r, r
        assert r['time_s'] > 0 and r['peak_mem_bytes'] >= 0
        assert r['flops_frac'] == pytest.approx(bare / r['time_s'], rel=1e-9)
        assert r['tflops'] == pytest.approx(6 * 64 * 512 * 16 / r['time_s'] / 1e12, rel=1e-9)
    printed = capsys.readouterr().out
    assert printed.count('\nhead ') == 3 and f'wrote 3 rows to {tmp_path}/b.json' in printed

# -----------------------------------------------------------------------------
# sample.py


@pytest.mark.slow
def test_sample_script_decodes_through_a_compacted_vocabulary(tmp_path):
    text = tmp_path / 'words.txt'
    text.write_text(' '.join(['the head passes back only part of the gradient'] * 200))
    out = tmp_path / 'run'
    code, _, err = run_train(f'--data={text}', '--compact_vocab=True', '--n_embd=16', '--n_head=2',
                             '--block_size=16', '--batch_size=8', '--max_iters=60', '--learning_rate=1e-2',
                             '--eval_interval=60', '--eval_iters=1', f'--out_dir={out}')
    assert code == 0, err
    state = checkpoint.load_checkpoint(str(out / 'ckpt.pt'))
    assert state['config']['vocab_size'] == len(state['id_map']) < 20  # compacted: the ids that occur
    run = lambda *a: subprocess.run([sys.executable, 'sample.py', f'--ckpt={out}/ckpt.pt', *a], cwd=HERE,
                                    env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    a, b = run('--start=the head', '--seed=3'), run('--start=the head', '--seed=3')
    assert a.returncode == 0 and a.stdout == b.stdout, a.stderr
    samples = a.stdout.split('---------------')[:-1]
    assert len(samples) == 3 and all(s.strip().startswith('the head') for s in samples)
    # its tokens, decoded
    assert set(''.join(samples)) <= set('the head passes back only part of the gradient\n')
    for args, msg in (['--start=zebra'], 'never saw'), (['--start='], 'the prompt is empty'), (
            ['--start=the', '--start_ids=1'], '--start is a text prompt: drop it'):
        bad = run(*args)
        assert bad.returncode == 1 and msg in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, args

# -----------------------------------------------------------------------------
# reproduce.py and plot.py

PNG = b'\x89PNG\r\n\x1a\n'


def write_text(path, lines=300):
    words = ('the a of to and in that is was he for it with as his on be at by this had not are but from '
             'or have an they which one you were her all she there would their we him been has when who '
             'will more no if out so').split()
    rng = random.Random(0)
    path.write_text('\n'.join(' '.join(rng.choice(words) for _ in range(12)) for _ in range(lines)))
    return str(path)


def repro(*args):
    return subprocess.run([sys.executable, os.path.join(HERE, 'reproduce.py'), *args], capture_output=True,
                          text=True, env=CHILD_ENV, timeout=600)


def tree(root):
    return sorted((p, os.path.getmtime(p)) for p in glob.glob(f"{root}/**", recursive=True))


@pytest.fixture(scope='module')
def tiny_repro(tmp_path_factory):
    root = tmp_path_factory.mktemp('reproduce')
    text = write_text(root / 'tiny.txt')
    p = repro('--preset=tiny', f'--text={text}', f'--out={root}/out', '--device=cpu')
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    return str(root / 'out'), text, p.stdout


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_repro')
def test_tiny_preset_writes_tables_figures_and_summaries(tiny_repro):
    out, _, stdout = tiny_repro
    for figs in reproduce_runs.FIGURES.values():
        for f in figs:
            with open(os.path.join(out, f), 'rb') as fh:
                assert fh.read(8) == PNG, f
    summary = open(os.path.join(out, 'summary.md')).read()
    for e, title in reproduce.TITLES.items():
        assert f"## Experiment {e}: {title}" in summary
    assert 'Stage gate' in summary and '| head | best lr |' in summary
    meta = json.load(open(os.path.join(out, 'meta.json')))
    assert {'command', 'commit', 'date', 'torch', 'cpu_count', 'wall_s', 'runs'} <= set(meta)
    assert meta['runs']['trained'] == 56 and meta['runs']['reused'] == 0 and 'total' in meta['wall_s']
    # CSV = JSON rows
    stems = ('exp1_head_rank', 'exp2_fixed_batch', 'exp3_text', 'exp4_meter', 'wide_diagnosis', 'exp6_hmm',
             'remedies')
    for stem in stems:
        rows = json.load(open(os.path.join(out, stem + '.json')))['rows']
        with open(os.path.join(out, stem + '.csv'), newline='') as f:
            table = list(csv.DictReader(f))
        assert len(table) == len(rows) and set(table[0]) == set(rows[0]), stem
        assert ([r['lr' if 'lr' in r else 'head'] for r in table] ==
                [str(r['lr' if 'lr' in r else 'head']) for r in rows])
    e1 = json.load(open(os.path.join(out, 'exp1_head_rank.json')))
    # e1_lrs is one value: flagged
    assert e1['controls']['ours'] and {r['edge'] for r in e1['rows']} == {'one lr'}
    grid = json.load(open(os.path.join(out, 'exp2_fixed_batch.json')))
    # every (head, D, V) cell at one batch; its steps grow with V (2 exposures per symbol, 2 evaluations)
    assert [(x['head'], x['D'], x['V']) for x in grid['cells']] == [
        ('linear', 8, 16), ('linear', 8, 32), ('tied', 8, 16), ('tied', 8, 32)]
    assert {r['batch_size'] for r in grid['rows']} == {8}
    assert [r['steps'] for r in grid['rows']] == [4, 8, 4, 8]
    for cell in grid['cells']:
        steps = 4 if cell['V'] == 16 else 8  # ⌈2·(V − 1)/8⌉ rounded up to whole evaluations
        assert len(cell['acc']) == len(cell['exposures_to_loss']) == 2
        assert cell['budget'] == round(8 * steps / (cell['V'] - 1), 2) >= 2
        assert cell['geomean_to_loss'] is None or cell['reached'] == 2
        # the expressivity control: the head refitted inside the ball of the trained head's norm
        control = cell['control']
        assert len(control['curve']) == 5 and control['norm'] <= control['head_norm'] * (1 + 1e-5)
        assert control['loss_over_logV'] == control['curve'][-1] < control['curve'][0]
    # the HMM language: every head against its exact floor, through its cooldown branches
    e6 = json.load(open(os.path.join(out, 'exp6_hmm.json')))
    floor = hmm.Language(64, 4).floor(8)
    assert e6['controls']['floor'] == floor and e6['controls']['log_prob_rank_at_most'] == 5
    for h in e6['heads'].values():
        assert [round(a, 9) for a in h['above_floor']] == [round(f - floor, 9) for f in h['final_val_loss']]
        assert len(h['final_val_loss']) == 2 and all(len(curve) == 2 for curve in h['annealed'].values())
    assert e6['heads']['linear']['minus_widest']['mean'] == 0 and set(e6['xfold']) == {'narrow:2/select'}
    # experiment 7: every head's costs, curves, meter and frozen-trunk fits; candidates paired with controls
    e7 = json.load(open(os.path.join(out, 'remedies.json')))
    assert list(e7['heads']) == ['linear', 'blocks', 'blocks_sg', 'mos']
    for spec, h in e7['heads'].items():  # mos is outside e7_decisive: e7_other_seeds = 1 of its seeds
        seeds = [1338] if spec == 'mos' else [1338, 1339]
        assert h['seeds'] == seeds and h['flops_per_token'] > 0 and h['head_params'] > 0
        for k in ('final_val_loss', 'tokens_to_target', 'seconds_to_target', 'c_star', 'visible_share',
                  'step_cos'):
            assert len(h[k]) == len(seeds), k
        assert all(0 <= v <= 1 for v in h['visible_share'] + h['c_star'])
        assert [len(curve) for curve in h['meter']] == [3] * len(seeds)  # evals 0, 4, 8: a checkpoint each
        # the held-out loss at each quarter
        assert all(len(h[k]['curve']) == 4 for k in reproduce_remedies.FITS)
    assert e7['heads']['blocks']['head_params'] == 2 * e7['heads']['linear']['head_params'] + 8  # + ln_e
    for spec, h in e7['heads'].items():  # the head lr bracketed at the best lr; fresh seeds at the best pair
        assert [x['mult'] for x in h['head_lr_sweep']] == [1, 3] and h['head_lr_mult'] in (1, 3)
        key = reproduce_runs.head_of(spec, 8)['key']
        for seed in h['seeds']:
            folder = glob.glob(os.path.join(out, 'exp7', f'{key}_lr*_s{seed}'))[0]
            run = json.load(open(os.path.join(folder, 'run.json')))
            assert run['config']['head_lr_mult'] == h['head_lr_mult'] and run['mult'] == h['head_lr_mult']
    assert [p['comparison'] for p in e7['paired']] == ['blocks − blocks_sg', 'blocks − linear',
                                                      'blocks_sg − linear', 'mos − linear']
    assert [p['seeds'] for p in e7['paired']] == [2, 2, 2, 1]  # paired on the seeds both heads ran
    assert e7['paired'][-1]['final_val_loss']['n'] == 1
    # the meter at a matched loss: one level per panel, reached by every run (so never n/a)
    meter_rows = json.load(open(os.path.join(out, 'exp4_meter.json')))['rows']
    for data in ('SpamLang', 'text'):
        panel = [r for r in meter_rows if r['data'] == data]
        assert panel and len({r['matched_loss'] for r in panel}) == 1
        assert all('n/a' not in (r['step_matched'], r['destroyed_matched']) for r in panel)
    e3 = json.load(open(os.path.join(out, 'exp3_text.json')))
    assert set(e3['baselines']) == {'unigram', 'bigram'} and 'passed' in e3['gate'] and e3['verdict']
    # the gate reads the widest head, against both lines
    wide = float(np.mean(e3['heads']['linear']['final_val_loss']))
    assert e3['gate']['widest_final_loss'] == pytest.approx(wide) and e3['gate']['passed'] == (
        wide <= e3['baselines']['unigram'] - reproduce.DEFAULTS['e3_gate_unigram'] and
        wide <= e3['baselines']['bigram'] + reproduce.DEFAULTS['e3_gate_bigram'])
    assert e3['verdict'].startswith('Stage gate ' + ('passed' if e3['gate']['passed'] else 'FAILED'))
    for h in e3['heads'].values():  # lists over the fresh seeds 1338, 1339
        assert h['seeds'] == [1338, 1339]
        for key in ('final_val_loss', 'final_val_loss_se', 'report_loss', 'probe_loss', 'ceiling_loss'):
            assert len(h[key]) == 2 and all(math.isfinite(v) for v in h[key]), key
        assert all(len(v) == 2 for v in h['loss_by_frequency'].values()) and len(h['loss_by_frequency']) == 3
        assert all(math.isfinite(v) for v in h['spectrum']['ey_floor'])
        assert all(len(curve) == 2 for curve in h['annealed'].values())  # one point per budget
    # linear's ceiling is its own probe; every narrower head is split against it, with an interval
    assert e3['heads']['linear']['ceiling_loss'] == e3['heads']['linear']['probe_loss']
    split = e3['decomposition']['narrow:2/select']
    assert {'gap', 'expressivity', 'backbone', 'rest'} <= set(split) and split['gap']['n'] == 2
    assert set(e3['xfold']) == {'narrow:2/select'} and 'fold' not in e3
    # the sweep runs every lr on seed 1337; each fresh seed runs once per head, at its best lr
    names = sorted(os.listdir(os.path.join(out, 'exp3')))
    for h, info in e3['heads'].items():
        tag = h.replace(':', '').replace('/', '_')
        assert ([n for n in names if n.startswith(tag) and n.endswith('_s1338')] ==
                [f"{tag}_lr{info['best_lr']:g}_s1338"])
        assert sorted(os.listdir(os.path.join(out, 'exp3', f"{tag}_lr{info['best_lr']:g}_s1338"))) == [
            'cool10', 'cool5', 'log.jsonl', 'run.json', 'stdout.txt']  # the stable phase and its branches
    run = json.load(open(glob.glob(os.path.join(out, 'exp3', '*', 'run.json'))[0]))
    assert run['config']['type'] == 'config' and 'compile' in run['config'] and run['evals']
    assert not glob.glob(os.path.join(out, 'exp*', '**', '*.pt'), recursive=True)  # analysed, then deleted
    diagnosis = json.load(open(os.path.join(out, 'wide_diagnosis.json')))
    assert [(x['basis'], x['head_lr_mult']) for x in diagnosis['cells']] == [('select', 1.0), ('random', 1.0)]
    assert diagnosis['cells'][0]['minus_linear']['mean'] == 0  # the reference, against itself
    # progress: one line before each run, with its count, elapsed time and an estimate; text runs echo
    # their evals
    progress = [l for l in stdout.splitlines() if l.startswith('[')]
    assert len(progress) == 56 and re.fullmatch(
        r"\[1/56\] exp1 r = 2, selector lr 3e-3 seed 1337 … [\d.]+ s; .*", progress[0])
    assert re.search(r"\[56/56\] exp7 blocks_sg .* seed 1339 … [\d.]+ (s|min); [\d.]+ (s|min) left", stdout)
    assert not re.search(r"exp7 mos .* seed 1339", stdout)
    assert re.search(r"\] exp7 blocks lr 3e-3, head lr ×3 seed 1337 … ", stdout)  # the head lr run, counted
    assert re.search(r"^      eval 0: val loss", stdout, re.M)


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_repro')
def test_existing_out_is_refused_and_reuse_skips_finished_runs(tiny_repro, tmp_path):
    out, text, _ = tiny_repro
    before = tree(out)
    p = repro('--preset=tiny', f'--text={text}', f'--out={out}', '--device=cpu')
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'already holds results' in p.stderr
    # nothing written or deleted
    assert '--reuse' in p.stderr and '--overwrite' in p.stderr and tree(out) == before
    copy = str(tmp_path / 'copy')
    shutil.copytree(out, copy)
    p = repro('--preset=tiny', '--experiments=1', '--seeds=3', f'--out={copy}', '--device=cpu', '--reuse')
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('reused:') == 9 and '3 runs trained, 9 reused' in p.stdout  # seed 1340 is new
    meta = json.load(open(os.path.join(copy, 'meta.json')))
    assert meta['runs']['trained'] == 3 and '--experiments=1' not in meta['previous']['command']
    # the experiments it did not run keep their sections; experiment 1's is this run's
    sections = open(os.path.join(copy, 'summary.md')).read().split('\n## Experiment ')[1:]
    assert [s.split(':')[0] for s in sections] == sorted(s.split(':')[0] for s in sections)
    assert len(sections) == len([line for line in open(os.path.join(out, 'summary.md'))
                                 if line.startswith('## Experiment ')])


def test_reproduce_refuses_repeated_items_bad_sizes_and_binary_text(tmp_path, capsys):
    """Each refused at parse time, before --overwrite could delete anything: a repeated lr or head (two runs
    would share a folder), V < 2, an --e7_data that is no source, a --text that is not text."""
    binary = tmp_path / 'bin.txt'
    binary.write_bytes(b'a\x00b' * 100)
    for args, msg in [(['--e1_lrs=3e-3,3e-3'], 'an item is given twice'),
                      (['--e1_heads=narrow:2,narrow:2'], 'a head is given twice'),
                      (['--e2_vocab_sizes=1,256'], 'needs V ≥ 2'),
                      ([f'--text={binary}'], 'binary, not text')]:
        with pytest.raises(ConfigError, match=msg):
            reproduce.plan(reproduce.parse_options([*args, '--device=cpu']))
    with pytest.raises(ConfigError, match='--e7_data=bogus: give spamlang, text'):
        reproduce.plan(reproduce.parse_options(['--experiments=7', '--e7_data=bogus', '--device=cpu']))
    assert reproduce.parse_options(['--seed=0', '--device=cpu'])['seed'] == 0  # as train.py takes it
    with pytest.raises(ConfigError, match='is a file: give a folder'):
        reproduce.prepare_out(dict(out=str(binary), reuse=False, overwrite=True))
    with pytest.raises(ConfigError, match='--device must be auto, cpu, cuda'):  # a dry run names a device too
        reproduce.parse_options(['--dry_run', '--device=tpu'])
    reproduce.main(['--dry_run', '--experiments=1,3'])  # the plan says what it leaves out
    assert 'experiment 3: skipped: no text given' in capsys.readouterr().out


@pytest.mark.slow
def test_say_keeps_lines_whole_when_threads_print_to_a_pipe():
    # print() writes a line and its newline apart: parallel runs' progress lines merged in a pipe
    code = ("import sys, threading, reproduce_runs\n"
            "sys.setswitchinterval(1e-6)\n"
            "def work(k):\n"
            "    for i in range(3000):\n"
            "        reproduce_runs.say(f'[{k}] line {i} ' + 'x' * (i % 300))\n"
            "threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n")
    p = subprocess.run([sys.executable, '-c', code], cwd=HERE, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 12000 and all(line.startswith('[') and line.count('[') == 1 for line in lines)


@pytest.mark.slow
def test_reproduce_runs_train_py_as_python_train_py_runs_it(tmp_path):
    """reproduce.py forks its runs from a server that imported torch: the same log as `python train.py`."""
    args = dict(data='spamlang', vocab_size=32, n_embd=8, n_layer=1, n_head=2, block_size=8, batch_size=4,
                max_iters=6, eval_interval=3, eval_iters=1, log_interval=1, head='narrow', head_rank=2,
                learning_rate=3e-3, seed=5, device='cpu')
    forked = tmp_path / 'forked'
    forked.mkdir()
    tally = reproduce_runs.Tally()
    reproduce_runs.train(dict(threads=1), tally, dict(args, out_dir=forked), str(forked), False)
    code, _, err = run_train(*[f'--{k}={v}' for k, v in dict(args, out_dir=tmp_path / 'plain').items()])
    assert code == 0, err
    timing = ('out_dir', 'dt_ms', 'tok_per_s', 'mfu')
    a, b = ([{k: v for k, v in r.items() if k not in timing} for r in read_log(d)]
            for d in (forked, tmp_path / 'plain'))
    assert a == b and [r['type'] for r in a].count('eval') == 3
    assert 'eval 6:' in (forked / 'stdout.txt').read_text()  # its output kept beside its log


@pytest.mark.slow
def test_exit_statuses_read_right_while_runs_start_and_end_at_once():
    # multiprocessing reads a child's exit status once, and every start() polls every child: unguarded,
    # threads that start and poll at once read some statuses as 255 (a run that succeeded, reported failed)
    bad = []

    def work(t):
        for i in range(30):
            p = reproduce_runs.launch(sys.exit, i % 7)
            while not reproduce_runs.ended(p, 0.01):
                pass
            bad.extend([(t, i, p.exitcode)] if p.exitcode != i % 7 else [])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


@pytest.mark.slow
def test_sigterm_to_reproduce_alone_stops_its_running_train_py(tmp_path):
    out = str(tmp_path / 'out')
    p = subprocess.Popen([sys.executable, os.path.join(HERE, 'reproduce.py'), '--preset=tiny',
                          '--experiments=1', '--e1_max_iters=1000000', f'--out={out}', '--device=cpu'],
                         cwd=HERE, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith('reproduce.py:') and p.stdout.readline().startswith('[1/')
    def mine():  # the processes other than reproduce.py writing into --out: its train.py runs
        found = []
        for pid in (d for d in os.listdir('/proc') if d.isdigit() and d != str(p.pid)):
            try:
                fds = [os.readlink(f'/proc/{pid}/fd/{fd}') for fd in os.listdir(f'/proc/{pid}/fd')]
            except OSError:  # ended meanwhile, or not ours to read
                continue
            found += [pid] if any(f.startswith(out) for f in fds) else []
        return found
    run = os.path.join(out, 'exp1', 'narrow2_select_lr0.003_s1337')
    deadline = time.time() + 60
    while time.time() < deadline and rows_written(run) < 3:  # its train.py is in the training loop
        time.sleep(0.05)
    assert mine()
    p.send_signal(signal.SIGTERM)  # to reproduce.py only, as a scheduler or `kill PID` would
    p.communicate(timeout=60)
    assert p.returncode != 0
    assert not mine()  # its train.py was stopped, not left running


@pytest.mark.slow
def test_a_failing_run_stops_with_one_line_naming_it(tmp_path):
    text = tmp_path / 'short.txt'
    text.write_text('to be or not to be, that is the question ' * 4)
    p = repro('--preset=tiny', '--experiments=3', f'--text={text}', f'--out={tmp_path}/out',
              '--e3_block_size=64')
    assert p.returncode == 1 and p.stderr.count('\n') == 1
    assert re.match(r"error: run \S+narrow2_select_lr0.001_s1337 failed "
                    r"\(exit status 1\): \S+ is too short", p.stderr)


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
    (['--experiments=1,8'], 'subset of 1,2,3,4,5,6,7'),
    (['--experiments=7', '--e7_data=foo'], 'give spamlang, text (with --text) or hmm[:S]'),
    (['--experiments=7', '--e7_data=text'], '--e7_data=text reads --text'),
    (['--experiments=7', '--e7_data=hmm:4', '--e7_vocab_size=6'], 'S ≥ 2 states of ≥ 2 symbols'),
    (['--e1_heads=linear/select'], "bad item 'linear/select'"),
    (['--e3_max_iters=721'], 'must split into --e3_budgets=4 parts'),
    (['--quick', '--preset=gpu'], '--quick is --preset=quick'),
    (['--reuse', '--overwrite'], 'give one of the two'),
    (['--seeds=0'], '--seeds must be positive'),
    (['--preset=huge'], 'presets: cpu'),
    (['--text=/nonexistent.txt'], 'is not a file'),
])
def test_bad_flags_are_refused(args, msg):
    with pytest.raises(options.ConfigError, match=re.escape(msg)):
        reproduce.plan(reproduce.parse_options(args + ['--device=cpu']))


@pytest.mark.slow
def test_bad_flag_is_one_line_exit_1():
    p = repro('--quick', '--e1_lrs=1e-3,fast')
    assert (p.returncode == 1 and p.stderr.count('\n') == 1 and
            p.stderr.startswith('error: --e1_lrs=1e-3,fast: bad item'))
    assert not p.stdout


@pytest.mark.parametrize('name', ['cpu'] + sorted(f[len('reproduce_'):-3]
                                                   for f in os.listdir(os.path.join(HERE, 'config'))
                                                   if f.startswith('reproduce_') and f.endswith('.py')))
def test_every_preset_validates(name, tmp_path):
    if name != 'cpu':
        for k, v in options.read_config_file(os.path.join(HERE, 'config', f'reproduce_{name}.py')).items():
            assert type(v) is type(reproduce.DEFAULTS[k]) or reproduce.DEFAULTS[k] is None, k
    text = write_text(tmp_path / 't.txt', 5)
    c = reproduce.parse_options([f'--preset={name}', '--device=cpu', f"--text={text}"])
    specs = reproduce.plan(c)
    assert ({s['exp'] for s in specs} ==
            {f'exp{e}' for e in reproduce.chosen_experiments(c)['run'] if e != '4'})
    assert all(s['lr'] is not None or not s['sweep'] or s.get('later') for s in specs)


def test_exp2_steps_to_target_are_censored_and_order_the_lrs():
    c = reproduce.parse_options(['--device=cpu'])
    target = 0.1 * math.log(255)
    def run(lr, losses):
        evals = [dict(iter=10 * i, val_loss=loss, val_acc=0.95 if loss <= target else 0.5)
                 for i, loss in enumerate(losses)]
        return dict(lr=lr, args=dict(vocab_size=256), evals=evals)

    early = run(1e-3, [9.0, 3.0, target, 0.1])       # reaches the target at step 20
    late = run(3e-3, [9.0, 3.0, 1.0, target - 0.01])  # at step 30
    never = run(1e-2, [9.0, 3.0, 1.0, target + 0.01])  # censored, though its final loss is close
    assert reproduce_runs.to_target(c, early) == (20, 20)
    assert reproduce_runs.to_target(c, never) == (None, None)
    assert reproduce_runs.to_target(c, run(1e-3, [target / 2, 9.0])) == (None, None)  # step 0 never counts
    score = reproduce_runs.lr_score(c, 'exp2')
    assert reproduce_runs.best_lr([never, late, early], score) == dict(lr=1e-3, edge='low edge')
    assert reproduce_runs.best_lr([never, late], score) == dict(lr=3e-3, edge='low edge')
    # no lr reaches it: the lower final loss wins, whatever the accuracy (the loss is the target's measure)
    near = run(3e-2, [9.0, 3.0, 1.0, target + 0.005])
    near['evals'][-1]['val_acc'] = 0.1  # below never's 0.5
    assert reproduce_runs.best_lr([never, near], score) == dict(lr=3e-2, edge='high edge')
    # the other experiments keep the final accuracy, then the final loss
    assert reproduce_runs.best_lr([never, late, early], reproduce_runs.lr_score(c, 'exp1'))['lr'] == 1e-3


def test_lr_grid_extends_past_the_edge_where_the_best_lr_sits():
    c = reproduce.parse_options(['--device=cpu'])
    spec = dict(exp='exp7', key='k', label='k', sweep=True, seed=c['seed'], lr=None, args={})

    def swept(*accs):  # sweep records at lrs 1e-3, 3e-3, 1e-2 with these final accuracies
        return {'k': [dict(lr=lr, sweep=True, evals=[dict(val_acc=a, val_loss=1.0)])
                      for lr, a in zip((1e-3, 3e-3, 1e-2), accs)]}

    mine = [(0, spec), (1, dict(spec, seed=c['seed'] + 1, sweep=False))]
    up = reproduce_runs.grid_extensions(c, '7', swept(0.1, 0.2, 0.9), mine)
    assert [(i, r['lr'], r['seed'], r['name']) for i, r in up] == [(0, 3e-2, 1337, 'k_lr0.03_s1337')]
    down = reproduce_runs.grid_extensions(c, '7', swept(0.9, 0.2, 0.1), mine)
    assert [r['lr'] for _, r in down] == [3e-4]
    assert reproduce_runs.grid_extensions(c, '7', swept(0.1, 0.9, 0.2), mine) == []  # inside: nothing to add
    assert reproduce.parse_options(['--e7_lr_extensions=0'])['e7_lr_extensions'] == 0  # 0: never extend


def test_head_lr_is_bracketed_at_the_best_lr_and_never_moves_it():
    c = reproduce.parse_options(['--device=cpu'])
    spec = dict(exp='exp7', key='k', label='k', sweep=True, seed=c['seed'], lr=None, args={})
    mine = [(0, spec), (1, dict(spec, mult=0.333, later=True)), (2, dict(spec, mult=3.0, later=True))]

    def rec(lr, mult, acc):
        return dict(lr=lr, mult=mult, sweep=True, name=f'{lr}x{mult}',
                    evals=[dict(val_acc=acc, val_loss=1.0, grad_destroyed=0.99)])

    runs = {'k': [rec(1e-3, 1.0, 0.1), rec(3e-3, 1.0, 0.5), rec(1e-2, 1.0, 0.2)]}
    todo = reproduce_runs.head_lr_runs(c, runs, mine)  # × ⅓ and × 3 at the best lr; × 1: the sweep's own
    assert [(i, r['lr'], r['mult'], r['name']) for i, r in todo] == [
        (1, 3e-3, 0.333, 'k_lr0.003_x0.333_s1337'), (2, 3e-3, 3.0, 'k_lr0.003_x3_s1337')]
    runs['k'] += [rec(3e-3, 0.333, 0.3), rec(3e-3, 3.0, 0.8), rec(1e-2, 3.0, 0.99)]  # the last: off the lr
    choice = reproduce_runs.sweep_choice(c, 'exp7', runs['k'])
    got = (choice['lr'], choice['lr_edge'], choice['mult'], choice['mult_edge'])
    assert got == (3e-3, '', 3.0, 'high edge')
    more = reproduce_runs.grid_extensions(c, '7', runs, mine, 'mult')  # × 3 at the top: × 10 next
    assert [(r['lr'], r['mult'], r['name']) for _, r in more] == [(3e-3, 10.0, 'k_lr0.003_x10_s1337')]
    assert reproduce_runs.grid_extensions(c, '7', runs, mine) == []  # the lr grid is bracketed already
    runs['k'] += [rec(3e-3, 10.0, 0.85), rec(3e-3, 30.0, 0.9)]  # still at the top: × 100, never × 30 again
    more = reproduce_runs.grid_extensions(c, '7', runs, mine, 'mult')
    assert [(r['mult'], r['name']) for _, r in more] == [(100.0, 'k_lr0.003_x100_s1337')]
    # the lr table reads the × 1 runs only
    assert [row['lr'] for row in reproduce_runs.lr_table(runs['k'])['rows']] == [1e-3, 3e-3, 1e-2]


@pytest.mark.slow
def test_exp7_on_text_reads_its_tokens_and_gates_on_the_baselines(tmp_path):
    text = write_text(tmp_path / 't.txt', 5)
    p = repro('--preset=tiny', '--experiments=7', '--e7_data=text', '--e7_heads=linear',
              '--e7_head_lr_mults=1', '--e7_seeds=1', f'--text={text}', f'--out={tmp_path}/out',
              '--device=cpu')
    assert p.returncode == 0, p.stderr
    e7 = json.load(open(tmp_path / 'out' / 'remedies_text.json'))
    V = textdata.load_tokens(glob.glob(str(tmp_path / 'out' / 'exp7' / '*.compact.tok'))[0])[1]['vocab_size']
    assert e7['controls']['vocab_size'] == V and min(e7['controls']['unigram'], e7['controls']['bigram']) > 0
    assert set(e7['gate']) == {'linear_loss', 'passed'} and list(e7['heads']) == ['linear']
    assert e7['gate']['linear_loss'] == pytest.approx(e7['heads']['linear']['final_val_loss'][0])
    run = json.load(open(glob.glob(str(tmp_path / 'out' / 'exp7' / 'linear_lr*_s1338' / 'run.json'))[0]))
    assert run['config']['data'].endswith('.compact.tok') and run['config']['vocab_size'] == V
    assert os.path.isfile(tmp_path / 'out' / 'exp7_remedies_text.png')


@pytest.mark.slow
def test_dry_run_estimates_the_gpu_preset_within_8_minutes_an_experiment(tmp_path):
    text = write_text(tmp_path / 't.txt', 5)
    c = reproduce.parse_options(['--preset=gpu', '--dry_run', f'--text={text}'])  # no GPU needed
    specs = reproduce.plan(c)
    reproduce.text_vocab(c, specs)  # text runs at the text's V, not at GPTConfig's default
    V = len(set(textdata.get_encoding('cl100k_base').encode_ordinary(textdata.read_text(text))))
    text_args = [a for s in specs if s['exp'] in ('exp3', 'exp5') for a in (s['args'], s.get('trunk')) if a]
    assert text_args and {a['vocab_size'] for a in text_args} == {V}
    est = estimate.estimate(specs, c['jobs'], c['compile'])
    assert set(est) == {'exp1', 'exp2', 'exp3', 'exp5', 'exp6', 'total'}
    assert all(e['wall_s'] <= 8 * 60 for name, e in est.items() if name != 'total'), est
    # the arithmetic on one run: FLOPs per token of the model itself, times its tokens
    args = dict(vocab_size=512, n_embd=32, n_layer=2, n_head=2, block_size=16, head='linear', batch_size=4,
                max_iters=10, eval_interval=5, eval_iters=2)
    one = estimate.estimate([dict(exp='exp1', args=args)], jobs=1, compile=False)['exp1']
    fpt = GPT(GPTConfig(**{k: args[k] for k in estimate.MODEL_KEYS if k in args})).flops_per_token()
    flops = fpt * (10 * 64 + 3 * 2 * 64 / 3)  # 10 steps of 64 tokens; 3 evaluations of 2 batches (forward)
    assert one['pflop'] == pytest.approx(flops / 1e15)
    seconds = flops / (estimate.MFU[False] * estimate.PEAK_FLOPS) + estimate.START_S[False]
    assert one['wall_s'] == pytest.approx(seconds)
    # the command prints the table and writes nothing
    p = repro('--preset=gpu', '--dry_run', f'--text={text}', f'--out={tmp_path}/out')
    assert p.returncode == 0 and 'exp3' in p.stdout and 'wall' in p.stdout, p.stderr
    assert not os.path.exists(tmp_path / 'out')


def test_exp7_heads_outside_the_decisive_pairs_run_the_first_of_their_seeds():
    args = ['--experiments=7', '--dry_run', '--e7_heads=linear,wide:{2D}/random,blocks,mos', '--e7_seeds=4']
    c = reproduce.parse_options(args + ['--e7_other_seeds=2'])
    fresh = {}
    for s in reproduce.plan(c):
        if not s['sweep']:
            fresh.setdefault(s['info']['head'], []).append(s['seed'])
    four = [1338, 1339, 1340, 1341]
    assert fresh == {'linear': four, 'wide:16/random': four, 'blocks': four, 'mos': four[:2]}
    with pytest.raises(ConfigError, match='--e7_other_seeds=5 exceeds --e7_seeds=4'):
        reproduce.parse_options(args + ['--e7_other_seeds=5'])


def test_exp5_gives_the_trained_factorization_its_own_multipliers():
    c = reproduce.parse_options(['--device=cpu', '--e5_trained_head_lr_mults=0.1,0.333'])
    cells = [(x['info']['basis'], x['info']['head_lr_mult']) for x in reproduce_text.plan_text(c, '5')]
    assert cells == [('select', 0.333), ('select', 1.0), ('select', 3.0), ('random', 0.333), ('random', 1.0),
                     ('random', 3.0), ('trained', 0.1), ('trained', 0.333)]
    assert {x['args']['head_lr_mult'] for x in reproduce_text.plan_text(c, '5')} == {0.1, 0.333, 1.0, 3.0}


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_repro')
def test_plot_py_draws_a_real_log(tiny_repro, tmp_path):
    out, _, _ = tiny_repro
    for log in (glob.glob(os.path.join(out, exp, '*', 'log.jsonl'))[0] for exp in ('exp1', 'exp3')):
        png = str(tmp_path / (os.path.basename(os.path.dirname(log)) + '.png'))
        p = subprocess.run([sys.executable, os.path.join(HERE, 'plot.py'), log, f'--out={png}'],
                           capture_output=True, text=True, env=CHILD_ENV, timeout=120)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == png and open(png, 'rb').read(8) == PNG
    p = subprocess.run([sys.executable, os.path.join(HERE, 'plot.py'), os.path.join(out, 'meta.json')],
                       capture_output=True, text=True, env=CHILD_ENV, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith('error:') and p.stderr.count('\n') == 1
    # a log whose last line a crash cut short is drawn, with a warning; a figure path it cannot write, refused
    cut = tmp_path / 'log.jsonl'
    cut.write_text(open(log).read() + '{"type": "tra')
    p = subprocess.run([sys.executable, os.path.join(HERE, 'plot.py'), str(cut)], capture_output=True,
                       text=True, env=CHILD_ENV, timeout=120)
    assert p.returncode == 0 and '1 unreadable line(s) skipped' in p.stderr, p.stderr
    for bad in (tmp_path / 'x.xyz', tmp_path):
        p = subprocess.run([sys.executable, os.path.join(HERE, 'plot.py'), str(cut), f'--out={bad}'],
                           capture_output=True, text=True, env=CHILD_ENV, timeout=120)
        assert p.returncode == 1 and p.stderr.count('\n') == 1 and '--out=' in p.stderr, p.stderr


def test_baselines_match_a_hand_computed_example():
    # train 0 1 0 1 2 (V = 3): unigram (c + 1)/(5 + 3) = 3/8, 3/8, 2/8; contexts c(0) = c(1) = 2;
    # successors t(0) = 1 ({1}), t(1) = 2 ({0, 2}); c(0, 1) = 2, c(1, 2) = 1. Witten–Bell: λ_0 = 2/3,
    # λ_1 = 1/2, λ_2 = 0 (never a context).
    b = reproduce_text.baselines([0, 1, 0, 1, 2], [0, 1, 2], [1, 2, 0], 3)
    p_uni = [3 / 8, 2 / 8, 3 / 8]
    p_bi = [2 / 3 * 2 / 2 + 1 / 3 * 3 / 8, 1 / 2 * 1 / 2 + 1 / 2 * 2 / 8, 3 / 8]
    assert b['unigram'] == pytest.approx(-np.mean(np.log(p_uni)))
    assert b['bigram'] == pytest.approx(-np.mean(np.log(p_bi)))


def test_spread_is_the_sample_std_and_one_seed_shows_a_dash():
    s = reproduce_runs.spread([1.0, 2.0, 3.0, 4.0])
    assert s['std'] == pytest.approx(np.std([1, 2, 3, 4], ddof=1)) and s['n'] == 4
    assert reproduce_runs.pm(s, '{:.2f}') == '2.50 ± 1.29 (1.00–4.00)'
    one = reproduce_runs.spread([0.5, None])
    assert one['std'] is None and reproduce_runs.pm(one, scale=100) == '50.0 ± -'


def test_best_lr_flags_the_edges():
    run = lambda lr, acc, loss: dict(lr=lr, evals=[dict(val_acc=acc, val_loss=loss)])
    best = reproduce_runs.best_lr
    assert best([run(1e-3, .5, 1), run(3e-3, .9, 1), run(1e-2, .9, .5)]) == dict(lr=1e-2, edge='high edge')
    assert best([run(1e-3, .5, 1), run(3e-3, .9, 1), run(1e-2, .2, .5)]) == dict(lr=3e-3, edge='')
    assert best([run(1e-3, 0, 4), run(3e-3, 0, 5)]) == dict(lr=1e-3, edge='low edge')
