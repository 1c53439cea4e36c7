"""Row sources: the one way the engine reads the rows of an N x D matrix, wherever they live.

The kNN pass (:mod:`platonic_fast.ops.knn`) and the accumulations built on it take a
:class:`RowSource` and never ask where the rows are. A source says which rows this process owns
(its queries: ``[start, start + n_local)`` of ``n``), hands back blocks of them, fetches any
rows by global index, and streams every row of the matrix as key blocks. Where the rows live is
the source's business, and so is the strategy that follows from it:

- :class:`TensorRows`: a tensor in memory (the process owns every row; one key block);
- :class:`FileRows`: a prepared layer of a memory-mapped feature file, read a block at a time
  (query panels of ``panel_bytes`` held while the key blocks stream by; pages handed back by the
  file reader after every read);
- :class:`ShardRows`: the rows this rank owns of a row-sharded matrix; other ranks' rows arrive
  by block exchange through the communicator (:mod:`platonic_fast.distributed._comm`).

Methods marked *collective* must be called by every rank of a sharded source at the same point
(each with its own arguments); on the other sources they are plain calls. Adding a source (a
second file format, a GPU-resident shard) is one class implementing the methods below.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ._checks import max_abs
from .distributed._comm import LOCAL


class RowSource:
    """The protocol (a base class with the shared helpers; subclasses implement the methods).

    Attributes
    ----------
    n : int
        Rows of the whole matrix (every rank's).
    width : int
        D, the row length.
    dtype : torch.dtype
        The dtype rows come back in (the pass computes in float64 when any source is float64,
        else float32).
    device : torch.device
    start, n_local : int
        This process owns global rows ``[start, start + n_local)``: the queries of a self-form
        kNN and the rows its lists are for. ``start = 0, n_local = n`` unless sharded.
    comm
        ``.rank``, ``.size``, ``.max(float)``, ``.any(bool)``, ``.step()`` (a context in which
        local work runs; on a shard every rank learns there whether any rank raised).
        :data:`LOCAL` (the one-process communicator) for an unsharded source.
    panel_blocks : int
        Strategy hint for the CPU tile loop: query tile blocks held at once while every later
        key block is read (1: read a key block per tile; a file source holds a panel).
    settle_rows : int or None
        Strategy hint for the ordering pass: rows per chunk (bounded temporaries for sources
        too large for O(N·k) float64 temporaries); None: all at once.
    read_rows : int or None
        Strategy hint for per-row passes (:meth:`own_blocks`): rows per block; None: all at once.
    """

    n: int
    width: int
    dtype: torch.dtype
    device: torch.device
    start: int = 0
    n_local: int
    comm = LOCAL
    panel_blocks: int = 1
    settle_rows: int | None = None
    read_rows: int | None = None

    @property
    def stop(self) -> int:
        return self.start + self.n_local

    @property
    def shape(self) -> tuple[int, int]:
        """(n_local, width): the owned rows seen as a matrix."""
        return (self.n_local, self.width)

    def block(self, r0: int, r1: int) -> torch.Tensor:
        """Owned rows at local positions [r0, r1) (global rows start + r0 ..), contiguous."""
        raise NotImplementedError

    def local(self):
        """The owned rows, indexable by local position (``v[index]``, ``v[r0:r1]``, ``v.shape``,
        ``v.device``): the tensor itself in memory, a lazy view otherwise."""
        raise NotImplementedError

    def fetch(self, index: torch.Tensor):
        """Collective. A view holding at least the rows at global ``index`` (unique, ascending),
        indexable by global index (``v[global_index]``, ``v.shape == (n, width)``)."""
        raise NotImplementedError

    def key_blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Collective. Every row of the matrix once, as ``(first global index, rows)`` blocks in
        an order of the source's choosing (a shard's own block first)."""
        raise NotImplementedError

    def max_abs(self) -> float:
        """Collective. The largest |entry| of the whole matrix."""
        raise NotImplementedError

    def scaled(self, e: int) -> "RowSource":
        """The same rows divided by 2**e (exact); ``self`` when e == 0."""
        raise NotImplementedError

    def centred(self, dtype: torch.dtype) -> "RowSource":
        """Collective. The rows in ``dtype`` minus the column means of the whole matrix (taken in
        float64)."""
        raise NotImplementedError

    def own_blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """The owned rows as ``(local position, rows)`` blocks of ``read_rows`` rows, in order."""
        for r0, r1 in self.blocks(max(1, self.read_rows or self.n_local)):
            yield r0, self.block(r0, r1)

    def exchange_candidates(self, kk: int, dtype: torch.dtype, impl=None,
                            product=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Collective. Candidate lists (values, global indices) of the owned rows among the rows
        this process does not own, as parts to merge: ``impl`` the kNN backend (queries, keys,
        k, exclude_self=False), or None for the compiled CPU tiles, produced by ``product``
        (:func:`platonic_fast.ops.knn.tile_loop`; None: the float32 GEMM). [] when it owns every row."""
        return []

    def blocks(self, rows: int) -> list[tuple[int, int]]:
        """Local [r0, r1) ranges of at most ``rows`` owned rows."""
        return [(s, min(self.n_local, s + rows)) for s in range(0, self.n_local, rows)]


def _scaled(t: torch.Tensor, e: int) -> torch.Tensor:
    return t if e == 0 else t * (2.0 ** -e)  # a power of two: exact in every float dtype


class TensorRows(RowSource):
    """Rows of a tensor in memory (CPU or CUDA); the process owns all of them."""

    def __init__(self, t: torch.Tensor):
        self.t = t
        self.n, self.width = t.shape
        self.n_local = self.n
        self.dtype, self.device = t.dtype, t.device

    def block(self, r0, r1):
        return self.t[r0:r1]

    def local(self):
        return self.t

    def fetch(self, index):
        return self.t

    def key_blocks(self):
        yield 0, self.t

    def max_abs(self):
        return max_abs(self.t)

    def scaled(self, e):
        return self if e == 0 else TensorRows(_scaled(self.t, e))

    def centred(self, dtype):
        return TensorRows(self.t.to(dtype) - self.t.mean(dim=0, dtype=torch.float64).to(dtype))


class FileRows(RowSource):
    """A prepared layer read from a file through ``view`` (:class:`platonic_fast.outofcore.LayerRows`:
    ``v[r0:r1]`` reads a block, ``v[index]`` gathers rows, ``v.scaled(e)`` / ``v.centred(dtype)``
    derive views; nothing is kept). ``top``: the rows' largest |entry| when known (from the
    statistics pass, so no pass is spent on it), else found by a pass when asked.

    Strategy: the tile loop holds panels of ``panel_bytes`` of query rows while the key blocks
    stream by once per panel; the ordering pass runs over chunks of ``SETTLE_ROWS`` rows; per-row
    passes read the file's blocks (``view.block_rows``).
    """

    SETTLE_ROWS = 128  # <= 1,792 cluster members per chunk at k = 10: bounded temporaries

    def __init__(self, view, top: float | None = None, *, panel_bytes: int = 16 << 20):
        self.view, self.top, self.panel_bytes = view, top, panel_bytes
        self.n, self.width = view.shape
        self.n_local = self.n
        self.dtype, self.device = view.dtype, view.device
        self.settle_rows, self.read_rows = self.SETTLE_ROWS, view.block_rows
        from .ops.knn import cpu_tile_rows

        self.tile = cpu_tile_rows(self.n)
        self.panel_blocks = max(1, panel_bytes // (self.tile * self.width * 4))

    def block(self, r0, r1):
        return self.view[r0:r1]

    def local(self):
        return self.view

    def fetch(self, index):
        return self.view

    def key_blocks(self):
        for r0, r1 in self.blocks(self.tile):
            yield r0, self.view[r0:r1]

    def max_abs(self):
        if self.top is None:
            self.top = max((max_abs(b) for _, b in self.own_blocks()), default=0.0)
        return self.top

    def scaled(self, e):
        if e == 0:
            return self
        return FileRows(self.view.scaled(e), None if self.top is None else self.top * 2.0 ** -e,
                        panel_bytes=self.panel_bytes)

    def centred(self, dtype):
        return FileRows(self.view.centred(dtype), panel_bytes=self.panel_bytes)


class _Fetched:
    """Rows fetched from their ranks, indexed by global index (rows by index, ``shape``, ``device``)."""

    def __init__(self, which: torch.Tensor, rows: torch.Tensor, n: int):
        self.which, self.rows = which, rows
        self.shape = (n, rows.shape[1])
        self.device = rows.device

    def at(self, index: torch.Tensor) -> torch.Tensor:
        """Positions in ``rows`` of the global rows ``index``."""
        return torch.searchsorted(self.which, index)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.rows[self.at(index)]


class ShardRows(RowSource):
    """This rank's rows ``x`` of a row-sharded matrix (``layout``: every rank's range, from
    :func:`platonic_fast.distributed._comm.layout_of`); ``comm`` a
    :class:`platonic_fast.distributed._comm.Comm`. Other ranks' rows move only when fetched
    (point to point, the rows asked for) or streamed as key blocks (one rank's block at a time,
    rank r receiving rank r + t's at step t)."""

    def __init__(self, comm, layout, x: torch.Tensor):
        self.comm, self.layout, self.x = comm, layout, x
        self.n, self.width = layout.n, x.shape[1]
        self.start, self.n_local = layout.start, layout.n_local
        self.dtype, self.device = x.dtype, x.device

    def block(self, r0, r1):
        return self.x[r0:r1]

    def local(self):
        return self.x

    def fetch(self, index):
        (rows,) = self.comm.fetch_rows(self.layout, [self.x], index)
        return _Fetched(index, rows, self.n)

    def key_blocks(self):
        for t in range(self.comm.size):
            _, first, block = self.peer_block(t)
            yield first, block
            del block

    def peer_block(self, t: int) -> tuple[int, int, torch.Tensor]:
        """Collective. Step ``t`` of the exchange: (rank p = rank + t, its first row, its rows)."""
        p = (self.comm.rank + t) % self.comm.size
        (block,) = self.comm.shift([self.x], t, [(self.layout.rows(p), self.width)])
        return p, self.layout.offsets[p], block

    def exchange_candidates(self, kk, dtype, impl=None, product=None):
        if self.comm.size == 1:
            return []
        if impl is None and self.device.type == "cpu":
            return self._pair_blocks(kk, dtype, product)
        return self._every_block(kk, dtype, impl)

    def _every_block(self, kk, dtype, impl):
        """Every other rank's block against all owned rows (any backend); partial lists merged
        as they come, so one block and one running list are held."""
        from .ops.knn import merge_lists

        running: list = []
        for t in range(1, self.comm.size):
            _, first, block = self.peer_block(t)
            with self.comm.step():
                m = min(kk, block.shape[0])
                if self.n_local and m:
                    v, i = impl(self.x, block, m, exclude_self=False)
                    running = [merge_lists(running + [(v.to(dtype), i.to(torch.int64) + first)], kk)]
            del block
        return running

    def _pair_blocks(self, kk, dtype, product=None):
        """CPU: each pair of rank blocks multiplied once, as one process's symmetric tiles are.
        Rank r computes the tiles of (r, r + t) for t = 1 .. P/2 (the last step's tile split in
        halves when P is even), merges their rows into its own running top-kk and their columns
        into a top-kk for rank r + t's rows, which it sends there. The tiles come from
        ``product`` (the float32 GEMM, or the bf16 screen's producer: the candidates are then
        the screen's, certified per row by the caller)."""
        from .ops.knn import empty_lists, gemm, new_merger, pair_lists

        product = product or gemm

        r, size, q = self.comm.rank, self.comm.size, self.x
        n_r, layout = self.n_local, self.layout
        rows_merger = new_merger(n_r, kk, dtype) if n_r else None
        parts = []
        for t in range(1, size // 2 + 1):
            p, first, block = self.peer_block(t)  # I compute the tile (r, p); rank r - t computed (r - t, r)
            src, n_p = (r - t) % size, layout.rows(p)
            half = size % 2 == 0 and t == size // 2
            left = r < size // 2
            # the part of the tile this rank computes: my rows [a0, a1) x p's rows [b0, b1)
            a0, a1, b0, b1 = 0, n_r, 0, n_p
            if half:
                if left:
                    b1 = n_p // 2
                else:
                    a0 = n_r // 2
            with self.comm.step():
                cv, ci = pair_lists(q, block, (a0, a1), (b0, b1), self.start, first, rows_merger, kk, dtype,
                                    product=product)
                # the peer's block dies here: a producer caching converted blocks lets its copies go
                if hasattr(product, "forget"):
                    product.forget(block)
            del block
            # the lists for my rows that src computed: all of them, but only the first half when
            # the split tile's other half is mine (I am the right rank of a halved pair)
            g1 = n_r // 2 if half and not left else n_r
            gv = self.comm.exchange(cv, p, (g1, kk), dtype, src, q.device)
            gi = self.comm.exchange(ci, p, (g1, kk), torch.int64, src, q.device)
            if g1 > 0:
                fv, fi = empty_lists(n_r, kk, dtype, q.device)
                fv[:g1], fi[:g1] = gv, gi
                parts.append((fv, fi))
        with self.comm.step():  # every rank enters every step, with or without rows
            if rows_merger is not None:
                v, i = rows_merger.finalize()
                parts.append((torch.from_numpy(v), torch.from_numpy(i)))
        return parts

    def max_abs(self):
        with self.comm.step():
            top = max_abs(self.x) if self.x.shape[0] else 0.0
        return self.comm.max(top)

    def scaled(self, e):
        return self if e == 0 else ShardRows(self.comm, self.layout, _scaled(self.x, e))

    def centred(self, dtype):
        with self.comm.step():
            total = self.x.sum(dim=0, dtype=torch.float64)
        mean = (self.comm.all_reduce(total.cpu()) / self.n).to(self.device)
        with self.comm.step():
            return ShardRows(self.comm, self.layout, self.x.to(dtype) - mean.to(dtype))


def as_rows(x) -> RowSource:
    """A source for ``x``: itself when it is one, a tensor wrapped in :class:`TensorRows`."""
    return x if isinstance(x, RowSource) else TensorRows(x)


__all__ = ["LOCAL", "FileRows", "RowSource", "ShardRows", "TensorRows", "as_rows"]
