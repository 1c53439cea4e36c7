"""The study's figures (matplotlib, Agg): one per finding, the alignment heat maps, the training losses."""

from __future__ import annotations

from pathlib import Path

from ..files import write_atomic

COLOURS = {"dense": "#1f77b4", "sparse": "#d62728", "dense+sparse": "#9467bd", "sine": "#2ca02c",
           "dense+sine": "#ff7f0e", "dense#2": "#17becf", "least_squares": "#555555", "lasso": "#8c564b",
           "ridge": "#bcbd22", "bayes_sparse": "#8c8c00", "knn3": "#7f7f7f", "averaging": "#e377c2", "zero": "#000000"}
BASELINE_STYLE = {"linestyle": "--", "linewidth": 1.2}


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the figures need matplotlib: pip install 'platonic_fast[icl]'") from exc
    return plt


def _save(fig, path: Path, title=None, **title_kw) -> Path:
    """The figure under its title (fig.suptitle, when given), written to path and closed."""
    if title is not None:
        fig.suptitle(title, **title_kw)
    plt = _plt()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _is_baseline(name):
    return name in ("least_squares", "lasso", "bayes_sparse", "ridge", "knn3", "averaging", "zero")


def _style(name):
    return BASELINE_STYLE if _is_baseline(name) else {"linewidth": 2}


def _curve(ax, x, c, name, band=True, **kw):
    """c: the "mean", "lo" and "hi" lists; the mean in name's colour and style, the band shaded."""
    ax.plot(x, c["mean"], color=COLOURS.get(name), **_style(name), **kw)
    if band:
        ax.fill_between(x, c["lo"], c["hi"], color=COLOURS.get(name), alpha=0.2, linewidth=0)


def _window_nse(rows, name):
    """name's late-window NSE over the rows, as a curve for _curve."""
    return {stat: [row["window_nse"][name][stat] for row in rows] for stat in ("mean", "lo", "hi")}


def study_figures(r: dict, out) -> list[Path]:
    out = Path(out)
    return [fig_training(r, out / "training.png"), fig_model_selection(r, out / "finding1_model_selection.png"),
            fig_sparsity(r, out / "finding2_sparsity.png"), fig_alpha(r, out / "finding3_alpha.png"),
            fig_frequency(r, out / "finding4_frequency.png"), fig_alignment(r, out / "bridge_alignment.png")]


def fig_training(r, path):
    fig, ax = _plt().subplots(figsize=(6, 3.6))
    logged = False
    for name, t in r["training"].items():
        if t["history"]:
            steps, loss = zip(*t["history"])
            # a short run logs a point or two (every log_every steps and the last): markers keep them visible
            ax.plot(steps, loss, label=f"{name} ({t['mixture']})", color=COLOURS.get(name),
                    marker="o" if len(steps) < 20 else None, markersize=4)
            logged = True
    if not logged:
        ax.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=ax.transAxes)
    steps_run = max((t.get("steps", 0) for t in r["training"].values()), default=0)
    if r.get("headline", {}).get("check", {}).get("tiny"):
        ax.text(0.02, 0.02, f"short run ({steps_run} steps): models untrained, findings withheld",
                transform=ax.transAxes, fontsize=8, color="#b00000")
    ax.set(yscale="log", xlabel="step", ylabel="training loss (NSE)", title="pretraining")
    if logged:
        ax.legend(fontsize=7)
    return _save(fig, path)


