"""Figures fit for a paper: the names given, the best layer pair (embeddings named) and intervals,
one model pair's full layer matrix, the n-grid's calibrated panel and bands, titles that fit."""

import pytest
import torch

pytest.importorskip("matplotlib")

from platonic_fast import sweep  # noqa: E402
from platonic_fast.features import Features  # noqa: E402
from platonic_fast.sweep_views import display_names, format_table, heatmap_figure, layer_name, n_grid_figure  # noqa: E402

N = 120


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, 4, generator=g)
    fp = {"fingerprint": "samples-sha256:" + "cd" * 32, "spec": {}}
    for folder, name, layers, modality in (("x", "minilm_pool-avg", 3, "language"),
                                           ("x", "gpt2-random_pool-avg_random-init", 2, "language"),
                                           ("y", "vit-tiny_pool-cls", 4, "vision")):
        (root / folder).mkdir(exist_ok=True)
        feats = torch.stack([z @ torch.randn(4, 12, generator=g) * l + torch.randn(N, 12, generator=g)
                             for l in range(layers)], 1)
        Features(feats, None, {"model": name, "modality": modality, "samples": fp}).save(
            root / folder / f"{name}.safetensors")
    return root


def _titles(fig):
    return [fig._suptitle.get_text()] + [ax.get_title() for ax in fig.axes]


def test_names_and_layer_names():
    assert display_names(["minilm_pool-avg", "gpt2_pool-avg_random-init", "vit_pool-cls", "vit_pool-mean"]) == \
        ["minilm", "gpt2 (random init)", "vit_pool-cls", "vit_pool-mean"]  # two poolings keep their stems
    lang, vis = {"modality": "language", "num_layers": 4}, {"modality": "vision", "num_layers": 4}
    assert [layer_name(lang, i) for i in range(5)] == ["emb", "L1", "L2", "L3", "all"]
    assert layer_name(vis, 0) == "L0" and layer_name(None, 2) == "L2"


@pytest.mark.slow  # a sweep with permutations and intervals, then a figure
def test_heatmap_and_table_show_best_layers_and_intervals(files, tmp_path):
    res = sweep.measure_sets(files / "x", files / "y", topk=5, out_dir=tmp_path / "o", progress=False,
                             ci_repeats=6, permutations=9, set_names=("language", "vision"))
    fig = heatmap_figure(res)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("×" in t and "[" in t for t in texts)  # score, best layer pair, interval in each cell
    assert [t.get_text().replace("\n", "") for t in fig.axes[0].get_yticklabels()] == ["gpt2-random (random init)",
                                                                                     "minilm"]
    width_in = fig.get_size_inches()[0]
    for title in _titles(fig):  # wrapped to the figure: no line wider than it at 9 pt
        assert max(map(len, title.split("\n"))) * 0.55 * 9 / 72 <= width_in
    table = format_table(res)
    assert "best layer pair" in table and "minilm" in table and "_pool-" not in table
    assert "L2 × L" in table  # minilm's last layer, named by index


@pytest.mark.slow  # a sweep with permutations and intervals, then a figure
def test_one_model_pair_gets_its_layer_matrix(files, tmp_path):
    res = sweep.measure_sets(files / "x" / "minilm_pool-avg.safetensors", files / "y" / "vit-tiny_pool-cls.safetensors",
                             topk=5, out_dir=tmp_path / "o", progress=False, ci_repeats=6)
    fig = heatmap_figure(res)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, 4)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["emb", "L1", "L2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L0", "L1", "L2", "L3"]
    assert "interval" in fig._suptitle.get_text() and "minilm vs vit-tiny" in fig._suptitle.get_text()


@pytest.mark.slow  # a sweep with permutations and intervals, then a figure
def test_n_grid_has_calibrated_panel_bands_and_outside_legend(files, tmp_path):
    res = sweep.measure_sets(files / "x", files / "y", topk=5, out_dir=tmp_path / "o", progress=False,
                             ci_repeats=6, permutations=9, n_grid=[60, N])
    fig = n_grid_figure(res)
    raw, cal = fig.axes[:2]
    assert "calibrated" in cal.get_ylabel() and raw.collections  # fill_between bands
    assert fig.legends and not raw.get_legend()  # the legend is the figure's, outside the axes
