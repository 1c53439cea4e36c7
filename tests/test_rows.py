"""The row-source protocol (platonic_fast.rows) and the one kNN pass over it.

A new source is one class: here a source that hands its rows back in small key blocks, holds
panels of query blocks and runs the ordering pass in chunks gives bitwise the in-memory lists.
The engine's compiled core is reached only from ops/ (and the capability probes named below).
"""

import re
from pathlib import Path

import pytest
import torch

from platonic_fast import rows as rows_mod
from platonic_fast.ops import knn as knn_mod
from platonic_fast.ops.knn import neighbours, search_rows

PKG = Path(__file__).resolve().parents[1] / "python" / "platonic_fast"


class SmallBlocks(rows_mod.TensorRows):
    """A tensor read as a file would be: key blocks of 100 rows, panels of 2 query tile blocks,
    the ordering pass in chunks of 16 rows, rows fetched as copies."""

    panel_blocks, settle_rows = 2, 16

    def fetch(self, index):
        return self.t.clone()

    def key_blocks(self):
        for r0, r1 in self.blocks(100):
            yield r0, self.t[r0:r1].clone()

    def scaled(self, e):
        return self if e == 0 else SmallBlocks(rows_mod._scaled(self.t, e))


@pytest.fixture
def ties():
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(700, 16, generator=g), dim=1)
    x[100:150] = x[400]  # 51 identical rows: clusters reach past k + 4 candidates
    return x


@pytest.mark.parametrize("k,exclude", [(10, True), (5, False), (60, True)])
def test_a_new_source_gives_the_in_memory_lists(ties, k, exclude, monkeypatch):
    monkeypatch.setattr(knn_mod, "SMALL_N_TILE_ROWS", 128)  # 6 tile blocks: 3 panels of 2
    calls = []
    real = knn_mod.more_candidates
    monkeypatch.setattr(knn_mod, "more_candidates", lambda *a: calls.append(1) or real(*a))
    want = neighbours(ties, k, exclude_self=exclude)
    got = search_rows(SmallBlocks(ties), None, k, exclude_self=exclude, backend="cpu")
    assert torch.equal(got[1], want[1]) and got[2] == want[2]
    assert torch.equal(got[0], want[0])
    assert calls  # the extra-candidates pass ran over the source's key blocks


def test_scaled_sources_keep_the_power_of_two(ties):
    big = ties * 2.0 ** 40
    want = neighbours(ties, 7)
    got = search_rows(rows_mod.as_rows(big), None, 7, exclude_self=True)
    assert torch.equal(got[1], want[1]) and got[2] == want[2] + 80


# _core calls outside ops/: only the capability probes (what the build holds, whether CUDA runs).
ALLOWED_CORE_USES = {
    ("env.py", "build_info"), ("env.py", "cuda_status"),
    ("_backends.py", "build_info"), ("_backends.py", "cuda_status"), ("_backends.py", "CUDA_MAX_LIST_K"),
}


def test_the_compiled_core_is_called_from_ops_only():
    found = set()
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "ops":
            continue
        for name in re.findall(r"\b_core\.(\w+)", path.read_text(encoding="utf-8")):
            found.add((rel.as_posix(), name))
    assert found <= ALLOWED_CORE_USES, (
        f"compiled-core calls outside ops/: {sorted(found - ALLOWED_CORE_USES)}; put them behind an op in "
        "python/platonic_fast/ops/ so that the backend registry chooses them")
