"""How the summary a protocol stores with its run is shown: its metrics, by protocol name.

Each protocol module describes its summary keys in `SUMMARY` (``database.display.Metric``: a
label and the unit the number is stored in); `xbarlab run`, `xbarlab transfer` and `xbarlab db
show` print a stored summary through `database.display.summary_lines` with these. A protocol
this xbarlab does not know (a file from a newer one) is shown by its keys' names.
"""

from __future__ import annotations

from database.display import Metric


def summary_metrics(protocol: str) -> dict[str, Metric]:
    from protocols import transfer
    from protocols.campaigns import CAMPAIGNS

    if protocol in CAMPAIGNS:
        return dict(getattr(CAMPAIGNS[protocol][0], "SUMMARY", {}))
    if protocol == transfer.PROTOCOL:
        return dict(transfer.SUMMARY)
    return {}
