"""CLI sub-commands, one module per area; each exposes register(cli)."""

from __future__ import annotations

import click


def next_steps(*steps: str) -> None:
    """End a command with what usually comes next (commands a user can copy)."""
    click.echo("next: " + "; ".join(steps))


def first_line(doc: str | None) -> str:
    """The first sentence-line of a docstring (a module's, a campaign's) for help texts."""
    return (doc or "").strip().splitlines()[0].rstrip(".") if doc else ""
