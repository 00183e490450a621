"""Every shell command shown in the docs runs, so the docs cannot rot.

A fenced block tagged ``console`` in README.md or docs/*.md is a session: lines starting with
``$ `` are commands, run in order in one scratch directory per file (later commands may use what
earlier ones wrote). ``xbarlab`` is run from this checkout's environment. Blocks tagged anything
else (``text``, ``yaml``...) are illustrations and are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```console[^\n]*\n(.*?)^```", re.S | re.M)


def sessions() -> list[tuple[Path, list[str]]]:
    out = []
    for path in DOCS:
        if not path.exists():
            continue
        cmds = []
        for block in FENCE.findall(path.read_text()):
            cmds += [ln[2:].strip() for ln in block.splitlines() if ln.startswith("$ ")]
        if cmds:
            out.append((path, cmds))
    return out


def _prepare(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    if argv[0] == "xbarlab":
        return [sys.executable, "-m", "xbarlab", *argv[1:]]
    if argv[0] in ("ls", "cat", "test", "head", "python"):
        return [sys.executable if argv[0] == "python" else shutil.which(argv[0]) or argv[0], *argv[1:]]
    raise AssertionError(f"docs command not allowed in a docs test: {cmd!r}")


@pytest.mark.slow
@pytest.mark.parametrize("path,cmds", sessions(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_docs_session_runs(path: Path, cmds: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", XBARLAB_STATIONS=str(ROOT / "xbarlab" / "stations"))
    for cmd in cmds:
        if cmd.startswith("make "):
            continue  # the Makefile targets are what CI itself runs
        res = subprocess.run(_prepare(cmd), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"{path.name}: `{cmd}` failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
