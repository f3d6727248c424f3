"""
How long a reproduce.py plan takes on a GPU, by an estimate: `python reproduce.py --preset=gpu --dry_run`
prints it per experiment and stops before any run. Each run is one train.py process:

    time of a run  = start-up (Python, CUDA, data; START_S) + FLOPs / (MFU · peak)
    FLOPs of a run = GPT.flops_per_token × (training tokens + evaluation tokens / 3)
    wall time      = Σ time of the runs / jobs, never below Σ FLOPs / (MFU_CEILING · peak)

FLOPs per token are GPT.flops_per_token (6 per matmul weight, attention's 12·L·T·D). The rates are ours, from
one measurement: train.py's gpu config (V = 16,384, D = 256, 4 layers, 8,192 tokens a step, bf16) ran at
3.3–4.1% MFU eager and 6.1% compiled on one H200 (2026-12-04, torch 2.11). Small models leave a GPU mostly
idle, so several processes share it (--jobs) at nearly their own speed until MFU_CEILING of the peak is in use
in all; the start-up time has not been measured on a GPU: START_S is an assumption, and the first thing to
replace with a measurement.

    python reproduce.py --preset=gpu --text=input.txt --dry_run
"""
import torch

from model import GPT, GPTConfig, MODEL_KEYS

PEAK_FLOPS = 989e12     # H100/H200 dense bf16
MFU = {False: 0.035, True: 0.06}  # per process, eager / compiled (measured at train.py's gpu config)
MFU_CEILING = 0.4       # what many small processes together can draw of the peak (ours)
START_S = {False: 12.0, True: 40.0}  # per process: Python, CUDA, data; compiled: + the compile (ours)


def flops_per_token(args):
    """GPT.flops_per_token of a run's train.py arguments, from a model on the meta device (no memory)."""
    with torch.device('meta'):
        model = GPT(GPTConfig(**{k: args[k] for k in MODEL_KEYS if k in args}))
    return model.flops_per_token()


def tokens(args, val_tokens):
    """Training tokens of one train.py process and its evaluation tokens (every validation window when
    eval_iters = 0: val_tokens)."""
    step = args['batch_size'] * args['block_size']
    evals = args['max_iters'] // args['eval_interval'] + 1
    per_eval = val_tokens if args.get('eval_iters', 1) == 0 else args['eval_iters'] * step
    return args['max_iters'] * step, evals * per_eval


def processes(spec):
    """The train.py processes of one planned run: its own, or a stable phase and its cooldown branches."""
    if 'trunk' not in spec:
        return [spec['args']]
    return [spec['trunk']] + [dict(spec['trunk'], max_iters=cool, eval_interval=cool, eval_iters=0)
                              for _, cool in spec['branches']]


def estimate(specs, jobs, compile, val_tokens=30_000):
    """{experiment: dict(runs, processes, pflop, compute_s, start_s, wall_s)} and the total, for the plan's
    specs run `jobs` at a time (val_tokens: the validation split's size for text runs, before it is known)."""
    out = {}
    for s in specs:
        e = out.setdefault(s['exp'], dict(runs=0, processes=0, pflop=0.0, compute_s=0.0, start_s=0.0))
        e['runs'] += 1
        for args in processes(s):
            train, evals = tokens(args, val_tokens)
            flops = flops_per_token(args) * (train + evals / 3)
            e['processes'] += 1
            e['pflop'] += flops / 1e15
            e['compute_s'] += flops / (MFU[compile] * PEAK_FLOPS)
            e['start_s'] += START_S[compile]
    for e in out.values():
        floor = e['pflop'] * 1e15 / (MFU_CEILING * PEAK_FLOPS)
        e['wall_s'] = max((e['compute_s'] + e['start_s']) / jobs, floor)
    out['total'] = {k: sum(e[k] for e in out.values()) for k in ('runs', 'processes', 'pflop', 'compute_s',
                                                                  'start_s', 'wall_s')}
    return out


def report(est, jobs, compile):
    """The estimate as printed lines."""
    lines = [f"estimate for one H100/H200 ({'compiled' if compile else 'eager'}, {jobs} runs at once; "
             f"MFU {MFU[compile]:.1%} per process, start-up {START_S[compile]:g} s per process):",
             f"{'experiment':>10} {'runs':>5} {'processes':>9} {'PFLOP':>8} {'compute':>9} {'start-up':>9} "
             f"{'wall':>8}"]
    for name, e in est.items():
        lines.append(f"{name:>10} {e['runs']:>5} {e['processes']:>9} {e['pflop']:>8.2f} "
                     f"{e['compute_s'] / 60:>7.1f} m {e['start_s'] / 60:>7.1f} m {e['wall_s'] / 60:>6.1f} m")
    return lines
