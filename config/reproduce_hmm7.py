# Experiment 7 on hmm.py's language (ours): `python reproduce.py --preset=hmm7`. S = 32 hidden states at
# V = 1,024, so log p has rank ≤ 33 and no rank-8 linear head expresses the floor; the SpamLang part's sizes,
# grids and seeds. mos and mos1 are left out to keep the part within about 30 minutes on 2 CPU cores: mos
# costs ≈ 5× linear's step time here, and in a first run on this language (5 seeds) neither mos − mos1 nor
# mos − linear was resolved. Any --key=value wins.
experiments = '7'
e7_data = 'hmm:32'
e7_heads = ('linear,whiten,overparam,wide:{2D}/random,blocks,blocks_sg,blocksum,wide:{4D}/random,mlp,prehead,'
            'sigsoftmax')
