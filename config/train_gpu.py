# The gpu preset of train.py (ours): `python train.py config/train_gpu.py --head=wide` on one CUDA GPU (it
# applies on any device; train.py's own defaults are the CPU sizes). Any --key=value on the command line wins.
# SpamLang at V = 16,384 with a 4-layer D = 256 model; 5,000 steps × 128 sequences = 39 exposures per symbol.
vocab_size = 16384
n_layer = 4
n_head = 4
n_embd = 256
block_size = 64
batch_size = 128
max_iters = 5000
eval_interval = 1000
