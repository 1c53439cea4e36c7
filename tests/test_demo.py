"""The colour case study (platonic_fast.demo): its data, its geometry, its imports and one quick run."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

import platonic_fast  # noqa: E402
from platonic_fast.demo import data as cd  # noqa: E402
from platonic_fast.demo import geometry as geo  # noqa: E402
from platonic_fast.demo import study  # noqa: E402

# Loads models, runs subprocesses or compiles kernels: the full lane only (pytest -m "not slow" skips it).
pytestmark = pytest.mark.slow

def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


# --- data ------------------------------------------------------------------------------------


def test_xkcd_table():
    names, rgb, lab = cd.xkcd_colours()
    assert len(names) == 949 and len(set(names)) == 949
    assert rgb.shape == (949, 3) and lab.shape == (949, 3)
    assert np.isfinite(rgb).all() and np.isfinite(lab).all()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert lab[:, 0].min() >= 0.0 and lab[:, 0].max() <= 100.0 + 1e-6
    white = names.index("white")
    np.testing.assert_allclose(rgb[white], 1.0)
    np.testing.assert_allclose(lab[white], [100.0, 0.0, 0.0], atol=0.01)  # skimage D65 rounding
    red = lab[names.index("red")]  # xkcd red #e50000: a* large positive
    assert red[1] > 60 and red[2] > 40


def test_photographs_are_real_and_local():
    imgs = cd.load_photographs()
    assert [n for n, _ in imgs] == list(cd.PHOTOGRAPHS)
    for name, img in imgs:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 256, name


def test_pixel_pairs_within_radius():
    h, w = 23, 31
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)  # pixel = its coordinates
    a, b = cd.sample_pixel_pairs(img, 5000, 4.0, np.random.default_rng(0))
    d2 = (a.astype(int) - b.astype(int))[:, :2]
    d2 = (d2**2).sum(1)
    assert d2.min() >= 1 and d2.max() <= 16
    assert len(cd.disc_offsets(4.0)) == 48  # integer points of the radius-4 disc, origin excluded
    # every offset shows up
    offs = {tuple(o) for o in (b.astype(int) - a.astype(int))[:, :2]}
    assert len(offs) == 48


def test_quantise_and_centres():
    levels = 4
    cells = cd.quantise(np.array([[0, 0, 0], [255, 255, 255], [64, 0, 255]], dtype=np.uint8), levels)
    assert cells.tolist() == [0, levels**3 - 1, (1 * levels + 0) * levels + 3]
    centres = cd.cell_centres(levels)
    assert centres.shape == (levels**3, 3)
    u8 = np.round(centres * 255).astype(np.uint8)
    assert (cd.quantise(u8, levels) == np.arange(levels**3)).all()


def test_pmi_exact_counts():
    counts = np.array([[6.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    p = counts / counts.sum()
    marg = p.sum(1)
    got = cd.pmi(counts)
    np.testing.assert_allclose(got[0, 0], math.log(p[0, 0] / marg[0] ** 2))
    np.testing.assert_allclose(got[0, 1], math.log(p[0, 1] / (marg[0] * marg[1])))
    assert np.isnan(got[2]).all()  # a cell never seen
    smooth = cd.pmi(counts[:2, :2], smoothing=0.1)
    ratio = p[0, 1] / (marg[0] * marg[1])
    np.testing.assert_allclose(smooth[0, 1], math.log((ratio + 0.1) / 1.1))
    zero = cd.pmi(np.array([[4.0, 0.0], [0.0, 4.0]]), smoothing=0.1)
    np.testing.assert_allclose(zero[0, 1], math.log(0.1 / 1.1))  # the floor for pairs never seen together


def test_pmi_two_colour_image():
    """Left half red, right half blue: nearby pixels almost always share a colour.

    p(red) = p(blue) = 1/2 and p(red, red) ≈ 1/2, so PMI(red, red) ≈ log 2, while red next to blue
    happens only across the border: PMI(red, blue) is very negative.
    """
    img = np.zeros((16, 800, 3), dtype=np.uint8)
    img[:, :400, 0] = 255
    img[:, 400:, 2] = 255
    a, b = cd.sample_pixel_pairs(img, 40_000, 4.0, np.random.default_rng(1))
    levels = 2
    counts = cd.cooccurrence(cd.quantise(a, levels), cd.quantise(b, levels), levels**3)
    red, blue = cd.quantise(np.array([[255, 0, 0], [0, 0, 255]], dtype=np.uint8), levels)
    assert counts.sum() == 80_000 and np.allclose(counts, counts.T)
    assert counts[red].sum() + counts[blue].sum() == 80_000
    k = cd.pmi(counts)
    assert abs(k[red, red] - math.log(2)) < 0.02
    assert abs(k[blue, blue] - math.log(2)) < 0.02
    assert k[red, blue] < -3


# --- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 50, 400])
def test_kabsch_umeyama_recovers_similarity(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3)) * [3.0, 1.0, 0.5]
    rot = _random_rotation(rng)
    s, t = 2.7, np.array([10.0, -4.0, 0.5])
    y = s * x @ rot.T + t
    s_hat, r_hat, t_hat = geo.kabsch_umeyama(x, y)
    np.testing.assert_allclose(s_hat, s, rtol=1e-10)
    np.testing.assert_allclose(r_hat, rot, atol=1e-10)
    np.testing.assert_allclose(t_hat, t, atol=1e-9)
    resid, aligned = geo.procrustes_residual(x, y)
    assert resid < 1e-10
    np.testing.assert_allclose(aligned, y, atol=1e-9)


def test_kabsch_umeyama_reflection():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 3))
    mirror = np.diag([1.0, 1.0, -1.0]) @ _random_rotation(rng)
    y = 0.5 * x @ mirror.T
    _, r_rot, _ = geo.kabsch_umeyama(x, y)  # a rotation cannot undo a mirror
    assert np.linalg.det(r_rot) > 0
    assert geo.procrustes_residual(x, y, allow_reflection=False)[0] > 0.1
    assert geo.procrustes_residual(x, y, allow_reflection=True)[0] < 1e-10


def test_metric_mds_reproduces_3d_distances():
    from scipy.spatial.distance import pdist, squareform

    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 3)) * [5.0, 2.0, 1.0]
    d = squareform(pdist(x))
    emb, stress = geo.metric_mds(d, 3)
    assert stress < 1e-8
    np.testing.assert_allclose(pdist(emb), pdist(x), atol=1e-7)
    # and the layout is the original up to a rigid motion
    assert geo.procrustes_residual(emb, x)[0] < 1e-8


def test_metric_mds_improves_on_classical():
    from scipy.spatial.distance import pdist, squareform

    rng = np.random.default_rng(1)
    x = rng.standard_normal((150, 8))  # 8-D points squeezed into 3-D
    d = squareform(pdist(x))
    start = geo.classical_mds(d, 3)
    raw = lambda e: ((pdist(e) - pdist(x)) ** 2).sum()  # noqa: E731
    emb, _ = geo.metric_mds(d, 3)
    assert raw(emb) < raw(start)


def test_spearman():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 3))
    assert geo.distance_spearman(x, 3.0 * x + 1.0) == pytest.approx(1.0)
    y = rng.standard_normal((60, 3))
    assert abs(geo.distance_spearman(x, y)) < 0.2
    ranked = geo.RankedDistances(y)
    for z in (x, y, x + 0.3 * y):
        assert ranked(z) == pytest.approx(geo.distance_spearman(z, y), abs=1e-12)


def test_cielab_neighbours_are_euclidean():
    """The inner-product kNN on augmented vectors gives the exact ΔE76 neighbours."""
    _, _, lab = cd.xkcd_colours()
    target = study.EuclideanTarget(lab, 10)
    d = ((lab[:, None, :] - lab[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    ref = np.argsort(d, axis=1, kind="stable")[:, :10]
    got = target.neighbours.indices.numpy()
    assert got.shape == (949, 10)
    assert not (got == np.arange(949)[:, None]).any()
    # same neighbour sets; positions may differ only between colours at the same distance
    rows = np.arange(949)[:, None]
    np.testing.assert_allclose(d[rows, got], d[rows, ref], rtol=1e-9)
    vals = target.neighbours.values.numpy()
    assert (np.diff(vals, axis=1) <= 1e-12).all()  # kernel decreasing along each list


def test_colour_space_against_itself_scores_one():
    _, rgb, lab = cd.xkcd_colours()
    target = study.EuclideanTarget(lab, 10)
    s = study.colour_space_scores(lab, target)
    assert s["mutual_knn"] == pytest.approx(1.0)
    assert s["cknna"] == pytest.approx(1.0, abs=1e-3)
    assert s["unbiased_cka"] == pytest.approx(1.0, abs=1e-6)


# --- the study, end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("colour_study")
    return out, study.run(out, quick=True, seed=0, verbose=False)


def test_quick_run_writes_outputs(quick_run):
    out, record = quick_run
    js, png = out / "colour_study.json", out / "colour_study.png"
    assert js.is_file() and png.is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads(js.read_text())
    assert on_disk["n_colours"] == 949 and on_disk["quick"] is True
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    reps = on_disk["representations"]
    assert set(reps) >= {"cielab", "minilm", "minilm_random_weights", "minilm_shuffled", "vision_pmi"}
    for name, r in reps.items():
        for key in ("mutual_knn", "cknna", "unbiased_cka", "spearman"):
            assert math.isfinite(r[key]), (name, key)
        assert 0.0 <= r["mutual_knn"] <= 1.0
    assert len(reps["minilm"]["layers"]) == 7  # embeddings + 6 blocks
    assert reps["cielab"]["mutual_knn"] == pytest.approx(1.0)
    assert reps["cielab"]["procrustes"] < 1e-6
    for name in ("minilm", "minilm_random_weights", "minilm_shuffled", "vision_pmi"):
        assert 0.0 < reps[name]["procrustes"] <= 1.0 + 1e-9
    assert on_disk["vision"]["photographs"] == list(cd.PHOTOGRAPHS)
    # the figure's uncertainty: permutation p-values, and ranges on halves for trained vs random
    for name in ("minilm", "minilm_random_weights", "minilm_shuffled", "vision_pmi"):
        assert 0 < reps[name]["uncertainty"]["p_value"] <= 1
    assert all(len(reps[n]["uncertainty"]["half_interval"]) == 2 for n in ("minilm", "minilm_random_weights"))


def test_quick_run_baselines_score_lower(quick_run):
    """Measured at seed 0: trained 0.154, random weights 0.109-0.117 over seeds 0-3, shuffled 0.011."""
    reps = quick_run[1]["representations"]
    trained = reps["minilm"]["mutual_knn"]
    assert reps["minilm_shuffled"]["mutual_knn"] < 0.5 * trained
    assert reps["minilm_random_weights"]["mutual_knn"] < trained - 0.02
    assert reps["vision_pmi"]["mutual_knn"] > 5 * reps["minilm_shuffled"]["mutual_knn"]


# --- the demo uses only the public API; the CLI's extract path does not use the demo ---------

DEMO_DIR = Path(platonic_fast.__file__).parent / "demo"
CLI_FILE = Path(platonic_fast.__file__).parent / "cli.py"
# The only platonic_fast modules outside the demo that the demo may import from.
PUBLIC_MODULES = ("platonic_fast", "platonic_fast.features", "platonic_fast.features.datasets", "platonic_fast.files")


def _imports(tree: ast.AST, package: str):
    """(absolute module, imported names or None, node) for every import in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            yield mod, [a.name for a in node.names], node