def fig_model_selection(r, path):
    ms = r["model_selection"]
    fig, axes = _plt().subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, t in zip(axes, ms["tasks"].values()):
        for name in ("dense", "sparse", "dense+sparse", "least_squares", "lasso", "bayes_sparse", "knn3", "averaging"):
            if name not in t["curves"]:   # studies from before the Bayes baseline
                continue
            c = t["curves"][name]
            label = f"{name} model" if not _is_baseline(name) else name
            _curve(ax, range(len(c["mean"])), c, name, band=not _is_baseline(name), label=label)
        ax.axhline(1, color="black", linewidth=0.6, linestyle=":")
        ax.set(ylim=(0, 1.3), xlabel="in-context examples", title=f"{t['task']} functions")
    axes[0].set_ylabel("normalised squared error (90% bootstrap band)")
    axes[1].legend(fontsize=7)
    return _save(fig, path, "Finding 1: the dense+sparse mixture model against the specialists and the baselines")


def fig_sparsity(r, path):
    s = r["sparsity"]
    ks = [row["k"] for row in s["rows"]]
    fig, axes = _plt().subplots(1, 2, figsize=(11, 4))
    for key, label, colour in (("to_dense", "mixture vs dense specialist", COLOURS["dense"]),
                               ("to_sparse", "mixture vs sparse specialist", COLOURS["sparse"]),
                               ("dense_to_sparse", "dense vs sparse specialist", "#999999")):
        mean = [row[key]["mean"] for row in s["rows"]]
        axes[0].errorbar(ks, mean, yerr=[[m - row[key]["lo"] for m, row in zip(mean, s["rows"])],
                                         [row[key]["hi"] - m for m, row in zip(mean, s["rows"])]],
                         label=label, color=colour, marker="o", capsize=3)
    axes[0].axvline(s["trained_k"], color="black", linestyle=":", linewidth=0.8)
    axes[0].set(xlabel="non-zero coefficients k", ylabel="mean squared prediction distance",
                title="distance between predictions (1..d-1 examples)")
    axes[0].legend(fontsize=7)
    for name in ("dense", "sparse", "dense+sparse", "least_squares"):
        axes[1].plot(ks, [row["window_nse"][name]["mean"] for row in s["rows"]], marker="o",
                     color=COLOURS[name], label=name, **(BASELINE_STYLE if _is_baseline(name) else {}))
    axes[1].set(xlabel="non-zero coefficients k", ylabel="mean NSE, 1..d-1 examples",
                title="error on sparse(k) functions")
    axes[1].legend(fontsize=7)
    return _save(fig, path, "Finding 2: intermediate sparsity (dotted: the pretraining k)")


def fig_alpha(r, path):
    rows = r["alpha"]["rows"]
    alphas = [row["alpha"] for row in rows]
    fig, axes = _plt().subplots(1, 2, figsize=(11, 4))
    for name in ("dense", "sine", "dense+sine", "least_squares", "ridge", "knn3"):
        _curve(axes[0], alphas, _window_nse(rows, name), name, marker="o", label=name)
        axes[1].plot(alphas, [row["share_above_1"][name] for row in rows], marker="o", label=name,
                     color=COLOURS[name], **_style(name))
    axes[0].set(xlabel="alpha (1: linear, 0: sinusoid)", ylabel="mean NSE, late window", ylim=(0, 1.6),
                title="error on alpha*linear + (1-alpha)*sinusoid")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="alpha", ylabel="share of sequences with NSE > 1", title="instability: worse than predicting 0")
    return _save(fig, path, "Finding 3: convex combinations of the two pretraining classes")


