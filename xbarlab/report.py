"""The demo report: DIR/report/index.html, report.md and report.json, figures as PNG.

Everything shown is read back from the files the demo steps wrote (JSON, HDF5, npz, and the
step timings in timing.json), never from objects in memory, so the report equals the data on
disk (the end-to-end test checks it). It knows the demo only by those files (xbarlab/demo.py
imports this module, not the other way round). The statements in the summary ("the
hardware-aware network is more accurate and less spread...") are computed from those numbers,
and the report says so when one does not hold.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from database.display import duration, pct, us, volts
from training.defaults import LABELS, NETWORKS, PAPER_SHARE_CORRECT_95
from xbarlab.files import write_json

THRESHOLD_LABELS = {">=100%": "100 %", ">=95%": "95 %", ">=90%": "90 %", ">=80%": "80 %",
                    ">=70%": "70 %", ">=60%": "60 %", ">=50%": "50 %"}


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)
    notes: list[str] = field(default_factory=list)  # paragraphs after the tables


def _load(path: Path):
    return json.loads(path.read_text())


# -- gathering the numbers ---------------------------------------------------------------------

def calibration_stats(db) -> dict:
    """The numbers of a non-ideality DB the report shows (SI units, fractions)."""
    d = db.disturbance_delta
    return {
        "g_min_S": db.g_min, "g_max_S": db.g_max,
        "levels_S": db.tuning_levels.tolist(), "sigma_rel": db.tuning_sigma_rel.tolist(),
        "offset_rel": db.tuning_offset_rel.tolist(), "counts": db.tuning_counts.tolist(),
        "sigma_fit_slope_per_S": db.sigma_fit_slope, "sigma_fit_intercept": db.sigma_fit_intercept,
        "offset_mean_rel": db.offset_mean_rel, "offset_std_rel": db.offset_std_rel,
        "disturbance_samples": int(d.size), "disturbance_max_key": db.max_key,
        "disturbance_mean_S": float(d.mean()), "disturbance_std_S": float(d.std(ddof=1)),
        "disturbance_p1_S": float(np.percentile(d, 1)), "disturbance_min_S": float(d.min()),
        "disturbance_max_S": float(d.max()),
        "stuck_hrs_rate": db.stuck_hrs_rate, "stuck_lrs_rate": db.stuck_lrs_rate,
        "provenance": {k: v for k, v in db.provenance.items() if k != "statistics"},
    }


def gather(out: Path) -> dict:
    """Every number the report shows, read from the demo's files."""
    from database.nonideality import load_nonideality
    from protocols.transfer import load_transfer
    from xbarlab.prediction import compare

    data: dict = {"settings": _load(out / "settings.json"),
                  "chip": _load(out / "station" / "chip.json"),
                  "campaigns": [*_load(out / "runs" / "campaigns.json"),
                                *_load(out / "runs" / "retention.json")],
                  "calibration": calibration_stats(load_nonideality(out / "db" /
                                                                    "nonideality.h5")),
                  "train": _load(out / "train" / "train.json"),
                  "evaluate": _load(out / "evaluate" / "summary.json")}
    mc = np.load(out / "evaluate" / "mc_accuracy.npz")
    data["mc"] = {n: {"mean": float(mc[n].mean()), "std": float(mc[n].std()),
                      "p05": float(np.percentile(mc[n], 5)),
                      "p95": float(np.percentile(mc[n], 95)), "n": int(mc[n].size)}
                  for n in NETWORKS}
    chips: dict[str, list[dict]] = {n: [] for n in NETWORKS}
    correct: dict[str, list[np.ndarray]] = {n: [] for n in NETWORKS}
    for r in _load(out / "transfer" / "transfers.json"):
        t = load_transfer(out / r["path"])  # the HDF5 file is the source of truth
        inf = t.tables["inference"]
        correct[r["network"]].append((inf.predicted == inf.label).to_numpy())
        chips[r["network"]].append({
            "chip_seed": r["chip_seed"], "path": r["path"],  # relative to the demo folder
            "accuracy": float((inf.predicted == inf.label).mean()),
            "accuracy_software": float((inf.predicted_target == inf.label).mean()),
            "failed": int(t.summary["failed"]), "pulses": int(t.summary["pulses_total"]),
            "readback_error_std_rel": float(t.summary["readback_error_std_rel"]),
            "instrument_time_s": float(t.summary["instrument_time_s"]),
            "wall_s": float(r["wall_s"])})
    data["chips"] = chips
    data["robust"] = robustness(data["evaluate"]["networks"], correct)
    data["repairs"] = gather_repairs(out)
    meas = {}
    for n in NETWORKS:
        a = np.array([c["accuracy"] for c in chips[n]])
        meas[n] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}
    data["measured"] = meas
    data["prediction"] = {n: compare(mc[n], [c["accuracy"] for c in chips[n]])
                          for n in NETWORKS}
    data["claims"] = claims(data)
    return data


