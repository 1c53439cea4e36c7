"""The convergence study, controlled (issue 21, item 6): here reality is known, so measure it.

Bank with a fixed query
    ``per_class`` fresh functions of each listed class, each with its own n − 1 context points
    (x, f(x)) and then *the same* query x_q for every sequence. The hidden state at x_q can then
    differ between sequences only through the function its context reveals: the samples are
    functions, not positions or inputs.
The truth
    Each function's values on ``probes`` fixed points z_1..z_P (drawn once, shared by the bank):
    the vector (f(z_1), …, f(z_P)). Its inner products are the true function kernel
    (for linear f, ≈ P·⟨w_s, w_t⟩: the true weight vectors' kernel).
Representation against read-out
    ``hidden``: every layer's state at x_q, (S, L+1, W). ``predictions`` (the predictions-only
    control): the model's predictions at the P probe points, each placed as the query after the
    sequence's own context, (S, P). A model whose hidden states align with the truth no better than
    its predictions do carries nothing beyond its read-out.
Scores
    ``pf.align`` over the blocks (layer 0, an affine map of x_q, is the same for every sequence and
    left out), its permutation null (``permutations`` row permutations: calibrated score and p-value
    beside the raw one); competence is the NSE at x_q over the bank.
Statistics over pairs of models
    Pairs share models, so they are not independent: :func:`mantel` compares two model × model
    matrices by Spearman's correlation of their upper triangles (scipy) against every relabelling
    of the models (all n! when few, else random ones).
Capability family
    :func:`capability_family` scores a list of checkpoints (sizes, seeds, training steps: the
    ``snapshots`` of a run) on one bank: competence, alignment to the truth, alignment to the
    others at the same step; the Spearman correlation of competence and alignment per run
    (scipy), and its pooled value with a permutation test that shuffles steps *within* runs only.
"""

from __future__ import annotations

import itertools
import json
import math

import torch

from . import evaluate as ev
from .tasks import parse_class


def fixed_query_bank(classes, per_class: int, d: int, n_points: int, *, probes: int = 32, seed: int = 0) -> dict:
    """Sequences whose last x is one shared query; the truth on shared probe points (see above)."""
    if per_class < 2 or probes < 2 or n_points < 2:
        raise ValueError("fixed_query_bank needs per_class >= 2, probes >= 2 and n_points >= 2")
    gen = torch.Generator().manual_seed(7919 + seed)
    query = torch.randn(d, generator=gen)
    z = torch.randn(probes, d, generator=gen)
    xs, ys, truth, labels = [], [], [], []
    for c, spec in enumerate(classes):
        cls = parse_class(spec)
        cls.check(d)
        p = cls.draw(per_class, d, d, gen)
        x = torch.randn(per_class, n_points, d, generator=gen)
        x[:, -1] = query
        xs.append(x)
        ys.append(cls.apply(p, x))
        truth.append(cls.apply(p, z[None].expand(per_class, probes, d)))
        labels.append(torch.full((per_class,), c))
    return {"classes": [parse_class(c).spec for c in classes], "xs": torch.cat(xs), "ys": torch.cat(ys),
            "truth": torch.cat(truth), "labels": torch.cat(labels), "query": query, "probes": z}


@torch.no_grad()
def model_views(model, bank: dict) -> dict:
    """``hidden`` (S, L+1, W) at the query, ``predictions`` (S, P) at the probes, ``nse`` at the query."""
    xs, ys = bank["xs"], bank["ys"]
    hs = ev.hidden_states(model, xs, ys)[:, -1]                     # (S, L+1, W)
    pred_q = ev.predict(model, xs, ys)[:, -1].double()
    s, n, d = xs.shape
    probes = bank["probes"]
    rep = xs[:, None].expand(s, probes.shape[0], n, d).clone()
    rep[:, :, -1] = probes[None]
    y_rep = ys[:, None].expand(s, probes.shape[0], n).clone()       # y at the query is never read
    pp = ev.predict(model, rep.reshape(-1, n, d), y_rep.reshape(-1, n))[:, -1].reshape(s, -1)
    nse = float((pred_q - ys[:, -1].double()).pow(2).mean())
    return {"hidden": hs, "predictions": pp.float(), "nse": nse}


