"""The documentation stays navigable: README is a front page, links and cited anchors resolve.

Checks whatever Markdown exists under docs/ (and bench/README.md), so pages added later are
covered without editing this file.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 250
SETUP_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/platonic-fast demo",
    "bash scripts/setup.sh && .venv/bin/python -m pytest",
)
# Where code may cite a definition of docs/metrics.md by its anchor.
CITING_TREES = ("python", "csrc", "kernels", "tests", "bench", "docs", "scripts")
CITING_SUFFIXES = {".py", ".pyi", ".cpp", ".h", ".hpp", ".cu", ".cuh", ".md", ".txt", ".sh"}

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)\s*=\s*\"([^\"]+)\"", re.I)
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_CITATION = re.compile(r"docs/metrics\.md#([A-Za-z0-9_-]+)")


def markdown_files() -> list[Path]:
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    bench = ROOT / "bench" / "README.md"
    return pages + ([bench] if bench.exists() else [])


def _prose(text: str) -> str:
    """The text outside code blocks and code spans (where a link is only an example)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML such as <a id=...></a>
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8")
    found = set(_EXPLICIT_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        found.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return frozenset(found)


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (limit {README_MAX_LINES})"


@pytest.mark.parametrize("command", SETUP_COMMANDS)
def test_readme_keeps_the_setup_commands(command):
    assert command in README.read_text(encoding="utf-8"), f"README.md lost its set-up command: {command}"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no anchor #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_cited_metric_anchors_exist():
    metrics = ROOT / "docs" / "metrics.md"
    assert metrics.exists(), "docs/metrics.md (the definitions the code cites) is missing"
    known = anchors(metrics)
    missing = []
    files = [README] + [p for tree in CITING_TREES for p in sorted((ROOT / tree).rglob("*"))
                        if p.is_file() and p.suffix in CITING_SUFFIXES]
    for path in files:
        for anchor in _CITATION.findall(path.read_text(encoding="utf-8", errors="replace")):
            if anchor not in known:
                missing.append(f"{path.relative_to(ROOT)}: #{anchor}")
    assert not missing, f"citations of docs/metrics.md anchors that do not exist: {missing}"
