"""`python -m dist_hyena.train ...`: see :mod:`dist_hyena.train.cli`."""

import sys

from dist_hyena.train.cli import main

sys.exit(main())
