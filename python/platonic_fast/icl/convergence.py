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
Competence trends (does alignment rise with in-context competence?)
    Competence is −NSE at x_q. Per checkpoint (alignment to the truth, raw and calibrated, hidden
    states and predictions): Spearman's correlation with competence, per run, averaged over runs
    and pooled, tested by relabelling checkpoints *within* runs (runs differ in level and in depth,
    so only the order inside a run is exchangeable under the null). Per pair of checkpoints of
    different runs (alignment to each other): a Mantel test, Spearman's correlation of the pair's
    alignment with the pair's mean competence against relabellings of the checkpoints (jointly
    rows and columns, within runs): pairs that share a model are dependent, so single pairs are
    never shuffled. At one step across runs (sizes and mixtures), the same two tests relabel the
    runs themselves. The permutations are scipy's (``scipy.stats.permutation_test``,
    ``permutation_type="pairings"``, one sample per stratum, exact when few); scipy needs strata of
    one size, so a family is cut to the steps that all its runs share.
Capability family
    :func:`capability_family` scores checkpoints (sizes, seeds, training steps: the ``snapshots``
    of runs) on one bank; :func:`convergence_study` runs it over one or more roots of runs and
    the tests above, per root and over all of them.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
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
    dev = next(model.parameters()).device
    probes = bank["probes"].to(dev)
    # each probe as the query after the sequence's own context (the y at the query is never read)
    pp = torch.cat([model.predict_queries(xs[i:i + 32, :-1].to(dev), ys[i:i + 32, :-1].to(dev), probes).cpu()
                    for i in range(0, xs.shape[0], 32)])
    nse = float((pred_q - ys[:, -1].double()).pow(2).mean())
    return {"hidden": hs, "predictions": pp.float(), "nse": nse}


def _score(pf, a, b, metric, topk, permutations, seed) -> dict:
    res = pf.align(a, b, metric, topk=topk, permutations=permutations or None, generator=seed)
    out = {"best": float(res.best), "last_layer": float(res.scores[-1, -1]),
           "best_layers": list(res.best_layers) if res.best_layers else None}
    if res.calibration is not None:
        out["calibrated"] = float(res.calibration.max.calibrated)
        out["p_value"] = float(res.calibration.max.p_value)
        out["chance"] = float(res.calibration.max.chance)
    return out


def truth_alignment(models: dict, bank: dict, *, metric: str = "mutual_knn", topk: int = 10,
                    permutations: int = 100, seed: int = 0, log=None) -> dict:
    """Per model: hidden states and predictions against the truth; per pair: the same between models."""
    import platonic_fast as pf

    names = list(models)
    views = {}
    for n, m in models.items():
        views[n] = model_views(m, bank)
        if log:
            log(f"  {n}: NSE at the query {views[n]['nse']:.3f}")
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


# --- permutation statistics (scipy's) ------------------------------------------------------------

