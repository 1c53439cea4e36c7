"""Helpers of bench/gpu_proof.sh (the one-command GPU proof): its record and its kernel driver.

    python bench/gpu_proof.py env      --out DIR [--dry-run]   # device, driver, versions, commit
    python bench/gpu_proof.py step     --out DIR --name NAME --status S --rc RC --seconds T --limit L [--note ...]
    python bench/gpu_proof.py build    --out DIR --path PATH    # which build path ran, build_info()
    python bench/gpu_proof.py tests    --out DIR                # tests.jsonl (+ junit XML) -> counts
    python bench/gpu_proof.py sanitizer --out DIR --tool T --log F  # compute-sanitizer's verdict
    python bench/gpu_proof.py driver   [--lists-only] [--tiny]  # launch every kernel once (small)
    python bench/gpu_proof.py report   --out DIR                # summary table; checks DIR's layout

Everything lands in ``DIR/proof.json``, rewritten atomically after each step, so a proof cut short
keeps what ran. This module imports torch only in the subcommands that need it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import git_rev, write_results  # noqa: E402

RECORD = "proof.json"


# ---------------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------------

def load(out: Path) -> dict:
    path = out / RECORD
    if path.exists():
        return json.loads(path.read_text())
    return {"suite": "gpu-proof", "started_utc": _now(), "steps": []}


def save(out: Path, record: dict) -> None:
    """Atomic rewrite (the benchmarks' writer): a reader never sees half a record."""
    write_results(record, RECORD, out)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(*cmd: str) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    return (proc.stdout + proc.stderr).strip()


def cmd_env(args) -> int:
    import torch

    rec = load(args.out)
    # A tree copied without .git: gpu_proof.sh exports PF_GIT_COMMIT from .gpu_proof_commit.
    env = {"dry_run": args.dry_run, "commit": git_rev(), "python": sys.version.split()[0],
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as exc:
        env["triton"] = f"absent ({exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                   sm_count=props.multi_processor_count, memory_gb=round(props.total_memory / 2**30, 1))
    else:
        env["device"] = "cpu (dry run: nothing here is a GPU measurement)" if args.dry_run else "no CUDA device"
    smi = _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    env["nvidia_smi"] = smi
    if smi and "," in smi:
        env["driver"] = smi.splitlines()[0].split(",")[1].strip()
    nvcc = _run("nvcc", "--version")
    env["nvcc"] = nvcc.splitlines()[-1] if nvcc else None
    san = _run("compute-sanitizer", "--version")
    env["compute_sanitizer"] = san.splitlines()[-1] if san else None
    rec["env"] = env
    save(args.out, rec)
    print(json.dumps(env, indent=1))
    return 0


def cmd_step(args) -> int:
    rec = load(args.out)
    step = {"name": args.name, "status": args.status, "rc": args.rc, "seconds": args.seconds,
            "limit_s": args.limit, "finished_utc": _now()}
    if args.note:
        step["note"] = " ".join(args.note)
    rec["steps"] = [s for s in rec["steps"] if s["name"] != args.name] + [step]
    save(args.out, rec)
    return 0


def cmd_build(args) -> int:
    rec = load(args.out)
    info: dict = {"path": args.path}
    try:
        from platonic_fast import _core

        info["module"] = _core.__file__
        info["build_info"] = _core.build_info()
    except Exception as exc:  # recorded: the tests step then says what is missing
        info["import_error"] = f"{type(exc).__name__}: {exc}"
    if args.expect_cuda and "build_info" in info:
        bi = info["build_info"]
        if not bi.get("cuda") or "90" not in str(bi.get("cuda_archs", "")).split(","):
            info["problem"] = "the build has no sm_90 CUDA kernels: the CUDA tests will skip"
    rec["build"] = info
    save(args.out, rec)
    print(json.dumps(info, indent=1, default=str))
    return 0 if "build_info" in info and "problem" not in info else 1


# ---------------------------------------------------------------------------------------------
# tests: counts from the plugin's lines (they survive a stop) and the junit XML when it exists
# ---------------------------------------------------------------------------------------------

def cmd_tests(args) -> int:
    rec = load(args.out)
    lines = []
    jsonl = args.out / "tests.jsonl"
    if jsonl.exists():
        for text in jsonl.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:  # a line cut by a kill
                pass
    counts = Counter(line["outcome"] for line in lines)
    summary = {"counts": dict(sorted(counts.items())), "recorded": len(lines),
               "failures": [{k: line[k] for k in ("nodeid", "outcome", "longrepr") if k in line}
                            for line in lines if line["outcome"] in ("failed", "error", "xpassed")][:60],
               "skip_reasons": dict(Counter(line.get("reason", "?") for line in lines
                                            if line["outcome"] == "skipped").most_common(25)),
               "slowest": sorted(({"nodeid": line["nodeid"], "s": line["duration_s"]} for line in lines),
                                 key=lambda t: -t["s"])[:15]}
    junit = args.out / "tests.junit.xml"
    if junit.exists():
        try:
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            summary["junit"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            summary["junit"]["time_s"] = float(suite.get("time", 0.0))
        except (ET.ParseError, AttributeError) as exc:
            summary["junit"] = f"unreadable: {exc}"
    else:
        summary["junit"] = "absent (the run was stopped before pytest wrote it)"
    rec["tests"] = summary
    save(args.out, rec)
    print(json.dumps({k: summary[k] for k in ("counts", "junit")}))
    return 0


# ---------------------------------------------------------------------------------------------
# compute-sanitizer: the verdict read from its log
# ---------------------------------------------------------------------------------------------

def cmd_sanitizer(args) -> int:
    rec = load(args.out)
    text = args.log.read_text(errors="replace") if args.log.exists() else ""
    part = text.split(f"=== sanitizer {args.tool} ===")[-1]
    found = re.findall(r"ERROR SUMMARY: (\d+) error", part)
    launches = [json.loads(m) for m in re.findall(r"^PROOF-DRIVER (\{.*\})$", part, flags=re.M)]
    rc = next((s["rc"] for s in rec["steps"] if s["name"] == args.tool), None)
    verdict = {"tool": args.tool, "rc": rc,
               "errors": int(found[-1]) if found else None,
               "refused": None, "launches": launches[-1] if launches else None}
    for marker in ("Device not supported", "Unable to find injection library", "not supported on this",
                   "Target application returned an error", "No such file"):
        if marker in part:
            verdict["refused"] = marker
            break
    if rc == 127 or "compute-sanitizer: command not found" in part:
        verdict["refused"] = "compute-sanitizer not found on PATH"
    rec.setdefault("sanitizer", {})[args.tool] = verdict
    save(args.out, rec)
    print(json.dumps({k: v for k, v in verdict.items() if k != "launches"}))
    return 0


# ---------------------------------------------------------------------------------------------
# the driver: each CUDA kernel and each Triton kernel launched once on small shapes
# ---------------------------------------------------------------------------------------------

def _launches(lists_only: bool, tiny: bool):
    """(name, skip reason or None, thunk) per kernel launch; each thunk checks its result (against
    the torch backend where the result is exact). ``tiny``: the rehearsal's sizes (the Triton
    interpreter is slow), and the k >= 64 sort-merge launch left to the GPU."""
    import torch

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    g = torch.Generator().manual_seed(0)
    n, k = (33, 4) if tiny else (97, 10)  # odd N: partial tiles and blocks
    lists_a = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)]).to(dev)
    lists_b = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)]).to(dev)
    # Without a GPU the same calls go to the compiled CPU backend (torch where there is none), so
    # the rehearsal checks every call's arguments; the launch name keeps saying what is proved.
    be = "cuda" if cuda else "cpu"

    def same(a, b):
        if isinstance(a, dict):
            return all(abs(float(a[key]) - float(b[key])) <= 1e-4 * (1 + abs(float(b[key]))) for key in b)
        a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
        return all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b))

    from platonic_fast.ops import cknna_sums, neighbour_lists, permute_lists, topk_merge

    for kind in neighbour_lists.KINDS:
        yield f"cuda neighbour_lists {kind}", None, lambda kind=kind: same(
            neighbour_lists.run(kind, lists_a, lists_b, backend=be),
            neighbour_lists.run(kind, lists_a, lists_b, backend="torch"))
    perm = torch.randperm(n, generator=g).to(dev)
    yield "cuda permute_lists", None, lambda: same(
        permute_lists.permute_lists(lists_a, perm, backend=be),
        permute_lists.permute_lists(lists_a, perm, backend="torch"))
    if lists_only:
        return
    vals = torch.rand(n, k, generator=g).to(dev)
    yield "cuda cknna_sums", None, lambda: same(
        cknna_sums.cknna_sums(lists_a, vals, lists_b, vals, True, backend=be),
        cknna_sums.cknna_sums(lists_a, vals, lists_b, vals, True, backend="torch"))
    cand_v = torch.rand(n, 3 * k, generator=g).to(dev)
    cand_i = torch.stack([torch.randperm(4 * n, generator=g)[:3 * k] for _ in range(n)]).to(dev)
    yield "cuda topk_merge", None, lambda: same(
        topk_merge.topk_merge(cand_v, cand_i, k, backend="cuda" if cuda else "torch"),
        topk_merge.topk_merge(cand_v, cand_i, k, backend="torch"))

    # Triton: fixed tiles (one launch, no autotuning sweep), checked against torch's lists/sums.
    from platonic_fast.ops.knn import knn_torch
    from platonic_fast.triton.hsic import hsic_sums
    from platonic_fast.triton.knn import knn_triton

    x32 = torch.randn(n, 40, generator=g).to(dev)
    for dtype, kk, tf32 in ((torch.bfloat16, 10, False), (torch.float32, 10, False),
                            (torch.float32, 10, True), (torch.bfloat16, 96, False)):
        x = x32.to(dtype)

        def knn_once(x=x, kk=kk, tf32=tf32):
            _, idx = knn_triton(x, None, kk, exclude_self=True, allow_tf32=tf32, block_m=64)
            _, ref = knn_torch(x, None, kk, exclude_self=True)
            # Launch and shape are what is checked here (tf32 / bf16 rounding may swap near-ties).
            return idx.shape == ref.shape and bool(((idx >= 0) & (idx < n)).all())
        name = f"triton knn {str(dtype)[6:]} k={kk}{' tf32' if tf32 else ''}"
        yield name, ("rehearsal: the sort-merge path runs on the GPU only" if tiny and kk >= n else None), knn_once
    for kernel in ("ip", "rbf"):
        def hsic_once(kernel=kernel):
            a, b = x32[:, :24].to(torch.bfloat16), x32[:, 16:].to(torch.bfloat16)
            rbf = ((0.05, 0.0, 1.0, 1.0),) * 2 if kernel == "rbf" else None
            s = hsic_sums(a, b, kernel, rbf, block=64)
            return all(map(lambda v: v == v, (s["cross"], s["self_k"], s["self_l"])))  # not NaN
        yield f"triton hsic_sums {kernel} bfloat16", None, hsic_once


