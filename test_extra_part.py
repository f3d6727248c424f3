# sample.py and GPT.generate (to merge into test_all.py)
import os, subprocess, sys
import pytest, torch
import common
from model import GPT, GPTConfig

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_ENV = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}
CHILD_ENV['OMP_NUM_THREADS'] = '1'


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


def test_sample_script_decodes_through_a_compacted_vocabulary(tmp_path):
    text = tmp_path / 'words.txt'
    text.write_text(' '.join(['the head passes back only part of the gradient'] * 200))
    out = tmp_path / 'run'
    p = subprocess.run([sys.executable, 'train.py', f'--data={text}', '--compact_vocab=True', '--n_embd=16',
                        '--n_head=2', '--block_size=16', '--batch_size=8', '--max_iters=60', '--learning_rate=1e-2',
                        '--eval_interval=60', '--eval_iters=1', f'--out_dir={out}'], cwd=HERE, env=CHILD_ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    state = common.load_checkpoint(str(out / 'ckpt.pt'))
    assert state['config']['vocab_size'] == len(state['id_map']) < 20  # compacted: the ids that occur
    run = lambda *a: subprocess.run([sys.executable, 'sample.py', f'--ckpt={out}/ckpt.pt', *a], cwd=HERE,
                                    env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    a, b = run('--start=the head', '--seed=3'), run('--start=the head', '--seed=3')
    assert a.returncode == 0 and a.stdout == b.stdout, a.stderr
    samples = a.stdout.split('---------------')[:-1]
    assert len(samples) == 3 and all(s.strip().startswith('the head') for s in samples)
    assert set(''.join(samples)) <= set('the head passes back only part of the gradient\n')  # its tokens, decoded
    bad = run('--start=zebra')
    assert bad.returncode == 1 and 'never saw' in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
