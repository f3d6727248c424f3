"""
Checkpoints: atomic (a temp file, fsynced, renamed into place; the previous one kept as prev_ckpt.pt),
verified by a digest of their contents, and resumed exactly (every random state of the run). train.py's
`save()` and `--init_from=resume` use this file; a reader of the training loop can skip it.

    checkpoint.save_checkpoint(path, state); ckpt = checkpoint.load_checkpoint(path)
"""
import hashlib
import json
import os
import random

import numpy as np
import torch

from model import GPT, GPTConfig, MODEL_KEYS
from options import ConfigError, TrainingError

# train.py's keys that a resumed run may change without --allow_changes: this invocation's own (taken from
# the command line or their defaults, never from the checkpoint) ...
INVOCATION_KEYS = ('out_dir', 'init_from', 'overwrite', 'allow_changes', 'resume_fallback', 'device', 'dtype',
                   'compile', 'loss', 'peak_flops')
# ... and the run's cadence (the checkpoint's unless given again: a requeued run keeps logging and saving)
CADENCE_KEYS = ('save_checkpoints', 'keep_checkpoints', 'log_interval', 'eval_interval', 'eval_iters',
                'meter_every_step')


def state_digest(obj, h=None):
    """sha256 over a nested state (tensors by their bytes): catches bit flips torch.load reads silently."""
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
    """Atomic and verified: temp file in the same folder, fsync, the old checkpoint kept as prev_ckpt.pt,
    rename. At every instant `path` is a complete checkpoint; a failed write (disk full) leaves it
    untouched."""
    state = {**state, 'digest': state_digest(state).hexdigest()}
    tmp, prev = f"{path}.tmp{os.getpid()}", previous_checkpoint(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        # keep the old one as prev_ckpt.pt: a hard link, so no copy and no moment without it
        if os.path.exists(path):
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


def save_or_stop(path, state, saved_iter, keep=None):
    """save_checkpoint (and a hard link to it at `keep`), or, when the write fails (a full disk), a
    TrainingError that says what is intact."""
    try:
        save_checkpoint(path, state)
        if keep:
            if os.path.exists(keep):
                os.remove(keep)
            os.link(path, keep)
    except OSError as e:
        kept = f"the previous checkpoint (iter {saved_iter}) is intact"
        if saved_iter is None:
            kept = "none was saved"
        raise TrainingError(f"could not save {path} at iter {state['iter_num']} ({e.strerror or e}): {kept}; "
                            f"free disk space and resume with --init_from=resume")


def model_from_checkpoint(ckpt):
    """The GPT of a loaded checkpoint, with its weights (on the CPU, in training mode)."""
    saved = ckpt['config']  # a key added since it was saved (e.g. head_basis) takes its default
    model = GPT(GPTConfig(**{k: saved[k] for k in MODEL_KEYS if k in saved}))
    model.load_state_dict(ckpt['model'])
    return model


def load_checkpoint(path, fallback=False, hint="give the ckpt.pt of a train.py run"):
    """Load and verify a checkpoint of this project; with fallback a corrupt one gives way to prev_ckpt.pt."""
    if os.path.isdir(path):
        inside = os.path.join(path, 'ckpt.pt')
        raise ConfigError(f"{path} is a folder: give the checkpoint file inside it, e.g. {inside}")
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path} not found: {hint}")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        return _fallback(path, fallback, e)
    if not isinstance(ckpt, dict) or 'digest' not in ckpt or not {'model', 'config'} <= set(ckpt):
        raise ConfigError(f"{path} is a torch file but not a checkpoint of this project "
                          f"(no model, config and digest): give a ckpt.pt written by train.py")
    digest = ckpt.pop('digest')
    if digest != state_digest(ckpt).hexdigest():
        return _fallback(path, fallback, ValueError('checksum mismatch'))
    return ckpt


def _fallback(path, fallback, e):
    prev = previous_checkpoint(path)
    if fallback and os.path.isfile(prev):
        print(f"warning: {path} is corrupt ({type(e).__name__}); resuming from the previous one, {prev}")
        return load_checkpoint(prev)
    hint = f"; the previous one, {prev}, is there (train.py resumes it with --resume_fallback=True)"
    hint = hint if os.path.isfile(prev) else ''
    raise ConfigError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:60]}){hint}")


def resume_config(c, given, saved, allow_changes):
    """The checkpoint's config with the keys given now and this invocation's (INVOCATION_KEYS); a changed
    model shape is refused, a changed training knob too unless allow_changes."""
    for key in sorted(given - set(INVOCATION_KEYS) - set(CADENCE_KEYS)):
        if c[key] != saved.get(key) and (key in MODEL_KEYS or not allow_changes):
            fix = ("a resumed model keeps its shape: start a new --out_dir" if key in MODEL_KEYS else
                   "pass --allow_changes=True if the change is intended")
            raise ConfigError(f"--{key}={c[key]!r} differs from the checkpoint's {saved.get(key)!r}: {fix}")
    return {**saved, **{k: c[k] for k in set(given) | set(INVOCATION_KEYS)}}


def open_log(path, iter_num):
    """A resumed run's log.jsonl, opened to append, without the rows logged after its checkpoint at iter_num
    (a run stopped between checkpoints logs them again) or a line cut short by a crash."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            lines = f.read().splitlines()
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get('iter', 0) <= iter_num:
                rows.append(line + '\n')
    with open(f"{path}.tmp{os.getpid()}", 'w') as f:
        f.writelines(rows)
    os.replace(f"{path}.tmp{os.getpid()}", path)
    return open(path, 'a')


def check_data(data, vocab_size, encoding, allow_changes, saved=None):
    """A resumed run (saved = the checkpoint's config) keeps its data, V and encoding (its data file may
    change with allow_changes)."""
    checked = (('data_fingerprint', data['fingerprint']), ('vocab_size', vocab_size), ('encoding', encoding))
    for key, now in checked:
        was = (saved or {}).get(key, now)
        if was != now and not (key == 'data_fingerprint' and allow_changes):
            raise ConfigError(f"the data differs from the checkpoint's ({key}: {was} then, {now} now): "
                              f"resume with the same data file, or pass --allow_changes=True if the change "
                              f"is intended")


def get_rng_state(data_gen, device_type):
    """Every random state a run depends on: its data stream (a CPU generator), torch, CUDA, numpy, Python."""
    return dict(train_gen=data_gen.get_state(), torch=torch.get_rng_state(), numpy=np.random.get_state(),
                python=random.getstate(), cuda=torch.cuda.get_rng_state() if device_type == 'cuda' else None)


def set_rng_state(rng, data_gen, device_type):
    try:
        data_gen.set_state(rng['train_gen'])
    except (RuntimeError, TypeError):
        raise ConfigError("the checkpoint's data-stream state is not a CPU generator's "
                          "(a checkpoint written on another device by an older version): "
                          "resume it there, or start again")
    torch.set_rng_state(rng['torch'])
    np.random.set_state(rng['numpy'])
    random.setstate(rng['python'])
    if device_type == 'cuda' and rng.get('cuda') is not None:
        torch.cuda.set_rng_state(rng['cuda'])
