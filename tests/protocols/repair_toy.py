"""A 2-4-1 network on 4x4 tiles, a data set it separates, a chip with stuck devices: the
repair tests' fixture, imported by the tests and by the subprocess they kill."""

import numpy as np

from protocols.repair import RepairConfig, RepairData
from protocols.tuning import TuneConfig
from simulator.chip import VirtualChip
from simulator.config import CrossbarConfig
from simulator.direct_rig import SimulatedRig
from training.export import plan_from_weights


def plan():
    w = [np.array([[3.0, -2.0], [-2.5, 2.0], [1.5, 1.5], [-1.0, 2.5]]),
         np.array([[2.5, -3.0, 1.5, -2.0]])]
    b = [np.array([-0.5, 0.3, -1.5, 0.2]), np.array([0.4])]
    return plan_from_weights(w, b, g_min=100e-6, g_max=400e-6, tile_rows=4, tile_cols=4,
                             meta={"dataset": "toy"})

def logit(x):
    """The software network's output on inputs x (its label: > 0)."""
    p = plan()
    h = 1 / (1 + np.exp(-(x @ p.weights[0].T + p.biases[0])))
    return (h @ p.weights[1].T + p.biases[1])[:, 0]


def data():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (160, 2))
    y = (logit(x) > 0).astype(np.int64)
    return RepairData(refit=(x[:80], y[:80]), repair=(x[80:120], y[80:120]),
                      test=(x[120:], y[120:]))

def chip(seed=5):
    cfg = CrossbarConfig(rows=4, cols=4, stuck_hrs_rate=0.04, stuck_lrs_rate=0.0)
    return VirtualChip({f"x{t}": cfg for t in range(plan().n_tiles)}, seed=seed)

CONFIG = RepairConfig(tune=TuneConfig(algorithm="fast", max_pulses=60), max_rounds=4,
                      retune_devices=3, refit_points=60)


class HarshRig(SimulatedRig):
    """A write pulse also hits the rest of its row at 0.9 of its amplitude (a half-select far
    worse than V/3): a round that pulses raises the measured loss whatever the chip's seed, so
    the rollback tests do not hang on one chip's chaos."""

    def _pulse_only(self, row, col, volts, seconds):
        super()._pulse_only(row, col, volts, seconds)
        v = np.zeros(self.crossbar.shape)
        v[row] = 0.9 * volts
        v[row, col] = 0.0
        self.crossbar.apply_device_voltages(v, seconds)


def assert_gradient_matches(m, g, devices):
    """MeasuredModel `m`'s analytic loss gradient at `g` equals central differences on
    `devices`."""
    import pytest

    _, grad = m.gradient(g)
    eps = 1e-10
    for dev in devices:
        e = np.zeros(g.size)
        e[dev] = eps
        num = (m.score(g + e).loss - m.score(g - e).loss) / (2 * eps)
        assert num == pytest.approx(grad[dev], rel=1e-4, abs=1e-3)