def fig_frequency(r, path):
    f = r["frequency"]
    om = [row["omega"] for row in f["rows"]]
    fig, ax = _plt().subplots(figsize=(6.5, 4))
    ax.axvspan(f["range"][0], f["range"][1], color="#dddddd", label="pretraining range")
    for name in ("sine", "dense+sine", "dense", "knn3", "ridge", "least_squares"):
        _curve(ax, om, _window_nse(f["rows"], name), name, marker="o", label=name)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(om, [f"{w:g}" for w in om], fontsize=8)
    ax.set(ylim=(0, 1.6), xlabel="frequency omega", ylabel="mean NSE, late window",
           title="Finding 4: sinusoids inside and outside the pretraining frequencies")
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_alignment(r, path):
    b = r["bridge"]
    names = b["models"]
    metrics = list(b["metrics"])
    views = [("metrics", "best", "all positions, best block pair"),
             ("metrics", "last_layer", "all positions, last layer"),
             ("final_position", "best", "final position, best block pair")]
    views = [v for v in views if v[0] in b]
    fig, axes = _plt().subplots(len(metrics), len(views), figsize=(5.8 * len(views), 5.4 * len(metrics)),
                                squeeze=False, layout="constrained")
    for row, metric in enumerate(metrics):
        for col, (source, key, label) in enumerate(views):
            m = b[source][metric]
            ax = axes[row][col]
            mat = [[1.0 if i == j else m[key][i][j] for j in range(len(names))] for i in range(len(names))]
            im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
            for i in range(len(names)):
                for j in range(len(names)):
                    if i != j:
                        p = m["p_value"][i][j] if key == "best" else float("nan")
                        star = "*" if p == p and p <= 0.05 else ""
                        ax.text(j, i, f"{mat[i][j]:.2f}{star}", ha="center", va="center", fontsize=7,
                                color="white" if mat[i][j] < 0.5 else "black")
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            chance = f", chance {m['chance']:.3f}" if m["chance"] is not None else ""
            ax.set_title(f"{metric} (topk={b['topk']}), {label}\nN={m.get('samples', b['samples'])}{chance}",
                         fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, f"Alignment of the in-context learners on one bank of {b['sequences']} sequences "
                 f"(* best pair p <= 0.05 against {b['permutations']} permutations)", fontsize=10)


def fig_convergence(res: dict, path) -> Path:
    """Competence against alignment: to the truth (hidden states raw and calibrated, predictions),
    and between runs (pairs of checkpoints of different runs, against their mean NSE)."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    rows = res["family"]["rows"]
    runs = sorted({r["run"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("hidden_truth", "hidden states → truth (raw)"),
              ("hidden_truth_calibrated", "hidden states → truth (calibrated)"))
    for ax, (key, title) in zip(axes[:2], panels):
        for run in runs:
            rr = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
            base = run.split("/")[-1]
            style = "--" if "deep" in run else "-"
            ax.plot([r["nse"] for r in rr], [r[key] if r[key] is not None else float("nan") for r in rr],
                    style, marker="o", markersize=3, color=COLOURS.get(base), label=run)
            ax.plot([r["nse"] for r in rr], [r["predictions_truth"] for r in rr], style, marker="x", markersize=3,
                    color=COLOURS.get(base), alpha=0.35)
        ax.set_title(f"{title}\n(x, faint: predictions → truth, raw)", fontsize=9)
    ax = axes[2]
    pairs = res["family"]["alignment"]["pairs"]
    nse = {r["label"]: r["nse"] for r in rows}
    run_of = {r["label"]: r["run"] for r in rows}
    for kind, marker, colour in (("hidden", "o", "#1f77b4"), ("predictions", "x", "#d62728")):
        xs, ys = [], []
        for key, p in pairs.items():
            a, b = key.split("|")
            if run_of[a] != run_of[b]:
                xs.append((nse[a] + nse[b]) / 2)
                ys.append(p[kind]["best"])
        ax.scatter(xs, ys, s=6, marker=marker, color=colour, alpha=0.5, label=kind)
    ax.set_title("between runs: pairs of checkpoints (raw)", fontsize=9)
    ax.set_xlabel("mean NSE of the pair at the query")
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())   # the log axis's minor labels overlap
        ax.invert_xaxis()   # competence grows to the right
        ax.set_ylabel(f"{res['family']['alignment']['metric']} (best block)")
    axes[0].set_xlabel("NSE at the query (more competent →)")
    axes[1].set_xlabel("NSE at the query (more competent →)")
    axes[0].legend(fontsize=6)
    axes[2].legend(fontsize=7)
    return _save(fig, Path(path))
