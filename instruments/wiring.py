"""How the crossbar's lines reach the instruments, described once for the rigs (which 707B
channels to close) and for the simulated lab (which potential every line sees).

A rig thinks in roles (`drive`, `sense`, `v3`, ... for the PMU rig; `top`, `bottom`, `v3`,
`2v3` for the WGFMU rig). Each role is an instrument *terminal* (a named output: `pmu1`,
`smu2`, `wgfmu101`, `gnd`, or a divider tap such as `div_v3`), reached either

- through the 707B matrix: every crossbar line sits on one matrix column (slot, column), every
  role on one matrix row letter, and closing crosspoint (slot, letter, column) connects them; or
- through a probe card (no matrix): a line wired straight to a terminal (`fixed`).

Dividers are passive boards: a derived terminal at a fixed fraction of a source terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from instruments.k707b import channel_name

Line = tuple[str, int]  # ("row", i) or ("col", j)


@dataclass(frozen=True)
class Wiring:
    rows: tuple[tuple[int, int], ...] = ()     # 707B (slot, column) of word line i
    cols: tuple[tuple[int, int], ...] = ()     # 707B (slot, column) of bit line j
    letters: Mapping[str, str] = field(default_factory=dict)    # role -> matrix row letter
    terminals: Mapping[str, str] = field(default_factory=dict)  # role -> instrument terminal
    fixed: Mapping[Line, str] = field(default_factory=dict)     # line -> terminal (probe card)
    dividers: Mapping[str, tuple[str, float]] = field(default_factory=dict)  # tap -> (src, k)

    def __post_init__(self) -> None:
        # read-only copies: a wiring is built from module-level tables (the rig kinds') and
        # shared by rigs and the simulated lab; editing one in place would rewire every station
        for name in ("letters", "terminals", "fixed", "dividers"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def routed(self) -> bool:
        """True when a 707B matrix routes the lines (else a probe card wires them)."""
        return bool(self.rows)

    def name(self, line: tuple[int, int], role: str) -> str:
        """The 707B channel connecting matrix column `line` = (slot, column) to `role`."""
        slot, column = line
        return channel_name(slot, self.letters[role], column)

    @cached_property
    def matrix_lines(self) -> dict[Line, tuple[int, int]]:
        """Crossbar line -> its matrix (slot, column)."""
        out: dict[Line, tuple[int, int]] = {("row", i): tuple(x) for i, x in enumerate(self.rows)}
        out.update({("col", j): tuple(x) for j, x in enumerate(self.cols)})
        return out

    @cached_property
    def matrix_rows(self) -> dict[str, str]:
        """Matrix row letter -> the terminal cabled to it."""
        return {self.letters[r]: t for r, t in self.terminals.items() if r in self.letters}
