"""kNN (self form, self excluded): pf.knn vs torch chunked matmul+topk vs faiss IndexFlatIP
vs the dense reference approach (small N only); on a GPU (``gpu_case``, run by bench_gpu.py)
the fused Triton kernel vs torch chunked matmul+topk at the same dtype.

Throughput = 2 * N^2 * D / time (the similarity GEMM; the top-k is not counted).  The ratio
column is faiss time / method time on the CPU (torch time / method time on a GPU), i.e. the
throughput ratio to that anchor.

    .venv/bin/python bench/bench_knn.py [--quick] [--no-save]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _anchors  # noqa: E402
from _timing import add_peak, bench_main, dtype_name, import_faiss, import_pf, pf_backend, run_case, set_ratios, target  # noqa: E402

K = 10
FULL = [  # (N, D, is_target, run dense)
    (8192, 768, False, True),
    (65536, 768, True, False),
]
QUICK = [
    (2048, 256, False, True),
    (4096, 256, True, True),
]
PF_DTYPES = ("float32", "bfloat16")
FAISS = "faiss IndexFlatIP"
TORCH = "torch chunked mm+topk"
GPU_CHUNK = 8192


def time_methods(common: dict, methods: list, flops: float) -> list[dict]:
    """One row per ``(fields, fn, run_case options)`` on the same input; every method's
    neighbour lists are compared with the torch chunked anchor's (exact on tie-free data)."""
    lists: dict[tuple, torch.Tensor] = {}
    rows = []
    for fields, fn, options in methods:
        row = dict(common, **fields)
        key = (row["method"], row["dtype"])

        def keep(res, key=key):
            lists[key] = torch.as_tensor(res[1]).to(torch.int64)

        rows.append(run_case(row, fn, flops=flops, value_of=keep, **options))
    ref = next((v for (method, _), v in lists.items() if method == TORCH), None)
    for row in rows:
        key = (row["method"], row["dtype"])
        if ref is not None and row["method"] != TORCH and key in lists:
            row["agreement_vs_torch"] = _anchors.neighbour_agreement(lists[key], ref)
    return rows


def collect(quick: bool = False, peak: float | None = None, max_seconds: float = 900.0):
    pf, pf_err = import_pf()
    if pf is not None:
        from platonic_fast._checks import DTYPE_NAMES
    faiss, faiss_err = import_faiss()

    rows: list[dict] = []
    for n, d, is_target, with_dense in (QUICK if quick else FULL):
        case = f"N={n} D={d} k={K}" + ((" (target-size stand-in)" if quick else " (target)")
                                        if is_target else "")
        x = _anchors.features(n, d, seed=n)
        flops = 2.0 * n * n * d
        timed = {"est_seconds": flops / (peak * 1e9) if peak else None, "max_seconds": max_seconds}
        common = {"bench": "knn", "case": case, "shape": f"{n}x{d}", "k": K, "target": is_target}

        # faiss first: it is the anchor of the target ratio
        fields = {"method": FAISS, "impl": "faiss-cpu search(x, k+1), self dropped", "dtype": "float32"}
        if faiss is None:
            methods = [(fields, None, {"skip": faiss_err})]
        else:
            xn = x.numpy()
            fields["faiss_threads"] = faiss.omp_get_max_threads()
            methods = [(fields, lambda xn=xn: _anchors.faiss_knn(faiss, xn, K), timed)]

        for name in PF_DTYPES:
            if pf is None:
                methods.append(({"method": "pf.knn (cpu)", "dtype": name}, None, {"skip": pf_err}))
                continue
            xi = x.to(DTYPE_NAMES[name])
            backend, note = pf_backend(("knn",), "cpu", dtypes=(xi.dtype,), k=K)
            fields = {"method": f"pf.knn ({backend})", "dtype": name,
                      "impl": f"platonic_fast.knn(x, k, backend={backend!r})"}
            if note:
                fields["note"] = note
            methods.append((fields, lambda xi=xi, backend=backend: pf.knn(xi, K, backend=backend), timed))

        methods.append(({"method": TORCH, "dtype": "float32", "impl": "_anchors.torch_chunked_knn(chunk=1024)"},
                        lambda x=x: _anchors.torch_chunked_knn(x, K), timed))
        # N x N float32 similarity + its int64 full argsort (+ sort values)
        est_bytes = float(n) * n * (4 + 8 + 4)
        methods.append(({"method": _anchors.DENSE, "dtype": "float32", "impl": _anchors.DENSE_IMPL},
                        lambda x=x: _anchors.dense_knn(x, K),
                        dict(timed, est_bytes=est_bytes, skip=None if with_dense else
                             f"dense approach at this N would need ~{est_bytes / 1e9:.1f} GB "
                             f"(N x N fp32 similarity + int64 argsort)")))
        rows.extend(time_methods(common, methods, flops))
        del x, methods

    set_ratios(rows, FAISS)
    # secondary ratio: against torch chunked
    for row in rows:
        tr = [t for t in rows if t["case"] == row["case"] and t["method"] == TORCH]
        if tr and tr[0].get("median_s") and row.get("median_s"):
            row["ratio_vs_torch_chunked"] = tr[0]["median_s"] / row["median_s"]
    add_peak(rows, peak)

    tgt = [r for r in rows if r.get("target") and r["method"].startswith("pf.knn")
           and r["dtype"] == "float32"]
    return rows, [target(f"knn {tgt[0]['case'] if tgt else ''} float32: pf.knn throughput / faiss",
                         tgt[0].get("ratio") if tgt else None, quick=quick, at_least=0.9)]


def gpu_case(n: int, d: int, dtype: torch.dtype, device: str) -> list[dict]:
    """The fused Triton kNN against torch chunked matmul + topk at the same dtype (bench_gpu.py)."""
    from platonic_fast.triton.knn import knn_triton

    x = _anchors.features(n, d, seed=n + d, device=device, dtype=dtype)
    common = {"bench": "knn", "case": f"N={n} D={d} k={K}", "shape": f"{n}x{d}", "k": K,
              "dtype": dtype_name(dtype)}
    rows = time_methods(common, [
        ({"method": "knn (triton, fused)",
          "impl": "platonic_fast.triton.knn.knn_triton(x, None, k, exclude_self=True)"},
         lambda: knn_triton(x, None, K, exclude_self=True), {}),
        ({"method": TORCH, "impl": f"_anchors.torch_chunked_knn(chunk={GPU_CHUNK})"},
         lambda: _anchors.torch_chunked_knn(x, K, GPU_CHUNK), {"max_repeats": 1 if n >= 1_000_000 else 3}),
    ], 2.0 * n * n * d)
    set_ratios(rows, TORCH)
    return rows


if __name__ == "__main__":
    sys.exit(bench_main("knn", collect))
