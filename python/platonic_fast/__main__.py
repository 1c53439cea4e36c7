"""``python -m platonic_fast``: the command line (as ``platonic-fast``).

Under torchrun (``WORLD_SIZE`` > 1), ``measure`` runs sharded over the ranks:
``torchrun --nproc-per-node P -m platonic_fast measure ...`` (see
:mod:`platonic_fast.distributed._sweep`).
"""

import sys

from .distributed._sweep import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
