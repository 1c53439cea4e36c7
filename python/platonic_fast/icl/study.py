"""The study: train every model the findings need, evaluate the four findings, align the models.

(Over 600 lines because the four findings, their windows and the alignment bridge are defined
together: each finding's number must be read beside the window it averages.)

Windows (where a finding's number averages the error curve)
    ``under``: 1 to d − 1 in-context examples, where a linear function is not yet determined and
    least squares, the Lasso and the models differ (from d examples on, noise-free least squares is
    exact). Findings 1 and 2.
    ``late``: from n/2 examples to the last, where the specialists have settled. Findings 3 and 4.
Finding 1 (model selection)
    Dense and sparse tasks; the three linear models (``dense``, ``sparse``, ``dense+sparse``)
    against every baseline. The number: each predictor's mean NSE in ``under``, and the mixture's
    paired excess over the matching specialist, with 90% bootstrap intervals.
Finding 2 (intermediate sparsity)
    Tasks sparse(k) for k = 1..d. The distance of the mixture's predictions to each specialist's,
    D = mean (p_mix − p_spec)² over ``under``, and where the mixture sits between them:
    r = D_sparse / (D_sparse + D_dense) (0: on the sparse specialist, 1: on the dense one).
Finding 3 (convex combinations)
    combo(α) for α = 0, 0.1, …, 1; the models ``dense``, ``sine``, ``dense+sine``; least squares and
    3-NN. The number: mean NSE in ``late`` per α, and the share of sequences whose NSE exceeds 1
    (worse than predicting 0), a measure of instability.
Finding 4 (frequencies)
    sine(ω, ω) for ω across, below and above the pretraining range; the models ``sine``,
    ``dense+sine``, ``dense``; 3-NN and least squares. The number: mean NSE in ``late`` inside the
    range and outside it.
Bridge (alignment)
    One shared bank (1/3 dense, 1/3 sparse, 1/3 sine; ``bank_sequences`` sequences), every
    model's hidden states at every x position, every layer (N = sequences × points samples); an
    untrained model of the same shape as a floor. ``pf.align`` for every pair with mutual kNN and
    CKNNA (topk), calibrated with ``permutations`` row permutations, over the blocks' outputs
    (layer 0, the embedding of the x token, is scored apart: it encodes x alike in every model): the
    best block pair's score, the last layer against the last layer, p-values and calibrated scores.
    The same again on the final x position of every sequence alone (N = sequences), where no two
    samples differ only in their position, so that position codes cannot make unrelated models
    look alike. Then: pairs whose pretraining mixtures share a class against pairs that share none
    (and the Spearman correlation with the classes' Jaccard overlap); alignment against the
    agreement of the two models' predictions and against each model's in-context error on the bank.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..files import write_atomic
from . import evaluate as ev
from .model import InContextModel
from .presets import Preset, get_preset
from .tasks import SINE_HI, SINE_LO, parse_mixture
from .train import load_model, read_checkpoint, train

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
FREQUENCIES = (0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
METRICS = ("mutual_knn", "cknna")


# --- training -----------------------------------------------------------------------------------

def _train_one(job) -> dict:
    preset, name, mixture, seed, run_dir, device, threads, progress, position = job
    cfg = preset.train_config(mixture, seed)
    res = train(preset.model, cfg, run_dir, device=device, threads=threads, progress=progress,
                desc=f"{name:>13}", position=position)
    return {"name": name, "seconds": res.seconds, "resumed_from": res.resumed_from, "step": res.step}


def train_all(preset: Preset, runs: Path, *, jobs: int = 1, device=None, threads=None, progress=True) -> dict:
    """Train (or resume, or skip when complete) every model of the preset; ``jobs`` processes."""
    todo, done = [], {}
    for name, mixture, seed in preset.models:
        run_dir = runs / name
        ckpt = run_dir / "checkpoint.safetensors"
        if ckpt.exists():
            _, meta = read_checkpoint(ckpt)
            if meta.get("complete") == "1" and json.loads(meta["train_config"])["steps"] == preset.train.steps:
                done[name] = {"name": name, "seconds": 0.0, "resumed_from": preset.train.steps,
                              "step": preset.train.steps}
                continue
        todo.append((preset, name, mixture, seed, run_dir, device, threads, progress, len(todo) % max(jobs, 1)))
    if jobs <= 1 or len(todo) <= 1:
        for job in todo:
            done[job[1]] = _train_one(job)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            for out in pool.map(_train_one, todo):
                done[out["name"]] = out
    return done


# --- evaluation helpers -------------------------------------------------------------------------

def _windows(d: int, n: int) -> dict:
    return {"under": list(range(1, min(d, n))), "late": list(range(n // 2, n))}


def _window_values(err: torch.Tensor, positions) -> torch.Tensor:
    """One value per sequence: the mean of its errors over the window's positions."""
    return err[:, positions].mean(1)