def _spearman(x, y) -> float:
    """Spearman's rho (scipy); NaN where either side is constant (no order to correlate)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _rank_corr(x_ranks, y_ranks):
    """Pearson (scipy) of one rank vector with each row of ``y_ranks`` (..., m): Spearman's rho,
    as scipy defines it (average ranks for ties), for a batch of relabellings at once."""
    from scipy.stats import pearsonr

    y_ranks = np.atleast_2d(y_ranks)
    return pearsonr(np.broadcast_to(x_ranks, y_ranks.shape), y_ranks, axis=-1).statistic


def permutation_p(statistic, strata, *, permutations: int = 9999, seed: int = 0,
                  alternative: str = "two-sided") -> dict:
    """``statistic(perms)`` ((B, n) relabellings of range(n) -> (B,)) against relabellings that
    move items only within their stratum (``strata``: index arrays of one length partitioning
    range(n)), by ``scipy.stats.permutation_test`` (every relabelling when there are at most
    ``permutations``)."""
    from scipy.stats import permutation_test

    strata = [np.asarray(s, dtype=np.int64) for s in strata]
    sizes = {len(s) for s in strata}
    n = sum(len(s) for s in strata)
    if len(sizes) != 1 or sorted(np.concatenate(strata).tolist()) != list(range(n)):
        raise ValueError(f"strata must partition range(n) into parts of one size (scipy's 'pairings' test); "
                         f"got sizes {[len(s) for s in strata]}")
    if not isinstance(permutations, int) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}")

    def stat(*idx, axis=-1):
        one = idx[0].ndim == 1
        idx = [np.atleast_2d(i) for i in idx]
        perm = np.empty((idx[0].shape[0], n), dtype=np.int64)
        for s, i in zip(strata, idx):
            perm[:, s] = i
        v = np.asarray(statistic(perm))
        return v[0] if one else v

    observed = float(statistic(np.arange(n)[None])[0])
    total = math.factorial(sizes.pop()) ** len(strata)
    out = {"statistic": observed, "alternative": alternative, "exact": total <= permutations,
           "permutations": min(total, permutations)}
    if math.isnan(observed):
        return {**out, "p_value": float("nan"), "note": "constant scores: no order to test"}
    res = permutation_test(tuple(strata), stat, permutation_type="pairings", vectorized=True,
                           n_resamples=permutations, alternative=alternative, rng=np.random.default_rng(seed))
    return {**out, "p_value": float(res.pvalue)}


def mantel(a, b, *, strata=None, between_strata: bool = False, permutations: int = 9999, seed: int = 0,
           alternative: str = "two-sided") -> dict:
    """Spearman correlation of two symmetric n × n matrices over the pairs i < j (only pairs from
    different ``strata`` with ``between_strata``), against relabelling the items of ``a`` (rows
    and columns together; within ``strata`` when given): :func:`permutation_p`. Such relabellings
    map the compared pairs onto themselves, so ``a``'s ranks are taken once."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = a.shape[0]
    if a.shape != (n, n) or b.shape != (n, n) or n < 3:
        raise ValueError(f"mantel needs two n x n matrices with n >= 3; got {a.shape} and {b.shape}")
    keep = np.triu(np.ones((n, n), dtype=bool), 1)
    if between_strata:
        if strata is None:
            raise ValueError("mantel: between_strata needs strata")
        label = np.empty(n, dtype=np.int64)
        for k, s in enumerate(strata):
            label[np.asarray(s)] = k
        keep &= label[:, None] != label[None, :]
    if keep.sum() < 3:
        raise ValueError(f"mantel needs at least 3 pairs, got {int(keep.sum())}")
    iu = np.nonzero(keep)
    if np.ptp(a[iu]) == 0 or np.ptp(b[iu]) == 0:
        stat = lambda perm: np.full(len(perm), np.nan)  # noqa: E731  (constant: nothing to rank)
    else:
        ranks = np.zeros((n, n))
        ranks[iu] = rankdata(a[iu])
        ranks = ranks + ranks.T
        rb = rankdata(b[iu])
        stat = lambda perm: _rank_corr(rb, ranks[perm[:, iu[0]], perm[:, iu[1]]])  # noqa: E731
    res = permutation_p(stat, [np.arange(n)] if strata is None else strata, permutations=permutations, seed=seed,
                        alternative=alternative)
    return {**res, "pairs": int(keep.sum())}


ROW_SCORES = ("hidden_truth", "hidden_truth_calibrated", "predictions_truth", "predictions_truth_calibrated")
PAIR_SCORES = {"hidden": ("hidden", "best"), "hidden_calibrated": ("hidden", "calibrated"),
               "predictions": ("predictions", "best"), "predictions_calibrated": ("predictions", "calibrated")}


