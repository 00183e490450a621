"""Soak test: a long randomized campaign on the simulated PMU station with instrument faults
injected at a configurable rate, supervised the way a lab would run it (fault -> the rig makes
itself safe -> re-run the same command, which resumes).

    python bench/soak.py                          # defaults: 16 devices, rate 5e-4
    python bench/soak.py --devices 64 --rate 1e-3 --duration 600
    python bench/soak.py --sigint 30              # Ctrl-C at random moments instead (see
                                                  # sigint_soak)
    python bench/soak.py --section disk-full      # the output file on a disk that fills up
    python bench/soak.py --section readers        # readers on the file during the campaign
    python bench/soak.py --section flips          # random byte flips in a finished file
    python bench/soak.py --section station-change # resume with a changed station refused

The storage sections run `xbarlab run disturbance` as a subprocess (so a native crash shows as
a signal) and compare every stored row exactly with an uninterrupted run of the same seed:
- disk-full (root: mounts a tmpfs per case): the output folder is a tmpfs of a random size; after
  the run stops the committed rows are checked, the tmpfs is grown and the same command re-run.
- readers: while the campaign writes, this process opens the file with h5py (HDF5 locking on)
  and holds it for a random time, reads it through the store, and runs `xbarlab db show`.
- flips: one random byte of a finished file flipped per case, then read through the store (run
  attributes, every table, the saved chip state), in a subprocess: detected (one-line
  SchemaError), harmless (everything read equals the original), undetected, or a crash.

Every instrument message has probability `rate` of a fault drawn from the kinds below (the
dropped connection 20x rarer). After every stop the emulators are inspected: anything not in
its safe state is counted, with the wall time from the faulty message to the verified safe
state. At the end the file is compared with a fault-free run of the same seed.

Printed: operations done (device units committed, instrument messages), faults injected (by
kind), faults that stopped the campaign, faults recovered (the resumed run went on past the
device that failed), faults with no visible effect, devices lost, data rows lost or differing
(targets 0), unsafe states seen after a stop (target 0), time outside the safe state.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from database.runs import list_runs, read_run  # noqa: E402
from protocols.campaigns import CAMPAIGNS  # noqa: E402
from xbarlab.errors import user_errors  # noqa: E402
from xbarlab.station import load_station  # noqa: E402

STATION = ROOT / "xbarlab" / "stations" / "sim-pmu.yaml"
KINDS = ("timeout", "no_execute", "truncated", "garbled", "wrong_reply", "error")


def unsafe(st, lost: set[str]) -> list[str]:
    """What on the emulated station is not safe (lost instruments cannot be commanded; the
    crossbar must then be isolated by the others)."""
    bad = []
    for name, emu in st.visa_library.instruments.items():
        if name in lost:
            continue
        if getattr(emu, "closed", None):
            bad.append(f"{name} relays closed")
        if hasattr(emu, "outputs") and any(emu.outputs.values()):
            bad.append(f"{name} outputs on")
    rows, cols = st.world.line_levels({})
    bad += ["line energised" for v in np.concatenate([rows, cols]) if not (math.isnan(v) or v == 0)]
    return bad


def session(args, out: Path, cfg, rate: float, rng: np.random.Generator, stats: Counter,
            fire_times: list[float]) -> tuple[bool, int]:
    """One run of the campaign command: (finished, devices done at the start)."""
    st = load_station(STATION)
    module, _ = CAMPAIGNS[args.campaign]
    rig = st.open_rig()
    lib = st.visa_library
    lib.faults.rng.seed(int(rng.integers(2**31)))
    if rate > 0:
        for kind in KINDS:
            lib.faults.add(kind, rate=rate / len(KINDS))
        lib.faults.add("disconnect", rate=rate / 20)
    take = lib.faults.take

    def timed_take(resource, message):
        kinds = take(resource, message)
        if kinds:
            fire_times.append(time.perf_counter())
        stats["messages"] += 1
        return kinds

    lib.faults.take = timed_take
    start = list_runs(out)[-1].units_done if out.exists() else 0
    try:
        with rig:
            module.run(rig, cfg, out, seed=args.seed, progress=False)
        bad = unsafe(st, set(lib.dead))
        if bad:  # a fault in the final safe-state commands that nobody noticed
            stats["unsafe_after_stop"] += 1
            print(f"  UNSAFE after a finished run: {bad[:3]}", file=sys.stderr)
        return True, start
    except user_errors() as e:
        t_stop = time.perf_counter()
        stats["stops"] += 1
        stats[f"stop:{type(e).__name__}"] += 1
        lost = set(lib.dead)
        bad = unsafe(st, lost)
        if bad:
            stats["unsafe_after_stop"] += 1
            print(f"  UNSAFE after {e}: {bad[:3]}", file=sys.stderr)
        if fire_times:
            stats["outside_safe_s"] += t_stop - fire_times[-1]
            stats["outside_safe_max_s"] = max(stats["outside_safe_max_s"],
                                              t_stop - fire_times[-1])
        if args.verbose:
            print(f"  stop: {str(e)[:150]}")
        return False, start
    finally:
        stats["faults_injected"] += len(lib.faults.fired)
        for kind, *_ in lib.faults.fired:
            stats[f"kind:{kind}"] += 1


# -- Ctrl-C at random moments ----------------------------------------------------------------

def _quiet_run(argv: list[str]) -> tuple[int, str, str]:
    """`xbarlab <argv>` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from xbarlab.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _same_rows(ref: dict, got: dict, done: int) -> tuple[int, int]:
    """(rows lost, rows differing) of the units < `done` against the reference run; values
    compared with 1e-5 relative / 10 nS (a resume re-closes relays the Ctrl-C opened, so later
    reads relax a few nS more), instrument times not compared."""
    lost = diff = 0
    for name, df_ref in ref.items():
        unit = "after" if "after" in df_ref.columns else "device"
        part = df_ref[df_ref[unit] < done]
        df = got.get(name)
        n = 0 if df is None else len(df)
        lost += max(len(part) - n, 0)
        if df is None or not n:
            continue
        m = min(len(part), n)
        cols = [c for c in part.select_dtypes("number").columns
                if not (c == "t" or c.startswith("t_"))]
        a, b = part[cols].to_numpy(float)[:m], df[cols].to_numpy(float)[:m]
        same = np.isclose(a, b, rtol=1e-5, atol=1e-8) | (np.isnan(a) & np.isnan(b))
        diff += int(np.sum(~np.all(same, axis=1)))
    return lost, diff


