"""Property suite (issue "No silent wrong numbers", part 4): random cases over the public API.

Every public function (knn self/cross, the eight metrics, remove_outliers, align, prepare/score,
measure) gets hypothesis-drawn inputs: torch tensors and NumPy arrays; float16/bfloat16/
float32/float64 and integer/bool/complex dtypes; transposed, strided, negative-stride and
big-endian layouts; magnitudes 1e-30..1e30; duplicated rows, constant columns, constant
inputs; k at 1, N-1, N, 0, -1. tests/property_worker.py decides each case's outcome before
calling platonic_fast (an exception; a ValueError or warning for degenerate input; or a number
within tolerance of the float64 dense reference) and checks it.

The cases run in worker subprocesses, each with its own derandomised seed, so a crash fails
the test (naming the signal and the case in flight) instead of losing the run. The full run
(slow lane) draws at least FULL_EXAMPLES distinct cases; the smoke run is in the fast lane.

Known-failing categories (property_worker.KNOWN_FAILING) are counted apart while their fixes
land; the full run fails when one of them matched cases but none failed (remove it then).
``PF_PROPERTY_STRICT=1`` counts them as failures; ``PF_PROPERTY_EXAMPLES`` sets the full size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

WORKER = Path(__file__).with_name("property_worker.py")
WORKERS = 2
FULL_EXAMPLES = int(os.environ.get("PF_PROPERTY_EXAMPLES", "16000"))
SMOKE_EXAMPLES = 200
STRICT = os.environ.get("PF_PROPERTY_STRICT", "") not in ("", "0")
# A known-failing category is stale when it matched this many cases in the full run, none failing.
STALE_MIN_MATCHES = 20


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def run_workers(total: int, base_seed: int, *, timeout: float) -> tuple[list[dict], list[str]]:
    """Run WORKERS worker processes sharing ``total`` examples; (their reports, problems)."""
    shares = [total // WORKERS + (1 if i < total % WORKERS else 0) for i in range(WORKERS)]
    reports, problems = [], []
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, share in enumerate(shares):
            inflight = Path(tmp) / f"inflight-{i}.json"
            cmd = [sys.executable, str(WORKER), "--index", str(i), "--workers", str(WORKERS),
                   "--examples", str(share), "--seed", str(base_seed), "--progress", str(inflight)]
            if STRICT:
                cmd.append("--strict")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append((i, proc, inflight))
        for i, proc, inflight in procs:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                problems.append(f"worker {i} timed out after {timeout:.0f} s; case in flight: "
                                f"{_read(inflight)}\n{err[-3000:]}")
                continue
            if proc.returncode < 0:
                problems.append(f"worker {i} was killed by {_signal_name(proc.returncode)}; case in flight "
                                f"(reproduce with python {WORKER} --repro '<case>'): {_read(inflight)}\n"
                                f"{err[-5000:]}")
            elif proc.returncode != 0:
                problems.append(f"worker {i} exited with status {proc.returncode}; case in flight: "
                                f"{_read(inflight)}\n{err[-5000:]}")
            else:
                try:
                    reports.append(json.loads(out.strip().splitlines()[-1]))
                except (IndexError, json.JSONDecodeError):
                    problems.append(f"worker {i} printed no report:\n{out[-2000:]}\n{err[-3000:]}")
    return reports, problems


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return "(none)"


def _merge(reports: list[dict], key: str) -> dict:
    out: dict = {}
    for r in reports:
        for k, v in r[key].items():
            out[k] = out.get(k, 0) + v
    return out


def _describe(failure: dict) -> str:
    case = json.dumps(failure["case"], separators=(",", ":"))
    tags = [t for t in failure["tags"] if not t.startswith(("dtype:", "kind:"))]
    text = f"- {failure['error']}\n  tags: {', '.join(tags)}\n  python {WORKER.name} --repro '{case}'"
    if failure.get("traceback"):
        text += "\n  " + failure["traceback"].strip().replace("\n", "\n  ")[-800:]
    return text


def check_reports(reports: list[dict], problems: list[str], total: int, *, stale_check: bool) -> dict:
    assert not problems, "\n\n".join(problems)
    assert len(reports) == WORKERS
    distinct = sum(r["distinct"] for r in reports)
    examples = sum(r["examples"] for r in reports)
    assert examples >= total and distinct >= total, (
        f"only {examples} examples ({distinct} distinct) of {total} ran")
    by_fn = _merge(reports, "by_fn")
    from property_worker import FUNCTIONS, KNOWN_FAILING

    assert set(by_fn) == set(FUNCTIONS), f"functions never exercised: {set(FUNCTIONS) - set(by_fn)}"
    n_failures = sum(r["n_failures"] for r in reports)
    if n_failures:
        shown = [f for r in reports for f in r["failures"]][:12]
        pytest.fail(f"{n_failures} of {examples} property cases failed (first {len(shown)}):\n"
                    + "\n".join(_describe(f) for f in shown), pytrace=False)
    known, matched = _merge(reports, "known"), _merge(reports, "known_matched")
    if stale_check and not STRICT:
        stale = [t for t in KNOWN_FAILING if matched.get(t, 0) >= STALE_MIN_MATCHES and not known.get(t)]
        assert not stale, (f"known-failing categories {stale} matched {[matched[t] for t in stale]} cases and "
                           "none failed: remove them from KNOWN_FAILING in tests/property_worker.py")
    expect_flag = os.environ.get("PLATONIC_FAST_EXPECT_SANITIZED")
    if expect_flag:  # set by tests/test_sanitize.py: the workers must load the sanitized core
        for r in reports:
            assert "-fsanitize=" in r["core_flags"], f"worker {r['index']} loaded {r['core_file']} ({r['core_flags']})"
    summary = {"examples": examples, "distinct": distinct, "by_fn": by_fn,
               "by_outcome": _merge(reports, "by_outcome"), "known_failures": known,
               "known_matched": matched, "worker_seconds": [r["elapsed_s"] for r in reports]}
    print(json.dumps(summary, indent=1))
    return summary


@pytest.mark.slow
def test_property_smoke():
    """A few hundred cases in two worker processes (fast lane; also run under the sanitizers)."""
    reports, problems = run_workers(SMOKE_EXAMPLES, base_seed=1, timeout=300)
    check_reports(reports, problems, SMOKE_EXAMPLES, stale_check=False)


@pytest.mark.slow
def test_property_full():
    """At least FULL_EXAMPLES distinct cases over every public function, in two workers."""
    reports, problems = run_workers(FULL_EXAMPLES, base_seed=1000, timeout=900)
    summary = check_reports(reports, problems, FULL_EXAMPLES, stale_check=True)
    assert summary["by_outcome"].get("value", 0) + summary["by_outcome"].get("knn", 0) >= FULL_EXAMPLES // 5


def test_worker_reports_a_crash_by_signal(tmp_path):
    """The harness itself: a worker dying of a signal is reported with the signal's name."""
    script = tmp_path / "die.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode < 0 and _signal_name(proc.returncode) == "SIGSEGV"


