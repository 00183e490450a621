"""Emulated Keithley 707B (TSP subset) with closed-set state and an error queue.

A message is a TSP chunk: it is parsed whole first; an unknown statement is a syntax error
(-285) and, as on the instrument, nothing of that chunk runs and nothing is printed (the
caller waiting for a reply times out). Known statements: `channel.close/open/exclusiveclose`,
`print(channel.getclose(...))`, `print(errorqueue.count)`, `print(errorqueue.next())`,
`print(slot[n].idn)`, `errorqueue.clear()`, `reset()`, `waitcomplete()`, `*IDN?`, `*RST`,
`*CLS`, `*OPC?`. A failed channel command closes nothing. Error codes other than -285 are this
emulator's choice (the manual's list was not available): 1115 invalid channel list.
"""

from __future__ import annotations

import re

_STMT = re.compile(
    r'\s*(?:'
    r'channel\.(?P<op>exclusiveclose|close|open)\("(?P<list>[^"]*)"\)'
    r'|print\(channel\.getclose\("(?P<gl>[^"]*)"\)\)'
    r'|print\(errorqueue\.(?P<eq>count|next\(\))\)'
    r'|print\(slot\[(?P<slot>\d)\]\.idn\)'
    r'|(?P<fn>errorqueue\.clear|reset|waitcomplete)\(\)'
    r'|channel\.connectrule\s*=\s*channel\.(?P<rule>BREAK_BEFORE_MAKE|MAKE_BEFORE_BREAK|OFF)'
    r')\s*')
_CH = re.compile(r"^([1-6])([A-H])(\d\d)$")


def _key(name: str):
    return int(name[0]), name[1], int(name[2:])


class K707BEmulator:
    idn = "Keithley Instruments Inc., Model 707B, 04089762, 1.7.0a"

    def __init__(self, world=None, cards: dict[int, str] | None = None, latency=None):
        self.world = world
        self.cards = cards or {1: "7174A,8x12 Low Current Matrix Card"}
        self.closed: set[str] = set()       # what the instrument believes is closed
        self.stuck: set[str] = set()        # relays that do not close (fault injection)
        self.errors: list[tuple[int, str]] = []
        self.connectrule = "BREAK_BEFORE_MAKE"
        self.latency = latency if latency is not None else getattr(world, "latency", None)
        self.selections = 0
        self._parsed: dict[tuple[str, bool], frozenset[str] | None] = {}
        self._chunks: dict[str, list[dict]] = {}
        if world is not None:
            world.closed_channels = self.physically_closed

    def physically_closed(self) -> frozenset[str]:
        return frozenset(self.closed - self.stuck)

    # -- helpers -------------------------------------------------------------------------------
    def _expand(self, spec: str, allow_slots: bool) -> set[str] | None:
        # a protocol sends the same few channel lists over and over: parse each once
        key = (spec, allow_slots)
        hit = self._parsed.get(key, False)
        if hit is False:
            hit = self._parse(spec, allow_slots)
            hit = None if hit is None else frozenset(hit)
            if len(self._parsed) > 1024:
                self._parsed.clear()
            self._parsed[key] = hit
        return None if hit is None else set(hit)

    def _parse(self, spec: str, allow_slots: bool) -> set[str] | None:
        out: set[str] = set()
        for item in (x.strip() for x in spec.split(",")):
            if not item:
                continue
            low = item.lower()
            if low == "allslots" or low.startswith("slot"):
                if not allow_slots:
                    return None
                slots = self.cards if low == "allslots" else [int(low[4:])] \
                    if low[4:].isdigit() else []
                for s in slots:
                    if s not in self.cards:
                        return None
                    out |= {f"{s}{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)}
                continue
            if ":" in item:
                a, b = item.upper().split(":", 1)
                ma, mb = _CH.match(a), _CH.match(b)
                if not (ma and mb) or ma.group(1) != mb.group(1):
                    return None
                for r in range(ord(ma.group(2)), ord(mb.group(2)) + 1):
                    for c in range(int(ma.group(3)), int(mb.group(3)) + 1):
                        out.add(f"{ma.group(1)}{chr(r)}{c:02d}")
                continue
            m = _CH.match(item.upper())
            if not m or int(m.group(1)) not in self.cards or not 1 <= int(m.group(3)) <= 12:
                return None
            out.add(item.upper())
        return out

    def _set_closed(self, new: set[str]) -> None:
        if new != self.closed:
            self.closed = new
            self.selections += 1
            if self.world is not None:
                self.world.settle_dc()
                self.world.routing_changed()
                self.world.clock.advance(self.world.latency.relay_switch, "relay")

    # -- message handling ----------------------------------------------------------------------
    def handle(self, msg: str) -> str | None:
        msg = msg.strip()
        up = msg.upper()
        if up == "*IDN?":
            return self.idn
        if up == "*RST":
            self._set_closed(set())
            return None
        if up == "*CLS":
            self.errors.clear()
            return None
        if up == "*OPC?":
            return "1"
        stmts = self._chunks.get(msg)
        if stmts is None:
            stmts = self._parse_chunk(msg)
            if isinstance(stmts, str):
                self.errors.append((-285, stmts))
                return None
            if len(self._chunks) >= 1024:
                self._chunks.clear()
            self._chunks[msg] = stmts   # a rig sends the same few chunks over and over
        out: list[str] = []
        for g in stmts:
            self._run(g, out)
        return "\n".join(out) if out else None

    @staticmethod
    def _parse_chunk(msg: str) -> list[dict] | str:
        """The statements of a TSP chunk (their regex groups), or the syntax error text."""
        stmts = []
        pos = 0
        while pos < len(msg):
            m = _STMT.match(msg, pos)
            if not m or m.end() == pos:
                near = msg[pos:pos + 20]
                return f"TSP Syntax error at line 1: unexpected symbol near '{near}'"
            stmts.append(m.groupdict())
            pos = m.end()
        return stmts

    def _run(self, g: dict, out: list[str]) -> None:
        if g["op"]:
            op = g["op"]
            spec = g["list"]
            chans = self._expand(spec, allow_slots=(op != "close"))
            if chans is None:
                self.errors.append((1115, f"Parameter error invalid channel list: {spec}"))
                return
            if op == "close":
                self._set_closed(self.closed | chans)
            elif op == "open":
                if not spec.strip():
                    self.errors.append((1115, "Parameter error invalid channel list: empty"))
                    return
                self._set_closed(self.closed - chans)
            else:
                self._set_closed(set(chans))
        elif g["gl"] is not None:
            chans = self._expand(g["gl"], allow_slots=True)
            if chans is None:
                self.errors.append((1115, f"Parameter error invalid channel list: {g['gl']}"))
                out.append("nil")
                return
            hit = sorted(self.closed & chans, key=_key)
            out.append(";".join(hit) if hit else "nil")
        elif g["eq"] == "count":
            out.append(f"{len(self.errors):.9e}")
        elif g["eq"]:
            if self.errors:
                code, text = self.errors.pop(0)
                out.append(f"{code}\t{text}\t2\t0")
            else:
                out.append("0\tQueue Is Empty\t0\t0")
        elif g["slot"]:
            s = int(g["slot"])
            out.append(self.cards.get(s, "Empty Slot"))
        elif g["fn"] == "errorqueue.clear":
            self.errors.clear()
        elif g["fn"] == "reset":
            self._set_closed(set())
            self.connectrule = "BREAK_BEFORE_MAKE"
        elif g["rule"]:
            self.connectrule = g["rule"]
        # waitcomplete(): relays settle within the relay_switch charged on the change
