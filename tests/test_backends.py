"""The backend registry: declared constraints decide, auto never fails, explicit names are strict."""

import pytest
import torch

import platonic_fast as pf
from platonic_fast import _backends

from conftest import randn


@pytest.fixture
def toy_op(monkeypatch):
    """A throwaway op with a constrained fast backend and the torch reference."""
    monkeypatch.setitem(_backends._REGISTRY, "toy", {})
    _backends.register("toy", "cpu", devices=("cpu",), dtypes=(torch.float32,), max_k=4)(lambda: "cpu")
    _backends.register("toy", "torch", devices=("cpu", "cuda"))(lambda: "torch")
    return "toy"


def test_auto_takes_the_first_backend_that_serves_the_call(toy_op):
    assert _backends.resolve(toy_op, "auto", "cpu", dtypes=(torch.float32,), k=3)[0] == "cpu"
    assert _backends.resolve(toy_op, "auto", "cpu", dtypes=(torch.float64,), k=3)[0] == "torch"
    assert _backends.resolve(toy_op, "auto", "cpu", dtypes=(torch.float32,), k=5)[0] == "torch"


def test_explicit_backend_that_cannot_serve_raises_and_lists_what_can(toy_op):
    with pytest.raises(ValueError, match=r"k <= 4.*\['torch'\]"):
        _backends.resolve(toy_op, "cpu", "cpu", dtypes=(torch.float32,), k=5)
    with pytest.raises(ValueError, match="does not take float64"):
        _backends.resolve(toy_op, "cpu", "cpu", dtypes=(torch.float64,))
    with pytest.raises(ValueError, match="has no 'triton' backend"):
        _backends.resolve(toy_op, "triton", "cpu")
    with pytest.raises(ValueError, match="one of"):
        _backends.resolve(toy_op, "fastest", "cpu")


def test_available_applies_the_constraints(toy_op):
    assert _backends.available(toy_op, "cpu", dtypes=(torch.float32,), k=4) == ["cpu", "torch"]
    assert _backends.available(toy_op, "cpu", dtypes=(torch.float16,)) == ["torch"]


def test_every_op_has_a_torch_reference_on_every_device_and_dtype():
    for op in _backends.ops():
        ref = _backends.backends_of(op).get("torch")
        assert ref is not None, f"{op} has no torch reference"
        assert set(ref.devices) == {"cpu", "cuda"} and not ref.needs and ref.max_k is None, op


@pytest.mark.parametrize("op", ["knn", "hsic", "svcca", "outliers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_auto_never_fails(op, dtype):
    name, _ = _backends.resolve(op, "auto", "cpu", dtypes=(dtype,), k=10_000)
    assert name in _backends.available(op, "cpu", dtypes=(dtype,), k=10_000)


def test_compiled_backends_do_not_run_without_the_core(monkeypatch):
    """Without the compiled core every op resolves to a backend that runs, and the metrics work."""
    monkeypatch.setitem(_backends._NEED_CHECKS, "core", lambda: False)
    for op in _backends.ops():
        assert "cpu" not in _backends.available(op, "cpu") or op in ("hsic", "svcca"), op
    a, b = randn(60, 8, seed=1), randn(60, 5, seed=2)
    for metric in pf.SUPPORTED_METRICS:
        assert isinstance(pf.measure(metric, a, b, **({"cca_dim": 3} if metric == "svcca" else {})), float)
    with pytest.raises(ValueError, match="compiled core"):
        pf.knn(a, 3, backend="cpu")


def test_environment_override(monkeypatch):
    x = randn(40, 6, seed=3)
    monkeypatch.setenv("PLATONIC_FAST_BACKEND", "torch")
    assert _backends.resolve("knn", "auto", "cpu")[0] == "torch"
    pf.knn(x, 3)
    monkeypatch.setenv("PLATONIC_FAST_BACKEND", "junk")
    with pytest.raises(ValueError, match="PLATONIC_FAST_BACKEND"):
        pf.knn(x, 3)


def test_env_report_prints_the_declared_constraints():
    from platonic_fast import env

    info = env.report()
    knn = info["backends"]["knn"]
    assert knn["triton"]["dtypes"] == ["float32", "float16", "bfloat16"]
    assert knn["triton"]["max_k"] in (128, "not built")
    assert knn["triton"]["min_capability"] == "8.0"
    assert "core" in knn["cpu"]["needs"]
    for op, per_dev in info["auto"].items():
        assert per_dev["cpu"], f"auto has nothing for {op} on the CPU"


def _pretend_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setitem(_backends._NEED_CHECKS, "cuda_kernels", lambda: True)
    monkeypatch.setitem(_backends._NEED_CHECKS, "triton", lambda: True)


def test_auto_prefers_device_native_backends(monkeypatch):
    # On CUDA tensors "auto" takes a GPU kernel before the CPU core's host copy.
    _pretend_gpu(monkeypatch, (9, 0))
    assert _backends.available("neighbour_lists", "cuda")[0] == "cuda"
    assert _backends.available("knn", "cuda", dtypes=(torch.bfloat16,))[0] == "triton"
    assert _backends.available("neighbour_lists", "cpu")[0] == "cpu"


def test_triton_knn_declares_no_float64(monkeypatch):
    _pretend_gpu(monkeypatch, (9, 0))
    assert _backends.resolve("knn", "auto", "cuda", dtypes=(torch.float64,))[0] != "triton"
    with pytest.raises(ValueError, match="does not take float64"):
        _backends.resolve("knn", "triton", "cuda", dtypes=(torch.float64,))


@pytest.mark.parametrize("capability,served", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_gpus_below_compute_capability_8_get_other_backends(monkeypatch, capability, served):
    # The CUDA build (sm_80/sm_90 + PTX) and the Triton kernels need capability >= 8.0: an older
    # GPU gets the CPU core / torch paths from "auto", not a "no kernel image" error.
    _pretend_gpu(monkeypatch, capability)
    avail = _backends.available("knn", "cuda", dtypes=(torch.float32,))
    assert ("triton" in avail) is served
    assert avail[-1] == "torch"
    if not served:
        with pytest.raises(ValueError, match="compute capability >= 8.0"):
            _backends.resolve("knn", "triton", "cuda", dtypes=(torch.float32,))


def test_env_says_plainly_when_there_is_no_gpu(capsys):
    from platonic_fast import env

    env.main()
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "GPUs: no GPU" in out and "driver" not in out
    for op in _backends.ops():
        assert op in out
