"""Which samples, in which order, produced a features file: fingerprints and their checks.

A *sample fingerprint* identifies an ordered sample set: sha256 over every row's id and content,
in order (``"samples-sha256:<hex>"``). Rows, not modalities: when the texts and the images come
from the same rows (a caption file paired with an image folder, a dataset's image and caption
columns, the colour set), a row's content is all of it, so the language and the vision features
of those rows record the *same* fingerprint, and features of differently ordered, filtered or
truncated rows record different ones. Every features file written by
:func:`~platonic_fast.features.language` / :func:`~platonic_fast.features.vision` stores, in
``meta["samples"]``::

    {"fingerprint": "samples-sha256:...", "n": N, "id_format": "line" | "file" | "row" | ...,
     "spec": {"source": "text-file" | "image-folder" | "paired" | "hf-dataset" | "colours" |
              "in-memory", ... path or hub id, revision, subset, split, column(s),
              caption index, limit, skip_blank ...}}

:func:`provenance` reads it (and the model's identity) from a file's header without reading its
data; :func:`check_same_samples` is what ``measure`` runs before pairing files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable

FINGERPRINT_PREFIX = "samples-sha256:"
_HASH_VERSION = b"platonic_fast.samples/1"


class SampleMismatchError(ValueError):
    """Feature files that were extracted from different samples (or orders) were to be paired."""


class RowHasher:
    """Incremental sample fingerprint: ``add(row_id, *contents)`` per row, in order, then :meth:`hexdigest`."""

    def __init__(self):
        self._h = hashlib.sha256()
        self._part(_HASH_VERSION)
        self.n = 0

    def _part(self, data: bytes | memoryview) -> None:
        self._h.update(len(data).to_bytes(8, "little"))
        self._h.update(data)

    def add(self, row_id: Any, *contents: Any) -> None:
        self._part(b"row")
        feed(self, row_id)
        for c in contents:
            feed(self, c)
        self.n += 1

    def fingerprint(self) -> str:
        return FINGERPRINT_PREFIX + self._h.copy().hexdigest()


def feed(hasher: RowHasher, value: Any) -> None:
    """Feed one value, tagged with its type and length-prefixed (so different values never feed
    the same byte stream): None, bool, int, float, str, bytes, lists, dicts, file paths (their
    bytes), PIL images, NumPy arrays and torch tensors (their pixels / elements)."""
    part = hasher._part
    if value is None:
        part(b"N")
    elif isinstance(value, bool):
        part(b"B1" if value else b"B0")
    elif isinstance(value, int):
        part(b"I" + str(value).encode())
    elif isinstance(value, float):
        part(b"F" + struct.pack("<d", value))
    elif isinstance(value, str):
        part(b"S")
        part(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        part(b"Y")
        part(bytes(value))
    elif isinstance(value, FileContent):
        part(b"Y")
        part(value.digest())
    elif isinstance(value, (list, tuple)):
        part(b"L" + str(len(value)).encode())
        for v in value:
            feed(hasher, v)
    elif isinstance(value, dict):
        part(b"D" + str(len(value)).encode())
        for k in sorted(value, key=str):
            feed(hasher, str(k))
            feed(hasher, value[k])
    else:
        _feed_array(hasher, value)


def _feed_array(hasher: RowHasher, value: Any) -> None:
    import numpy as np

    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with torchvision/timm
        Image = None
    if Image is not None and isinstance(value, Image.Image):
        hasher._part(b"P" + json.dumps([value.mode, list(value.size)]).encode())
        hasher._part(value.tobytes())
        return
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)
        hasher._part(b"A" + json.dumps([value.dtype.str, list(value.shape)]).encode())
        hasher._part(memoryview(value).cast("B"))
        return
    raise TypeError(f"cannot fingerprint a sample of type {type(value).__name__}")


class FileContent:
    """A file's bytes as a sample's content, hashed (streaming) when the fingerprint is taken."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def digest(self) -> bytes:
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.digest()


def content_provenance(items: Iterable[Any], spec: dict | None = None) -> dict:
    """Provenance of an in-memory sample sequence: ids are positions, the content each item."""
    hasher = RowHasher()
    for i, item in enumerate(items):
        hasher.add(i, item)
    return {"fingerprint": hasher.fingerprint(), "n": hasher.n, "id_format": "position",
            "spec": dict(spec or {"source": "in-memory"})}


def provenance_of(samples: Any) -> dict | None:
    """The provenance a sample source carries (``samples.provenance``), or None."""
    prov = getattr(samples, "provenance", None)
    if callable(prov):
        prov = prov()
    return dict(prov) if isinstance(prov, dict) else None