def sigint_soak(args) -> int:
    """SIGINT at random moments of `xbarlab run` (start-up included), in this process (where
    the emulators can be inspected afterwards) and as real `python -m xbarlab` processes.

    In process, every second case runs a 707B that ignores "open all" (its relays stay
    closed): the CLI must then say the instruments are NOT confirmed safe. Every case continues
    the same file, as a lab re-running after Ctrl-C would; at the end one uninterrupted run
    completes it and it is compared with a run that was never interrupted."""
    import json
    import os
    import signal
    import subprocess
    import threading

    from simulator.emulators import K707BEmulator
    from xbarlab.station import Station

    rng = np.random.default_rng(args.seed)
    all_devs = [(r, c) for r in range(8) for c in range(8)]
    devices = [all_devs[i] for i in rng.permutation(64)[: args.devices]]
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "cfg.json"
        cfg_path.write_text(json.dumps({"devices": devices, "record_history": False}))

        def argv(out: Path) -> list[str]:
            return ["run", "disturbance", "--station", str(STATION), "-o", str(out),
                    "--config", str(cfg_path), "--seed", str(args.seed), "--no-progress"]

        ref = Path(tmp) / "ref.h5"
        t0 = time.perf_counter()
        code, _, err = _quiet_run(argv(ref))
        t_ref = time.perf_counter() - t0
        assert code == 0, err

        stations: list = []
        open_rig = Station.open_rig

        def recording_open_rig(self, *a, **k):
            stations.append(self)
            return open_rig(self, *a, **k)

        late = []
        previous = signal.signal(signal.SIGINT, lambda *_: late.append(1))
        handle = K707BEmulator.handle

        def ignores_open(self, msg):
            if 'channel.open("allslots")' in msg:
                return ";".join(sorted(self.closed)) or "nil"
            return handle(self, msg)

        c: Counter = Counter()
        _, ref_t = read_run(ref)
        files = [Path(tmp) / "int0.h5"]

        def check_file(path: Path) -> None:
            """A completed file against the uninterrupted run; then continue in a new file."""
            info, got = read_run(path)
            lost, diff = _same_rows(ref_t, got, info.units_done)
            c["rows_lost"] += lost
            c["rows_differing"] += diff
            c["devices_lost"] += len(devices) - info.units_done
            c["files"] += 1

        Station.open_rig = recording_open_rig
        try:
            for i in range(args.sigint):
                stations.clear()
                late.clear()
                broken = i % 2 == 1
                K707BEmulator.handle = ignores_open if broken else handle
                # a moment of this session: it only has the devices left to measure
                left = len(devices) - (list_runs(files[-1])[-1].units_done
                                       if files[-1].exists() else 0)
                delay = float(rng.uniform(0.0, 0.2 + 1.1 * t_ref * left / len(devices)))
                timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
                timer.start()
                code, _, err = _quiet_run(argv(files[-1]))
                timer.join()
                if args.verbose:
                    print(f"  case {i}: SIGINT at {delay:.2f} s, exit {code}, "
                          f"{'after the command' if late else 'during the command'}: "
                          f"{err.strip().splitlines()[-1:]}")
                lines = [ln for ln in err.splitlines() if ln.strip()]
                bad = [p for st in stations if st.world is not None for p in unsafe(st, set())]
                said_unsafe = any("NOT confirmed safe" in ln for ln in lines)
                c["cases"] += 1
                c["traceback"] += "Traceback" in err
                c["unsafe_unreported"] += bool(bad) and not said_unsafe
                c["reported_unsafe"] += bool(bad) and said_unsafe
                wrong = said_unsafe and not bad
                if late:   # the command had ended (finished, or stopped by the faulty 707B)
                    c["finished"] += 1
                    wrong |= code not in (0, 2) or (code == 2 and not said_unsafe)
                else:
                    c["interrupted"] += code == 130
                    c["swallowed"] += code != 130
                    # one line, after at most the note that the file is being continued
                    wrong |= (not lines or not lines[-1].startswith("interrupted: ")
                              or any("exists: continuing" not in ln for ln in lines[:-1]))
                c["wrong"] += wrong
                if args.verbose and (wrong or bad):
                    print(f"    {'WRONG ' if wrong else ''}unsafe {bad[:2]}, said {lines}")
                if files[-1].exists() and list_runs(files[-1])[-1].complete:
                    check_file(files[-1])
                    files.append(Path(tmp) / f"int{len(files)}.h5")
        finally:
            Station.open_rig = open_rig
            K707BEmulator.handle = handle
            signal.signal(signal.SIGINT, previous)
        if files[-1].exists():                         # the lab's last, uninterrupted re-run
            code, _, err = _quiet_run(argv(files[-1]))
            assert code == 0, err
            check_file(files[-1])

        s: Counter = Counter()
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1")
        for i in range(args.sigint):
            sub = Path(tmp) / f"sub{i}.h5"
            # Ctrl-C's terminal disposition even when the soak itself runs in the background
            # (a background job inherits SIGINT ignored, and Python would keep ignoring it)
            p = subprocess.Popen([sys.executable, "-m", "xbarlab", *argv(sub)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            delay = float(rng.uniform(0.0, 1.5 + t_ref))
            time.sleep(delay)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=300)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            s["cases"] += 1
            if not sub.exists() and ("<frozen site>" in err or not err.strip()):
                # inside Python's own start-up, before the first line of xbarlab ran: Python
                # prints its traceback or dies by the signal (nothing was created)
                s["killed_before_start"] += 1
                continue
            trace = "Traceback" in err or "Exception ignored" in err
            s["traceback"] += trace
            if p.returncode == 130:
                s["interrupted"] += 1
                wrong = len(lines) != 1 or not lines[0].startswith("interrupted: ")
            else:
                s["finished"] += p.returncode == 0
                wrong = p.returncode != 0
            s["wrong"] += wrong
            if args.verbose and (wrong or trace):
                print(f"  process {i}: SIGINT at {delay:.2f} s, exit {p.returncode}:\n{err}")
    n_in = c["interrupted"] + c["swallowed"]
    print(f"sigint soak: disturbance, {args.devices} devices, seed {args.seed}, "
          f"{args.sigint} cases in process + {args.sigint} subprocesses "
          f"(uninterrupted run {t_ref:.1f} s)")
    print("  in process (SIGINT from a timer at a random moment of `xbarlab run`, start-up "
          "included; every second case with a 707B that ignores 'open all'):")
    print(f"    interrupted, exit 130              {c['interrupted']} of {n_in}")
    print(f"    finished before the signal         {c['finished']}")
    print(f"    swallowed (no exit 130)            {c['swallowed']}")
    print(f"    unsafe at exit and not reported    {c['unsafe_unreported']} (checked on the "
          "emulators)")
    print(f"    unsafe at exit, reported           {c['reported_unsafe']} (the faulty 707B "
          "once relays were closed)")
    print(f"    wrong or extra messages            {c['wrong']}, tracebacks {c['traceback']}")
    print(f"    after the re-runs ({c['files']} files completed): devices lost "
          f"{c['devices_lost']}, rows lost {c['rows_lost']}, rows differing "
          f"{c['rows_differing']} (against the uninterrupted run)")
    print("  real processes (`python -m xbarlab`, SIGINT from 0 s: interpreter, imports, "
          "station, run):")
    print(f"    interrupted, exit 130              {s['interrupted']}")
    print(f"    finished before the signal         {s['finished']}")
    print(f"    stopped in Python's own start-up   {s['killed_before_start']} (before xbarlab's "
          "first line; nothing created)")
    print(f"    wrong messages or exit codes       {s['wrong']}, tracebacks {s['traceback']}")
    bad = (c["swallowed"] + c["unsafe_unreported"] + c["wrong"] + c["traceback"]
           + c["rows_lost"] + c["rows_differing"] + c["devices_lost"] + s["wrong"]
           + s["traceback"])
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", default="faults",
                    choices=("faults", "disk-full", "readers", "flips", "station-change"))
    ap.add_argument("--cases", type=int, default=20, help="random cases (storage sections)")
    ap.add_argument("--campaign", default="tuning-untuning", choices=sorted(CAMPAIGNS))
    ap.add_argument("--devices", type=int, default=16, help="devices in the campaign (ops)")
    ap.add_argument("--rate", type=float, default=5e-4, help="fault probability per message")
    ap.add_argument("--duration", type=float, default=300.0, help="wall-time cap [s]")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--sigint", type=int, default=0, metavar="N",
                    help="instead: N Ctrl-C cases at random moments, in process and as real "
                         "processes (see sigint_soak)")
    args = ap.parse_args()
    if args.sigint:
        return sigint_soak(args)
    # the rig logs each safe-state failure of a lost instrument; the summary counts them
    logging.getLogger("xbarlab").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    if args.section == "disk-full":
        return disk_full(args)
    if args.section == "readers":
        return readers(args)
    if args.section == "flips":
        return flips(args)
    if args.section == "station-change":
        return station_change(args)

    _, cls = CAMPAIGNS[args.campaign]
    extra = {"levels": 2, "repeats": 1} if args.campaign == "tuning-untuning" else {}
    all_devs = [(r, c) for r in range(8) for c in range(8)]
    rng = np.random.default_rng(args.seed)
    devices = [all_devs[i] for i in rng.permutation(64)[: args.devices]]
    cfg = cls(devices=devices, **extra)

    with threadpool_limits(1, user_api="blas"), tempfile.TemporaryDirectory() as tmp:
        ref, out = Path(tmp) / "ref.h5", Path(tmp) / "soak.h5"
        t0 = time.perf_counter()
        ok, _ = session(args, ref, cfg, 0.0, rng, Counter(), [])
        assert ok
        t_ref = time.perf_counter() - t0

        stats: Counter = Counter()
        stats["outside_safe_max_s"] = 0.0
        fire_times: list[float] = []
        t0 = time.perf_counter()
        finished, sessions, recovered, done_at_stop = False, 0, 0, None
        while time.perf_counter() - t0 < args.duration:
            sessions += 1
            stops_before = stats["stops"]
            finished, start = session(args, out, cfg, args.rate, rng, stats, fire_times)
            if done_at_stop is not None and start == done_at_stop:
                recovered += 1  # safe, and the re-run resumed exactly where the file stopped
            if finished:
                break
            if stats["stops"] > stops_before:
                done_at_stop = list_runs(out)[-1].units_done if out.exists() else 0
        wall = time.perf_counter() - t0

        info_ref, ref_t = read_run(ref)
        info, got = read_run(out) if out.exists() else (None, {})
        done = info.units_done if info else 0
        rows_ref = sum(len(df) for df in ref_t.values())
        rows_lost = rows_diff = dup = 0
        for name, df_ref in ref_t.items():
            df = got.get(name)
            n = 0 if df is None else len(df)
            if df is not None and n:
                # the unit that committed a row: the device tuned (disturbance re-reads are
                # keyed by `after`, the device whose programming triggered them)
                unit = "after" if "after" in df.columns else "device"
                dev = df[unit].to_numpy()
                # a unit's rows must be contiguous and appear once
                dup += int(np.sum(np.diff(dev) < 0))
                part = df_ref[df_ref[unit] < done]
                rows_lost += max(len(part) - n, 0)
                m = min(len(part), n)
                num = part.select_dtypes("number").columns
                # a resume re-closes the relays a fault opened, so instrument-time stamps may
                # shift by a switching time; measured values then differ only by the relaxation
                # during that shift (nS against 0.45 uS read noise). Times are reported apart.
                tcols = [c for c in num if c == "t" or c.startswith("t_")]
                vals = [c for c in num if c not in tcols]
                if tcols:
                    ta = part[tcols].to_numpy(float)[:m]
                    tb = df[tcols].to_numpy(float)[:m]
                    shift = np.nanmax(np.abs(ta - tb), initial=0.0)
                    stats["time_shift_max_s"] = max(stats.get("time_shift_max_s", 0.0), shift)
                a, b = part[vals].to_numpy(float)[:m], df[vals].to_numpy(float)[:m]
                same = np.isclose(a, b, rtol=1e-5, atol=1e-8) | (np.isnan(a) & np.isnan(b))
                bad = ~np.all(same, axis=1)
                rows_diff += int(np.sum(bad))
                if args.verbose and bad.any():
                    i = int(np.argmax(bad))
                    print(f"  first differing row of {name}: {i} (unit {dev[i]})\n"
                          f"    ref {part.iloc[i].to_dict()}\n    got {df.iloc[i].to_dict()}")
        key = "tunings" if "tunings" in ref_t else next(iter(ref_t))
        want = set(ref_t[key].device[ref_t[key].device < done])
        have = set(got[key].device) if key in got else set()
        devices_lost = len(want - have)
    fired = stats["faults_injected"]
    stops = stats["stops"]
    print(f"soak: {args.campaign}, {args.devices} devices, fault rate {args.rate:g}/message, "
          f"seed {args.seed}")
    print(f"  fault-free reference run      {t_ref:8.1f} s wall")
    print(f"  soak wall time                {wall:8.1f} s in {sessions} sessions "
          f"({'finished' if finished else 'NOT finished: duration cap'})")
    print(f"  operations done               {done} of {args.devices} device units, "
          f"{stats['messages']} instrument messages")
    kinds = ", ".join(f"{k[5:]} {v}" for k, v in sorted(stats.items()) if k.startswith("kind:"))
    print(f"  faults injected               {fired} ({kinds})")
    print(f"  faults that stopped the run   {stops} "
          f"({', '.join(f'{k[5:]} {v}' for k, v in sorted(stats.items()) if k.startswith('stop:'))})")
    print(f"  faults recovered (resumed)    {recovered} of {stops} (rig verified safe, re-run "
          "resumed at the last committed device)"
          + ("" if finished else "; the last stop was not retried: duration cap"))
    print(f"  faults with no visible effect {max(fired - stops, 0)} "
          "(reply not needed, stale reply identical, ...)")
    print(f"  devices lost                  {devices_lost}")
    print(f"  data rows lost                {rows_lost} (reference has {rows_ref} rows)")
    print(f"  data rows differing from ref  {rows_diff} (beyond 1e-5 relative and 10 nS, 1/45 of the read noise)")
    print(f"  instrument-time shift         max {stats.get('time_shift_max_s', 0.0) * 1e3:.1f} ms "
          "(relays re-closed on resume)")
    print(f"  devices out of order/dup      {dup}")
    print(f"  unsafe states after a session {stats['unsafe_after_stop']} (checked on the "
          "emulators after every stop and at the end)")
    mean = stats["outside_safe_s"] / stops if stops else 0.0
    print(f"  time outside safe state       mean {mean * 1e3:.2f} ms, max "
          f"{stats['outside_safe_max_s'] * 1e3:.2f} ms (wall, faulty message -> safe state "
          "verified on the emulators)")
    bad = rows_lost or rows_diff or dup or devices_lost or stats["unsafe_after_stop"]
    return 1 if bad else 0