def cmd_driver(args) -> int:
    import torch

    cuda = torch.cuda.is_available()
    results = []
    for name, skip, thunk in _launches(args.lists_only, args.tiny):
        entry = {"launch": name}
        if not cuda and name.startswith("cuda "):
            entry["note"] = "no GPU: the CPU backend in the CUDA kernel's place"
        if skip:
            entry.update(status="skipped", reason=skip)
        else:
            try:
                ok = bool(thunk())
                if cuda:
                    torch.cuda.synchronize()
                entry["status"] = "ok" if ok else "mismatch"
            except Exception as exc:  # every launch is tried; the summary names the ones that failed
                entry.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
        results.append(entry)
        print(entry, flush=True)
    bad = [r for r in results if r["status"] not in ("ok", "skipped")]
    print("PROOF-DRIVER " + json.dumps({"launches": results, "bad": len(bad)}), flush=True)
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
# the report: a short table last (the device tool returns the end of the output) + the layout
# ---------------------------------------------------------------------------------------------

MAX_FILES, MAX_FILE_MB, MAX_TOTAL_MB, MAX_DEPTH = 8, 16, 64, 3  # what the device tool returns
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def layout_problems(out: Path) -> list[str]:
    """Why some file under ``out`` would not come back from the device tool (empty: none)."""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    problems = []
    if len(files) > MAX_FILES:
        names = sorted(str(p.relative_to(out)) for p in files)
        problems.append(f"{len(files)} files, at most {MAX_FILES} come back: {names}")
    for p in files:
        rel = p.relative_to(out)
        if p.is_symlink():
            problems.append(f"{rel}: a link does not come back")
        if len(rel.parts) > MAX_DEPTH:
            problems.append(f"{rel}: more than {MAX_DEPTH - 1} folders down")
        if not all(_NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name outside letters, digits, '.', '_', '-'")
        if p.stat().st_size > MAX_FILE_MB * 2**20:
            problems.append(f"{rel}: over {MAX_FILE_MB} MiB")
    if sum(p.stat().st_size for p in files) > MAX_TOTAL_MB * 2**20:
        problems.append(f"over {MAX_TOTAL_MB} MiB in all")
    return problems


def cmd_report(args) -> int:
    rec = load(args.out)
    rec["finished_utc"] = _now()
    rec["complete"] = True
    bench = sorted(args.out.glob("gpu-*.json"))
    rec["bench_record"] = bench[-1].name if bench else None
    save(args.out, rec)
    env = rec.get("env", {})
    print(f"\n=== GPU proof: {env.get('device')} | driver {env.get('driver')} | torch {env.get('torch')} | "
          f"triton {env.get('triton')} | commit {env.get('commit')}")
    build = rec.get("build", {})
    print(f"build: {build.get('path')} {build.get('import_error', '')}{build.get('problem', '')}")
    for st in rec["steps"]:
        print(f"  {st['name']:<10} {st['status']:<8} rc {st['rc']:<4} {st['seconds']:>4}s / {st['limit_s']}s"
              f"{'  ' + st['note'] if st.get('note') else ''}")
    tests = rec.get("tests")
    if tests:
        print(f"tests: {tests['counts']}  junit: {tests['junit']}")
        for f in tests["failures"][:10]:
            print(f"  {f['outcome'].upper()} {f['nodeid']}")
    for tool, v in rec.get("sanitizer", {}).items():
        bad = None if not v.get("launches") else v["launches"]["bad"]
        print(f"sanitizer {tool}: errors {v['errors']} refused {v['refused']} rc {v['rc']} bad launches {bad}")
    if bench:
        payload = json.loads(bench[-1].read_text())
        peak = payload.get("bf16_gemm_peak", {}).get("gflops")
        print(f"bench ({bench[-1].name}, complete {payload.get('complete')}): bf16 GEMM "
              f"{peak / 1e3 if peak else float('nan'):.1f} TFLOP/s")
        for r in payload.get("rows", []):
            pct, ratio, med = r.get("pct_peak"), r.get("ratio"), r.get("median_s")
            print(f"  {r.get('bench', ''):<10} {r.get('case', ''):<28} {r.get('dtype', ''):<9} "
                  f"{r.get('method', ''):<36} "
                  f"{'-' if med is None else f'{med:.4g} s':>10} {'-' if pct is None else f'{pct:.1f}%':>7} "
                  f"{'-' if ratio is None else f'{ratio:.2f}x':>8} {r.get('status', '')[:60]}")
    problems = layout_problems(args.out)
    for p in problems:
        print(f"LAYOUT: {p}")
    if not env.get("dry_run") and "capability" not in env:
        print("NO CUDA DEVICE SEEN by torch: every GPU test skipped, nothing measured")
        return 1
    return 1 if problems else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("step")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--status", required=True, choices=("ok", "failed", "timeout", "skipped"))
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--note", nargs="*")
    p = sub.add_parser("build")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--expect-cuda", action="store_true", help="fail unless the core has sm_90 CUDA kernels")
    p = sub.add_parser("tests")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("sanitizer")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tool", required=True, choices=("memcheck", "racecheck"))
    p.add_argument("--log", type=Path, required=True)
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("driver")
    p.add_argument("--lists-only", action="store_true", help="only the list kernels (for racecheck)")
    p.add_argument("--tiny", action="store_true", help="rehearsal sizes (Triton interpreter)")
    args = ap.parse_args(argv)
    return {"env": cmd_env, "step": cmd_step, "build": cmd_build, "tests": cmd_tests,
            "sanitizer": cmd_sanitizer, "driver": cmd_driver, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
