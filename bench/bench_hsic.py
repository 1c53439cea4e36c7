"""Centred-kernel (HSIC) sums through CKA: ``pf.cka`` / ``pf.unbiased_cka`` (linear and RBF) vs
the dense reference approach's O(N^3) HSIC products at N=4096, D=768, float32 (see
_vs_dense.py); on a GPU (``gpu_case``, run by bench_gpu.py) the fused Triton sums, linear and
RBF, vs torch chunked Gram products at the same dtype.

    .venv/bin/python bench/bench_hsic.py [--quick] [--no-save]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _anchors  # noqa: E402
import _vs_dense  # noqa: E402
from _timing import bench_main, dtype_name, run_case, set_ratios  # noqa: E402

OPS = ("hsic",)
# (label, metric, kwargs, nominal flops / (N^2 D) or None, target speed-up)
CASES = [
    ("cka (linear)", "cka", {}, None, 100.0),
    ("unbiased_cka (linear)", "unbiased_cka", {}, None, None),
    ("cka (rbf, sigma=1)", "cka", {"kernel_metric": "rbf", "rbf_sigma": 1.0}, 4.0, None),
]
GPU_ANCHOR = "torch chunked Gram products + sums"


def collect(quick: bool = False, peak: float | None = None):
    return _vs_dense.collect(CASES, OPS, quick=quick, peak=peak)


# exp(-d²/(2σ²)) with σ = 1, as the held form (γ, m, b, 1/h) of ops/hsic.py for both sides
RBF_SIGMA_1 = ((0.5, 0.0, 1.0, 1.0),) * 2


def gpu_case(n: int, d: int, dtype: torch.dtype, device: str) -> list[dict]:
    """The fused Triton sums Σ K∘L, Σ K∘K, Σ L∘L (linear and RBF kernels) on centred features;
    the linear one against torch chunked Gram products, with the relative error of Σ K∘L.
    Nominal flops 2·N²·D: one triangle of tiles, two Gram tiles each."""
    from platonic_fast.triton.hsic import hsic_sums

    a = _anchors.features(n, d, seed=n + d + 1, device=device, dtype=dtype)
    b = _anchors.features(n, d, seed=n + d + 2, device=device, dtype=dtype)
    a, b = a - a.float().mean(0).to(dtype), b - b.float().mean(0).to(dtype)
    flops = 2.0 * n * n * d
    rows = []
    for kernel in ("ip", "rbf"):
        common = {"bench": "hsic", "case": f"{kernel} kernel sums N={n} D={d}", "shape": f"{n}x{d}",
                  "dtype": dtype_name(dtype), "kernel": kernel}
        fused = run_case(dict(common, method="hsic_sums (triton, fused)",
                              impl=f"platonic_fast.triton.hsic.hsic_sums(a, b, {kernel!r}, rbf)"),
                         lambda kernel=kernel: hsic_sums(a, b, kernel, rbf=RBF_SIGMA_1), flops=flops,
                         value_of=lambda out: out["cross"])
        rows.append(fused)
        if kernel != "ip":
            continue
        anchor = run_case(dict(common, method=GPU_ANCHOR, impl="_anchors.torch_chunked_gram_sums(chunk=8192)"),
                          lambda: _anchors.torch_chunked_gram_sums(a, b), flops=flops,
                          max_repeats=1 if n >= 1_000_000 else 3, value_of=lambda out: out[0])
        rows.append(anchor)
        if isinstance(fused.get("value"), float) and isinstance(anchor.get("value"), float):
            # the anchor rounds its Gram products to the input dtype
            fused["rel_err_cross_vs_anchor"] = abs(fused["value"] - anchor["value"]) / abs(anchor["value"])
    set_ratios(rows, GPU_ANCHOR)
    return rows


if __name__ == "__main__":
    sys.exit(bench_main("hsic", collect))