def _score(pf, a, b, metric, topk, permutations, seed) -> dict:
    res = pf.align(a, b, metric, topk=topk, permutations=permutations or None, generator=seed)
    out = {"best": float(res.best), "last_layer": float(res.scores[-1, -1]),
           "best_layers": list(res.best_layers) if res.best_layers else None}
    if res.calibration is not None:
        out["calibrated"] = float(res.calibration.max.calibrated)
        out["p_value"] = float(res.calibration.max.p_value)
    return out


def truth_alignment(models: dict, bank: dict, *, metric: str = "mutual_knn", topk: int = 10,
                    permutations: int = 100, seed: int = 0) -> dict:
    """Per model: hidden states and predictions against the truth; per pair: the same between models."""
    import platonic_fast as pf

    names = list(models)
    views = {n: model_views(m, bank) for n, m in models.items()}
    truth = bank["truth"].float()[:, None]
    out = {"metric": metric, "topk": topk, "permutations": permutations, "samples": int(truth.shape[0]),
           "models": names, "per_model": {}, "pairs": {}}
    for n in names:
        v = views[n]
        out["per_model"][n] = {"nse": v["nse"],
                               "hidden_vs_truth": _score(pf, v["hidden"][:, 1:], truth, metric, topk, permutations,
                                                         seed),
                               "predictions_vs_truth": _score(pf, v["predictions"][:, None], truth, metric, topk,
                                                              permutations, seed)}
    for a, b in itertools.combinations(names, 2):
        out["pairs"][f"{a}|{b}"] = {
            "hidden": _score(pf, views[a]["hidden"][:, 1:], views[b]["hidden"][:, 1:], metric, topk, permutations,
                             seed),
            "predictions": _score(pf, views[a]["predictions"][:, None], views[b]["predictions"][:, None], metric,
                                  topk, permutations, seed)}
    return out


def mantel(a, b, *, permutations: int = 10_000, seed: int = 0) -> dict:
    """Spearman correlation of two symmetric n × n matrices' upper triangles, and its p-value
    against relabelling the models of ``a`` (every permutation when n! <= ``permutations``, else
    ``permutations`` random ones; the observed labelling counts as one)."""
    from scipy.stats import spearmanr

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    n = a.shape[0]
    if a.shape != (n, n) or b.shape != (n, n) or n < 3:
        raise ValueError(f"mantel needs two n x n matrices with n >= 3; got {tuple(a.shape)} and {tuple(b.shape)}")
    iu = torch.triu_indices(n, n, 1)

    def stat(perm):
        pa = a[perm][:, perm]
        return float(spearmanr(pa[iu[0], iu[1]].numpy(), b[iu[0], iu[1]].numpy()).statistic)

    observed = stat(torch.arange(n))
    if math.factorial(n) <= permutations:
        null = [stat(torch.tensor(p)) for p in itertools.permutations(range(n))]
        exact = True
    else:
        gen = torch.Generator().manual_seed(seed)
        null = [observed] + [stat(torch.randperm(n, generator=gen)) for _ in range(permutations)]
        exact = False
    p = sum(abs(v) >= abs(observed) - 1e-12 for v in null) / len(null)
    return {"statistic": observed, "p_value": p, "permutations": len(null), "exact": exact}


