"""Alignment: a scorer against fixed references, equal to align() and preparing references once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import platonic_fast as pf
from platonic_fast import metrics
from platonic_fast.scorer import Alignment

N = 97  # odd on purpose


def _feats(seed, layers, width):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, 8, generator=g)
    # Layers that share structure, so scores differ between pairs and a best pair exists.
    return torch.stack([base @ torch.randn(8, width, generator=g) + 0.5 * torch.randn(N, width, generator=g)
                        for _ in range(layers)], dim=1)


@pytest.fixture(scope="module")
def refs():
    from platonic_fast.features import Features

    g = torch.Generator().manual_seed(9)
    return {
        "tensor": _feats(1, 4, 16),
        "list": [torch.randn(N, w, generator=g) for w in (6, 20, 11)],
        "features": Features(_feats(2, 3, 12), None, {"model": "ref"}),
        "numpy": _feats(3, 2, 10).numpy(),
    }


def _layers(ref):
    return getattr(ref, "layers", ref)


CASES = [
    ("mutual_knn", {"topk": 5}),
    ("cycle_knn", {"topk": 5}),
    ("lcs_knn", {"topk": 3}),
    ("edit_distance_knn", {"topk": 4}),
    ("cka", {}),
    ("cka", {"kernel_metric": "rbf", "rbf_sigma": 0.7}),
    ("unbiased_cka", {}),
    ("cknna", {"topk": 6}),
    ("cknna", {"topk": 6, "unbiased": False}),
    ("svcca", {"cca_dim": 4}),
]


@pytest.mark.parametrize("metric,options", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_scores_equal_align(refs, metric, options):
    x = _feats(7, 3, 14)
    scorer = Alignment(refs)
    results = scorer.score(x, metric, **options)
    assert list(results) == list(refs) == scorer.names
    for name, ref in refs.items():
        want = pf.align(x, _layers(ref), metric, **options)
        got = results[name]
        assert got.scores.dtype == torch.float64 and got.scores.shape == want.scores.shape
        assert torch.equal(got.scores, want.scores), name
        assert got.best == want.best and got.best_layers == want.best_layers
        assert got.metric == want.metric and got.options == want.options


def test_concat_and_preparation_options_equal_align(refs):
    x = [torch.randn(N, 9), torch.randn(N, 13)]
    kw = dict(q=0.9, exact=True, concat=True)
    results = Alignment(refs, **kw).score(x, "mutual_knn", topk=7)
    for name, ref in refs.items():
        want = pf.align(x, _layers(ref), "mutual_knn", topk=7, **kw)
        assert torch.equal(results[name].scores, want.scores)
        assert results[name].best_layers == want.best_layers
    no_norm = Alignment({"r": refs["tensor"]}, q=1.0, normalize=False).score(x, "cka")["r"]
    assert torch.equal(no_norm.scores, pf.align(x, refs["tensor"], "cka", q=1.0, normalize=False).scores)


def _counting(monkeypatch, metric):
    """Replace the metric's spec by one that counts prepare() calls."""
    spec = metrics.METRICS[metric]
    calls = []

    def prepare(x, **opts):
        calls.append(x.shape)
        return spec.prepare(x, **opts)

    monkeypatch.setitem(metrics.METRICS, metric, dataclasses.replace(spec, prepare=prepare))
    return calls


def test_references_are_prepared_once_per_metric_and_options(refs, monkeypatch):
    calls = _counting(monkeypatch, "mutual_knn")
    scorer = Alignment(refs)
    ref_layers = sum(len(r) if isinstance(r, list) else _layers(r).shape[1] for r in refs.values())
    x = _feats(11, 3, 14)
    first = scorer.score(x, "mutual_knn", topk=5)
    assert len(calls) == ref_layers + 3
    second = scorer.score(_feats(12, 2, 14), "mutual_knn", topk=5)
    assert len(calls) == ref_layers + 3 + 2, "the second call must reuse the references' neighbour lists"
    again = scorer.score(x, "mutual_knn", topk=5)
    for name in refs:
        assert torch.equal(first[name].scores, again[name].scores)
        assert second[name].scores.shape[0] == 2
    scorer.score(x, "mutual_knn", topk=6)  # other options: new reference states
    assert len(calls) == 2 * ref_layers + 3 + 2 + 3 + 3
    scorer.clear_cache()
    scorer.score(x, "mutual_knn", topk=5)
    assert len(calls) == 3 * ref_layers + 3 + 2 + 3 + 3 + 3


def test_training_loop_use(refs):
    """Scores follow the model as it changes; a feature set equal to a reference scores 1."""
    scorer = Alignment({"tensor": refs["tensor"]})
    same = scorer.score(refs["tensor"], "mutual_knn", topk=5)["tensor"]
    assert same.best == pytest.approx(1.0) and torch.diagonal(same.scores).min() == pytest.approx(1.0)
    noise = scorer.score(torch.randn(N, 2, 16), "mutual_knn", topk=5)["tensor"]
    assert noise.best < 0.5


def test_errors(refs):
    with pytest.raises(TypeError, match="non-empty dict"):
        Alignment({})
    with pytest.raises(TypeError, match="non-empty dict"):
        Alignment([torch.randn(N, 2, 3)])
    with pytest.raises(TypeError, match="names must be str"):
        Alignment({1: torch.randn(N, 2, 3)})
    with pytest.raises(ValueError, match="same N"):
        Alignment({"a": torch.randn(N, 2, 3), "b": torch.randn(N + 1, 2, 3)})
    with pytest.raises(ValueError, match=r"references\['a'\]"):
        Alignment({"a": torch.randn(N, 3)})
    with pytest.raises(ValueError, match="NaN|finite"):
        Alignment({"a": torch.full((N, 2, 3), float("nan"))})
    scorer = Alignment(refs)
    with pytest.raises(ValueError, match="metric"):
        scorer.score(torch.randn(N, 2, 4), "nope")
    with pytest.raises(ValueError, match="N=50"):
        scorer.score(torch.randn(50, 2, 4))
    with pytest.raises(ValueError, match="topk"):
        scorer.score(torch.randn(N, 2, 4), topk=N)
    with pytest.raises(TypeError, match="unexpected option"):
        scorer.score(torch.randn(N, 2, 4), "cka", cca_dim=3)
    with pytest.raises(ValueError, match="cca_dim"):
        scorer.score(torch.randn(N, 2, 4), "svcca", cca_dim=7)  # the narrowest layer is 6 wide
    assert np.isfinite(scorer.score(np.random.rand(N, 2, 4).astype(np.float32))["list"].best)