# --- reading it back from files ----------------------------------------------------------------------


def provenance(path: str | os.PathLike) -> dict:
    """What a features file says about its origin, read from its header only (no data is read).

    Parameters
    ----------
    path : str or os.PathLike
        A features file (``.safetensors`` written here, or a reference ``.pt`` file).

    Returns
    -------
    dict
        ``model`` (id or path as given), ``model_id`` (the resolved identity: an absolute path
        for local folders), ``modality``, ``pooling``, ``revision``, ``random_init``, ``N``,
        ``dataset`` (label), ``samples`` (``{"fingerprint", "n", "id_format", "spec"}``) and
        ``fingerprint`` (the sample fingerprint, or None when the file records none: a
        reference ``.pt`` file, or a file written before fingerprints existed).

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`platonic_fast.features.load`.

    Examples
    --------
    >>> provenance("features/bigscience_bloomz-560m_pool-avg.safetensors")["fingerprint"]  # doctest: +SKIP
    'samples-sha256:5d0c...'
    """
    from .storage import read_meta

    meta = read_meta(path)
    samples = meta.get("samples") if isinstance(meta.get("samples"), dict) else None
    fingerprint = samples.get("fingerprint") if samples else None
    return {
        "path": str(path),
        "model": meta.get("model"),
        "model_id": meta.get("model_id", meta.get("model")),
        "modality": meta.get("modality"),
        "pooling": meta.get("pooling"),
        "revision": meta.get("revision"),
        "random_init": bool(meta.get("random_init", False)),
        "N": meta.get("N"),
        "dataset": meta.get("dataset"),
        "samples": samples,
        "fingerprint": fingerprint if isinstance(fingerprint, str) else None,
    }


def sample_fingerprint(path: str | os.PathLike) -> str | None:
    """The sample fingerprint a features file records (header only), or None when it has none.

    Two files with the same fingerprint were extracted from the same rows in the same order;
    ``measure`` pairs only such files (see :func:`check_same_samples`).
    """
    return provenance(path)["fingerprint"]


def check_same_samples(paths: Iterable[str | os.PathLike], allow_mismatched: bool = False) -> dict:
    """Check that feature files were extracted from the same samples, before pairing them.

    Parameters
    ----------
    paths : iterable of paths
        The feature files to be paired with each other.
    allow_mismatched : bool, default False
        Report a mismatch instead of raising (the caller records that it was overridden).

    Returns
    -------
    dict
        ``{"fingerprints": {fingerprint: [file names]}, "unknown": [files without one],
        "mismatched": bool, "allowed": allow_mismatched}``.

    Raises
    ------
    SampleMismatchError
        Two files record different sample fingerprints (and ``allow_mismatched`` is False). The
        message names the groups and how each set was produced.
    """
    groups: dict[str, list[str]] = {}
    specs: dict[str, dict] = {}
    unknown = []
    for p in paths:
        prov = provenance(p)
        fp = prov["fingerprint"]
        if fp is None:
            unknown.append(Path(p).name)
            continue
        groups.setdefault(fp, []).append(Path(p).name)
        specs.setdefault(fp, (prov["samples"] or {}).get("spec") or {})
    mismatched = len(groups) > 1
    if mismatched and not allow_mismatched:
        lines = []
        for fp, names in groups.items():
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            lines.append(f"{shown} ({describe_spec(specs[fp])}; {fp[len(FINGERPRINT_PREFIX):][:12]})")
        raise SampleMismatchError(
            "the feature files were extracted from different samples (or orders) and cannot be paired: "
            + " vs ".join(lines)
            + ". Extract every model with the same data options (for texts and images of the same rows: "
            "--texts FILE --images DIR together, or --hf-dataset with --text-column and --image-column), "
            "or pass --allow-mismatched-samples to pair them anyway (recorded in the results)")
    return {"fingerprints": groups, "unknown": unknown, "mismatched": mismatched, "allowed": bool(allow_mismatched)}


def describe_spec(spec: dict) -> str:
    """A short human description of a dataset spec, for messages."""
    if not spec:
        return "unknown samples"
    parts = [str(spec.get("source", "?"))]
    for key in ("path", "texts", "images", "hub_id", "revision", "subset", "split", "text_column",
                "image_column", "caption_index", "limit"):
        if spec.get(key) is not None:
            parts.append(f"{key}={spec[key]}")
    return " ".join(parts)
