"""The built-in offline demo: two synthetic "models" that see one synthetic world.

A latent world (N samples of a 16-dimensional mixture) is observed by two random deep networks
with different widths and depths. Every layer mixes what it knows of the world with
model-specific noise, and deeper layers keep more of the world. Aligning every layer pair with
mutual kNN, CKNNA and unbiased CKA shows the convergence the Platonic Representation Hypothesis
is about: deep layers of the two models agree far more than shallow ones.

Runs offline in seconds on a CPU; writes scores as JSON and, when matplotlib is installed, a
heat map PNG.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from .align import align


def synthetic_model(world: torch.Tensor, layers: int, width: int, seed: int) -> torch.Tensor:
    """N x layers x width features of a random network whose depth l keeps a share l/layers of the world."""
    g = torch.Generator().manual_seed(seed)
    n, dim = world.shape
    embed = torch.randn(dim, width, generator=g) / dim**0.5
    out = []
    for depth in range(1, layers + 1):
        share = depth / layers
        noise = torch.randn(n, width, generator=g)
        mix = torch.randn(width, width, generator=g) / width**0.5
        h = share * (world @ embed) * 3 + (1 - share) * noise
        out.append(torch.tanh(h @ mix))
    return torch.stack(out, dim=1)


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _heatmaps(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), constrained_layout=True)
    for ax, (metric, res) in zip(axes, results.items()):
        im = ax.imshow(res.scores.numpy(), origin="lower", cmap="viridis", aspect="auto")
        i, j = res.best_layers if res.best_layers else (None, None)
        if i is not None:
            ax.plot(j, i, marker="*", color="red", markersize=14)
        ax.set_title(f"{metric}  (best {res.best:.3f})")
        ax.set_xlabel("model B layer")
        ax.set_ylabel("model A layer")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle("Layer-pair alignment of two synthetic models of one world")
    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return True


def _text_heatmap(scores: torch.Tensor) -> str:
    shades = " .:-=+*#%@"
    lo, hi = float(scores.min()), float(scores.max())
    rows = []
    for i in range(scores.shape[0] - 1, -1, -1):
        cells = "".join(shades[min(9, int(9 * (float(s) - lo) / max(hi - lo, 1e-12)))] * 2 for s in scores[i])
        rows.append(f"    A{i:<2d} {cells}")
    return "\n".join(rows)


def run(n: int = 4000, out_dir: str | Path = "platonic_fast_demo", topk: int = 10, seed: int = 0) -> dict:
    """Run the demo and return {metric: AlignResult}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(24, 16, generator=g) * 2
    world = centres[torch.randint(0, 24, (n,), generator=g)] + 0.6 * torch.randn(n, 16, generator=g)
    model_a = synthetic_model(world, layers=12, width=384, seed=seed + 1)
    model_b = synthetic_model(world, layers=8, width=256, seed=seed + 2)
    print(f"platonic_fast demo: N={n} samples, model A 12 layers x 384, model B 8 layers x 256, k={topk}")

    results, timings = {}, {}
    for metric in ("mutual_knn", "cknna", "unbiased_cka"):
        t0 = time.perf_counter()
        results[metric] = align(model_a, model_b, metric, topk=topk)
        timings[metric] = time.perf_counter() - t0
        res = results[metric]
        print(f"\n{metric}: {res.scores.numel()} layer pairs in {timings[metric]:.2f} s; "
              f"best {res.best:.4f} at layers {res.best_layers}; shallowest pair {float(res.scores[0, 0]):.4f}")
        print(_text_heatmap(res.scores))

    record = {
        "n": n,
        "topk": topk,
        "seed": seed,
        "metrics": {
            m: {"scores": r.scores.tolist(), "best": r.best, "best_layers": r.best_layers, "seconds": timings[m]}
            for m, r in results.items()
        },
    }
    json_path = out / "demo_scores.json"
    _write_atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    png_path = out / "demo_heatmaps.png"
    drew = _heatmaps(results, png_path)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if drew else " (install matplotlib for the heat-map PNG)"))
    return results
