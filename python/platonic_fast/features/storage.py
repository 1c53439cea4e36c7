"""The :class:`Features` container and its files: one safetensors file per model.

(Over 600 lines because it is the one place that reads and checks every feature format a user
hands in, safetensors, .npy and the reference .pt, with their crafted-file defences.)

Layout of a file written by :func:`save`:

- tensors: ``layers`` (N x L x D float) when every layer has the same width, else ``layer.0``,
  ``layer.1``, ... (N x D_l each); ``bpb`` (N,) when bits-per-byte were measured;
- metadata (safetensors allows only str -> str): ``format`` = ``platonic_fast.features``,
  ``format_version`` = ``1``, ``meta``, the JSON of :attr:`Features.meta` (model id, pooling,
  dataset, N, num_layers, layer_widths, num_params, has_bpb, dtype, ...), and ``checksum``,
  ``sha256:<64 hex digits>`` over the ``meta`` string and every tensor (see :func:`checksum`).
  Files written before the checksum existed have none; they still load, but cannot be verified.

Files are written atomically (a temporary folder beside the file, then ``os.replace``), so a
crash never leaves a half-written file under the final name, and a later write into the folder
removes what a killed one left (:func:`platonic_fast.files.write_atomic`). They load memory-mapped: the
tensors are views of the mapped file, and pages are read only when touched.
``load(path, verify=True)`` and :func:`verify` recompute the checksum (one read of the data).

The reference pipeline's ``.pt`` files (``{"feats": N x L x D tensor or list, "num_params": ...,
"bpb": ...}``) load too, through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import write_atomic
from ._common import layer_widths

FORMAT = "platonic_fast.features"
FORMAT_VERSION = "1"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_ZIP_MAGIC = b"PK\x03\x04"
CHECKSUM_PREFIX = "sha256:"  # sha256: hardware-accelerated almost everywhere (~1.7 GB/s a core)
_CHECKSUM_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_META_DEPTH = 64  # deeper metadata is crafted, not written by us; it would recurse downstream


@dataclass
class Features:
    """Layer-wise features of N samples from one model.

    Attributes
    ----------
    layers : torch.Tensor (N, L, D) or list of torch.Tensor (N, D_l)
        Pooled features of every layer, float32 when extracted here. A list when widths differ.
    bpb : torch.Tensor (N,) or None
        Per-sample bits-per-byte (causal language models only).
    meta : dict
        JSON-serialisable description: ``model``, ``pooling``, ``dataset``, ``N``, ``num_layers``,
        ``layer_widths``, ``num_params``, ``has_bpb``, ``dtype``, ...

    Examples
    --------
    >>> f = Features(torch.randn(100, 3, 16), meta={"model": "toy"})
    >>> f.n, f.num_layers, f.widths
    (100, 3, [16, 16, 16])
    """

    layers: torch.Tensor | list[torch.Tensor]
    bpb: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        _check_tensors(self.layers, self.bpb, "Features")
        self.meta = dict(self.meta)
        self.meta.update(N=self.n, num_layers=self.num_layers, layer_widths=self.widths,
                         has_bpb=self.bpb is not None)

    @property
    def n(self) -> int:
        """Number of samples N."""
        return int(self.layers.shape[0] if isinstance(self.layers, torch.Tensor) else self.layers[0].shape[0])

    @property
    def num_layers(self) -> int:
        """Number of layers L."""
        return int(self.layers.shape[1] if isinstance(self.layers, torch.Tensor) else len(self.layers))

    @property
    def widths(self) -> list[int]:
        """Feature width of every layer."""
        return layer_widths(self.layers)

    def layer(self, i: int) -> torch.Tensor:
        """Layer ``i`` as an N x D_i matrix (a view, no copy)."""
        return self.layers[:, i] if isinstance(self.layers, torch.Tensor) else self.layers[i]

    def save(self, path: str | os.PathLike) -> Path:
        """Write these features to ``path`` (safetensors, atomically, with a checksum). See :func:`save`."""
        return save(self, path)

    def __repr__(self) -> str:
        shape = (f"{self.n}x{self.num_layers}x{self.widths[0]}" if isinstance(self.layers, torch.Tensor)
                 else f"{self.n}x[{', '.join(map(str, self.widths))}]")
        return f"Features({shape}, bpb={'yes' if self.bpb is not None else 'no'}, model={self.meta.get('model')!r})"


def _check_tensors(layers: Any, bpb: Any, where: str) -> None:
    """Shapes and dtypes of layers/bpb; raise ValueError/TypeError mentioning ``where``."""
    if isinstance(layers, torch.Tensor):
        if layers.dim() != 3:
            raise ValueError(f"{where}: layers must be N x L x D, got shape {tuple(layers.shape)}")
        if not layers.is_floating_point():
            raise TypeError(f"{where}: layers must be a floating tensor, got {layers.dtype}")
        n = layers.shape[0]
        if layers.shape[1] == 0 or layers.shape[2] == 0:
            raise ValueError(f"{where}: layers has an empty dimension, shape {tuple(layers.shape)}")
    elif isinstance(layers, list):
        if not layers:
            raise ValueError(f"{where}: layers is an empty list")
        for i, t in enumerate(layers):
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{where}: layer {i} must be an N x D tensor, got {shape}")
            if not t.is_floating_point():
                raise TypeError(f"{where}: layer {i} must be a floating tensor, got {t.dtype}")
            if t.shape[1] == 0:
                raise ValueError(f"{where}: layer {i} has width 0")
        n = layers[0].shape[0]
        for i, t in enumerate(layers):
            if t.shape[0] != n:
                raise ValueError(f"{where}: every layer needs the same N; layer 0 has {n}, layer {i} has {t.shape[0]}")
    else:
        raise TypeError(f"{where}: layers must be an N x L x D tensor or a list of N x D tensors, "
                        f"got {type(layers).__name__}")
    if n == 0:
        raise ValueError(f"{where}: no samples (N = 0)")
    if bpb is not None:
        if not isinstance(bpb, torch.Tensor) or bpb.dim() != 1 or bpb.shape[0] != n:
            shape = tuple(bpb.shape) if isinstance(bpb, torch.Tensor) else type(bpb).__name__
            raise ValueError(f"{where}: bpb must be a tensor of shape ({n},) like the layers' N, got {shape}")
        if not bpb.is_floating_point():
            raise TypeError(f"{where}: bpb must be a floating tensor, got {bpb.dtype}")


def save(features: Features, path: str | os.PathLike) -> Path:
    """Write ``features`` to one safetensors file, atomically.

    The tensors go to a temporary file in the destination folder, which is flushed, synced and
    then renamed over ``path``: an interrupted write leaves any previous file intact and no
    partial file under ``path``. The metadata carries a sha256 :func:`checksum` of the content,
    which ``load(path, verify=True)`` and :func:`verify` check.

    Parameters
    ----------
    features : Features
    path : str or os.PathLike
        Destination, conventionally ``<model>.safetensors``. Missing parent folders are created.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        ``features`` is not a :class:`Features`.
    ValueError
        Its meta is not JSON-serialisable.

    Examples
    --------
    >>> f = Features(torch.randn(10, 2, 4), meta={"model": "toy"})
    >>> p = save(f, tmp_path / "toy.safetensors")                       # doctest: +SKIP
    >>> load(p).layers.shape                                            # doctest: +SKIP
    torch.Size([10, 2, 4])
    """
    from safetensors.torch import save_file

    if not isinstance(features, Features):
        raise TypeError(f"features must be a platonic_fast.features.Features, got {type(features).__name__}")
    path = Path(path)
    _check_tensors(features.layers, features.bpb, "features")
    # safetensors refuses views sharing storage and non-contiguous tensors: give it plain copies
    # only where needed.
    if isinstance(features.layers, torch.Tensor):
        tensors = {"layers": features.layers.detach().cpu().contiguous()}
    else:
        tensors = {f"layer.{i}": t.detach().cpu().contiguous() for i, t in enumerate(features.layers)}
    if features.bpb is not None:
        tensors["bpb"] = features.bpb.detach().cpu().contiguous()
    meta = dict(features.meta, N=features.n, num_layers=features.num_layers, layer_widths=features.widths,
                has_bpb=features.bpb is not None)
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as e:  # an object, a cycle, absurd nesting
        raise ValueError(f"features.meta must be JSON-serialisable to be stored: {e}") from e
    if _too_deep(meta):  # load would refuse it
        raise ValueError(f"features.meta is nested deeper than {_MAX_META_DEPTH} levels; flatten it to store it")

    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta_json,
                "checksum": checksum(tensors, meta_json)}
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def checksum(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """The content checksum stored in a features file: ``"sha256:<hex>"``.

    sha256 over the ``meta`` JSON string, then every tensor in name order: its name, dtype and
    shape, then its raw bytes (native byte order, i.e. the file's little-endian bytes). Every
    part is preceded by its length, so different contents never hash the same byte stream.

    Parameters
    ----------
    tensors : dict[str, torch.Tensor]
        The CPU tensors stored in the file (``layers`` or ``layer.<i>``, and ``bpb``).
    meta_json : str
        The stored ``meta`` metadata string, exactly as written.

    Returns
    -------
    str
    """
    h = hashlib.sha256()

    def part(data) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    part(meta_json.encode("utf-8", "surrogatepass"))
    for name in sorted(tensors):
        t = tensors[name]
        part(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode())
        # A uint8 view of the contiguous data: the bytes themselves, no copy (a mapped file is
        # read page by page as hashlib walks it).
        part(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return CHECKSUM_PREFIX + h.hexdigest()


def load(path: str | os.PathLike, mmap: bool = True, verify: bool = False) -> Features:
    """Load features written by :func:`save`, or a reference pipeline ``.pt`` file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file from :func:`save`, or a ``.pt`` file of the reference pipeline
        (a dict with ``"feats"``: N x L x D tensor, a list of N x D_l tensors or one N x D
        matrix, and optionally ``"bpb"``, ``"num_params"``).
    mmap : bool, default True
        Memory-map the file: tensors are views of the mapped file, read from disk only when
        touched (copy-on-write; the file is never modified). Cheap, but the mapping stays tied
        to the file: if another process truncates or rewrites that file *in place* while the
        features are in use, touching a vanished page kills this process with SIGBUS (replacing
        it by rename, as :func:`save` does, is safe: the old file lives on while mapped).
        False reads the whole file with ordinary reads into memory that this process owns
        (a safetensors file briefly needs twice its size), so nothing can pull the data away
        later: the safe choice for files that other processes may rewrite.
    verify : bool, default False
        Recompute the file's checksum (:func:`checksum`; one pass over the data) and raise if it
        differs from the one stored by :func:`save`. Files without a stored checksum (``.pt``
        files, files written before the checksum existed) raise: there is nothing to verify.

    Returns
    -------
    Features

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is a directory or not a regular file; it is corrupt, truncated (shorter than its
        header says: caught before any data is mapped), of another format, or inconsistent
        (layer count, widths or N in the metadata differ from the tensors; bpb has another N);
        its metadata is malformed (not JSON, nested too deeply, wrong types); or, with
        ``verify=True``, its checksum differs or is missing. The message names the file.

    Examples
    --------
    >>> f = load("features/bloomz-560m.safetensors")                   # doctest: +SKIP
    >>> f.layers.shape, f.meta["pooling"]                              # doctest: +SKIP
    (torch.Size([1024, 25, 1024]), 'avg')
    >>> f = load("features/bloomz-560m.safetensors", verify=True)      # doctest: +SKIP
    """
    return _load(path, mmap, verify)[0]


def verify(path: str | os.PathLike) -> str:
    """Check a features file against its stored checksum.

    Reads all of the file's data once (memory-mapped) and recomputes :func:`checksum`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file written by :func:`save`.

    Returns
    -------
    str
        The checksum, ``"sha256:<hex>"``, when it matches.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The checksum differs (the data or metadata changed since it was written: a bit flip, a
        bad copy, an edit), the file has no checksum, or it cannot be read as features.

    Examples
    --------
    >>> verify("features/bloomz-560m.safetensors")                     # doctest: +SKIP
    'sha256:3f1c...'
    """
    return _load(path, True, True)[1]


def stored_checksum(path: str | os.PathLike) -> str | None:
    """The checksum a features file stores, read from its header only (no data is read).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str or None
        ``"sha256:<hex>"``; None for ``.pt`` files, safetensors files of another format and
        features files written before the checksum existed.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`load`: missing, not a regular file, unreadable header, malformed checksum.
    """
    path = _check_path(path)
    if path.suffix == ".npy" or not _is_safetensors(path):
        return None
    header = _header(path)
    if header.get("format") != FORMAT:
        return None
    return _checked_checksum(header.get("checksum"), path)


def read_meta(path: str | os.PathLike) -> dict:
    """A features file's ``meta`` dict, read from its header only (no tensor data is read).

    For a reference ``.pt`` file (which has no header) only ``{"model": <file stem>,
    "source_format": "platonic-rep .pt"}`` is returned, without reading the file.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`load`: missing, not a regular file, unreadable, of another format, malformed metadata.
    """
    path = _check_path(path)
    if path.suffix == ".npy":
        return {"model": path.stem, "source_format": "numpy .npy"}
    if not _is_safetensors(path):
        return {"model": path.stem, "source_format": "platonic-rep .pt"}
    header = _header(path)
    _check_format(header, path)
    return _parse_meta(header.get("meta", ""), path)


def _header(path: Path) -> dict:
    """A safetensors file's metadata dict (header only), or a ValueError naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (corrupt, truncated or "
                         f"another format): {e}") from e


