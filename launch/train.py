"""Train SE(3)-Hyena: `deepspeed launch/train.py [--config NAME|PATH] [--resume] [section.key=value ...]`.

The script form of `python -m dist_hyena.train` (same arguments, :mod:`dist_hyena.train.cli`), for launchers
that start a script. Runs under deepspeed, torchrun, accelerate launch, mpirun or srun alike. With no
arguments it trains dist_hyena/configs/default.yaml (a small n-body model; data generated on first use).
"""

import sys

from dist_hyena.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
