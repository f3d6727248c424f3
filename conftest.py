"""pytest setup shared by every test file: under pytest-xdist (`-n N`) each worker process
takes its share of the cores, since workers that each use every core run many times slower."""
import os

import torch

if 'PYTEST_XDIST_WORKER_COUNT' in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))
