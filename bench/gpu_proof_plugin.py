"""pytest plugin of bench/gpu_proof.sh: one JSON line per test outcome, appended as it happens.

pytest writes its junit XML only when the session ends; a run stopped by the proof's time box
(or a crashed GPU) would then leave no counts. These lines survive any stop. Loaded with
``-p gpu_proof_plugin`` (bench/ on PYTHONPATH); writes to ``$PF_PROOF_TESTS_JSONL``. Under
pytest-xdist the controller sees every worker's reports, so only it writes.
"""

from __future__ import annotations

import json
import os


def _outcome(report) -> str | None:
    """passed / failed / skipped / error / xfailed / xpassed, or None for a phase not counted."""
    if hasattr(report, "wasxfail"):
        return "xpassed" if report.passed else "xfailed" if report.when == "call" or report.skipped else None
    if report.when == "call":
        return report.outcome
    if report.failed:  # setup or teardown
        return "error"
    if report.skipped and report.when == "setup":
        return "skipped"
    return None


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("PF_PROOF_TESTS_JSONL")
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    outcome = _outcome(report)
    if outcome is None:
        return
    line = {"nodeid": report.nodeid, "when": report.when, "outcome": outcome,
            "duration_s": round(report.duration, 4)}
    if outcome == "skipped" and isinstance(report.longrepr, tuple):
        line["reason"] = str(report.longrepr[2])[:300]
    elif outcome in ("failed", "error", "xpassed"):
        line["longrepr"] = str(report.longrepr)[-2000:]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
