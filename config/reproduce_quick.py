# The quick preset of reproduce.py (ours; `--quick`): experiments 1, 3 and 4 at small sizes in ≈ 3 min on
# 2 CPU cores. A smoke test of the whole pipeline: experiment 3 stays near the unigram
# stage here, so its stage gate fails and it concludes nothing; the CPU preset (the defaults of reproduce.py)
# is the real run.
experiments = '1,3,4'
seeds = 2
e1_heads = 'narrow:2/select,narrow:8/select,narrow:8,linear'
e1_lrs = '3e-3,1e-2'
e1_vocab_size = 256
e1_n_embd = 32
e1_block_size = 8
e1_max_iters = 300
e1_eval_interval = 25
e3_heads = 'narrow:2/select,linear'
e3_lrs = '1e-2'
e3_n_embd = 32
e3_block_size = 32
e3_max_iters = 160         # stable phase 128 steps, budgets at 64 and 128 (+ cooldowns 16 and 32)
e3_budgets = 2
e3_schedule_evals = 8
e3_fit_max_epochs = 0.5    # a smoke test: the fits stop after half an epoch, unconverged
e3_ceiling_lrs = '3e-2'    # one ceiling fit, not a choice of two
e3_spectrum_tokens = 1024
# experiment 7 (`python reproduce.py --quick --experiments=7`): a smoke test of the comparison, 62 s on 2
# CPU cores; its stage gate fails at this size (the linear head learns SpamLang), so it concludes nothing
e7_heads = 'linear,blocks,blocks_sg,mlp'
e7_lrs = '1e-2'
e7_head_lr_mults = '1'    # no head lr sweep
e7_seeds = 2
e7_other_seeds = 2
e7_vocab_size = 512
e7_max_iters = 400
e7_eval_interval = 100
e7_fit_steps = 400
