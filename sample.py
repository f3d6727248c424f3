"""
Sample from a train.py checkpoint: text runs decode through the run's tokenizer (and its compacted
vocabulary), SpamLang runs print token ids.

    python sample.py --ckpt=out/tinyshakespeare_wide/ckpt.pt --start="ROMEO:" --num_samples=2
    python sample.py --ckpt=out/spamlang_wide/ckpt.pt --start_ids=0,17      # SpamLang: BOS, then symbol 17
    python sample.py --ckpt=out/spamlang_wide/ckpt.pt --temperature=0       # greedy
"""
import sys

import numpy as np
import torch

import checkpoint
import options
import runtime
import textdata
from options import ConfigError

# -----------------------------------------------------------------------------
ckpt = 'out/spamlang_wide/ckpt.pt'  # a checkpoint written by train.py
start = '\n'               # the prompt, for text runs
start_ids = ''             # comma-separated token ids instead of a text prompt (SpamLang default: 0, the BOS)
num_samples = 3            # samples, each from the same prompt
max_new_tokens = 64        # tokens sampled after the prompt
temperature = 0.8          # 0 = greedy; below 1 sharper, above 1 flatter
top_k = 200                # sample among the k most likely tokens only; 0 = all
seed = 1337                # the same seed gives the same samples
device = 'auto'            # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
# -----------------------------------------------------------------------------
options.one_line_errors()
c, given = options.parse_args(sys.argv[1:], options.defaults_of(globals()), __file__)
options.positive(c, 'num_samples', 'max_new_tokens')
if c['temperature'] < 0 or c['top_k'] < 0:
    raise ConfigError(f"--temperature and --top_k must be ≥ 0, got {c['temperature']} and {c['top_k']}")
device = runtime.pick_device(c['device'])
state = checkpoint.load_checkpoint(c['ckpt'])
cfg = state['config']
model = checkpoint.model_from_checkpoint(state).to(device).eval()

# the tokenizer: none for SpamLang; tiktoken for text, with the map of a compacted vocabulary if there is one
text = cfg['data'] != 'spamlang' and cfg['data'].split(':')[0] != 'hmm'
if 'start' in given and (not text or c['start_ids']):  # else it would be ignored
    why = '--start_ids is given' if text else 'this is not a text run'
    raise ConfigError(f"--start is a text prompt: drop it ({why})")
enc = textdata.get_encoding(cfg['encoding']) if text else None
id_map = state.get('id_map')  # compact id -> the tokenizer's id, or None
if c['start_ids']:
    try:
        ids = [int(t) for t in c['start_ids'].split(',')]
    except ValueError:
        raise ConfigError(f"--start_ids={c['start_ids']!r}: give comma-separated integers, "
                          f"e.g. --start_ids=0,17")
elif text:
    ids = enc.encode_ordinary(c['start'])
    if id_map is not None:  # the prompt's tokens must be in the compacted vocabulary
        pos = np.searchsorted(id_map.numpy(), ids)
        missing = [t for t, p in zip(ids, pos) if p >= len(id_map) or id_map[p] != t]
        if missing:
            raise ConfigError(f"--start={c['start']!r} holds tokens the run never saw "
                              f"({enc.decode(missing)!r}): its vocabulary was compacted to the text's; "
                              f"change the prompt")
        ids = pos.tolist()
else:
    ids = [0]  # SpamLang's BOS
if not ids:
    raise ConfigError("the prompt is empty: give some text with --start, or --start_ids")
if min(ids) < 0 or max(ids) >= cfg['vocab_size']:
    raise ConfigError(f"the prompt's token ids must lie in 0..{cfg['vocab_size'] - 1}, got {ids}")

gen = torch.Generator(device=device).manual_seed(c['seed'])
x = torch.tensor([ids] * c['num_samples'], dtype=torch.long, device=device)  # (num_samples, T)
out = model.generate(x, c['max_new_tokens'], c['temperature'], c['top_k'] or None, gen).tolist()
for row in out:
    if text:
        print(enc.decode(row if id_map is None else id_map[row].tolist()))
    else:
        print(' '.join(map(str, row)))
    print('---------------')