def competence_trend(rows: list, score: str, *, within_runs: bool = True, permutations: int = 9999,
                     seed: int = 0) -> dict:
    """Spearman of competence (−NSE) with ``score`` over ``rows``: per run, their mean and pooled,
    each tested one-sided (alignment rises with competence) by relabelling within runs
    (``within_runs``; every run must hold as many rows) or among all rows (one row per run)."""
    from scipy.stats import rankdata

    comp = np.array([-r["nse"] for r in rows])
    y = np.array([np.nan if r.get(score) is None else r[score] for r in rows], dtype=np.float64)
    if np.isnan(y).any():
        return {"note": f"{score} missing (no permutation null was run)"}
    runs = sorted({r["run"] for r in rows})
    strata = [np.array([i for i, r in enumerate(rows) if r["run"] == run]) for run in runs]
    opts = {"permutations": permutations, "seed": seed, "alternative": "greater"}

    def pooled(perm):
        if np.ptp(comp) == 0 or np.ptp(y) == 0:
            return np.full(len(perm), np.nan)
        return _rank_corr(rankdata(comp), rankdata(y)[perm])

    out = {"rows": len(rows)}
    if within_runs:
        out["per_run"] = {run: _spearman(comp[s], y[s]) for run, s in zip(runs, strata)}
        # ranks inside each run; a run constant in either score has no order and is left out
        live = [s for s in strata if len(s) >= 3 and np.ptp(comp[s]) > 0 and np.ptp(y[s]) > 0]
        local = np.zeros(len(rows))
        for s in live:
            local[s] = rankdata(y[s])

        def mean_within(perm):
            if not live:
                return np.full(len(perm), np.nan)
            return np.mean([_rank_corr(rankdata(comp[s]), local[perm[:, s]]) for s in live], axis=0)

        out["within_run_mean"] = permutation_p(mean_within, strata, **opts)
        out["pooled"] = permutation_p(pooled, strata, **opts)
    else:
        out["pooled"] = permutation_p(pooled, [np.arange(len(rows))], **opts)
    return out


def _pair_matrix(labels: list, pairs: dict, path: tuple) -> np.ndarray:
    n = len(labels)
    m = np.full((n, n), np.nan)
    for i, j in itertools.combinations(range(n), 2):
        p = pairs.get(f"{labels[i]}|{labels[j]}") or pairs[f"{labels[j]}|{labels[i]}"]
        v = p[path[0]].get(path[1])
        m[i, j] = m[j, i] = np.nan if v is None else v
    return m


def family_tests(rows: list, pairs: dict, *, within_runs: bool = True, permutations: int = 9999,
                 seed: int = 0) -> dict:
    """Every competence test on one balanced set of checkpoints: per checkpoint (alignment to the
    truth) and per pair of checkpoints from different runs (alignment to each other), raw and
    calibrated, hidden states and predictions; and the hidden-vs-predictions Mantel test."""
    labels = [r["label"] for r in rows]
    run = [r["run"] for r in rows]
    runs = sorted(set(run))
    strata = [np.array([i for i, r in enumerate(run) if r == x]) for x in runs] if within_runs else None
    cross = np.array([[a != b for b in run] for a in run])
    comp = np.array([-r["nse"] for r in rows])
    pair_comp = (comp[:, None] + comp[None, :]) / 2
    opts = {"permutations": permutations, "seed": seed}
    out = {"checkpoints": labels, "runs": runs, "steps": sorted({r["step"] for r in rows}),
           "relabelling": "within runs" if within_runs else "among runs",
           "truth": {s: competence_trend(rows, s, within_runs=within_runs, **opts) for s in ROW_SCORES},
           "pairs": {}}
    mats = {k: _pair_matrix(labels, pairs, path) for k, path in PAIR_SCORES.items()}
    iu = np.nonzero(np.triu(cross, 1))
    for k, m in mats.items():
        if np.isnan(m[iu]).any():
            out["pairs"][k] = {"note": f"{k} missing (no permutation null was run)"}
            continue
        out["pairs"][k] = {"mean": float(m[iu].mean()),
                           "vs_competence": mantel(m, pair_comp, strata=strata, between_strata=within_runs,
                                                   alternative="greater", **opts)}
    out["hidden_vs_predictions"] = mantel(mats["hidden"], mats["predictions"], strata=strata,
                                         between_strata=within_runs, **opts)
    # descriptive: the mean alignment between runs at each shared step
    by_step = {}
    for step in out["steps"]:
        idx = [i for i, r in enumerate(rows) if r["step"] == step]
        sel = [(i, j) for i, j in itertools.combinations(idx, 2) if cross[i, j]]
        by_step[step] = {"nse_mean": float(np.mean([rows[i]["nse"] for i in idx])),
                         **{k: float(np.mean([m[i, j] for i, j in sel])) for k, m in mats.items()
                            if sel and not np.isnan([m[i, j] for i, j in sel]).any()}}
    out["same_step_between_runs"] = by_step
    return out


