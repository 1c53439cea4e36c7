"""MetricSpec (platonic_fast/metrics.py) is the only metric table (issue 19, item 5): no other module
decides what to do by testing a metric's name, or keeps its own list of metric names. What a
path needs to know about a metric (its sharded form, how it streams, its value range, ...) is a
field of its spec."""

import re
from pathlib import Path

import pytest

from platonic_fast import METRICS, SUPPORTED_METRICS

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "platonic_fast"
NAME = "(?:" + "|".join(sorted(SUPPORTED_METRICS, key=len, reverse=True)) + ")"
LITERAL = rf"""["']{NAME}["']"""
PATTERNS = [
    re.compile(rf"(?:==|!=|\bin\b|\bis\b)\s*[(\[{{]?\s*{LITERAL}"),  # x == "cka", x in ("cka", ...)
    re.compile(rf"{LITERAL}\s*(?:==|!=|\bin\b)"),  # "cka" == x, "cka" in names
    re.compile(rf"\bcase\s+{LITERAL}"),  # match/case on a name
]


def _offences(text: str) -> list[str]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        if code.lstrip().startswith(('"', "'")) and not any(op in code for op in ("==", "!=", " in ")):
            continue  # a docstring or message line
        if any(p.search(code) for p in PATTERNS):
            out.append(f"{number}: {line.strip()}")
    return out


def test_the_patterns_catch_if_chains():
    chain = 'if metric == "cka":\n    pass\nelif metric in ("mutual_knn", "cycle_knn"):\n    pass\n'
    assert len(_offences(chain)) == 2
    assert _offences('if name in {"cknna", "svcca"}:\n')
    assert not _offences('METRICS = ("mutual_knn", "cknna")  # which metrics a study runs: a choice, not a table\n')
    assert _offences('if "lcs_knn" != res.metric:\n')
    assert not _offences('spec = METRICS["cka"]\nprepare("mutual_knn", x)\n')


def test_no_metric_name_tests_outside_metrics_py():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "metrics.py" and path.parent == PACKAGE:
            continue
        hits = _offences(path.read_text(encoding="utf-8"))
        if hits:
            found[str(path.relative_to(PACKAGE))] = hits
    assert not found, ("metric-name tests outside metrics.py; declare what the path needs in the metric's "
                       f"MetricSpec instead: {found}")


@pytest.mark.parametrize("name", SUPPORTED_METRICS)
def test_every_spec_declares_its_sharded_form(name):
    spec = METRICS[name]
    assert spec.sharded is not None
    assert (spec.from_lists is not None) == spec.takes_topk
    assert spec.stream in ("neighbours", "hsic", None)
    lo, hi = spec.value_range(spec.check_options(100, (16, 16), {}))
    assert lo <= 0.0 < hi
