"""`xbarlab tune` and `xbarlab run <campaign>`: write-verify and the characterisation campaigns."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from xbarlab.commands import first_line, next_steps
from xbarlab.errors import XbarlabError
from xbarlab.yamlfiles import read_mapping, validate

log = logging.getLogger("xbarlab.campaign")


def _parse_device(text: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected ROW,COL, got {text!r}") from None
    return r, c


def _load_config(cls, path: str | None, overrides: dict):
    raw = read_mapping(path, "campaign config", XbarlabError) if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate(cls, raw, "campaign config", XbarlabError)


def _station(path: str):
    from xbarlab.station import load_station

    return load_station(path)


def log_path(out: Path) -> Path:
    """The campaign log next to the run file: `<file>.log` (never the run file itself)."""
    return out.with_name(out.name + ".log")


def _log_to_file(path: Path) -> logging.Handler:
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("xbarlab")
    logger.addHandler(h)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return h


def summary_text(protocol: str, summary: dict) -> str:
    """A stored summary as indented 'metric: value' lines in display units."""
    from protocols.summaries import summary_lines

    return "\n".join("  " + ln for ln in summary_lines(protocol, summary))


def _next(out: Path) -> None:
    next_steps(f"`xbarlab plot {out}` (its figures)", f"`xbarlab db show {out}` (tables, units)",
               f"`xbarlab db build {out} ... -o db.h5` (a non-ideality database)")


def register(cli: click.Group) -> None:
    run_group = cli.commands["run"]

    @cli.command("tune")
    @click.option("--station", "station_path", required=True, type=click.Path(dir_okay=False),
                  help="station file (YAML)")
    @click.option("--device", required=True, help="ROW,COL (0-based)")
    @click.option("--target", required=True, type=float, help="target conductance [S]")
    @click.option("--crossbar", default=None, help="crossbar on the chip (sim stations)")
    @click.option("--algorithm", type=click.Choice(["alibart", "fast"]), default=None,
                  help="write-verify algorithm [default: the config's, else fast]")
    @click.option("--tolerance", type=float, default=None, help="band, fraction of target")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="TuneConfig YAML")
    @click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
    def tune_cmd(station_path, device, target, crossbar, algorithm, tolerance, config_path,
                 as_json):
        """Write-verify one device to a target conductance."""
        from database.display import duration, pct, us
        from protocols.tuning import TuneConfig, check_target, check_tune, tune

        row, col = _parse_device(device)
        cfg = _load_config(TuneConfig, config_path, {"algorithm": algorithm,
                                                     "tolerance": tolerance})
        st = _station(station_path)
        check_tune(cfg, st.limits, st.read_settings)        # before any instrument is opened
        check_target(target, cfg.tolerance, st.read_settings)
        with st.open_rig(crossbar) as rig:
            res = tune(rig, row, col, target, cfg)
        out = {"device": [row, col], "target_S": target, "converged": res.converged,
               "pulses": res.pulses, "set_pulses": res.set_pulses,
               "reset_pulses": res.reset_pulses, "g_initial_S": res.g_initial,
               "g_final_S": res.g_final, "error_pct": 100 * res.error_rel,
               "instrument_time_s": res.t_end - res.t_start}
        if as_json:
            click.echo(json.dumps(out))
            return
        state = "converged" if res.converged else "FAILED"
        click.echo(f"({row},{col}) {state} after {res.pulses} pulses "
                   f"({res.set_pulses} SET, {res.reset_pulses} RESET): "
                   f"{us(res.g_initial, 2)} -> {us(res.g_final, 2)} "
                   f"(target {us(target, 2)}, error {pct(res.error_rel, 3, signed=True)}), "
                   f"instrument time {duration(res.t_end - res.t_start)}")
        if not res.converged:
            raise SystemExit(1)

    def print_config(ctx, _param, value):
        if not value or ctx.resilient_parsing:
            return
        from protocols.campaigns import CAMPAIGNS
        from xbarlab.yamlfiles import config_yaml

        name = ctx.command.name
        click.echo(config_yaml(CAMPAIGNS[name][1], f"{name} campaign: the default config, "
                               "every field with its unit and range.\nEdit, then: xbarlab run "
                               f"{name} --station STATION --config THIS.yaml -o FILE.h5"), nl=False)
        ctx.exit()

    def make(name: str):
        from protocols.campaigns import CAMPAIGNS

        @run_group.command(name, short_help=first_line(CAMPAIGNS[name][0].__doc__))
        @click.option("--print-config", is_flag=True, is_eager=True, expose_value=False,
                      callback=print_config,
                      help="print the default config (YAML, commented) and exit")
        @click.option("--station", "station_path", required=True,
                      type=click.Path(dir_okay=False), help="station file (YAML)")
        @click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
                      help="raw-run HDF5 file")
        @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                      help="campaign config YAML (fields of the campaign's config)")
        @click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                      help="campaign seed (random targets)")
        @click.option("--crossbar", default=None, help="crossbar on the chip (sim stations)")
        @click.option("--device", "devices", multiple=True, help="ROW,COL; repeat; default all")
        @click.option("--resume", is_flag=True,
                      help="continue the file's unfinished run (same settings)")
        @click.option("--overwrite", is_flag=True, help="replace an existing file")
        @click.option("--no-progress", is_flag=True, help="no progress bar")
        @click.option("--watch", is_flag=True, help="serve a live view of the run on this PC "
                      "while it runs (as `xbarlab watch`; needs the [live] extra)")
        def cmd(station_path, out, config_path, seed, crossbar, devices, resume, overwrite,
                no_progress, watch):
            from database.runs import complete_run
            from protocols.campaigns import CAMPAIGNS
            from protocols.campaigns.common import check_config
            from xbarlab.commands.view import watching

            module, cls = CAMPAIGNS[name]
            over = {"devices": [_parse_device(d) for d in devices] if devices else None}
            # everything that can be wrong with the input is found before a file or folder is
            # created or an instrument opened
            cfg = _load_config(cls, config_path, over)
            st = _station(station_path)
            check_config(cfg, st.limits, st.read_settings)
            out_p = Path(out)
            station_desc = st.describe(crossbar)
            done = None if overwrite else complete_run(
                out_p, protocol=name, config=cfg.model_dump(mode="json"), station=station_desc,
                seed=seed)
            if done is not None:
                click.echo(f"{name}: {out_p} ({done.name}) is already complete, "
                           f"{done.units_done} units: nothing to do (--overwrite to measure "
                           "again)")
                click.echo(summary_text(name, done.summary))
                _next(out_p)
                return
            if out_p.exists() and not (resume or overwrite):
                click.echo(f"{out_p} exists: continuing its unfinished run if the settings match",
                           err=True)
            out_p.parent.mkdir(parents=True, exist_ok=True)
            handler = _log_to_file(log_path(out_p))
            try:
                log.info("%s on %s -> %s (seed %s)", name, st.name, out_p, seed)
                with watching(out_p, watch), st.open_rig(crossbar) as rig:
                    res = module.run(rig, cfg, out_p, seed=seed, station=station_desc,
                                     resume=resume, overwrite=overwrite,
                                     progress=not no_progress)
            finally:
                logging.getLogger("xbarlab").removeHandler(handler)
                handler.close()
            if res.resumed_from:
                click.echo(f"resumed after {res.resumed_from} finished {res.unit}")
            click.echo(f"{name}: {res.path} ({res.run})")
            click.echo(summary_text(name, res.summary))
            _next(out_p)

        cmd.__doc__ = (f"{CAMPAIGNS[name][0].__doc__.strip()}\n\nResumable: re-run the same "
                       "command to continue an interrupted run. `--print-config` shows every "
                       "config field with its default, unit and range.")
        return cmd

    for name in ("tuning-untuning", "disturbance", "stuck", "iv", "iv-pulsed", "bringup",
                 "forming", "retention"):
        make(name)
