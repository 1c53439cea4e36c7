"""kNN (self form, self excluded): pf.knn vs torch chunked matmul+topk vs faiss IndexFlatIP
vs the dense reference approach (small N only).

Throughput = 2 * N^2 * D / time (the similarity GEMM; the top-k is not counted).  The ratio
column is faiss time / method time, i.e. the throughput ratio to faiss.

    .venv/bin/python bench/bench_knn.py [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _anchors  # noqa: E402
import _pf  # noqa: E402
from _timing import add_peak, bench_main, import_faiss, import_pf, run_case, set_ratios  # noqa: E402

K = 10
FULL = [  # (N, D, is_target, run dense)
    (8192, 768, False, True),
    (65536, 768, True, False),
]
QUICK = [
    (2048, 256, False, True),
    (4096, 256, True, True),
]


def _overlap(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Agreement of two N x k index lists: set recall and fraction of identical ordered rows."""
    hit = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).sum(dim=1).double()
    return {"recall": (hit / a.shape[1]).mean().item(),
            "rows_identical": (a == b).all(dim=1).double().mean().item()}


def collect(quick: bool = False, peak: float | None = None, max_seconds: float = 900.0):
    pf, pf_err = import_pf()
    faiss, faiss_err = import_faiss()
    dense = _anchors.DenseReference()
    dense_knn, dense_impl = dense.get("knn")
    knn_fn, backend, note = _pf.resolve(pf, "knn", lambda f: f(_pf.tiny_pair()[0], 3))

    rows: list[dict] = []
    for n, d, target, with_dense in (QUICK if quick else FULL):
        case = f"N={n} D={d} k={K}" + ((" (target-size stand-in)" if quick else " (target)")
                                        if target else "")
        x, _ = _anchors.correlated_pair(n, d, seed=n, d_b=1)
        flops = 2.0 * n * n * d
        est_s = flops / (peak * 1e9) if peak else None
        common = {"bench": "knn", "case": case, "shape": f"{n}x{d}", "k": K, "target": target}
        idx: dict[str, torch.Tensor] = {}

        def keep(name):
            def f(res):
                idx[name] = torch.as_tensor(res[1]).to(torch.int64)
                return None
            return f

        # faiss first: it is the anchor of the target ratio
        r = dict(common, method="faiss IndexFlatIP", impl="faiss-cpu search(x, k+1), self dropped",
                 dtype="float32")
        if faiss is None:
            r = run_case(r, None, skip=faiss_err)
        else:
            r["faiss_threads"] = faiss.omp_get_max_threads()
            xn = x.numpy()
            r = run_case(r, lambda: _anchors.faiss_knn(faiss, xn, K), flops=flops,
                         est_seconds=est_s, max_seconds=max_seconds, value_of=keep("faiss"))
        rows.append(r)

        for dt in (torch.float32, torch.bfloat16):
            r = dict(common, method=f"pf.knn ({backend})", dtype=str(dt).replace("torch.", ""),
                     impl=f"platonic_fast.knn(x, k, backend={backend!r})")
            if note:
                r["note"] = note
            if knn_fn is None:
                rows.append(run_case(r, None, skip=note or pf_err))
                continue
            xi = x if dt == torch.float32 else x.to(dt)
            r = run_case(r, lambda: knn_fn(xi, K), flops=flops, est_seconds=est_s,
                         max_seconds=max_seconds, value_of=keep(f"pf_{r['dtype']}"))
            rows.append(r)
            del xi

        r = dict(common, method="torch chunked mm+topk", dtype="float32",
                 impl="_anchors.torch_chunked_knn(chunk=1024)")
        rows.append(run_case(r, lambda: _anchors.torch_chunked_knn(x, K), flops=flops,
                             est_seconds=est_s, max_seconds=max_seconds, value_of=keep("torch")))

        r = dict(common, method="dense reference", dtype="float32", impl=dense_impl)
        # N x N float32 similarity + its int64 full argsort (+ sort values)
        est_bytes = float(n) * n * (4 + 8 + 4)
        rows.append(run_case(r, lambda: dense_knn(x, K), flops=flops,
                             skip=None if with_dense else
                             f"dense approach at this N would need ~{est_bytes / 1e9:.1f} GB "
                             f"(N x N fp32 similarity + int64 argsort)",
                             est_bytes=est_bytes, est_seconds=est_s, max_seconds=max_seconds,
                             value_of=keep("dense")))

        # agreement with the exact torch anchor (tie-free random data)
        ref = idx.get("torch")
        for row in rows:
            if row.get("case") != case or ref is None:
                continue
            name = {"faiss IndexFlatIP": "faiss", "torch chunked mm+topk": None,
                    "dense reference": "dense"}.get(row["method"], f"pf_{row['dtype']}")
            if name and name in idx:
                row["agreement_vs_torch"] = _overlap(idx[name], ref)
        del x, idx

    set_ratios(rows, "faiss IndexFlatIP")
    # secondary ratio: against torch chunked
    for row in rows:
        tr = [t for t in rows if t["case"] == row["case"] and t["method"] == "torch chunked mm+topk"]
        if tr and tr[0].get("median_s") and row.get("median_s"):
            row["ratio_vs_torch_chunked"] = tr[0]["median_s"] / row["median_s"]
    add_peak(rows, peak)

    targets = []
    tgt = [r for r in rows if r.get("target") and r["method"].startswith("pf.knn")
           and r["dtype"] == "float32"]
    meas = tgt[0].get("ratio") if tgt else None
    targets.append({
        "name": f"knn {tgt[0]['case'] if tgt else ''} float32: pf.knn throughput / faiss",
        "measured": meas, "unit": "x", "need": ">= 0.9x",
        "met": None if meas is None or quick else meas >= 0.9,
        "note": "quick sizes, not the target shape" if quick else None,
    })
    return rows, targets


if __name__ == "__main__":
    sys.exit(bench_main("knn", collect))
