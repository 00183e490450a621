"""Validated parameters of the simulated crossbar and of the virtual clock (SI units throughout).

Defaults are the TiO2 model of physics.md §3.3 (device), §5 (electrics) and §6.1 (latencies),
with the device values that `xbarlab sim calibrate` moves set by the calibration against the
published database (docs/simulator.md, "Calibration"); the names and units are the interface.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.retention import RetentionParams

_STRICT = ConfigDict(extra="forbid", frozen=True)


class DeviceParams(BaseModel):
    """Per-pulse soft-threshold model of one TiO2 device (physics.md §3.2-3.3)."""

    model_config = _STRICT

    # -- state-dependent thresholds (R = 1 / (G + Gv) in ohm) ------------------------------
    r_s0: float = Field(24580.0, description="SET boundary offset R_s0 [ohm]: "
                        "Vth_set = (R_s0 - R) / k_s")
    k_s: float = Field(13932.0, gt=0, description="SET boundary slope k_s [ohm/V]")
    r_r0: float = Field(-9000.0, description="RESET boundary offset R_r0 [ohm]: "
                        "|Vth_reset| = (R - R_r0) / k_r")
    k_r: float = Field(10000.0, gt=0, description="RESET boundary slope k_r [ohm/V]")

    # -- soft exponential kinetics ----------------------------------------------------------
    v0_set: float = Field(0.08, gt=0, le=1.0, description="SET softness V0s [V]")
    v0_reset: float = Field(0.215, gt=0, le=1.0, description="RESET softness V0r [V] "
                            "(main knob of the V/3 negative tail; physics.md 0.17, range "
                            "0.15-0.20; calibrated: 0.215)")
    g0_set: float = Field(0.6e-6, gt=0, le=1e-3,
                          description="SET step at threshold for a t_ref pulse [S]")
    g0_reset: float = Field(0.6e-6, gt=0, le=1e-3,
                            description="RESET step magnitude at threshold for a t_ref pulse [S]")
    t_ref: float = Field(200e-9, gt=0, description="reference pulse width of g0 [s]; "
                         "steps are linear in width")
    max_step_fraction: float = Field(0.5, gt=0, le=1.0,
                                     description="a RESET pulse removes at most this fraction of G")

    # -- variability -----------------------------------------------------------------------
    sigma_c2c: float = Field(0.5, ge=0, le=3.0, description="cycle-to-cycle lognormal sigma "
                             "of every step (one draw per device per pulse)")
    sigma_vth: float = Field(0.11, ge=0, le=1.0, description="device-to-device threshold "
                             "offsets delta_s, delta_r, independent normal sigma [V] "
                             "(physics.md 0.07, range 0.05-0.1; calibrated: 0.11)")
    sigma_g0: float = Field(0.3, ge=0, le=3.0,
                            description="device-to-device lognormal sigma of g0_set and g0_reset")
    sigma_volatile: float = Field(0.7, ge=0, le=3.0, description="device-to-device lognormal "
                                  "sigma of the volatile cap psi (per-device relaxation, hence "
                                  "per-device tuning offset; calibrated: 0.7)")

    # -- physical limits ---------------------------------------------------------------------
    g_min: float = Field(5e-6, gt=0, description="lowest conductance [S]")
    g_max: float = Field(700e-6, gt=0, description="highest conductance [S]")

    # -- post-SET volatile relaxation -------------------------------------------------------
    volatile_fraction: float = Field(0.05, ge=0, le=1.0, description="share phi of each "
                                     "positive step that is volatile (goes to Gv)")
    volatile_cap: float = Field(0.0075, ge=0, le=1.0,
                                description="cap psi of Gv as a fraction of G (median over "
                                "devices; physics.md 0.011, calibrated: 0.0075)")
    tau_relax: float = Field(21.5, gt=0, description="relaxation time constant of Gv [s] "
                             "(physics.md model value 5 s; calibrated: 21.5 s)")

    # -- reads -----------------------------------------------------------------------------
    read_noise_rel: float = Field(0.0015, ge=0, le=0.5,
                                  description="relative read noise (sigma, of the current)")
    read_noise_abs: float = Field(86e-9, ge=0, le=1e-5,
                                  description="absolute read noise sigma [A] (physics.md 90 nA "
                                  "= 0.45 uS at 0.2 V; calibrated: 86 nA)")
    v_nl: float = Field(0.81, gt=0, description="sinh I-V scale Vnl [V]: "
                        "I = G * v_ref * sinh(V/Vnl) / sinh(v_ref/Vnl)")
    v_ref: float = Field(0.2, gt=0, description="voltage at which G is defined [V] (I = G*v_ref)")

    # -- slow conductance fluctuations (random telegraph noise) ------------------------------
    # defaults: calibrated to the published database (docs/simulator.md, "Calibration")
    rtn_count: int = Field(16, ge=0, le=64, description="two-state fluctuators (defects near the "
                           "filament that trap and release charge or hop) per working device; "
                           "0 = off (fixed at 16, not fitted)")
    rtn_amplitude: float = Field(0.019, ge=0, le=0.5, description="median relative conductance "
                                 "change of one fluctuator at rtn_g_ref (fraction of G; "
                                 "calibrated: 0.019)")
    rtn_sigma: float = Field(1.08, ge=0, le=3.0, description="lognormal spread of the fluctuator "
                             "amplitudes (heavy tails; calibrated: 1.08)")
    rtn_exponent: float = Field(0.54, ge=0, le=2.0, description="relative amplitude scales as "
                                "(G / rtn_g_ref)^-rtn_exponent (RTN amplitude rises with R; "
                                "calibrated: 0.54)")
    rtn_g_ref: float = Field(100e-6, gt=0, description="conductance at which rtn_amplitude "
                             "holds [S]")
    rtn_tau_min: float = Field(3e4, gt=0, description="shortest mean dwell time of a "
                               "fluctuator [s] (dwell times log-uniform in [min, max]; chosen "
                               "well above the minute of a settled read)")
    rtn_tau_max: float = Field(1e7, gt=0, description="longest mean dwell time [s] (a cut-off "
                               "beyond every campaign)")
    dc_volts_per_decade: float = Field(0.05, gt=0, le=1.0, description="DC holds longer than "
                                       "t_ref: the voltage that switches a device within a hold "
                                       "falls by this much per decade of hold time (the pulse "
                                       "law's exponential would lower it by V0*ln(10)); 0.05 V "
                                       "is the most a memory read at 0.2 V and written at ~1 V "
                                       "in 200 ns allows (docs/simulator.md, DC stress)")
    rtn_stress_time: float = Field(1.6e5, ge=0, description="dwell time [s] a pulse ages every "
                                   "fluctuator of the device by, per unit of the pulse's ionic "
                                   "drive (t/t_ref * exp((|V| - Vth)/V0), the factor of the "
                                   "switching step): stress-stimulated hopping (calibrated: "
                                   "1.6e5)")

    # -- initial (forming-free) and stuck states --------------------------------------------
    init_median: float = Field(120e-6, gt=0, description="median initial conductance [S]")
    init_sigma: float = Field(0.3, ge=0, le=3.0, description="lognormal sigma of initial G")
    stuck_lrs_mean: float = Field(573e-6, gt=0, description="stuck-LRS mean conductance [S]")
    stuck_lrs_std: float = Field(99e-6, ge=0, description="stuck-LRS std of conductance [S]")
    stuck_hrs_min: float = Field(10e-6, gt=0, description="stuck-HRS uniform lower bound [S]")
    stuck_hrs_max: float = Field(100e-6, gt=0, description="stuck-HRS uniform upper bound [S]")

    # -- electroforming (devices configured as unformed, CrossbarConfig.unformed_rate) --------
    g_unformed: float = Field(0.05e-6, gt=0, description="conductance of an unformed device "
                              "[S] (it does not switch until formed)")
    v_form_mean: float = Field(1.8, gt=0, le=10, description="mean forming voltage [V] "
                               "(positive on the word line; an assumption, docs/simulator.md)")
    v_form_std: float = Field(0.1, ge=0, le=2, description="device-to-device std of the "
                              "forming voltage [V]")

    # -- retention (simulator/retention.py) --------------------------------------------------
    retention: RetentionParams = Field(default_factory=RetentionParams,
                                       description="drift of the programmed conductance with "
                                       "time since programming, retention failures")

    @model_validator(mode="after")
    def _ordered(self) -> DeviceParams:
        if not self.g_min < self.g_max:
            raise ValueError("g_min must be below g_max")
        if not self.stuck_hrs_min <= self.stuck_hrs_max:
            raise ValueError("stuck_hrs_min must not exceed stuck_hrs_max")
        if not self.rtn_tau_min <= self.rtn_tau_max:
            raise ValueError("rtn_tau_min must not exceed rtn_tau_max")
        return self


class LineFault(BaseModel):
    """A wiring fault of the array (docs/simulator.md, "Line faults").

    `open`: `line` is cut `at` segments from its driven end (0: the whole line is cut off its
    driver and floats; k: the devices from position k on are cut off). `short`: `line` and
    `other` are joined by `ohms` at position `at` along them (a row and a column: at their
    crossing, so `at` is not used)."""

    model_config = _STRICT
    kind: Literal["open", "short"]
    line: tuple[Literal["row", "col"], int]
    other: tuple[Literal["row", "col"], int] | None = None
    at: int = Field(0, ge=0, description="position along the line (crosspoints from the "
                    "driven end)")
    ohms: float = Field(10.0, gt=0, le=1e9, description="resistance of a short [ohm]")

    @model_validator(mode="after")
    def _other(self) -> LineFault:
        if (self.kind == "short") != (self.other is not None):
            raise ValueError("a short names `other`, an open does not")
        if self.other is not None and tuple(self.other) == tuple(self.line):
            raise ValueError("a short joins two different lines")
        return self


class CrossbarConfig(BaseModel):
    """One passive N x M crossbar: geometry, wiring resistances, stuck rates, device model."""

    model_config = _STRICT

    rows: int = Field(8, ge=1, le=256, description="word lines")
    cols: int = Field(8, ge=1, le=256, description="bit lines")
    device: DeviceParams = Field(default_factory=DeviceParams)
    r_line: float = Field(0.75, ge=0, le=1e3, description="resistance of one line segment "
                          "between neighbouring crosspoints [ohm]")
    r_source: float = Field(2.0, ge=0, le=1e4, description="source / sense resistance at each "
                            "driven line end [ohm]")
    stuck_hrs_rate: float = Field(0.005, ge=0, le=1, description="fraction of stuck-HRS devices")
    stuck_lrs_rate: float = Field(0.005, ge=0, le=1, description="fraction of stuck-LRS devices")
    unformed_rate: float = Field(0.0, ge=0, le=1, description="fraction of the working devices "
                                 "that start unformed (0: forming-free, as the published "
                                 "devices)")
    faults: list[LineFault] = Field(default_factory=list, description="injected open and short "
                                    "line faults")

    @model_validator(mode="after")
    def _rates(self) -> CrossbarConfig:
        if self.stuck_hrs_rate + self.stuck_lrs_rate > 1:
            raise ValueError("stuck_hrs_rate + stuck_lrs_rate must not exceed 1")
        for f in self.faults:
            for kind, i in (f.line, f.other) if f.other is not None else (f.line,):
                n = self.rows if kind == "row" else self.cols
                if not 0 <= i < n:
                    raise ValueError(f"fault on {kind} {i}: outside the {self.rows}x{self.cols} "
                                     "crossbar")
            along = self.cols if f.line[0] == "row" else self.rows
            if f.at >= along:
                raise ValueError(f"fault at position {f.at}: the {f.line[0]} has {along} "
                                 "crosspoints")
        return self


class LatencyConfig(BaseModel):
    """Instrument time charged to the virtual clock per operation (physics.md §6.1)."""

    model_config = _STRICT

    round_trip: float = Field(3e-3, ge=0, le=10, description="one instrument execution beyond "
                              "its messages and its waveform: arming the sequencer, starting it "
                              "and the host seeing it finish [s] (physics.md: 2-5 ms optimistic "
                              "per closed-loop step)")
    relay_switch: float = Field(15e-3, ge=0, le=10, description="707B reselection: relays "
                                "settled after a changed selection [s]")
    session_open: float = Field(0.5, ge=0, le=60, description="opening an instrument session [s]")
    gpib_cmd: float = Field(1e-3, ge=0, le=10, description="one message exchange with an "
                            "instrument (command + ACK/reply, or a WGFMU library call that "
                            "reaches the instrument) [s]")
    pulse_edge: float = Field(10e-9, ge=0, le=1e-3, description="rise = fall time of a pulse [s]")
    read_time: float = Field(10e-6, ge=0, le=1, description="one read incl. settling [s]")
    line_frequency: float = Field(60.0, ge=45, le=65, description="mains frequency [Hz]: one "
                                  "power-line cycle (PLC) of SMU integration is 1/line_frequency")
    data_rate: float = Field(1e6, gt=0, le=1e10, description="bytes per second of a data reply "
                             "(a KXCI `DO` list of readings) [B/s] (assumed; not measured)")
    smu_settle: float = Field(1e-3, ge=0, le=1, description="SMU source settling before each "
                              "DC measurement [s] (assumed; not from a datasheet)")
