"""`xbarlab infer` and `xbarlab repair`: the network computing on its crossbars, and repaired.

The network comes from a transfer or repair run (``--from``: its plan and crossbars, and on a
simulated station the chip as that run left it), a conductance plan (``--plan``) or a trained
model (``--model``, needs torch), the last two for a real station whose chip keeps its state.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from database.display import count, pct
from xbarlab.commands import next_steps
from xbarlab.errors import XbarlabError


def _network(from_run, plan_path, model_path, db_path, member, crossbars, st):
    """(plan, crossbar names, the programming run or None)."""
    from xbarlab.chip_loop import programmed
    from xbarlab.crossbars import pick_crossbars

    if sum(bool(v) for v in (from_run, plan_path, model_path)) != 1:
        raise click.UsageError("give exactly one of --from, --plan and --model")
    if from_run:
        got = programmed(from_run, st)
        if crossbars and list(crossbars) != got.crossbars:
            raise click.UsageError(f"{from_run} programmed {', '.join(got.crossbars)}; "
                                   "leave out --crossbar")
        return got.plan, got.crossbars, got
    if model_path:
        from protocols.tuning import TuneConfig
        from xbarlab.commands.transfer import _plan_from_model

        # mapped for this station as `xbarlab transfer --model` maps it
        plan = _plan_from_model(model_path, db_path, member, st.read_settings,
                                TuneConfig().tolerance)[0]
    else:
        from protocols.plan import ConductancePlan

        plan = ConductancePlan.load(plan_path)
    if st.chip is not None:
        click.echo("note: a simulated station's chip starts fresh (unprogrammed); give --from "
                   "with the transfer run to use the chip it programmed", err=True)
    return plan, pick_crossbars(st, plan.n_tiles, tuple(crossbars)), None


def _common(f):
    for opt in reversed([
        click.option("--from", "from_run", type=click.Path(exists=True, dir_okay=False),
                     help="transfer or repair run (HDF5) that programmed the chip"),
        click.option("--plan", "plan_path", type=click.Path(exists=True, dir_okay=False),
                     help="conductance plan (.json) of the programmed network"),
        click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
                     help="trained checkpoint (.pt; needs torch)"),
        click.option("--db", "db_path", default=None,
                     help="with --model: the DB it was trained with (its G range)"),
        click.option("--member", default=0, show_default=True, type=click.IntRange(0),
                     help="with --model: network of an ensemble checkpoint"),
        click.option("--station", "station_path", required=True,
                     type=click.Path(dir_okay=False), help="station file (YAML)"),
        click.option("--crossbar", "crossbars", multiple=True,
                     help="crossbar of each tile, in tile order (with --plan / --model)"),
        click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
                     help="output HDF5 file"),
        click.option("--v-in", type=float, default=None,
                     help="full-scale input level [V] (non-disturbing read range; default: "
                     "InferConfig's, 0.1 V)"),
        click.option("--resume", is_flag=True, help="continue the file's unfinished run"),
        click.option("--overwrite", is_flag=True, help="replace an existing file"),
        click.option("--no-progress", is_flag=True),
    ]):
        f = opt(f)
    return f


def _summary(protocol: str, summary: dict) -> str:
    from protocols.summaries import summary_lines

    return "\n".join("  " + ln for ln in summary_lines(protocol, summary))


def parse_budget(text: str, transfer_pulses: int | None) -> int:
    """'500' pulses, or '20%' of the transfer's pulses."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(%?)\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r}: give a number of pulses (500) or a share of the "
                                 "transfer's pulses (20%)", param_hint="--budget")
    value, pct = float(m.group(1)), m.group(2) == "%"
    if not pct:
        if value != int(value):
            raise click.BadParameter("a number of pulses is a whole number", param_hint="--budget")
        return int(value)
    if transfer_pulses is None:
        raise click.BadParameter("a relative budget needs the transfer: give --from with the "
                                 "transfer run", param_hint="--budget")
    return int(value / 100 * transfer_pulses)


