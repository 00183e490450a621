"""Every shell command shown in the docs runs, so the docs cannot rot.

A fenced block tagged ``console`` in README.md or docs/*.md is a session: lines starting with
``$ `` are commands, run in order in one scratch directory per file (later commands may use what
earlier ones wrote). ``xbarlab`` is run from this checkout's environment. Blocks tagged anything
else (``text``, ``yaml``...) are illustrations and are not run.

Lines after a command, up to the next ``$ `` line or the end of the block, are its output as the
docs quote it: the test compares them with what the command prints (stdout, trailing spaces
ignored). ``XBARLAB_DOCS_REGEN=1 pytest tests/docs`` writes the outputs the commands print now
into the docs instead, so a changed output is regenerated, never edited by hand.
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


def _parse(block: str) -> list[tuple[str, list[str]]]:
    """[(command, quoted output lines)] of one console block."""
    out: list[tuple[str, list[str]]] = []
    for ln in block.splitlines():
        if ln.startswith("$ "):
            out.append((ln[2:].strip(), []))
        elif out:
            out[-1][1].append(ln.rstrip())
    return out


def sessions() -> list[tuple[Path, list[tuple[str, list[str]]]]]:
    out = []
    for path in DOCS:
        if not path.exists():
            continue
        cmds = [c for block in FENCE.findall(path.read_text()) for c in _parse(block)]
        if cmds:
            out.append((path, cmds))
    return out


def _regenerate(path: Path, printed: dict[str, str]) -> None:
    """Write the outputs the commands printed into `path`'s console blocks."""
    def block(m: re.Match) -> str:
        body = []
        for cmd, quoted in _parse(m.group(1)):
            body.append(f"$ {cmd}")
            if quoted and cmd in printed:
                body += [ln.rstrip() for ln in printed[cmd].rstrip("\n").splitlines()]
            else:
                body += quoted
        return m.group(0).replace(m.group(1), "\n".join(body) + "\n")

    path.write_text(FENCE.sub(block, path.read_text()))


def _prepare(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    if argv[0] == "xbarlab":
        return [sys.executable, "-m", "xbarlab", *argv[1:]]
    if argv[0] in ("ls", "cat", "test", "head", "python"):
        return [sys.executable if argv[0] == "python" else shutil.which(argv[0]) or argv[0], *argv[1:]]
    raise AssertionError(f"docs command not allowed in a docs test: {cmd!r}")


@pytest.mark.slow
@pytest.mark.parametrize("path,cmds", sessions(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_docs_session_runs(path: Path, cmds: list[tuple[str, list[str]]], tmp_path: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", XBARLAB_STATIONS=str(ROOT / "xbarlab" / "stations"),
               COLUMNS="80")
    printed: dict[str, str] = {}
    for cmd, _quoted in cmds:
        if cmd.startswith("make "):
            continue  # the Makefile targets are what CI itself runs
        res = subprocess.run(_prepare(cmd), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"{path.name}: `{cmd}` failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        printed[cmd] = res.stdout
    if os.environ.get("XBARLAB_DOCS_REGEN"):
        _regenerate(path, printed)
        return
    for cmd, quoted in cmds:
        if quoted and cmd in printed:
            got = [ln.rstrip() for ln in printed[cmd].rstrip("\n").splitlines()]
            assert got == quoted, (f"{path.name}: the output of `{cmd}` changed; regenerate "
                                   f"with XBARLAB_DOCS_REGEN=1:\n" + "\n".join(got))
