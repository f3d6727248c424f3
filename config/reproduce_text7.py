# Experiment 7 on text (ours): `python reproduce.py --preset=text7 --text=input.txt`. The candidate that
# widened the channel on SpamLang (blocks) against its stop-gradient twin, its controls (the K-block sum, a
# rank-2D fixed-basis head) and the linear head, on a text's cl100k tokens, compacted (V from the text:
# 12,111 for Tiny Shakespeare, V/D ≈ 760). Sized to pass the stage gate (the linear head within 0.3 nats of
# the bigram loss; at 500 steps it ended 0.5 above) in about 30 minutes on 2 CPU cores: 800 steps × 16
# sequences of 32 tokens (410k tokens, about 1.5 epochs of Tiny Shakespeare's train split), 3 fresh seeds.
# Any --key=value wins.
experiments = '7'
e7_data = 'text'
e7_heads = 'linear,wide:{2D}/random,blocks,blocks_sg,blocksum'
e7_lrs = '3e-3,1e-2,3e-2'
e7_n_embd = 16
e7_batch_size = 16
e7_max_iters = 800
e7_eval_interval = 80
e7_eval_iters = 8          # 128 validation windows, the same at every evaluation
e7_seeds = 3
e7_fit_steps = 500
