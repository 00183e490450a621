"""`xbarlab station check STATION.yaml`: open the instruments and report what was found."""

from __future__ import annotations

import click


def _check(path: str) -> list[str]:
    from xbarlab.station import load_station

    st = load_station(path)
    c = st.cfg
    out = [f"station   {c.name}  ({'simulated' if c.simulated else 'real'} {c.rig} rig, "
           f"file {path})",
           f"crossbar  {c.crossbar}: {c.shape[0]} x {c.shape[1]}"]
    rig = st.open_rig()
    try:
        pmu, matrix = getattr(rig, "pmu", None), getattr(rig, "matrix", None)
        b1500, wg = getattr(rig, "b1500", None), getattr(rig, "wgfmu", None)
        if pmu is not None:
            out.append(f"4200A     {c.instruments.k4200.resource}: {pmu.idn()}")
            out.append(f"          options: {', '.join(pmu.options())}")
        if b1500 is not None:
            out.append(f"B1500A    {c.instruments.b1500.resource}: {b1500.idn()}")
            mods = b1500.modules()
            out.append("          modules (UNT?): " + ", ".join(
                f"slot {i + 1} {m}" for i, (m, _) in enumerate(mods) if m != "0"))
        if wg is not None:
            w = c.instruments.wgfmu
            wg.open(w.address)
            rig._open = True  # the rig reuses this session
            out.append(f"WGFMU     {w.address}: session opened, channels {w.top} (top), "
                       f"{w.bottom} (bottom, sense)")
        if matrix is not None:
            out.append(f"707B      {c.instruments.k707b.resource}: {matrix.idn()}")
            for slot in sorted({s for s, _ in c.matrix.rows + c.matrix.cols}):
                out.append(f"          slot {slot}: {matrix.card(slot)}")
            closed = matrix.closed_channels()
            out.append(f"          closed now: {', '.join(closed) if closed else 'none'}")
        if c.matrix is not None and matrix is not None:
            t = c.matrix.terminals
            out.append("wiring    matrix rows: " + ", ".join(f"{k}={v}" for k, v in t.items()))
            out.append("          word lines on " + " ".join(f"{s}:{col:02d}"
                                                         for s, col in c.matrix.rows))
            out.append("          bit lines on  " + " ".join(f"{s}:{col:02d}"
                                                         for s, col in c.matrix.cols))
        lim = c.limits
        out.append(f"limits    SET <= +{lim.v_set_max:g} V, RESET >= -{lim.v_reset_max:g} V, "
                   f"read/bias <= {lim.v_read_max:g} V, width {lim.width_min:g}..{lim.width_max:g}"
                   f" s, compliance {lim.i_compliance:g} A")
        out.append(f"read      {c.read.volts:g} V for {c.read.seconds:g} s, saturates at "
                   f"{c.read.ceiling_S * 1e6:g} uS; pulse {c.pulse.width:g} s, "
                   f"edges {c.pulse.edge:g} s")
        rig.safe_state()
        out.append("state     outputs 0 V, relays open: OK")
    finally:
        rig.close()
    return out


def register(cli: click.Group) -> None:
    group = cli.commands["station"]

    @group.command("check")
    @click.argument("station")
    def check(station: str) -> None:
        """Open the station's instruments and print identities, modules, the 707B card,
        limits and the crossbar shape."""
        click.echo("\n".join(_check(station)))
