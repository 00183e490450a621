"""Retention: how a programmed conductance moves with time after programming (docs/simulator.md).

Model, per working device, with its retention clock started by the last pulse that re-programmed
it (changed its nonvolatile G by more than `reprogram_fraction` of G) at time t_p, when its
conductance was G_p. The drift since then is

    age  a    = t - t_p
    normal:   D(t) = nu_i * G_p * log10(1 + a / t0)
    failing:  D(t) = max(G_sat_i - G_p, 0) * (1 - exp(-(a / tau_i) ** k))
              (a retention failure: a device of the failing population programmed at or above
              fail_g_min, drifting up towards its G_sat_i from the stuck-LRS population)

and the conductance G(t) = max(G_e + D(t) - D(t_e), g_min), where G_e is the conductance the
last pulse left at t_e (for the re-programming pulse itself G_e = G_p, D(t_e) = 0). So smaller
changes (half-select stress) add to the drifting state without restarting its clock. Device
constants, drawn once from the crossbar's own retention stream: nu_i ~ N(drift_mean,
drift_std) [fraction per decade], failing with probability fail_rate, G_sat_i ~ N(fail_g_mean,
fail_g_std) capped at g_max, tau_i = fail_tau * LogNormal(0, fail_tau_sigma). A device never
re-programmed since construction (as fabricated) and stuck devices do not drift (G_p = 0 marks
"never programmed").

Exact and lazy: G(t) is a closed form of (G_e, D(t_e), G_p, t_p) and t, which change only when a
pulse changes G; reading at any times in between gives the same values, bit for bit, as not
reading.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: spawn-key element of the retention stream: the crossbar's seed sequence extended by it, so
#: the main stream (and every result drawn from it) is the one of before retention existed
_STREAM = 0x52_45_54  # "RET"
_LN10 = math.log(10.0)

#: state arrays (per device) kept in a crossbar's state_dict and chip file, with the value a
#: state written before retention existed gets (no drift, nothing programmed)
ARRAYS = ("ret_nu", "ret_fail", "ret_gsat", "ret_tau", "ret_gp", "ret_tp", "ret_g", "ret_d")


class RetentionParams(BaseModel):
    """Drift of the programmed conductance with time (SI units; fractions per decade)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drift_mean: float = Field(-0.003, ge=-0.2, le=0.2, description="mean relative drift per "
                              "decade of (1 + age/t0) [fraction] (assumption: see "
                              "docs/simulator.md)")
    drift_std: float = Field(0.006, ge=0, le=0.2, description="device-to-device std of that "
                             "rate [fraction per decade]")
    t0: float = Field(300.0, gt=0, le=1e7, description="onset of the log-time drift [s]: "
                      "a device read t0 after programming has drifted log10(2) decades")
    reprogram_fraction: float = Field(1e-3, gt=0, le=1, description="a pulse changing G by "
                                      "more than this fraction of G restarts the device's "
                                      "retention clock; smaller changes (half-select stress) "
                                      "do not")
    fail_rate: float = Field(0.005, ge=0, le=1, description="fraction of working devices that "
                             "fail retention (drift up) when programmed at or above fail_g_min")
    fail_g_min: float = Field(250e-6, gt=0, le=1e-2, description="lowest programmed "
                              "conductance at which a failing device drifts up [S]")
    fail_g_mean: float = Field(573e-6, gt=0, le=1e-2, description="mean conductance failing "
                               "devices drift towards [S] (the stuck-LRS population)")
    fail_g_std: float = Field(99e-6, ge=0, le=1e-2, description="its device-to-device std [S]")
    fail_tau: float = Field(86400.0, gt=0, le=1e9, description="median time constant of the "
                            "up-drift [s]")
    fail_tau_sigma: float = Field(1.0, ge=0, le=5, description="lognormal sigma of that time "
                                  "constant over devices")
    fail_shape: float = Field(1.0, gt=0, le=10, description="shape k of the up-drift "
                              "1 - exp(-(a/tau)^k)")

    @model_validator(mode="after")
    def _rate(self) -> RetentionParams:
        if self.fail_rate > 0 and self.fail_g_mean <= self.fail_g_min:
            raise ValueError("fail_g_mean must lie above fail_g_min (failures drift up)")
        return self

    @property
    def active(self) -> bool:
        return bool(self.drift_mean or self.drift_std or self.fail_rate)


