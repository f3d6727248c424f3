# The gpu preset of reproduce.py (ours): `python reproduce.py --preset=gpu --text=input.txt` on one CUDA GPU.
# Every experiment is sized by its control: exposures per symbol ≥ the CPU preset's (25 in experiment 1,
# 32 in 2) and about 3 epochs of Tiny Shakespeare in 3. `--dry_run` prints its estimate (estimate.py); not
# yet run on a GPU. Any --key=value wins.
device = 'cuda'
jobs = 8         # runs at once on the one GPU: models this small leave it mostly idle (estimate.py)
compile = False  # ~150 short runs, one process each: compiling every one would cost more than it saves
# experiment 1: V = 32,768, D = 256, 4 layers; 3,200 steps × 256 sequences = 25 exposures per symbol
e1_heads = 'narrow:4,narrow:16,narrow:64,narrow:128,wide,linear,tied'
e1_lrs = '3e-4,1e-3,3e-3'
e1_vocab_size = 32768
e1_n_embd = 256
e1_n_layer = 4
e1_block_size = 32
e1_batch_size = 256
e1_max_iters = 3200
e1_eval_interval = 160
e1_eval_iters = 8
# experiment 2: a fixed batch of 256 sequences, 32 exposures per symbol (steps ∝ V)
e2_n_embds = '64,256'
e2_vocab_sizes = '4096,16384,65536'
e2_lrs = '3e-4,1e-3,3e-3,1e-2'
e2_batch_size = 256
e2_eval_sequences = 8192
# experiment 3: D = 256, 4 layers, T = 128, fixed-basis heads,
# 480 steps × 16 windows ≈ 3.6 epochs of Tiny Shakespeare's train split; stable phase 384 = 4 budgets × 96
e3_heads = 'narrow:2/select,narrow:8/select,narrow:32/select,narrow:128/select,linear'
e3_lrs = '3e-4,1e-3,3e-3'
e3_n_embd = 256
e3_n_layer = 4
e3_block_size = 128
e3_max_iters = 480
# experiment 6: the HMM language at V = 16,384 with S = 64 states (log p(y | x) of rank ≤ 65): r = 128 can
# express its floor, r = 8 cannot
e6_heads = 'narrow:8/select,narrow:128/select,linear'
e6_lrs = '3e-4,1e-3,3e-3'
e6_vocab_size = 16384
e6_states = 64
# experiment 7 (`--preset=gpu --experiments=7`): V = 16,384, D = 128, 4 layers; the fixed-basis controls at
# r = 2D and 4D
e7_heads = ('linear,whiten,overparam,wide:256/random,blocks,blocks_sg,blocksum,wide:512/random,mlp,prehead,'
            'mos,mos1,sigsoftmax')
e7_lrs = '3e-4,1e-3,3e-3,1e-2'
e7_vocab_size = 16384
e7_n_embd = 128
e7_n_layer = 4
e7_batch_size = 64
e7_max_iters = 3200         # 12.5 exposures per symbol; not yet run: its stage gate will tell whether the
                            # linear head lands in 30–80% at this size
e7_eval_interval = 320
