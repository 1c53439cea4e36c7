"""Out-of-core sweep against the in-memory sweep (issue 11 items 2 and 5): `platonic-fast measure`
on two models of N samples x 6 layers x 768 features, float32 (1.8 GB files at N = 100,000), run
as a child process twice per metric (mutual_knn and cka by default), ``--out-of-core`` and
``--no-out-of-core``, side by side in one run.

Recorded per run: wall time, the child's peak resident set size (``ru_maxrss`` from ``wait4``,
which counts file-backed mapped pages too; the child is started from a small launcher process,
since Linux counts the pre-exec copy of a forking parent in the child's ru_maxrss), its exit
status, whether both runs wrote the same scores (best score, best layers and every layer
pair's score of each model pair), and whether the kNN's certified bf16 screen ran in the child
(``knn_screen``: its counters, written by the child at exit, the share of rows that fell back
to the float32 candidates, and the reason the screen was or was not chosen here).
Target: the out-of-core run's peak RSS under 1 GB at the full size.

The feature files are generated here (a shared 16-dimensional latent through a random
projection per layer, plus noise growing with depth, so that the models align above chance),
written a block of rows at a time in the features format with its checksum (never whole in
this process), into ``--dir`` (default /tmp/pf_bench_ooc, not committed) and deleted after
unless ``--keep``; files of the same shape and seed already there are reused. Both runs read
the same files, which after generation sit in the page cache: times are of a warm cache.

    .venv/bin/python bench/bench_out_of_core.py --quick          # N = 4,096: seconds (dry run)
    .venv/bin/python bench/bench_out_of_core.py                  # N = 100,000: many minutes
    .venv/bin/python bench/bench_out_of_core.py --n 20000 --keep --skip-in-memory
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import (  # noqa: E402
    REPO_ROOT,
    environment,
    format_table,
    format_targets,
    header,
    set_ratios,
    target,
    timestamp,
    write_results,
)

FULL_N, QUICK_N = 100_000, 4_096
LAYERS, WIDTH, LATENT, TOPK = 6, 768, 16, 10
RSS_TARGET_MB = 1024.0
NEIGHBOUR_METRICS = ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna")
BLOCK_ROWS = 4096


def _model_block(model: int, seed: int, r0: int, r1: int, layers: int, width: int):
    """Rows [r0, r1) of one synthetic model (N x L x D float32), the same whatever the blocking."""
    import torch

    rows = []
    for r in range(r0, r1, BLOCK_ROWS):  # blocks of the generation grid, cut to [r0, r1)
        b0 = r - r % BLOCK_ROWS
        g = torch.Generator().manual_seed(seed * 1_000_003 + b0)
        latent = torch.randn(BLOCK_ROWS, LATENT, generator=g)
        gm = torch.Generator().manual_seed(seed * 7919 + 1000 * (model + 1) + b0)
        noise = torch.randn(BLOCK_ROWS, layers, width, generator=gm)
        proj = torch.randn(layers, LATENT, width, generator=torch.Generator().manual_seed(seed * 31 + model))
        block = torch.einsum("nz,lzd->nld", latent, proj) / LATENT ** 0.5
        block += noise * (0.5 + 0.25 * torch.arange(layers, dtype=torch.float32))[None, :, None]
        rows.append(block[r - b0: min(r1, b0 + BLOCK_ROWS) - b0])
    return torch.cat(rows).contiguous()


def write_model(path: Path, model: int, seed: int, n: int, layers: int, width: int) -> None:
    """A features file (``layers`` N x L x D float32, format version 1, with its checksum), written
    a block of rows at a time: the header with a placeholder checksum of the same length, the
    data while hashing it, then the header again with the real checksum."""
    from platonic_fast.features.storage import CHECKSUM_PREFIX, FORMAT, FORMAT_VERSION

    meta = {"model": f"synthetic-{model}", "N": n, "num_layers": layers, "layer_widths": [width] * layers,
            "has_bpb": False, "dtype": "float32", "pooling": "synthetic", "dataset": f"bench seed {seed}"}
    meta_json = json.dumps(meta, sort_keys=True)
    nbytes = n * layers * width * 4

    def head(checksum: str) -> bytes:
        h = {"layers": {"dtype": "F32", "shape": [n, layers, width], "data_offsets": [0, nbytes]},
             "__metadata__": {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta_json,
                              "checksum": checksum}}
        text = json.dumps(h, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return len(text).to_bytes(8, "little") + text

    sha = hashlib.sha256()

    def part(data: bytes) -> None:
        sha.update(len(data).to_bytes(8, "little"))
        sha.update(data)

    part(meta_json.encode())
    part(json.dumps(["layers", "float32", [n, layers, width]]).encode())
    sha.update(nbytes.to_bytes(8, "little"))
    placeholder = head(CHECKSUM_PREFIX + "0" * 64)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(placeholder)
        for r0 in range(0, n, BLOCK_ROWS):
            data = _model_block(model, seed, r0, min(n, r0 + BLOCK_ROWS), layers, width).numpy().tobytes()
            sha.update(data)
            fh.write(data)
        final = head(CHECKSUM_PREFIX + sha.hexdigest())
        assert len(final) == len(placeholder)
        fh.seek(0)
        fh.write(final)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _reusable(path: Path, n: int, layers: int, width: int, seed: int) -> bool:
    try:
        from platonic_fast.features.storage import read_meta

        meta = read_meta(path)
    except (OSError, ValueError):
        return False
    return (meta.get("N"), meta.get("num_layers"), meta.get("layer_widths"), meta.get("dataset")) == \
        (n, layers, [width] * layers, f"bench seed {seed}")


# The measure command, in a process that writes the bf16 screen's counters (calls, rows, rows
# that fell back) to the file named first when it exits: whether the screen ran, and how well.
_CHILD = """
import atexit, json, sys
from platonic_fast.ops import knn_screen
stats_path = sys.argv.pop(1)
atexit.register(lambda: open(stats_path, "w").write(json.dumps(knn_screen.stats())))
from platonic_fast.cli import main
sys.exit(main())
"""


def _command(stats: Path) -> list[str]:
    return [sys.executable, "-c", _CHILD, str(stats)]


def screen_record(stats: dict | None, n: int) -> dict:
    """The bf16 screen in one run: the choice here for this N and k, the child's counters and the
    share of screened rows that fell back (None when no row was screened)."""
    from platonic_fast.ops import knn_screen

    ran, why = knn_screen.knn_screen_choice(n, TOPK)
    out = {"chosen": ran, "reason": why, "counters": stats}
    rows = (stats or {}).get("rows", 0)
    out["ran"] = bool(stats and stats.get("calls"))
    out["fallback_share"] = stats["fallback_rows"] / rows if rows else None
    return out


# Runs the measure command and reports its rusage. Linux folds the RSS a process had before exec
# (a forked copy of its parent) into its ru_maxrss, so the command is started from this small
# launcher, never from the benchmark process itself, which holds torch (~600 MB).
_LAUNCHER = """
import json, os, subprocess, sys, time
cmd, timeout, result, log = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(log, "w") as fh:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout and time.perf_counter() - t0 > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
proc.returncode = os.waitstatus_to_exitcode(status)
with open(result, "w") as fh:
    json.dump({"exit": proc.returncode, "wall_s": wall, "maxrss_kb": usage.ru_maxrss, "timed_out": timed_out}, fh)
