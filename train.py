"""
Train a GPT whose LM head is chosen by name, on SpamLang (default), a language with a known floor, or text.

    python train.py --head=wide                      # SpamLang, full-rank head: learns it (2 CPU cores)
    python train.py --head=narrow                    # the same model with a rank-4 head: fails
    python train.py --head=wide --data=input.txt     # text, tokenized once with cl100k_base (V = 100,277)
    python train.py --head=wide --data=hmm           # hmm.py's language: the eval line shows its floor
    python train.py --head=wide --init_from=resume   # continue out/spamlang_wide/ckpt.pt
    python train.py config/train_gpu.py --head=wide  # options from a file; the command line wins
    torchrun --standalone --nproc_per_node=2 train.py --head=wide

Every default below can be overridden with --key=value or a config file; the defaults are what runs, on any
device (the GPU sizes: `python train.py config/train_gpu.py`). SIGINT/SIGTERM: the current step finishes, a
checkpoint is saved, and the process exits with status 75 (EX_TEMPFAIL: requeue it with --init_from=resume).
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import meter
import options
import runtime
import spamlang
from model import GPT, GPTConfig, MODEL_KEYS, check_config, default_loss
from options import ConfigError, TrainingError

# -----------------------------------------------------------------------------
# defaults: the CPU preset, `python train.py --head=wide` learns SpamLang in a minute on 2 cores
# I/O
out_dir = 'out/{dataset}_{head}'  # {key}: a config value; {dataset}: spamlang, hmm[S] or the data file's name
init_from = 'scratch'      # scratch | resume (from out_dir/ckpt.pt)
overwrite = False          # let a scratch run replace a run in out_dir (its ckpt.pt, log.jsonl)
allow_changes = False      # let a resumed run change its data or training knobs (never the model's shape)
resume_fallback = False    # resume from out_dir/prev_ckpt.pt when ckpt.pt is corrupt
save_checkpoints = True    # False: never write ckpt.pt (sweeps that never resume; log.jsonl is kept)
keep_checkpoints = False   # also keep each one as ckpt_<iter>.pt (cooldown branches of a wsd run start there)
log_interval = 100         # steps between training-loss lines
eval_interval = 500        # steps between evaluations (and checkpoints)
eval_iters = 10            # held-out batches per evaluation (text: 0 = every window of the validation split)
meter_every_step = False   # the live meter (grad_destroyed, grad_cosine) on every step, not only at evals
# data
data = 'spamlang'          # spamlang, hmm[:S] (hmm.py), a .txt file (tokenized once, cached) or a token file
encoding = 'cl100k_base'   # tiktoken encoding for .txt data
compact_vocab = False      # .txt data: only the token ids that occur (V = their count; decoded through a map)
vocab_size = 1024          # SpamLang and hmm; text takes V from its tokenizer
batch_size = 32            # sequences per micro-batch
block_size = 32            # sequence length T
gradient_accumulation_steps = None  # micro-batches per step over all processes; None = one per process
# model
head = 'linear'            # the LM head: linear, tied, narrow, wide; beyond the paper: remedies.HEADS
head_rank = None           # r of a factorized head; None: its default (wide n_embd, narrow n_embd // 16)
head_basis = 'trained'     # factorized heads' A: trained | random (fixed) | select (fixed: r = D is linear)
n_layer = 2
n_head = 4
n_embd = 64
dropout = 0.0
bias = False
# AdamW, linear warmup, then cosine decay to min_lr or warmup–stable–decay (wsd)
learning_rate = 1e-3       # the factorized wide head stalled near 95% at 3e-3, reached 100% at 1e-3 (README)
head_lr_mult = 1.0         # the head's lr = the schedule's × this (tied: the shared embedding's)
schedule = 'cosine'        # cosine | wsd: constant, then linear to min_lr over the last cooldown_iters steps
cooldown_iters = 0
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0            # 0 disables
warmup_iters = 100
min_lr = 1e-4
# system
device = 'auto'            # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
dtype = 'auto'             # auto (bfloat16 autocast on CUDA, else float32) | float32 | bfloat16 | float16
compile = None             # torch.compile the training step; None = on for CUDA, off elsewhere
loss = 'auto'              # naive (N×V logits, the reference) | fused (no logits) | auto: model.default_loss
peak_flops = 0.0           # the GPU's peak FLOP/s for MFU; 0 = from its name (mfu.PEAK_FLOPS)
seed = 1337
# -----------------------------------------------------------------------------
STOP_EVERY = 10  # under torchrun, steps between the processes' exchanges of the stop flag (a read each)
MAX_PENDING = 1000  # micro-steps whose losses wait for check_finite at most, whatever log_interval is
options.one_line_errors()
types = dict(head_rank=int, compile=bool, gradient_accumulation_steps=int)  # options whose default is None
choices = dict(init_from=('scratch', 'resume'), dtype=('auto', *runtime.DTYPES),
               loss=('auto', 'naive', 'fused'), schedule=('cosine', 'wsd'))
config, given = options.parse_args(sys.argv[1:], options.defaults_of(globals()), __file__, types, choices)
globals().update(config)
# processes: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; DistributedDataParallel, nccl on CUDA, gloo on CPU
ddp = int(os.environ.get('RANK', -1)) != -1
rank, local_rank, world = 0, 0, 1
if ddp:
    rank, local_rank, world = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
device = str(runtime.pick_device(device, local_rank=local_rank if ddp else None))  # CUDA: with its index
device_type = device.split(':')[0]
dtype = ('bfloat16' if device_type == 'cuda' else 'float32') if dtype == 'auto' else dtype
compile = device_type == 'cuda' if compile is None else compile
options.positive(globals(), 'batch_size', 'block_size', 'max_iters', 'log_interval', 'eval_interval',
                 'learning_rate', 'head_lr_mult', 'gradient_accumulation_steps')
options.positive(globals(), 'eval_iters', 'min_lr', 'cooldown_iters', 'warmup_iters', 'weight_decay',
                 'peak_flops', zero_ok=True)
if not (0 <= dropout < 1 and 0 <= beta1 < 1 and 0 <= beta2 < 1):
    raise ConfigError(f"need 0 ≤ --dropout, --beta1, --beta2 < 1: got {dropout}, {beta1}, {beta2}")
if data == 'spamlang' and block_size < 2:
    raise ConfigError("SpamLang needs --block_size ≥ 2: position 0 is a guess, the later ones are its test")
synthetic = data == 'spamlang' or data.split(':')[0] == 'hmm'  # drawn on the fly: no splits, no windows
data_name = data.replace(':', '') if synthetic else os.path.splitext(os.path.basename(data))[0].split('.')[0]
try:
    out_dir = out_dir.format(**{k: globals()[k] for k in config}, dataset=data_name)
except (KeyError, IndexError, ValueError, AttributeError) as e:
    raise ConfigError(f"--out_dir={out_dir!r}: bad {{field}} ({e}); fields are config keys such as {{head}}")

# the checkpoint, the data and the model are checked before any file is written
ckpt_path, log_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'log.jsonl')
ckpt = None
if init_from == 'resume':
    import checkpoint  # atomic, verified checkpoints and exact resume: a reader of the loop can skip it
    ckpt = checkpoint.load_checkpoint(ckpt_path, resume_fallback, 'start with --init_from=scratch, or point '
                                      '--out_dir at a run')
    now = {k: globals()[k] for k in config}
    globals().update(checkpoint.resume_config(now, given, ckpt['config'], allow_changes))
elif (os.path.exists(ckpt_path) or os.path.exists(log_path)) and not overwrite:
    raise ConfigError(f"{out_dir} already holds a run: continue it with --init_from=resume, replace it with "
                      f"--overwrite=True, or choose another --out_dir")
if data == 'spamlang':
    corpus = dict(kind='spamlang', vocab_size=vocab_size, fingerprint=f"spamlang-V{vocab_size}")
else:  # data as resumed: a checkpoint may name another source
    import textdata  # the optional sources, text files and hmm.py's language, and their batches live there
    corpus = textdata.load_data({k: globals()[k] for k in config})
    if corpus['kind'] == 'text':
        vocab_size, encoding = textdata.check_vocab(corpus, given, vocab_size, encoding)  # V: the tokenizer's
if ckpt is not None:  # a resumed run keeps its data
    checkpoint.check_data(corpus, vocab_size, encoding, allow_changes, ckpt['config'])
if eval_iters == 0 and corpus['kind'] != 'text':  # the source as resumed
    raise ConfigError("--eval_iters=0 (every window of the validation split) is for text data: give a count")
data_fingerprint, code_version = corpus['fingerprint'], runtime.code_version()
if ckpt is not None and ckpt['iter_num'] >= max_iters:
    print(f"{ckpt_path} is already at max_iters = {max_iters}: nothing to do; to train further, resume "
          f"with a larger --max_iters and --allow_changes=True")
    sys.exit(0)
loss = default_loss(device_type, vocab_size, compile) if loss == 'auto' else loss
gradient_accumulation_steps = gradient_accumulation_steps or world
if gradient_accumulation_steps % world:
    raise ConfigError(f"--gradient_accumulation_steps={gradient_accumulation_steps} (micro-batches per step, "
                      f"over all processes) must be a multiple of the {world} processes")
gptconf = GPTConfig(**{k: globals()[k] for k in MODEL_KEYS})
check_config(gptconf)
config = {k: globals()[k] for k in (*config, 'data_fingerprint', 'code_version')}  # as saved and logged

if device_type == 'cuda':
    torch.cuda.set_device(device)  # so memory statistics and the CUDA RNG refer to this GPU
if ddp:
    torch.distributed.init_process_group('nccl' if device_type == 'cuda' else 'gloo')
master = rank == 0  # only rank 0 prints, logs, evaluates and saves
accum = gradient_accumulation_steps // world  # micro-steps per process
tokens_per_iter = batch_size * block_size * gradient_accumulation_steps  # over all processes
try:
    os.makedirs(out_dir or '.', exist_ok=True)
except OSError as e:
    raise ConfigError(f"--out_dir={out_dir} cannot be made ({e.strerror}): choose another --out_dir")

# model, optimizer, data streams (training and evaluation have separate generators, so evaluating never shifts
# the training data; all are on the CPU, so a checkpoint resumes on any device)
torch.manual_seed(seed)
model = GPT(gptconf).to(device)
model.fused = loss == 'fused'
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, head_lr_mult)
train_gen = spamlang.make_generator(seed)
iter_num, saved_iter = 0, None
if ckpt is not None:
    model.load_state_dict(ckpt['model'])
    optimizer.load_state_dict(ckpt['optimizer'])
    iter_num = saved_iter = ckpt['iter_num']
    checkpoint.set_rng_state(ckpt['rng'], train_gen, device_type)
    if master:
        print(f"resuming {ckpt_path} at iter {iter_num}")
if rank > 0:  # dropout masks differ between processes; the model init above is the same on all of them
    torch.manual_seed(seed + rank + world * iter_num)
step_model = model
if ddp:  # wrap, then compile: the compiler then sees DDP's bucket boundaries
    device_ids = [local_rank] if device_type == 'cuda' else None
    step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
step_model = torch.compile(step_model) if compile else step_model  # the eager `model` evaluates and saves
ctx = runtime.autocast(device_type, dtype)
scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')
flops_per_iter = model.flops_per_token() * tokens_per_iter / world  # per GPU, like the peak it is divided by
gpu_name, peak = None, peak_flops
if device_type == 'cuda':
    import mfu  # the GPUs' peak FLOP/s
    gpu_name = torch.cuda.get_device_name(device)
    peak = peak or mfu.peak_flops(gpu_name)[0]
if master:
    files = options.config_files(sys.argv[1:])
    print(f"{'options from ' + ', '.join(files) + ': ' if files else ''}{head} head, V = {vocab_size:,}, "
          f"D = {n_embd}, r = {getattr(model.lm_head, 'rank', n_embd)}, {model.get_num_params():,} params, "
          f"data {data}, {tokens_per_iter:,} tokens per step ({batch_size} × {block_size} × "
          f"{gradient_accumulation_steps}), device {device} ({dtype}, {loss} loss"
          f"{', compiled' if compile else ''}{f', {world} processes' if ddp else ''})")
    if device_type == 'cuda' and not peak:
        print(f"MFU not reported: {gpu_name} is not in mfu.PEAK_FLOPS; set --peak_flops")
    log_file = checkpoint.open_log(log_path, iter_num) if ckpt is not None else open(log_path, 'w')
    if ckpt is None:
        log_file.write(json.dumps({'type': 'config', **config}) + '\n')


def log(kind, record, line=None):
    if line:
        print(line, flush=True)
    log_file.write(json.dumps({'type': kind, 'iter': iter_num, **record}) + '\n')
    log_file.flush()


def get_lr(it):
    if it < warmup_iters:  # linear warmup
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= max_iters:
        return min_lr
    if schedule == 'wsd':  # warmup–stable–decay: a cooldown can branch from any step of the stable phase
        decay = max(0.0, 1 - (max_iters - it) / max(1, cooldown_iters))  # 0 until the last cooldown_iters
        return learning_rate - decay * (learning_rate - min_lr)
    ratio = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def get_batch(split, gen):
    """x, y: (B, T) on the CPU, drawn by the CPU generator `gen` (a checkpoint then resumes on any device)."""
    if corpus['kind'] == 'spamlang':
        return spamlang.get_batch(batch_size, block_size, vocab_size, gen)
    return textdata.get_batch(corpus, split, batch_size, block_size, gen, 'cpu')


@torch.no_grad()
def evaluate():
    """Loss on fixed held-out data (SpamLang: loss and accuracy on positions ≥ 1 and at position 0; text:
    fixed non-overlapping windows of the validation split) and the gradient-bottleneck meter on the first
    batch."""
    model.eval()
    if corpus['kind'] != 'text':
        gen = spamlang.make_generator(seed + 1)  # the same held-out batches at every evaluation
        batches = [get_batch('val', gen) for _ in range(eval_iters)]
    else:
        xs, ys = textdata.val_windows(corpus, block_size, eval_iters * batch_size)
        batches = list(zip(xs.split(batch_size), ys.split(batch_size)))
    out, W, first = [], model.lm_head.effective_weight(), None
    for x, y in batches:
        x, y = runtime.to_device(x, device), runtime.to_device(y, device)
        with ctx:
            logits, _ = model(x)  # (B, T, V): accuracy and the meter need the logits
        if corpus['kind'] == 'spamlang':
            out.append(spamlang.metrics(logits, y))
        else:
            out.append({'loss': F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1)).item()})
        out[-1]['n'] = y.numel()
        first = first or (logits, y)
    m = {k: sum(o[k] * o['n'] for o in out) / sum(o['n'] for o in out) for k in out[0] if k != 'n'}
    if math.isfinite(m['loss']):  # the meter on the first batch; SpamLang: positions ≥ 1, position 0 apart
        logits, y = first
        if corpus['kind'] == 'spamlang':
            m['grad_destroyed_pos0'] = meter.live_meter(logits[:, :1], y[:, :1], W)['grad_destroyed']
            logits, y = logits[:, 1:], y[:, 1:]
        m.update(meter.live_meter(logits, y, W))
    model.train()
    return m


def save():
    global saved_iter
    if not save_checkpoints:
        return
    if not all(torch.isfinite(p).all() for p in model.parameters()):  # never save a diverged model
        raise diverged("the weights are not finite", "the last step diverged")
    import checkpoint  # atomic and verified: a temp file, fsynced, renamed into place
    rng = checkpoint.get_rng_state(train_gen, device_type)
    rng['train_gen'] = unread_state  # the stream from the fetched batch that no step has used yet
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), config=config, iter_num=iter_num,
                 rng=rng, id_map=corpus.get('id_map'))
    keep = os.path.join(out_dir, f'ckpt_{iter_num}.pt') if keep_checkpoints else None
    checkpoint.save_or_stop(ckpt_path, state, saved_iter, keep)
    saved_iter = iter_num


def diverged(what, where, at=None):
    fix = "no checkpoint was saved: lower --learning_rate"
    if os.path.exists(ckpt_path):
        kept = f"{ckpt_path} (iter {saved_iter})" if master else ckpt_path  # rank 0 saves: it knows the iter
        fix = f"the last good checkpoint, {kept}, is untouched: lower --learning_rate and resume"
    return TrainingError(f"{what} at iter {iter_num if at is None else at}: {where}; {fix}")


def check_finite():
    """The non-finite guard, read here rather than at every step (a read waits for the device): stop if a
    loss since the last check was not finite, saving its batch; called at log steps, evaluations and saves."""
    if not pending:
        return
    losses = torch.stack([lossv for lossv, _, _ in pending]).float().cpu()  # one device sync
    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
    if bad:
        _, (bad_x, bad_y), it = pending[bad[0]]
        torch.save(dict(x=bad_x, y=bad_y), os.path.join(out_dir, 'nonfinite_batch.pt'))
        raise diverged(f"loss is {losses[bad[0]].item()}", f"the batch is in {out_dir}/nonfinite_batch.pt",
                       at=it + 1)
    pending.clear()


def next_batch():
    """This process's next micro-batch, on the CPU and on the device. Micro-batch k of a step goes to process
    k % world: every process draws them all from the same stream and keeps its own, so the data do not depend
    on the number of processes."""
    for k in range(world):
        batch = get_batch('train', train_gen)
        if k == rank:
            mine = batch
    return mine, tuple(runtime.to_device(t, device) for t in mine)


def eval_and_save():
    check_finite()
    m = evaluate()
    if not math.isfinite(m['loss']):
        raise diverged(f"loss is {m['loss']}", "on the held-out batches")
    meter_keys = ('grad_destroyed', 'grad_cosine', 'visible_over_chance', 'grad_c_H', 'grad_destroyed_pos0')
    rec = {'tokens': iter_num * tokens_per_iter, 'val_loss': m['loss']}
    rec.update({k: m[k] for k in meter_keys if k in m})
    line = f"eval {iter_num}: val loss {m['loss']:.4f}"
    if corpus['kind'] == 'spamlang':  # positions ≥ 1 are determined; position 0 is a uniform guess
        sequences = iter_num * batch_size * gradient_accumulation_steps
        rec.update(val_acc=m['acc'], val_loss_pos0=m['loss_pos0'], val_acc_pos0=m['acc_pos0'],
                   exposures_per_symbol=spamlang.exposures_per_symbol(sequences, vocab_size))
        line = (f"eval {iter_num}: val loss {m['loss']:.4f}, acc {100 * m['acc']:.2f}% (positions ≥ 1; "
                f"position 0 loss {m['loss_pos0']:.2f}), {rec['exposures_per_symbol']:.1f} exposures/symbol")
    if corpus['kind'] == 'hmm':  # the least loss any model can reach on these windows
        rec['floor'] = corpus['language'].floor(block_size)
        line += f" (floor {rec['floor']:.4f})"
    log('eval', rec, line + f", grad destroyed {m['grad_destroyed']:.4f} (cos {m['grad_cosine']:.4f}, "
                           f"{m['visible_over_chance']:.2f}× chance)")
    save()


# -----------------------------------------------------------------------------
# the training loop
preemption = runtime.Preemption()
pending = []  # (loss on the device, CPU batch, iter) of each micro-step since the last check_finite
unread_state = train_gen.get_state()  # the stream before the batch fetched ahead: what a checkpoint keeps
cpu_batch, (x, y) = next_batch()
if iter_num == 0 and master:
    eval_and_save()
t0, timed, first_step = time.time(), 0, True
while iter_num < max_iters:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr * group['lr_mult']
    for micro in range(accum):
        if ddp:  # all-reduce the gradients only on the last micro-step
            step_model.require_backward_grad_sync = micro == accum - 1
        with ctx:
            _, micro_loss = step_model(x, y)
        pending.append((micro_loss.detach(), cpu_batch, iter_num))
        unread_state = train_gen.get_state()
        x_last, y_last = x, y
        cpu_batch, (x, y) = next_batch()  # fetched while the device runs the forward pass
        scaler.scale(micro_loss / accum).backward()  # DDP averages the processes: the mean of all micro-steps
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    metered = None
    if meter_every_step:  # before the step changes W: its own forward pass on a few of this step's sequences
        k = meter.METER_SEQUENCES
        with ctx:
            metered = meter.model_meter(model, x_last[:k], y_last[:k])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num, timed = iter_num + 1, timed + 1

    if first_step and iter_num % log_interval:  # it paid for compilation and allocation: not charged
        if device_type == 'cuda':
            torch.cuda.synchronize(device)
        t0, timed, first_step = time.time(), 0, False
    if iter_num % log_interval == 0 or len(pending) >= MAX_PENDING:
        check_finite()  # every process: each checks its own losses
    if master and iter_num % log_interval == 0:
        lossf = micro_loss.item()  # syncs the device, so the timing is real
        dt = (time.time() - t0) / timed
        rec = {'loss': lossf, 'lr': lr, 'dt_ms': 1000 * dt, 'tok_per_s': tokens_per_iter / dt}
        line = (f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {1000 * dt:.1f} ms, "
                f"{rec['tok_per_s']:,.0f} tok/s")
        if device_type == 'cuda':
            rec['peak_mem_gb'] = torch.cuda.max_memory_allocated(device) / 1e9  # of training steps only
            torch.cuda.reset_peak_memory_stats(device)
            line += f", mem {rec['peak_mem_gb']:.2f} GB"
            if peak:
                rec['mfu'] = flops_per_iter / dt / peak
                line += f", mfu {100 * rec['mfu']:.1f}%"
        if metered:
            rec.update(metered)
            line += f", grad destroyed {metered['grad_destroyed']:.4f}"
        log('train', rec, line)
        t0, timed = time.time(), 0
    elif metered and master:  # --meter_every_step: each step's r and c go to log.jsonl, not to the screen
        log('meter', metered)
    if master and (iter_num % eval_interval == 0 or iter_num == max_iters):
        eval_and_save()
        if device_type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)  # the eval's full logits are not a training step's
        t0, timed = time.time(), 0  # evaluating and saving are not charged to the next interval
    stop = preemption.requested
    if ddp and iter_num % STOP_EVERY == 0:  # a signal may reach the processes at different steps: every
        flag = torch.tensor([float(stop)], device=device)  # STOP_EVERY steps they agree, and stop together
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
    elif ddp:
        stop = False
    if stop and iter_num < max_iters:
        if master and save_checkpoints:
            check_finite()
            save()
            print(f"saved {ckpt_path} at iter {iter_num}; resume with --init_from=resume --out_dir={out_dir}")
        break
if master:
    log_file.close()
if ddp:  # every process arrives before any tears its connections down (gloo can abort otherwise)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
if preemption.requested and iter_num < max_iters:
    if not save_checkpoints:  # a requeued run would have nothing to resume from
        sys.exit(f"stopped at iter {iter_num}, nothing saved (--save_checkpoints=False)")
    sys.exit(runtime.REQUEUE_EXIT)
