"""Evaluation: normalised squared error against the number of in-context examples, and baselines.

Normalised squared error (NSE)
    (prediction − y_i)² divided by the class's output variance, which is 1 by construction
    (:mod:`.tasks`), so the zero predictor scores 1 in expectation. The curve's point i (0-based)
    is the prediction of y_{i+1} from i in-context examples, averaged over the evaluation sequences.
Evaluation sequences
    A fixed bank per task (default 1,280 sequences) drawn from a generator seeded by the task's
    spec string and a seed, so every model and baseline sees the same sequences.
Intervals
    Percentile bootstrap over sequences (1,000 resamples, 90%); differences between two predictors
    (for example a mixture model minus a specialist) are bootstrapped paired, on the same resamples.
Baselines (each predicts y_{i+1} from the first i pairs of its own sequence only)
    ``zero``: 0. ``averaging``: x_{i+1}ᵀ ŵ with ŵ = (1/i) Σ_j y_j x_j (E[y x] = w for x ~ N(0, I)).
    ``knn3``: the mean y of the 3 nearest previous x (Euclidean; all of them while fewer than 3).
    ``least_squares``: the minimum-norm solution ŵ = X⁺ y (float64 pseudo-inverse), the Bayes
    predictor for noise-free dense linear functions. ``ridge``: ŵ = (XᵀX + λI)⁻¹Xᵀy for each λ of a
    grid. ``lasso``: scikit-learn's ``lasso_path`` (objective ‖y − Xŵ‖²/(2i) + α‖ŵ‖₁, no intercept)
    for each α of a grid. For ridge and Lasso the reported curve takes, at every i, the penalty
    with the lowest mean error on the evaluation bank itself (an oracle choice, favourable to the
    baseline); every penalty's own curve is kept as well.
    ``bayes_sparse``: the exact posterior mean for k-sparse linear functions — the Bayes-optimal
    predictor for the ``sparse(k)`` class. Every support S of k coordinates (all C(d, k) of them,
    uniform prior), w_S ~ N(0, σ_w² I_k) with σ_w² = 1/k (the classes' unit output variance; 1 for the
    unnormalised targets), y = Xw + ε with known noise variance σ² (the classes are noise-free: a
    tiny σ², 1e-6 by default, is the noise-free limit with a well-conditioned solve). Per support,
    A = X_SᵀX_S/σ² + I/σ_w², b = X_Sᵀy/σ², mean A⁻¹b, log evidence ½ bᵀA⁻¹b − ½ log det A (+ terms
    equal for every support); the prediction averages x_Sᵀ A⁻¹b over the supports' posterior.
"""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import torch

from .model import autocast
from .tasks import parse_mixture

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
LASSO_GRID = (1e-1, 1e-2, 1e-3)
BASELINES = ("zero", "averaging", "knn3", "least_squares", "ridge", "lasso", "bayes_sparse")
BAYES_NOISE = 1e-6


def eval_sequences(task, d: int, n_points: int, count: int = 1280, seed: int = 0):
    """The fixed evaluation bank of ``task`` (a class or mixture spec): xs (S, n, d), ys (S, n)."""
    mixture = parse_mixture(task)
    mixture.check(d)
    gen = torch.Generator().manual_seed(zlib.crc32(mixture.spec.encode()) * 1009 + seed)
    xs, ys, _ = mixture.sample(count, n_points, d, gen)
    return xs, ys