def robustness(ev: dict, correct: dict[str, list[np.ndarray]]) -> dict:
    """The published metric, per network: the share of test points classified correctly in
    >= 95 % of transfers, over the Monte-Carlo transfers and over the programmed chips (each
    chip one transfer; with fewer than 20 chips, >= 95 % of them means all of them)."""
    out = {}
    for n in NETWORKS:
        per_point = np.mean(correct[n], axis=0)        # chips x points -> share of chips
        out[n] = {"monte_carlo": float(ev[n]["share_correct"][">=95%"]),
                  "chips": float(np.mean(per_point >= 0.95 - 1e-9)),
                  "chips_n": len(correct[n]), "paper": PAPER_SHARE_CORRECT_95[n]}
    return out


def gather_repairs(out: Path) -> list[dict]:
    """Per repaired chip: analog and read-back test accuracy before and after the repair,
    pulses (also relative to the transfer's) and predicted instrument time, from the HDF5
    files of the repair step."""
    from protocols.repair import load_repair

    rows = []
    for r in _load(out / "repair" / "repairs.json"):
        s = load_repair(out / r["path"]).summary   # the HDF5 file is the source of truth
        rows.append({"network": r["network"], "chip_seed": r["chip_seed"], "path": r["path"],
                     "before": s["accuracy_before"], "after": s["accuracy_after"],
                     "readback_before": s["accuracy_readback_before"],
                     "readback_after": s["accuracy_readback_after"],
                     "pulses": int(s["pulses"]), "budget": int(s["budget"]),
                     "transfer_pulses": int(r["transfer_pulses"]),
                     "budget_share": float(r["budget_share"]),
                     "chosen": s["chosen"], "stopped": s.get("stopped", ""),
                     "calibrated": "calibration" in s,
                     "instrument_time_s": float(s["instrument_time_s"]),
                     "wall_s": float(r["wall_s"])})
    return rows


def claims(data: dict) -> dict:
    """The statements the report makes, computed: the published claim first."""
    m, mc, rb = data["measured"], data["mc"], data["robust"]
    hw, reg = m["hardware_aware"], m["regular"]
    out = {"hw_robust_mc": rb["hardware_aware"]["monte_carlo"] > rb["regular"]["monte_carlo"],
           "hw_robust_chips": rb["hardware_aware"]["chips"] > rb["regular"]["chips"],
           "hw_higher": hw["mean"] > reg["mean"], "hw_less_spread": hw["std"] < reg["std"],
           "hw_worst_higher": hw["min"] > reg["min"]}
    for n in NETWORKS:
        out[f"mc_within_{n}"] = m[n]["min"] <= mc[n]["mean"] <= m[n]["max"]
        acc = [c["accuracy"] for c in data["chips"][n]]
        out[f"chips_in_mc_band_{n}"] = int(sum(mc[n]["p05"] <= a <= mc[n]["p95"] for a in acc))
    out["all_hold"] = bool(out["hw_robust_mc"] and out["hw_robust_chips"]
                           and out["hw_higher"] and out["hw_less_spread"]
                           and all(out[f"mc_within_{n}"] for n in NETWORKS))
    return out