def capability_family(checkpoints: dict, bank: dict, *, metric: str = "mutual_knn", topk: int = 10,
                      permutations: int = 100, seed: int = 0, log=None) -> dict:
    """``checkpoints``: {label: (run, step, path)}. Competence and alignment (to the truth, to each
    other) for each, with the calibrated scores of the library's permutation null beside the raw."""
    from .train import load_model

    models, meta = {}, {}
    for label, (run, step, path) in checkpoints.items():
        models[label], _ = load_model(path)
        meta[label] = {"run": run, "step": int(step)}
    res = truth_alignment(models, bank, metric=metric, topk=topk, permutations=permutations, seed=seed, log=log)
    rows = []
    for k, v in res["per_model"].items():
        h, p = v["hidden_vs_truth"], v["predictions_vs_truth"]
        rows.append({"label": k, **meta[k], "nse": v["nse"], "hidden_truth": h["best"],
                     "hidden_truth_last": h["last_layer"], "hidden_truth_calibrated": h.get("calibrated"),
                     "hidden_truth_p": h.get("p_value"), "predictions_truth": p["best"],
                     "predictions_truth_calibrated": p.get("calibrated"), "predictions_truth_p": p.get("p_value")})
    return {"alignment": res, "rows": rows}


def _snapshots(roots) -> dict:
    """{label: (run, step, path)} over ``<root>/<run>/snapshots/step-*.safetensors``; runs are
    named ``<root's name>/<run>`` when there are several roots."""
    roots = [Path(r) for r in roots]
    ckpts = {}
    for root in roots:
        if not root.is_dir():
            raise ValueError(f"--root {root}: not a folder")
        for snap in sorted(root.glob("*/snapshots/step-*.safetensors")):
            run = snap.parent.parent.name if len(roots) == 1 else f"{root.name}/{snap.parent.parent.name}"
            step = int(snap.stem.split("-")[1])
            ckpts[f"{run}@step{step}"] = (run, step, snap)
    return ckpts


def _balanced(rows: list, runs: list) -> list:
    """The rows of ``runs`` at the steps every one of them has (scipy's strata are of one size)."""
    steps = set.intersection(*({r["step"] for r in rows if r["run"] == run} for run in runs))
    return sorted((r for r in rows if r["run"] in runs and r["step"] in steps), key=lambda r: (r["run"], r["step"]))


