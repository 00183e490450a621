"""A small, self-contained device model behind the CrossbarRig seam for protocol unit tests.

It follows the soft-threshold equations of physics.md §3.2 (per device, no crossbar electrics,
no V/3 disturbance) so the tuning logic can be tested without the simulator package.
"""

from __future__ import annotations

import numpy as np
import pytest

from instruments.limits import SafetyLimits
from protocols.rig import CrossbarRig


class ToyRig(CrossbarRig):
    name = "toy"

    def __init__(self, shape=(1, 1), g0=120e-6, seed=0, noise_rel=0.0015, noise_abs=0.45e-6,
                 stuck=None, step=3e-3):
        super().__init__(shape, SafetyLimits())
        self.rng = np.random.default_rng(seed)
        self.G = np.full(shape, float(g0)) if np.isscalar(g0) else np.array(g0, float)
        self.d_set = self.rng.normal(0, 0.07, shape)
        self.d_reset = self.rng.normal(0, 0.07, shape)
        self.noise_rel, self.noise_abs = noise_rel, noise_abs
        self.stuck = np.zeros(shape, bool) if stuck is None else np.asarray(stuck, bool)
        self.t = 0.0
        self.step = step
        self.safe_calls = 0
        self.n_pulses = 0

    @property
    def clock(self):
        return self.t

    def _read_repeated(self, row, col, n):
        self.t += self.step + n * 10e-6
        g = self.G[row, col]
        r = g * (1 + self.noise_rel * self.rng.standard_normal(n)) + self.noise_abs * self.rng.standard_normal(n)
        return np.minimum(r, self.read_settings.ceiling_S)

    def _pulse(self, row, col, volts, seconds):
        self.t += self.step
        self.n_pulses += 1
        if self.stuck[row, col]:
            return
        g = self.G[row, col]
        r = 1.0 / g
        xi = np.exp(0.5 * self.rng.standard_normal())
        if volts > 0:
            vth = (24580 - r) / 13932 + self.d_set[row, col]
            dg = 0.6e-6 * seconds / 200e-9 * np.exp((volts - vth) / 0.08) * xi * max((700e-6 - g) / 700e-6, 0)
        else:
            vth = (r + 9000) / 10000 + self.d_reset[row, col]
            dg = -0.6e-6 * seconds / 200e-9 * np.exp((-volts - vth) / 0.17) * xi * max((g - 5e-6) / 700e-6, 0)
        self.G[row, col] = g + float(np.clip(dg, -0.5 * g, 700e-6 - g))

    def _safe_state(self):
        self.safe_calls += 1


@pytest.fixture
def toy_rig():
    return ToyRig


@pytest.fixture(autouse=True)
def _single_thread_blas():
    # the simulator's small dense solves are far slower with threaded BLAS on a busy 2-core box
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def sim_rig(rows=4, cols=4, seed=0, **xb_kw):
    """A SimulatedRig over a fresh simulated crossbar."""
    from simulator.config import CrossbarConfig
    from simulator.crossbar import Crossbar
    from simulator.direct_rig import SimulatedRig

    return SimulatedRig(Crossbar(CrossbarConfig(rows=rows, cols=cols, **xb_kw), seed=seed))
