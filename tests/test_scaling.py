"""The layer preparation's powers of two (issue 22, items 2-3), on every path that prepares layers:
in memory (N x L x D tensor and list of layers), out of core (a file) and sharded (a communicator
of size 1). The scale is taken per layer after the clamp, so

- one huge entry that the clamp removes changes nothing: the scores equal those of the same data
  whose entry is a merely large value clamped to the same threshold;
- a layer a million times smaller than its neighbour in one tensor scores as it does alone.
"""

import numpy as np
import pytest
import torch

import platonic_fast as pf
import platonic_fast.distributed as pfd
from platonic_fast import features, outofcore
from platonic_fast.align import prepare_layers

N, D = 160, 24
METRICS = [("mutual_knn", {"topk": 8}), ("cka", {})]


def _base(seed=0):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(N, 6, generator=g)
    x = torch.stack([shared @ torch.randn(6, D, generator=g) + torch.randn(N, D, generator=g) for _ in range(3)], 1)
    y = torch.stack([shared @ torch.randn(6, D, generator=g) + torch.randn(N, D, generator=g) for _ in range(2)], 1)
    return x, y


def _outlier_pair():
    """The same tensor with one entry 1e13 and with it 100: both the tensor's largest entry, above
    every clamp threshold, so the clamped tensors are identical."""
    x, y = _base()
    huge, large = x.clone(), x.clone()
    huge[5, 1, 7], large[5, 1, 7] = 1e13, 100.0
    return huge, large, y


def _spread_pair():
    """A layer of 1e-6 beside one of 1e6, and a clamp-neutral y (every |entry| is 1)."""
    x, _ = _base(1)
    mixed = torch.stack([x[:, 0] * 1e-6, x[:, 1] * 1e6], 1)
    y = torch.sign(torch.randn(N, 2, D, generator=torch.Generator().manual_seed(3)))
    y[y == 0] = 1.0
    return mixed, y


def _paths(tmp_path):
    """Each path of the layer search: a callable (x, y, metric, options) -> scores."""
    def in_memory(x, y, metric, opts, **kw):
        return pf.align(x, y, metric, **opts, **kw).scores

    def as_list(x, y, metric, opts, **kw):
        return pf.align(list(x.unbind(1)), list(y.unbind(1)), metric, **opts, **kw).scores

    def out_of_core(x, y, metric, opts, **kw):
        fx, fy = tmp_path / f"x{id(x)}.npy", tmp_path / f"y{id(y)}.npy"
        np.save(fx, x.numpy())
        np.save(fy, y.numpy())
        return outofcore.align_files(fx, fy, metric, **opts, **kw).scores

    def sharded(x, y, metric, opts, **kw):  # no process group: a communicator of size 1
        return pfd.align(x, y, metric, **opts, **kw).scores

    return {"in_memory": in_memory, "list": as_list, "out_of_core": out_of_core, "sharded": sharded}


@pytest.mark.parametrize("path", ["in_memory", "list", "out_of_core", "sharded"])
@pytest.mark.parametrize("metric,opts", METRICS)
@pytest.mark.parametrize("exact", [False, True])
def test_a_single_huge_entry_the_clamp_removes_changes_nothing(tmp_path, path, metric, opts, exact):
    huge, large, y = _outlier_pair()
    run = _paths(tmp_path)[path]
    got, want = run(huge, y, metric, opts, exact=exact), run(large, y, metric, opts, exact=exact)
    assert torch.equal(got, want), (got, want)


@pytest.mark.parametrize("path", ["in_memory", "out_of_core", "sharded"])
@pytest.mark.parametrize("metric,opts", METRICS)
def test_a_small_layer_beside_a_large_one_scores_as_alone(tmp_path, path, metric, opts):
    mixed, y = _spread_pair()
    run = _paths(tmp_path)[path]
    got = run(mixed, y, metric, opts)
    alone = run(mixed[:, :1], y, metric, opts, q=1.0)  # y is clamp-neutral, layer 0 under the threshold
    assert torch.equal(got[:1], alone), (got, alone)


def test_prepared_rows_have_unit_norm_whatever_the_scale():
    mixed, _ = _spread_pair()
    huge, _, _ = _outlier_pair()
    for feats in (mixed, huge, list(mixed.unbind(1)), list(huge.unbind(1))):
        for t in prepare_layers(feats, "x", concat=True):
            norms = torch.linalg.vector_norm(t, dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_streamed_concatenation_equals_in_memory_at_any_scale(tmp_path):
    mixed, _ = _spread_pair()
    for feats, name in ((mixed, "stacked"), (None, "list")):
        if feats is None:
            layers = [mixed[:, 0], mixed[:, 1, :10] * 1e9]
            path = tmp_path / "list.safetensors"
            features.Features(layers, meta={"model": "m"}).save(path)
        else:
            layers, path = feats, tmp_path / "stacked.npy"
            np.save(path, feats.numpy())
        ref = prepare_layers(layers, "x", concat=True)
        with outofcore.StreamedLayers(path, concat=True, block_bytes=5_000) as s:
            for layer, want in enumerate(ref):
                assert torch.equal(s.layer(layer), want), (name, layer)