def stream(seed: int | np.random.SeedSequence | None) -> np.random.Generator:
    """The retention generator of a crossbar built from `seed` (independent of its main one)."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return np.random.default_rng(np.random.SeedSequence(ss.entropy,
                                                        spawn_key=(*ss.spawn_key, _STREAM)))


class Retention:
    """The retention state of one crossbar (arrays of its shape) and its closed form."""

    def __init__(self, params: RetentionParams, g_min: float, arrays: dict[str, np.ndarray]):
        self.p, self.g_min = params, float(g_min)
        self.nu = np.asarray(arrays["ret_nu"], float)
        self.fail = np.asarray(arrays["ret_fail"], float) != 0
        self.gsat = np.asarray(arrays["ret_gsat"], float)
        self.tau = np.asarray(arrays["ret_tau"], float)
        self.gp = np.array(arrays["ret_gp"], float)      # G_p (0: never programmed)
        self.tp = np.array(arrays["ret_tp"], float)      # t_p
        self.g_e = np.array(arrays["ret_g"], float)      # G_e: what the last pulse left
        self.d_e = np.array(arrays["ret_d"], float)      # D(t_e)
        self._inv_t0 = 1.0 / params.t0
        self._size1 = self.nu.size == 1
        self._derive()

    @classmethod
    def new(cls, params: RetentionParams, g_min: float, g_max: float,
            seed: int | np.random.SeedSequence | None, G: np.ndarray, stuck: np.ndarray,
            now: float) -> Retention:
        """Fresh devices (nothing programmed yet), constants drawn from the own stream in a
        fixed order: rate, failing, saturation conductance, time constant."""
        rng, shape = stream(seed), G.shape
        p = params
        nu = p.drift_mean + p.drift_std * rng.standard_normal(shape)
        fail = (rng.random(shape) < p.fail_rate) & (stuck == 0)
        gsat = np.minimum(p.fail_g_mean + p.fail_g_std * rng.standard_normal(shape), g_max)
        tau = p.fail_tau * np.exp(p.fail_tau_sigma * rng.standard_normal(shape))
        arrays = {n: cls.missing(n, G, now) for n in ARRAYS}
        arrays.update(ret_nu=nu, ret_fail=fail, ret_gsat=gsat, ret_tau=tau)
        return cls(params, g_min, arrays)

    @staticmethod
    def missing(name: str, G: np.ndarray, t: float) -> np.ndarray:
        """The value of a state array that a state written before retention existed lacks: no
        drift and nothing programmed, so such a chip continues exactly as before."""
        if name == "ret_g":
            return np.array(G, float)
        if name == "ret_tp":
            return np.full(G.shape, float(t))
        return np.full(G.shape, 1.0 if name == "ret_tau" else 0.0)

    def state(self) -> dict[str, np.ndarray]:
        return {"ret_nu": self.nu.copy(), "ret_fail": self.fail.astype(float),
                "ret_gsat": self.gsat.copy(), "ret_tau": self.tau.copy(),
                "ret_gp": self.gp.copy(), "ret_tp": self.tp.copy(), "ret_g": self.g_e.copy(),
                "ret_d": self.d_e.copy()}

    def _derive(self) -> None:
        """Per-device coefficients of the closed form (after every re-programming)."""
        p = self.p
        self.active = p.active and bool(self.gp.any())
        self._coef = self.nu * self.gp / _LN10   # log10(1 + x) = log1p(x) / ln 10
        up = self.fail & (self.gp >= p.fail_g_min) & (self.gsat > self.gp)
        self._coef[up] = 0.0
        self._up = np.flatnonzero(up)
        self._amp = (self.gsat - self.gp).ravel()[self._up]
        self._tp_up = self.tp.ravel()[self._up]
        self._tau_up = self.tau.ravel()[self._up]

    # -- the closed form ---------------------------------------------------------------------
    def _drift(self, now: float, out: np.ndarray) -> np.ndarray:
        """D(now) of every device, into `out`."""
        np.subtract(now, self.tp, out=out)
        out *= self._inv_t0
        np.log1p(out, out=out)
        out *= self._coef
        if self._up.size:
            out.reshape(-1)[self._up] = self._amp * -np.expm1(
                -((now - self._tp_up) / self._tau_up) ** self.p.fail_shape)
        return out

    def _drift_one(self, i: int, now: float) -> float:
        """D(now) of the device at flat index i."""
        if i in self._up:
            k = int(np.flatnonzero(self._up == i)[0])
            return float(self._amp[k]) * -math.expm1(
                -((now - float(self._tp_up[k])) / float(self._tau_up[k])) ** self.p.fail_shape)
        return float(self._coef.flat[i]) * math.log1p((now - float(self.tp.flat[i]))
                                                      * self._inv_t0)

    def settle(self, G: np.ndarray, now: float) -> None:
        """Write the conductance at time `now` into G (the crossbar's nonvolatile G)."""
        if not self.active:
            return
        # drift stops at g_min; a device already below it (unformed, at g_unformed) stays there
        if self._size1:
            g_e = float(self.g_e.flat[0])
            g = g_e + (self._drift_one(0, now) - float(self.d_e.flat[0]))
            G.flat[0] = max(g, min(g_e, self.g_min))
            return
        self._drift(now, G)
        G -= self.d_e
        G += self.g_e
        np.maximum(G, np.minimum(self.g_e, self.g_min), out=G)

    # -- pulses ------------------------------------------------------------------------------
    def programmed(self, g_old: np.ndarray, g_new: np.ndarray, now: float) -> None:
        """A pulse moved every device from g_old to g_new at `now`."""
        if not self.p.active:
            return
        again = np.abs(g_new - g_old) > self.p.reprogram_fraction * g_old
        if again.any():
            self.gp[again] = g_new[again]
            self.tp[again] = now
            self._derive()
        if self.active:
            np.copyto(self.g_e, g_new)
            self._drift(now, self.d_e)

    def programmed_one(self, G: np.ndarray, index: tuple[int, int], g_old: float,
                       now: float) -> None:
        """`programmed` for a pulse that moved the device at `index` alone (the scalar path of
        single-device pulses); G is the crossbar's G after it."""
        g_new = float(G[index])
        if not self.p.active or g_new == g_old:
            return
        was = self.active
        if abs(g_new - g_old) > self.p.reprogram_fraction * g_old:
            self.gp[index] = g_new
            self.tp[index] = now
            self._derive()
        if not self.active:
            return
        if not was:  # the first device programmed: every other one starts from where it is
            np.copyto(self.g_e, G)
            self.d_e.fill(0.0)
            return
        i = int(np.ravel_multi_index(index, self.gp.shape))
        self.g_e.flat[i] = g_new
        self.d_e.flat[i] = self._drift_one(i, now)

    # -- for tests and documentation ---------------------------------------------------------
    def expected(self, t: float | np.ndarray, index: tuple[int, int]) -> np.ndarray:
        """The closed form of device `index` at times t (not before its last pulse), written as
        the module docstring has it; tests compare what a rig reads against it."""
        t = np.asarray(t, float)
        p, gp = self.p, float(self.gp[index])
        base = float(self.g_e[index]) - float(self.d_e[index])
        age = t - float(self.tp[index])
        if gp == 0:
            d = np.zeros(t.shape)
        elif self.fail[index] and gp >= p.fail_g_min:
            amp = max(float(self.gsat[index]) - gp, 0.0)
            d = amp * (1 - np.exp(-(age / float(self.tau[index])) ** p.fail_shape))
        else:
            d = float(self.nu[index]) * gp * np.log10(1 + age / p.t0)
        return np.maximum(base + d, self.g_min)
