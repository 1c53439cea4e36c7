"""torch.distributed plumbing of the sharded engine: the row layout, checked collectives, and
the point-to-point exchanges that move one block at a time.

Every rank runs the same sequence of calls (SPMD). Local work that may fail runs inside
``comm.step()``: at its end the ranks agree (one small all-reduce) on whether any of them
raised, and if one did, every rank raises, the failing one its own exception, the others a
:class:`ShardError` naming it, so no rank is left waiting in a collective its peer never
reaches. A rank that dies or stalls is caught by the collectives' timeout: the process group's
own (``init_process_group(timeout=...)``), or ``timeout=`` of the call, whichever is given.

Nothing here serialises Python objects: tensors travel as raw bytes (``uint8`` views), so
every dtype (bfloat16 included) moves over gloo and NCCL alike.
"""

from __future__ import annotations

import contextlib
import datetime
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._checks import FLOAT_DTYPES, ConstantFeaturesError, _column_range, as_tensor, check_values

_MESSAGE_BYTES = 2048
_DTYPE_CODES = {dt: i for i, dt in enumerate(FLOAT_DTYPES)}
_DTYPE_NAMES = {i: str(dt).replace("torch.", "") for i, dt in enumerate(FLOAT_DTYPES)}


# Bytes this process has sent and messages it has posted through :class:`Comm` (for benchmarks).
TRAFFIC = {"bytes_sent": 0, "messages": 0, "collectives": 0}


class ShardError(RuntimeError):
    """Raised on every rank when another rank of the group failed (its error in the message)."""