def evaluate_task(models: dict, task: str, preset: Preset, baselines=(), *, count=None, seed=0) -> dict:
    """Predictions of every model and baseline on the task's fixed bank: {'ys', 'preds': {name: (S, n)}}."""
    cfg = preset.model
    xs, ys = ev.eval_sequences(task, cfg.d, cfg.n_points, count=count or preset.eval_count, seed=seed)
    preds = {name: ev.predict(m, xs, ys).double() for name, m in models.items()}
    scale = parse_mixture(task).output_variance(cfg.d)
    if baselines:   # bayes_sparse's prior: the trained k, at the task's scale
        base = ev.baselines(xs, ys, names=baselines, sparse_k=preset.sparse_k,
                            prior_var=None if scale == 1.0 else 1.0)
        preds.update({k: v for k, v in base.items() if isinstance(v, torch.Tensor)})
    if scale != 1.0:   # unnormalised targets (raw=1): errors in units of the task's output variance
        ys = ys / math.sqrt(scale)
        preds = {k: v / math.sqrt(scale) for k, v in preds.items()}
    return {"xs": xs, "ys": ys, "preds": preds, "output_variance": scale}


def _summaries(ev_out: dict, positions, names, idx) -> dict:
    ys = ev_out["ys"]
    out = {}
    for name in names:
        err = ev.squared_errors(ev_out["preds"][name], ys)
        out[name] = ev.summary(_window_values(err, positions), idx=idx)
    return out


def _curves(ev_out: dict, names, idx) -> dict:
    ys = ev_out["ys"]
    return {name: ev.curve(ev.squared_errors(ev_out["preds"][name], ys), idx=idx) for name in names}


# --- the findings -------------------------------------------------------------------------------

def finding_model_selection(models: dict, preset: Preset, log=print) -> dict:
    d, n = preset.model.d, preset.model.n_points
    win = _windows(d, n)["under"]
    k = preset.sparse_k
    mine = ["dense", "sparse", "dense+sparse"]
    base = ("least_squares", "lasso", "bayes_sparse", "ridge", "knn3", "averaging", "zero")
    out = {"window_examples": win, "tasks": {}}
    for task_name, task, specialist, other in (("dense", "dense", "dense", "sparse"),
                                              ("sparse", f"sparse(k={k})", "sparse", "dense")):
        t0 = time.perf_counter()
        res = evaluate_task({m: models[m] for m in mine}, task, preset, baselines=base)
        idx = ev.bootstrap_indices(res["ys"].shape[0])
        names = mine + list(base)
        ys = res["ys"]
        err = {m: _window_values(ev.squared_errors(res["preds"][m], ys), win) for m in mine}
        out["tasks"][task_name] = {
            "task": task,
            "curves": _curves(res, names, idx),
            "window_nse": _summaries(res, win, names, idx),
            "mixture_minus_specialist": ev.summary(err["dense+sparse"] - err[specialist], idx=idx),
            "mixture_minus_other": ev.summary(err["dense+sparse"] - err[other], idx=idx),
            "specialist": specialist,
        }
        w = out["tasks"][task_name]["window_nse"]
        log(f"  finding 1, {task}: mean NSE over 1..{d - 1} examples: "
            + ", ".join(f"{m} {w[m]['mean']:.3f}" for m in names[:6]) + f"  ({time.perf_counter() - t0:.0f} s)")
    return out


def finding_sparsity(models: dict, preset: Preset, log=print) -> dict:
    d, n = preset.model.d, preset.model.n_points
    win = _windows(d, n)["under"]
    rows = []
    for k in range(1, d + 1):
        res = evaluate_task({m: models[m] for m in ("dense", "sparse", "dense+sparse")}, f"sparse(k={k})", preset,
                            baselines=("least_squares",))
        idx = ev.bootstrap_indices(res["ys"].shape[0])
        p = res["preds"]

        d_dense = _distance(p, "dense+sparse", "dense", win, idx)
        d_sparse = _distance(p, "dense+sparse", "sparse", win, idx)
        row = {"k": k, "to_dense": d_dense, "to_sparse": d_sparse,
               "dense_to_sparse": _distance(p, "dense", "sparse", win, idx),
               "position": d_sparse["mean"] / max(d_sparse["mean"] + d_dense["mean"], 1e-300),
               "window_nse": _summaries(res, win, ["dense", "sparse", "dense+sparse", "least_squares"], idx)}
        rows.append(row)
        log(f"  finding 2, k={k}: D(mix, dense) {d_dense['mean']:.4f}, D(mix, sparse) {d_sparse['mean']:.4f}, "
            f"position {row['position']:.2f}")
    return {"window_examples": win, "rows": rows, "trained_k": preset.sparse_k}