def convergence_study(roots, *, classes=("dense", "sparse(k=1)"), per_class: int = 100, probes: int = 32,
                      metric: str = "mutual_knn", topk: int = 10, permutations: int = 100,
                      trend_permutations: int = 9999, seed: int = 0, family_json=None, log=print) -> dict:
    """Every run's snapshots under ``roots`` (one folder or several) as a capability family on one
    fixed-query bank, then the tests of the module's docstring: within runs over the steps they
    share (all roots together, and each root alone), and among runs at the last step they all share.
    ``family_json``: where the scores (the costly part) are kept; read instead of recomputed when
    it exists and was made from the same snapshots and settings."""
    from .train import read_checkpoint

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    ckpts = _snapshots(roots)
    if len(ckpts) < 3:
        raise ValueError(f"{', '.join(map(str, roots))}: the convergence study needs at least 3 snapshots, "
                         f"found {len(ckpts)}")
    shapes = {}
    for label, (_, _, path) in ckpts.items():
        cfg = json.loads(read_checkpoint(path)[1]["model_config"])
        shapes.setdefault((cfg["d"], cfg["n_points"]), label)
    if len(shapes) > 1:
        raise ValueError(f"the snapshots differ in (d, n_points): {shapes}; one bank cannot serve them")
    (d, n_points), = shapes
    bank = fixed_query_bank(list(classes), per_class, d, n_points, probes=probes, seed=seed)
    runs = sorted({c[0] for c in ckpts.values()})
    log(f"convergence: {len(ckpts)} snapshots of {len(runs)} runs, {per_class * len(classes)} functions, "
        f"{probes} probes, {permutations} permutations per null")
    settings = {"snapshots": {k: str(v[2]) for k, v in ckpts.items()}, "classes": bank["classes"],
                "per_class": per_class, "probes": probes, "metric": metric, "topk": topk,
                "permutations": permutations, "seed": seed}
    kept = json.loads(Path(family_json).read_text()) if family_json and Path(family_json).exists() else None
    if kept is not None and kept.get("settings") == settings:
        log(f"scores read from {family_json}")
        fam = kept["family"]
    else:
        fam = capability_family(ckpts, bank, metric=metric, topk=topk, permutations=permutations, seed=seed,
                                log=log)
        if family_json:
            from .study import write_json

            write_json(family_json, {"settings": settings, "family": fam})
    rows, pairs = fam["rows"], fam["alignment"]["pairs"]
    opts = {"permutations": trend_permutations, "seed": seed}
    groups = {"all": runs}
    if len(roots) > 1:
        for root in roots:
            groups[Path(root).name] = [r for r in runs if r.startswith(f"{Path(root).name}/")]
    tests = {}
    for name, group in groups.items():
        sub = _balanced(rows, group)
        nsteps = len({r["step"] for r in sub})
        if len(group) < 2 or nsteps < 3:
            tests[name] = {"note": f"{len(group)} runs sharing {nsteps} steps: too few for the within-run tests"}
            continue
        log(f"tests within runs: {name} ({len(group)} runs x {nsteps} shared steps)")
        tests[name] = family_tests(sub, pairs, within_runs=True, **opts)
    out = {"bank": {"classes": bank["classes"], "per_class": per_class, "probes": probes, "d": d,
                    "n_points": n_points, "seed": seed},
           "snapshots": {k: str(v[2]) for k, v in ckpts.items()}, "family": fam, "within_runs": tests}
    shared = set.intersection(*({r["step"] for r in rows if r["run"] == run} for run in runs))
    if len(runs) >= 3 and shared:
        step = max(shared)
        sub = sorted((r for r in rows if r["step"] == step), key=lambda r: r["run"])
        log(f"tests among runs at step {step} ({len(sub)} runs)")
        out["among_runs"] = {"step": step, **family_tests(sub, pairs, within_runs=False, **opts)}
    return out


def _fmt_test(t: dict) -> str:
    if "p_value" not in t:
        return t.get("note", "-")
    kind = "exact" if t["exact"] else f"{t['permutations']} relabellings"
    return f"{t['statistic']:+.2f} (p {t['p_value']:.3g}, {kind})"


def format_convergence(res: dict) -> str:
    """The study as text: every checkpoint, then each test (Spearman's rho, one-sided p-value)."""
    lines = [f"{'checkpoint':>34}  {'NSE':>6}  {'hidden→truth':>12} {'(calib.)':>8}  {'pred.→truth':>11} "
             f"{'(calib.)':>8}"]

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    for r in res["family"]["rows"]:
        lines.append(f"{r['label']:>34}  {r['nse']:6.3f}  {num(r['hidden_truth']):>12} "
                     f"{num(r['hidden_truth_calibrated']):>8}  {num(r['predictions_truth']):>11} "
                     f"{num(r['predictions_truth_calibrated']):>8}")
    blocks = [(f"within runs, {k}", v) for k, v in res["within_runs"].items()]
    if "among_runs" in res:
        blocks.append((f"among runs at step {res['among_runs']['step']}", res["among_runs"]))
    for title, t in blocks:
        if "truth" not in t:
            lines.append(f"{title}: {t.get('note', '')}")
            continue
        lines.append(f"{title} ({len(t['runs'])} runs, steps {t['steps']}): competence vs alignment, Spearman")
        for s, v in t["truth"].items():
            if "pooled" not in v:
                lines.append(f"  {s:>28}: {v.get('note', '')}")
                continue
            within = f"  mean within runs {_fmt_test(v['within_run_mean'])}" if "within_run_mean" in v else ""
            lines.append(f"  {s:>28}: pooled {_fmt_test(v['pooled'])}{within}")
        for k, v in t["pairs"].items():
            lines.append(f"  {'pairs ' + k:>28}: Mantel {_fmt_test(v['vs_competence'])}" if "vs_competence" in v
                         else f"  {'pairs ' + k:>28}: {v.get('note', '')}")
        lines.append(f"  {'hidden vs predictions':>28}: Mantel {_fmt_test(t['hidden_vs_predictions'])}")
    return "\n".join(lines)