# -- figures ---------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_mc_vs_measured(out: Path, data: dict, path: Path) -> Path:
    plt = _plt()
    mc = np.load(out / "evaluate" / "mc_accuracy.npz")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    bins = np.linspace(0, 100, 51)
    lowest = min(min(float(mc[n].min()), data["measured"][n]["min"]) for n in NETWORKS)
    x_lo = max(0.0, 10 * np.floor(10 * lowest))  # show the whole tail, in steps of 10 %
    for ax, n, color in zip(axes, NETWORKS, ("C0", "C1"), strict=True):
        ax.hist(100 * mc[n], bins=bins, density=True, alpha=0.5, color=color,
                label=f"Monte-Carlo ({mc[n].size} transfers)")
        p = data["mc"][n]
        ax.axvspan(100 * p["p05"], 100 * p["p95"], color=color, alpha=0.08,
                   label="Monte-Carlo 5-95 %")
        ax.axvline(100 * p["mean"], color=color, lw=2, label="Monte-Carlo mean")
        acc = [100 * c["accuracy"] for c in data["chips"][n]]
        ymax = ax.get_ylim()[1]
        ax.plot(acc, np.full(len(acc), 0.9 * ymax), "kv", ms=8,
                label=f"measured, {len(acc)} chips")
        ax.axvline(100 * data["measured"][n]["mean"], color="k", ls="--", lw=1.5,
                   label="measured mean")
        ax.set(xlabel="test accuracy of one transfer (%)", ylabel="density (1/%)",
               title=LABELS[n], xlim=(x_lo, 100))
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Monte-Carlo prediction vs transfers measured on simulated chips")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_readback(out: Path, data: dict, path: Path) -> Path:
    from protocols.transfer import load_transfer

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for n, color in zip(NETWORKS, ("C0", "C1"), strict=True):
        tg, g, k = [], [], []
        for c in data["chips"][n]:
            t = load_transfer(out / c["path"])
            rb, dev = t.tables["readback"].sort_values("device"), t.tables["devices"]
            tg.append(rb.target.to_numpy())
            g.append(rb.g.to_numpy())
            k.append(dev.k.to_numpy())
        tg, g, k = map(np.concatenate, (tg, g, k))
        a1.plot(tg * 1e6, g * 1e6, ".", ms=3, alpha=0.5, color=color, label=LABELS[n])
        a2.plot(k + (0.15 if n == "regular" else -0.15), 100 * (g - tg) / tg, ".", ms=3,
                alpha=0.5, color=color, label=LABELS[n])
    lim = [0, 600]
    a1.plot(lim, lim, "k-", lw=0.8)
    a1.set(xlabel="target conductance (uS)", ylabel="read-back conductance (uS)",
           title="every programmed device, all chips", xlim=lim, ylim=lim)
    a2.axhline(0, color="k", lw=0.8)
    a2.set(xlabel="k = devices programmed after it in its tile", ylabel="read-back error (% of "
           "target)", title="error vs programming position", ylim=(-20, 20))
    for a in (a1, a2):
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_timing(steps: list[dict], path: Path) -> Path:
    plt = _plt()
    names = [s["title"] for s in steps]
    wall = [s["seconds"] for s in steps]
    inst = [s["instrument_s"] or 0.0 for s in steps]
    y = np.arange(len(steps))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.barh(y - 0.2, wall, 0.4, label="wall time on this PC (s)")
    ax.barh(y + 0.2, inst, 0.4, label="predicted instrument time, real station (s)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("time (s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- sections --------------------------------------------------------------------------------------

def _yes(b: bool) -> str:
    return "yes" if b else "NO"


def build_sections(data: dict, timing: list[dict], figs: dict[str, str]) -> list[Section]:
    from xbarlab.prediction import table_rows

    s, m, mc, c = data["settings"], data["measured"], data["mc"], data["claims"]
    hw, reg = m["hardware_aware"], m["regular"]
    rb = data["robust"]
    rh, rr = rb["hardware_aware"], rb["regular"]
    secs: list[Section] = []

    # summary and the computed claims
    summ = Section("Summary")
    summ.text.append(
        f"One seeded virtual chip (seed {s['seed']}) was characterised; its non-ideality "
        f"database trained a hardware-aware and a regular 2-8-1 network on half-moons; both "
        f"were evaluated over {mc['hardware_aware']['n']} Monte-Carlo transfers each and then "
        f"programmed, through the simulated 4200A-SCS PMU rig, onto {hw['n']} fresh virtual "
        f"chips each (the same chips for both networks). Accuracies are on the 200 test "
        f"points.")
    summ.text.append(
        "The published claim is robustness: the share of test points classified correctly in "
        f">= 95 % of transfers, {pct(rh['paper'])} for the hardware-aware network vs "
        f"{pct(rr['paper'])} for the regular one. It is measured here twice: over the "
        "Monte-Carlo transfers, and over the programmed chips (each chip one transfer"
        + (f"; with {rh['chips_n']} chips, >= 95 % of them means all of them" if
           rh["chips_n"] < 20 else "") + "). The statements after it were not claimed by the "
        "published work and are checked as well.")
    rows = [["published claim, Monte-Carlo: share of test points correct in >= 95 % of "
             "transfers, hardware-aware above regular (paper: "
             f"{pct(rh['paper'])} vs {pct(rr['paper'])})",
             f"{pct(rh['monte_carlo'])} vs {pct(rr['monte_carlo'])}", _yes(c["hw_robust_mc"])],
            [f"published claim, on the {rh['chips_n']} programmed chips: share of test points "
             "correct on >= 95 % of the chips, hardware-aware above regular",
             f"{pct(rh['chips'])} vs {pct(rr['chips'])}", _yes(c["hw_robust_chips"])],
            ["(not claimed) hardware-aware mean measured accuracy above the regular one",
             f"{pct(hw['mean'])} vs {pct(reg['mean'])}", _yes(c["hw_higher"])],
            ["(not claimed) hardware-aware measured spread (std over chips) below the regular "
             "one", f"{pct(hw['std'])} vs {pct(reg['std'])}", _yes(c["hw_less_spread"])],
            ["(also) hardware-aware worst chip above the regular network's worst chip",
             f"{pct(hw['min'])} vs {pct(reg['min'])}", _yes(c["hw_worst_higher"])]]
    for n in NETWORKS:
        rows.append([f"{LABELS[n]}: Monte-Carlo mean inside the measured range",
                     f"{pct(mc[n]['mean'])} in [{pct(m[n]['min'])}, {pct(m[n]['max'])}]",
                     _yes(c[f"mc_within_{n}"])])
        rows.append([f"{LABELS[n]}: measured chips inside the Monte-Carlo 5-95 % band",
                     f"{c[f'chips_in_mc_band_{n}']} of {m[n]['n']} in "
                     f"[{pct(mc[n]['p05'])}, {pct(mc[n]['p95'])}]", "-"])
        pr = data["prediction"][n]
        rows.append([f"{LABELS[n]}: the prediction describes the chips (mean inside the 95 % "
                     "interval for that many chips; KS and Mann-Whitney at 5 %)",
                     f"{pct(pr['measured_mean'])} in [{pct(pr['mean_interval'][0])}, "
                     f"{pct(pr['mean_interval'][1])}]; KS p {pr['ks_pvalue']:.2g}, MW p "
                     f"{pr['mannwhitney_pvalue']:.2g}", _yes(pr["verdict"] == "consistent")])
    summ.tables.append(Table(["statement", "numbers", "holds"], rows))
    summ.notes += explain(data)
    secs.append(summ)

    # calibration
    cal = data["calibration"]
    sec_cal = Section("Calibration statistics (non-ideality database)")
    sec_cal.text.append(f"Built from {len(data['campaigns'])} campaign runs; conductance range "
                        f"{us(cal['g_min_S'], 0)} to {us(cal['g_max_S'], 0)}.")
    sec_cal.tables.append(Table(
        ["target level", "tuning sigma (% of target)", "mean offset (% of target)",
         "tunings (count)"],
        [[us(lv), pct(sg, 3), f"{100 * o:+.3f} %", str(int(n))] for lv, sg, o, n in
         zip(cal["levels_S"], cal["sigma_rel"], cal["offset_rel"], cal["counts"], strict=True)],
        "Tuning imprecision per level (settled read after write-verify)"))
    truth = data["chip"]["crossbars"]
    screened = [r["crossbar"] for r in data["campaigns"] if r["protocol"] == "stuck"]
    true_h = sum(truth[x]["stuck_hrs"] for x in screened)
    true_l = sum(truth[x]["stuck_lrs"] for x in screened)
    n_scr = sum(truth[x]["shape"][0] * truth[x]["shape"][1] for x in screened)
    sec_cal.tables.append(Table(["quantity", "value"], [
        ["tuning sigma fit", f"{cal['sigma_fit_slope_per_S'] * 1e-6 * 100:+.3e} %/uS x G + "
                             f"{pct(cal['sigma_fit_intercept'], 3)}"],
        ["per-device offset N(mean, std)", f"N({100 * cal['offset_mean_rel']:+.3f} %, "
                                           f"{pct(cal['offset_std_rel'], 3)})"],
        ["disturbance samples (count)", f"{cal['disturbance_samples']} (keys k = 1 to "
                                        f"{cal['disturbance_max_key']})"],
        ["disturbance mean / std", f"{us(cal['disturbance_mean_S'], 2)} / "
                                   f"{us(cal['disturbance_std_S'], 2)}"],
        ["disturbance 1st percentile / min / max",
         f"{us(cal['disturbance_p1_S'], 2)} / {us(cal['disturbance_min_S'], 2)} / "
         f"{us(cal['disturbance_max_S'], 2)}"],
        ["stuck-HRS rate (screened / true on chip)",
         f"{pct(cal['stuck_hrs_rate'], 2)} / {pct(true_h / n_scr, 2)} of {n_scr} devices"],
        ["stuck-LRS rate (screened / true on chip)",
         f"{pct(cal['stuck_lrs_rate'], 2)} / {pct(true_l / n_scr, 2)} of {n_scr} devices"],
    ], "Model parameters"))
    rows = []
    for r in data["campaigns"]:
        sm = r["summary"]
        if r["protocol"] == "tuning-untuning":
            what = (f"{sm['tunings']} tunings, {sm['failed']} failed, error "
                    f"{100 * sm['error_mean_rel']:+.2f} % +- {pct(sm['error_std_rel'], 2)}")
        elif r["protocol"] == "stuck":
            what = (f"{sm['working']} working, {sm['stuck-HRS']} stuck-HRS, "
                    f"{sm['stuck-LRS']} stuck-LRS")
        elif r["protocol"] == "bringup":
            bad = sm["opens"] + sm["shorts"] + sm["weak"]
            what = (f"{sm['ok']} of {sm['lines']} lines ok"
                    + (f" ({', '.join(bad)})" if bad else "")
                    + (f", median line conductance {us(sm['g_median_S'], 0)}"
                       if "g_median_S" in sm else ""))
        elif r["protocol"] == "iv":
            what = (f"{sm['devices']} devices, {sm['cycles']} DC cycles, "
                    f"{sm['never_switched']} never switched"
                    + (f", SET {volts(sm['v_set_median_V'])} / RESET "
                       f"{volts(sm['v_reset_median_V'])} (median)"
                       if "v_set_median_V" in sm and "v_reset_median_V" in sm else ""))
        elif r["protocol"] == "retention":
            what = (f"{sm['devices']} devices, drift {duration(sm['last_read_s'])} after "
                    f"programming {pct(sm['drift_mean_rel'], 2, signed=True)} +- "
                    f"{pct(sm['drift_std_rel'], 2)}, {sm['drifting_up']} drifting up")
        else:
            what = f"{sm['samples']} samples, {sm['flagged']} devices flagged"
        rows.append([r["protocol"], f"{r['station']} / {r['crossbar']}", what,
                     duration(r["wall_s"]), duration(r["instrument_s"])])
    sec_cal.tables.append(Table(["campaign", "station / crossbar", "result", "wall time (s)",
                                 "predicted instrument time (s)"], rows, "Campaign runs"))
    sec_cal.images += [(figs["tuning"], "Tuning imprecision"),
                       (figs["disturbance"], "V/3 disturbance by k"),
                       (figs["stuck"], "Stuck devices")]
    secs.append(sec_cal)

    # Monte-Carlo robustness
    ev = data["evaluate"]["networks"]
    rob = Section("Monte-Carlo robustness (prediction)")
    rob.text.append(f"{mc['hardware_aware']['n']} simulated transfers per network with the "
                    "demo's database (physical mapping): the share of the 200 test points "
                    "classified correctly in at least the given share of transfers (the "
                    "paper's metric is the 95 % row).")
    rows = [[f"correct in >= {THRESHOLD_LABELS.get(q, q)} of transfers",
             *(pct(ev[n]["share_correct"][q]) for n in NETWORKS)]
            for q in ev["hardware_aware"]["share_correct"]]
    rows += [["clean (software) accuracy", *(pct(ev[n]["clean_acc"]) for n in NETWORKS)],
             ["transfer accuracy mean", *(pct(ev[n]["transfer_acc_mean"]) for n in NETWORKS)],
             ["transfer accuracy std", *(pct(ev[n]["transfer_acc_std"]) for n in NETWORKS)],
             ["transfer accuracy 5th percentile",
              *(pct(ev[n]["transfer_acc_p05"]) for n in NETWORKS)],
             ["transfer accuracy worst", *(pct(ev[n]["transfer_acc_min"]) for n in NETWORKS)]]
    rob.tables.append(Table(["test points", "hardware-aware", "regular"], rows,
                            "Robustness table"))
    rob.images += [(figs["accuracy_hist"], "Monte-Carlo accuracy histograms"),
                   (figs["boundary_map"], "Decision-boundary variability: share of "
                    f"{data['evaluate'].get('boundary_map_transfers', 'the')} transfers per grid point "
                    f"predicting class 1 (fewer than the {mc['hardware_aware']['n']:,} "
                    "behind the histograms and the table: one map costs a transfer per "
                    "grid point)")]
    secs.append(rob)

    # measured transfers
    tr = Section("Measured transfers on simulated chips")
    tr.text.append("Each network is mapped to conductance pairs (physical mapping, 8x8 tiles, "
                   "one tile per crossbar) and programmed device by device with write-verify "
                   "in the order the training assumed; each tile is read back and the network "
                   "is evaluated from the read-back conductances (conductances read back and "
                   "multiplied, see docs/guide.md).")
    rows = []
    for n in NETWORKS:
        rows.append([LABELS[n], f"{pct(mc[n]['mean'])} +- {pct(mc[n]['std'])}",
                     f"{pct(mc[n]['p05'])} to {pct(mc[n]['p95'])}",
                     f"{pct(m[n]['mean'])} +- {pct(m[n]['std'])}",
                     f"{pct(m[n]['min'])} to {pct(m[n]['max'])}", str(m[n]["n"])])
    tr.tables.append(Table(["network", "Monte-Carlo mean +- std", "Monte-Carlo 5-95 %",
                            "measured mean +- std", "measured min to max", "chips (count)"],
                           rows, "Prediction beside measurement (test accuracy)"))
    head, rows = table_rows(data["prediction"], LABELS)
    tr.tables.append(Table(head, rows, "Does the prediction describe the chips? (measured "
                                       "mean against the mean of as many Monte-Carlo "
                                       "transfers; two-sample tests, 5 % level)"))
    rows = []
    by_seed = {n: {ch["chip_seed"]: ch for ch in data["chips"][n]} for n in NETWORKS}
    for seed in sorted(by_seed["hardware_aware"]):
        h, r = by_seed["hardware_aware"][seed], by_seed["regular"][seed]
        rows.append([str(seed), pct(h["accuracy"]), pct(r["accuracy"]),
                     f"{h['failed']} / {r['failed']}",
                     f"{pct(h['readback_error_std_rel'], 2)} / "
                     f"{pct(r['readback_error_std_rel'], 2)}",
                     f"{duration(h['instrument_time_s'])} / {duration(r['instrument_time_s'])}"])
    tr.tables.append(Table(["chip seed", "hardware-aware accuracy", "regular accuracy",
                            "failed tunings (count, HW / reg)",
                            "read-back error std (% of target, HW / reg)",
                            "predicted instrument time (HW / reg)"], rows, "Per chip"))
    tr.images += [(figs["mc_vs_measured"], "Monte-Carlo prediction vs measured transfers"),
                  (figs["readback"], "Read-back conductances")]
    secs.append(tr)

    # repair after transfer
    rep = Section("Repair after transfer")
    shares = " or ".join(sorted({pct(r["budget_share"], 0) for r in data["repairs"]}))
    rep.text.append(
        "The first chips of each network were measured with the network computing on the "
        "crossbars (inputs as row voltages, outputs from column currents, through the nodal "
        "solver: line resistance, sneak paths and the devices' non-linear I-V included) and "
        f"repaired with a pulse budget of {shares} of the transfer's pulses: re-tuning the "
        "devices whose error costs the most, compensating stuck devices with their partner, and "
        "re-fitting layers on measured activations (protocols/repair.py, docs/guide.md). "
        "Accuracies are on the test set; 'analog' is measured on the crossbars, 'read-back' is "
        "the estimate from conductances read back device by device. The read-out runs on the "
        "PMU station's own SMUs through the emulated 4200 and 707B, time-multiplexed over each "
        "tile's rows and columns, as on a real station.")
    if any(r["calibrated"] for r in data["repairs"]):
        rep.text.append(
            "The repair also calibrated the periphery digitally (a gain and an offset per output "
            "neuron on the measured pre-activations, fitted on measured data, no pulse): the "
            "analog accuracy after repair is with that calibration applied, as `xbarlab infer "
            "--from` the repair run applies it.")
    rows = [[str(r["chip_seed"]), LABELS[r["network"]],
             f"{pct(r['before'])} -> {pct(r['after'])}",
             f"{pct(r['readback_before'])} -> {pct(r['readback_after'])}",
             f"{r['pulses']} / {r['budget']}",
             pct(r["pulses"] / r["transfer_pulses"]) if r["transfer_pulses"] else "-",
             duration(r["instrument_time_s"]),
             ", ".join(f"{k} {v}" for k, v in r["chosen"].items()) or "none",
             r["stopped"]] for r in data["repairs"]]
    rep.tables.append(Table(["chip seed", "network", "analog accuracy before -> after",
                             "read-back accuracy before -> after",
                             "pulses (count) / budget (count)",
                             "pulses relative to the transfer", "predicted instrument time",
                             "corrections (rounds)", "stopped because"], rows, "Per chip"))
    secs.append(rep)

    # timing
    tim = Section("Time taken")
    rows = [[t["title"], duration(t["seconds"]), duration(t["instrument_s"])] for t in timing]
    rows.append(["total (steps above)", duration(sum(t["seconds"] for t in timing)),
                 duration(sum(t["instrument_s"] or 0.0 for t in timing))])
    tim.tables.append(Table(["step", "wall time on this PC",
                             "predicted instrument time on a real station"], rows))
    tim.text.append("Predicted instrument time is the virtual clock of the simulated "
                    "instruments (host round trips, relay switching, pulses and reads with the "
                    "station file's latencies): what the same campaigns and transfers would take "
                    "on the probe station. Writing this report is not included.")
    tim.images.append((figs["timing"], "Wall time and predicted instrument time per step"))
    secs.append(tim)
    return secs


def conclusion(data: dict) -> list[str]:
    """The demo's conclusion in a few lines for the terminal: the published claim measured,
    then whether every other statement holds."""
    rb, c = data["robust"], data["claims"]
    rh, rr = rb["hardware_aware"], rb["regular"]
    lines = [
        "Published claim (share of test points correct in >= 95 % of transfers, "
        f"hardware-aware vs regular; paper {pct(rh['paper'])} vs {pct(rr['paper'])}):",
        f"  Monte-Carlo ({data['mc']['hardware_aware']['n']:,} transfers each): "
        f"{pct(rh['monte_carlo'])} vs {pct(rr['monte_carlo'])}: "
        + ("holds" if c["hw_robust_mc"] else "does NOT hold"),
        f"  on {rh['chips_n']} programmed chips each: {pct(rh['chips'])} vs {pct(rr['chips'])}: "
        + ("holds" if c["hw_robust_chips"] else "does NOT hold")]
    lines.append("Every statement of the report holds." if c["all_hold"] else
                 "Not every statement of the report holds: see its summary for why.")
    return lines


def explain(data: dict) -> list[str]:
    """Why a statement does not hold, from the numbers (empty when all hold)."""
    c, m, mc, ev = data["claims"], data["measured"], data["mc"], data["evaluate"]["networks"]
    cal = data["calibration"]
    notes = []
    if c["all_hold"]:
        notes.append("All statements hold on this run.")
        return notes
    n_chips = m["hardware_aware"]["n"]
    rb = data["robust"]
    if not c["hw_robust_mc"]:
        notes.append(
            f"Over the Monte-Carlo transfers the hardware-aware network keeps fewer test points "
            f"right in >= 95 % of transfers ({pct(rb['hardware_aware']['monte_carlo'])} vs "
            f"{pct(rb['regular']['monte_carlo'])}): the published claim does not hold with "
            f"this database and training.")
    if not c["hw_robust_chips"]:
        notes.append(
            f"On the programmed chips the hardware-aware share is not above the regular one "
            f"({pct(rb['hardware_aware']['chips'])} vs {pct(rb['regular']['chips'])}). With "
            f"{n_chips} chips a point counts only if it is right on "
            f"{'all of them' if n_chips < 20 else '>= 95 % of them'}, so a single badly "
            f"programmed chip removes every point it gets wrong.")
    if not c["hw_higher"]:
        notes.append(
            f"The hardware-aware network is not more accurate on average here. It gives up "
            f"clean accuracy for robustness ({pct(ev['hardware_aware']['clean_acc'])} vs "
            f"{pct(ev['regular']['clean_acc'])} in software), and on chips that happen to "
            f"program the regular network well the regular network keeps that lead; the "
            f"Monte-Carlo means ({pct(mc['hardware_aware']['mean'])} vs "
            f"{pct(mc['regular']['mean'])}) show how close the two are on average. The "
            f"published code's own re-runs behave the same way (mean transfer accuracy 85.3 % "
            f"vs 85.9 %): hardware-aware training buys consistency (the spread and the worst "
            f"case: {pct(m['hardware_aware']['min'])} vs {pct(m['regular']['min'])} on the "
            f"worst measured chip here), not a higher average.")
    if not c["hw_less_spread"]:
        notes.append(
            f"The measured spread of the hardware-aware network is not the smaller one. With "
            f"{n_chips} chips a standard deviation is itself uncertain by about "
            f"{pct(1 / np.sqrt(2 * max(n_chips - 1, 1)), 0)} of its value, and the regular "
            f"network's large predicted spread ({pct(mc['regular']['std'])}) comes from rare, "
            f"bad transfers a few chips may not show.")
    for n in NETWORKS:
        if not c[f"mc_within_{n}"]:
            side = "below" if mc[n]["mean"] < m[n]["min"] else "above"
            notes.append(
                f"{LABELS[n].capitalize()}: the Monte-Carlo mean ({pct(mc[n]['mean'])}) lies "
                f"{side} the measured range ({pct(m[n]['min'])} to {pct(m[n]['max'])}, "
                f"{m[n]['n']} chips). The prediction samples every non-ideality at the "
                f"database's rates, e.g. stuck devices at "
                f"{pct(cal['stuck_hrs_rate'] + cal['stuck_lrs_rate'], 2)} per device "
                f"estimated from the screened devices, at random positions; each measured chip "
                f"has its own stuck devices at fixed places, and a handful of chips samples the "
                f"rare bad transfers of the prediction's tail poorly. "
                f"{c[f'chips_in_mc_band_{n}']} of {m[n]['n']} measured chips lie inside the "
                f"predicted 5-95 % band ({pct(mc[n]['p05'])} to {pct(mc[n]['p95'])}).")
    return notes


# -- rendering -------------------------------------------------------------------------------------

def render_md(title: str, secs: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in secs:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        for t in s.tables:
            if t.caption:
                out += [f"**{t.caption}**", ""]
            out.append("| " + " | ".join(t.header) + " |")
            out.append("|" + "---|" * len(t.header))
            out += ["| " + " | ".join(r) + " |" for r in t.rows]
            out.append("")
        for p in s.notes:
            out += [p, ""]
        for src, cap in s.images:
            out += [f"![{cap}]({src})", ""]
    return "\n".join(out)


def render_html(title: str, secs: list[Section]) -> str:
    e = html.escape
    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
           "color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em}"
           "td,th{border:1px solid #bbb;padding:4px 8px;text-align:left}th{background:#eee}"
           "caption{font-weight:bold;text-align:left;padding:4px 0}"
           "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}")
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>{e(title)}</title><style>{css}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in secs:
        out.append(f"<h2>{e(s.title)}</h2>")
        out += [f"<p>{e(p)}</p>" for p in s.text]
        for t in s.tables:
            out.append("<table>" + (f"<caption>{e(t.caption)}</caption>" if t.caption else ""))
            out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in t.rows]
            out.append("</table>")
        out += [f"<p>{e(p)}</p>" for p in s.notes]
        for src, cap in s.images:
            out.append(f"<figure><img src='{e(src)}' alt='{e(cap)}'>"
                       f"<figcaption>{e(cap)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


@dataclass
class Written:
    """What :func:`write_report` wrote, and whether every computed statement holds."""

    paths: list[Path]
    all_hold: bool
    conclusion: list[str]


def write_report(out: Path) -> Written:
    """Write DIR/report/ from the files the demo steps wrote in `out` (timings: timing.json,
    every step but the report itself)."""
    out = Path(out)
    rd = out / "report"
    fd = rd / "figures"
    data = gather(out)
    timing_path = out / "timing.json"
    timing = [t for t in (_load(timing_path)["steps"] if timing_path.exists() else [])
              if t["name"] != "report"]
    fd.mkdir(parents=True, exist_ok=True)
    figs: dict[str, str] = {}
    for name, src in (("tuning", out / "db" / "tuning.png"),
                      ("disturbance", out / "db" / "disturbance.png"),
                      ("stuck", out / "db" / "stuck.png"),
                      ("accuracy_hist", out / "evaluate" / "accuracy_hist.png"),
                      ("boundary_map", out / "evaluate" / "boundary_map.png")):
        shutil.copyfile(src, fd / f"{name}.png")
        figs[name] = f"figures/{name}.png"
    fig_mc_vs_measured(out, data, fd / "mc_vs_measured.png")
    fig_readback(out, data, fd / "readback.png")
    fig_timing(timing, fd / "timing.png")
    figs.update(mc_vs_measured="figures/mc_vs_measured.png", readback="figures/readback.png",
                timing="figures/timing.png")
    secs = build_sections(data, timing, figs)
    title = "xbarlab demo: from a simulated station to a transferred network"
    (rd / "report.md").write_text(render_md(title, secs))
    (rd / "index.html").write_text(render_html(title, secs))
    data["timing"] = timing
    write_json(rd / "report.json", data)
    paths = [rd / "index.html", rd / "report.md", rd / "report.json",
             *(rd / f for f in figs.values())]
    return Written(paths, bool(data["claims"]["all_hold"]), conclusion(data))
