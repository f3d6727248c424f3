"""
Benchmarks of the LM head's path: time, peak memory and FLOP/s, printed as one table.

    python bench.py                        # all sections (2-core CPU: several minutes;
                                           # mostly the N = 8192, V = 131k point)
    python bench.py --json_out=bench.json      # the same rows for machines
    python bench.py --quick                # small shapes only, a smoke test (seconds)
    python bench.py --sections=1           # a subset: 1 head + loss, 2 training step, 3 meter and measure.py,
                                           # 4 the heads beyond the paper and their meter

1. Head and loss, forward + backward, over V ∈ {32k, 128k} and a few N, D: naive (N×V logits, autograd),
   fused (fused_loss.chunked_linear_cross_entropy), triton (triton_ce.py, CUDA only), torch
   (F.linear_cross_entropy with its chunked options, where the installed torch has it), liger and cce
   (Liger-Kernel; cut-cross-entropy in its default mode, which skips small gradient entries, and its exact
   one: only on CUDA, only when installed). A variant that cannot run prints one line saying why.
   flops_frac = the time of the bare matmuls of the same shapes (h Wᵀ, G W, Gᵀ h into preallocated outputs:
   6·N·V·D FLOPs, measured in the same run: this machine's roofline) / the variant's time. Memory, one rule
   for every variant: the peak extra bytes of a forward + backward, gradients freed before the baseline, so
   dh and dW count; "beyond dh + dW" subtracts them counted in fp32, (N·D + V·D)·4 bytes.
2. A full training step (GPT, AdamW): tokens/s and peak memory, naive vs fused loss, eager and compiled, over
   a few V (the measurements behind train.py's --loss=auto: model.FUSED_FROM_VOCAB); MFU on CUDA.
3. The live meter's overhead on a training step (train.py --meter_every_step: a forward pass of its own on
   the step's first meter.METER_SEQUENCES sequences), and measure.py's cost per token.
4. The heads beyond the paper (remedies.py) beside linear: the head's forward + backward on N hidden states
   (time per token, peak memory, its parameters) and remedies.head_meter's time per token on 64 of them.

How memory is measured. Every (variant, shape) runs in a fresh subprocess, so nothing one variant allocated or
cached can flatter or burden another. CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(),
minus the memory allocated just before the call. CPU: torch keeps no allocator statistics, so we read the
kernel's peak resident set size: VmHWM in /proc/self/status, reset through /proc/self/clear_refs just before
the call, minus VmRSS just before it (ru_maxrss of the child when the reset is not allowed). Both count the
extra bytes the call needed at its peak, inputs excluded and gradients included. On CPU the workers run with
MALLOC_MMAP_THRESHOLD_=65536: glibc then maps every block ≥ 64 KiB on its own and unmaps it when freed, so RSS
follows the live tensors instead of a heap that never shrinks (which would hide reuse and read as 0). Times
are the best of `--reps` calls (the first also gives the memory); ratios between variants of one run are what
to compare, since a shared machine's absolute speed drifts.
"""
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import options
import runtime
import meter
import measure
import mfu
from fused_loss import chunked_linear_cross_entropy
from model import GPT, GPTConfig

HERE = os.path.dirname(os.path.abspath(__file__))
HEAD_SHAPES = [(2048, 32768, 256), (8192, 32768, 256), (2048, 32768, 1024), (8192, 131072, 256)]
# torch's chunked F.linear_cross_entropy ran at 5-7% of the bare matmul on the 2-core CPU (quick shapes), so
# on CPU it runs only up to this many N·V·D: at the target point it alone would outlast the rest of the bench
TORCH_CPU_MAX_NVD = 2**33
QUICK_SHAPES = [(512, 4096, 64), (1024, 8192, 128)]
CUDA_SHAPES = [(8192, 32768, 768), (8192, 131072, 768), (8192, 131072, 4096), (16384, 131072, 4096)]
VARIANTS = ('bare', 'naive', 'fused', 'triton', 'torch', 'liger', 'cce', 'cce_exact')
STEP_VOCABS = {'cpu': (2048, 8192, 32768), 'cuda': (8192, 32768, 131072)}  # section 2: where auto flips
WIN_MARGIN = 0.05  # section 2: the fused loss wins a V when its step is this much faster
# our targets there: fused memory ≤ 0.25× naive, time ≤ 1.1×, ≥ 0.80 of the bare matmuls
TARGET = (8192, 131072, 256)


