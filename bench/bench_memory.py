"""Peak memory of mutual_knn at N=100,000, D=768 float32, in a fresh subprocess.

The child process imports everything and warms the code path up on a tiny input, creates the
two inputs in place (no N x D temporaries), records its resident set, resets the kernel's
high-water mark (``/proc/self/clear_refs`` 5; if that is refused the result is an upper
bound), runs the metric once, and records the high-water mark again:

    peak beyond inputs = VmHWM after the run - VmRSS just before it

``ru_maxrss`` is recorded too (it cannot be reset: it includes the input creation).
The torch anchors are not run at this size: the dense approach needs the N x N matrix.

    .venv/bin/python bench/bench_memory.py [--quick] [--torch-chunked]
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import add_peak, bench_main, target  # noqa: E402

TOPK = 10
FULL = (100_000, 768)
QUICK = (10_000, 128)
LIMIT_GB = 2.0


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(method: str, n: int, d: int, k: int) -> dict:
    """Runs in the subprocess; returns the measurement dict (printed as JSON)."""
    import torch

    import _anchors

    if method == "pf":
        from _timing import import_pf, pf_backend

        pf, err = import_pf()
        if pf is None:
            return {"status": f"error: {err}"}
        backend, note = pf_backend(("knn", "neighbour_lists"), "cpu")

        def run(a, b):
            return float(pf.mutual_knn(a, b, topk=k, backend=backend))
    elif method == "torch_chunked":
        backend, note = "torch", None

        def run(a, b):
            # mutual_knn = the share of one list's neighbours found in the other's, row by row
            return _anchors.neighbour_agreement(_anchors.torch_chunked_knn(a, k)[1],
                                                _anchors.torch_chunked_knn(b, k)[1])["recall"]
    else:
        return {"status": f"error: unknown method {method}"}

    run(*_anchors.correlated_pair(64, 8, seed=123))  # warm code paths, thread pools, lazy imports
    base_rss = _status_kb("VmRSS")
    a, b = _anchors.correlated_pair(n, d, rho=0.6, seed=5)
    inputs_bytes = a.element_size() * a.nelement() + b.element_size() * b.nelement()
    rss_before = _status_kb("VmRSS")
    hwm_inputs = _status_kb("VmHWM")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_hwm()
    t0 = time.perf_counter()
    value = run(a, b)
    wall = time.perf_counter() - t0
    hwm_after = _status_kb("VmHWM")
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kb = 1024.0
    return {
        "status": "ok", "backend": backend, "note": note, "value": value, "wall_s": wall,
        "inputs_gb": inputs_bytes / 1e9,
        "rss_base_gb": base_rss * kb / 1e9 if base_rss else None,
        "rss_before_gb": rss_before * kb / 1e9 if rss_before else None,
        "hwm_after_inputs_gb": hwm_inputs * kb / 1e9 if hwm_inputs else None,
        "hwm_after_gb": hwm_after * kb / 1e9 if hwm_after else None,
        "ru_maxrss_before_gb": maxrss_before * kb / 1e9,
        "ru_maxrss_after_gb": maxrss_after * kb / 1e9,
        "hwm_reset": reset,
        "peak_beyond_inputs_gb": ((hwm_after - rss_before) * kb / 1e9
                                  if hwm_after and rss_before else None),
        "peak_beyond_inputs_note": ("exact: high-water mark reset before the run" if reset else
                                    "upper bound: high-water mark could not be reset"),
        "torch_threads": torch.get_num_threads(),
    }


def _spawn(method: str, n: int, d: int, timeout_s: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, str(n), str(d),
           str(TOPK)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"not run: too slow (killed after {timeout_s:.0f} s)"}
    elapsed = time.perf_counter() - t0
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["process_wall_s"] = elapsed
            return res
    if p.returncode < 0:
        sig = -p.returncode
        why = "oom: killed by SIGKILL (likely the OOM killer)" if sig == 9 else f"error: signal {sig}"
        return {"status": why, "stderr_tail": p.stderr[-1500:]}
    return {"status": f"error: child exited {p.returncode}", "stderr_tail": p.stderr[-1500:]}


def collect(quick: bool = False, peak: float | None = None, torch_chunked: bool | None = None,
            timeout_s: float = 1500.0):
    n, d = QUICK if quick else FULL
    if torch_chunked is None:
        torch_chunked = quick  # at full size it costs minutes and needs no N x N anyway
    shape = f"{n}x{d}"
    common = {"bench": "memory", "case": f"mutual_knn topk={TOPK} peak RSS", "shape": shape,
              "dtype": "float32"}
    flops = 2 * 2.0 * n * n * d
    rows: list[dict] = []

    def as_row(method: str, res: dict, impl: str) -> dict:
        r = dict(common, method=method, impl=impl, flops=flops, **{
            k: v for k, v in res.items() if k not in ("value",)})
        r["status"] = res.get("status", "error")
        if r["status"] == "ok":
            r["median_s"] = res["wall_s"]
            r["repeats"] = 1
            r["gflops"] = flops / res["wall_s"] / 1e9
            r["value"] = res.get("value")
        return r

    res = _spawn("pf", n, d, timeout_s)
    rows.append(as_row(f"pf.mutual_knn ({res.get('backend', '?')})", res,
                       "platonic_fast.mutual_knn in a fresh subprocess"))

    if torch_chunked:
        res = _spawn("torch_chunked", n, d, timeout_s)
        rows.append(as_row("torch chunked mm+topk", res,
                           "two _anchors.torch_chunked_knn passes + set overlap, subprocess"))
    else:
        rows.append(dict(common, method="torch chunked mm+topk", median_s=None, repeats=0,
                         status="not run: minutes at this size (run with --torch-chunked); "
                                "it keeps one 1024 x N float32 block (+ topk temporaries)"))
    nn_gb = n * n * 4 / 1e9
    rows.append(dict(common, method="dense reference", median_s=None, repeats=0,
                     status=f"not run: would need >= {nn_gb:.0f} GB for the N x N float32 "
                            f"similarity alone (+{3 * nn_gb:.0f} GB for its full sort)",
                     est_gb=nn_gb))

    pr = rows[0]
    meas = pr.get("peak_beyond_inputs_gb") if pr.get("status") == "ok" else None
    add_peak(rows, peak)
    note = f"wall {pr['median_s']:.1f} s; {pr.get('peak_beyond_inputs_note')}" if meas is not None else None
    return rows, [target(f"mutual_knn N={n} D={d} float32: peak memory beyond its inputs", meas,
                         quick=quick, below=LIMIT_GB, unit="GB", note=note)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        method, n, d, k = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        try:
            res = child(method, n, d, k)
        except MemoryError as exc:
            res = {"status": f"oom: {exc}"}
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            res = {"status": ("oom: " if "alloc" in msg.lower() or "memory" in msg.lower()
                              else "error: ") + msg[:400]}
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    extra = "--torch-chunked" in argv
    rest = [a for a in argv if a != "--torch-chunked"]
    return bench_main("memory", lambda quick, peak: collect(quick, peak,
                                                            torch_chunked=extra or None), rest)


if __name__ == "__main__":
    sys.exit(main())
