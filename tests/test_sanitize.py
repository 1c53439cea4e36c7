"""The compiled core under AddressSanitizer + UndefinedBehaviorSanitizer (issue "No silent wrong
numbers", part 4).

Builds csrc/ (CPU only) with ``-DPLATONIC_FAST_SANITIZE=address,undefined`` (CMakeLists.txt:
``-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g``) into
build/sanitize-<hash of the sources and flags>, so a rerun with unchanged sources skips the
build. The module is dropped into a copy of the Python package (with kernels/triton as
platonic_fast/triton, as the wheel maps it) that comes first on PYTHONPATH; a sitecustomize.py
there drops scikit-build-core's editable-install finder, which would otherwise load the
installed _core. The interpreter is not instrumented, so the GCC runtimes are preloaded
(LD_PRELOAD=libasan.so:libubsan.so) and leak checking is off (CPython and torch keep memory
until exit by design).

Then the core's tests run in that environment in a subprocess: test_neighbour_lists,
test_cknna_sums, test_outliers, test_knn (fast lane), test_cuda_rows_host and the property
smoke (whose workers inherit the environment and must report the sanitized module). The test
fails with the sanitizer's report on any finding. Before that, two checks that the setup is
live: the subprocess imports the sanitized ``_core`` (file and flags), and a deliberate heap
overflow through ctypes is reported by ASan.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANITIZERS = "address,undefined"
CORE_TESTS = [
    "tests/test_neighbour_lists.py",
    "tests/test_cknna_sums.py",
    "tests/test_outliers.py",
    "tests/test_knn.py",
    "tests/test_cuda_rows_host.py",
    "tests/test_properties.py::test_property_smoke",
]
REPORT = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: \w+Sanitizer")

pytestmark = pytest.mark.slow


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name  # the venv's cmake / ninja (pip packages)
    return str(here) if here.exists() else shutil.which(name)


def _runtime(cxx: str, lib: str) -> str | None:
    out = subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


@pytest.fixture(scope="module")
def toolchain():
    gxx, cmake = shutil.which("g++"), _tool("cmake")
    if gxx is None or cmake is None:
        pytest.skip("the sanitizer build needs g++ and cmake")
    asan, ubsan = _runtime(gxx, "libasan.so"), _runtime(gxx, "libubsan.so")
    if asan is None or ubsan is None:
        pytest.skip(f"{gxx} has no libasan/libubsan runtime")
    version = subprocess.run([gxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"cxx": gxx, "cmake": cmake, "ninja": _tool("ninja"), "preload": f"{asan}:{ubsan}",
            "version": version}


def _source_hash(toolchain) -> str:
    h = hashlib.sha256()
    files = [ROOT / "CMakeLists.txt"] + sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    h.update(f"{SANITIZERS}|{toolchain['version']}|{sys.version}".encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def sanitized_core(toolchain):
    """Path of the sanitized _core module (built once per source hash, under build/)."""
    bdir = ROOT / "build" / f"sanitize-{_source_hash(toolchain)}"
    found = sorted(bdir.glob("_core*.so"))
    if found:
        return found[0]
    configure = [toolchain["cmake"], "-S", str(ROOT), "-B", str(bdir), f"-DPython_EXECUTABLE={sys.executable}",
                 "-DPLATONIC_FAST_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Debug", f"-DPLATONIC_FAST_SANITIZE={SANITIZERS}",
                 f"-DCMAKE_CXX_COMPILER={toolchain['cxx']}"]
    if toolchain["ninja"]:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={toolchain['ninja']}"]
    for cmd in (configure, [toolchain["cmake"], "--build", str(bdir), "-j", str(os.cpu_count() or 2)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    found = sorted(bdir.glob("_core*.so"))
    assert found, f"no _core module in {bdir}"
    return found[0]


SITECUSTOMIZE = '''\
# Written by tests/test_sanitize.py: load platonic_fast from this folder (the sanitized build),
# not through scikit-build-core's editable-install finder, which would find the installed _core.
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
'''


@pytest.fixture(scope="module")
def sanitized_env(sanitized_core, toolchain, tmp_path_factory):
    """Environment in which ``python`` imports platonic_fast with the sanitized core."""
    top = tmp_path_factory.mktemp("sanitized")
    pkg = top / "pkg"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "triton")
    shutil.copytree(ROOT / "python" / "platonic_fast", pkg / "platonic_fast", ignore=ignore)
    shutil.copytree(ROOT / "kernels" / "triton", pkg / "platonic_fast" / "triton",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(sanitized_core, pkg / "platonic_fast" / sanitized_core.name)
    (pkg / "sitecustomize.py").write_text(SITECUSTOMIZE)
    logs = top / "logs"
    logs.mkdir()
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(pkg)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "LD_PRELOAD": toolchain["preload"],
        # halt at the first finding; leaks are off (the interpreter is not instrumented)
        "ASAN_OPTIONS": f"detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path={logs / 'asan'}",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PLATONIC_FAST_EXPECT_SANITIZED": "1",
    })
    return {"env": env, "pkg": pkg, "logs": logs}


def _reports(proc, logs: Path) -> str:
    text = [ln for ln in (proc.stdout + proc.stderr).splitlines() if REPORT.search(ln)]
    files = sorted(logs.glob("asan*"))
    body = "\n".join(f.read_text()[-6000:] for f in files)
    return "\n".join(text) + ("\n" + body if body else "")


def test_sanitized_core_is_loaded(sanitized_env):
    code = ("import json, platonic_fast, platonic_fast._core as c; "
            "print(json.dumps({'file': c.__file__, 'pkg': platonic_fast.__file__, "
            "'flags': c.build_info()['cxx_flags'], 'cuda': c.build_info()['cuda']}))")
    proc = subprocess.run([sys.executable, "-c", code], env=sanitized_env["env"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(info["file"]).parent == sanitized_env["pkg"] / "platonic_fast", info
    assert Path(info["pkg"]).parent == sanitized_env["pkg"] / "platonic_fast", info
    assert f"-fsanitize={SANITIZERS}" in info["flags"] and not info["cuda"], info


def test_sanitizer_runtime_is_live(sanitized_env):
    """A heap overflow through ctypes (memcpy past a 16-byte malloc) must be reported by ASan."""
    code = ("import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
            "p = libc.malloc(16); print(len(ctypes.string_at(p, 64)))")
    env = dict(sanitized_env["env"])
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1"  # report on stderr for this check
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, (proc.returncode, proc.stderr[-2000:])


def test_core_tests_under_sanitizers(sanitized_env):
    """The core's tests and the property smoke, on the sanitized core: no finding, all pass."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", "-m", "not slow",
           *CORE_TESTS]
    proc = subprocess.run(cmd, env=sanitized_env["env"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    found = _reports(proc, sanitized_env["logs"])
    assert not found, f"sanitizer findings (exit status {proc.returncode}):\n{found}\n{proc.stdout[-3000:]}"
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