# -- storage sections ------------------------------------------------------------------------

ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           MPLBACKEND="Agg")
STORE_DEVICES = ["0,0", "0,1", "0,2", "1,0", "1,1", "2,2"]


def _cmd(out: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "xbarlab", "run", "disturbance", "--station", str(STATION),
            "-o", str(out), "--seed", str(seed), "--no-progress",
            *[a for d in STORE_DEVICES for a in ("--device", d)]]


def _compare(path: Path, ref: dict, units: int | None = None) -> tuple[int, int, int]:
    """(units in the file, rows missing, rows differing) against the reference's rows of the
    units the file holds (or of `units`, the count the tool said were committed)."""
    info, got = read_run(path)
    units = info.units_done if units is None else units
    missing = differing = 0
    for name, df_ref in ref.items():
        key = "after" if "after" in df_ref.columns else "device"
        want = df_ref[df_ref[key] < units].reset_index(drop=True)
        df = got.get(name, df_ref.iloc[:0]).reset_index(drop=True)
        missing += max(len(want) - len(df), 0)
        m = min(len(want), len(df))
        a, b = want.iloc[:m].to_numpy(float), df.iloc[:m].to_numpy(float)
        differing += int(np.sum(~np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=1)))
        differing += max(len(df) - len(want), 0)   # rows of units it should not hold
    return info.units_done, missing, differing