def _public_names(module: str) -> set[str]:
    import importlib

    mod = importlib.import_module(module)
    names = set(getattr(mod, "__all__", ()))
    if module == "platonic_fast":
        names.add("features")  # a public subpackage
    if not hasattr(mod, "__all__"):
        names |= {n for n in vars(mod) if not n.startswith("_")}
    return names


def _private_uses(tree: ast.AST, where: str) -> list[str]:
    """Imports (and ``pf.<attr>`` uses) in a demo module that reach past platonic_fast's public API."""
    bad, aliases = [], set()  # aliases: local names bound to the platonic_fast package itself
    for mod, names, node in _imports(tree, "platonic_fast.demo"):
        at = f"{where}:{node.lineno}"
        if mod is None or not (mod == "platonic_fast" or mod.startswith("platonic_fast.")):
            continue
        if mod == "platonic_fast.demo" or mod.startswith("platonic_fast.demo."):
            continue  # the demo's own modules
        if mod not in PUBLIC_MODULES:
            bad.append(f"{at}: imports {mod} (not a public module)")
        elif names is None:
            aliases.update(a.asname or a.name for a in node.names if a.name == "platonic_fast")
        else:
            public = _public_names(mod)
            bad += [f"{at}: {mod}.{n} is not public" for n in names if n not in public]
    top = _public_names("platonic_fast")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr not in top):
            bad.append(f"{where}:{node.lineno}: platonic_fast.{node.attr} is not in platonic_fast.__all__")
    return bad


