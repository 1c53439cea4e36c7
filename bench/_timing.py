"""Shared benchmark helpers: the one timer, environment record, GEMM peak, result rows, JSON, table.

Every benchmark produces *rows* (plain dicts, JSON-serialisable).  A row always has a
``status``: ``"ok"``, ``"oom"``, ``"error: ..."`` or ``"not run: ..."``; a case that runs out
of memory, raises, or would be too slow becomes a row with that status instead of a crash.

Conventions
-----------
- Times are wall-clock seconds, the median over repeats (``median_s``).
- ``ratio`` is ``anchor median / this median``: > 1 means faster than the anchor.  For kNN it
  equals the throughput ratio (same flop count on both sides).
- ``gflops`` is a *nominal* flop count divided by the time (e.g. 2*N^2*D for a self-kNN), so
  an algorithm that skips work can exceed the machine's peak; ``pct_peak`` compares it with the
  GEMM peak measured on this machine in the same run (float32 on the CPU, bfloat16 on a GPU).
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# A first call slower than this is taken as the measurement itself (no warmup, one run).
SLOW_S = 3.0
# measure() defaults, set by configure()
_MEASURE = {"device": "cpu", "max_repeats": 7, "budget_s": 8.0, "slow_s": SLOW_S}


def configure(*, quick: bool, device: str = "cpu") -> None:
    """Set measure()'s defaults for a run: the clock (``device``) and the repeat budget.

    CPU: an ~8 s budget per case, at most 7 repeats; ``quick`` shrinks it to seconds. CUDA: a
    fixed 5 timed calls after the first (2 with ``quick``), stopping after one slower than 5 s.
    """
    if device == "cuda":
        _MEASURE.update(device="cuda", max_repeats=2 if quick else 5, budget_s=None, slow_s=5.0)
    else:
        _MEASURE.update({"device": "cpu", "max_repeats": 3, "budget_s": 0.5, "slow_s": 0.5} if quick
                        else {"device": "cpu", "max_repeats": 7, "budget_s": 8.0, "slow_s": SLOW_S})


# --------------------------------------------------------------------------------------------
# imports that may legitimately fail while the package is being written
# --------------------------------------------------------------------------------------------
def import_pf():
    """Return (module, None) or (None, "reason") for platonic_fast."""
    try:
        import platonic_fast as pf  # noqa: WPS433

        return pf, None
    except Exception as exc:  # any import failure becomes a row status, never a crash
        return None, f"platonic_fast not importable: {type(exc).__name__}: {exc}"


def pf_backend(ops: tuple[str, ...], device: str = "cpu", *, dtypes=(), k: int | None = None,
               want: str | None = None) -> tuple[str, str | None]:
    """(backend, note): the backend to ask platonic_fast for when timing a function built on
    ``ops``: ``want`` (default: the device type, e.g. the compiled ``"cpu"`` core) when every op
    can run it here for ``dtypes`` and ``k``, else ``"auto"`` with a note saying why."""
    from platonic_fast import _backends

    want = want or str(device).split(":")[0]
    missing = {op: _backends.available(op, device, dtypes=dtypes, k=k) for op in ops}
    missing = {op: usable for op, usable in missing.items() if want not in usable}
    if not missing:
        return want, None
    return "auto", f"backend={want!r} unavailable here (available: {missing}); used 'auto'"


def import_faiss():
    try:
        import faiss  # noqa: WPS433

        return faiss, None
    except Exception as exc:
        return None, f"faiss not importable: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
_UNSET = object()


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """(seconds, result) of one call: CUDA events and a synchronise on a GPU, else a wall clock."""
    gc.collect()
    if device == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(
    fn: Callable[[], Any],
    *,
    device: str | None = None,
    warmup: int = 1,
    max_repeats: int | None = None,
    budget_s: float | None | object = _UNSET,
    slow_s: float | None = None,
) -> dict:
    """Median-of-repeats time of ``fn()``: the benchmarks' one timer, CPU or CUDA.

    The first call is a warmup, recorded as ``first_s``.  On the CPU, if it takes longer than
    ``slow_s`` it is the measurement (``repeats == 1``, ``warm == False``): a slow case runs
    once.  On a GPU the first call (compilation, autotuning) never counts.  Then the number of
    timed calls is adapted to ``budget_s`` (at least 3 for cases that fit, at most
    ``max_repeats``; ``budget_s=None``: ``max_repeats``), stopping early after one slower than
    ``slow_s``.  Defaults come from configure().

    Returns a dict with ``median_s``, ``times``, ``repeats``, ``warm``, ``first_s`` and
    ``result`` (the value returned by the last call).
    """
    device = _MEASURE["device"] if device is None else device
    max_repeats = _MEASURE["max_repeats"] if max_repeats is None else max_repeats
    budget_s = _MEASURE["budget_s"] if budget_s is _UNSET else budget_s
    slow_s = _MEASURE["slow_s"] if slow_s is None else slow_s
    first, out = _timed(fn, device)
    if first >= slow_s and device != "cuda":
        return {"median_s": first, "times": [first], "repeats": 1, "warm": False, "first_s": first,
                "result": out}
    for _ in range(max(0, warmup - 1)):
        out = fn()
    n = max_repeats
    if budget_s is not None:
        n = max(1, min(max_repeats, int(budget_s / max(first, 1e-6))))
        if first * 3 <= budget_s:
            n = max(n, 3)
    times = []
    for _ in range(n):
        t, out = _timed(fn, device)
        times.append(t)
        if t > slow_s:
            break
    return {
        "median_s": statistics.median(times),
        "times": times,
        "repeats": len(times),
        "warm": True,
        "first_s": first,
        "result": out,
    }


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    msg = str(exc).lower()
    return any(s in msg for s in ("out of memory", "cannot allocate", "can't allocate",
                                  "failed to allocate", "bad_alloc", "defaultcpuallocator"))


def run_case(
    row: dict,
    fn: Callable[[], Any] | None,
    *,
    flops: float | None = None,
    est_bytes: float | None = None,
    est_seconds: float | None = None,
    max_seconds: float | None = None,
    skip: str | None = None,
    value_of: Callable[[Any], Any] | None = None,
    **measure_kw,
) -> dict:
    """Time ``fn`` with measure() and fill ``row`` in place (and return it).

    ``skip`` (a reason) records the row as ``not run: <reason>``.  ``est_bytes`` above the
    memory this machine has available, or ``est_seconds`` above ``max_seconds``, do the same
    without running.  OOM and other exceptions become statuses.  ``value_of(result)`` extracts
    something small and JSON-able to keep in the row (a metric value, a recall...).
    """
    row.setdefault("flops", flops)
    row.update(median_s=None, times=[], repeats=0, gflops=None, status="ok")
    if skip is None and est_bytes is not None:
        avail = mem_available_bytes()
        if avail is not None and est_bytes > 0.8 * avail:
            skip = (f"would need ~{est_bytes / 1e9:.1f} GB, "
                    f"{avail / 1e9:.1f} GB available")
    if skip is None and est_seconds is not None and max_seconds is not None \
            and est_seconds > max_seconds:
        skip = f"too slow: estimated ~{est_seconds:.0f} s > limit {max_seconds:.0f} s"
    if skip is not None:
        row["status"] = f"not run: {skip}"
        return row
    try:
        m = measure(fn, **measure_kw)
    except Exception as exc:  # recorded, never raised: one bad case must not kill the run
        row["status"] = ("oom: " if _is_oom(exc) else "error: ") + f"{type(exc).__name__}: {exc}"[:400]
        gc.collect()
        return row
    row.update(median_s=m["median_s"], times=m["times"], repeats=m["repeats"], warm=m["warm"])
    if _MEASURE["device"] == "cuda":  # compilation and autotuning, apart from the timed calls
        row["first_call_s"] = m["first_s"]
    if flops:
        row["gflops"] = flops / m["median_s"] / 1e9
    if value_of is not None:
        try:
            row["value"] = _jsonable(value_of(m["result"]))
        except Exception as exc:
            row["value_error"] = f"{type(exc).__name__}: {exc}"
    del m
    gc.collect()
    if _MEASURE["device"] == "cuda":
        import torch

        torch.cuda.empty_cache()
    return row


def error_row(bench: str, exc: BaseException, **fields) -> dict:
    """The row of a part or case that raised outside run_case: the run goes on without it."""
    import traceback

    return dict({"bench": bench, "case": "-", "method": "-", "median_s": None, "repeats": 0}, **fields,
                status=("oom: " if _is_oom(exc) else "error: ") + f"{type(exc).__name__}: {exc}"[:400],
                traceback=traceback.format_exc())


def set_ratios(rows: list[dict], anchor_method: str, *, key: tuple[str, ...] = ("bench", "case")) -> None:
    """Fill ``anchor`` and ``ratio`` (anchor median / row median) for rows sharing ``key``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in key), []).append(r)
    for grp in groups.values():
        anc = [r for r in grp if r.get("method") == anchor_method]
        if not anc:
            continue
        a = anc[0]
        for r in grp:
            r["anchor"] = anchor_method
            if a.get("median_s") and r.get("median_s"):
                r["ratio"] = a["median_s"] / r["median_s"]
                if a.get("extrapolated"):
                    r["ratio_note"] = "anchor time extrapolated from a measured subsample"


