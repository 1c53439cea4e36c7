"""Model-set sweeps: every model of one set against every model of another.

This is the paper's measurement loop (``measure_alignment.py`` in the reference): for each pair
of models, the best layer pair and its score. Each model's layers are clamped, normalised and
prepared once (neighbour lists, kernel statistics, ...) and reused against every other model.
Every finished pair is written atomically to ``<out>/pairs/``; a sweep that is interrupted and
started again with the same settings resumes where it stopped, and gives the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .align import prepare_layers, prepare_states, resolve_options, score_states
from .files import write_atomic
from .metrics import metric_spec

FEATURE_SUFFIXES = (".safetensors", ".pt")


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
    files : dict[str, Path]
        The written ``scores.json``, ``scores.npz`` and (with matplotlib) ``heatmap.png``.
    """

    names_x: list[str]
    names_y: list[str]
    scores: np.ndarray
    best_layers: np.ndarray
    metric: str
    settings: dict
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


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _load_layers(path: Path):
    from .features import load

    return load(path, mmap=True).layers


def measure_sets(x, y=None, *, metric: str = "mutual_knn", topk: int = 10, out_dir="alignment",
                 q: float = 0.95, exact: bool = False, concat: bool = False, backend: str = "auto",
                 progress: bool = True, **metric_options) -> SweepResult:
    """Align every model of ``x`` with every model of ``y`` (``y=None``: ``x`` with itself).

    Parameters
    ----------
    x, y : path or list of paths
        Feature files (.safetensors written by :mod:`platonic_fast.features`, or the reference
        pipeline's .pt files) or folders of them. All must describe the same N samples.
    metric, topk, q, exact, concat, backend, **metric_options
        As :func:`platonic_fast.align`.
    out_dir : path
        Receives ``pairs/<x>__<y>.json`` (one per finished pair), ``scores.json``,
        ``scores.npz`` and ``heatmap.png``.
    progress : bool
        Show a progress bar over model pairs.

    Returns
    -------
    SweepResult

    Raises
    ------
    ValueError
        Missing or unreadable feature files, mismatched N, bad metric options.
    """
    files_x = feature_files(x)
    files_y = files_x if y is None else feature_files(y)
    same_set = y is None or [f.resolve() for f in files_x] == [f.resolve() for f in files_y]
    # A symmetric metric scores each unordered pair of a set against itself once.
    symmetric = same_set and metric_spec(metric).symmetric
    out = Path(out_dir)
    settings = {"metric": metric, "topk": topk, "q": q, "exact": exact, "concat": concat,
                "options": {k: metric_options[k] for k in sorted(metric_options)}}

    pairs = [(i, j) for i in range(len(files_x)) for j in range(len(files_y)) if not (symmetric and j < i)]
    cache: dict[Path, list] = {}  # prepared layer states per file, for this metric
    resolved: dict = {}  # metric options, validated against the first file loaded

    def states_of(path: Path) -> list:
        if path not in cache:
            layers = prepare_layers(_load_layers(path), path.name, q=q, exact=exact, concat=concat)
            n = layers[0].shape[0]
            if not resolved:
                resolved["n"] = n
                resolved["opts"] = resolve_options(metric, n, [l.shape[1] for l in layers], topk=topk,
                                                   backend=backend, **metric_options)
            elif n != resolved["n"]:
                raise ValueError(f"{path} has N={n} samples; the other feature files have N={resolved['n']}")
            cache[path] = prepare_states(layers, metric, resolved["opts"])
        return cache[path]

    records: dict[tuple[int, int], dict] = {}
    bar = tqdm(total=len(pairs), desc=f"measure {metric}", disable=not progress)
    for i, j in pairs:
        fx, fy = files_x[i], files_y[j]
        record_path = out / "pairs" / f"{fx.stem}__{fy.stem}.json"
        fingerprints = {"x": _fingerprint(fx), "y": _fingerprint(fy)}
        record = _read_record(record_path)
        if record is None or record.get("settings") != settings or record.get("fingerprints") != fingerprints:
            sx, sy = states_of(fx), states_of(fy)
            res = score_states(sx, sy, metric, resolved["opts"], concat=concat)
            record = {"x": fx.stem, "y": fy.stem, "settings": settings, "fingerprints": fingerprints,
                      "score": res.best, "best_layers": list(res.best_layers) if res.best_layers else None,
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
    result = SweepResult([f.stem for f in files_x], [f.stem for f in files_y], scores, best, metric, settings)
    result.files = _write_summary(result, out)
    return result


def _read_record(path: Path) -> dict | None:
    """A finished pair's record, or None when missing or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_summary(res: SweepResult, out: Path) -> dict:
    files = {"json": out / "scores.json", "npz": out / "scores.npz"}
    summary = {"metric": res.metric, "settings": res.settings, "models_x": res.names_x,
               "models_y": res.names_y, "scores": res.scores.tolist(), "best_layers": res.best_layers.tolist()}
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