def _one_line(err: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return bool(lines) and lines[-1].startswith("error:") and "Traceback" not in err \
        and "Exception ignored" not in err


def _rerun_and_compare(out: Path, ref_t: dict, seed: int, c: Counter, case: int,
                       lost: str, differing: str) -> None:
    """Re-run the stopped command; count a failed re-run, and rows lost or differing against
    the uninterrupted run (or a damaged file)."""
    r = subprocess.run(_cmd(out, seed), env=ENV, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        c["resume_failed"] += 1
        print(f"  case {case}: re-run exit {r.returncode}: {r.stderr.strip()[-400:]}")
        return
    try:
        done, miss, diff = _compare(out, ref_t)
        c[lost] += miss + (len(STORE_DEVICES) - done)
        c[differing] += diff
    except Exception as e:
        c["files_damaged"] += 1
        print(f"  case {case}: file unreadable after the re-run: {e}")


def _leftover(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix in (".lock", ".journal", ".tmp"))


def _reference(tmp: Path, seed: int) -> tuple[Path, dict]:
    ref = tmp / "ref.h5"
    p = subprocess.run(_cmd(ref, seed), env=ENV, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"reference run failed: {p.stderr[-2000:]}")
    return ref, read_run(ref)[1]


def disk_full(args) -> int:
    """The output folder on a tmpfs of random size, then grown, then the same command again."""
    rng = np.random.default_rng(args.seed)
    c: Counter = Counter()
    stops: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, ref_t = _reference(tmp, args.seed)
        full = ref.stat().st_size
        t0 = time.perf_counter()
        for case in range(args.cases):
            size = int(rng.uniform(0.02, 5.0) * full) + 4096
            mnt = tmp / f"m{case}"
            mnt.mkdir()
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                               capture_output=True, text=True)
            if r.returncode:
                print(f"disk-full section skipped: cannot mount a tmpfs ({r.stderr.strip()})")
                return 0
            try:
                out = mnt / "d.h5"
                p = subprocess.run(_cmd(out, args.seed), env=ENV, cwd=ROOT, capture_output=True,
                                   text=True)
                c["cases"] += 1
                if p.returncode < 0:
                    c["crashes"] += 1
                    print(f"  case {case}: size {size}: killed by signal {-p.returncode}")
                elif p.returncode == 2:
                    c["disk_full_stops"] += 1
                    ok = _one_line(p.stderr) and "disk full" in p.stderr.splitlines()[-1]
                    c["not_one_line"] += not ok
                    if not ok or args.verbose:
                        print(f"  case {case}: size {size}: {p.stderr.strip()[-400:]}")
                elif p.returncode != 0:
                    c["other_exit"] += 1
                    print(f"  case {case}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
                said = re.search(r"the (\d+) units committed before are intact", p.stderr)
                if out.exists():
                    try:
                        done, miss, diff = _compare(out, ref_t, int(said[1]) if said else None)
                        c["rows_lost"] += miss
                        c["rows_differing"] += diff
                        if p.returncode:
                            stops.append(done)
                    except Exception as e:
                        c["files_damaged"] += 1
                        print(f"  case {case}: file unreadable after the stop: {e}")
                else:
                    if said and int(said[1]):
                        c["rows_lost"] += sum(len(df) for df in ref_t.values())
                    if p.returncode:
                        stops.append(0)
                subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)
                _rerun_and_compare(out, ref_t, args.seed, c, case, "final_rows_lost",
                                   "final_rows_differing")
                c["leftover_files"] += _leftover(mnt)
            finally:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        wall = time.perf_counter() - t0
    rows = sum(len(df) for df in ref_t.values())
    print(f"soak disk-full: `xbarlab run disturbance` ({len(STORE_DEVICES)} devices, seed "
          f"{args.seed}) on a tmpfs of random size (2-500 % of the {full / 1e3:.0f} kB result), "
          f"then grown and re-run; {c['cases']} cases, {wall:.0f} s")
    print(f"  faults (runs stopped: disk full) {c['disk_full_stops']} of {c['cases']} "
          f"(others had room); other exits {c['other_exit']}")
    print(f"  units committed at the stops    {sorted(stops)} (of {len(STORE_DEVICES)})")
    print(f"  crashes (signals)               {c['crashes']}")
    print(f"  error not one line / untrue     {c['not_one_line']}")
    print(f"  committed rows lost at the stop {c['rows_lost']} (units the message called intact "
          f"vs the file)")
    print(f"  committed rows differing        {c['rows_differing']} (exact, against the "
          "uninterrupted run)")
    print(f"  re-runs failed                  {c['resume_failed']}")
    print(f"  final rows lost / differing     {c['final_rows_lost']} / "
          f"{c['final_rows_differing']} (reference has {rows} rows; exact comparison)")
    print(f"  files damaged (unreadable)      {c['files_damaged']}")
    print(f"  lock/journal/temp files left    {c['leftover_files']}")
    bad = sum(c[k] for k in ("crashes", "not_one_line", "rows_lost", "rows_differing",
                             "resume_failed", "final_rows_lost", "final_rows_differing",
                             "files_damaged", "leftover_files", "other_exit"))
    return 1 if bad else 0



#: changes a resume must refuse: (what, how) -> extra CLI arguments and station-file edits
#: (what, change, the word the refusal must name)
CHANGES = [
    ("crossbar", {"args": ["--crossbar", "xbar1"]}, "crossbars"),
    ("seed", {"args": ["--seed", "99"]}, "seed"),
    ("devices", {"devices": STORE_DEVICES[:-1] + ["3,3"]}, "config"),
    ("limits.v_set_max", {"edit": lambda d: d["limits"].update(v_set_max=2.05)}, "v_set_max"),
    ("read.seconds", {"edit": lambda d: d["read"].update(seconds=20e-6)}, "read.seconds"),
    ("read.scheme", {"edit": lambda d: d["read"].update(scheme="grounded")}, "read.scheme"),
    ("pulse.width", {"edit": lambda d: d["pulse"].update(width=300e-9)}, "pulse.width"),
    ("sim.seed (another chip)", {"edit": lambda d: d["sim"].update(seed=5)}, "sim.seed"),
    ("sim.latency.relay_switch", {"edit": lambda d: d["sim"]["latency"].update(
        relay_switch=10e-3)}, "relay_switch"),
    ("station name", {"edit": lambda d: d.update(name="sim-pmu-2")}, "station.name"),
]


def _changed(cmd: list[str], change: dict, base: dict, station: Path) -> list[str]:
    """`cmd` with one change: other CLI arguments, devices, or an edited copy of the station."""
    import yaml

    cmd = list(cmd)
    if "edit" in change:
        d = json.loads(json.dumps(base))
        change["edit"](d)
        station.write_text(yaml.safe_dump(d))
        cmd[cmd.index(str(STATION))] = str(station)
    if "devices" in change:
        cmd = [a for a in cmd if a != "--device" and a not in STORE_DEVICES]
        cmd += [a for dv in change["devices"] for a in ("--device", dv)]
    extra = list(change.get("args", []))
    if extra[:1] == ["--seed"]:
        i = cmd.index("--seed")
        del cmd[i:i + 2]
    return cmd + extra


def station_change(args) -> int:
    """Kill a run at a random moment, re-run it with one random change of station, crossbar or
    settings (must be refused in one line, the file untouched), then with the original settings
    (must resume and equal an uninterrupted run)."""
    import yaml

    rng = np.random.default_rng(args.seed)
    c: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, ref_t = _reference(tmp, args.seed)
        base = yaml.safe_load(STATION.read_text())
        t_ref = None
        t0 = time.perf_counter()
        for case in range(args.cases):
            out = tmp / f"c{case}.h5"
            what, change, word = CHANGES[case % len(CHANGES)] if case < len(CHANGES) else \
                CHANGES[int(rng.integers(len(CHANGES)))]
            c["cases"] += 1
            # the interrupted run: SIGKILL at a random moment after its first commit
            w0 = time.perf_counter()
            p = subprocess.Popen(_cmd(out, args.seed), env=ENV, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if t_ref is None:
                p.wait()
                t_ref = time.perf_counter() - w0   # first case: measure a whole run
                out.unlink()
                for f in tmp.glob(f"{out.name}.*"):
                    f.unlink()
                p = subprocess.Popen(_cmd(out, args.seed), env=ENV, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # after the first commit (start-up is most of a short run), at a random moment
            while p.poll() is None and not out.exists():
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.3) * t_ref)
            if p.poll() is None:
                p.kill()
                c["killed"] += 1
            p.wait()
            before = {f: f.read_bytes() for f in (out, out.with_name(out.name + ".journal"))
                      if f.exists()}
            # the changed re-run (only meaningful once a unit was committed: before that
            # there is no run to mix with, and a new run with other settings is legitimate)
            if not out.exists():
                c["nothing_committed"] += 1
            else:
                r = subprocess.run(_changed(cmd=_cmd(out, args.seed), change=change, base=base,
                                            station=tmp / f"station{case}.yaml"),
                                   env=ENV, cwd=ROOT, capture_output=True, text=True)
                if r.returncode < 0:
                    c["crashes"] += 1
                elif r.returncode == 2 and _one_line(r.stderr):
                    c["refused"] += 1
                    c["named"] += word in r.stderr
                    if word not in r.stderr or args.verbose:
                        print(f"  case {case} ({what}): {r.stderr.strip()[-300:]}")
                else:
                    c["accepted_mixed" if r.returncode == 0 else "not_one_line"] += 1
                    print(f"  case {case} ({what}): exit {r.returncode}: "
                          f"{r.stderr.strip()[-300:]}")
                if any(not f.exists() or f.read_bytes() != b for f, b in before.items()):
                    c["files_changed"] += 1
                    print(f"  case {case} ({what}): the refused run changed the file")
            # the same command as before the kill: resumes, equals the uninterrupted run
            _rerun_and_compare(out, ref_t, args.seed, c, case, "rows_lost", "rows_differing")
        wall = time.perf_counter() - t0
    rows = sum(len(df) for df in ref_t.values())
    print(f"soak station-change: `xbarlab run disturbance` ({len(STORE_DEVICES)} devices, seed "
          f"{args.seed}) killed at a random moment, re-run with one change ({len(CHANGES)} "
          f"kinds: {', '.join(w for w, _, _ in CHANGES)}), then as before; {c['cases']} cases, "
          f"{wall:.0f} s")
    print(f"  killed mid-run                   {c['killed']} of {c['cases']}")
    print(f"  nothing committed at the kill    {c['nothing_committed']} (no run to mix with)")
    print(f"  changed re-runs refused          {c['refused']} of "
          f"{c['cases'] - c['nothing_committed']} (one line, exit 2; the differing field "
          f"named in {c['named']})")
    print(f"  changed re-runs accepted (mixed) {c['accepted_mixed']}")
    print(f"  error not one line               {c['not_one_line']}")
    print(f"  files changed by a refused run   {c['files_changed']}")
    print(f"  crashes (signals)                {c['crashes']}")
    print(f"  resumes failed                   {c['resume_failed']}")
    print(f"  rows lost / differing            {c['rows_lost']} / {c['rows_differing']} "
          f"(reference has {rows} rows; exact comparison)")
    print(f"  files damaged                    {c['files_damaged']}")
    bad = sum(c[k] for k in ("accepted_mixed", "not_one_line", "files_changed", "crashes",
                             "resume_failed", "rows_lost", "rows_differing", "files_damaged"))
    bad += c["refused"] - c["named"]
    return 1 if bad else 0

def readers(args) -> int:
    """Random readers on the file during whole campaigns."""
    import h5py

    rng = np.random.default_rng(args.seed)
    c: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _ref, ref_t = _reference(tmp, args.seed)
        t0 = time.perf_counter()
        for case in range(args.cases):
            out = tmp / f"r{case}.h5"
            w = subprocess.Popen(_cmd(out, args.seed), env=ENV, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            shows: list[subprocess.Popen] = []
            seen = []
            c["cases"] += 1
            while w.poll() is None:
                if not out.exists():
                    time.sleep(0.005)
                    continue
                kind = rng.integers(3)
                try:
                    if kind == 0:                       # h5py with HDF5 file locking, held
                        with h5py.File(out, "r") as f:
                            c["h5py_holds"] += 1
                            _ = f.attrs["kind"]
                            time.sleep(rng.uniform(0.0, 0.5))
                    elif kind == 1:                     # the store's readers
                        done, miss, diff = _compare(out, ref_t)
                        c["store_reads"] += 1
                        c["reads_inconsistent"] += (miss + diff) > 0
                        seen.append(done)
                    elif len(shows) < 2:                # `xbarlab db show` in parallel
                        shows.append(subprocess.Popen(
                            [sys.executable, "-m", "xbarlab", "db", "show", str(out)], env=ENV,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True))
                except Exception as e:
                    c["reads_failed"] += 1
                    print(f"  case {case}: read failed: {e}")
                for sp in [sp for sp in shows if sp.poll() is not None]:
                    shows.remove(sp)
                    c["db_show"] += 1
                    if sp.returncode:
                        c["reads_failed"] += 1
                        print(f"  case {case}: db show exit {sp.returncode}: "
                              f"{sp.stderr.read()[-300:]}")
            err = w.stderr.read()
            for sp in shows:
                sp.wait()
                c["db_show"] += 1
                c["reads_failed"] += sp.returncode != 0
            if w.returncode < 0:
                c["crashes"] += 1
            if w.returncode:
                c["campaigns_stopped"] += 1
                print(f"  case {case}: campaign exit {w.returncode}: {err.strip()[-400:]}")
            c["progress_backwards"] += seen != sorted(seen)
            try:
                done, miss, diff = _compare(out, ref_t)
                c["rows_lost"] += miss + sum(len(df[df[("after" if "after" in df else "device")]
                                                    >= done]) for df in ref_t.values())
                c["rows_differing"] += diff
            except Exception as e:
                c["files_damaged"] += 1
                print(f"  case {case}: file unreadable: {e}")
            c["leftover_files"] += _leftover(tmp)
        wall = time.perf_counter() - t0
    rows = sum(len(df) for df in ref_t.values())
    print(f"soak readers: `xbarlab run disturbance` ({len(STORE_DEVICES)} devices, seed "
          f"{args.seed}) with readers on its file; {c['cases']} cases, {wall:.0f} s")
    print(f"  reads during the writes         {c['h5py_holds']} h5py opens held 0-0.5 s (HDF5 "
          f"locking on), {c['store_reads']} store reads, {c['db_show']} `db show`")
    print(f"  reads failed / inconsistent     {c['reads_failed']} / {c['reads_inconsistent']} "
          f"(each read must be an exact prefix of the reference); progress going back "
          f"{c['progress_backwards']}")
    print(f"  campaigns stopped               {c['campaigns_stopped']} (crashes {c['crashes']})")
    print(f"  data rows lost / differing      {c['rows_lost']} / {c['rows_differing']} "
          f"(reference has {rows} rows; exact comparison)")
    print(f"  files damaged                   {c['files_damaged']}")
    print(f"  lock/journal/temp files left    {c['leftover_files']}")
    bad = sum(c[k] for k in ("reads_failed", "reads_inconsistent", "progress_backwards",
                             "campaigns_stopped", "crashes", "rows_lost", "rows_differing",
                             "files_damaged", "leftover_files"))
    return 1 if bad else 0


FLIP_CHILD = """
import json, sys
from pathlib import Path
from database.errors import SchemaError
from database.runs import RunWriter, read_run

src, work, spec = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])

def read(p):
    info, tables = read_run(p)
    w = RunWriter.open(p, **spec)
    try:
        state = w.saved_state()
    finally:
        w.close()
    return json.dumps([info.__dict__, {k: v.to_dict("list") for k, v in tables.items()},
                       state.hex() if state else None], sort_keys=True, default=repr)

ref = read(src)
data = src.read_bytes()
for line in sys.stdin:
    pos, xor = map(int, line.split())
    bad = bytearray(data)
    bad[pos] ^= xor
    p = work / "flip.h5"
    p.write_bytes(bytes(bad))
    try:
        got = read(p)
        res = "harmless" if got == ref else "undetected"
    except SchemaError as e:
        res = "detected" if "\\n" not in str(e) and str(p) in str(e) else "not_one_line"
    print(res, flush=True)
"""


def flips(args) -> int:
    """Random byte flips in a finished file, each read back in full through the store."""
    from protocols.campaigns import disturbance

    rng = np.random.default_rng(args.seed)
    c: Counter = Counter()
    n = args.cases
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, _ = _reference(tmp, args.seed)
        info = list_runs(ref)[-1]
        tables = {"devices": disturbance.DEVICES_COLUMNS, "samples": disturbance.SAMPLES_COLUMNS,
                  "history": disturbance.HISTORY_COLUMNS}
        spec = dict(protocol=info.protocol, config=info.config, station=info.station,
                    seed=info.seed, tables=tables, units_total=info.units_total)
        size = ref.stat().st_size
        todo = [(int(rng.integers(size)), int(rng.integers(1, 256))) for _ in range(n)]
        t0 = time.perf_counter()
        while todo:
            p = subprocess.Popen([sys.executable, "-c", FLIP_CHILD, str(ref), str(tmp),
                                  json.dumps(spec)], env=ENV, cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = p.communicate("".join(f"{a} {b}\n" for a, b in todo))
            results = out.split()
            for (pos, _x), res in zip(todo, results, strict=False):
                c[res] += 1
                if res != "detected" and res != "harmless":
                    print(f"  flip at byte {pos}: {res}")
            todo = todo[len(results):]
            if todo:  # the child died on the next flip
                c["crashes"] += 1
                print(f"  flip at byte {todo[0][0]}: child exit {p.returncode}: {err[-300:]}")
                todo = todo[1:]
        wall = time.perf_counter() - t0
    print(f"soak flips: {n} random byte flips (one per case) in a finished {size / 1e3:.0f} kB "
          f"disturbance file, each read in full through the store; {wall:.0f} s")
    print(f"  detected (one-line SchemaError) {c['detected']}")
    print(f"  harmless (all read equal)       {c['harmless']}")
    print(f"  undetected (data differ)        {c['undetected']}")
    print(f"  error not one line              {c['not_one_line']}")
    print(f"  crashes                         {c['crashes']}")
    return 1 if c["undetected"] or c["not_one_line"] or c["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
