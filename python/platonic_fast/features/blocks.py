"""Feature files read a block of rows at a time, never whole: the reader behind out-of-core sweeps.

:class:`FeatureFile` opens a features file written by :func:`platonic_fast.features.save`
(safetensors: ``layers`` N x L x D, or ``layer.0`` .. ``layer.{L-1}`` of N x D_l each) or a
NumPy ``.npy`` array (N x L x D, or N x D for one layer) and copies out the rows a caller asks
for: one layer's rows ``[r0, r1)``, every layer's rows ``[r0, r1)`` (stacked files), or rows
at given indices. The file is memory-mapped, and after every copy the pages just read are
handed back with ``madvise(MADV_DONTNEED)``: file-backed pages that stay mapped count in a
process's resident set size (RSS), so without that a pass over a 2 GB file would show 2 GB of
RSS. They stay in the kernel's page cache (the next pass reads them from memory, not the disk),
they just no longer belong to this process.

A row subset (``rows=``, increasing file row numbers) makes the file look like the features of
those samples only: the nested subsets of ``platonic-fast measure --n-grid``.

:func:`streamed_checksum` recomputes a features file's stored checksum with plain reads of
4 MiB (no mapping), for the same reason; :func:`release_heap` keeps the freed row blocks of the
passes out of the resident set too.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np
import torch

# safetensors dtype names -> (numpy dtype read from the file, torch dtype of the tensor)
_SAFETENSORS_DTYPES = {
    "F64": (np.dtype("<f8"), torch.float64), "F32": (np.dtype("<f4"), torch.float32),
    "F16": (np.dtype("<f2"), torch.float16), "BF16": (np.dtype("<u2"), torch.bfloat16),
}
# every dtype a checksum may name (bpb and layers are floats; the rest for completeness)
_CHECKSUM_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                   "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_NUMPY_TO_TORCH = {np.dtype("float64"): torch.float64, np.dtype("float32"): torch.float32,
                   np.dtype("float16"): torch.float16}
# Pages around a read that the kernel may have mapped too (fault-around maps up to 64 KiB).
_FAULT_AROUND = 1 << 16
COPY_BYTES = 1 << 20  # file bytes copied between two releases of the pages read
READ_CHUNK = 1 << 22  # bytes per plain read of streamed_checksum


class FeatureFile:
    """One model's features on disk, read a block of rows at a time.

    Parameters
    ----------
    path : path
        A ``.safetensors`` features file or a ``.npy`` array (N x L x D or N x D, C order).
    rows : array of int, optional
        Increasing file row numbers: the file then looks like those samples only (``n`` is
        their count, row r is file row ``rows[r]``).

    Attributes
    ----------
    path : Path
    n : int
        Samples (rows of the subset, when one is given).
    num_layers : int
    widths : list[int]
    dtype : torch.dtype
        The stored dtype (every layer has the same).
    stacked : bool
        One N x L x D tensor (``read_all`` serves every layer's rows in one read).

    Examples
    --------
    >>> with FeatureFile("feats/model.safetensors") as f:              # doctest: +SKIP
    ...     block = f.read(3, 0, 1024)            # layer 3, rows 0..1023, a copy
    """

    def __init__(self, path, rows=None):
        self.path = Path(path)
        self._fh = open(self.path, "rb")
        try:
            if self.path.suffix == ".npy":
                offset, shape, np_dtype, self.dtype = _npy_layout(self._fh, self.path)
                names = None
            else:
                offset, shape, np_dtype, self.dtype, names = _safetensors_layout(self._fh, self.path)
            size = os.fstat(self._fh.fileno()).st_size
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except BaseException:
            self._fh.close()
            raise
        self._size = size
        self._views = []  # per layer: (numpy view N x D_l, byte offset of row 0, bytes per row)
        item = np_dtype.itemsize
        if names is None or isinstance(shape, tuple):  # one tensor: N x L x D (or N x D)
            n, lay, d = shape if len(shape) == 3 else (shape[0], 1, shape[1])
            full = np.ndarray((n, lay, d), dtype=np_dtype, buffer=self._mm, offset=offset)
            self._views = [(full[:, i], offset + i * d * item, lay * d * item) for i in range(lay)]
            self._stacked = (full, offset, lay * d * item)
        else:  # layer.0 .. layer.{L-1}: each contiguous
            for off, (n_l, d) in zip(offset, shape):
                view = np.ndarray((n_l, d), dtype=np_dtype, buffer=self._mm, offset=off)
                self._views.append((view, off, d * item))
            self._stacked = None
        self.stacked = self._stacked is not None
        self.file_n = int(self._views[0][0].shape[0])
        self.num_layers = len(self._views)
        self.widths = [int(v.shape[1]) for v, _, _ in self._views]
        self._rows = None
        if rows is not None:
            r = np.asarray(rows, dtype=np.int64)
            if r.ndim != 1 or r.size == 0 or (r.size > 1 and bool((np.diff(r) <= 0).any())) \
                    or int(r[0]) < 0 or int(r[-1]) >= self.file_n:
                self.close()
                raise ValueError(f"rows must be increasing row numbers in [0, {self.file_n}) of {self.path}")
            self._rows = r
        self.n = self.file_n if self._rows is None else int(self._rows.size)

    # -- reading -------------------------------------------------------------------------------

    def _file_rows(self, r0: int, r1: int):
        """(slice or index array, first file row, last file row + 1) of virtual rows [r0, r1)."""
        if not 0 <= r0 <= r1 <= self.n:
            raise IndexError(f"rows [{r0}, {r1}) outside [0, {self.n})")
        if self._rows is None:
            return slice(r0, r1), r0, r1
        sel = self._rows[r0:r1]
        if sel.size and int(sel[-1]) - int(sel[0]) == sel.size - 1:  # a run: a slice copies faster
            return slice(int(sel[0]), int(sel[-1]) + 1), int(sel[0]), int(sel[-1]) + 1
        return sel, (int(sel[0]) if sel.size else 0), (int(sel[-1]) + 1 if sel.size else 0)

    def read(self, layer: int, r0: int, r1: int) -> torch.Tensor:
        """Rows ``[r0, r1)`` of ``layer`` as an owned (r1 - r0) x D tensor in the stored dtype."""
        view, base, stride = self._views[layer]
        return self._tensor(self._copy(view, self._file_rows(r0, r1)[0], base, stride))

    def read_all(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``[r0, r1)`` of every layer, (r1 - r0) x L x D (stacked files only)."""
        if self._stacked is None:
            raise ValueError(f"{self.path} stores layers of different widths separately: read them one at a time")
        full, base, stride = self._stacked
        return self._tensor(self._copy(full, self._file_rows(r0, r1)[0], base, stride))

    def gather(self, layer: int, index) -> torch.Tensor:
        """The rows at virtual row numbers ``index`` (any order, repeats allowed) of ``layer``."""
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).reshape(-1)
        view, base, stride = self._views[layer]
        if idx.size == 0:
            return self._tensor(np.empty((0, view.shape[1]), dtype=view.dtype))
        uniq, back = np.unique(idx, return_inverse=True)
        if int(uniq[0]) < 0 or int(uniq[-1]) >= self.n:
            raise IndexError(f"row numbers outside [0, {self.n})")
        rows = uniq if self._rows is None else self._rows[uniq]
        return self._tensor(self._copy(view, rows, base, stride)[back])

    def _copy(self, view: np.ndarray, sel, base: int, stride: int) -> np.ndarray:
        """``view[sel]`` (file rows: a slice or increasing indices) copied out about 1 MiB of file
        at a time, each piece's pages released before the next is read: however large the
        block, the mapped pages never exceed a piece (a row of a stacked file's layer spans
        the whole row of every layer, which the kernel's fault-around maps too)."""
        if isinstance(sel, slice):
            start, count = sel.start, sel.stop - sel.start
        else:
            start, count = None, int(sel.size)
        out = np.empty((count, *view.shape[1:]), dtype=view.dtype)
        step = max(1, COPY_BYTES // max(1, stride))
        for s in range(0, count, step):
            e = min(count, s + step)
            if start is not None:
                out[s:e] = view[start + s: start + e]
                first, last = start + s, start + e
            else:
                part = sel[s:e]
                out[s:e] = view[part]
                first, last = int(part[0]), int(part[-1]) + 1
            self._release(base + first * stride, base + last * stride)
        return out

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t

    def _release(self, start: int, end: int) -> None:
        """Unmap the pages of bytes [start, end) (and the fault-around margin): RSS stays flat."""
        if self._mm is None or end <= start or not hasattr(self._mm, "madvise"):
            return
        page = mmap.PAGESIZE
        s = max(0, (start - _FAULT_AROUND) // page * page)
        e = min(self._size, -(-(end + _FAULT_AROUND) // page) * page)
        if e > s:
            self._mm.madvise(mmap.MADV_DONTNEED, s, e - s)

    def release(self) -> None:
        """Unmap every page of the file that this process still holds."""
        self._release(0, self._size)

    def checksum(self) -> tuple[str | None, str | None]:
        """(stored, actual): the checksum the file's header stores and the one its content hashes
        to now (:func:`streamed_checksum`, plain reads of this open file); (None, None) for a
        file without one (.npy, features written before checksums)."""
        if self.path.suffix == ".npy":
            return None, None
        return self.stored_checksum(), streamed_checksum(self._fh)

    def stored_checksum(self) -> str | None:
        """The checksum this open file's header stores (None: .npy, or none stored)."""
        return None if self.path.suffix == ".npy" else _stored(self._fh, self.path)

    # -- life ----------------------------------------------------------------------------------

    def subset(self, rows) -> "FeatureFile":
        """The same file seen through a row subset (a new reader: close it too)."""
        return FeatureFile(self.path, rows)

    @property
    def closed(self) -> bool:
        return not self._views

    def close(self) -> None:
        views, self._views, self._stacked = self._views, [], None
        del views
        if getattr(self, "_mm", None) is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view: the mapping goes with it
                pass
            self._mm = None
        if not self._fh.closed:
            self._fh.close()

    def __del__(self) -> None:
        # a reader handed to states that outlive their caller (streamed HSIC) closes with them
        if getattr(self, "_fh", None) is not None and hasattr(self, "_views"):
            self.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        shape = f"{self.n}x{self.num_layers}x{self.widths[0]}" if self.stacked else \
            f"{self.n}x[{', '.join(map(str, self.widths))}]"
        return f"FeatureFile({str(self.path)!r}, {shape}, {str(self.dtype).removeprefix('torch.')})"


_LIBC: dict = {}
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20


def _libc():
    if "libc" not in _LIBC:
        try:
            import ctypes

            _LIBC["libc"] = ctypes.CDLL("libc.so.6")
            _LIBC["libc"].malloc_trim, _LIBC["libc"].mallopt  # noqa: B018 - glibc has both
        except (OSError, AttributeError):
            _LIBC["libc"] = None
    return _LIBC["libc"]


def release_heap() -> None:
    """Keep freed blocks out of the resident set (glibc; elsewhere nothing): the first call fixes
    the mmap threshold at 1 MiB (row and key blocks are then unmapped when freed, never kept in
    the heap, where the threshold would otherwise rise to the largest block freed); every call
    trims the heap (between layers, so one layer's temporaries do not stay resident).
    """
    libc = _libc()
    if libc is None:
        return
    if not _LIBC.get("threshold"):
        _LIBC["threshold"] = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    libc.malloc_trim(0)


def _header(fh, path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the offset of its data."""
    head = fh.read(8)
    size = os.fstat(fh.fileno()).st_size
    if len(head) != 8:
        raise ValueError(f"{str(path)!r} is not a safetensors file (shorter than its header length)")
    (length,) = struct.unpack("<Q", head)
    if length > size - 8 or length > 100 << 20:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (header length {length})")
    try:
        header = json.loads(fh.read(length))
    except ValueError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (header is not JSON)") from e
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (header is not an object)")
    return header, 8 + length


def _entry(header: dict, name: str, path: Path, data: int, size: int):
    e = header[name]
    try:
        dtype, shape, (start, end) = e["dtype"], [int(s) for s in e["shape"]], e["data_offsets"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{str(path)!r}: malformed header entry {name!r}") from exc
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{str(path)!r}: {name} is {dtype}; features are float64, float32, float16 or bfloat16")
    np_dtype, t_dtype = _SAFETENSORS_DTYPES[dtype]
    if end - start != int(np.prod(shape)) * np_dtype.itemsize or data + end > size or start < 0:
        raise ValueError(f"{str(path)!r}: {name}'s data offsets do not fit its shape or the file (truncated?)")
    return data + int(start), shape, np_dtype, t_dtype


def _safetensors_layout(fh, path: Path):
    """(offset(s), shape(s), numpy dtype, torch dtype, layer names or None) of a features file."""
    from .storage import FORMAT, FORMAT_VERSION

    header, data = _header(fh, path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} is not a platonic_fast features file (format {meta.get('format')!r}, "
                         f"version {meta.get('format_version')!r})")
    size = os.fstat(fh.fileno()).st_size
    if "layers" in header:
        off, shape, np_dtype, t_dtype = _entry(header, "layers", path, data, size)
        if len(shape) != 3 or 0 in shape:
            raise ValueError(f"{str(path)!r}: layers must be N x L x D, got {shape}")
        return off, tuple(shape), np_dtype, t_dtype, None
    names = sorted((k for k in header if k.startswith("layer.")), key=lambda k: int(k.split(".")[1]))
    if not names or names != [f"layer.{i}" for i in range(len(names))]:
        raise ValueError(f"{str(path)!r} has no 'layers' tensor and no complete layer.0 .. layer.{{L-1}} set")
    entries = [_entry(header, k, path, data, size) for k in names]
    dtypes = {e[3] for e in entries}
    if len(dtypes) != 1:
        raise ValueError(f"{str(path)!r}: layers of different dtypes {sorted(map(str, dtypes))}")
    if any(len(e[1]) != 2 or 0 in e[1] for e in entries) or len({e[1][0] for e in entries}) != 1:
        raise ValueError(f"{str(path)!r}: every layer must be N x D_l with the same N")
    return [e[0] for e in entries], [tuple(e[1]) for e in entries], entries[0][2], entries[0][3], names


def _npy_layout(fh, path: Path):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        shape, fortran, dtype = (fmt.read_array_header_1_0(fh) if version == (1, 0)
                                 else fmt.read_array_header_2_0(fh))
    except ValueError as e:
        raise ValueError(f"{str(path)!r} is not a readable .npy file: {e}") from e
    if fortran and len(shape) > 1:
        raise ValueError(f"{str(path)!r} is stored in Fortran order; save it C-ordered "
                         "(np.save(path, np.ascontiguousarray(x)))")
    native = dtype.newbyteorder("=")
    if native not in _NUMPY_TO_TORCH:
        raise ValueError(f"{str(path)!r} holds {dtype}; features are float64, float32 or float16")
    if len(shape) not in (2, 3) or 0 in shape:
        raise ValueError(f"{str(path)!r} must hold an N x L x D or N x D array, got shape {shape}")
    offset = fh.tell()
    if offset + int(np.prod(shape)) * dtype.itemsize > os.fstat(fh.fileno()).st_size:
        raise ValueError(f"{str(path)!r} is shorter than its header says (truncated)")
    return offset, tuple(int(s) for s in shape), dtype, _NUMPY_TO_TORCH[native]


def _stored(fh, path: Path) -> str | None:
    fh.seek(0)
    header, _ = _header(fh, path)
    value = (header.get("__metadata__") or {}).get("checksum")
    return value if isinstance(value, str) else None


def streamed_checksum(file) -> str | None:
    """The checksum of a features file's content (:func:`platonic_fast.features.storage.checksum`),
    computed with plain reads of 4 MiB: nothing is mapped, so the process's RSS does not grow
    with the file. None when the file stores no ``meta`` (not a features file).

    ``file`` is a path or a file opened for binary reading (read from its descriptor)."""
    from .storage import CHECKSUM_PREFIX

    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fh:
            return streamed_checksum(fh)
    fh, path = file, Path(getattr(file, "name", "features"))
    fh.seek(0)
    header, data = _header(fh, path)
    meta = header.get("__metadata__") or {}
    if "meta" not in meta:
        return None
    h = hashlib.sha256()

    def part_len(n: int) -> None:
        h.update(int(n).to_bytes(8, "little"))

    meta_bytes = meta["meta"].encode("utf-8", "surrogatepass")
    part_len(len(meta_bytes))
    h.update(meta_bytes)
    size = os.fstat(fh.fileno()).st_size
    buf = bytearray(READ_CHUNK)
    for name in sorted(k for k in header if k != "__metadata__"):
        e = header[name]
        if e.get("dtype") not in _CHECKSUM_NAMES:
            raise ValueError(f"{str(path)!r}: {name} has dtype {e.get('dtype')!r}")
        desc = json.dumps([name, _CHECKSUM_NAMES[e["dtype"]], [int(s) for s in e["shape"]]]).encode()
        part_len(len(desc))
        h.update(desc)
        start, end = (int(v) for v in e["data_offsets"])
        if data + end > size:
            raise ValueError(f"{str(path)!r} is truncated: {name} ends past the end of the file")
        part_len(end - start)
        pos, left = data + start, end - start
        view = memoryview(buf)
        while left:
            got = os.preadv(fh.fileno(), [view[: min(left, READ_CHUNK)]], pos)
            if got <= 0:
                raise ValueError(f"{str(path)!r} could not be read to the end of {name}")
            h.update(view[:got])
            pos, left = pos + got, left - got
    return CHECKSUM_PREFIX + h.hexdigest()


__all__ = ["FeatureFile", "streamed_checksum"]