def _distance(preds, a, b, win, idx) -> dict:
    """Mean squared distance between two predictors' predictions over the window, with its interval."""
    return ev.summary(_window_values((preds[a] - preds[b]).pow(2), win), idx=idx)


def finding_alpha(models: dict, preset: Preset, log=print, *, model_names=("dense", "sine", "dense+sine"),
                  alphas=ALPHAS) -> dict:
    d, n = preset.model.d, preset.model.n_points
    win = _windows(d, n)["late"]
    names = [*model_names, "least_squares", "ridge", "knn3"]
    k = len(model_names)
    rows = []
    for a in alphas:
        task = f"combo(alpha={a})"
        res = evaluate_task({m: models[m] for m in names[:k]}, task, preset,
                            baselines=("least_squares", "ridge", "knn3"))
        idx = ev.bootstrap_indices(res["ys"].shape[0])
        summ = _summaries(res, win, names, idx)
        unstable = {m: float((_window_values(ev.squared_errors(res["preds"][m], res["ys"]), win) > 1).double()
                             .mean()) for m in names}
        rows.append({"alpha": a, "task": task, "window_nse": summ, "share_above_1": unstable,
                     "curves": _curves(res, names[:k], idx)})
        log(f"  finding 3, alpha={a}: " + ", ".join(f"{m} {summ[m]['mean']:.3f}" for m in names))
    return {"window_examples": win, "rows": rows}


def finding_frequency(models: dict, preset: Preset, log=print, *, model_names=("sine", "dense+sine", "dense"),
                      frequencies=FREQUENCIES) -> dict:
    d, n = preset.model.d, preset.model.n_points
    win = _windows(d, n)["late"]
    names = [*model_names, "knn3", "ridge", "least_squares"]
    rows = []
    for w in frequencies:
        task = f"sine(lo={w},hi={w})"
        res = evaluate_task({m: models[m] for m in names[:len(model_names)]}, task, preset,
                            baselines=("knn3", "ridge", "least_squares"))
        idx = ev.bootstrap_indices(res["ys"].shape[0])
        summ = _summaries(res, win, names, idx)
        rows.append({"omega": w, "inside": SINE_LO <= w <= SINE_HI, "window_nse": summ})
        log(f"  finding 4, omega={w}: " + ", ".join(f"{m} {summ[m]['mean']:.3f}" for m in names))
    groups = {}
    for m in names:
        groups[m] = {g: _mean([r["window_nse"][m]["mean"] for r in rows if sel(r["omega"])])
                     for g, sel in (("below", lambda w: w < SINE_LO), ("inside", lambda w: SINE_LO <= w <= SINE_HI),
                                    ("above", lambda w: w > SINE_HI))}
    return {"window_examples": win, "range": [SINE_LO, SINE_HI], "rows": rows, "groups": groups}


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# --- controls for findings 3 and 4 (issue 21, item 3) ---------------------------------------------

# the linear/sine mixture is competent at an end of the α range when its late-window NSE is within
# this much of the matching specialist's (absolute) or within this factor of it
COMPETENCE_SLACK, COMPETENCE_FACTOR = 0.02, 1.25


def controls(models: dict, preset: Preset, log=print) -> dict:
    """Finding 3's competence check and combination model, finding 4's second frequency range.

    ``models`` needs ``dense``, ``sine``, ``dense+sine``, ``combos`` (pretrained on the
    combinations themselves) and ``sine-hi`` (ω in [2, 4]). Competence: the mixture at α = 1
    against ``dense`` and at α = 0 against ``sine`` (late window); until it passes both, its
    behaviour in between is no evidence. Finding 4: both sine models across the frequencies of
    both ranges: if ``sine-hi`` predicts well where ``sine`` fails, the failure is about
    pretraining coverage, not about those frequencies being harder to predict."""
    alpha = finding_alpha(models, preset, log, model_names=("dense", "sine", "dense+sine", "combos"))
    ends = {r["alpha"]: r["window_nse"] for r in alpha["rows"] if r["alpha"] in (0.0, 1.0)}
    competence = {}
    for a, specialist in ((1.0, "dense"), (0.0, "sine")):
        mix, spec = ends[a]["dense+sine"]["mean"], ends[a][specialist]["mean"]
        competence[f"alpha={a:g}"] = {"mixture": mix, "specialist": specialist, "specialist_nse": spec,
                                      "competent": bool(mix <= spec + COMPETENCE_SLACK
                                                        or mix <= COMPETENCE_FACTOR * spec)}
    freqs = tuple(sorted(set(FREQUENCIES) | {2.5, 3.5}))
    freq = finding_frequency(models, preset, log, model_names=("sine", "sine-hi"), frequencies=freqs)
    return {"alpha": alpha, "mixture_competence": competence,
            "mixture_competent": all(c["competent"] for c in competence.values()), "frequency": freq,
            "criterion": f"competent: NSE <= specialist + {COMPETENCE_SLACK} or <= {COMPETENCE_FACTOR} x specialist"}


