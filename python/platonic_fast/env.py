"""``python -m platonic_fast.env``: what was built and which backends can run here."""

from __future__ import annotations

import os
import platform


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _why_not_here(backend, device: str) -> str | None:
    import torch

    if device == "cuda" and not _gpu_check()[0]:
        return "no GPU"
    return backend.why_not(torch.device(device))


def _max_k(backend):
    """A backend's k limit; a callable one is read from the build or kernel module."""
    try:
        return backend.limit_k()
    except (ImportError, AttributeError):  # not built here: the limit is the build's
        return "not built"


def _gpu_check() -> tuple[bool, str | None]:
    """(whether torch can use a GPU, why not in plain words). torch warns with driver jargon
    ("CUDA driver version is insufficient", "driver too old") when its CUDA cannot start; that
    is a machine without a usable GPU, and is reported as such."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ok = bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - any failure to start CUDA means no GPU here
            ok = False
    if ok:
        return True, None
    said = " ".join(str(w.message) for w in caught).lower()
    if "driver" in said:
        return False, "no GPU (torch's CUDA build cannot start here: no NVIDIA driver, or one too old)"
    return False, "no GPU"


def _screen_report() -> dict:
    """The CPU kNN's bf16 screen (ops/knn_screen.py): the features found, and whether it runs."""
    try:
        from .ops import knn_screen
    except ImportError as exc:  # pragma: no cover - the package always has it
        return {"error": str(exc)}
    try:
        use, why = knn_screen.knn_screen_choice(65536, 10)
    except ValueError as exc:  # a misspelt PLATONIC_FAST_KNN_SCREEN
        use, why = False, str(exc)
    try:
        product = knn_screen.screen_product()
    except ValueError as exc:  # a misspelt or unusable PLATONIC_FAST_KNN_SCREEN_PRODUCT
        product = str(exc)
    f = knn_screen.cpu_features()
    return {"cpu_features": f, "bf16_instructions": knn_screen.bf16_hardware(),
            "env": os.environ.get(knn_screen.SCREEN_ENV), "runs": use, "why": why,
            "min_keys": knn_screen.SCREEN_MIN_KEYS, "max_k": knn_screen.SCREEN_MAX_K,
            "product": product, "kernel_isas": knn_screen.kernel_isas()}


def report() -> dict:
    """Build options, devices and the usable backend of every op, as a dict."""
    import torch

    from . import __version__, _backends

    gpu, why_not = _gpu_check()
    info: dict = {
        "platonic_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_devices": [
            "{} (sm_{}{})".format(torch.cuda.get_device_name(i), *torch.cuda.get_device_capability(i))
            for i in range(torch.cuda.device_count())
        ] if gpu else [],
        "gpu": why_not or "yes",
    }
    try:
        from . import _core

        info["core"] = _core.build_info()
        if info["core"]["cuda"]:
            if gpu:
                status, count = _core.cuda_status()
            else:  # the runtime's own words would be driver jargon for "no GPU"
                status, count = why_not, 0
            info["core"]["cuda_runtime"] = status
            info["core"]["cuda_device_count"] = count
    except ImportError as exc:
        info["core"] = f"not importable: {exc}"
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["backend_override"] = os.environ.get("PLATONIC_FAST_BACKEND")
    info["knn_screen"] = _screen_report()
    info["backends"] = {}
    for op in _backends.ops():
        rows = {}
        for name, b in _backends.backends_of(op).items():
            rows[name] = {
                "devices": list(b.devices),
                "dtypes": [_backends.dtype_name(d) for d in b.dtypes],
                "max_k": _max_k(b),
                "min_capability": ".".join(map(str, b.min_capability)) if b.min_capability else None,
                "needs": list(b.needs),
                # why it cannot run here on each of its devices (None: it can)
                "here": {dev: _why_not_here(b, dev) for dev in b.devices},
            }
        info["backends"][op] = rows
    devices = ("cpu", "cuda") if gpu else ("cpu",)
    info["auto"] = {op: {dev: _backends.available(op, dev) for dev in devices} for op in _backends.ops()}
    return info


def main() -> None:
    info = report()
    print(f"platonic_fast {info['platonic_fast']}  (python {info['python']}, torch {info['torch']}, "
          f"triton {info['triton'] or 'not installed'})")
    core = info["core"]
    if isinstance(core, dict):
        print(f"compiled core: {core['compiler']}, {core['build_type']}, flags '{core['cxx_flags'].strip()}'")
        print(f"  OpenMP: {'yes (' + str(core['openmp_version']) + ')' if core['openmp'] else 'no'}, "
              f"{core['max_threads']} threads")
        if core["cuda"]:
            runtime = (f"{core['cuda_runtime']}, {core['cuda_device_count']} device(s)"
                       if info["cuda_devices"] else "no GPU on this machine")
            print(f"  CUDA kernels: built with CUDA {core['cuda_version']} for sm {core['cuda_archs']}; "
                  f"runtime: {runtime}")
        else:
            print("  CUDA kernels: not built (no nvcc at build time)")
    else:
        print(f"compiled core: {core}")
    print(f"CPU: {info['cpu']}, torch threads: {info['cpu_threads']}")
    print(f"GPUs: {', '.join(info['cuda_devices']) or info['gpu']}"
          + ("  (the CUDA and Triton kernels need sm_80 or newer)" if info["cuda_devices"] else ""))
    sc = info["knn_screen"]
    if "error" not in sc:
        f = sc["cpu_features"]
        flags = ("avx512f", "avx512_bf16", "amx_bf16")
        found = ", ".join(n for n in flags if f.get(n)) or "none of " + "/".join(flags)
        amx = "" if f.get("amx_permitted") else f"; AMX: {f.get('amx_note') or 'unknown (core predates the screen)'}"
        print(f"kNN bf16 screen (CPU): {'runs' if sc['runs'] else 'off'} for N >= {sc['min_keys']}, k <= {sc['max_k']} "
              f"({sc['why']}); CPU features: {found}{amx}; PLATONIC_FAST_KNN_SCREEN={sc['env'] or 'unset (auto)'}; "
              f"bf16 product: {sc['product']} (own kernel on: {', '.join(sc['kernel_isas']) or 'none'})")
    if info["backend_override"]:
        print(f"PLATONIC_FAST_BACKEND={info['backend_override']} overrides 'auto'")
    print("backends: what each serves, and whether it runs here (auto takes the first that serves a call)")
    print(f"  {'op':<16}{'backend':<8}{'devices':<10}{'dtypes':<34}{'max k':<7}{'min cc':<7}{'needs':<14}here")
    for op, rows in info["backends"].items():
        for name, b in rows.items():
            here = "; ".join(f"{dev}: {'yes' if why is None else why}" for dev, why in b["here"].items())
            print(f"  {op:<16}{name:<8}{'/'.join(b['devices']):<10}{','.join(b['dtypes']):<34}"
                  f"{str(b['max_k'] or '-'):<7}{b['min_capability'] or '-':<7}{','.join(b['needs']) or '-':<14}{here}")
    print("auto order here" + ("" if info["cuda_devices"] else " (no GPU: CPU tensors only)") + ":")
    for op, per_dev in info["auto"].items():
        cols = "   ".join(f"{dev}: {', '.join(b) or '-'}" for dev, b in per_dev.items())
        print(f"  {op:<16} {cols}")

if __name__ == "__main__":
    main()
