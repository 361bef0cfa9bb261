"""The whole suite: the test process computes on one thread, as every rank does (docs/threads.md). Its workers
(pytest-xdist, one per core) and the ranks their tests start share the machine's cores, and threads spinning for a
descheduled partner would slow every test beside them."""

import torch

torch.set_num_threads(1)
