"""Predicted station time (virtual instrument clock) of the two jobs that book a probe station:
programming an 8x8 crossbar to a random target map, and the paper-sized tuning/untuning campaign
(29 devices x 8 levels x 40 repeats), through the full emulated driver stacks.

Per station, read scheme and tuning algorithm it prints the predicted instrument time and what
it is made of: 707B relay reselections, message exchanges with the instruments (KXCI/TSP
messages, WGFMU library calls that reach the instrument), instrument executions, pulses, and the
precision reached: |error| of the tuned conductance (p95, %) and failures.

- the write-routing read (PmuRig, read.scheme write-routing) against the grounded read of the
  same state on the simulated array, with and without the per-device correction;
- |error|: each device's conductance as a noise-free grounded read sees it, taken from the
  simulated chip right after its own tuning (no instrument time, no random draws): the
  precision of the tuning whatever read scheme steered it. `map |err| p95` is the read-back of
  the whole map after the last device (rig.read_array, grounded): it adds the V/3 disturbance of
  the devices programmed later and is not a property of the tuning. Its instrument time
  (`read-back`, one grounded read and reselection per device) is not in the programming time.
- failures: tunings that did not converge, among the working devices (stuck devices, known to
  the simulator, fail by nature: left out of |error| and failures, their time is included).
- floor: what the instruments need at least for the same pulses, from the station's latencies:
  one relay reselection per device (PMU crossbar), and per closed-loop step one execution with
  the messages no step can do without (PMU: execute, one status poll, one data fetch; WGFMU: one
  data fetch), plus one read-only execution per tuning (its first read: the confirmation reads
  ride in the pulses' executions) and one per settled read. 8x8 map (PMU): with the pulse
  sequences kept loaded on the 4225-PMU, also one message (channel 1's sequence list) per pulse
  whose amplitude differs from the pulse before it and the six messages that define each
  distinct amplitude's sequence once. Campaign: amplitude changes are still counted free there
  (its history is not recorded), so that floor is below what the 4200 can do.

    python bench/station_time.py                 # read, map, campaign (fast) at full size
    python bench/station_time.py --quick         # one map per row, small campaigns
    python bench/station_time.py --sections map --schemes grounded,write-routing
    python bench/station_time.py --sections map --maps 4 --first-seed 2 --algorithms fast
    python bench/station_time.py --sections campaign --campaign-algorithms alibart,fast
    python bench/station_time.py --sections anatomy  # where the fast tuning's pulses go, by
                                                     # read error and by target
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this folder comes first on sys.path and bench/instruments.py would shadow
# the `instruments` package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(1, user_api="blas")

from database.runs import read_table  # noqa: E402
from protocols.campaigns import tuning_untuning  # noqa: E402
from protocols.tuning import PULSE, READ, TuneConfig, tune  # noqa: E402
from xbarlab.station import Station, load_station  # noqa: E402

STATIONS = ROOT / "xbarlab" / "stations"
ALGORITHMS = ("alibart", "fast")


@dataclass
class Counts:
    """Instrument activity and clock, measured as differences between two snapshots."""

    clock: dict[str, float] = field(default_factory=dict)
    relays: int = 0
    messages: int = 0
    executions: int = 0

    @classmethod
    def of(cls, st: Station, rig) -> Counts:
        c = cls(clock=dict(st.chip.clock.totals))
        c.clock["total"] = st.chip.clock.now
        for emu in st.visa_library.instruments.values():
            c.relays += getattr(emu, "selections", 0)
            c.executions += getattr(emu, "executions", 0) if hasattr(emu, "sarb") else 0
        for name in ("pmu", "matrix", "b1500"):
            inst = getattr(rig, name, None)
            if inst is not None:
                c.messages += inst.round_trips
        lib = st.wgfmu_library
        if lib is not None:
            c.messages += lib.exchanges
            c.executions += lib.executions
        return c

    def minus(self, o: Counts) -> Counts:
        keys = set(self.clock) | set(o.clock)
        return Counts({k: self.clock.get(k, 0.0) - o.clock.get(k, 0.0) for k in keys},
                      self.relays - o.relays, self.messages - o.messages,
                      self.executions - o.executions)


def _station(name: str, seed: int, scheme: str | None) -> Station:
    st = load_station(STATIONS / f"{name}.yaml")
    cfg = st.cfg.model_copy(deep=True)
    cfg.sim.seed = seed
    if scheme is not None:
        cfg.read.scheme = scheme
    return Station(cfg, st.path)


def floor_s(lat, *, devices: int, pulses: int, tunings: int, extra_reads: int, pmu: bool,
            amplitude_msgs: int = 0) -> float:
    """The floor of the module docstring [s]; `amplitude_msgs`: the messages amplitude changes
    need at least (PMU map: one per change, six per distinct amplitude)."""
    execs = pulses + tunings + extra_reads
    msgs_per_exec = 3 if pmu else 1
    relays = devices if pmu else 0
    return (relays * (lat.relay_switch + lat.gpib_cmd) + amplitude_msgs * lat.gpib_cmd
            + execs * (lat.round_trip + msgs_per_exec * lat.gpib_cmd))


def amplitude_messages(volts: list[float]) -> int:
    """Messages the pulse amplitudes `volts` (in the order sent in one rig session) need at least
    with pre-loaded sequences: one sequence list per change, six to define each amplitude."""
    changes = sum(a != b for a, b in zip(volts[1:], volts[:-1], strict=False))
    return changes + 6 * len(set(volts))


def _lat(st: Station):
    return st.world.latency


# -- 8x8 map -----------------------------------------------------------------------------------

def program_map(scheme: str | None, algorithm: str, seed: int, crossbar: str) -> dict:
    st = _station("sim-pmu", seed, scheme)
    xb = st.chip[crossbar]
    rows, cols = xb.shape
    targets = np.random.default_rng([seed, int(crossbar[-1])]).uniform(100e-6, 400e-6,
                                                                        (rows, cols))
    cfg = TuneConfig(algorithm=algorithm)
    err, failed, pulses, wall, volts = [], 0, 0, time.perf_counter(), []
    working = xb.stuck == 0
    with st.open_rig(crossbar) as rig:
        c0 = Counts.of(st, rig)
        for r in range(rows):
            for c in range(cols):
                res = tune(rig, r, c, float(targets[r, c]), cfg)
                pulses += res.pulses
                volts += [round(v, 6) for v in res.history["volts"][res.history["kind"] == PULSE]]
                if working[r, c]:
                    g = xb.read_map(rig.read_settings.volts, "grounded", noise=False)[r, c]
                    err.append((g - targets[r, c]) / targets[r, c])
                    failed += not res.converged
        counts = Counts.of(st, rig).minus(c0)
        t0 = st.chip.clock.now
        gmap = rig.read_array()
        readback = st.chip.clock.now - t0
    map_err = ((gmap - targets) / targets)[working]
    return dict(counts=counts, err=np.array(err), map_err=map_err, failed=failed,
                working=int(working.sum()), pulses=pulses, wall=time.perf_counter() - wall,
                amplitude_msgs=amplitude_messages(volts),
                lat=_lat(st), devices=rows * cols, readback=readback)


def section_map(n_maps: int, schemes: list[str | None], first_seed: int = 0,
                algorithms: tuple[str, ...] = ALGORITHMS) -> None:
    print(f"\n== 8x8 random target map, U(100, 400) uS, raster order, PMU station (sim-pmu: "
          f"4200 PMU + divider + 707B), {n_maps} map(s) per row (chip seeds {first_seed} to "
          f"{first_seed + (n_maps - 1) // 4}); times are per map")
    print("   scheme         algorithm  time (s)   relay  cmd    exec   pulse+read  relays  "
          "messages  execs  pulses  |err| p95  failures          floor (s)     read-back (s)  "
          "map |err| p95  wall")
    for scheme in schemes:
        for alg in algorithms:
            runs = [program_map(scheme, alg, seed=first_seed + s // 4, crossbar=f"xbar{s % 4}")
                    for s in range(n_maps)]
            k = len(runs)
            tot = {key: sum(r["counts"].clock.get(key, 0.0) for r in runs) / k
                   for key in ("total", "relay", "command", "round_trip")}
            wave = sum(r["counts"].clock.get(x, 0.0) for r in runs for x in ("pulse", "read",
                                                                            "idle")) / k
            err = np.abs(np.concatenate([r["err"] for r in runs])) * 100
            merr = np.abs(np.concatenate([r["map_err"] for r in runs])) * 100
            failed = sum(r["failed"] for r in runs)
            working = sum(r["working"] for r in runs)
            pulses = sum(r["pulses"] for r in runs) / k
            fl = floor_s(runs[0]["lat"], devices=64, pulses=int(pulses), tunings=64,
                         extra_reads=0, pmu=True,
                         amplitude_msgs=int(sum(r["amplitude_msgs"] for r in runs) / k))
            print(f"   {scheme or 'station':14s} {alg:9s} {tot['total']:8.2f}  "
                  f"{tot['relay']:6.2f} {tot['command']:6.2f} {tot['round_trip']:6.2f} "
                  f"{wave:9.4f}  {sum(r['counts'].relays for r in runs) / k:6.0f}  "
                  f"{sum(r['counts'].messages for r in runs) / k:8.0f}  "
                  f"{sum(r['counts'].executions for r in runs) / k:5.0f}  {pulses:6.0f}  "
                  f"{np.percentile(err, 95):8.3f}%  {failed:3d}/{working} "
                  f"({100 * failed / working:.2f} %)  {fl:6.2f} (x{tot['total'] / fl:.1f})  "
                  f"{sum(r['readback'] for r in runs) / k:8.2f}     "
                  f"{np.percentile(merr, 95):8.3f}%   {sum(r['wall'] for r in runs):5.1f} s")


# -- where the pulses go -----------------------------------------------------------------------

def section_anatomy(n_maps: int) -> None:
    """Fast tunings of the 8x8 maps, each pulse split into what it did to the device (nonvolatile
    plus volatile conductance) and to the read (the slow fluctuators' factor), both taken from
    the simulated chip around the pulse (no instrument time). Pulses are binned by the error of
    the read that led to them, tunings by their target; a confirmation break is an in-band read
    followed by an out-of-band read with no pulse between."""
    print(f"\n== where the fast tuning's pulses go (8x8 maps, write-routing, {n_maps} map(s))")
    rows, per = [], []
    for s in range(n_maps):
        seed, name = s // 4, f"xbar{s % 4}"
        st = _station("sim-pmu", seed, "write-routing")
        xb = st.chip[name]
        targets = np.random.default_rng([seed, int(name[-1])]).uniform(100e-6, 400e-6, (8, 8))

        def state(r, c, xb=xb):
            g = xb.G[r, c] + xb.Gv[r, c]
            return g, xb.conductance()[r, c] / g - 1.0

        with st.open_rig(name) as rig:
            orig = rig.pulse_and_read
            log: list[tuple] = []

            def logged(r, c, v, w, *a, _orig=orig, _log=log, _state=state, **k):
                g0, f0 = _state(r, c)
                out = _orig(r, c, v, w, *a, **k)
                g1, f1 = _state(r, c)
                _log.append((g0, f0, g1, f1))
                return out
            rig.pulse_and_read = logged
            for r in range(8):
                for c in range(8):
                    log.clear()
                    t = float(targets[r, c])
                    res = tune(rig, r, c, t, TuneConfig())
                    if xb.stuck[r, c]:
                        continue
                    h = res.history
                    used = h["used"]
                    inb = np.abs(h["g"] - t) <= 0.01 * t
                    gu, ku = h["g"][used], h["kind"][used]
                    first = int(np.argmax(inb[used])) if inb[used].any() else len(gu)
                    breaks = int(np.sum((ku[1:] == READ) & ~inb[used][1:] & inb[used][:-1]))
                    # the read each pulse was decided on: the used read before it
                    before = [gu[i - 1] for i in np.flatnonzero(ku == PULSE)]
                    for (g0, f0, g1, f1), gb in zip(log, before, strict=True):
                        rows.append((abs(gb - t) / t * 100, abs(g1 - g0) / g0 * 100,
                                     abs(f1 - f0) * 100, t))
                    per.append((res.pulses, int(ku[:first].sum()), breaks,
                                int(np.sum(np.diff(np.sign(h["volts"][h["kind"] == PULSE]))
                                           != 0)), res.gave_up, t))
    a, b = np.array(rows), np.array(per, dtype=float)
    n = len(b)
    print(f"   {n} tunings: pulses mean {b[:, 0].mean():.1f} (median {np.median(b[:, 0]):.0f}, "
          f"p90 {np.percentile(b[:, 0], 90):.0f}), {b[:, 1].mean():.1f} before the first "
          f"in-band read and {b[:, 0].mean() - b[:, 1].mean():.1f} after it; confirmation "
          f"breaks {b[:, 2].mean():.2f}, polarity reversals {b[:, 3].mean():.1f}, give-ups "
          f"{int(b[:, 4].sum())} per {n}")
    print("   read error before the pulse   pulses/tuning   median |dG|   median |d fluctuators|")
    for lo, hi in ((0, 1), (1, 3), (3, 5), (5, 10), (10, 30), (30, np.inf)):
        m = (a[:, 0] >= lo) & (a[:, 0] < hi)
        if m.any():
            print(f"   {lo:3.0f} .. {hi:<4.0f} %                  {m.sum() / n:6.2f}        "
                  f"{np.median(a[m, 1]):6.2f} %       {np.median(a[m, 2]):6.2f} %")
    print("   target (uS)    tunings   pulses mean (p90, max)   share of pulses   median |dG|   "
          "median |d fluctuators| (pulses read within 10 % of target)")
    for lo, hi in ((100, 175), (175, 250), (250, 325), (325, 400)):
        m = (b[:, 5] >= lo * 1e-6) & (b[:, 5] < hi * 1e-6)
        k = (a[:, 3] >= lo * 1e-6) & (a[:, 3] < hi * 1e-6) & (a[:, 0] < 10)
        if m.any() and k.any():
            print(f"   {lo:3d} .. {hi:3d}      {m.sum():5d}      {b[m, 0].mean():6.1f} "
                  f"({np.percentile(b[m, 0], 90):3.0f}, {b[m, 0].max():3.0f})          "
                  f"{b[m, 0].sum() / b[:, 0].sum() * 100:5.1f} %          "
                  f"{np.median(a[k, 1]):6.2f} %       {np.median(a[k, 2]):6.2f} %")


# -- the write-routing read against the grounded read -----------------------------------------

def section_read(n_reads: int = 32) -> None:
    """Devices of the four 8x8 crossbars tuned (write-routing verify reads only, n_inband = 1)
    to three random targets each after one calibration at their initial state; then n_reads
    corrected reads against the noise-free grounded read of the same state, also with the
    divider's V/3 tap 1 % high (the simulated divider is ideal otherwise)."""
    print(f"\n== write-routing read vs grounded read (PMU station, 8x8 with 0.75 ohm segments, "
          f"2 ohm sources): systematic error = mean of {n_reads} corrected reads minus the "
          "noise-free grounded read, grouped by how far the device moved since its calibration")
    print("   divider V/3 tap   n    corrected: mean    sd     p95|.|  max|.|   uncorrected: "
          "mean    max|.|   single-read sd (grounded)")
    for mismatch in (1.0, 1.01):
        rows, noise = [], []
        for xbn in ("xbar0", "xbar1", "xbar2", "xbar3"):
            st = _station("sim-pmu", 0, "write-routing")
            with st.open_rig(xbn) as rig:
                xb = st.chip[xbn]
                w = st.world.wiring
                st.world.wiring = dataclasses.replace(
                    w, dividers={**w.dividers, "div_v3": ("pmu1", mismatch / 3)})
                st.world.routing_changed()
                rng = np.random.default_rng(int(xbn[-1]))
                for r in range(8):
                    for c in range(8):
                        if xb.stuck[r, c] or (r + c) % 3:
                            continue
                        g0 = xb.read_map(0.2, "grounded", noise=False)[r, c]
                        for target in rng.uniform(100e-6, 400e-6, 3):
                            tune(rig, r, c, float(target), TuneConfig(n_inband=1))
                            g = rig.read_repeated(r, c, n_reads)
                            truth = xb.read_map(0.2, "grounded", noise=False)[r, c]
                            off = rig.calibration[2]
                            rows.append(((truth - g0) / g0, (g.mean() - truth) / truth,
                                         (g.mean() + off - truth) / truth, g.std() / truth))
                        # the same device, same state, read grounded (routed away first)
                        rig.read(r, (c + 1) % 8)
                        noise.append(rig.read_repeated(r, c, n_reads).std() / truth)
        a = np.array(rows) * 100
        print(f"   {mismatch / 3:.5f} x V   {len(a):4d}  {a[:, 1].mean():+13.3f}% "
              f"{a[:, 1].std():6.3f}% {np.percentile(np.abs(a[:, 1]), 95):7.3f}% "
              f"{np.abs(a[:, 1]).max():7.3f}%  {a[:, 2].mean():+16.3f}% "
              f"{np.abs(a[:, 2]).max():7.3f}%   {a[:, 3].mean():.3f}% "
              f"({100 * np.mean(noise):.3f}%)")
        for lo, hi in ((-100, -30), (-30, 30), (30, 100), (100, 500)):
            m = (a[:, 0] >= lo) & (a[:, 0] < hi)
            if m.any():
                print(f"      moved {lo:+4d}..{hi:+4d} %: n {m.sum():3d}, corrected mean "
                      f"{a[m, 1].mean():+.3f}%, max|.| {np.abs(a[m, 1]).max():.3f}%")


# -- paper-sized campaign ----------------------------------------------------------------------

def campaign(stack: str, algorithm: str, scheme: str | None, n_dev: int, repeats: int,
             tmp: Path) -> dict:
    """29 devices x 8 levels x `repeats`: the PMU crossbar stack (29 working devices of one 8x8)
    or the WGFMU crosspoint stack (29 single devices, four per virtual chip)."""
    tune_cfg = TuneConfig(algorithm=algorithm)
    out = dict(counts=Counts(), tunings=0, failed=0, pulses=0, untune=0, wall=0.0)
    t0 = time.perf_counter()
    frames = []
    truth: list[float] = []
    chip = {}

    def tune_and_look(rig, r, c, target, cfg, **kw):
        # the campaign's own `tune`, plus the tuned device as a noise-free grounded read sees
        # it right after each tuning to a level (the untuning has n_inband == 1)
        res = tune(rig, r, c, target, cfg, **kw)
        if cfg.n_inband == tune_cfg.n_inband and res.converged:
            g = chip["xb"].read_map(rig.read_settings.volts, "grounded", noise=False)[r, c]
            truth.append(abs(g - target) / target * 100)
        return res

    def add(st, rig, c0, path):
        c = Counts.of(st, rig).minus(c0)
        o = out["counts"]
        for key, v in c.clock.items():
            o.clock[key] = o.clock.get(key, 0.0) + v
        o.relays += c.relays
        o.messages += c.messages
        o.executions += c.executions
        frames.append(read_table(path, "tunings"))
        out["lat"] = _lat(st)

    tuning_untuning.tune = tune_and_look
    try:
        _campaign_runs(stack, scheme, n_dev, repeats, tune_cfg, tmp, chip, add)
    finally:
        tuning_untuning.tune = tune
    import pandas as pd

    df = pd.concat(frames)
    out.update(tunings=len(df), failed=int((~df.converged).sum()), pulses=int(df.pulses.sum()),
               untune=int(df.untune_pulses.sum()), wall=time.perf_counter() - t0,
               err=np.array(truth), devices=n_dev)
    return out


def _campaign_runs(stack, scheme, n_dev, repeats, tune_cfg, tmp, chip, add) -> None:
    algorithm = tune_cfg.algorithm
    if stack == "wgfmu":
        per_chip = 4  # dev0..dev3 on each virtual chip
        for i in range(n_dev):
            st = _station("sim-wgfmu", 1000 + i // per_chip, None)
            cfg = tuning_untuning.TuningUntuningConfig(repeats=repeats, tune=tune_cfg,
                                                       record_history=False)
            path = tmp / f"w-{algorithm}-{i}.h5"
            chip["xb"] = st.chip[f"dev{i % per_chip}"]
            with st.open_rig(f"dev{i % per_chip}") as rig:
                c0 = Counts.of(st, rig)
                tuning_untuning.run(rig, cfg, path, seed=i, progress=False)
                add(st, rig, c0, path)
    else:
        st = _station("sim-pmu", 0, scheme)
        xb = chip["xb"] = st.chip["xbar0"]
        devs = [(r, c) for r in range(8) for c in range(8) if not xb.stuck[r, c]][:n_dev]
        cfg = tuning_untuning.TuningUntuningConfig(devices=devs, repeats=repeats, tune=tune_cfg,
                                                   record_history=False)
        path = tmp / f"p-{algorithm}-{scheme}.h5"
        with st.open_rig() as rig:
            c0 = Counts.of(st, rig)
            tuning_untuning.run(rig, cfg, path, seed=1, progress=False)
            add(st, rig, c0, path)


def section_campaign(n_dev: int, repeats: int, schemes: list[str | None], algorithms: list[str],
                     tmp: Path, stacks: tuple[str, ...] = ("pmu", "wgfmu")) -> None:
    print(f"\n== paper-sized tuning/untuning campaign: {n_dev} devices x 8 levels x {repeats} "
          "repeats (untune, tune, settled read)")
    print("   stack / scheme        algorithm  time (h)  relay (h)  cmd (h)  exec (h)  relays   "
          "messages   execs   pulses (tune+untune)  |err| p95  failures       floor (h)   wall")
    combos = ([("pmu", s) for s in schemes] if "pmu" in stacks else []) + (
        [("wgfmu", None)] if "wgfmu" in stacks else [])
    for stack, scheme in combos:
        for alg in algorithms:
            r = campaign(stack, alg, scheme, n_dev, repeats, tmp)
            c = r["counts"]
            h = 1 / 3600
            fl = floor_s(r["lat"], devices=n_dev, pulses=r["pulses"] + r["untune"],
                         tunings=2 * r["tunings"], extra_reads=r["tunings"], pmu=stack == "pmu")
            label = f"{stack} / {scheme or 'station'}" if stack == "pmu" else "wgfmu crosspoint"
            print(f"   {label:21s} {alg:9s} {c.clock.get('total', 0) * h:8.3f}  "
                  f"{c.clock.get('relay', 0) * h:9.3f}  {c.clock.get('command', 0) * h:7.3f}  "
                  f"{c.clock.get('round_trip', 0) * h:8.3f}  {c.relays:6d}  {c.messages:9d}  "
                  f"{c.executions:6d}   {r['pulses']:7d}+{r['untune']:<7d}         "
                  f"{np.percentile(r['err'], 95):8.3f}%  {r['failed']:4d}/{r['tunings']} "
                  f"({100 * r['failed'] / r['tunings']:.2f} %)  {fl * h:6.3f} "
                  f"(x{c.clock.get('total', 0) / fl:.1f})  {r['wall']:5.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one map per row, small campaigns")
    ap.add_argument("--sections", default="read,map,campaign")
    ap.add_argument("--maps", type=int, default=None, help="8x8 maps per row (default 8)")
    ap.add_argument("--campaign-repeats", type=int, default=None,
                    help="campaign section: repeats per device and level (default 40, --quick 3)")
    ap.add_argument("--stacks", default="pmu,wgfmu",
                    help="campaign section: the stacks to run, comma separated")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="map section: chip seeds from this one (four crossbars per seed)")
    ap.add_argument("--schemes", default="station",
                    help="PMU read schemes, comma separated: 'station' (the station file's), "
                    "'grounded', 'write-routing'")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS),
                    help="map section: tuning algorithms, comma separated")
    ap.add_argument("--campaign-algorithms", default="fast",
                    help="tuning algorithms of the campaign section, comma separated (alibart "
                    "adds ~25 min of wall time at full size)")
    a = ap.parse_args()
    schemes = [None if s == "station" else s for s in a.schemes.split(",")]
    n_maps = a.maps or (1 if a.quick else 8)
    if "read" in a.sections:
        section_read()
    if "map" in a.sections:
        section_map(n_maps, schemes, a.first_seed, tuple(a.algorithms.split(",")))
    if "anatomy" in a.sections:
        section_anatomy(min(n_maps, 2))
    if "campaign" in a.sections:
        with tempfile.TemporaryDirectory() as d:
            repeats = a.campaign_repeats or (3 if a.quick else 40)
            section_campaign(4 if a.quick else 29, repeats, schemes,
                             a.campaign_algorithms.split(","), Path(d),
                             tuple(a.stacks.split(",")))


if __name__ == "__main__":
    main()