@torch.no_grad()
def predict(model, xs: torch.Tensor, ys: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """The model's predictions (S, n) on the CPU, float32."""
    dev = next(model.parameters()).device
    out = []
    for s in range(0, xs.shape[0], batch_size):
        with autocast(dev):
            out.append(model(xs[s:s + batch_size].to(dev), ys[s:s + batch_size].to(dev)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def hidden_states(model, xs: torch.Tensor, ys: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Every layer's hidden state at every x position: (S, n, n_layer + 1, n_embd), float32, CPU."""
    dev = next(model.parameters()).device
    out = []
    for s in range(0, xs.shape[0], batch_size):
        with autocast(dev):
            _, hs = model(xs[s:s + batch_size].to(dev), ys[s:s + batch_size].to(dev), hidden_states=True)
        out.append(torch.stack([h.float().cpu() for h in hs], dim=2))
    return torch.cat(out)


# --- errors and intervals -----------------------------------------------------------------------

def squared_errors(pred: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(S, n) normalised squared errors (the classes have unit output variance)."""
    return (pred.double() - ys.double()).pow(2)


def bootstrap_indices(count: int, resamples: int = 1000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(count, (resamples, count), generator=gen)


def curve(errors: torch.Tensor, *, level: float = 0.9, resamples: int = 1000, seed: int = 0,
          idx: torch.Tensor | None = None) -> dict:
    """Mean over sequences of an (S, n) error table, with a percentile bootstrap interval per i."""
    if idx is None:
        idx = bootstrap_indices(errors.shape[0], resamples, seed)
    boot = _boot_means(errors.double(), idx)
    lo, hi = _percentiles(boot, level)
    return {"mean": errors.double().mean(0).tolist(), "lo": lo.tolist(), "hi": hi.tolist(), "level": level}


def summary(values: torch.Tensor, *, level: float = 0.9, resamples: int = 1000, seed: int = 0,
            idx: torch.Tensor | None = None) -> dict:
    """Mean of one value per sequence (S,), with its bootstrap interval."""
    if idx is None:
        idx = bootstrap_indices(values.shape[0], resamples, seed)
    boot = values.double()[idx].mean(1)
    lo, hi = _percentiles(boot[:, None], level)
    return {"mean": float(values.double().mean()), "lo": float(lo[0]), "hi": float(hi[0]), "level": level}


def _boot_means(errors, idx, chunk: int = 100):
    return torch.cat([errors[idx[c:c + chunk]].mean(1) for c in range(0, idx.shape[0], chunk)])


def _percentiles(boot, level):
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=boot.dtype)
    lo, hi = torch.quantile(boot, q, dim=0)
    return lo, hi


# --- baselines ----------------------------------------------------------------------------------

def baseline_zero(xs, ys):
    return torch.zeros_like(ys, dtype=torch.float64)


def baseline_averaging(xs, ys):
    xs, ys = xs.double(), ys.double()
    s, n, d = xs.shape
    acc = torch.cumsum(ys[:, :, None] * xs, dim=1)          # Σ_{j<=i} y_j x_j
    prev = torch.cat([acc.new_zeros(s, 1, d), acc[:, :-1]], dim=1)
    count = torch.arange(n, dtype=torch.float64).clamp_min(1)[None, :, None]
    return ((prev / count) * xs).sum(-1)


def baseline_knn(xs, ys, k: int = 3):
    xs, ys = xs.double(), ys.double()
    s, n, _ = xs.shape
    dist = torch.cdist(xs, xs)                               # (S, n, n): query i, key j
    later = torch.ones(n, n, dtype=torch.bool).triu()        # j >= i is not an earlier example
    dist = dist.masked_fill(later, math.inf)
    kk = min(k, max(n - 1, 1))
    vals, idx = torch.topk(dist, kk, dim=2, largest=False)
    found = torch.isfinite(vals)
    picked = torch.gather(ys[:, None, :].expand(s, n, n), 2, idx) * found
    return picked.sum(-1) / found.sum(-1).clamp_min(1)


def _prefix_solutions(xs, ys, solve):
    """ŵ_i = solve(X_{<i}, y_{<i}) for i = 1..n−1, batched over sequences; prediction x_iᵀŵ_i."""
    xs, ys = xs.double(), ys.double()
    out = torch.zeros(ys.shape, dtype=torch.float64)
    for i in range(1, xs.shape[1]):
        w = solve(xs[:, :i], ys[:, :i])
        out[:, i] = (xs[:, i] * w).sum(-1)
    return out


def baseline_least_squares(xs, ys):
    return _prefix_solutions(xs, ys, lambda x, y: (torch.linalg.pinv(x) @ y[:, :, None])[:, :, 0])


def baseline_ridge(xs, ys, lam: float):
    d = xs.shape[2]
    eye = torch.eye(d, dtype=torch.float64)

    def solve(x, y):
        xt = x.transpose(1, 2)
        return torch.linalg.solve(xt @ x + lam * eye, (xt @ y[:, :, None]))[:, :, 0]

    return _prefix_solutions(xs, ys, solve)


def baseline_bayes_sparse(xs, ys, k: int, *, prior_var: float | None = None, noise: float = BAYES_NOISE,
                          chunk: int = 256):
    """The exact posterior mean of y_{i+1} for k-sparse linear functions (see the module's docstring)."""
    import itertools

    s, n, d = xs.shape
    if not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"bayes_sparse needs 1 <= k <= d={d}, got k={k!r}")
    if not noise > 0:
        raise ValueError(f"bayes_sparse needs a positive noise variance, got {noise!r}")
    prior_var = 1.0 / k if prior_var is None else float(prior_var)
    supports = torch.tensor(list(itertools.combinations(range(d), k)), dtype=torch.long)   # (P, k)
    out = torch.zeros(s, n, dtype=torch.float64)
    eye = torch.eye(k, dtype=torch.float64) / prior_var
    for c in range(0, s, chunk):
        x, y = xs[c:c + chunk].double(), ys[c:c + chunk].double()
        xsup = x[:, :, supports]                                       # (B, n, P, k)
        for i in range(1, n):
            xp = xsup[:, :i].permute(0, 2, 1, 3)                       # (B, P, i, k)
            a = xp.transpose(2, 3) @ xp / noise + eye                  # (B, P, k, k)
            b = (xp.transpose(2, 3) @ y[:, None, :i, None])[..., 0] / noise   # (B, P, k)
            chol = torch.linalg.cholesky(a)
            mean = torch.cholesky_solve(b[..., None], chol)[..., 0]
            logev = 0.5 * (b * mean).sum(-1) - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
            post = torch.softmax(logev, dim=1)                         # (B, P)
            out[c:c + chunk, i] = (post * (xsup[:, i] * mean).sum(-1)).sum(1)
    return out


def baseline_lasso(xs, ys, alphas=LASSO_GRID) -> dict[float, torch.Tensor]:
    """scikit-learn's Lasso path at every prefix of every sequence: {alpha: predictions (S, n)}."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import lasso_path
    except ImportError as exc:
        raise ImportError("the Lasso baseline needs scikit-learn: pip install 'platonic_fast[icl]'") from exc
    x, y = xs.double().numpy(), ys.double().numpy()
    s, n, _ = x.shape
    grid = np.asarray(sorted(alphas, reverse=True), dtype=np.float64)
    preds = np.zeros((len(grid), s, n))
    with warnings.catch_warnings():
        # tiny penalties on under-determined prefixes converge slowly; the iterate is still used
        warnings.simplefilter("ignore", ConvergenceWarning)
        for q in range(s):
            for i in range(1, n):
                _, coefs, _ = lasso_path(x[q, :i], y[q, :i], alphas=grid, max_iter=2000, tol=1e-6)
                preds[:, q, i] = x[q, i] @ coefs
    return {float(a): torch.from_numpy(preds[j]) for j, a in enumerate(grid)}


def baselines(xs, ys, names=BASELINES, *, ridge_grid=RIDGE_GRID, lasso_grid=LASSO_GRID, sparse_k: int | None = None,
              prior_var: float | None = None) -> dict:
    """{name: predictions (S, n)}; ridge and lasso with an oracle penalty per i, and each penalty
    as ``ridge[lam]`` / ``lasso[alpha]``; ``bayes_sparse`` needs ``sparse_k`` (its prior's k) and
    takes ``prior_var`` (default 1/k)."""
    unknown = set(names) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: {', '.join(BASELINES)}")
    if "bayes_sparse" in names and sparse_k is None:
        raise ValueError("the bayes_sparse baseline needs sparse_k= (the k of its k-sparse prior)")
    out: dict = {}
    for name in names:
        if name == "zero":
            out[name] = baseline_zero(xs, ys)
        elif name == "averaging":
            out[name] = baseline_averaging(xs, ys)
        elif name == "knn3":
            out[name] = baseline_knn(xs, ys, 3)
        elif name == "least_squares":
            out[name] = baseline_least_squares(xs, ys)
        elif name == "ridge":
            per = {lam: baseline_ridge(xs, ys, lam) for lam in ridge_grid}
            out.update({f"ridge[{lam:g}]": p for lam, p in per.items()})
            out[name], out["ridge_choice"] = _oracle(per, ys)
        elif name == "lasso":
            per = baseline_lasso(xs, ys, lasso_grid)
            out.update({f"lasso[{a:g}]": p for a, p in per.items()})
            out[name], out["lasso_choice"] = _oracle(per, ys)
        elif name == "bayes_sparse":
            out[name] = baseline_bayes_sparse(xs, ys, sparse_k, prior_var=prior_var)
    return out


def _oracle(per: dict, ys):
    """At every i, the predictions of the penalty with the lowest mean squared error."""
    keys = list(per)
    errs = torch.stack([squared_errors(per[k], ys).mean(0) for k in keys])   # (P, n)
    best = errs.argmin(0)
    stacked = torch.stack([per[k] for k in keys])                             # (P, S, n)
    pred = torch.gather(stacked, 0, best[None, None, :].expand(1, *stacked.shape[1:]))[0]
    return pred, [keys[int(b)] for b in best]
