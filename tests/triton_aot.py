"""Compile the Triton kernels ahead of time for NVIDIA targets, without a GPU (a subprocess of
tests/test_triton_compile.py; Triton's interpreter must be off, so it cannot run in-process).

    python tests/triton_aot.py [--all-configs] > report.json

For each case: the kernel, target, constants and launch options, whether it compiled, whether
the GEMM uses Hopper's wgmma and asynchronous copies, and the resources of the cubin (registers,
stack bytes — non-zero means spills —, shared memory), read with Triton's own cuobjdump.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from platonic_fast.triton import hsic, knn  # noqa: E402

# Pointer and integer arguments that a real launch sees 16-divisible (Triton specialises them).
_KNN_SIG = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "out_val_ptr": "*fp32", "out_idx_ptr": "*i32",
            "n_q": "i32", "n_k": "i32", "d": "i32", "stride_q": "i32", "stride_k": "i32", "k": "i32",
            "size_class": "i32"}
_KNN_DIV = ("q_ptr", "k_ptr", "out_val_ptr", "out_idx_ptr", "d", "stride_q", "stride_k")
_HSIC_SIG = {"a_ptr": "*{dt}", "b_ptr": "*{dt}", "sq_a_ptr": "*fp32", "sq_b_ptr": "*fp32", "n": "i32",
             "da": "i32", "db": "i32", "stride_a": "i32", "stride_b": "i32",
             **{f"{p}_{s}": "fp32" for s in "ab" for p in ("gamma", "shift", "offset", "inv_h")},
             "partial_ptr": "*fp64", "rows_k_ptr": "*fp64", "rows_l_ptr": "*fp64", "size_class": "i32"}
_HSIC_DIV = ("a_ptr", "b_ptr", "sq_a_ptr", "sq_b_ptr", "da", "db", "stride_a", "stride_b",
             "partial_ptr", "rows_k_ptr", "rows_l_ptr")
_TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {key.lower(): int(val) for key, val in found.items()}


def compile_case(jit_fn, signature: dict, divisible: tuple, dtype: str, constants: dict,
                 num_warps: int, num_stages: int, arch: int) -> dict:
    names = list(inspect.signature(jit_fn.fn).parameters)
    sig = {name: kind.format(dt=_TRITON_TYPES[dtype]) for name, kind in signature.items()}
    sig.update({name: "constexpr" for name in constants})
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    case = {"kernel": jit_fn.fn.__name__, "arch": arch, "dtype": dtype, "num_warps": num_warps,
            "num_stages": num_stages, **{k: v for k, v in constants.items() if k != "UPCAST"}}
    try:
        src = triton.compiler.ASTSource(fn=jit_fn, signature=sig, constexprs=constants, attrs=attrs)
    except TypeError as exc:  # another Triton's ahead-of-time API: nothing to say about the kernels
        case.update(ok=None, error=f"unsupported ASTSource API in Triton {triton.__version__}: {exc}")
        return case
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as exc:  # reported, and the test fails with the message
        case.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[-2000:]}")
        return case
    ptx = kernel.asm["ptx"]
    case.update(ok=True, wgmma="wgmma" in ptx, cp_async="cp.async" in ptx,
                shared_bytes=kernel.metadata.shared, **_resources(kernel.asm["cubin"]))
    return case


def knn_cases(all_configs: bool):
    """bfloat16 self-kNN for k = 10 and k = 128 over the configurations the autotuner may try
    (all, or the first and last), plus exact float32, tf32 and an sm_80 float16 build."""
    def consts(k, precision="ieee", **cfg):
        top = max(16, knn._next_pow2(k))
        return dict(EXCLUDE_SELF=True, **cfg, TOP=top, SORT_MERGE=top >= knn.SORT_MERGE_FROM,
                    INSERT_MAX=knn.INSERT_MAX, PRECISION=precision, UPCAST=False)

    for k in (10, 128):
        configs = knn._prune(knn._CONFIGS, {"TOP": max(16, knn._next_pow2(k))})
        for cfg in configs if all_configs else configs[:1] + configs[-1:]:
            yield ("bfloat16", consts(k, **cfg.kwargs), cfg.num_warps, cfg.num_stages, 90)
    small = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=32)
    yield ("float32", consts(10, **small), 8, 3, 90)
    yield ("float32", consts(10, "tf32", **small), 4, 3, 90)
    yield ("float16", consts(10, **small), 4, 3, 80)


def hsic_cases(all_configs: bool):
    """bfloat16 linear and RBF sums over the tuned configurations (all, or the first and last),
    plus float32 and an sm_80 float16 build."""
    configs = hsic._CONFIGS
    for cfg in configs if all_configs else configs[:1] + configs[-1:]:
        for rbf in (False, True):
            yield ("bfloat16", dict(RBF=rbf, **cfg.kwargs, UPCAST=False), cfg.num_warps, cfg.num_stages, 90)
    yield ("float32", dict(RBF=True, BLOCK=64, BLOCK_D=32, UPCAST=False), 4, 2, 90)
    yield ("float16", dict(RBF=False, BLOCK=64, BLOCK_D=32, UPCAST=False), 4, 2, 80)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all-configs", action="store_true", help="every autotuning configuration")
    args = ap.parse_args(argv)
    report = []
    for dtype, constants, warps, stages, arch in knn_cases(args.all_configs):
        report.append(compile_case(knn._knn_kernel, _KNN_SIG, _KNN_DIV, dtype, constants, warps, stages, arch))
        print(report[-1], file=sys.stderr, flush=True)
    for dtype, constants, warps, stages, arch in hsic_cases(args.all_configs):
        report.append(compile_case(hsic._hsic_sums_kernel, _HSIC_SIG, _HSIC_DIV, dtype, constants,
                                   warps, stages, arch))
        print(report[-1], file=sys.stderr, flush=True)
    json.dump({"triton": triton.__version__, "cases": report}, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