# -----------------------------------------------------------------------------
# measuring one call, in the worker process

def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def rss_bytes(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_cpu_peak():
    """True when VmHWM could be reset to the current RSS (Linux ≥ 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def measure_call(fn, device, reps, reset=None):
    """(best time in s, peak extra bytes of the first timed call) of fn(). On CUDA one untimed call comes
    first: Triton kernels (ours, Liger, cut-cross-entropy, torch.compile) are compiled and autotuned then,
    not in the timing. reset() runs before the memory baseline is read: it frees what the untimed call left
    (gradients), so every variant's peak counts its outputs by the same rule."""
    if device == 'cuda':
        fn()
    if reset is not None:
        reset()
    sync(device)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before, cleared = rss_bytes('VmRSS'), reset_cpu_peak()
        if not cleared:  # ru_maxrss is the whole process's peak: right only for a fresh process's first call
            import resource
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if i == 0:
            if device == 'cuda':
                peak = torch.cuda.max_memory_allocated() - before
            elif cleared:
                peak = rss_bytes('VmHWM') - before
            else:
                import resource
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return min(times), max(peak, 0)


def head_inputs(N, V, D, device, dtype, seed=0):
    g = torch.Generator(device='cpu').manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(device, dtype).requires_grad_()          # (N, D)
    W = (torch.randn(V, D, generator=g) * 0.02).to(device, dtype).requires_grad_()  # (V, D)
    y = torch.randint(0, V, (N,), generator=g).to(device)                            # (N,)
    return h, W, y


def torch_lce_missing():
    """Why PyTorch's chunked F.linear_cross_entropy cannot run with this torch, or None when it can."""
    if hasattr(F, 'linear_cross_entropy') and hasattr(nn, 'LinearCrossEntropyOptions'):
        return None
    return f'torch {torch.__version__} has no F.linear_cross_entropy with options'


def cce_kwargs(exact):
    """cut-cross-entropy's arguments for its default mode (which skips gradient entries below a threshold)
    or its exact one, in the installed version: (kwargs, None), or (None, why it cannot run)."""
    try:
        import cut_cross_entropy as cce
    except ImportError:
        return None, 'cut-cross-entropy is not installed (pip install cut-cross-entropy)'
    if not exact:
        return {}, None
    if 'CCE_EXACT' in cce.LinearCrossEntropyImpl.__members__:  # newer versions name the exact mode
        return {'impl': 'cce_exact'}, None
    if 'filter_eps' in inspect.signature(cce.linear_cross_entropy).parameters:  # 25.1: no filtering = exact
        return {'filter_eps': None}, None
    return None, 'this cut-cross-entropy has neither impl=cce_exact nor filter_eps'


def head_fn(variant, h, W, y):
    """A function running forward + backward of one head-and-loss variant, or a string: why it cannot run
    here."""
    dev = h.device.type

    def run(loss_fn):
        def fn():
            h.grad = W.grad = None
            loss_fn().backward()
        return fn

    if variant == 'bare':  # the roofline: the three matmuls of the head, outputs preallocated, nothing else
        L = torch.empty(h.size(0), W.size(0), device=h.device, dtype=h.dtype)                # (N, V)
        dh, dW = torch.empty_like(h), torch.empty_like(W)
        hd, Wd = h.detach(), W.detach()

        def fn():
            torch.mm(hd, Wd.t(), out=L)   # logits
            torch.mm(L, Wd, out=dh)       # ∇h = G W
            torch.mm(L.t(), hd, out=dW)   # ∇W = Gᵀ h
        return fn
    if variant == 'naive':
        return run(lambda: F.cross_entropy((h @ W.t()).float(), y))
    if variant == 'fused':  # ours, the chunked loop (the CPU path)
        return run(lambda: chunked_linear_cross_entropy(h, W, y))
    if variant == 'torch':
        if torch_lce_missing():
            return torch_lce_missing()
        # its chunked path, 'auto' policy (the default, options=None, is naive)
        opts = nn.LinearCrossEntropyOptions()
        return run(lambda: F.linear_cross_entropy(h, W, y, options=opts))
    if dev != 'cuda':
        return 'needs CUDA'
    if variant == 'triton':  # ours, the Triton kernel: what --loss=fused runs on CUDA
        import triton_ce
        ok, why = triton_ce.available()
        return run(lambda: triton_ce.triton_linear_cross_entropy(h, W, y)) if ok else why
    if variant == 'liger':
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            return 'Liger-Kernel is not installed (pip install liger-kernel)'
        # like ours, accumulate the head's weight gradient in fp32 (Liger's default is the input dtype, bf16)
        fp32 = 'accum_dtype' in inspect.signature(LigerFusedLinearCrossEntropyLoss).parameters
        loss = LigerFusedLinearCrossEntropyLoss(**({'accum_dtype': torch.float32} if fp32 else {}))
        if not fp32:
            print('NOTE liger: this version accumulates the weight gradient in bf16 (no accum_dtype option)')
        return run(lambda: loss(W, h, y))
    # cut-cross-entropy: its default (gradient filtering) and its exact mode
    if variant in ('cce', 'cce_exact'):
        kw, why = cce_kwargs(exact=variant == 'cce_exact')
        if kw is None:
            return why
        from cut_cross_entropy import linear_cross_entropy
        return run(lambda: linear_cross_entropy(h, W, y, **kw))
    raise ValueError(variant)


def worker_head(spec):
    device, N, V, D = spec['device'], spec['N'], spec['V'], spec['D']
    dtype = torch.bfloat16 if device == 'cuda' else torch.float32
    h, W, y = head_inputs(N, V, D, device, dtype)
    fn = head_fn(spec['variant'], h, W, y)
    if isinstance(fn, str):
        return dict(skipped=fn)

    def free_grads():
        h.grad = W.grad = None
    t, mem = measure_call(fn, device, spec['reps'], reset=free_grads)
    grads = (N * D + V * D) * 4  # dh and dW, counted in fp32 whatever their dtype
    return dict(time_s=t, peak_mem_bytes=mem, beyond_grads_bytes=mem - grads, tflops=6 * N * V * D / t / 1e12)


def step_setup(spec):
    """A GPT, its AdamW and one batch; returns (model, step function). step(metered=True) runs the live meter
    on that step only, so metered and plain steps can share one model."""
    device = spec['device']
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=spec['V'], n_embd=spec['D'], n_layer=spec['n_layer'], n_head=spec['n_head'],
                    block_size=spec['T'], head=spec.get('head', 'linear'))
    model = GPT(cfg).to(device)
    model.fused = spec['loss'] == 'fused'
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), device)
    x = torch.randint(0, spec['V'], (spec['B'], spec['T']), device=device)
    step_model = torch.compile(model) if spec.get('compile') else model
    if device == 'cuda':
        ctx = torch.autocast(device, dtype=torch.bfloat16)
    else:
        ctx = torch.autocast(device, enabled=False)

    def step(metered=False):
        with ctx:
            _, loss = step_model(x, x)
        loss.backward()
        if metered:  # as train.py --meter_every_step: a forward pass of its own on a few sequences
            with ctx:
                meter.model_meter(model, x[:meter.METER_SEQUENCES], x[:meter.METER_SEQUENCES])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, step