@pytest.mark.parametrize("case, verdict", [
    # a constant input must not score silently (here: ConstantFeaturesError, a ValueError)
    ({"fn": "mutual_knn", "n": 12, "a": {"d": 3, "kind": "constant", "mag": 0, "dtype": "f32", "lib": "torch",
                                        "layout": "contig", "defect": None, "seed": 1},
      "b": {"d": 3, "kind": "constant", "mag": 0, "dtype": "f32", "lib": "torch", "layout": "contig",
            "defect": None, "seed": 2},
      "params": {"k": 3}}, "degenerate"),
    # big-endian, negative-stride NumPy input at 1e-30: a valid case, checked against the reference
    ({"fn": "cka", "n": 20, "a": {"d": 5, "kind": "gauss", "mag": -30, "dtype": "f64", "lib": "numpy",
                                 "layout": "bigendian", "defect": None, "seed": 3},
      "b": {"d": 4, "kind": "dups", "mag": 0, "dtype": "f32", "lib": "numpy", "layout": "negstride",
            "defect": None, "seed": 4},
      "params": {"kernel": "ip", "sigma": 1.0, "unbiased": False}}, "value"),
    # an integer dtype must raise TypeError
    ({"fn": "knn_self", "n": 8, "a": {"d": 2, "kind": "grid", "mag": 0, "dtype": "i64", "lib": "torch",
                                     "layout": "contig", "defect": None, "seed": 5},
      "params": {"k": 2, "exclude_self": True}}, "raise"),
])
def test_oracle_decides_up_front(pf, case, verdict):
    """The worker's oracle, in-process, on three hand-written recipes (one per outcome kind)."""
    import property_worker as W

    assert W.expect(case, W.build(case)).kind == verdict
    res = W.run_case(pf, case)
    assert res["outcome"] == verdict and res["error"] is None, res