"""


def run_measure(files: list[Path], out: Path, mode: str, timeout: float | None, metric: str = "mutual_knn") -> dict:
    """One ``platonic-fast measure`` run: wall seconds, its peak RSS (``ru_maxrss`` from ``wait4``
    in a small launcher process, MB), exit status and the tail of its output."""
    stats = out.with_name(out.name + ".screen.json")
    stats.unlink(missing_ok=True)
    cmd = [*_command(stats), "measure", str(files[0]), "--against", str(files[1]), "--metric", metric,
           *(["--topk", str(TOPK)] if metric in NEIGHBOUR_METRICS else []),
           "--out", str(out), "--no-progress", f"--{mode}"]
    shutil.rmtree(out, ignore_errors=True)  # no resumed records: every run computes everything
    log, result = out.with_name(out.name + ".log"), out.with_name(out.name + ".rusage.json")
    subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(cmd), str(timeout or 0), str(result), str(log)],
                   check=True)
    r = json.loads(result.read_text())
    text = log.read_text()
    log.unlink()
    result.unlink()
    try:
        screen = json.loads(stats.read_text())
        stats.unlink()
    except (OSError, ValueError):
        screen = None  # killed, or the child never got that far
    row = {"command": " ".join(cmd[:2] + ["<child script>"] + cmd[3:]), "output_tail": text[-2000:],
           "maxrss_mb": r["maxrss_kb"] / 1024, "screen_stats": screen}
    if r["timed_out"]:
        return dict(row, status=f"not finished: timeout after {timeout:.0f} s")
    return dict(row, status="ok" if r["exit"] == 0 else f"error: exit {r['exit']}", wall_s=r["wall_s"])


def _scores(out: Path) -> dict | None:
    try:
        s = json.loads((out / "scores.json").read_text())
    except (OSError, ValueError):
        return None
    return {"scores": s["scores"], "best_layers": s["best_layers"],
            "layer_scores": [p["layer_scores"] for p in s["results"][0]["pairs"]]}


def collect(n: int, *, directory: Path, keep: bool, seed: int, skip_in_memory: bool, timeout: float | None,
            metrics=("mutual_knn",)):
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / f"model{m}_n{n}_s{seed}.safetensors" for m in range(2)]
    need = sum(n * LAYERS * WIDTH * 4 for f in files if not _reusable(f, n, LAYERS, WIDTH, seed))
    free = shutil.disk_usage(directory).free
    shape = f"2 models x N={n:,} x {LAYERS} layers x D={WIDTH} float32"
    base = {"bench": "out_of_core", "shape": f"{n}x{LAYERS}x{WIDTH}", "dtype": "float32",
            "n": n, "layers": LAYERS, "width": WIDTH, "repeats": 0, "median_s": None}
    if need and need > free - (1 << 30):
        return [dict(base, case=shape, method="-", status=f"not run: needs {need / 1e9:.1f} GB in {directory}, "
                     f"{free / 1e9:.1f} GB free")], []
    t0 = time.perf_counter()
    for m, f in enumerate(files):
        if not _reusable(f, n, LAYERS, WIDTH, seed):
            write_model(f, m, seed, n, LAYERS, WIDTH)
    gen_s = time.perf_counter() - t0
    file_mb = files[0].stat().st_size / 2**20
    print(f"feature files: {file_mb:.0f} MiB each in {directory} ({gen_s:.1f} s to write)", flush=True)
    rows, targets = [], []
    modes = [("out-of-core", "out-of-core sweep")] + ([] if skip_in_memory else [("no-out-of-core", "in-memory sweep")])
    try:
        for metric in metrics:
            case = f"{metric}: {shape}" + (f", topk={TOPK}" if metric in NEIGHBOUR_METRICS else "")
            common = dict(base, case=case, metric=metric, topk=TOPK if metric in NEIGHBOUR_METRICS else None)
            found, scores = [], {}
            for mode, method in modes:
                out = directory / f"out_{metric}_{mode}"
                res = run_measure(files, out, mode, timeout, metric)
                rss = res.get("maxrss_mb")
                row = dict(common, method=method, status=res.get("status"), median_s=res.get("wall_s"),
                           repeats=1 if res.get("wall_s") else 0, peak_rss_mb=rss, file_mib=file_mb,
                           command=res.get("command"), output_tail=res.get("output_tail"),
                           knn_screen=screen_record(res.get("screen_stats"), n))
                scr = row["knn_screen"]
                row["summary"] = (f"peak RSS {rss:.0f} MB" if rss else "") + f"; files {file_mb:.0f} MiB each"
                if metric in NEIGHBOUR_METRICS:
                    share = scr["fallback_share"] or 0.0
                    row["summary"] += (f"; bf16 screen ran, {share:.1%} of rows fell back" if scr["ran"]
                                       else f"; bf16 screen off ({scr['reason']})")
                found.append(row)
                scores[mode] = _scores(out) if res.get("status") == "ok" else None
                print(f"{metric} {method}: {res.get('status')}, {res.get('wall_s') or 0:.1f} s; {row['summary']}",
                      flush=True)
                if not keep:
                    shutil.rmtree(out, ignore_errors=True)
            if len(scores) == 2 and all(scores.values()):
                _compare(found, scores["out-of-core"], scores["no-out-of-core"], exact=metric in NEIGHBOUR_METRICS)
            set_ratios(found, "in-memory sweep")
            rows.extend(found)
            targets.append(target(f"{metric}: out-of-core peak RSS at N={n:,} (ru_maxrss of the measure process)",
                                  found[0].get("peak_rss_mb"), quick=n != FULL_N, below=RSS_TARGET_MB, unit="MB"))
    finally:
        if not keep:
            for f in files:
                f.unlink(missing_ok=True)
    return rows, targets


def _compare(rows: list[dict], a: dict, b: dict, *, exact: bool) -> None:
    """Mark whether the two modes wrote the same scores: bitwise for the neighbour metrics; for CKA
    the same best layers and every score within 1e-5 relative (float32 products: the streamed run
    sums per-block float32 GEMMs in float64, the in-memory run takes one float32 GEMM over all N
    rows), the largest difference recorded."""
    if exact:
        same, note = a == b, "same scores"
    else:
        flat_a = [v for r in a["layer_scores"] for row in r for v in row] + [v for row in a["scores"] for v in row]
        flat_b = [v for r in b["layer_scores"] for row in r for v in row] + [v for row in b["scores"] for v in row]
        diff = max(abs(x - y) / max(abs(y), 1e-300) for x, y in zip(flat_a, flat_b))
        same = a["best_layers"] == b["best_layers"] and diff <= 1e-5
        note = f"scores within {diff:.1e} relative"
        for r in rows:
            r["max_relative_difference"] = diff
    for r in rows:
        r["same_scores_as_other_mode"] = same
        r["summary"] += f"; {note}" if same else "; SCORES DIFFER"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="platonic_fast benchmark: out-of-core sweep vs in-memory sweep")
    ap.add_argument("--quick", action="store_true", help=f"N={QUICK_N:,} (a dry run in seconds)")
    ap.add_argument("--n", type=int, default=None, help=f"samples per model (default {FULL_N:,}; --quick {QUICK_N:,})")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pf_bench_ooc"),
                    help="where the feature files and outputs go (default /tmp/pf_bench_ooc)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the feature files (reused by the next run)")
    ap.add_argument("--skip-in-memory", action="store_true", help="run the out-of-core sweep only")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per measure run (default: none)")
    ap.add_argument("--metrics", default="mutual_knn,cka",
                    help="metrics swept, comma-separated (default mutual_knn,cka)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = ap.parse_args(argv)
    n = args.n or (QUICK_N if args.quick else FULL_N)
    quick = n != FULL_N
    env = environment(None)
    print(header(env), flush=True)
    rows, targets = collect(n, directory=args.dir, keep=args.keep, seed=args.seed,
                            skip_in_memory=args.skip_in_memory, timeout=args.timeout,
                            metrics=[m.strip() for m in args.metrics.split(",") if m.strip()])
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(format_table(rows))
    print(format_targets(targets))
    if not args.no_save:
        path = write_results({"suite": "out_of_core", "quick": quick, "env": env, "rows": rows, "targets": targets,
                              "complete": True, "repo": str(REPO_ROOT)},
                             f"out_of_core-{'quick-' if quick else ''}{timestamp()}.json")
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
