"""A sweep's inputs: which feature files a set names, each file's content fingerprint, and what a
sweep reads from their headers (N, widths, model metadata) before it scores anything."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

FEATURE_SUFFIXES = (".safetensors", ".npy", ".pt")
STREAMED_SUFFIXES = (".safetensors", ".npy")  # files the out-of-core sweep reads a block at a time


def feature_files(paths) -> list[Path]:
    """Expand files and folders into a sorted list of feature files (.safetensors, .npy, .pt)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in FEATURE_SUFFIXES)
            if not found:
                raise ValueError(f"{p} holds no feature files ({', '.join(FEATURE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            if p.suffix not in FEATURE_SUFFIXES:
                raise ValueError(f"{p} is not a feature file (expected {', '.join(FEATURE_SUFFIXES)})")
            out.append(p)
        else:
            raise ValueError(f"{p} does not exist")
    names = [f.stem for f in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"feature files must have distinct names; repeated: {sorted(dupes)}")
    return out


def file_fingerprint(path: str | os.PathLike) -> str:
    """The content identity of a feature file, for deciding whether a stored result still holds.

    A features file written by :func:`platonic_fast.features.save` stores a checksum of its
    content: that is read from its header (cheap) and returned as is, ``"sha256:<hex>"``. Any
    other file (a reference ``.pt`` file, a features file older than the checksum) is hashed
    whole, streaming: ``"file-sha256:<hex>"``. Size and modification time are never used: copies
    (``cp -p``, ``rsync -a``, ``tar``) keep both while the content differs.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`platonic_fast.features.load`.
    """
    from .storage import stored_checksum

    path = Path(path)
    stored = stored_checksum(path)
    if stored is not None:
        return stored
    return "file-sha256:" + hash_file(path)


def hash_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def check_samples(files, allow_mismatched: bool = False) -> dict:
    """Refuse to pair feature files extracted from different samples (their sample fingerprints,
    which extract records, differ); see :func:`platonic_fast.features.check_same_samples`."""
    from .provenance import check_same_samples

    return check_same_samples(dict.fromkeys(files), allow_mismatched)


def read_inputs(files: list[Path]) -> dict:
    """Each file's content fingerprint, N, layer widths and model metadata (:func:`model_info`),
    reading headers and bits-per-byte only (the layers stay mapped, unread); every file must
    have the same N."""
    from .storage import load

    fingerprints, info, widths, n0 = {}, {}, [], None
    for path in files:
        fingerprints[path] = file_fingerprint(path)
        feats = load(path, mmap=True)
        if n0 is None:
            n0 = feats.n
        elif feats.n != n0:
            raise ValueError(f"{path} has N={feats.n} samples; the other feature files have N={n0}")
        widths.extend(feats.widths)
        info[path] = model_info(feats, path, fingerprints[path])
    return {"fingerprints": fingerprints, "n": n0, "widths": widths, "info": info}


def model_info(feats, path: str | os.PathLike, fingerprint: str | None = None) -> dict:
    """What a sweep's summary keeps about one model, from its features file.

    Parameters
    ----------
    feats : platonic_fast.features.Features
        The loaded file (its ``meta`` and ``bpb``).
    path : path
    fingerprint : str, optional
        The file's content fingerprint (:func:`file_fingerprint`).

    Returns
    -------
    dict
        ``name`` (file stem), ``file``, ``fingerprint``, ``model`` and ``model_id`` (as the file
        records them), ``modality``, ``pooling``, ``dataset``, ``sample_fingerprint``, ``n``,
        ``num_params``, ``num_layers``, ``width`` (the widest layer), ``layer_widths``, ``bpb``
        (mean bits-per-byte over the samples that have a finite one; None without) and
        ``bpb_samples`` (how many). Missing metadata is None.
    """
    meta = feats.meta if isinstance(feats.meta, dict) else {}
    samples = meta.get("samples") if isinstance(meta.get("samples"), dict) else {}
    bpb, counted = None, 0
    if feats.bpb is not None:
        values = feats.bpb.detach().to("cpu", torch.float64)
        finite = values[torch.isfinite(values)]
        counted = int(finite.numel())
        bpb = float(finite.mean()) if counted else None
    params = meta.get("num_params")
    widths = [int(w) for w in feats.widths]
    return {"name": Path(path).stem, "file": str(path), "fingerprint": fingerprint,
            "model": meta.get("model"), "model_id": meta.get("model_id", meta.get("model")),
            "modality": meta.get("modality"), "pooling": meta.get("pooling"), "dataset": meta.get("dataset"),
            "sample_fingerprint": samples.get("fingerprint"), "n": int(feats.n),
            "num_params": int(params) if isinstance(params, (int, float)) and not isinstance(params, bool) else None,
            "num_layers": int(feats.num_layers), "width": max(widths), "layer_widths": widths,
            "bpb": bpb, "bpb_samples": counted}


def load_layers(path: Path, fingerprint: str, verify: bool = True):
    """A model's layers, memory-mapped, checked against the fingerprint the sweep keyed them by
    (a stored checksum is the fingerprint, so the data must really match it)."""
    from .storage import load

    layers = load(path, mmap=True, verify=verify and fingerprint.startswith("sha256:")).layers
    if file_fingerprint(path) != fingerprint:
        raise ValueError(f"{path} changed while the sweep was running; run it again")
    return layers


def open_verified(path: Path, fingerprint: str, rows=None, verified: set | None = None):
    """A :class:`~platonic_fast.features.blocks.FeatureFile` checked against its fingerprint as
    :func:`load_layers` checks it (the stored checksum recomputed with plain reads; once per
    sweep: a file already in ``verified`` only has its header's checksum compared)."""
    from .blocks import FeatureFile

    f = FeatureFile(path, rows)
    try:
        if fingerprint.startswith("sha256:") and verified is not None and path in verified:
            changed = f.stored_checksum() != fingerprint
        elif fingerprint.startswith("sha256:"):
            stored, actual = f.checksum()
            if verified is not None and actual == stored:
                verified.add(path)
            if actual != stored:
                raise ValueError(f"{str(path)!r} fails verification: it stores checksum {stored} but its content "
                                 f"hashes to {actual} (corrupted on disk or in a copy, or modified)")
            changed = stored != fingerprint
        else:
            changed = file_fingerprint(path) != fingerprint
        if changed:
            raise ValueError(f"{path} changed while the sweep was running; run it again")
        return f
    except BaseException:
        f.close()
        raise
