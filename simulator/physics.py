"""Pure per-pulse device physics (physics.md §3.2), vectorised over devices, plus a scalar path.

All quantities SI: conductances in S, voltages in V, times in s. Nothing here draws random
numbers or touches a clock: the caller passes the cycle-to-cycle factor `xi` and the elapsed time,
so every function is deterministic and testable on its own.

Model, per device with nonvolatile G, volatile excess Gv and D2D constants (ds, dr, g0s, g0r):

    R          = 1 / (G + Gv)
    Vth_set    = (R_s0 - R) / k_s + ds            (rises with G)
    Vth_reset  = (R - R_r0) / k_r + dr            (magnitude; rises as G falls)
    SET   V>0: dG = +g0s * (t/t_ref) * exp((V   - Vth_set)  / V0s) * xi * clip((Gmax-G)/Gmax, 0, 1)
    RESET V<0: dG = -g0r * (t/t_ref) * exp((|V| - Vth_reset)/ V0r) * xi * clip((G-Gmin)/Gmax, 0, 1)
    dG         = clip(dG, -max_step_fraction*G, Gmax - G)
    a share phi of a positive dG goes to Gv (Gv <= psi*G, the excess stays in G; psi per device);
    Gv decays as exp(-dt/tau)

Slow fluctuations (random telegraph noise): each device carries `rtn_count` two-state
fluctuators j with relative amplitude a_j and state s_j in {0, 1}, switching at random with mean
dwell time tau_j; a read sees (G + Gv) * (1 + sum_j a_j (s_j - 1/2) * ((G+Gv)/g_ref)^-beta).
A pulse ages every fluctuator of the pulsed device by rtn_stress_time * drive seconds of its
dwell time, drive = (t/t_ref) exp((|V| - Vth)/V0) being the factor of the switching step: the
ionic hopping that switches the device also rearranges the defects near the filament, so
half-select stress switches fluctuators too. The fluctuators never change G or Gv.
"""

from __future__ import annotations

import math

import numpy as np

from simulator.config import DeviceParams

# exp() arguments are capped here: far above threshold the step is clipped anyway, and the cap
# keeps overflow warnings away for devices whose SET threshold is negative (G below ~40 uS).
_EXP_CAP = 60.0
_FLUCT_FLOOR = 0.1


def vth_set(g_total, p: DeviceParams, ds=0.0):
    """SET threshold [V] at total conductance g_total [S] (+ the device's offset ds)."""
    return (p.r_s0 - 1.0 / g_total) / p.k_s + ds


def vth_reset(g_total, p: DeviceParams, dr=0.0):
    """Magnitude of the RESET threshold [V] at total conductance g_total [S]."""
    return (1.0 / g_total - p.r_r0) / p.k_r + dr


