"""A sweep's pair records: their key, their file, and the checks a stored record must pass before
it is reused instead of computed again.

A pair's record is reused only when it is provably the same computation. Its key holds both
models' names and content fingerprints, the metric and every option, and the library version;
the record's file name is the sha256 of that key. On reading, the key stored inside must equal
the one expected, the record must carry its checksum (sha256 of its canonical JSON) and pass
it, every field must follow the schema below, its layer grid must have the models' layer counts
(one more each with ``concat``), ``n`` must be the samples scored, and its ``score`` and
``best_layers`` must be what the layer search picks from its own grid. Anything else is
recomputed (never trusted, never a crash).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .files import checksum_ok, with_checksum, write_atomic

RECORD_FIELDS = ("key", "score", "best_layers", "layer_scores", "n", "chance", "calibration", "ci", "checksum")
CALIBRATION_FIELDS = ("observed", "p_value", "tau", "calibrated", "chance")
CI_FIELDS = ("estimate", "low", "high", "std_error")


def record_key(names: tuple[str, str], fingerprints: tuple[str, str], settings: dict, version: str) -> dict:
    """The key of one model pair's record."""
    return {"x": {"name": names[0], "fingerprint": fingerprints[0]},
            "y": {"name": names[1], "fingerprint": fingerprints[1]}, "settings": settings, "version": version}


def record_name(key: dict) -> str:
    """A pair record's file stem: the sha256 of its key (canonical JSON), so distinct keys never share a file."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record_path(out: Path, key: dict) -> Path:
    return Path(out) / "pairs" / f"{record_name(key)}.json"


def write_record(path: Path, record: dict) -> None:
    """Atomically, with its checksum."""
    body = with_checksum(jsonable(record))
    write_atomic(path, lambda tmp: Path(tmp).write_text(dumps(body)))


def read_record(path: Path, key: dict, layers: tuple[int, int] | None = None, n: int | None = None) -> dict | None:
    """A finished pair's record, or None (then it is recomputed) when missing, unreadable, of
    another key, without a matching checksum, or not what the schema says (``layers``: the two
    models' layer counts, ``concat`` not included; ``n``: the samples scored)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or not checksum_ok(record):
        return None
    try:
        return record if _well_formed(record, key, layers, n) else None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def _number(v, none: bool = True) -> bool:
    if v is None:
        return none
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _grid(m, shape) -> bool:
    """A matrix of numbers or None (NaN) of ``shape``."""
    return (isinstance(m, list) and len(m) == shape[0]
            and all(isinstance(row, list) and len(row) == shape[1] and all(map(_number, row)) for row in m))


def _well_formed(record: dict, key: dict, layers, n) -> bool:
    from .align import layer_search_result

    settings = key["settings"]
    if set(record) != set(RECORD_FIELDS):
        return False
    score, best = record["score"], record["best_layers"]
    if not _number(score, none=False) or not math.isfinite(score):
        return False
    if n is not None and (type(record["n"]) is not int or record["n"] != n):
        return False
    grid = record["layer_scores"]
    if not isinstance(grid, list) or not grid or not isinstance(grid[0], list) or not grid[0]:
        return False
    shape = (len(grid), len(grid[0]))
    concat = 1 if settings.get("concat") else 0
    if layers is not None and shape != (layers[0] + concat, layers[1] + concat):
        return False
    if not _grid(grid, shape):
        return False
    if best is not None and not (isinstance(best, list) and len(best) == 2 and all(type(v) is int for v in best)
                                 and all(-concat <= v < s - concat for v, s in zip(best, shape))):
        return False
    # score and best pair must be the layer search's own pick from the grid
    scores = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=np.float64)
    import torch

    picked = layer_search_result(torch.from_numpy(scores), settings["metric"], {}, concat=bool(concat))
    if picked.best != score or (None if picked.best_layers is None else list(picked.best_layers)) != best:
        return False
    if record["chance"] is not None and not _grid(record["chance"], shape):
        return False
    k, cal = settings.get("permutations"), record["calibration"]
    if k is None:
        if cal is not None:
            return False
    else:
        if not isinstance(cal, dict) or not _grid(cal["pair_p"], shape):
            return False
        for how in ("max", "mean"):
            null = cal[how]["null"]
            if not (isinstance(null, list) and len(null) == k and all(map(_number, null))):
                return False
            if not all(_number(cal[how][name]) for name in CALIBRATION_FIELDS if name != "chance"):
                return False
    ci = record["ci"]
    if settings.get("ci") is None:
        return ci is None
    if ci is None:
        return best is None  # a best pair has its interval
    return isinstance(ci, dict) and all(_number(ci.get(f), none=False) for f in ("low", "high"))


def mirrored(record: dict) -> dict:
    """The record of (y, x) from that of (x, y) for a symmetric metric: m(A, B[π]) = m(A[π⁻¹], B),
    so the null of the aggregates is the same; matrices are transposed, layers swapped."""
    out = dict(record, mirrored=True, layer_scores=transposed(record["layer_scores"]),
               chance=transposed(record.get("chance")))
    if record["best_layers"] is not None:
        out["best_layers"] = record["best_layers"][::-1]
    if record.get("calibration") is not None:
        out["calibration"] = dict(record["calibration"], pair_p=transposed(record["calibration"]["pair_p"]))
    return out


def transposed(m: list | None) -> list | None:
    return None if m is None else [list(row) for row in zip(*m)] if m else []


def matrix(t) -> list:
    """A float matrix as nested lists, NaN (a constant layer's score) as None (strict JSON)."""
    return jsonable(np.asarray(t, dtype=np.float64).tolist())


def jsonable(value):
    """Plain JSON values: non-finite floats become None (the files are strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(value, allow_nan=False, **kwargs)
