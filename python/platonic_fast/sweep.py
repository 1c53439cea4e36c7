"""Model-set sweeps: every model of one set against every model of another.

This is the paper's measurement loop (``measure_alignment.py`` in the reference): for each pair
of models, the best layer pair and its score. Each model's layers are clamped, normalised and
prepared once (neighbour lists, kernel statistics, ...) and reused against every other model.
Every finished pair is written atomically to ``<out>/pairs/``; a sweep that is interrupted and
started again with the same settings resumes where it stopped, and gives the same numbers as an
uninterrupted one.

A pair's record is reused only when it is provably the same computation. Its key holds both
models' names and content fingerprints (:func:`file_fingerprint`: the checksum a features file
stores, else a hash of the file's bytes; never its size or modification time), the metric and
every option, and the library version; the record's file name is the sha256 of that key, and on
reading, the key stored inside must equal the one expected, or the pair is computed again.

One sweep at a time writes to an output folder: it holds an exclusive ``fcntl.flock`` on
``<out>/.lock`` (POSIX advisory locking; on network file systems it is only as good as their
lock support). A second run stops at once naming the folder and the holder's PID, or waits
``wait`` seconds for it. The kernel drops the lock when its holder exits, however it exits, so
a lock left by a killed run is simply taken over; the ``.lock`` file itself stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .align import prepare_layers, prepare_states, resolve_options, score_states
from .files import write_atomic
from .metrics import metric_spec

FEATURE_SUFFIXES = (".safetensors", ".pt")
LOCK_NAME = ".lock"


class OutputFolderLocked(RuntimeError):
    """Another sweep holds the output folder's lock (``<out>/.lock``)."""


@dataclass
class SweepResult:
    """Scores of a model set against a model set.

    Attributes
    ----------
    names_x, names_y : list[str]
        Model names (feature file stems), rows and columns.
    scores : np.ndarray, float64, shape (Mx, My)
        Best layer-pair score of each model pair.
    best_layers : np.ndarray, int64, shape (Mx, My, 2)
        The best layer pair (-1 for the concatenation; (-2, -2) when no pair scored above 0).
    fingerprints_x, fingerprints_y : list[str]
        Each model file's content fingerprint (:func:`file_fingerprint`), as the records key them.
    files : dict[str, Path]
        The written ``scores.json``, ``scores.npz`` and (with matplotlib) ``heatmap.png``.
    """

    names_x: list[str]
    names_y: list[str]
    scores: np.ndarray
    best_layers: np.ndarray
    metric: str
    settings: dict
    fingerprints_x: list = field(default_factory=list)
    fingerprints_y: list = field(default_factory=list)
    files: dict = field(default_factory=dict)


