"""The progress bar keeps what a user reads from it (bar, count, ETA) in a narrow terminal."""

import io
import re

import pytest
from rich.console import Console

from protocols.progress import Bar


def render(bar: Bar, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(bar.p.get_renderable())
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 60])
def test_bar_count_and_eta_survive_a_narrow_terminal(width, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))  # what rich reads for the terminal's width
    bar = Bar("transfer 128 devices, 2 tiles (hardware-aware network)", 64, 10)
    bar.current("device (3,4) of tile 1, level 7 of 8, repeat 40 of 40")
    bar.advance(17)
    text = render(bar, width)
    assert len(text.splitlines()) == 1 and len(text.rstrip("\n")) <= width
    assert "11/64" in text
    assert "ETA" in text and re.search(r"\d+:\d\d:\d\d|-:--:--", text)
    assert "━" in text  # the bar itself


def test_wide_terminal_shows_everything(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    bar = Bar("tuning", 4, 0, unit="tunings")
    bar.current("device (0,1)")
    bar.advance(33)
    text = render(bar, 160)
    for part in ("tuning", "1/4", "tunings", "33 pulses", "device (0,1)", "ETA"):
        assert part in text
