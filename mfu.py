"""
A GPU's peak FLOP/s, for the model FLOPs utilization (MFU) that train.py and bench.py report on CUDA.
"""
import re

# dense bf16 tensor-core peaks from the vendors' data sheets
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'H800': 989e12, 'GH200': 989e12, 'B200': 2250e12,
              'A100': 312e12, 'A800': 312e12, 'L40S': 362e12, 'L40': 181e12, 'L4': 121e12, 'A10G': 70e12,
              'A10': 125e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12}


def peak_flops(device_name):
    """(FLOP/s, the table key it matched) for a GPU name: the longest key that is a whole word of the name, so
    'A100' never reads as 'A10' nor 'L40S' as 'L40'. (None, None) for an unknown GPU: set --peak_flops."""
    hits = [k for k in PEAK_FLOPS if re.search(rf'(?<![\w]){re.escape(k)}(?![\w])', device_name)]
    if not hits:
        return None, None
    k = max(hits, key=len)
    return PEAK_FLOPS[k], k