def test_demo_imports_only_public_names():
    files = sorted(DEMO_DIR.glob("*.py"))
    assert {f.stem for f in files} >= {"__init__", "data", "representations", "geometry", "study", "report"}
    bad = []
    for f in files:
        bad += _private_uses(ast.parse(f.read_text(), filename=str(f)), f.name)
    assert not bad, "\n".join(bad)


def test_import_checker_catches_private_uses():
    src = ("from platonic_fast.metrics import _masked_sums\n"
           "from ..ops import neighbour_lists\n"
           "from .. import _io\n"
           "from ..features import _common\n"
           "import platonic_fast.align\n"
           "import platonic_fast as pf\n"
           "x = pf._core, pf.knn\n"
           "from . import study\n")
    bad = _private_uses(ast.parse(src), "m.py")
    assert [b.split(":")[1] for b in bad] == ["1", "2", "3", "4", "5", "7"], bad


def test_cli_does_not_import_the_demo_for_extract():
    """extract --colours builds the colour samples without importing the demo (it moved to
    features/_cli.py and features/samples.py; cli.py only dispatches)."""
    root = CLI_FILE.parent
    demo = {"demo", "colour_study", "_colour_data"}  # the package and the modules it replaced

    def demo_imports(nodes):
        out = []
        for node in nodes:
            for mod, names, _ in _imports(node, "platonic_fast"):
                parts = (mod or "").split(".")
                if demo & set(parts[1:]) or (mod == "platonic_fast" and demo & set(names or ())):
                    out.append(mod)
        return out

    for src in ("from .demo import run", "from .demo.data import x", "from . import demo", "import platonic_fast.demo",
                "from ._colour_data import xkcd_colours"):
        assert demo_imports([ast.parse(src)]), src  # the check itself sees each form
    for path in (CLI_FILE, root / "features" / "_cli.py", root / "features" / "samples.py"):
        tree = ast.parse(path.read_text())
        module_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not demo_imports(module_level), path
    funcs = {n.name: n for n in ast.parse((root / "features" / "_cli.py").read_text()).body
             if isinstance(n, ast.FunctionDef)}
    assert {"_samples", "run_extract"} <= set(funcs)
    assert not demo_imports([funcs["_samples"], funcs["run_extract"]])
    # and at run time: building the colour samples leaves the demo unimported
    code = ("import sys\nfrom platonic_fast.features.samples import load_samples\n"
            "s = load_samples(colours=True)\n"
            "assert len(s.texts) == 949 and len(s.images) == 949, (len(s.texts), len(s.images))\n"
            "print(sorted(m for m in sys.modules if m.startswith('platonic_fast.demo') or 'colour' in m))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_colour_set_for_extract():
    from platonic_fast.features import datasets

    names, rgb = datasets.xkcd_srgb()
    texts = datasets.colour_texts()
    assert texts[names.index("red")] == "The color red."
    swatches = datasets.colour_swatches(32)
    white = swatches[names.index("white")]
    assert white.shape == (32, 32, 3) and white.dtype == np.uint8 and (white == 255).all()
    assert cd.xkcd_colours()[0] == names