def worker_step(spec):
    model, step = step_setup(spec)
    for _ in range(spec['warmup']):  # compile happens here, and AdamW's state is allocated
        step()
    t, mem = measure_call(lambda: [step() for _ in range(spec['steps'])], spec['device'], 1)
    t /= spec['steps']
    tok = spec['B'] * spec['T']
    out = dict(time_s=t, peak_mem_bytes=mem, tok_per_s=tok / t)
    if spec['device'] == 'cuda':
        peak = mfu.peak_flops(torch.cuda.get_device_name())[0]
        out['mfu'] = model.flops_per_token() * tok / t / peak if peak else None
    return out


def worker_meter(spec):
    """The live meter's overhead: one model whose steps alternate between metered and plain, so that drift
    of a shared machine hits both alike; the median step time of each."""
    _, step = step_setup(spec)
    for _ in range(spec['warmup']):
        step(), step(metered=True)
    times = {False: [], True: []}
    for i in range(spec['steps']):
        for metered in ((False, True) if i % 2 else (True, False)):  # alternate who goes first
            t0 = time.perf_counter()
            step(metered=metered)
            sync(spec['device'])
            times[metered].append(time.perf_counter() - t0)
    t_plain, t_meter = (sorted(times[m])[len(times[m]) // 2] for m in (False, True))
    tok = spec['B'] * spec['T']
    return dict(time_s=t_meter, peak_mem_bytes=None, tok_per_s=tok / t_meter,
                overhead_frac=t_meter / t_plain - 1)


def worker_measure(spec):
    """measure.py's full measurement (per-token r, spectrum, direction test) on N tokens of a V×D head."""
    N, V, D = spec['N'], spec['V'], spec['D']
    h, W, y = head_inputs(N, V, D, spec['device'], torch.float32)
    h, W = h.detach(), W.detach() * 10  # logits of order 1, as in a trained model
    t, mem = measure_call(lambda: measure.measure(h, y, W), spec['device'], 1)
    return dict(time_s=t, peak_mem_bytes=mem, time_per_token_s=t / N)


def worker_remedy(spec):
    """Section 4: one head in a 2-layer GPT of width D over V: the head alone, forward + backward, on the N
    final hidden states of random tokens (blocks: and the block before), and head_meter on 64 of them."""
    import remedies  # the heads beyond the paper: only this section reads them
    N, V, D, T = spec['N'], spec['V'], spec['D'], 64
    model = GPT(GPTConfig(vocab_size=V, n_embd=D, n_layer=2, n_head=4, block_size=T, head=spec['head']))
    model = model.to(spec['device'])
    x = torch.randint(0, V, (N // T, T), device=spec['device'])
    y = torch.randint(0, V, (N // T, T), device=spec['device'])
    with torch.no_grad():
        h = model.hidden(x)  # (N // T, T, D); the blocks head's hook keeps the earlier block's output
    h.requires_grad_(True)

    def step():
        logits = model.lm_head(h)
        F.cross_entropy(logits.float().view(-1, V), y.view(-1)).backward()

    t, mem = measure_call(step, spec['device'], spec['reps'])
    t_meter, _ = measure_call(lambda: remedies.head_meter(model.lm_head, h.detach(), y, tokens=64),
                              spec['device'], 1)
    params = sum(p.numel() for p in model.lm_head.parameters())
    return dict(time_s=t, peak_mem_bytes=mem, time_per_token_s=t / N, meter_per_token_s=t_meter / 64,
                head_params=params)


def worker(spec):
    torch.manual_seed(0)
    workers = {'head': worker_head, 'step': worker_step, 'meter': worker_meter, 'measure': worker_measure,
               'remedy': worker_remedy}
    return workers[spec['kind']](spec)

# -----------------------------------------------------------------------------
# the driver: one subprocess per row

def run_worker(spec, timeout=1800):
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'}  # see the docstring: RSS then tracks live memory
    p = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker=' + json.dumps(spec)], cwd=HERE,
                       capture_output=True, text=True, timeout=timeout, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ['no output'])[-1]
        return {'error': f"exit {p.returncode}: {tail[:200]}"}
    return json.loads(lines[-1][len('RESULT '):])


def fmt_bytes(b):
    if b is None:
        return '-'
    return f"{b / 2**20:,.0f} MiB" if abs(b) < 2**30 else f"{b / 2**30:,.2f} GiB"


def print_row(r):
    frac = f"{r['flops_frac']:.2f}" if r.get('flops_frac') is not None else '-'
    keys = ('tflops', 'tok_per_s', 'mfu', 'overhead_frac', 'time_per_token_s', 'meter_per_token_s',
            'head_params')
    extra = r.get('error') or ', '.join(f"{k} {r[k]:,.3g}" for k in keys if r.get(k) is not None)
    if r.get('beyond_grads_bytes') is not None:
        extra += f", beyond dh + dW {fmt_bytes(r['beyond_grads_bytes'])}"
    t = f"{r['time_s']:.3f}" if r.get('time_s') is not None else '-'
    print(f"{r['section']:<8} {r['variant']:<16} {r['N']:>6} {r['V']:>7} {r['D']:>5} {t:>9} "
          f"{fmt_bytes(r.get('peak_mem_bytes')):>11} {frac:>6}  {extra}", flush=True)


# -----------------------------------------------------------------------------
# options (--key=value)
sections = '1234'        # which to run: any of 1 (head + loss), 2 (training step), 3 (meter, measure.py),
                         # 4 (the heads beyond the paper, remedies.py)
quick = False            # small shapes only: a smoke test (2 CPU cores: about a minute)
reps = 2                 # timed calls per row of sections 1 and 4 (2 and 3 time steps); the best is reported
device = 'auto'          # auto (cuda if available, else cpu) | cpu | cuda
json_out = ''            # --json_out=FILE: the rows for machines (gpu_check: default gpu_check.json)
gpu_check = False        # verify the GPU path in ≤ 8 min (one CUDA GPU): 4 training runs and measure.py only
gpu_check_iters = 200    # training steps of each gpu_check run
# -----------------------------------------------------------------------------


def head_rows(shapes, device, reps, add):
    """Section 1: every head-and-loss variant at every shape, and its fraction of the bare matmuls' FLOP/s."""
    cannot = {}  # variant -> why it cannot run here: said once, not tried again
    if 'torch' in VARIANTS and torch_lce_missing():  # known here: no worker process needed to find out
        cannot['torch'] = torch_lce_missing()
        print(f"{'head':<8} {'torch':<16} not run: {cannot['torch']}", flush=True)
    for N, V, D in shapes:
        bare = None
        for variant in VARIANTS:
            too_slow = variant == 'torch' and device == 'cpu' and N * V * D > TORCH_CPU_MAX_NVD
            if variant in cannot or too_slow:
                continue
            res = run_worker(dict(kind='head', variant=variant, device=device, N=N, V=V, D=D, reps=reps))
            if 'skipped' in res:
                cannot[variant] = res['skipped']
                print(f"{'head':<8} {variant:<16} not run: {res['skipped']}", flush=True)
                continue
            row = dict(section='head', variant=variant, N=N, V=V, D=D, **res)
            if 'time_s' in res:
                bare = res['time_s'] if variant == 'bare' else bare
                row['flops_frac'] = bare / res['time_s'] if bare else None
            add(row)


def step_rows(device, cfg, steps, quick, add):
    """Section 2: training steps, naive vs fused loss, eager and compiled, over V: the rows behind --loss=auto
    (model.FUSED_FROM_VOCAB), and the line to put there."""
    vocabs = (cfg['V'],) if quick else STEP_VOCABS[device]
    tok_per_s = {}
    for compiled in (False, True):
        for V in vocabs:
            for loss in ('naive', 'fused'):
                spec = dict(kind='step', device=device, **{**cfg, 'V': V}, **steps, loss=loss,
                            compile=compiled)
                res = run_worker(spec)
                add(dict(section='step', variant=loss + '+compile' * compiled, N=cfg['B'] * cfg['T'], V=V,
                         D=cfg['D'], **res))
                tok_per_s[compiled, V, loss] = res.get('tok_per_s', math.nan)  # nan: the worker failed
        # a win is a step at least WIN_MARGIN faster: a tie within a machine's noise keeps the reference
        ratio = [tok_per_s[compiled, V, 'fused'] / tok_per_s[compiled, V, 'naive'] for V in vocabs]
        wins = [r > 1 + WIN_MARGIN for r in ratio]
        smallest = next((V for i, V in enumerate(vocabs) if all(wins[i:])), None)  # it wins from here up
        won = ', '.join(f'{V:,}' for V, w in zip(vocabs, wins) if w) or 'none measured'
        print(f"--loss=auto: FUSED_FROM_VOCAB[{device!r}, {compiled}] = {smallest}  (fused/naive tokens/s "
              f"{', '.join(f'{r:.2f}' for r in ratio)}; ≥ {1 + WIN_MARGIN:.2f} at V = {won})", flush=True)


def run_script(*args, timeout=600):
    p = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        last = (p.stderr.strip().splitlines() or ['?'])[-1]
        raise options.TrainingError(f"{' '.join(args)} failed: {last}")
    return p.stdout


def check_gpu(opts):
    """The GPU path end to end in a few minutes: train.py --head=wide (gpu preset, bf16) with the fused and
    the naive loss, each compiled and eager; measure.py on the compiled fused run's checkpoint. (The head +
    loss table at V = 131,072 is `bench.py --sections=1` on the GPU.)"""
    out, runs = tempfile.mkdtemp(prefix='gpu_check_'), {}
    for name, extra in (('compiled_fused', ['--compile=True', '--loss=fused']),
                        ('compiled_naive', ['--compile=True', '--loss=naive']),
                        ('eager_fused', ['--compile=False', '--loss=fused']),
                        ('eager_naive', ['--compile=False', '--loss=naive'])):
        t0 = time.time()
        iters = opts['gpu_check_iters']
        try:  # a failed run is reported and the others still run: gpu_check then exits non-zero
            run_script('train.py', 'config/train_gpu.py', '--head=wide', f'--max_iters={iters}',
                       '--log_interval=50', f'--eval_interval={iters}', f'--out_dir={out}/{name}', *extra)
        except options.TrainingError as e:
            runs[name] = {'error': str(e)}
            print(f"gpu_check {name}: FAILED: {e}", flush=True)
            continue
        with open(f'{out}/{name}/log.jsonl') as f:
            log = [json.loads(line) for line in f]
        train = [r for r in log if r['type'] == 'train'][1:]  # the first interval holds the warm-up
        last = [r for r in log if r['type'] == 'eval'][-1]
        cfg = log[0]
        tokens_per_step = cfg['batch_size'] * cfg['block_size'] * cfg['gradient_accumulation_steps']
        runs[name] = dict(wall_s=round(time.time() - t0, 1), dtype=cfg['dtype'], compile=cfg['compile'],
                          loss=cfg['loss'], V=cfg['vocab_size'], D=cfg['n_embd'], n_layer=cfg['n_layer'],
                          tokens_per_step=tokens_per_step, tok_per_s=max(r['tok_per_s'] for r in train),
                          mfu=max((r.get('mfu') or 0) for r in train),
                          peak_mem_gb=max(r['peak_mem_gb'] for r in train), final_val_loss=last['val_loss'],
                          final_val_acc=last.get('val_acc'), grad_destroyed=last['grad_destroyed'])
        print(f"gpu_check {name}: {runs[name]}", flush=True)
    ok = [name for name in runs if 'error' not in runs[name]]
    if ok:
        run_script('measure.py', f'--ckpt={out}/{ok[0]}/ckpt.pt', f'--json_out={out}/measure.json')
        with open(f'{out}/measure.json') as f:
            m = json.loads(f.read())
        runs['measure'] = {k: m[k] for k in ('destroyed_ratio', 'visible_cosine', 'random_baseline',
                                             'visible_over_chance', 'ey_floor', 'ey_k')}
        print(f"gpu_check measure.py on {ok[0]}: {runs['measure']}", flush=True)
    for mode in ('eager', 'compiled'):  # the gpu preset's step: the evidence for --loss=auto at its V
        if f'{mode}_fused' in ok and f'{mode}_naive' in ok:
            fused, naive = runs[f'{mode}_fused'], runs[f'{mode}_naive']
            ratio = fused['tok_per_s'] / naive['tok_per_s']
            print(f"--loss=auto, cuda, {mode}, V = {naive['V']:,}: fused {ratio:.2f}x the naive loss's "
                  f"tokens/s", flush=True)
    return runs


def main(argv):
    opts, _ = options.parse_args(argv, options.defaults_of(globals()), __file__)
    if not opts['sections'] or set(opts['sections']) - set('1234'):
        raise options.ConfigError(f"--sections={opts['sections']}: give digits among 1, 2, 3, 4 "
                                  f"(e.g. --sections=13)")
    options.positive(opts, 'reps', 'gpu_check_iters')
    if opts['json_out'] or opts['gpu_check']:  # checked before the benchmark, not after it
        options.writable('json_out', opts['json_out'] or 'gpu_check.json', 'bench.json')
    if opts['gpu_check'] and not torch.cuda.is_available():
        raise options.ConfigError("--gpu_check needs a CUDA GPU and torch sees none; "
                                  "on a CPU run `python bench.py`")
    opts['device'] = runtime.pick_device(opts['device'], auto=('cuda', 'cpu')).type
    device = opts['device']
    rows = []
    print(f"bench.py: torch {torch.__version__}, device {device}"
          f" ({torch.cuda.get_device_name() if device == 'cuda' else f'{os.cpu_count()} CPU cores'}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}, commit {runtime.code_version()}")
    print(f"{'section':<8} {'variant':<16} {'N':>6} {'V':>7} {'D':>5} {'time_s':>9} "
          f"{'peak_mem':>11} {'flops':>6}")

    def add(row):
        rows.append(row)
        print_row(row)

    if opts['gpu_check']:
        t0 = time.time()
        runs = check_gpu(opts)
        path = opts['json_out'] or 'gpu_check.json'
        with open(path, 'w') as f:
            json.dump(dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(),
                           commit=runtime.code_version(), date=time.strftime('%Y-%m-%d %H:%M'),
                           wall_s=round(time.time() - t0, 1), runs=runs),
                      f, indent=1)
        print(f"gpu_check done in {time.time() - t0:.0f} s: wrote {path}")
        failed = [name for name, r in runs.items() if 'error' in r]
        if failed:
            raise options.TrainingError(f"gpu_check: {', '.join(failed)} failed (above; details in {path})")
        return
    if '1' in opts['sections']:
        head_rows(QUICK_SHAPES if opts['quick'] else CUDA_SHAPES if device == 'cuda' else HEAD_SHAPES, device,
                  opts['reps'], add)
    step_cfg = dict(V=4096, D=64, n_layer=2, n_head=2, T=32, B=16) if opts['quick'] else \
        dict(V=32768, D=256, n_layer=2, n_head=4, T=64, B=32 if device == 'cpu' else 128)
    steps = dict(warmup=2, steps=3) if opts['quick'] else dict(warmup=3, steps=5)
    N, V, D = step_cfg['B'] * step_cfg['T'], step_cfg['V'], step_cfg['D']
    if '2' in opts['sections']:
        step_rows(device, step_cfg, steps, opts['quick'], add)
    if '3' in opts['sections']:
        if not os.path.exists(os.path.join(HERE, 'measure.py')):
            print("section 3 skipped: measure.py is not there")
        else:
            for loss in ('naive', 'fused'):
                res = run_worker(dict(kind='meter', device=device, **step_cfg, warmup=2, steps=10, loss=loss))
                add(dict(section='meter', variant=f'{loss}+meter', N=N, V=V, D=D, **res))
            mN, mV, mD = (512, 4096, 64) if opts['quick'] else (2048, 32768, 256)
            res = run_worker(dict(kind='measure', device=device, N=mN, V=mV, D=mD))
            add(dict(section='measure', variant='measure.measure', N=mN, V=mV, D=mD, **res))
    if '4' in opts['sections']:
        rN, rV, rD = (256, 2048, 32) if opts['quick'] else (2048, 16384, 128)
        for head in ('linear', 'whiten', 'overparam', 'blocks', 'blocksum', 'mlp', 'prehead', 'mos', 'mos1',
                     'sigsoftmax'):
            spec = dict(kind='remedy', device=device, head=head, N=rN, V=rV, D=rD, reps=opts['reps'])
            res = run_worker(spec)
            add(dict(section='remedies', variant=head, N=rN, V=rV, D=rD, **res))
    by = {(r['section'], r['variant'], r['N'], r['V'], r['D']): r for r in rows}
    naive, fused = by.get(('head', 'naive', *TARGET)), by.get(('head', 'fused', *TARGET))
    if naive and fused and 'time_s' in naive and 'time_s' in fused:
        print(f"target N={TARGET[0]}, V={TARGET[1]}, D={TARGET[2]}: fused/naive memory "
              f"{fused['peak_mem_bytes'] / naive['peak_mem_bytes']:.3f} (≤ 0.25), time "
              f"{fused['time_s'] / naive['time_s']:.2f} (≤ 1.1), fused at {fused['flops_frac']:.2f} "
              f"of bare-matmul FLOP/s (≥ 0.80)")
    if opts['json_out']:
        with open(opts['json_out'], 'w') as f:
            json.dump(dict(torch=torch.__version__, device=device, date=time.strftime('%Y-%m-%d %H:%M'),
                           rows=rows), f, indent=1)
        print(f"wrote {len(rows)} rows to {opts['json_out']}")


if __name__ == '__main__':
    options.one_line_errors()
    if len(sys.argv) == 2 and sys.argv[1].startswith('--worker='):
        sys.path.insert(0, HERE)
        print('RESULT ' + json.dumps(worker(json.loads(sys.argv[1][len('--worker='):]))), flush=True)
    else:
        main(sys.argv[1:])