def target(name: str, measured: float | None, *, quick: bool, at_least: float | None = None,
           below: float | None = None, unit: str = "x", note: str | None = None) -> dict:
    """A target check: ``measured`` >= ``at_least`` (or < ``below``); not judged on quick sizes."""
    sep = "" if unit == "x" else " "
    need = f">= {at_least:g}{sep}{unit}" if at_least is not None else f"< {below:g}{sep}{unit}"
    met = None if measured is None or quick else (
        measured >= at_least if at_least is not None else measured < below)
    return {"name": name, "measured": measured, "unit": unit, "need": need, "met": met,
            "note": "quick sizes, not the target shape" if quick else note}


def add_peak(rows: list[dict], peak_gflops: float | None) -> None:
    for r in rows:
        if peak_gflops and r.get("gflops"):
            r["pct_peak"] = 100.0 * r["gflops"] / peak_gflops


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------
def dtype_name(dtype) -> str:
    """"bfloat16" for torch.bfloat16: the names of platonic_fast._checks.DTYPE_NAMES."""
    return str(dtype).replace("torch.", "")


def gemm_peak(n: int = 4096, *, dtype=None, device: str = "cpu", repeats: int = 5) -> dict:
    """Measured ``torch.mm`` throughput (GFLOP/s) on ``device`` at ``dtype`` (default float32):
    best of ``repeats`` timed calls after a warm one (the GPU suite uses bfloat16)."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    m = measure(lambda: torch.mm(a, b), device=device, max_repeats=repeats, budget_s=None,
                slow_s=math.inf)
    return {"n": n, "dtype": dtype_name(dtype), "times": m["times"],
            "gflops": 2.0 * n ** 3 / min(m["times"]) / 1e9,
            "gflops_median": 2.0 * n ** 3 / m["median_s"] / 1e9}


def _proc_value(path: str, key: str) -> str | None:
    """The text after ``key:`` on the first matching line of a /proc file (None off Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def mem_available_bytes() -> int | None:
    kb = _proc_value("/proc/meminfo", "MemAvailable")
    return None if kb is None else int(kb.split()[0]) * 1024


def _mem_total_gb() -> float | None:
    kb = _proc_value("/proc/meminfo", "MemTotal")
    return None if kb is None else round(int(kb.split()[0]) / 1024 ** 2, 1)


def _cpu_model() -> str:
    from platonic_fast.env import _cpu_name  # one reader of /proc/cpuinfo for the package and bench

    return _cpu_name()


def _cpu_flags() -> list[str]:
    want = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    have = set((_proc_value("/proc/cpuinfo", "flags") or "").split())
    return [w for w in want if w in have]


def git_rev() -> str:
    """HEAD sha; ``uncommitted+<sha>`` when the implementation files differ from HEAD;
    ``uncommitted (no commit yet)`` in a repository without commits. A copy of the tree without
    ``.git`` (a remote GPU machine) takes the sha from ``PF_GIT_COMMIT``, set by whoever copied it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            copied = os.environ.get("PF_GIT_COMMIT")
            return f"{copied} (from PF_GIT_COMMIT)" if copied else "uncommitted (no commit yet)"
        sha = head.stdout.strip()
        st = git("status", "--porcelain", "--", "python", "csrc", "kernels",
                 "CMakeLists.txt", "pyproject.toml", "bench")
        dirty = any(not ln.endswith("bench/results/") and "bench/results/" not in ln
                    for ln in st.stdout.splitlines())
        return f"uncommitted+{sha}" if dirty else sha
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def environment(peak: dict | None = None) -> dict:
    import numpy
    import torch

    env: dict[str, Any] = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "mem_total_gb": _mem_total_gb(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "git": git_rev(),
    }
    faiss, err = import_faiss()
    env["faiss"] = faiss.__version__ if faiss is not None else err
    pf, err = import_pf()
    if pf is not None:
        env["platonic_fast"] = getattr(pf, "__version__", "unknown")
        env["platonic_fast_file"] = getattr(pf, "__file__", None)
        env["platonic_fast_build"] = _pf_build_info()
    else:
        env["platonic_fast"] = err
    if peak is not None:
        env["sgemm_peak"] = peak
    return env


def _pf_build_info() -> Any:
    try:
        from platonic_fast import _core  # type: ignore

        for name in ("compile_options", "build_info", "config"):
            obj = getattr(_core, name, None)
            if obj is not None:
                return _jsonable(obj() if callable(obj) else obj)
        return "present"
    except Exception as exc:
        return f"_core not importable: {type(exc).__name__}"


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    try:  # torch / numpy scalars and small tensors
        if hasattr(x, "tolist"):
            return _jsonable(x.tolist())
        if hasattr(x, "item"):
            return _jsonable(x.item())
    except Exception:
        pass
    return str(x)


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def write_results(payload: dict, name: str, results_dir: Path | str = RESULTS_DIR) -> Path:
    """Write ``payload`` to ``results_dir/name`` atomically (temp file + os.replace)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=results_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(payload), f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def summarize(r: dict) -> str:
    """Short per-row notes for the table: correctness cross-checks, memory, extrapolation."""
    parts = []
    if isinstance(r.get("peak_beyond_inputs_gb"), (int, float)):
        parts.append(f"peak beyond inputs {r['peak_beyond_inputs_gb']:.3f} GB"
                     + ("" if r.get("hwm_reset", True) else " (upper bound)"))
    agr = r.get("agreement_vs_torch")
    if isinstance(agr, dict) and agr.get("recall") is not None:
        parts.append(f"recall vs torch {agr['recall']:.4f}")
    v = r.get("value")
    if isinstance(v, float):
        parts.append(f"value {v:.6g}")
    elif isinstance(v, dict) and "best" in v:
        parts.append(f"best {v['best']:.4g} at {tuple(v.get('best_layers') or ())}")
    if isinstance(r.get("abs_diff_vs_dense"), float):
        parts.append(f"|diff vs dense| {r['abs_diff_vs_dense']:.1e}")
    if isinstance(r.get("rel_err_cross_vs_anchor"), float):
        parts.append(f"rel err vs anchor {r['rel_err_cross_vs_anchor']:.1e}")
    if isinstance(r.get("max_abs_diff_vs_scratch"), float):
        parts.append(f"max |diff vs scratch| {r['max_abs_diff_vs_scratch']:.1e}")
    if r.get("extrapolated"):
        parts.append(f"extrapolated from {r.get('measured_pairs')} measured pairs")
    if r.get("projected"):
        parts.append("PROJECTION, not measured")
    if r.get("note") and "unavailable" in str(r.get("note")):
        parts.append(str(r["note"])[:60])
    return "; ".join(parts)


def format_table(rows: list[dict]) -> str:
    cols = [("bench", "bench", "s"), ("case", "case", "s"), ("shape", "shape", "s"),
            ("dtype", "dtype", "s"), ("method", "method", "s"), ("median s", "median_s", ".4g"),
            ("rep", "repeats", "d"), ("GFLOP/s", "gflops", ".1f"), ("%peak", "pct_peak", ".1f"),
            ("x anchor", "ratio", ".2f"), ("anchor", "anchor", "s"), ("status", "status", "s"),
            ("notes", "summary", "s")]
    table = [[h for h, _, _ in cols]]
    for r in rows:
        line = []
        for _, k, spec in cols:
            v = r.get(k) if k != "summary" else (r.get("summary") or summarize(r))
            s = _fmt(v, spec)
            if k == "ratio" and r.get("ratio_note"):
                s += "*"
            if k == "status" and isinstance(v, str) and len(v) > 70:
                s = v[:67] + "..."
            line.append(s)
        table.append(line)
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    out = []
    for j, t in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    for note in dict.fromkeys(r["ratio_note"] for r in rows if r.get("ratio_note")):
        out.append(f"* {note}")
    return "\n".join(out)


def format_targets(targets: list[dict]) -> str:
    out = ["Targets (ratios measured in this run):"]
    for t in targets:
        meas = t.get("measured")
        ms = "-" if meas is None else (f"{meas:.3g}" if isinstance(meas, (int, float)) else str(meas))
        ok = {True: "MET", False: "NOT MET", None: "n/a"}[t.get("met")]
        note = f"  ({t['note']})" if t.get("note") else ""
        out.append(f"  [{ok:7s}] {t['name']}: measured {ms} {t.get('unit', '')}, "
                   f"need {t['need']}{note}")
    return "\n".join(out)


def header(env: dict) -> str:
    peak = env.get("sgemm_peak") or {}
    return (f"{env.get('timestamp_utc')}  {env.get('cpu_model')} x{env.get('cpu_count')} "
            f"(torch threads {env.get('torch_threads')}), torch {env.get('torch')}, "
            f"numpy {env.get('numpy')}, faiss {env.get('faiss')}, "
            f"platonic_fast {env.get('platonic_fast')}, git {env.get('git')}\n"
            f"sgemm peak (torch.mm fp32 {peak.get('n')}^3): "
            f"{_fmt(peak.get('gflops'), '.1f')} GFLOP/s; load avg at start "
            f"{env.get('loadavg_start')}")


def bench_main(name: str, collect: Callable[..., tuple[list[dict], list[dict]]], argv=None) -> int:
    """Entry point shared by the single-op scripts: parse --quick, run, print, save."""
    import argparse

    ap = argparse.ArgumentParser(description=f"platonic_fast CPU benchmark: {name}")
    ap.add_argument("--quick", action="store_true", help="small sizes, seconds (smoke test)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = ap.parse_args(argv)
    configure(quick=args.quick)
    peak = gemm_peak(2048 if args.quick else 4096)
    env = environment(peak)
    print(header(env), flush=True)
    rows, targets = collect(quick=args.quick, peak=peak["gflops"])
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(format_table(rows))
    if targets:
        print(format_targets(targets))
    if not args.no_save:
        path = write_results({"suite": name, "quick": args.quick, "env": env, "rows": rows,
                              "targets": targets, "complete": True},
                             f"{name}-{'quick-' if args.quick else ''}{timestamp()}.json")
        print(f"saved {path}")
    return 0
