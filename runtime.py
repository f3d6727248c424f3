"""
The machine a run is on: the device (with its index on CUDA), the autocast dtype, batches moved to the device,
the code's git commit, and SIGINT/SIGTERM (finish the step, save, exit 75). The GPU's peak FLOP/s for MFU
are in mfu.py, imported on CUDA only.
"""
import os
import re
import signal
import subprocess
from contextlib import nullcontext

import torch

from options import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
REQUEUE_EXIT = 75  # EX_TEMPFAIL: "try again", the exit status of a preempted run that can be resumed
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


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


def to_device(t, device):
    """A CPU tensor on `device`; to CUDA through pinned memory, without blocking the host."""
    device = torch.device(device)
    if device.type == 'cuda':
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def code_version():
    """The git commit of this code (with '+dirty' for uncommitted changes), or 'unknown' outside a repo."""
    try:
        def git(*args):
            out = subprocess.run(['git', *args], cwd=HERE, capture_output=True, text=True, timeout=10)
            return out.stdout.strip()
        commit = git('rev-parse', 'HEAD')
        status = git('status', '--porcelain', '--untracked-files=no')
        return (commit + ('+dirty' if status else '')) or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


class Preemption:
    """First SIGINT/SIGTERM: `requested` is set (finish the step, save, exit REQUEUE_EXIT). Second: exit
    at once, without saving (the last checkpoint is intact)."""

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