def pulse_update(G: np.ndarray, Gv: np.ndarray, v: np.ndarray, seconds: float,
                 ds: np.ndarray, dr: np.ndarray, g0s: np.ndarray, g0r: np.ndarray,
                 xi: np.ndarray, frozen: np.ndarray | None, p: DeviceParams,
                 psi: np.ndarray | None = None,
                 drive_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One pulse of amplitude v[i] and width `seconds` on every device; returns new (G, Gv).

    `frozen` marks devices that do not respond (stuck); they keep G and Gv exactly.
    Devices with v == 0 do not change. `psi`: per-device volatile cap (default
    p.volatile_cap for all). `drive_out`, when given, receives each device's ionic drive (see
    `drive_scalar`; computed here anyway, so the fluctuators' stress costs nothing extra).
    """
    gt = G + Gv
    r = 1.0 / gt
    tp = seconds / p.t_ref
    # one exponent per device: the SET branch where v > 0, the RESET branch elsewhere
    pos = v > 0.0
    arg = np.where(pos,
                   (v - ((p.r_s0 - r) / p.k_s + ds)) / p.v0_set,
                   (np.abs(v) - ((r - p.r_r0) / p.k_r + dr)) / p.v0_reset)
    np.minimum(arg, _EXP_CAP, out=arg)
    np.exp(arg, out=arg)
    if drive_out is not None:
        np.multiply(arg, tp, out=drive_out)
        drive_out[v == 0.0] = 0.0
    gmax = p.g_max
    hi = gmax - G
    w = np.where(pos, hi, G - p.g_min)
    # clips as two ufuncs: np.clip's Python wrapper costs more than the work on 64 devices
    np.maximum(w, 0.0, out=w)
    np.minimum(w, gmax, out=w)
    dg = np.where(pos, g0s, -g0r)
    dg *= tp / gmax
    dg *= arg
    dg *= xi
    dg *= w
    np.maximum(dg, -p.max_step_fraction * G, out=dg)
    # after the clip: a stuck-LRS device may sit above g_max, where the clip would move it
    np.minimum(dg, hi, out=dg)
    if not v.all():
        dg[v == 0.0] = 0.0
    if frozen is not None:
        dg[frozen] = 0.0
    # SET steps: a share phi is volatile, Gv capped at psi*G; the excess over the cap stays
    # nonvolatile, so a read right after the pulse always sees the whole step.
    up = dg > 0.0
    cap = p.volatile_cap if psi is None else psi
    gv_new = np.where(up, np.minimum(Gv + p.volatile_fraction * dg, cap * (G + dg)), Gv)
    g_new = G + dg + (Gv - gv_new)
    return g_new, gv_new


def pulse_update_scalar(G: float, Gv: float, v: float, seconds: float, ds: float, dr: float,
                        g0s: float, g0r: float, xi: float, p: DeviceParams,
                        psi: float | None = None) -> tuple[float, float]:
    """`pulse_update` for one working device in plain Python floats (the fast single-device path).

    Same equations, same results to rounding; about ten times faster than numpy on size-1 arrays.
    """
    if v == 0.0:
        return G, Gv
    r = 1.0 / (G + Gv)
    gmax = p.g_max
    if v > 0.0:
        arg = (v - ((p.r_s0 - r) / p.k_s + ds)) / p.v0_set
        w = (gmax - G) / gmax
        g0 = g0s
    else:
        arg = (-v - ((r - p.r_r0) / p.k_r + dr)) / p.v0_reset
        w = (G - p.g_min) / gmax
        g0 = -g0r
    w = 0.0 if w < 0.0 else (1.0 if w > 1.0 else w)
    dg = g0 * (seconds / p.t_ref) * math.exp(arg if arg < _EXP_CAP else _EXP_CAP) * xi * w
    lo = -p.max_step_fraction * G
    hi = gmax - G
    dg = lo if dg < lo else (hi if dg > hi else dg)
    if dg > 0.0:
        cap = p.volatile_cap if psi is None else psi
        gv_new = min(Gv + p.volatile_fraction * dg, cap * (G + dg))
        return G + dg + (Gv - gv_new), gv_new
    return G + dg, Gv


def dc_gamma(v: np.ndarray, p: DeviceParams) -> np.ndarray:
    """Exponent of the DC time law per device: gamma = S / (V0 ln 10) of the branch that
    voltage `v` drives (S = p.dc_volts_per_decade, at most 1)."""
    return np.where(np.asarray(v) > 0.0,
                    min(1.0, p.dc_volts_per_decade / (p.v0_set * math.log(10))),
                    min(1.0, p.dc_volts_per_decade / (p.v0_reset * math.log(10))))


def acceleration(G, Gv, v, ds, dr, p: DeviceParams) -> np.ndarray:
    """exp((|V| - Vth) / V0) per device, SET branch where v > 0 and RESET elsewhere, 0 where
    v == 0: the voltage factor of the switching step (`pulse_update`), capped like it."""
    v = np.asarray(v, dtype=float)
    r = 1.0 / (G + Gv)
    arg = np.where(v > 0.0, (v - ((p.r_s0 - r) / p.k_s + ds)) / p.v0_set,
                   (np.abs(v) - ((r - p.r_r0) / p.k_r + dr)) / p.v0_reset)
    return np.where(v == 0.0, 0.0, np.exp(np.minimum(arg, _EXP_CAP)))


def dc_width(dose, accel, seconds: float, v, p: DeviceParams) -> np.ndarray:
    """Pulse width [s] per device equivalent to holding device voltages `v` for `seconds`,
    after a DC stress `dose` on the same branch (the sum of (width / t_ref) * accel of the
    holds of the device's DC stress history, `Crossbar.start_dc_hold`; `accel` from
    `acceleration` at the present level).

    A fresh hold is the pulse law up to t_ref (width = time) and beyond it a width
    t_ref (t / t_ref)^gamma (`dc_gamma`): the voltage that switches within a hold falls by
    S per decade of time. A hold continues from the age at which the present level would have
    given `dose`: on the voltage-time law this is Miner's rule, the consumed fractions
    t / tau(V) of the switching time add up over levels, so a sequence of levels never
    stresses more than one hold of the same length at its highest level."""
    tr = p.t_ref
    g = dc_gamma(v, p)
    accel = np.asarray(accel, dtype=float)
    live = accel > 0.0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        x0 = np.where(live, np.asarray(dose, dtype=float) / np.where(live, accel, 1.0), 0.0)
        u0 = np.where(x0 <= 1.0, x0, np.exp(np.log(x0) / g))   # equivalent age / t_ref
        du = seconds / tr
        u1 = u0 + du
        young = np.where(u1 <= 1.0, u1, u1 ** g) - x0          # from an age below t_ref
        old = x0 * np.expm1(g * np.log1p(du / u0))             # exact and stable beyond it
        w = np.where(u0 <= 1.0, young, np.where(np.isfinite(u0), old, 0.0))
    return np.where(live, tr * w, 0.0)


def telegraph_odd_flips(elapsed, tau):
    """Probability that a symmetric two-state fluctuator with mean dwell time `tau` switches an
    odd number of times in `elapsed` seconds (so ends in the other state)."""
    return 0.5 * (1.0 - np.exp(-2.0 * np.asarray(elapsed) / tau))


def drive_scalar(G: float, Gv: float, v: float, seconds: float, ds: float, dr: float,
                 p: DeviceParams) -> float:
    """Ionic drive of a pulse on one device: (t/t_ref) * exp((|V| - Vth)/V0), SET branch for
    v > 0 and RESET branch otherwise, 0 for v == 0 -- the factor of the switching step (what
    `pulse_update` returns in `drive_out`)."""
    if v == 0.0:
        return 0.0
    r = 1.0 / (G + Gv)
    if v > 0.0:
        arg = (v - ((p.r_s0 - r) / p.k_s + ds)) / p.v0_set
    else:
        arg = (-v - ((r - p.r_r0) / p.k_r + dr)) / p.v0_reset
    return (seconds / p.t_ref) * math.exp(arg if arg < _EXP_CAP else _EXP_CAP)


def fluctuation_factor(g_total, f, p: DeviceParams):
    """Read conductance over G + Gv for fluctuator sum `f` (sum of amplitude * (state - 1/2)).

    The relative amplitude scales as (G / rtn_g_ref)^-rtn_exponent; floored at 0.1 so that no
    combination of fluctuators makes a conductance vanish."""
    scale = f if p.rtn_exponent == 0 else f * (g_total / p.rtn_g_ref) ** (-p.rtn_exponent)
    return np.maximum(1.0 + scale, _FLUCT_FLOOR)


def relax(Gv, dt: float, tau: float):
    """Volatile excess after `dt` seconds of exponential relaxation."""
    return Gv * math.exp(-dt / tau)


def iv_scale(p: DeviceParams) -> float:
    """Factor s with I(V) = G * s * sinh(V / Vnl): makes I(v_ref) = G * v_ref exactly."""
    return p.v_ref / math.sinh(p.v_ref / p.v_nl)


def device_current(G, V, p: DeviceParams):
    """Current [A] of devices of conductance G [S] (defined at v_ref) under voltage V [V]."""
    return G * iv_scale(p) * np.sinh(np.asarray(V) / p.v_nl)
