"""``platonic-fast measure`` over the ranks of a torchrun job (issue 11 item 3).

    torchrun --nproc-per-node P -m platonic_fast measure X --against Y --out scores ...

``python -m platonic_fast`` (see ``platonic_fast/__main__.py``) sees torchrun's environment
(``WORLD_SIZE`` > 1), initialises the default process group (gloo; NCCL when ``--device cuda``,
one GPU per rank by ``LOCAL_RANK``; :func:`start`) and hands the CLI a :class:`SweepShard`, which
it passes to :func:`platonic_fast.sweep.measure_sets`. Every rank reads its own copy of every
feature file (as on separate nodes), verifies it against its stored checksum (or hashes it
whole), and the ranks compare what they read — every file's name, fingerprint, N, layer count
and widths — before anything is scored; any difference stops every rank with the files named.
Each rank then keeps its own contiguous rows, every layer is prepared and every pair
scored collectively (:mod:`platonic_fast.distributed`), and rank 0 alone takes the output
folder's lock and writes the pair records and the summary (atomically, as one process does),
so the results and their resumption are those of a one-process run: the same records, keyed
the same way. Library calls of ``measure_sets`` are never sharded implicitly.

Not combined with sharding: confidence intervals (``--ci-repeats``) and ``--out-of-core``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys

import numpy as np
import torch

from ..align import prepare_layers, prepare_states, score_states
from ..calibration import calibrate_states
from ..calibration import exact_chance as layer_chance
from ._comm import Comm


class SweepShard:
    """What a sharded sweep needs from the process group."""

    def __init__(self, comm: Comm):
        self.comm = comm
        self.writer = comm.rank == 0

    # --- checks and the output folder ---------------------------------------------------------

    def check(self, settings: dict, inputs: dict, out_of_core) -> None:
        if settings.get("ci") is not None:
            raise ValueError("confidence intervals (--ci-repeats) are not computed by a sharded sweep: run them "
                             "in one process (the records are shared: a one-process run reuses the scores)")
        if out_of_core:
            raise ValueError("--out-of-core is not combined with torchrun: each rank already holds only its rows")
        inputs["out_of_core"] = False
        if "fingerprints" in inputs:
            self.agree_on_inputs(inputs)

    def agree_on_inputs(self, inputs: dict) -> None:
        """Every rank must have read the same files: names, fingerprints, N, layer counts, widths."""
        mine = {"n": inputs["n"], "files": [[p.name, fp, inputs["info"][p]["num_layers"],
                                             inputs["info"][p]["layer_widths"]]
                                            for p, fp in inputs["fingerprints"].items()]}
        digest = torch.frombuffer(bytearray(hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).digest()),
                                  dtype=torch.uint8)
        digests = self.comm.all_gather(digest)
        first = self.shared(mine)  # rank 0's view, to name what differs
        with self.comm.step():
            if not all(torch.equal(d, digests[0]) for d in digests):
                others = [r for r, d in enumerate(digests) if not torch.equal(d, digests[0])]
                raise ValueError(f"the ranks read different feature files (rank(s) {others} differ from rank 0"
                                 f"{_difference(first, mine)}): every rank must see the same files, e.g. the "
                                 "same copy on a shared file system; nothing was scored")

    @contextlib.contextmanager
    def lock(self, out, wait: float, lock_folder):
        """Rank 0 holds the folder's lock for the whole sweep; every rank learns if it could not."""
        with contextlib.ExitStack() as stack:
            with self.comm.step():
                if self.writer:
                    stack.enter_context(lock_folder(out, wait))
            yield

    # --- rows and states ----------------------------------------------------------------------

    def prepare(self, load, take, rows, n: int, name: str, *, device, q: float, exact: bool, concat: bool,
                metric: str, opts: dict) -> list:
        """This rank's rows of one model's layers (``load()`` maps the file, ``take(layers,
        rows)`` reads rows), prepared for ``metric`` collectively."""
        with self.comm.step():
            lo, hi = self.comm.rank * n // self.comm.size, (self.comm.rank + 1) * n // self.comm.size
            mine = np.arange(lo, hi) if rows is None else np.asarray(rows)[lo:hi]
            layers = take(load(), mine)
            if device is not None:
                layers = [l.to(device) for l in layers] if isinstance(layers, list) else layers.to(device)
        layers = prepare_layers(layers, name, q=q, exact=exact, concat=concat, comm=self.comm)
        return prepare_states(layers, metric, opts, comm=self.comm, layout=self.comm.layout(layers[0].shape[0]))

    # --- records ------------------------------------------------------------------------------

    def read_record(self, path, key: dict, reader):
        """Rank 0's reading of a pair record (None: to compute), the same on every rank."""
        record = None
        with self.comm.step():
            if self.writer:
                record = reader(path, key)
        return self.shared(record)

    def compute_record(self, sx: list, sy: list, metric: str, opts: dict, n: int, settings: dict) -> dict:
        """The parts of a pair record computed from the states (as ``sweep._compute_record``)."""
        res = score_states(sx, sy, metric, opts, concat=settings["concat"])
        out = {"res": res, "calibration": None, "chance": None}
        if settings["permutations"] is not None:
            generator = torch.Generator().manual_seed(settings["seed"])
            out["calibration"] = calibrate_states(sx, sy, res.scores, metric, opts,
                                                  permutations=settings["permutations"], alpha=settings["alpha"],
                                                  generator=generator)
        else:
            out["chance"] = self.exact_chance(sx, sy)
        return out

    def exact_chance(self, sx: list, sy: list) -> list | None:
        """The records' chance levels: the sharded layer search's, non-finite (constant layers) as None."""
        return layer_chance(sx, sy, as_lists=True)

    def shared(self, value):
        """Rank 0's JSON-able ``value`` on every rank (Paths as str)."""
        data = json.dumps(value, default=str).encode() if self.writer else b""
        size = self.comm.broadcast(torch.tensor([len(data)], dtype=torch.int64))
        buf = torch.zeros(int(size[0]), dtype=torch.uint8)
        if self.writer and data:
            buf[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = self.comm.broadcast(buf)
        return json.loads(bytes(buf.tolist()).decode()) if buf.numel() else None

    def on_writer(self, fn):
        """``fn()`` on rank 0 (failures agreed on), its JSON-able result on every rank."""
        result = None
        with self.comm.step():
            if self.writer:
                result = fn()
        return self.shared(result)


def _backend(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--device=") else (argv[i + 1] if a == "--device" and
                                                                        i + 1 < len(argv) else None)
        if value is not None and value.startswith("cuda"):
            return "nccl"
    return "gloo"


def _difference(first: dict, mine: dict) -> str:
    """What this rank read differently from rank 0, in words (empty on rank 0)."""
    if first == mine:
        return ""
    if first["n"] != mine["n"]:
        return f"; here N={mine['n']}, on rank 0 N={first['n']}"
    for a, b in zip(first["files"], mine["files"]):
        if a != b:
            what = ("fingerprint" if a[1] != b[1] else "layers" if a[2] != b[2] else "widths" if a[3] != b[3]
                    else "name")
            return f"; here {b[0]} differs in its {what} from rank 0's {a[0]}"
    return "; here a different number of files"


def start(argv: list[str]) -> SweepShard:
    """Initialise the default process group from torchrun's environment and return the sweep's
    shard (the CLI's arguments: ``--device cuda`` selects NCCL and this rank's GPU)."""
    import torch.distributed as dist

    backend = _backend(argv)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    minutes = float(os.environ.get("PLATONIC_FAST_DIST_TIMEOUT_MIN", "30"))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    return SweepShard(Comm())


def local_device_argv(argv: list[str]) -> list[str]:
    """``--device cuda`` made this rank's GPU (``cuda:<LOCAL_RANK>``)."""
    if _backend(argv) != "nccl":
        return argv
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return [f"cuda:{local}" if a.startswith("cuda") and i and argv[i - 1] == "--device" else
            (f"--device=cuda:{local}" if a.startswith("--device=cuda") else a) for i, a in enumerate(argv)]


@contextlib.contextmanager
def quiet_unless_writer(shard: SweepShard):
    """One report: rank 0's standard output (errors still reach every rank's stderr)."""
    if shard.writer:
        yield
        return
    saved = sys.stdout
    sys.stdout = open(os.devnull, "w")
    try:
        yield
    finally:
        sys.stdout.close()
        sys.stdout = saved


def stop() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()
