"""The certified bf16 screen of the CPU kNN (issue 20, docs/bf16-screen.md), side by side:

- self-kNN (N x D, k, float32): faiss IndexFlatIP, pf.knn with the screen forced off (the exact
  float32 path) and pf.knn with it on; the screen's lists and values are compared bitwise with
  the exact path's, faiss's lists by agreement;
- mutual_knn (N = 4,096 by default) with and without the screen vs the dense reference;
- the share of rows that fell back to the exact path: on the random data above and on real
  features (every MiniLM-L6 layer of the demo's sentences, per sentence, prepared as
  ``align`` prepares layers; the screen forced on, as N is below its automatic threshold).

Every timing records the load average before and after it (a loaded machine's figures are not
final). CPU flags, the screen's CPU features and the torch thread count are in the JSON.

    .venv/bin/python bench/bench_knn_screen.py                 # full size (minutes)
    .venv/bin/python bench/bench_knn_screen.py --quick         # dry run at small N
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _anchors  # noqa: E402
from _timing import environment, import_faiss, timestamp, write_results  # noqa: E402


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def timed(fn, repeats: int):
    """(seconds: the minimum over ``repeats`` runs, result of the last, load before/after)."""
    before = _load()
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out, {"load_before": before, "load_after": _load()}


def self_knn(pf, knn_screen, faiss, n: int, d: int, k: int, repeats: int) -> list[dict]:
    x = _anchors.features(n, d, seed=n)
    case = f"self-kNN N={n} D={d} k={k} float32"
    rows = []
    lists = {}
    if faiss is not None:
        s, (dist, ind), load = timed(lambda: _anchors.faiss_knn(faiss, x.numpy(), k), repeats)
        lists["faiss"] = torch.as_tensor(ind).to(torch.int64)
        rows.append(dict(case=case, method="faiss IndexFlatIP", seconds=s, faiss_threads=faiss.omp_get_max_threads(),
                         **load))
    s, exact, load = timed(lambda: pf.knn(x, k, backend="cpu", screen="off"), repeats)
    rows.append(dict(case=case, method="pf.knn cpu, screen off (exact float32 path)", seconds=s, **load))
    # both bf16 products of the screen, side by side in the same run (docs/bf16-screen.md)
    products = ["onednn"] + knn_screen.kernel_isas()
    for product in products:
        os.environ[knn_screen.PRODUCT_ENV] = product
        try:
            knn_screen.stats(reset=True)
            s, screened, load = timed(lambda: pf.knn(x, k, backend="cpu", screen="on"), repeats)
            st = knn_screen.stats(reset=True)
        finally:
            os.environ.pop(knn_screen.PRODUCT_ENV, None)
        rows.append(dict(case=case, method=f"pf.knn cpu, bf16 screen ({product} product)", seconds=s, **load,
                         lists_equal_exact=bool(torch.equal(screened[1], exact[1])),
                         values_equal_exact=bool(torch.equal(screened[0], exact[0])),
                         fallback_share=st["fallback_rows"] / max(1, st["rows"]),
                         window_mean=st["candidates"] / max(1, st["rows"] - st["fallback_rows"]), stats=st))
    if "faiss" in lists:
        rows[-1]["faiss_agreement"] = _anchors.neighbour_agreement(lists["faiss"], exact[1])
    base = {r["method"]: r["seconds"] for r in rows}
    for r in rows:
        if "faiss IndexFlatIP" in base:
            r["speedup_vs_faiss"] = base["faiss IndexFlatIP"] / r["seconds"]
        r["speedup_vs_exact"] = base["pf.knn cpu, screen off (exact float32 path)"] / r["seconds"]
    return rows


def mutual(pf, knn_screen, n: int, d: int, k: int, repeats: int, dense: bool) -> list[dict]:
    a, b = _anchors.correlated_pair(n, d, seed=n)
    case = f"mutual_knn N={n} D={d} k={k}"
    rows = []
    for mode in ("off", "on"):
        os.environ[knn_screen.SCREEN_ENV] = mode
        try:
            s, val, load = timed(lambda: pf.mutual_knn(a, b, topk=k), repeats)
        finally:
            os.environ.pop(knn_screen.SCREEN_ENV, None)
        rows.append(dict(case=case, method=f"pf.mutual_knn, screen {mode}", seconds=s, value=float(val), **load))
    if dense:
        s, val, load = timed(lambda: _anchors.dense_metric("mutual_knn", a, b, topk=k), 1)
        rows.append(dict(case=case, method=_anchors.DENSE, seconds=s, value=float(val), **load))
        for r in rows:
            r["speedup_vs_dense"] = s / r["seconds"]
    return rows


def real_fallback(pf, knn_screen, k: int) -> list[dict]:
    """Every MiniLM-L6 layer of the demo's sentences (one row per sentence)."""
    try:
        from transformers import AutoModel, AutoTokenizer

        from platonic_fast.demo import data
        from platonic_fast.demo.representations import minilm_path, prepare_representation
        from platonic_fast.features import language
    except ImportError as exc:
        return [dict(case="real features", status=f"not run: {exc}")]
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    names = data.xkcd_colours()[0]
    texts = [s.format(c) for c in names for s in data.SENTENCES]
    layers = language(model, texts, tokenizer=tok, pool="avg", batch_size=128, progress=False).layers
    if isinstance(layers, (list, tuple)):
        layers = torch.stack([torch.as_tensor(t) for t in layers], dim=1)
    rows = []
    for li, x in enumerate(prepare_representation(torch.as_tensor(layers).float())):
        exact = pf.knn(x, k, backend="cpu", screen="off")
        knn_screen.stats(reset=True)
        screened = pf.knn(x, k, backend="cpu", screen="on")
        st = knn_screen.stats(reset=True)
        rows.append(dict(case=f"MiniLM-L6 layer {li}, {x.shape[0]} sentences x {x.shape[1]}, k={k}",
                         fallback_share=st["fallback_rows"] / max(1, st["rows"]),
                         window_mean=st["candidates"] / max(1, st["rows"] - st["fallback_rows"]),
                         lists_equal_exact=bool(torch.equal(screened[1], exact[1])),
                         values_equal_exact=bool(torch.equal(screened[0], exact[0]))))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="dry run: N=4096 D=256, mutual N=1024")
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--mutual-n", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-real", action="store_true", help="skip the MiniLM features")
    p.add_argument("--no-mutual", action="store_true", help="skip mutual_knn")
    p.add_argument("--no-faiss", action="store_true", help="skip faiss")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.mutual_n = 4096, 256, 1024

    import platonic_fast as pf
    from platonic_fast.ops import knn_screen

    faiss = None if args.no_faiss else import_faiss()[0]
    env = environment()
    env["knn_screen"] = {"cpu_features": knn_screen.cpu_features(), "bf16_instructions": knn_screen.bf16_hardware(),
                         "product_auto": knn_screen.screen_product(),
                         "auto_choice_at_n": knn_screen.knn_screen_choice(args.n, args.k)}
    rows = self_knn(pf, knn_screen, faiss, args.n, args.d, args.k, args.repeats)
    if not args.no_mutual:
        rows += mutual(pf, knn_screen, args.mutual_n, args.d, args.k, args.repeats, dense=True)
    if not args.no_real:
        rows += real_fallback(pf, knn_screen, args.k)
    env["loadavg_end"] = _load()
    for r in rows:
        print({key: (round(v, 4) if isinstance(v, float) else v) for key, v in r.items() if key != "stats"})
    if not args.no_save:
        path = write_results({"bench": "knn_screen", "quick": args.quick, "environment": env, "rows": rows},
                             f"knn_screen-{timestamp()}.json")
        print("saved", path)
    bad = [r for r in rows if r.get("lists_equal_exact") is False or r.get("values_equal_exact") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
