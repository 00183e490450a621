"""How the summary a protocol stores with its run is shown: its metrics, by protocol name.

Each protocol module describes its summary keys in `SUMMARY` (``database.display.Metric``: a
label and the unit the number is stored in); `xbarlab run`, `xbarlab transfer` and `xbarlab db
show` print a stored summary through `database.display.summary_lines` with these. A protocol
this xbarlab does not know (a file from a newer one) is shown by its keys' names; `xbarlab
infer` and `xbarlab repair` print theirs the same way. A protocol
whose summary is nested (retention: one entry per level) writes its own lines instead
(`summary_lines(summary)` in its module), with the same display functions.
"""

from __future__ import annotations

from database.display import Metric
from database.display import summary_lines as metric_lines


def _module(protocol: str):
    """The module of a protocol this xbarlab knows, or None."""
    from protocols import inference, repair, transfer
    from protocols.campaigns import CAMPAIGNS

    if protocol in CAMPAIGNS:
        return CAMPAIGNS[protocol][0]
    return {m.PROTOCOL: m for m in (transfer, inference, repair)}.get(protocol)


def summary_metrics(protocol: str) -> dict[str, Metric]:
    return dict(getattr(_module(protocol), "SUMMARY", {}))


def summary_lines(protocol: str, summary: dict) -> list[str]:
    """A stored summary as 'metric: value' lines in display units."""
    own = getattr(_module(protocol), "summary_lines", None)
    return own(summary) if own else metric_lines(summary, summary_metrics(protocol))
