"""The :class:`Features` container and its files: one safetensors file per model.

Layout of a file written by :func:`save`:

- tensors: ``layers`` (N x L x D float) when every layer has the same width, else ``layer.0``,
  ``layer.1``, ... (N x D_l each); ``bpb`` (N,) when bits-per-byte were measured;
- metadata (safetensors allows only str -> str): ``format`` = ``platonic_fast.features``,
  ``format_version`` = ``1`` and ``meta``, the JSON of :attr:`Features.meta` (model id, pooling,
  dataset, N, num_layers, layer_widths, num_params, has_bpb, dtype, ...).

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a
crash never leaves a half-written file under the final name. They load memory-mapped: the
tensors are views of the mapped file, and pages are read only when touched.

The reference pipeline's ``.pt`` files (``{"feats": N x L x D tensor or list, "num_params": ...,
"bpb": ...}``) load too, through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import write_atomic
from ._common import layer_widths

FORMAT = "platonic_fast.features"
FORMAT_VERSION = "1"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_ZIP_MAGIC = b"PK\x03\x04"


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
        """Write these features to ``path`` (safetensors, atomically). See :func:`save`."""
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
    partial file under ``path``.

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
    except TypeError as e:
        raise ValueError(f"features.meta must be JSON-serialisable to be stored: {e}") from e

    return write_atomic(path, lambda tmp: save_file(
        tensors, tmp, metadata={"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta_json}))


def load(path: str | os.PathLike, mmap: bool = True) -> Features:
    """Load features written by :func:`save`, or a reference pipeline ``.pt`` file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file from :func:`save`, or a ``.pt`` file of the reference pipeline
        (a dict with ``"feats"``: N x L x D tensor, a list of N x D_l tensors or one N x D
        matrix, and optionally ``"bpb"``, ``"num_params"``).
    mmap : bool, default True
        Memory-map the file: tensors are views of the mapped file, read from disk only when
        touched (copy-on-write; the file is never modified). False reads everything into RAM.

    Returns
    -------
    Features

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is corrupt, truncated, of another format, or inconsistent (layer count, widths
        or N in the metadata differ from the tensors; bpb has another N). The message names the file.

    Examples
    --------
    >>> f = load("features/bloomz-560m.safetensors")                   # doctest: +SKIP
    >>> f.layers.shape, f.meta["pooling"]                              # doctest: +SKIP
    (torch.Size([1024, 25, 1024]), 'avg')
    """
    path = Path(path)
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap must be True or False, got {mmap!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no features file at {str(path)!r}")
    # The suffix decides; only an unknown suffix is sniffed. (A safetensors file starts with its
    # header length, whose low byte may well be 0x80, the pickle marker: never sniff those.)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, mmap)
    if path.suffix in _TORCH_SUFFIXES:
        return _load_torch(path, mmap)
    with open(path, "rb") as fh:
        head = fh.read(8)
    # A zip archive or a pickle stream (protocol marker 0x80) is a torch.save file.
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        return _load_torch(path, mmap)
    return _load_safetensors(path, mmap)


def _load_safetensors(path: Path, mmap: bool) -> Features:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(
                    f"{str(path)!r} is a safetensors file but not a platonic_fast features file "
                    f"(metadata 'format' is {header.get('format')!r}, expected {FORMAT!r})"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (corrupt, truncated or "
                         f"another format): {e}") from e
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has features format version {header.get('format_version')!r}; "
                         f"this platonic_fast reads version {FORMAT_VERSION}")
    try:
        meta = json.loads(header.get("meta", ""))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} has unreadable metadata (not JSON): {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} has metadata that is not a JSON object")

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
    if not mmap:
        layers = layers.clone() if isinstance(layers, torch.Tensor) else [t.clone() for t in layers]
        bpb = bpb.clone() if bpb is not None else None
    _check_tensors(layers, bpb, repr(str(path)))
    _check_meta(meta, layers, bpb, path)
    return Features(layers, bpb, meta)


def _check_meta(meta: dict, layers, bpb, path: Path) -> None:
    """The metadata must describe the tensors actually stored."""
    n = int(layers.shape[0] if isinstance(layers, torch.Tensor) else layers[0].shape[0])
    num_layers = int(layers.shape[1] if isinstance(layers, torch.Tensor) else len(layers))
    actual = {"N": n, "num_layers": num_layers, "layer_widths": layer_widths(layers), "has_bpb": bpb is not None}
    for key, value in actual.items():
        if key not in meta:
            raise ValueError(f"{str(path)!r}: metadata lacks {key!r}")
        if meta[key] != value:
            raise ValueError(f"{str(path)!r}: metadata says {key}={meta[key]!r} but the stored tensors give {value!r}")


def _load_torch(path: Path, mmap: bool) -> Features:
    import pickle
    import zipfile

    errors = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
              AttributeError, KeyError, TypeError)
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
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
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
        meta["num_params"] = int(obj["num_params"])
    bpb = obj.get("bpb")
    if isinstance(bpb, torch.Tensor) and bpb.dim() == 0:
        # The reference stores the mean over samples only.
        meta["bpb_mean"] = float(bpb)
        bpb = None
    elif isinstance(bpb, (int, float)):
        meta["bpb_mean"] = float(bpb)
        bpb = None
    elif bpb is not None and not isinstance(bpb, torch.Tensor):
        raise ValueError(f"{str(path)!r}: 'bpb' must be a tensor, got {type(bpb).__name__}")
    if not mmap:
        layers = layers.clone() if isinstance(layers, torch.Tensor) else [t.clone() for t in layers]
    _check_tensors(layers, bpb, repr(str(path)))
    return Features(layers, bpb.float() if bpb is not None else None, meta)