def as_timeout(timeout) -> datetime.timedelta | None:
    if timeout is None or isinstance(timeout, datetime.timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or a timedelta, got {timeout!r}")
    return datetime.timedelta(seconds=float(timeout))


@dataclass(frozen=True)
class Layout:
    """Which global rows each rank holds: rank r holds rows [offsets[r], offsets[r + 1])."""

    offsets: tuple[int, ...]
    rank: int

    @property
    def size(self) -> int:
        return len(self.offsets) - 1

    @property
    def n(self) -> int:
        return self.offsets[-1]

    @property
    def start(self) -> int:
        return self.offsets[self.rank]

    @property
    def stop(self) -> int:
        return self.offsets[self.rank + 1]

    @property
    def n_local(self) -> int:
        return self.stop - self.start

    def rows(self, r: int) -> int:
        return self.offsets[r + 1] - self.offsets[r]

    def owner(self, index: torch.Tensor) -> torch.Tensor:
        """The rank holding each global row ``index``."""
        bounds = torch.tensor(self.offsets[1:-1], dtype=torch.int64, device=index.device)
        return torch.bucketize(index, bounds, right=True)


class Comm:
    """One process group as the sharded functions use it.

    ``group=None`` is the default group; without an initialised default group the calls run as
    one process (world size 1), which is the single-process computation on the same code path.
    ``local=True`` is that one-process communicator whatever is initialised (:data:`LOCAL`).
    """

    def __init__(self, group=None, timeout=None, *, local: bool = False):
        self.timeout = as_timeout(timeout)
        if local or group is None and not (dist.is_available() and dist.is_initialized()):
            self.group, self.rank, self.size = None, 0, 1
            self.device = torch.device("cpu")
            return
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("a process group was given but torch.distributed is not initialised")
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given process group")
        self.size = dist.get_world_size(self.group)
        backend = str(dist.get_backend(self.group)).lower()
        # NCCL moves CUDA tensors only; gloo is given host tensors (its CUDA support is partial).
        self.device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")

    # --- helpers -------------------------------------------------------------------------------

    def _peer(self, r: int) -> int:
        return r if self.group is None or self.group is dist.group.WORLD else dist.get_global_rank(self.group, r)

    def _wait(self, work) -> None:
        if work is None:
            return
        if self.timeout is None:
            work.wait()
        else:
            work.wait(self.timeout)

    # --- collectives ---------------------------------------------------------------------------

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """The element-wise sum / max / min of ``t`` over the ranks (a new tensor, t's device)."""
        if self.size == 1:
            return t.clone()
        w = t.detach().to(self.device).clone()
        _count(w, collective=True)
        red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        self._wait(dist.all_reduce(w, op=red, group=self.group, async_op=True))
        return w.to(t.device)

    def sum(self, values) -> list[float]:
        """float64 sums of a few numbers over the ranks."""
        return self.all_reduce(torch.as_tensor(values, dtype=torch.float64).reshape(-1)).tolist()

    def max(self, value: float) -> float:
        return float(self.all_reduce(torch.tensor([value], dtype=torch.float64), "max")[0])

    def any(self, flag: bool) -> bool:
        return bool(self.all_reduce(torch.tensor([int(bool(flag))], dtype=torch.int64), "max")[0])

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """``t`` of every rank (same shape and dtype on every rank), in rank order."""
        if self.size == 1:
            return [t]
        w = _wire(t).to(self.device)
        _count(w, collective=True)
        out = [torch.empty_like(w) for _ in range(self.size)]
        self._wait(dist.all_gather(out, w, group=self.group, async_op=True))
        return [_unwire(o.to(t.device), t.dtype, t.shape) for o in out]

    def all_gather_rows(self, t: torch.Tensor, counts: list[int] | tuple[int, ...]) -> torch.Tensor:
        """The concatenation over ranks of each rank's rows of ``t`` (rank r holds counts[r])."""
        if self.size == 1:
            return t
        top = max(counts)
        pad = torch.zeros((top - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        parts = self.all_gather(torch.cat([t, pad]) if top > t.shape[0] else t)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.size == 1:
            return t
        w = _wire(t).to(self.device).clone()
        _count(w, collective=True)
        self._wait(dist.broadcast(w, src=self._peer(src), group=self.group, async_op=True))
        return _unwire(w.to(t.device), t.dtype, t.shape)

    def exchange(self, send: torch.Tensor | None, dst: int, recv_shape: tuple, dtype: torch.dtype, src: int,
                 device: torch.device | None = None) -> torch.Tensor:
        """Send ``send`` to rank ``dst`` while receiving a ``recv_shape`` tensor from ``src``
        (both sides know both sizes; empty messages are not sent)."""
        device = device if device is not None else (send.device if send is not None else torch.device("cpu"))
        out = torch.empty(recv_shape, dtype=dtype, device=device)
        works = []
        if send is not None and send.numel():
            wire = _wire(send).to(self.device)
            _count(wire)
            works.append(dist.isend(wire, self._peer(dst), group=self.group))
        rbuf = None
        if out.numel():
            rbuf = torch.empty(math.prod(recv_shape) * out.element_size(), dtype=torch.uint8, device=self.device)
            works.append(dist.irecv(rbuf, self._peer(src), group=self.group))
        for w in works:
            self._wait(w)
        if rbuf is not None:
            out = _unwire(rbuf.to(device), dtype, recv_shape)
        return out

    # --- failure agreement ---------------------------------------------------------------------

    def agree(self, exc: BaseException | None) -> None:
        """Every rank calls this at the same point: if any rank passes an exception, every rank
        raises (the failing ones their own exception, the others :class:`ShardError`)."""
        if self.size == 1:
            if exc is not None:
                raise exc
            return
        flags = torch.zeros(self.size, dtype=torch.int64)
        flags[self.rank] = int(exc is not None)
        flags = self.all_reduce(flags)
        if not bool(flags.any()):
            return
        text = b"" if exc is None else f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:_MESSAGE_BYTES]
        msg = torch.zeros(_MESSAGE_BYTES + 8, dtype=torch.uint8)
        msg[:8] = torch.tensor([len(text)], dtype=torch.int64).view(torch.uint8)
        if text:
            msg[8: 8 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        messages = self.all_gather(msg)
        if exc is not None:
            raise exc
        failed = [r for r in range(self.size) if flags[r]]
        first = messages[failed[0]]
        length = int(first[:8].view(torch.int64)[0])
        detail = bytes(first[8: 8 + length].tolist()).decode("utf-8", "replace")
        others = f" (and rank(s) {failed[1:]})" if len(failed) > 1 else ""
        raise ShardError(f"rank {failed[0]} of the process group failed{others}: {detail}")

    def step(self):
        """Run local work; at its end every rank learns whether any rank raised (and raises)."""
        return contextlib.nullcontext() if self.size == 1 else self._agreed()

    @contextlib.contextmanager
    def _agreed(self):
        err = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - re-raised on this rank by agree()
            err = e
        self.agree(err)

    # --- layout and row exchange --------------------------------------------------------------

    def layout(self, n_local: int) -> Layout:
        counts = self.all_gather(torch.tensor([n_local], dtype=torch.int64))
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + int(c[0]))
        return Layout(tuple(offsets), self.rank)

    def describe(self, t: torch.Tensor) -> list[list[int]]:
        """[rows, width, dtype code, on CUDA] of a 2-D tensor on every rank."""
        code = _DTYPE_CODES.get(t.dtype, -1)
        width = t.shape[1] if t.dim() >= 2 else -1
        mine = torch.tensor([t.shape[0] if t.dim() else -1, width, code, int(t.is_cuda), t.dim()], dtype=torch.int64)
        return [d.tolist() for d in self.all_gather(mine)]

    def fetch_rows(self, layout: Layout, tensors: list[torch.Tensor], want: torch.Tensor) -> list[torch.Tensor]:
        """Rows ``want`` (global indices, any order, repeats allowed) of row-sharded tensors.

        ``tensors`` are this rank's rows of each (the same number of rows); every rank calls
        this, each with its own ``want``. Requests and replies go point to point, one peer at a
        time, so only the rows asked for move.
        """
        device = tensors[0].device
        want = want.to(device=device, dtype=torch.int64).reshape(-1)
        out = [torch.empty((want.numel(), *t.shape[1:]), dtype=t.dtype, device=device) for t in tensors]
        owner = layout.owner(want)
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=self.size).cpu() if want.numel() else \
            torch.zeros(self.size, dtype=torch.int64)
        table = torch.stack(self.all_gather(counts))  # table[a, b]: rows rank a wants from rank b
        starts = [0] + torch.cumsum(counts, 0).tolist()
        for t in range(self.size):
            dst, src = (self.rank + t) % self.size, (self.rank - t) % self.size
            pos = order[starts[dst]: starts[dst + 1]]
            mine = want[pos]
            if t == 0:
                got = [x[mine - layout.start] for x in tensors]
            else:
                theirs = self.exchange(mine, dst, (int(table[src, self.rank]),), torch.int64, src, device)
                reply = _pack([x[theirs - layout.start] for x in tensors])
                buf = self.exchange(reply, src, (int(table[self.rank, dst]), reply.shape[1]), torch.uint8, dst,
                                    device)
                got = _unpack(buf, tensors)
            for o, g in zip(out, got):
                o[pos] = g
        return out

    def shift(self, payload: list[torch.Tensor], t: int, shapes: list[tuple]) -> list[torch.Tensor]:
        """Step ``t`` of a direct exchange: send ``payload`` to rank r − t and receive the one of
        rank r + t (``shapes``: its tensors' shapes; dtypes and devices as ``payload``'s)."""
        if t % self.size == 0:
            return payload
        dst, src = (self.rank - t) % self.size, (self.rank + t) % self.size
        return [self.exchange(p, dst, s, p.dtype, src, p.device) for p, s in zip(payload, shapes)]


LOCAL = Comm(local=True)  # the communicator of one process: every collective is the identity


def local_features(x, name: str) -> torch.Tensor:
    """This rank's rows of an N x D feature matrix (type, shape and finite values checked; the
    shard may be empty). Constant features are checked over all ranks by :func:`layout_of`."""
    t = as_tensor(x, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}; "
                        f"convert it with {name}.float()")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (this rank's samples x D features), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)})")
    if t.shape[0]:
        check_values(t, name)
    return t


def layout_of(comm: Comm, tensors: list[torch.Tensor], names: list[str], *, metric: str | None = None) -> Layout:
    """The row layout of one or more row-aligned sharded inputs, checked the same way on every
    rank (same widths per input, dtypes and device types on every rank, same rows per rank
    across inputs, N >= 1); with ``metric``, constant features raise ConstantFeaturesError."""
    descs = [comm.describe(t) for t in tensors]
    first = descs[0]
    for d, name in zip(descs, names):
        if len({r[1] for r in d}) > 1:
            raise ValueError(f"{name} has different widths on different ranks: {[r[1] for r in d]}")
        if len({r[2] for r in d}) > 1:
            raise TypeError(f"{name} has different dtypes on different ranks: {[_DTYPE_NAMES.get(r[2]) for r in d]}")
        if len({r[3] for r in d}) > 1:
            raise ValueError(f"{name} is on CUDA on some ranks and on the CPU on others")
        if [r[0] for r in d] != [r[0] for r in first]:
            raise ValueError(f"{names[0]} and {name} must hold the same rows on every rank: rows per rank "
                             f"{[r[0] for r in first]} and {[r[0] for r in d]}")
    layout = Layout(tuple([0] + torch.tensor([r[0] for r in first]).cumsum(0).tolist()), comm.rank)
    if layout.n == 0:
        raise ValueError(f"{names[0]} is empty on every rank; it needs at least one sample")
    if metric is not None:
        for t, name in zip(tensors, names):
            check_not_constant(comm, layout, t, name, metric)
    return layout


def check_not_constant(comm: Comm, layout: Layout, t: torch.Tensor, name: str, metric: str) -> None:
    """ConstantFeaturesError when all ``layout.n`` rows (every rank's) are equal."""
    if layout.n < 2:
        return
    if t.shape[0]:
        lo, hi = _column_range(t)
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    else:
        lo = torch.full((t.shape[1],), torch.inf, dtype=torch.float64, device=t.device)
        hi = -lo
    lo, hi = comm.all_reduce(lo.cpu(), "min"), comm.all_reduce(hi.cpu(), "max")
    if bool((lo == hi).all()):
        raise ConstantFeaturesError(
            f"{name} is constant: all {layout.n} samples have the same features, so {metric} has "
            "nothing to measure (check the layer or the extraction)")


def _count(wire: torch.Tensor, *, collective: bool = False) -> None:
    TRAFFIC["bytes_sent"] += wire.numel() * wire.element_size()
    TRAFFIC["collectives" if collective else "messages"] += 1


def _wire(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` (contiguous), as a flat uint8 tensor."""
    t = t.detach().contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8, device=t.device)


def _unwire(buf: torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype, device=buf.device)
    if dtype == torch.bool:
        return buf.contiguous().view(torch.uint8).reshape(shape).to(torch.bool)
    return buf.contiguous().view(dtype).reshape(shape)


def _pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Row-aligned tensors side by side as one m x bytes uint8 matrix."""
    m = tensors[0].shape[0]
    return torch.cat([_wire(x).reshape(m, -1) if m else torch.empty(0, _row_bytes(x), dtype=torch.uint8,
                                                                    device=x.device) for x in tensors], dim=1)


def _row_bytes(x: torch.Tensor) -> int:
    return math.prod(x.shape[1:]) * x.element_size()


def _unpack(buf: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    m = buf.shape[0]
    out, c = [], 0
    for x in like:
        w = _row_bytes(x)
        out.append(_unwire(buf[:, c: c + w].contiguous().reshape(-1), x.dtype, (m, *x.shape[1:])))
        c += w
    return out