def register(cli: click.Group) -> None:
    @cli.command("infer")
    @_common
    @click.option("--batch", type=click.IntRange(1), default=50, show_default=True,
                  help="test points per unit of work (commit)")
    @click.option("--explain", is_flag=True, help="simulated station: also measure with line "
                  "resistance, device non-linearity and read noise switched off, and say how "
                  "much of the analog error each causes")
    def infer_cmd(from_run, plan_path, model_path, db_path, member, station_path, crossbars,
                  out, v_in, resume, overwrite, no_progress, batch, explain):
        """Run the test set through the programmed network on its crossbars: inputs as row
        voltages, outputs from column currents; beside the read-back estimate."""
        from protocols.inference import InferConfig, run
        from xbarlab.chip_loop import calibration_of, explain_gap, test_sets
        from xbarlab.station import load_station

        st = load_station(station_path)
        plan, names, prog = _network(from_run, plan_path, model_path, db_path, member,
                                     crossbars, st)
        sets = test_sets(plan)
        try:
            cfg = InferConfig(batch=batch, **({} if v_in is None else {"v_in": v_in}))
        except ValueError as e:
            raise XbarlabError(f"--v-in: {e.errors()[0]['msg']}") from None
        if explain and st.chip is None:
            raise click.UsageError("--explain needs a simulated station")
        open_rig = st.tile_opener()
        extra = {"programmed_by": None if prog is None else str(prog.path)}
        cal = None if prog is None else calibration_of(prog)
        if cal is not None:
            click.echo(f"note: the repair's periphery calibration (gain and offset per output) is "
                       f"applied to the measured pre-activations ({from_run})", err=True)
        res = run(plan, open_rig, names, Path(out), sets["test"], config=cfg,
                  station=st.describe(names), resume=resume, overwrite=overwrite,
                  progress=not no_progress, extra_config=extra, calibration=cal)
        if res.resumed_from:
            click.echo(f"resumed after {res.resumed_from} finished units")
        click.echo(f"inference: {res.path} ({res.run}) on {', '.join(names)}")
        click.echo(_summary("inference", res.summary))
        if res.summary["row_groups"] > 1:
            click.echo(f"  (fewer sources than rows: up to {res.summary['row_groups']} row groups "
                       "per tile, their currents added: exact only for linear devices or ideal "
                       "lines)")
        if res.summary.get("col_groups", 1) > 1:
            click.echo(f"  (fewer meters than columns: up to {res.summary['col_groups']} column "
                       "groups per tile, each applying every input again)")
        if explain:
            from simulator.config import LatencyConfig

            gap = explain_gap(plan, st.chip, names, *sets["test"], cfg,
                              latency=LatencyConfig(**st.cfg.sim.latency), limits=st.limits)
            click.echo("  why analog differs (simulated, measured again with effects off): "
                       + ", ".join(f"{k} {pct(v)}" for k, v in gap["accuracy"].items()))
            click.echo(f"  of the analog outputs' mean squared deviation from the ideal array: "
                       f"{pct(gap['share_lines'], 0)} line resistance, "
                       f"{pct(gap['share_nonlinearity'], 0)} device non-linearity")
        src = from_run or "TRANSFER.h5"
        next_steps(f"`xbarlab repair --from {src} --station {station_path} -o repair.h5 "
                   "--budget 20%` (correct the chip)", f"`xbarlab db show {res.path}` (every "
                   "number of the run)")

    @cli.command("repair")
    @_common
    @click.option("--budget", required=True,
                  help="pulse budget: a number (500) or a share of the transfer's pulses (20%)")
    @click.option("--max-rounds", type=click.IntRange(1, 1000), default=None,
                  help="rounds of corrections at most  [default: RepairConfig's, 30]")
    @click.option("--algorithm", type=click.Choice(["alibart", "fast"]), default="fast",
                  show_default=True, help="write-verify algorithm of the corrections")
    @click.option("--calibrate", type=click.Choice(["off", "offset", "affine"]), default=None,
                  help="the periphery's digital calibration per output (no pulse): an offset, "
                  "or a gain and an offset  [default: RepairConfig's, affine]")
    def repair_cmd(from_run, plan_path, model_path, db_path, member, station_path, crossbars,
                   out, v_in, resume, overwrite, no_progress, budget, max_rounds,
                   algorithm, calibrate):
        """Measure the programmed chip and correct it under a pulse budget: re-tune the devices
        whose error costs most, compensate stuck devices, re-fit layers on measured
        activations; every decision into HDF5."""
        from protocols.inference import InferConfig
        from protocols.repair import RepairConfig, RepairData, run
        from xbarlab.chip_loop import prior_of, test_sets
        from xbarlab.station import load_station

        st = load_station(station_path)
        plan, names, prog = _network(from_run, plan_path, model_path, db_path, member,
                                     crossbars, st)
        pr = prior_of(prog) if prog is not None else None
        stuck, prior = (None, None) if pr is None else (pr.stuck, pr.tunings)
        transfer_pulses = None if pr is None else pr.transfer_pulses
        n_budget = parse_budget(budget, transfer_pulses)
        sets = test_sets(plan)
        try:
            # the measured defaults (docs/chip-in-the-loop.md): a capped tuning per correction
            base = RepairConfig()
            cfg = RepairConfig(infer=InferConfig(**({} if v_in is None else {"v_in": v_in})),
                               max_rounds=max_rounds or base.max_rounds,
                               tune=base.tune.model_copy(update={"algorithm": algorithm}),
                               calibrate=calibrate or base.calibrate)
        except ValueError as e:
            raise XbarlabError(f"--v-in: {e.errors()[0]['msg']}") from None
        open_rig = st.tile_opener()
        extra = {"programmed_by": None if prog is None else str(prog.path),
                 "transfer_pulses": transfer_pulses}
        res = run(plan, open_rig, names, Path(out), RepairData(**sets), budget=n_budget,
                  read=st.read_settings, config=cfg, stuck=stuck, prior_tunings=prior,
                  station=st.describe(names), resume=resume, overwrite=overwrite,
                  progress=not no_progress, extra_config=extra)
        if res.resumed_from:
            click.echo(f"resumed after {res.resumed_from} finished units")
        s = res.summary
        click.echo(f"repair: {res.path} ({res.run}) on {', '.join(names)}")
        click.echo(_summary("repair", s))
        if transfer_pulses:
            click.echo(f"  pulses relative to the transfer's {count(transfer_pulses)}: "
                       f"{pct(s['pulses'] / transfer_pulses)}")
        next_steps(f"`xbarlab infer --from {out} --station {station_path} -o after.h5` "
                   "(measure the repaired chip)", f"`xbarlab db show {out}` (every decision)")
