"""The output folder's store of finished points (``results.jsonl``) and what a point must return.

Only the sweep driver writes it (workers return results), one line per point, flushed and
fsync'ed before the next point is reported, so a killed sweep loses at most the points in
flight. A torn last line (the process died mid-write) is ignored on reading and the point
recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from training.errors import SweepError

log = logging.getLogger(__name__)

STORE_NAME = "results.jsonl"
FAILURES_NAME = "failures.jsonl"

#: metric columns every point function reports per kind (more are allowed and kept)
METRICS = (
    "share_correct_95",   # share of test points correct in >= 95 % of transfers
    "transfer_acc_mean",  # mean over transfers of the test accuracy
    "transfer_acc_p05",   # 5th percentile over transfers of the test accuracy
    "clean_acc",          # accuracy without any non-ideality
    "steps",              # optimiser steps actually used (convergence-aware training)
    "train_s",            # wall time of this network's training [s]
)


class ResultStore:
    """Append-only JSON-lines store of finished points (and of failures) in an output folder."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / STORE_NAME
        self.failures_path = self.dir / FAILURES_NAME

    def records(self) -> list[dict]:
        """All complete records, later ones winning for a repeated key."""
        if not self.path.exists():
            return []
        by_key: dict[str, dict] = {}
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d: torn or corrupt line ignored", self.path, lineno)
                    continue
                if isinstance(rec, dict) and "key" in rec and "kinds" in rec:
                    by_key[rec["key"]] = rec
        return list(by_key.values())

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.records()}

    def _append(self, path: Path, rec: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec, sort_keys=True, default=_json_default) + "\n"
        with open(path, "a+b") as f:
            # if a previous writer died mid-line, start on a fresh line so this record survives
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def append(self, rec: dict) -> None:
        self._append(self.path, rec)

    def append_failure(self, rec: dict) -> None:
        self._append(self.failures_path, rec)


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays from a point function
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_result(result: Any, kinds: Iterable[str]) -> dict[str, dict[str, float]]:
    """Validate a point function's return value; returns its ``kinds`` mapping."""
    if not isinstance(result, dict) or not isinstance(result.get("kinds"), dict):
        raise SweepError("point function must return {'kinds': {kind: {metric: value}}}")
    per_kind = result["kinds"]
    for kind in kinds:
        m = per_kind.get(kind)
        if not isinstance(m, dict):
            raise SweepError(f"point function returned no metrics for kind {kind!r}")
        missing = [name for name in METRICS if name not in m]
        if missing:
            raise SweepError(f"point function result for {kind!r} lacks {', '.join(missing)}")
    return per_kind


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` in one step (a temporary file renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
