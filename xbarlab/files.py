"""Writing the JSON files of the demo and its report (SI units; numpy scalars as floats)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, data) -> Path:
    """Write `data` to `path` in one step (a temporary file renamed over it), folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path