# --- findings 1 and 2 over training seeds (the fair preset) --------------------------------------

def seed_interval(values, level: float = 0.9) -> dict:
    """Mean over training seeds with a Student-t interval (scipy); the seed is the larger source of
    variance, so these are the intervals that a claim about the recipe needs."""
    from scipy.stats import t as student

    v = torch.tensor(list(values), dtype=torch.float64)
    n = v.numel()
    if n < 2:
        return {"mean": float(v.mean()) if n else float("nan"), "lo": float("nan"), "hi": float("nan"), "seeds": n,
                "level": level}
    half = float(student.ppf((1 + level) / 2, n - 1)) * float(v.std(unbiased=True)) / math.sqrt(n)
    return {"mean": float(v.mean()), "lo": float(v.mean()) - half, "hi": float(v.mean()) + half, "seeds": n,
            "level": level}


def fair_findings(root="results/icl-fair", *, preset="fair", eval_count: int | None = None, log=print) -> dict:
    """Findings 1 and 2 for every complete replica set (dense, sparse, dense+sparse with the same
    ``@R``) under ``root``, and their means over sets with seed intervals."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if eval_count is not None:
        p = replace(p, eval_count=eval_count)
    root = Path(root)
    names = ("dense", "sparse", "dense+sparse")
    sets, steps = [], {}
    for r in range(0, 100):
        runs = [name if r == 0 else f"{name}@{r}" for name in names]
        if not all((root / run / "checkpoint.safetensors").exists() for run in runs):
            if r > 0:
                break
            raise ValueError(f"{root} lacks a checkpoint of {', '.join(runs)}")
        models = {}
        for name, run in zip(names, runs):
            models[name], info = load_model(root / run)
            steps[run] = info["step"]
        log(f"replica {r}: steps " + ", ".join(f"{run} {steps[run]}" for run in runs))
        sets.append({"replica": r, "f1": finding_model_selection(models, p, log=log),
                     "f2": finding_sparsity(models, p, log=log)})
    over = {}
    for task in ("dense", "sparse"):
        keys = sets[0]["f1"]["tasks"][task]["window_nse"]
        over[f"f1_{task}"] = {m: seed_interval(s["f1"]["tasks"][task]["window_nse"][m]["mean"] for s in sets)
                              for m in keys}
        over[f"f1_{task}_mixture_minus_specialist"] = seed_interval(
            s["f1"]["tasks"][task]["mixture_minus_specialist"]["mean"] for s in sets)
    over["f2_position"] = {row["k"]: seed_interval(s["f2"]["rows"][i]["position"] for s in sets)
                           for i, row in enumerate(sets[0]["f2"]["rows"])}
    return {"root": str(root), "steps": steps, "replicas": sets, "over_seeds": over}


# --- the gate (issue 21) ------------------------------------------------------------------------

def sparse_gate(checkpoint, *, count: int = 512, share: float = 0.5, seed: int = 1, device=None) -> dict:
    """Has a sparse specialist learned its class? On its own sparse(k) task, over 1..d−1 examples,
    it must beat least squares by at least ``share`` of the Lasso's gain over least squares:
    NSE(LS) − NSE(model) >= share · (NSE(LS) − NSE(Lasso)). The evaluation bank is drawn with
    ``seed`` (1: apart from the findings' bank, seed 0), ``count`` sequences; the interval is a
    paired 90% bootstrap of the margin (LS − model) − share · (LS − Lasso) over sequences.
    The exact Bayes posterior mean is reported beside (the floor no predictor can beat)."""
    model, info = load_model(checkpoint, device=device)
    cfg = info["model_config"]
    classes = parse_mixture(info["train_config"].mixture).classes
    sparse = [c for c in classes if c.name == "sparse"]
    if not sparse:
        raise ValueError(f"{checkpoint}: the gate is for a sparse specialist; this model was trained on "
                         f"{info['train_config'].mixture}")
    k = sparse[0].param("k")
    task = sparse[0].spec               # sparse(k=K), or sparse(k=K,raw=1) for unnormalised targets
    win = _windows(cfg.d, cfg.n_points)["under"]
    xs, ys = ev.eval_sequences(task, cfg.d, cfg.n_points, count=count, seed=seed)
    scale = parse_mixture(task).output_variance(cfg.d)
    preds = {"model": ev.predict(model, xs, ys).double()}
    base = ev.baselines(xs, ys, names=("least_squares", "lasso", "bayes_sparse"), sparse_k=k,
                        prior_var=None if scale == 1.0 else 1.0)
    preds.update({name: v for name, v in base.items() if isinstance(v, torch.Tensor)})
    err = {m: _window_values(ev.squared_errors(p, ys), win) / scale for m, p in preds.items()}
    idx = ev.bootstrap_indices(count)
    nse = {m: ev.summary(v, idx=idx) for m, v in err.items() if "[" not in m}   # not each penalty
    gap = nse["least_squares"]["mean"] - nse["lasso"]["mean"]
    margin = nse["least_squares"]["mean"] - nse["model"]["mean"]
    excess = ev.summary((err["least_squares"] - err["model"]) - share * (err["least_squares"] - err["lasso"]), idx=idx)
    return {"checkpoint": str(checkpoint), "step": info["step"], "task": task, "window_examples": win,
            "count": count, "nse": nse, "lasso_gap": gap, "model_gain": margin, "share": share,
            "required_gain": share * gap, "margin_minus_required": excess, "passed": bool(margin >= share * gap)}


def format_gate(g: dict) -> str:
    n = g["nse"]
    e = g["margin_minus_required"]
    return (f"gate at step {g['step']} ({g['checkpoint']}): {g['task']}, mean NSE over "
            f"{g['window_examples'][0]}..{g['window_examples'][-1]} examples ({g['count']} sequences): model "
            f"{n['model']['mean']:.3f}, least squares {n['least_squares']['mean']:.3f}, "
            f"Lasso {n['lasso']['mean']:.3f}, "
            f"Bayes {n['bayes_sparse']['mean']:.3f}; the model's gain over least squares {g['model_gain']:+.3f}, "
            f"required {g['share']:g} x Lasso gap {g['lasso_gap']:.3f} = {g['required_gain']:.3f} "
            f"(excess {e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]): {'PASS' if g['passed'] else 'FAIL'}")


# --- the bridge ---------------------------------------------------------------------------------

def bank_spec(preset: Preset) -> str:
    third = 1 / 3
    return f"{third!r}*dense + {third!r}*sparse(k={preset.sparse_k}) + {third!r}*sine(lo={SINE_LO},hi={SINE_HI})"


def classes_of(mixture: str) -> set:
    return {c.name for c in parse_mixture(mixture).classes} if mixture else set()


def bridge(models: dict, mixtures: dict, preset: Preset, *, bank: str | None = None, sequences: int | None = None,
           metrics=METRICS, topk: int | None = None, permutations: int | None = None, seed: int = 0,
           log=print) -> dict:
    """Align every pair of models on one bank of sequences (see the module's docstring)."""
    import platonic_fast as pf

    cfg = preset.model
    bank = bank or bank_spec(preset)
    sequences = sequences or preset.bank_sequences
    topk = topk or preset.topk
    permutations = preset.permutations if permutations is None else permutations
    mix = parse_mixture(bank)
    mix.check(cfg.d)
    gen = torch.Generator().manual_seed(20231101 + seed)
    xs, ys, which = mix.sample(sequences, cfg.n_points, cfg.d, gen)
    names = list(models)
    feats, preds = {}, {}
    for name in names:
        h = ev.hidden_states(models[name], xs, ys)                 # (S, n, L+1, W)
        feats[name] = h.reshape(-1, h.shape[2], h.shape[3])          # (S·n, L+1, W)
        preds[name] = ev.predict(models[name], xs, ys).double()
    n_samples = feats[names[0]].shape[0]
    log(f"  bridge: {len(names)} models, N = {sequences} sequences x {cfg.n_points} positions = {n_samples} samples, "
        f"{cfg.n_layer + 1} layers each")
    # in-context error on the bank, per class, over positions with at least one example
    comp = {}
    for name in names:
        err = ev.squared_errors(preds[name], ys)[:, 1:].mean(1)
        comp[name] = {"all": float(err.mean())}
        for c, cls in enumerate(mix.classes):
            comp[name][cls.name] = float(err[which == c].mean())
    agreement = [[float((preds[a] - preds[b]).pow(2)[:, 1:].mean()) for b in names] for a in names]
    out = {"bank": bank, "sequences": sequences, "points": cfg.n_points, "samples": n_samples,
           "layers": cfg.n_layer + 1, "topk": topk, "permutations": permutations, "models": names,
           "mixtures": {m: mixtures.get(m, "") for m in names}, "competence": comp,
           "prediction_distance": agreement, "metrics": {}}
    finals = {name: f.reshape(sequences, cfg.n_points, *f.shape[1:])[:, -1] for name, f in feats.items()}
    out["final_position"] = {}
    for metric in metrics:
        t0 = time.perf_counter()
        out["metrics"][metric] = _pairwise(pf, feats, names, metric, topk, permutations, seed)
        out["final_position"][metric] = _pairwise(pf, finals, names, metric, min(topk, sequences - 1), permutations,
                                                  seed)
        log(f"  bridge {metric}: {len(names) * (len(names) - 1) // 2} pairs on all positions and on the final "
            f"position in {time.perf_counter() - t0:.0f} s")
    out["analysis"] = _bridge_analysis(out, out["metrics"])
    out["analysis_final_position"] = _bridge_analysis(out, out["final_position"])
    return out


def _pairwise(pf, feats: dict, names: list, metric: str, topk: int, permutations: int, seed: int) -> dict:
    """``pf.align`` for every pair over the blocks' outputs (layers 1..L): the best block pair, with the
    permutation null of the whole search, the last layer against the last layer and the mean of
    same-index pairs; and, apart, the embedding outputs (layer 0) against each other. Layer 0 at an
    x position is an affine map of that x token plus a position vector, the same information in
    every model whatever its training: left in the search, it would win every pair."""
    size = len(names)

    def grid(fill=float("nan")):
        return [[fill] * size for _ in range(size)]

    best, last, same, calibrated, p_value, embedding = grid(), grid(), grid(), grid(), grid(), grid()
    layers = grid(None)
    chance = None
    for i in range(size):
        for j in range(i + 1, size):
            a, b = feats[names[i]], feats[names[j]]
            res = pf.align(a[:, 1:], b[:, 1:], metric, topk=topk, permutations=permutations or None, generator=seed)
            s = res.scores
            best[i][j] = best[j][i] = float(res.best)
            last[i][j] = last[j][i] = float(s[-1, -1])
            same[i][j] = same[j][i] = float(torch.diagonal(s).mean())
            layers[i][j] = [res.best_layers[0] + 1, res.best_layers[1] + 1] if res.best_layers else None
            layers[j][i] = layers[i][j][::-1] if layers[i][j] else None
            if res.calibration is not None:
                calibrated[i][j] = calibrated[j][i] = float(res.calibration.max.calibrated)
                p_value[i][j] = p_value[j][i] = float(res.calibration.max.p_value)
            if res.chance is not None:
                chance = float(res.chance.mean())
            embedding[i][j] = embedding[j][i] = float(pf.align(a[:, :1], b[:, :1], metric, topk=topk).scores[0, 0])
    return {"best": best, "last_layer": last, "same_layer_mean": same, "best_layers": layers,
            "calibrated": calibrated, "p_value": p_value, "chance": chance, "embedding": embedding, "topk": topk,
            "samples": int(next(iter(feats.values())).shape[0])}


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 3 pairs."""
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if a.numel() < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def _ranks(x):
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    for v in x.unique():
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def _bridge_analysis(out: dict, metrics: dict) -> dict:
    names = out["models"]
    trained = [m for m in names if out["mixtures"][m]]
    sets = {m: classes_of(out["mixtures"][m]) for m in names}
    pairs = [(names.index(a), names.index(b)) for ai, a in enumerate(trained) for b in trained[ai + 1:]]
    res = {"pairs": [[names[i], names[j]] for i, j in pairs]}
    jacc = [len(sets[names[i]] & sets[names[j]]) / len(sets[names[i]] | sets[names[j]]) for i, j in pairs]
    res["jaccard"] = jacc
    dist = out["prediction_distance"]
    untrained = [m for m in names if not out["mixtures"][m]]
    for metric, m in metrics.items():
        res[metric] = {}
        for view in ("best", "last_layer"):
            mat = m[view]
            vals = [mat[i][j] for i, j in pairs]
            shared = [v for v, jv in zip(vals, jacc) if jv > 0]
            disjoint = [v for v, jv in zip(vals, jacc) if jv == 0]
            per_model = {a: _mean(mat[names.index(a)][names.index(b)] for b in trained if b != a) for a in trained}
            res[metric][view] = {
                "scores": vals,
                "mean_sharing_a_class": _mean(shared), "mean_sharing_none": _mean(disjoint),
                "spearman_vs_jaccard": spearman(vals, jacc),
                "spearman_vs_prediction_distance": spearman(vals, [dist[i][j] for i, j in pairs]),
                "mean_alignment_to_others": per_model,
                "spearman_model_alignment_vs_bank_nse": spearman(
                    [per_model[a] for a in trained], [out["competence"][a]["all"] for a in trained]),
                "untrained_mean": {u: _mean(mat[names.index(u)][names.index(t)] for t in trained)
                                   for u in untrained},
            }
    return res


# --- the whole study ----------------------------------------------------------------------------

def run_study(preset="cpu", out="results/icl", *, jobs: int = 1, device=None, threads=None, steps=None,
              eval_count=None, bank_sequences=None, permutations=None, progress=True, log=print) -> dict:
    """Train, evaluate the four findings, align; write ``study.json`` and the figures into ``out``."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if steps is not None:
        p = replace(p, train=replace(p.train, steps=steps))
    if eval_count is not None:
        p = replace(p, eval_count=eval_count)
    if bank_sequences is not None:
        p = replace(p, bank_sequences=bank_sequences)
    if permutations is not None:
        p = replace(p, permutations=permutations)
    for _name, mixture, seed in p.models:
        p.train_config(mixture, seed).check(p.model)
    out = Path(out)
    runs = out / "runs"
    timing = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    log(f"icl study, preset {p.name}: {len(p.models)} models x {p.train.steps} steps, d={p.model.d}, "
        f"{p.model.n_points} points, {p.model.n_layer} layers x {p.model.n_embd}, jobs={jobs}")
    trained = train_all(p, runs, jobs=jobs, device=device, threads=threads, progress=progress)
    timing["train"] = time.perf_counter() - t0
    if threads is not None:
        torch.set_num_threads(threads * max(jobs, 1))
    models, training = {}, {}
    for name, mixture, seed in p.models:
        model, info = load_model(runs / name, device=device)
        models[name] = model
        hist = info["history"]
        training[name] = {"mixture": mixture, "seed": seed, "steps": info["step"], "history": hist,
                          "final_loss": _mean(h[1] for h in hist[-4:]), "seconds": trained[name]["seconds"]}
    results = {"preset": _preset_dict(p), "training": training, "timing": timing}
    for key, fn in (("model_selection", finding_model_selection), ("sparsity", finding_sparsity),
                    ("alpha", finding_alpha), ("frequency", finding_frequency)):
        t0 = time.perf_counter()
        log(f"{key} ...")
        results[key] = fn(models, p, log=log)
        timing[key] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log("bridge ...")
    untrained = InContextModel(p.model, seed=12345).eval()
    all_models = {**models, "untrained": untrained}
    mixtures = {name: mixture for name, mixture, _ in p.models}
    results["bridge"] = bridge(all_models, mixtures, p, log=log)
    timing["bridge"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_all
    results["headline"] = headline(results)
    write_json(out / "study.json", results)
    from .plots import study_figures

    results["figures"] = [str(f.relative_to(out)) for f in study_figures(results, out)]
    write_json(out / "study.json", results)
    log(format_headline(results))
    return results


def _preset_dict(p: Preset) -> dict:
    return {"name": p.name, "model": p.model.as_dict(), "train": p.train.as_dict(), "sparse_k": p.sparse_k,
            "models": [list(m) for m in p.models], "eval_count": p.eval_count, "bank_sequences": p.bank_sequences,
            "topk": p.topk, "permutations": p.permutations, "note": p.note}


# a model whose in-context error on its own classes is at least this has learned nothing the zero
# predictor does not know: its findings are no evidence (issue 24, item 5)
UNTRAINED_NSE = 1.0
FINDING_MODELS = {"f1": ("dense", "sparse", "dense+sparse"), "f2": ("dense", "sparse", "dense+sparse"),
                  "f3": ("dense", "sine", "dense+sine"), "f4": ("sine", "dense+sine", "dense")}


def competence_check(r: dict) -> dict:
    """Which models have learned their classes, and whether alignment beats the untrained floor.

    ``nse_own``: each trained model's mean NSE on the bank's sequences of its own pretraining
    classes (positions with at least one example); ``untrained`` lists the models at or above
    ``UNTRAINED_NSE``; ``withheld`` the findings that rest on one of them; ``alignment_above_floor``
    per metric: is the mean over trained pairs above the untrained model's mean alignment to them?"""
    b = r["bridge"]
    nse = {}
    for name in b["models"]:
        classes = classes_of(b["mixtures"].get(name, ""))
        own = [b["competence"][name][c] for c in classes if c in b["competence"][name]]
        if own:
            nse[name] = _mean(own)
    untrained = sorted(m for m, v in nse.items() if not v < UNTRAINED_NSE)
    withheld = sorted(f for f, models in FINDING_MODELS.items() if any(m in untrained for m in models if m in nse))
    floor = {}
    for metric, views in b["analysis"].items() if isinstance(b.get("analysis"), dict) else ():
        if metric in ("pairs", "jaccard"):
            continue
        best = views["best"]
        trained_mean = _mean(best["scores"])
        untrained_mean = _mean(best["untrained_mean"].values())
        floor[metric] = {"trained_pairs": trained_mean, "untrained": untrained_mean,
                         "above": bool(trained_mean > untrained_mean)}
    tiny = bool(untrained) or any(not f["above"] for f in floor.values())
    return {"threshold": UNTRAINED_NSE, "nse_own": nse, "untrained": untrained, "withheld": withheld,
            "alignment_above_floor": floor, "tiny": tiny}


def headline(r: dict) -> dict:
    """The one number per finding (and the bridge's), for the README and the terminal."""
    h = {"check": competence_check(r)}
    ms = r["model_selection"]["tasks"]
    for task in ("dense", "sparse"):
        w = ms[task]["window_nse"]
        h[f"f1_{task}"] = {m: w[m]["mean"] for m in ("dense", "sparse", "dense+sparse", "least_squares", "lasso",
                                                            "bayes_sparse") if m in w}
        h[f"f1_{task}_mixture_excess"] = ms[task]["mixture_minus_specialist"]
    h["f2_position"] = {row["k"]: row["position"] for row in r["sparsity"]["rows"]}
    h["f3_mixture_nse"] = {row["alpha"]: row["window_nse"]["dense+sine"]["mean"] for row in r["alpha"]["rows"]}
    h["f3_best_specialist_nse"] = {row["alpha"]: min(row["window_nse"]["dense"]["mean"],
                                                     row["window_nse"]["sine"]["mean"]) for row in r["alpha"]["rows"]}
    h["f4_groups"] = r["frequency"]["groups"]
    a = r["bridge"]["analysis"]
    keys = ("mean_sharing_a_class", "mean_sharing_none", "spearman_vs_jaccard", "spearman_vs_prediction_distance",
            "spearman_model_alignment_vs_bank_nse", "untrained_mean")
    h["bridge"] = {metric: {view: {k: a[metric][view][k] for k in keys} for view in a[metric]}
                   for metric in r["bridge"]["metrics"]}
    a = r["bridge"]["analysis_final_position"]
    h["bridge_final_position"] = {metric: {view: {k: a[metric][view][k] for k in keys} for view in a[metric]}
                                  for metric in r["bridge"]["metrics"]}
    h["minutes"] = r["timing"]["total"] / 60
    return h


def format_headline(r: dict) -> str:
    h = r["headline"]
    c = h.get("check")
    lines = ["", "headline numbers"]
    if c and c["tiny"]:
        lines.append("  THIS RUN IS TOO SHORT TO TEST THE FINDINGS: "
                     + ("; ".join(filter(None, [
                         (f"untrained models (NSE on their own classes >= {c['threshold']:g}): "
                          + ", ".join(f"{m} {c['nse_own'][m]:.2f}" for m in c["untrained"])) if c["untrained"] else "",
                         ", ".join(f"{metric} alignment of trained pairs {f['trained_pairs']:.3f} not above the "
                                   f"untrained model's {f['untrained']:.3f}"
                                   for metric, f in c["alignment_above_floor"].items() if not f["above"])]))))
    withheld = set(c["withheld"]) if c else set()

    def mark(key):
        return "  [withheld: rests on an untrained model] " if key in withheld else "  "

    for task in ("dense", "sparse"):
        e = h[f"f1_{task}_mixture_excess"]
        lines.append(f"{mark('f1')}1. {task} tasks, mean NSE over 1..d-1 examples: "
                     + ", ".join(f"{m} {v:.3f}" for m, v in h[f"f1_{task}"].items())
                     + f"; mixture - specialist {e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]")
    lines.append(f"{mark('f2')}2. mixture's position between the specialists (0 = sparse, 1 = dense) by k: "
                 + ", ".join(f"{k}: {v:.2f}" for k, v in h["f2_position"].items()))
    lines.append(f"{mark('f3')}3. dense+sine NSE by alpha (late window): "
                 + ", ".join(f"{a:g}: {v:.3f}" for a, v in h["f3_mixture_nse"].items()))
    lines.append("     best specialist:                       "
                 + ", ".join(f"{a:g}: {v:.3f}" for a, v in h["f3_best_specialist_nse"].items()))
    for m, g in h["f4_groups"].items():
        lines.append(f"{mark('f4')}4. {m:>13} NSE below / inside / above the pretraining frequencies: "
                     f"{g['below']:.3f} / {g['inside']:.3f} / {g['above']:.3f}")
    for metric, views in [*h["bridge"].items(), *((f"{m}, final position", v)
                                                  for m, v in h["bridge_final_position"].items())]:
        for view, b in views.items():
            above = (c or {}).get("alignment_above_floor", {}).get(metric.split(",")[0], {}).get("above", True)
            flag = "  [not above the untrained floor] " if not above else "  "
            lines.append(flag + f"bridge {metric} ({view}): pairs sharing a class {b['mean_sharing_a_class']:.3f}, "
                         f"sharing none {b['mean_sharing_none']:.3f}; Spearman vs overlap "
                         f"{b['spearman_vs_jaccard']:+.2f}, vs prediction distance "
                         f"{b['spearman_vs_prediction_distance']:+.2f}, model mean vs bank NSE "
                         f"{b['spearman_model_alignment_vs_bank_nse']:+.2f}; untrained "
                         + ", ".join(f"{v:.3f}" for v in b["untrained_mean"].values()))
    lines.append(f"  total {h['minutes']:.1f} min")
    return "\n".join(lines)


def write_json(path, obj) -> Path:
    text = json.dumps(obj, indent=1, default=_jsonable, allow_nan=True)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(f"not JSON: {type(o).__name__}")
