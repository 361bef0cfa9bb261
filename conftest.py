"""Test-session defaults. One math thread per process: the suite runs several ranks at a time on
a 2-core machine, and OpenMP's spinning threads, oversubscribed, slow small ops twenty-fold.
Spawned ranks and launched scripts inherit the setting through the environment."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
