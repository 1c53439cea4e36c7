"""Sharded metrics under torch.distributed: every rank holds a contiguous block of samples.

With a process group initialised (``torch.distributed.init_process_group``: gloo on CPUs, NCCL
on GPUs, launched by ``torchrun``), rank r passes rows [s_r, s_{r+1}) of A and B (rank order is
sample order; shards may differ in size, be smaller than k, or be empty). Every function is
collective (all ranks of the group call it, in the same order) and returns on every rank what
the one-process function returns on the concatenated rows (docs/metrics.md#sharded): neighbour lists with
global indices and the same tie rule, scores equal within 1e-12 where the computation is in
float64 (float64 inputs, or problems small enough that one process uses float64), within the
GEMMs' float32 rounding otherwise.

>>> import torch.distributed as dist, platonic_fast.distributed as pfd
>>> dist.init_process_group("gloo")                         # under torchrun
>>> lo, hi = rank * N // world, (rank + 1) * N // world     # this rank's samples
>>> vals, idx = pfd.knn(A[lo:hi], k=10)                       # this rank's rows, global indices
>>> pfd.measure("cknna", A[lo:hi], B[lo:hi], topk=10)          # the same float on every rank
>>> res = pfd.align(X[lo:hi], Y[lo:hi], "mutual_knn", topk=10)  # n_r x L x D layer search

Every function takes ``group=`` (default: the default group; without an initialised one, the
calls run as one process) and ``timeout=`` (seconds a collective may wait; default: the
group's own timeout). A rank that raises makes every rank raise (:class:`ShardError` on the
others) instead of leaving them waiting.
"""

from ._align import align, calibrate, remove_outliers
from ._comm import Layout, ShardError
from ._knn import knn
from ._metrics import (
    ShardedPrepared,
    cka,
    cknna,
    cycle_knn,
    edit_distance_knn,
    lcs_knn,
    measure,
    mutual_knn,
    prepare,
    score,
    svcca,
    unbiased_cka,
)
from ._scorer import Alignment


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows [lo, hi) of an even split of n samples over ``world`` ranks (sizes differ by at most 1)."""
    return rank * n // world, (rank + 1) * n // world


__all__ = ["Alignment", "Layout", "ShardError", "ShardedPrepared", "align", "calibrate", "cka", "cknna", "cycle_knn",
           "edit_distance_knn", "knn", "lcs_knn", "measure", "mutual_knn", "prepare", "remove_outliers", "score",
           "shard_bounds", "svcca", "unbiased_cka"]
