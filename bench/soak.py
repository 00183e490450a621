"""Soak test: a long randomized campaign on the simulated PMU station with instrument faults
injected at a configurable rate, supervised the way a lab would run it (fault -> the rig makes
itself safe -> re-run the same command, which resumes).

    python bench/soak.py                          # defaults: 16 devices, rate 5e-4
    python bench/soak.py --devices 64 --rate 1e-3 --duration 600
    python bench/soak.py --sigint 30              # Ctrl-C at random moments instead (see
                                                  # sigint_soak)

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
import logging
import math
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
    start = list_runs(out)[-1].devices_done if out.exists() else 0
    try:
        with rig:
            module.run(rig, cfg, out, seed=args.seed, progress=False, chip=st.chip)
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
            lost, diff = _same_rows(ref_t, got, info.devices_done)
            c["rows_lost"] += lost
            c["rows_differing"] += diff
            c["devices_lost"] += len(devices) - info.devices_done
            c["files"] += 1

        Station.open_rig = recording_open_rig
        try:
            for i in range(args.sigint):
                stations.clear()
                late.clear()
                broken = i % 2 == 1
                K707BEmulator.handle = ignores_open if broken else handle
                # a moment of this session: it only has the devices left to measure
                left = len(devices) - (list_runs(files[-1])[-1].devices_done
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
            p = subprocess.Popen([sys.executable, "-m", "xbarlab", *argv(sub)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
                done_at_stop = list_runs(out)[-1].devices_done if out.exists() else 0
        wall = time.perf_counter() - t0

        info_ref, ref_t = read_run(ref)
        info, got = read_run(out) if out.exists() else (None, {})
        done = info.devices_done if info else 0
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


if __name__ == "__main__":
    sys.exit(main())
