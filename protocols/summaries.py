"""How the summary a protocol stores with its run is shown: its metrics, by protocol name.

Each protocol module describes its summary keys in `SUMMARY` (``database.display.Metric``: a
label and the unit the number is stored in); `xbarlab run`, `xbarlab transfer` and `xbarlab db
show` print a stored summary through `database.display.summary_lines` with these. A protocol
this xbarlab does not know (a file from a newer one) is shown by its keys' names. A protocol
whose summary is nested (retention: one entry per level) writes its own lines instead
(`summary_lines(summary)` in its module), with the same display functions.
"""

from __future__ import annotations

from database.display import Metric
from database.display import summary_lines as metric_lines


def summary_metrics(protocol: str) -> dict[str, Metric]:
    from protocols import transfer
    from protocols.campaigns import CAMPAIGNS

    if protocol in CAMPAIGNS:
        return dict(getattr(CAMPAIGNS[protocol][0], "SUMMARY", {}))
    if protocol == transfer.PROTOCOL:
        return dict(transfer.SUMMARY)
    return {}


def summary_lines(protocol: str, summary: dict) -> list[str]:
    """A stored summary as 'metric: value' lines in display units."""
    from protocols.campaigns import CAMPAIGNS

    own = getattr(CAMPAIGNS[protocol][0], "summary_lines", None) if protocol in CAMPAIGNS else None
    return own(summary) if own else metric_lines(summary, summary_metrics(protocol))
