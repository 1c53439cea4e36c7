"""``python -m platonic_fast``: the command line (as ``platonic-fast``).

Under torchrun (``WORLD_SIZE`` > 1), ``measure`` runs sharded over the ranks:
``torchrun --nproc-per-node P -m platonic_fast measure ...`` (see
:mod:`platonic_fast.distributed._sweep`).
"""

import os
import sys

from .cli import main


def run(argv: list[str]) -> int:
    """The CLI; under torchrun, ``measure`` sharded over the ranks (the others refused)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return main(argv)
    if not argv or argv[0] != "measure":
        print("platonic-fast: under torchrun only `measure` runs (sharded over the ranks); run the other "
              "commands in one process", file=sys.stderr)
        return 2
    from .distributed import _sweep

    shard = _sweep.start(argv)
    try:
        with _sweep.quiet_unless_writer(shard):
            return main(_sweep.local_device_argv(argv), shard=shard)
    finally:
        _sweep.stop()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