def capability_family(checkpoints: dict, bank: dict, *, metric: str = "mutual_knn", topk: int = 10,
                      permutations: int = 100, trend_permutations: int = 2000, seed: int = 0) -> dict:
    """``checkpoints``: {label: (run, step, path)}. Competence and alignment to the truth for each;
    the competence-alignment trend per run and pooled (see the module's docstring)."""
    from scipy.stats import spearmanr

    from .train import load_model

    models, meta = {}, {}
    for label, (run, step, path) in checkpoints.items():
        models[label], _ = load_model(path)
        meta[label] = {"run": run, "step": int(step)}
    res = truth_alignment(models, bank, metric=metric, topk=topk, permutations=permutations, seed=seed)
    rows = [{"label": k, **meta[k], "nse": v["nse"], "truth_best": v["hidden_vs_truth"]["best"],
             "truth_calibrated": v["hidden_vs_truth"].get("calibrated"),
             "predictions_truth": v["predictions_vs_truth"]["best"]} for k, v in res["per_model"].items()]
    runs = sorted({r["run"] for r in rows})
    per_run = {}
    for run in runs:
        rr = [r for r in rows if r["run"] == run]
        if len(rr) >= 3:
            per_run[run] = float(spearmanr([-r["nse"] for r in rr], [r["truth_best"] for r in rr]).statistic)
    competence = torch.tensor([-r["nse"] for r in rows], dtype=torch.float64)
    align = torch.tensor([r["truth_best"] for r in rows], dtype=torch.float64)
    pooled = float(spearmanr(competence.numpy(), align.numpy()).statistic) if len(rows) >= 3 else float("nan")
    # the null shuffles alignments among the checkpoints of the same run (runs differ in level)
    gen = torch.Generator().manual_seed(seed)
    groups = [torch.tensor([i for i, r in enumerate(rows) if r["run"] == run]) for run in runs]
    hits = 1
    for _ in range(trend_permutations):
        shuffled = align.clone()
        for g in groups:
            shuffled[g] = align[g[torch.randperm(len(g), generator=gen)]]
        hits += abs(float(spearmanr(competence.numpy(), shuffled.numpy()).statistic)) >= abs(pooled) - 1e-12
    return {"alignment": res, "rows": rows, "spearman_per_run": per_run, "spearman_pooled": pooled,
            "p_within_run_permutation": hits / (trend_permutations + 1) if len(rows) >= 3 else float("nan")}


def convergence_study(root, *, classes=("dense", "sparse(k=1)"), per_class: int = 100, probes: int = 32,
                      metric: str = "mutual_knn", topk: int = 10, permutations: int = 100, seed: int = 0,
                      log=print) -> dict:
    """Every run's snapshots under ``root`` (``<run>/snapshots/step-*.safetensors``) as one
    capability family on one fixed-query bank; then the newest snapshot of every run against the
    others: a Mantel test of hidden-state alignment against prediction alignment (does the
    representation agree beyond what the read-out already shares?)."""
    from pathlib import Path

    from .train import read_checkpoint

    root = Path(root)
    ckpts = {}
    for snap in sorted(root.glob("*/snapshots/step-*.safetensors")):
        run, step = snap.parent.parent.name, int(snap.stem.split("-")[1])
        ckpts[f"{run}@step{step}"] = (run, step, snap)
    if len(ckpts) < 3:
        raise ValueError(f"{root}: the convergence study needs at least 3 snapshots, found {len(ckpts)}")
    _, meta = read_checkpoint(next(iter(ckpts.values()))[2])
    cfg = json.loads(meta["model_config"])
    bank = fixed_query_bank(list(classes), per_class, cfg["d"], cfg["n_points"], probes=probes, seed=seed)
    log(f"convergence: {len(ckpts)} snapshots of {len({c[0] for c in ckpts.values()})} runs, "
        f"{per_class * len(classes)} functions, {probes} probes")
    fam = capability_family(ckpts, bank, metric=metric, topk=topk, permutations=permutations, seed=seed)
    newest = {}
    for label, (run, step, _) in ckpts.items():
        if run not in newest or step > ckpts[newest[run]][1]:
            newest[run] = label
    labels = list(newest.values())
    out = {"bank": {"classes": bank["classes"], "per_class": per_class, "probes": probes}, "family": fam,
           "newest": labels}
    if len(labels) >= 3:
        n = len(labels)
        hid = torch.eye(n, dtype=torch.float64)
        pred = torch.eye(n, dtype=torch.float64)
        for i, j in itertools.combinations(range(n), 2):
            pair = fam["alignment"]["pairs"].get(f"{labels[i]}|{labels[j]}") or \
                fam["alignment"]["pairs"][f"{labels[j]}|{labels[i]}"]
            hid[i, j] = hid[j, i] = pair["hidden"]["best"]
            pred[i, j] = pred[j, i] = pair["predictions"]["best"]
        out["mantel_hidden_vs_predictions"] = mantel(hid, pred, seed=seed)
    return out
