# Experiment 7 on text (ours): `python reproduce.py --preset=text7 --text=input.txt`. remedies.py's heads
# against their controls and twins on a text's cl100k tokens, compacted (V from the text: 12,111 for Tiny
# Shakespeare, V/D ≈ 760), sized to about 30 minutes on 2 CPU cores: 500 steps × 16 sequences of 32 tokens
# (256k tokens, about one epoch of Tiny Shakespeare's train split), 3 fresh seeds. mos and mos1 are left out:
# on SpamLang both end far below linear, and at this V each of their steps costs ~4× the others'.
# Any --key=value wins.
experiments = '7'
e7_data = 'text'
e7_heads = ('linear,whiten,overparam,wide:{2D}/random,blocks,blocks_sg,blocksum,wide:{4D}/random,mlp,prehead,'
            'sigsoftmax')
e7_n_embd = 16
e7_batch_size = 16
e7_max_iters = 500
e7_eval_interval = 50
e7_eval_iters = 8          # 128 validation windows, the same at every evaluation
e7_seeds = 3
e7_fit_steps = 500