def feature_files(paths) -> list[Path]:
    """Expand files and folders into a sorted list of feature files (.safetensors, .pt)."""
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

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`platonic_fast.features.load`.
    """
    from .features.storage import stored_checksum

    path = Path(path)
    stored = stored_checksum(path)
    if stored is not None:
        return stored
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            h.update(memoryview(buf)[:n])
    return "file-sha256:" + h.hexdigest()


def check_samples(files, allow_mismatched: bool = False) -> dict:
    """Refuse to pair feature files extracted from different samples (their sample fingerprints,
    which extract records, differ); see :func:`platonic_fast.features.check_same_samples`."""
    from .features.provenance import check_same_samples

    return check_same_samples(dict.fromkeys(files), allow_mismatched)


def _load_layers(path: Path, fingerprint: str):
    from .features import load

    # A stored checksum is the fingerprint, so the data must really match it.
    layers = load(path, mmap=True, verify=fingerprint.startswith("sha256:")).layers
    if file_fingerprint(path) != fingerprint:
        raise ValueError(f"{path} changed while the sweep was running; run it again")
    return layers


@contextlib.contextmanager
def lock_folder(out: str | os.PathLike, wait: float = 0):
    """Hold the exclusive lock of a sweep's output folder (``<out>/.lock``) for a ``with`` block.

    ``fcntl.flock`` (POSIX): the kernel releases it when the holder exits in any way, so a lock
    left by a killed run is taken over. The holder's PID is written into the file for the
    message others get. Without ``fcntl`` (Windows) the folder is not locked and a warning says so.

    Parameters
    ----------
    out : path
        The output folder; created if missing.
    wait : float, default 0
        Seconds to wait for another holder to finish (``math.inf``: no limit); 0 fails at once.

    Raises
    ------
    OutputFolderLocked
        Another process holds the lock (still, after ``wait`` seconds).
    ValueError
        ``wait`` is negative or not a number; ``out`` exists and is not a folder.
    OSError
        The lock file cannot be opened or the file system does not support ``flock``.
    """
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or math.isnan(wait) or wait < 0:
        raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
    out = _check_out_dir(out)
    try:
        import fcntl
    except ImportError:
        warnings.warn(f"no fcntl on this platform: {out} is not locked against a concurrent sweep",
                      RuntimeWarning, stacklevel=3)
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OutputFolderLocked(_locked_message(out, lock, wait)) from None
                time.sleep(min(0.1, left))
            except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without flock (some NFS setups)
                raise OSError(e.errno, f"cannot lock {lock} ({e.strerror}); the file system may not "
                              f"support flock: choose an output folder on a local disk") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race a new holder)


def _locked_message(out: Path, lock: Path, wait: float) -> str:
    try:
        pid = lock.read_text().strip() or "unknown"
    except OSError:
        pid = "unknown"
    waited = f", still after waiting {wait:g} s" if wait else ""
    return (f"output folder {out} is in use by another measure run (PID {pid}, lock {lock}){waited}; "
            f"let it finish, wait for it (wait=SECONDS, --wait SECONDS), or choose another output folder")


def _check_out_dir(out) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} exists and is not a folder (give a folder path)")
    return out


def measure_sets(x, y=None, *, metric: str = "mutual_knn", topk: int = 10, out_dir="alignment",
                 q: float = 0.95, exact: bool = False, concat: bool = False, backend: str = "auto",
                 progress: bool = True, wait: float = 0, allow_mismatched_samples: bool = False,
                 **metric_options) -> SweepResult:
    """Align every model of ``x`` with every model of ``y`` (``y=None``: ``x`` with itself).

    Parameters
    ----------
    x, y : path or list of paths
        Feature files (.safetensors written by :mod:`platonic_fast.features`, or the reference
        pipeline's .pt files) or folders of them. All must describe the same N samples.
    metric, topk, q, exact, concat, backend, **metric_options
        As :func:`platonic_fast.align`.
    out_dir : path
        Receives ``pairs/<sha256 of the pair's key>.json`` (one per finished pair),
        ``scores.json``, ``scores.npz`` and ``heatmap.png``, and the lock file ``.lock``.
    progress : bool
        Show a progress bar over model pairs.
    wait : float, default 0
        When another sweep holds ``out_dir``, wait up to this many seconds for it
        (``math.inf``: no limit); 0 stops at once.
    allow_mismatched_samples : bool, default False
        Pair files whose sample fingerprints differ (:func:`check_samples`); recorded in
        ``settings["allow_mismatched_samples"]``.

    Returns
    -------
    SweepResult

    Raises
    ------
    ValueError
        Missing or unreadable feature files (a features file whose data does not match its
        stored checksum included), mismatched N, bad metric options, ``out_dir`` is a file.
        :class:`~platonic_fast.features.SampleMismatchError` (a ValueError): files extracted from
        different samples or orders (their sample fingerprints differ), unless
        ``allow_mismatched_samples``.
    OutputFolderLocked
        Another sweep is writing to ``out_dir`` (and did not finish within ``wait`` seconds).

    Examples
    --------
    >>> res = measure_sets("feats/lang", "feats/vis", metric="mutual_knn", topk=10,
    ...                    out_dir="scores")                               # doctest: +SKIP
    >>> res.scores.shape, res.names_x                                      # doctest: +SKIP
    """
    files_x = feature_files(x)
    files_y = files_x if y is None else feature_files(y)
    same_set = y is None or [f.resolve() for f in files_x] == [f.resolve() for f in files_y]
    # A symmetric metric scores each unordered pair of a set against itself once.
    symmetric = same_set and metric_spec(metric).symmetric
    out = _check_out_dir(out_dir)
    check_samples([*files_x, *files_y], allow_mismatched_samples)
    settings = {"metric": metric, "topk": topk, "q": q, "exact": exact, "concat": concat,
                "options": {k: metric_options[k] for k in sorted(metric_options)},
                "allow_mismatched_samples": bool(allow_mismatched_samples)}
    with lock_folder(out, wait):
        return _sweep(files_x, files_y, symmetric, out, settings, backend, progress)


def _sweep(files_x, files_y, symmetric, out, settings, backend, progress) -> SweepResult:
    """The body of :func:`measure_sets`, run while holding the output folder's lock."""
    from . import __version__

    metric, topk, q, exact, concat = (settings[k] for k in ("metric", "topk", "q", "exact", "concat"))
    fingerprints = {f: file_fingerprint(f) for f in {*files_x, *files_y}}
    pairs = [(i, j) for i in range(len(files_x)) for j in range(len(files_y)) if not (symmetric and j < i)]
    cache: dict[Path, list] = {}  # prepared layer states per file, for this metric
    resolved: dict = {}  # metric options, validated against the first file loaded

    def states_of(path: Path) -> list:
        if path not in cache:
            layers = prepare_layers(_load_layers(path, fingerprints[path]), path.name, q=q, exact=exact,
                                    concat=concat)
            n = layers[0].shape[0]
            if not resolved:
                resolved["n"] = n
                resolved["opts"] = resolve_options(metric, n, [l.shape[1] for l in layers], topk=topk,
                                                   backend=backend, **settings["options"])
            elif n != resolved["n"]:
                raise ValueError(f"{path} has N={n} samples; the other feature files have N={resolved['n']}")
            cache[path] = prepare_states(layers, metric, resolved["opts"])
        return cache[path]

    records: dict[tuple[int, int], dict] = {}
    bar = tqdm(total=len(pairs), desc=f"measure {metric}", disable=not progress)
    for i, j in pairs:
        fx, fy = files_x[i], files_y[j]
        key = {"x": {"name": fx.stem, "fingerprint": fingerprints[fx]},
               "y": {"name": fy.stem, "fingerprint": fingerprints[fy]},
               "settings": settings, "version": __version__}
        record_path = out / "pairs" / f"{record_name(key)}.json"
        record = _read_record(record_path, key)
        if record is None:
            sx, sy = states_of(fx), states_of(fy)
            res = score_states(sx, sy, metric, resolved["opts"], concat=concat)
            record = {"key": key, "score": res.best,
                      "best_layers": list(res.best_layers) if res.best_layers else None,
                      "layer_scores": res.scores.tolist()}
            write_atomic(record_path, lambda tmp, r=record: Path(tmp).write_text(json.dumps(r)))
        records[(i, j)] = record
        bar.update()
    bar.close()

    scores = np.zeros((len(files_x), len(files_y)))
    best = np.full((len(files_x), len(files_y), 2), -2, dtype=np.int64)
    for (i, j), r in records.items():
        scores[i, j] = r["score"]
        if r["best_layers"] is not None:
            best[i, j] = r["best_layers"]
        if symmetric and i != j:  # the mirrored pair: same score, layers swapped
            scores[j, i] = r["score"]
            if r["best_layers"] is not None:
                best[j, i] = r["best_layers"][::-1]
    result = SweepResult([f.stem for f in files_x], [f.stem for f in files_y], scores, best, metric, settings,
                         fingerprints_x=[fingerprints[f] for f in files_x],
                         fingerprints_y=[fingerprints[f] for f in files_y])
    result.files = _write_summary(result, out)
    return result


def record_name(key: dict) -> str:
    """A pair record's file stem: the sha256 of its key (canonical JSON), so distinct keys never share a file."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_record(path: Path, key: dict) -> dict | None:
    """A finished pair's record, or None (then it is recomputed) when missing, unreadable, of
    another key (names, fingerprints, metric, options, version) or malformed."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    score, layers = record.get("score"), record.get("best_layers")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return None
    if layers is not None and not (isinstance(layers, list) and len(layers) == 2
                                   and all(type(v) is int for v in layers)):
        return None
    return record


def _write_summary(res: SweepResult, out: Path) -> dict:
    files = {"json": out / "scores.json", "npz": out / "scores.npz"}
    summary = {"metric": res.metric, "settings": res.settings, "models_x": res.names_x,
               "models_y": res.names_y, "fingerprints_x": res.fingerprints_x, "fingerprints_y": res.fingerprints_y,
               "scores": res.scores.tolist(), "best_layers": res.best_layers.tolist()}
    write_atomic(files["json"], lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))

    def save_npz(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, scores=res.scores, best_layers=res.best_layers,
                     models_x=np.array(res.names_x), models_y=np.array(res.names_y))

    write_atomic(files["npz"], save_npz)
    png = out / "heatmap.png"
    if _heatmap(res, png):
        files["png"] = png
    return files


def _heatmap(res: SweepResult, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mx, my = res.scores.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * my + 3), max(3.0, 0.5 * mx + 2)), constrained_layout=True)
    im = ax.imshow(res.scores, cmap="viridis", aspect="auto")
    ax.set_xticks(range(my), res.names_y, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(mx), res.names_x, fontsize=8)
    if mx * my <= 400:
        for i in range(mx):
            for j in range(my):
                ax.text(j, i, f"{res.scores[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if res.scores[i, j] < res.scores.mean() else "black")
    ax.set_title(f"{res.metric} (best layer pair per model pair)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return True