def _check_path(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory, not a features file")
    if not path.is_file():
        if path.exists():  # a FIFO or a device: reading it could block or never end
            raise ValueError(f"{str(path)!r} is not a regular file")
        raise FileNotFoundError(f"no features file at {str(path)!r}")
    return path


def _is_safetensors(path: Path) -> bool:
    # The suffix decides; only an unknown suffix is sniffed. (A safetensors file starts with its
    # header length, whose low byte may well be 0x80, the pickle marker: never sniff those.)
    if path.suffix == ".safetensors":
        return True
    if path.suffix in _TORCH_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        head = fh.read(8)
    # A zip archive or a pickle stream (protocol marker 0x80) is a torch.save file.
    return not (head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80")


def _load(path, mmap, verify) -> tuple[Features, str | None]:
    """(features, verified checksum or None): the body of :func:`load` and :func:`verify`."""
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap must be True or False, got {mmap!r}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, got {verify!r}")
    path = _check_path(path)
    try:
        if path.suffix == ".npy":
            if verify:
                raise ValueError(f"{str(path)!r} is a NumPy array: it stores no checksum, so there is nothing "
                                 f"to verify (save it with platonic_fast.features.save to get one)")
            return _load_npy(path, mmap), None
        if _is_safetensors(path):
            return _load_safetensors(path, mmap, verify)
        if verify:
            raise ValueError(f"{str(path)!r} is a torch file: it stores no checksum, so there is nothing "
                             f"to verify (save it with platonic_fast.features.save to get one)")
        return _load_torch(path, mmap), None
    except (RecursionError, OverflowError, AttributeError) as e:
        # A safety net for crafted files: the checks below should catch them first.
        raise ValueError(f"{str(path)!r} could not be read as features ({type(e).__name__}: {e})") from e


def _load_safetensors(path: Path, mmap: bool, verify: bool) -> tuple[Features, str | None]:
    from safetensors import SafetensorError, safe_open

    try:
        if mmap:
            # safe_open checks the header against the file's size before mapping anything, so a
            # truncated file is an error here, not a SIGBUS on first touch.
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                _check_format(header, path)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            tensors, header = _read_safetensors(path)
            _check_format(header, path)
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (corrupt, truncated or "
                         f"another format): {e}") from e
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has features format version {header.get('format_version')!r}; "
                         f"this platonic_fast reads version {FORMAT_VERSION}")
    stored = _checked_checksum(header.get("checksum"), path)
    meta_json = header.get("meta", "")
    if verify:
        # Before the metadata is parsed: a flipped bit there is reported as what it is.
        if stored is None:
            raise ValueError(f"{str(path)!r} has no checksum: it was written before platonic_fast stored "
                             f"one, so there is nothing to verify (load it and save it again to add one)")
        actual = checksum(tensors, meta_json)
        if actual != stored:
            raise ValueError(f"{str(path)!r} fails verification: it stores checksum {stored} but its content "
                             f"hashes to {actual} (corrupted on disk or in a copy, or modified)")
    meta = _parse_meta(meta_json, path)

    bpb = tensors.pop("bpb", None)
    if "layers" in tensors:
        layers = tensors.pop("layers")
    else:
        count = len([k for k in tensors if k.startswith("layer.")])
        names = [f"layer.{i}" for i in range(count)]
        if count == 0 or any(k not in tensors for k in names):
            raise ValueError(f"{str(path)!r} has no 'layers' tensor and no complete 'layer.0'..'layer.{{L-1}}' set "
                             f"(found {sorted(tensors)})")
        layers = [tensors.pop(k) for k in names]
    if tensors:
        raise ValueError(f"{str(path)!r} holds unexpected tensors {sorted(tensors)}")
    _check_loaded(layers, bpb, path)
    _check_meta(meta, layers, bpb, path)
    return Features(layers, bpb, meta), stored if verify else None


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) read with plain reads, no mapping: the tensors own their memory."""
    from safetensors.torch import load as load_bytes

    with open(path, "rb") as fh:
        data = fh.read()
    tensors = load_bytes(data)  # safetensors' own parser validates the header and every offset
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return tensors, header.get("__metadata__") or {}


def _check_format(header: dict, path: Path) -> None:
    if header.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is a safetensors file but not a platonic_fast features file "
                         f"(metadata 'format' is {header.get('format')!r}, expected {FORMAT!r})")


def _checked_checksum(value: str | None, path: Path) -> str | None:
    if value is not None and not _CHECKSUM_RE.fullmatch(value):
        raise ValueError(f"{str(path)!r} has a malformed checksum {_short(value)} "
                         f"(expected {CHECKSUM_PREFIX} and 64 hex digits)")
    return value


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value from a file, cut to ``limit`` characters for an error message."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deep nesting, or an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_meta(meta_json: str, path: Path) -> dict:
    try:
        meta = json.loads(meta_json)
    except RecursionError as e:
        raise ValueError(f"{str(path)!r} has unreadable metadata: JSON nested too deeply") from e
    except ValueError as e:  # not JSON, or an integer with more digits than Python converts
        raise ValueError(f"{str(path)!r} has unreadable metadata (not JSON): {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} has metadata that is not a JSON object")
    if _too_deep(meta):
        raise ValueError(f"{str(path)!r} has metadata nested deeper than {_MAX_META_DEPTH} levels")
    return meta


def _too_deep(meta: dict) -> bool:
    """Nesting beyond _MAX_META_DEPTH, found without recursion (deeper would make ==, repr or
    json.dumps recurse later)."""
    stack = [(meta, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > _MAX_META_DEPTH:
            return True
        children = obj.values() if isinstance(obj, dict) else obj
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return False


def _check_loaded(layers, bpb, path: Path) -> None:
    """The tensors' shapes and dtypes; a file's wrong dtype is a bad file (ValueError)."""
    try:
        _check_tensors(layers, bpb, repr(str(path)))
    except TypeError as e:
        raise ValueError(str(e)) from e


def _check_meta(meta: dict, layers, bpb, path: Path) -> None:
    """The metadata must describe the tensors actually stored, with the same types."""
    n = int(layers.shape[0] if isinstance(layers, torch.Tensor) else layers[0].shape[0])
    num_layers = int(layers.shape[1] if isinstance(layers, torch.Tensor) else len(layers))
    actual = {"N": n, "num_layers": num_layers, "layer_widths": layer_widths(layers), "has_bpb": bpb is not None}
    for key, value in actual.items():
        if key not in meta:
            raise ValueError(f"{str(path)!r}: metadata lacks {key!r}")
        # Types too: JSON's true == 1 and 6.0 == 6 would otherwise pass.
        stored = meta[key]
        same = type(stored) is type(value) and stored == value
        if same and isinstance(value, list):
            same = all(type(a) is int for a in stored)
        if not same:
            raise ValueError(f"{str(path)!r}: metadata says {key}={_short(stored)} but the stored tensors give "
                             f"{value!r}")


def _count(value: Any) -> int | None:
    """A non-negative whole number from a .pt file (int, integral float or 0-d tensor), else None."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not (value.is_complex() or value.dtype == torch.bool):
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _load_npy(path: Path, mmap: bool) -> Features:
    """A NumPy array of features: N x L x D (layers stacked) or N x D (one layer); no metadata."""
    try:
        # "c": copy-on-write mapping, so the tensor is writable and the file is never modified
        arr = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{str(path)!r} could not be read as a NumPy .npy array (corrupt, truncated, or "
                         f"holding Python objects): {e}") from e
    native = arr.dtype.newbyteorder("=")
    if native not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{str(path)!r}: features must be float16, float32 or float64, got {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{str(path)!r}: features must be N x L x D or N x D, got shape {arr.shape}")
    # As the out-of-core reader (features/blocks.py): Fortran order is refused, since a block of
    # rows is not contiguous in it; the other byte order is read into native floats.
    if np.isfortran(arr):
        raise ValueError(f"{str(path)!r} is stored in Fortran order; save it C-ordered "
                         "(np.save(path, np.ascontiguousarray(x)))")
    if arr.dtype != native:
        arr = arr.astype(native)
    layers = torch.from_numpy(arr)
    layers = layers.unsqueeze(1) if layers.dim() == 2 else layers
    _check_loaded(layers, None, path)
    return Features(layers, None, {"model": path.stem, "source_format": "numpy .npy"})


def _load_torch(path: Path, mmap: bool) -> Features:
    import pickle
    import zipfile

    errors = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
              AttributeError, KeyError, TypeError, IndexError, RecursionError, OverflowError, struct.error)
    try:
        # mmap needs the zip format (torch >= 1.6); fall back for the legacy pickle format.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e).lower():
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except errors as e:
        raise ValueError(f"{str(path)!r} could not be read as a torch feature file with weights_only=True "
                         f"(corrupt, truncated, or holding objects other than tensors and plain values): {e}") from e
    if not isinstance(obj, dict) or "feats" not in obj:
        found = sorted(map(_short, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{str(path)!r} is not a reference feature file: expected a dict with a 'feats' entry, "
                         f"found {found}")
    feats = obj["feats"]
    if isinstance(feats, (list, tuple)):
        layers = list(feats)
    elif isinstance(feats, torch.Tensor):
        layers = feats.unsqueeze(1) if feats.dim() == 2 else feats  # one N x D matrix = one layer
    else:
        raise ValueError(f"{str(path)!r}: 'feats' must be a tensor or a list of tensors, got {type(feats).__name__}")

    meta: dict[str, Any] = {"model": path.stem, "source_format": "platonic-rep .pt"}
    if "num_params" in obj:
        num_params = _count(obj["num_params"])
        if num_params is None:
            raise ValueError(f"{str(path)!r}: 'num_params' must be a non-negative whole number, "
                             f"got {_short(obj['num_params'])}")
        meta["num_params"] = num_params
    bpb = obj.get("bpb")
    if isinstance(bpb, torch.Tensor) and bpb.dim() == 0:
        # The reference stores the mean over samples only.
        if not bpb.is_floating_point():
            raise ValueError(f"{str(path)!r}: 'bpb' must be a floating tensor, got {bpb.dtype}")
        meta["bpb_mean"] = float(bpb)
        bpb = None
    elif isinstance(bpb, (int, float)) and not isinstance(bpb, bool):
        if isinstance(bpb, int) and abs(bpb) > 2**53:  # float() of a huge int overflows
            raise ValueError(f"{str(path)!r}: 'bpb' is an implausible number {_short(bpb)}")
        meta["bpb_mean"] = float(bpb)
        bpb = None
    elif bpb is not None and not isinstance(bpb, torch.Tensor):
        raise ValueError(f"{str(path)!r}: 'bpb' must be a tensor, got {type(bpb).__name__}")
    _check_loaded(layers, bpb, path)
    if not mmap:
        layers = layers.clone() if isinstance(layers, torch.Tensor) else [t.clone() for t in layers]
    return Features(layers, bpb.float() if bpb is not None else None, meta)
