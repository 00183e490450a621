"""Repair after transfer: measure the programmed chip, choose corrections under a pulse budget.

Data. Three disjoint roles: the *refit set* (training inputs whose measured hidden activations
the refits are fitted on), the *repair set* (inputs held out of the network's training, on
which every decision and the stopping rule are judged: a network trained on them leaves the
repair nothing to find; `database.datasets.chip_in_the_loop_sets`) and the *test set* (measured before and after, never used to decide).

Each round, from the chip's measured state (read-back conductances ``g`` and the analog
pre-activations of every layer, `protocols.refit.MeasuredModel`), seven kinds of correction are
costed:

``retune``      the devices whose error costs the most: the loss's sensitivity to each
                conductance times the distance to its target (first order), the
                ``retune_devices`` largest gains among devices that can move;
``compensate``  per output that holds a stuck device (its tuning failed): re-fit the rest of
                that output's weights of its layer (the differential partner first, through the
                bounds, then the other inputs and the bias) with the stuck device held where it
                is;
``refit``       re-fit the last layer's weights (and, in a second candidate, every layer's,
                jointly) on the refit set's measured hidden activations (stuck devices held,
                partners absorbing them) and re-program only the devices whose new target lies
                outside their tuning band;
``sparse refit`` (``sparse_refit``, on by default) re-fit every layer, the first included, with
                an l1 penalty on the change of each weight so that only about 1, 2, 4, ... up
                to ``retune_devices`` weights move, then re-fit those alone without it
                (`protocols.refit.sparse_refits`): the few weights whose change gains the most,
                wherever they are. A joint refit of every layer moves every weight a little and,
                cut to a round's few devices, is no longer a fit; a distorted first layer of a
                network with few hidden units needs its own weights moved.

``flip``        (sigmoid or tanh hidden layers, calibration on) per hidden unit that feeds a
                weight with a stuck device: negate the unit in the periphery (its column pair
                subtracted the other way round, `Calibration.flipped`: no pulse) and re-fit the
                next layer under it with the stuck devices held. A stuck device on the wrong
                side of its pair (a G+ stuck low where the weight must be large and positive)
                leaves no reachable weight of the wanted sign; with the unit negated the
                wanted weight changes sign (s(-z) = 1 - s(z): the biases absorb the rest) and
                the partner reaches it. A compensation with the rest of the column could only
                work around the unit.
``swap``        (calibration on; any activation) per unit, of any layer, whose own pairs hold a
                stuck device that leaves its wanted weights further out of reach than the
                negated ones (a hidden unit's bias G+ stuck low where the bias must be large
                and positive; `swaps`): negate the unit in the periphery and re-fit its own
                pairs negated (G- - G+, `protocols.refit.swapped_weights`), the stuck device
                held. The unit computes what it did and the next layer is left as it is; the
                stuck device is now on the right side of its pair. A flip does not reach this
                case: the stuck device is in the unit's own pairs, not in the next layer's.
                At most two units a round (`MAX_SWAPS`); a flip or a swap is applied whole
                or not offered (the budget must hold half as much again as it expects).
``robust refit`` (``robust_refit``, on by default) re-fit the last layer for a programming
                that misses (`protocols.refit.robust_refit`: the refit set's loss averaged over
                draws of the errors the transfer left, `ProgrammingErrors`) and re-program, in
                one round, every device of it whose new target lies outside its tuning band
                (beyond ``retune_devices``; offered only where the budget holds half as much
                again as it is expected to take). Judged with the devices it tunes at errors
                drawn from the transfer's and the last layer re-calibrated to each draw. The
                other corrections fit weights exactly, and the next pulses in their tiles take
                the exactness away; a network whose Monte-Carlo accuracy is far below its
                software one (regular digits: 70.7 % against 97.3 %) needs last-layer weights
                that survive their own programming.

Periphery calibration (``calibrate``: "affine" by default, "offset" or "off"). The activation
is applied in software between tiles, so the periphery can correct each output digitally at no
pulse: ``z' = gain * z + offset`` per output neuron of each layer on the pre-activation measured
from the column currents (`protocols.inference.Calibration`). At the start of every round and
before the final measurement, layer by layer from the first, the refit set is measured (a layer
after a newly calibrated one with its corrected inputs), the layer's gains and offsets fitted
(`protocols.refit.fit_calibration`: bounded least squares towards the pre-activations the wanted
weights give on the measured inputs, gains in ``gain_range``, offsets within ``offset_max`` of
the layer's read-out scale, pulled towards no correction by ``calibration_l2``. With
``calibration_target`` "joint" (the default) every layer is fitted on the refit set's labels
instead: a hidden layer's gains and offsets jointly with those of the layers after it, through
the model (`fit_calibration_joint`; only its own part is kept, the later layers are measured
with it and fitted in turn), the last layer by minimising the loss (`fit_calibration_loss`);
"labels" fits only the last layer so, "software" none) and kept where
the model predicts a lower repair-set loss (decision ``calibrate``); the repair set is then
measured with it. The model every later candidate is judged on includes the calibration
(`MeasuredModel`), so pulse corrections are chosen against the calibrated chip.

Small measured steps. A candidate moves at most ``retune_devices`` devices (by default 8, or
1/64 of the plan's devices where that is more): a refit or
compensation that wants more keeps the moves with the largest first-order loss gain. Each pulse
of the V/3 write disturbs every device of its tile, and on the calibrated simulator the slow
fluctuators of the disturbed devices switch under that stress, so a large correction moves
devices it never touched; small steps, each followed by a read-back of the pulsed tiles and a
measurement, let the next round correct what the last one disturbed (docs/chip-in-the-loop.md
has the figures).

Fresh measurements. The read-out's DC stress moves the chip (slow fluctuators switch under it:
docs/chip-in-the-loop.md), so a unit never reuses currents of an earlier one: every round
measures the repair set on every tile before it judges anything (and the last unit before its
calibration), and the refit set it fits on; within a unit only tiles that changed are measured
again.

Each candidate's expected gain is the model's accuracy (and loss) on the repair set with the
candidate's devices at their targets (with ``recalibrated_candidates``, on by default: the
better of that under the current calibration and under one re-fitted on the refit set to those
conductances, as the next round's calibration will be: every layer with calibration_target
"joint", else the last; the refits and flips are also offered fitted under a reset last-layer
calibration. A calibration that absorbed a broken weight, a gain of 0.1 on the output of regular
half-moons chip 1042, otherwise makes every correction of that weight look like a loss:
docs/chip-in-the-loop.md) and, with ``expected_disturbance`` (on by default), not with the other
devices where they were but averaged over ``disturbance_samples`` draws of the drift its pulses
are expected to leave in their tiles (`Drift`, fitted on the transfer: each device's read-back
against the pulses its tile took after it), each draw judged with the calibration re-fitted to
it (``recalibrated_draws``, on by default: every layer where the drift reaches a hidden one,
else the last), since the next round calibrates the chip as the drift left it. Under the
calibration of the undrifted conductances a candidate was charged drift the periphery absorbs:
on half-moons chips 1007 and 1020 (regular) every correction looked like a loss, and the
repairs ended 4-5.5 points below the software accuracy with their budget unspent. A tile's tunings go in order of how much their own
drift would cost, the costliest last, since the later tunings of a tile drift the earlier ones
(`tuning_order`). Its expected cost is its number of tunings times the pulses a repair tuning
has taken so far (``expected_pulses`` before the first). The candidate with the largest expected
loss gain per pulse is applied (`choose`; ``choose_by`` "accuracy": by accuracy gain per pulse
first, one that loses a repair-set point never, which refused corrections that gained loss for
one point of 273); the round ends with the touched tiles read back and the repair set measured
again.

Disturbance's price (``price_disturbance``, on by default). The model predicts a correction
with the devices it tunes at their targets and every other device where it was; the chip
answers with the tuned devices near their targets and the other devices of the pulsed tiles
moved by the V/3 writes. Once ``disturbance_rounds`` rounds have pulsed, each candidate is
charged the repair-set loss those rounds lost per pulse beyond their prediction (pooled over
the rounds, after the next round's free re-calibration, at least 0; decisions column
``disturbance``), and a candidate whose expected loss gain does not exceed its charge is not
applied.

The repair stops at the budget, when no candidate is expected to gain, when the measured
repair-set loss has not gone below its best for ``patience`` rounds (the loss, not the
accuracy: a few hundred points make the accuracy coarse), or (``stop_at_software``, on by
default) when the measured repair-set accuracy, before or after the round's calibration, is at
least the software network's on the repair set (the plan's targets, `plan_forward`): beyond
that every round of pulses gambles with the disturbance for nothing the goal asks.

Rollback (``rollback``, off by default: on 24 simulated half-moons chips per network it cost
more than it restored). After a round whose measured repair-set loss is higher than before it,
the next round tunes every device of the tiles it pulsed that left its tuning band back to its
read-back before that round (decision ``rollback``); a rollback is not itself rolled back.

Budget. Before each tuning the remaining budget must hold the tuning's worst case: its pulse cap
is ``min(tune.max_pulses, budget - used)``, and a tuning whose cap would fall below ``min_cap``
is not started (the repair stops). So the repair never exceeds the budget; every pulse goes
through the rig seam, which refuses anything outside the station limits.

Storage (database.runs, protocol "repair"). Units: 0 = the chip as found (read-back, repair,
refit and test sets measured), 1..max_rounds = one round each (a round after the stop records
only that), max_rounds + 1 = the test set measured after. Tables:

- ``decisions``     every candidate of every round: action, layer, output, devices, expected
                    pulses, expected accuracy and loss gains, the disturbance's price, chosen,
                    and why not;
- ``tunings``       every tuning: device, target, conductance before and after, pulses, cap;
- ``calibration``   every calibration kept: round, layer, out, gain, offset (per layer the last
                    rows count; `calibration_of`); the summary's ``calibration`` is the final one;
- ``targets``       the conductance differences G+ - G- a chosen refit or compensation set
                    for its weights (pair: index of `protocols.refit.pairs`);
- ``readback``      conductances read back (round 0: every device; later: touched tiles);
- ``currents``      column currents measured (round, split, point, tile, col, current [A]);
                    every unit measures each split it uses on every tile afresh (the
                    read-out's DC stress moves the chip: a current from an earlier unit is of
                    a state that no longer exists); within a unit, only the tiles whose devices
                    or inputs changed since;
- ``outputs``       measured pre-activations (round, split, point, layer, out, value);
- ``measurements``  per round and split: accuracy, loss, pulses used, instrument time;
- ``predictions``   the test set before (phase 0) and after (phase 1): analog and read-back;
- ``units``         per unit: pulses and instrument time, by category (NaN ones on hardware).

A killed repair resumes at the next unit; on a simulated station with the chip restored, so the
resumed file equals an uninterrupted one. On hardware the devices stay where the killed round
left them, and a round can tune a whole layer: its tunings are written ahead to a small file
beside the store (`protocols.ledger`), and the resumed round first books them (those cut off at
their pulse cap, as failed), reads their tiles back and only then decides, so no pulse that
reached the chip goes uncounted against the budget and no finished tuning's record is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from database.display import Metric
from database.display import summary_lines as metric_lines
from database.runs import RunWriter
from protocols import interrupts
from protocols.campaigns._loop import commit_state, restore_progress
from protocols.errors import ProtocolError
from protocols.inference import (
    TIME_CATEGORIES,
    Calibration,
    ChipRunResult,
    InferConfig,
    activation,
    check_test_data,
    drive_levels,
    input_scale,
    instrument_times,
    layer_output,
    measure_tile,
    predict,
    tile_maps,
)
from protocols.ledger import Ledger, Recovered
from protocols.plan import (
    WEIGHT,
    ConductancePlan,
    check_crossbar,
    check_reads,
    check_verifiable,
    plan_forward,
    plan_weights,
)
from protocols.progress import Bar
from protocols.refit import (
    MeasuredModel,
    ProgrammingErrors,
    Score,
    TuningCost,
    fit_calibration,
    fit_calibration_joint,
    fit_calibration_loss,
    flipped_weights,
    pair_moves,
    pairs,
    refit,
    robust_refit,
    scope_pairs,
    sparse_refits,
    swapped_weights,
)
from protocols.rig import CrossbarRig, ReadSettings
from protocols.transfer import data_digest, stored_plan_run
from protocols.tuning import TuneConfig, tune

log = logging.getLogger("xbarlab.repair")

PROTOCOL = "repair"
RETUNE, COMPENSATE, REFIT, STOP, ROLLBACK, CALIBRATE, SPARSE, FLIP, ROBUST, SWAP = \
    range(10)  # .action
ACTIONS = {RETUNE: "retune", COMPENSATE: "compensate", REFIT: "refit", STOP: "stop",
           ROLLBACK: "rollback", CALIBRATE: "calibrate", SPARSE: "sparse refit", FLIP: "flip",
           ROBUST: "robust refit", SWAP: "swap"}
#: swap candidates a round offers at most (a digits chip has 7-9 units that qualify)
MAX_SWAPS = 2
#: the actions that pulse (a round's expected gain is booked for the disturbance's price)
PULSING = (RETUNE, COMPENSATE, REFIT, SPARSE, ROLLBACK, FLIP, ROBUST, SWAP)
CHOSEN, NOT_BEST, NO_GAIN, NOTHING = 0, 1, 2, 3                      # decisions.why
#: why the repair stopped (summary and the STOP decision's `layer` column)
STOP_REASONS = {0: "rounds used up", 1: "budget spent", 2: "no correction expected to gain",
                3: "measured loss stopped improving", 4: "stopped in an earlier round",
                5: "reached the software accuracy"}
REFIT_SET, REPAIR_SET, TEST_SET = 0, 1, 2                            # outputs/measurements.split
SPLITS = {REFIT_SET: "refit", REPAIR_SET: "repair", TEST_SET: "test"}

#: the summary's metrics (``protocols.summaries``)
SUMMARY = {
    "budget": Metric("pulse budget"),
    "pulses": Metric("pulses used"),
    "tunings": Metric("tunings"),
    "failed_tunings": Metric("failed tunings"),
    "rounds": Metric("rounds with a correction"),
    "stopped": Metric("stopped because"),
    "accuracy_before": Metric("test accuracy on the crossbars before", "fraction"),
    "accuracy_readback_before": Metric("test accuracy from read-back before", "fraction"),
    "accuracy_after": Metric("test accuracy on the crossbars after", "fraction"),
    "accuracy_readback_after": Metric("test accuracy from read-back after", "fraction"),
    "repair_set_accuracy_before": Metric("repair-set accuracy before", "fraction"),
    "repair_set_accuracy_after": Metric("repair-set accuracy after", "fraction"),
    "instrument_time_s": Metric("instrument time", "s"),
    "instrument_time_by_category_s": Metric("instrument time by category", "s"),
    "chosen": Metric("corrections (rounds)"),
    "calibration": Metric("periphery calibration (per layer: gain, offset per output)"),
}

TABLES = {
    "decisions": {"round": ("i4", "1"),
                  "action": ("i1", "0 retune 1 compensate 2 refit 3 stop 4 rollback 5 calibrate "
                             "6 sparse refit 7 flip 8 robust refit 9 swap"),
                  "layer": ("i4", "1 (-1: all; stop: the reason code; flip, swap: the "
                            "negated unit's layer)"),
                  "weights": ("i4", "1 (weights it sets)"),
                  "devices": ("i4", "1"), "expected_pulses": ("f8", "1"),
                  "expected_accuracy_gain": ("f8", "1"), "expected_loss_gain": ("f8", "1"),
                  "disturbance": ("f8", "1 (expected loss from the pulses' disturbance)"),
                  "why": ("i1", "0 chosen, 1 not the best, 2 no gain, 3 nothing to do")},
    "tunings": {"round": ("i4", "1"), "device": ("i4", "1"), "tile": ("i4", "1"),
                "row": ("i4", "1"), "col": ("i4", "1"), "target": ("f8", "S"),
                "g_before": ("f8", "S"), "g_after": ("f8", "S"), "converged": ("?", "1"),
                "pulses": ("i4", "1"), "cap": ("i4", "1"), "t_start": ("f8", "s"),
                "t_end": ("f8", "s")},
    "targets": {"round": ("i4", "1"), "pair": ("i4", "1"), "diff": ("f8", "S")},
    "readback": {"round": ("i4", "1"), "device": ("i4", "1"), "g": ("f8", "S")},
    "currents": {"round": ("i4", "1"), "split": ("i1", "0 refit 1 repair 2 test"),
                 "point": ("i4", "1"), "tile": ("i4", "1"), "col": ("i4", "1"),
                 "current": ("f8", "A")},
    "outputs": {"round": ("i4", "1"), "split": ("i1", "0 refit 1 repair 2 test"),
                "point": ("i4", "1"), "layer": ("i4", "1"), "out": ("i4", "1"),
                "value": ("f8", "1")},
    "measurements": {"round": ("i4", "1"), "split": ("i1", "0 refit 1 repair 2 test"),
                     "accuracy": ("f8", "1"), "accuracy_readback": ("f8", "1"),
                     "loss": ("f8", "1"), "pulses": ("i8", "1")},
    "predictions": {"phase": ("i1", "0 before, 1 after"), "point": ("i4", "1"),
                    "label": ("i8", "1"), "predicted": ("i8", "1"),
                    "predicted_readback": ("i8", "1")},
    "calibration": {"round": ("i4", "1"), "layer": ("i4", "1"), "out": ("i4", "1"),
                    "gain": ("f8", "1"), "offset": ("f8", "1")},
    "units": {"unit": ("i4", "1"), "pulses": ("i8", "1"), "seconds": ("f8", "s"),
              **{c: ("f8", "s") for c in TIME_CATEGORIES}},
}


class RepairConfig(BaseModel):
    """How the repair chooses and applies corrections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tune: TuneConfig = Field(default_factory=lambda: TuneConfig(algorithm="fast", max_pulses=60),
                             description="write-verify of each correction (its max_pulses is the "
                             "worst case the budget must hold)")
    infer: InferConfig = Field(default_factory=InferConfig, description="analog read-out")
    max_rounds: int = Field(30, ge=1, le=1000, description="rounds of corrections at most")
    retune_devices: int | None = Field(
        None, ge=1, le=10_000, description="devices a round's correction moves at most "
        "(retune, compensate, refit); None: max(8, the plan's devices / 64), 8 on a half-moons "
        "network, 75 on digits (8 of its 4,800 devices a round could not spend 1 % of the "
        "budget in 30 rounds)")
    expected_pulses: float = Field(30.0, gt=0, description="pulses per tuning assumed when no "
                                   "tuning (prior or the repair's own) tells")
    min_cap: int = Field(10, ge=1, description="a tuning whose pulse cap would fall below this is "
                         "not started: the budget is spent")
    l2: float = Field(0.02, ge=0, description="refits: penalty on the change of each weight, "
                      "per the layer's weight scale squared (keeps the number of devices to "
                      "re-program small)")
    price_disturbance: bool = Field(True, description="charge each candidate the repair-set "
                                    "loss that the repair's past rounds lost per pulse beyond "
                                    "their prediction (the V/3 disturbance of the tiles they "
                                    "pulsed); a candidate must gain more than that")
    disturbance_rounds: int = Field(3, ge=1, description="price_disturbance: rounds with "
                                    "pulses measured before the price is charged (one round's "
                                    "surprise is mostly chance)")
    stop_at_software: bool = Field(True, description="stop pulsing once the measured "
                                   "repair-set accuracy reaches the software network's (the "
                                   "plan's targets) on the repair set: every further round "
                                   "risks the disturbance of its pulses for little to gain")
    choose_by: Literal["accuracy", "loss"] = Field(
        "loss", description="a candidate is chosen by its expected repair-set loss gain per "
        "pulse (the loss: on a few hundred points the accuracy moves in coarse steps), or by "
        "its expected accuracy gain per pulse (by loss gain per pulse where none gains "
        "accuracy; one that loses accuracy never)")
    sparse_refit: bool = Field(True, description="also offer refits of every layer (the first "
                               "included) that change few weights: 1, 2, 4, ... up to "
                               "retune_devices pairs, chosen by an l1 penalty on the change "
                               "(`protocols.refit.sparse_refits`)")
    robust_refit: bool = Field(True, description="also offer the last layer re-fitted for a "
                               "programming that misses (`protocols.refit.robust_refit`: the "
                               "loss averaged over draws of the errors the transfer left) and "
                               "re-programmed whole, in one round; judged with those errors "
                               "on every device it tunes")
    refit_points: int | None = Field(None, ge=1, description="refit-set points measured at "
                                     "most (each is one analog inference per round that moved "
                                     "a device); None: `default_refit_points` of the plan (400, "
                                     "or 12 per calibration parameter where that is more)")
    patience: int = Field(3, ge=1, description="rounds without a lower measured repair-set "
                          "loss than the best so far before the repair stops")
    rollback: bool = Field(False, description="a round whose correction left the measured "
                           "repair-set loss higher than before it is followed by a rollback: "
                           "every device of the tiles it pulsed that moved out of its tuning "
                           "band is tuned back to its read-back before that round")
    calibrate: Literal["off", "offset", "affine"] = Field(
        "affine", description="the periphery's digital calibration, fitted at the start of every "
        "round and before the final measurement (no pulse): per output of each layer an "
        "offset, or a gain and an offset, on the measured pre-activation")
    gain_range: tuple[float, float] = Field((0.05, 3.0), description="calibration: the gains "
                                            "allowed (a low gain lets the periphery quiet a "
                                            "hidden unit whose column a stuck or untunable "
                                            "device spoils; docs/chip-in-the-loop.md)")
    offset_max: float = Field(0.5, ge=0, description="calibration: |offset| at most this share "
                              "of the layer's read-out scale (its largest weight)")
    calibration_target: Literal["software", "labels", "joint"] = Field(
        "joint", description="calibration: \"software\": every layer towards the "
        "pre-activations the wanted weights give; \"labels\": so the hidden layers, the last "
        "layer by minimising the loss on the refit set's labels; \"joint\": every layer on "
        "the labels, each hidden layer fitted jointly with the layers after it "
        "(`protocols.refit.fit_calibration_joint`)")
    recalibrated_candidates: bool = Field(
        True, description="judge each pulse correction with the calibration re-fitted to it "
        "as the next round's will be (every layer with calibration_target \"joint\", else the "
        "last), and offer the refits also "
        "fitted under a reset last-layer calibration: a calibration that absorbed a broken "
        "weight makes that weight's repair look like a loss under it")
    expected_disturbance: bool = Field(
        True, description="judge each correction at the conductances its pulses are expected "
        "to leave: the other devices of each tile it pulses drifted as the transfer's "
        "tunings drifted devices of their tile that took as many pulses after them (`Drift`: "
        "needs the transfer's tunings as prior_tunings, one per device)")
    disturbance_samples: int = Field(16, ge=1, le=1000, description="expected_disturbance: "
                                     "draws of the drift per candidate")
    recalibrated_draws: bool = Field(
        True, description="expected_disturbance with recalibrated_candidates: judge each draw "
        "of the drift with the calibration re-fitted to it, as the next round's will be (a "
        "calibration fitted to the undrifted conductances charges a candidate drift the "
        "periphery absorbs; docs/chip-in-the-loop.md)")
    calibration_l2: float = Field(0.01, ge=0, description="calibration: penalty pulling each "
                                  "gain towards 1 and offset towards 0, relative to the fit's "
                                  "mean squared error")

    @model_validator(mode="after")
    def _gains(self) -> RepairConfig:
        lo, hi = self.gain_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"gain_range {self.gain_range}: needs 0 < low <= 1 <= high")
        return self


@dataclass
class RepairData:
    """(x, y) of the three roles; see the module docstring."""

    refit: tuple[np.ndarray, np.ndarray]
    repair: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


# -- the state a round starts from, rebuilt from what is committed ------------------------------

@dataclass
class _State:
    g: np.ndarray                 # read-back conductances, plan order [S]
    diff: np.ndarray              # the wanted G+ - G- of every pair (weight) [S]
    stuck: np.ndarray             # devices that cannot be moved (failed tunings)
    used: int = 0                 # pulses spent
    tunings: int = 0
    zs: dict = field(default_factory=dict)        # split -> layer -> measured z
    cur: dict = field(default_factory=dict)       # split -> tile -> measured column currents
    measured: dict = field(default_factory=dict)  # split -> tile -> when measured
    changed_at: dict = field(default_factory=dict)  # tile -> when a device of it last moved
    best: float = np.inf          # lowest measured repair-set loss
    best_round: int = -1          # the round that measured it
    stale_rounds: int = 0         # rounds measured since
    losses: list = field(default_factory=list)     # (round, repair-set loss) measured
    g_rounds: dict = field(default_factory=dict)   # round -> read-back before its tunings
    stopped: int | None = None
    compensated: set = field(default_factory=set)   # stuck devices compensated for
    cal: Calibration | None = None                   # the periphery's calibration now
    rolled_back: set = field(default_factory=set)   # rounds that were rollbacks

    history: list = field(default_factory=list)   # (g_before, target, pulses, round) of tunings
    expected: dict = field(default_factory=dict)  # round -> expected loss gain of its correction
    g0: np.ndarray | None = None  # the read-back of the chip as found (unit 0)
    stuck0: np.ndarray | None = None   # the stuck devices known before the repair


def _when(rnd: int, what) -> float:
    """When something happened, on one scale: in a round the refit set is measured first (to
    fit), then devices are tuned, then the repair set is measured; other units tune nothing."""
    if what == "tuning":
        return rnd + 0.5
    return rnd + (0.75 if what == REPAIR_SET and rnd > 0 else 0.0)


def _progress(st: _State, rnd: int, loss: float) -> None:
    """Book a measurement of the repair set: an improvement is a lower loss than the best so
    far (the loss, not the accuracy: on a few hundred points accuracy moves in coarse steps);
    stale: the rounds measured since the best."""
    st.losses.append((rnd, loss))
    if loss < st.best:
        st.best, st.best_round = loss, rnd
    # in rounds: with the calibration a round measures the repair set more than once
    st.stale_rounds = len({r for r, _ in st.losses if r > st.best_round})


def _rebuild(plan: ConductancePlan, writer: RunWriter, stuck0: np.ndarray,
             data: dict) -> _State:
    dp, dm = pairs(plan)
    st = _State(g=np.full(plan.n_devices, np.nan), diff=plan.target[dp] - plan.target[dm],
                stuck=stuck0.copy(), cal=Calibration.identity(plan), stuck0=stuck0.copy())
    st.cal = calibration_of(plan, writer.table("calibration")) or st.cal
    rb = writer.table("readback")
    tuned = set(writer.table("tunings")["round"].tolist())
    for rnd in sorted(set(rb["round"].tolist())):   # in commit order: the latest wins
        if rnd in tuned:
            st.g_rounds[rnd] = st.g.copy()
        r = rb[rb["round"] == rnd]
        st.g[r.device.to_numpy()] = r.g.to_numpy()
        if rnd == 0:
            st.g0 = st.g.copy()
    tg = writer.table("targets")
    st.diff[tg["pair"].to_numpy()] = tg["diff"].to_numpy()
    tu = writer.table("tunings")
    st.used, st.tunings = int(tu.pulses.sum()), int(len(tu))
    st.history = list(zip(tu.g_before, tu.target, tu.pulses, tu['round'], strict=True))
    st.stuck[tu.device[~tu.converged].to_numpy()] = True
    for rnd, dev in zip(tu["round"].to_numpy(), tu.device.to_numpy(), strict=True):
        t = int(plan.tile[dev])
        st.changed_at[t] = max(st.changed_at.get(t, 0.0), _when(int(rnd), "tuning"))
    out, cur = writer.table("outputs"), writer.table("currents")
    for split in SPLITS:
        n = data[split][1].size
        o = out[out.split == split]
        for li in range(len(plan.sizes) - 1):
            ol = o[o.layer == li]
            if len(ol):   # a unit can measure a split more than once: the last counts
                ol = ol[ol["round"] == ol["round"].max()].drop_duplicates(["point", "out"],
                                                                          keep="last")
                z = np.full((n, plan.sizes[li + 1]), np.nan)
                z[ol.point.to_numpy(), ol.out.to_numpy()] = ol.value.to_numpy()
                st.zs.setdefault(split, {})[li] = z
        c = cur[cur.split == split]
        for t in range(plan.n_tiles):
            ct = c[c.tile == t]
            if len(ct):
                last = int(ct["round"].max())
                ct = ct[ct["round"] == last].drop_duplicates(["point", "col"], keep="last")
                a = np.full((n, int(plan.tile_shape[t][1])), np.nan)
                a[ct.point.to_numpy(), ct.col.to_numpy()] = ct.current.to_numpy()
                st.cur.setdefault(split, {})[t] = a
                st.measured.setdefault(split, {})[t] = _when(last, split)
    me = writer.table("measurements")
    rep = me[me.split == REPAIR_SET]
    for rnd, loss in zip(rep["round"], rep.loss, strict=True):
        _progress(st, int(rnd), loss)
    de = writer.table("decisions")
    stop = de[de.action == STOP]
    if len(stop):
        st.stopped = int(stop.layer.iloc[0])
    st.rolled_back = set(de["round"][de.action == ROLLBACK].tolist())
    pulsed = de[(de.why == CHOSEN) & de.action.isin(PULSING)]
    st.expected = dict(zip(pulsed["round"].tolist(), pulsed.expected_loss_gain.tolist(),
                           strict=True))
    # a compensation covers the devices of its layer that were stuck when it was chosen
    comp = de[(de.action == COMPENSATE) & (de.why == CHOSEN)]
    for rnd, li in zip(comp["round"], comp.layer, strict=True):
        then = stuck0.copy()
        then[tu.device[(~tu.converged) & (tu["round"] < rnd)].to_numpy()] = True
        st.compensated |= set(np.flatnonzero(then & (plan.layer == li)).tolist())
    return st


# -- the protocol -----------------------------------------------------------------------------

def default_refit_points(plan: ConductancePlan) -> int:
    """The refit-set points a repair measures unless told: 400, or 12 per parameter of the
    periphery's calibration (a gain and an offset per output of every layer, all fitted on
    them every round) where that is more. On digits (84 parameters) 400 points over-fitted the
    calibration (final refit-set loss 0.02-0.08, test 0.19-0.31); 1,011 lowered the test loss on
    every chip and raised the mean test accuracy by 1.1 points. Half-moons (18 parameters) ended
    the same on 400 as on all 703, which cost a third more read-out time
    (docs/chip-in-the-loop.md)."""
    return max(400, 12 * 2 * int(sum(plan.sizes[1:])))


def run(plan: ConductancePlan, open_rig: Callable[[str], CrossbarRig],
        crossbars: Sequence[str], store, data: RepairData, *, budget: int,
        read: ReadSettings, config: RepairConfig | None = None, stuck: np.ndarray | None = None,
        prior_tunings: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        seed: int | None = None, station: dict | None = None, resume: bool = False,
        overwrite: bool = False, progress: bool = True,
        extra_config: dict | None = None) -> ChipRunResult:
    """Repair the network programmed on `crossbars` (tile t on ``crossbars[t]``) with at most
    `budget` pulses. `stuck`: devices known not to move (e.g. the transfer's failed tunings);
    `prior_tunings`: (conductance before, target, pulses) of earlier tunings on this chip (the
    transfer's), for the expected cost of each correction. `read`: the station's read settings;
    every target of the plan and its whole range [g_min, g_max] (what a correction may set)
    are checked against them before the store is opened (`check_verifiable`)."""
    cfg = config or RepairConfig()
    crossbars = [str(c) for c in crossbars]
    if len(crossbars) != plan.n_tiles:
        raise ProtocolError(f"the plan has {plan.n_tiles} tiles but {len(crossbars)} crossbars "
                            "were given (one crossbar per tile)")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ProtocolError(f"the pulse budget must be a whole number >= 0, got {budget!r}")
    check_verifiable(plan, cfg.tune.tolerance, read, whole_range=True)
    sets = {REFIT_SET: check_test_data(plan, data.refit),
            REPAIR_SET: check_test_data(plan, data.repair),
            TEST_SET: check_test_data(plan, data.test)}
    n_refit = cfg.refit_points or default_refit_points(plan)
    if sets[REFIT_SET][1].size > n_refit:
        sets[REFIT_SET] = tuple(a[:n_refit] for a in sets[REFIT_SET])
    stuck0 = np.zeros(plan.n_devices, bool) if stuck is None else np.asarray(stuck, bool)
    if stuck0.shape != (plan.n_devices,):
        raise ProtocolError(f"stuck flags for {stuck0.size} devices, the plan has "
                            f"{plan.n_devices}")
    prior = tuple(np.zeros(0) for _ in range(3)) if prior_tunings is None else \
        tuple(np.asarray(a, float).reshape(-1) for a in prior_tunings)
    if len({a.size for a in prior}) != 1:
        raise ProtocolError("prior tunings: before, target and pulses differ in length")
    units = cfg.max_rounds + 2
    run_cfg = {"plan": plan.to_dict(), "crossbars": crossbars, "budget": int(budget),
               "repair": cfg.model_dump(mode="json"),
               "data": {SPLITS[s]: {"points": int(y.size), "sha": data_digest(x, y)}
                        for s, (x, y) in sets.items()},
               "stuck": np.flatnonzero(stuck0).tolist(),
               "prior_tunings": {"count": int(prior[0].size),
                                 "sha": data_digest(np.stack(prior, 1), np.zeros(0))},
               **(extra_config or {})}
    writer = RunWriter.open(store, protocol=PROTOCOL, config=run_cfg, station=station or {},
                            seed=seed, tables=TABLES, units_total=units, resume=resume,
                            overwrite=overwrite)
    start = writer.units_done
    maps = tile_maps(plan)
    last_rig: list[CrossbarRig] = []

    def opener(name: str) -> CrossbarRig:
        rig = open_rig(name)
        last_rig[:] = [rig]
        return rig

    ledger = None
    if start < units:
        rig = opener(crossbars[0])
        with rig:
            check_reads(rig, read)
            check_crossbar(plan, rig, 0, crossbars[0])
            restore_progress("repair", writer, units, rig)
        if not rig.restorable:   # a simulated chip is restored: the lost unit never happened
            ledger = Ledger(writer.path, writer.run)
            if not start:
                ledger.clear()   # (a file of a run this one overwrote)
    st = _rebuild(plan, writer, stuck0, sets)
    work = _Work(plan, maps, opener, crossbars, cfg, sets, int(budget), prior, seed, ledger)
    carry: dict = {}
    if ledger is not None and start:
        rec = ledger.recover(start)
        if rec.done or rec.cut:
            log.warning("repair: the interrupted unit %d had made %d tunings (%d cut off, "
                        "booked at their pulse cap); they are counted and their tiles read "
                        "back", start, len(rec.done) + len(rec.cut), len(rec.cut))
            carry = work.recovered(st, start, rec)
    bar = Bar(f"repair, budget {budget} pulses", units, start, enabled=progress, unit="units")
    with bar:
        for u in range(start, units):
            interrupts.check()  # a Ctrl-C lost in a finaliser (e.g. during the commit)
            rig0 = last_rig[0]
            before, t0, used0 = rig0.time_breakdown(), float(rig0.clock), st.used
            if u == 0:
                bar.current("measuring the chip as found")
                rows = work.initial(st)
            elif u < units - 1:
                bar.current(f"round {u}")
                rows = work.round(st, u)
            else:
                bar.current("measuring the test set after repair")
                rows = work.final(st, u)
            if carry:   # what the interrupted try of this unit did comes first
                rows = _merged(carry, rows)
                used0 -= sum(carry["tunings"]["pulses"])
                carry = {}
            times = instrument_times(last_rig[0], before, t0)
            rows["units"] = {"unit": [u], "pulses": [st.used - used0],
                             **{k: [v] for k, v in times.items()}}
            writer.commit(u, rows, commit_state(last_rig[0]))
            if ledger is not None:
                ledger.clear()
            bar.advance(st.used - used0)
            log.debug("repair: unit %d done, %d pulses", u, st.used - used0)
    interrupts.check()  # the run is not complete if the last commit lost a Ctrl-C
    tables = {name: writer.table(name) for name in TABLES}
    summary = summarize(plan, tables, int(budget))
    writer.finish(summary)
    log.info("repair: %s", summary)
    return ChipRunResult(writer.path, writer.run, summary, start, plan, tables)


@dataclass
class Drift:
    """The relative drift (rms) of a device after n write pulses on the rest of its tile:
    ``rms`` at ``pulses`` (increasing, interpolated; 0 at 0). A V/3 write stresses every device
    of its tile; on the calibrated simulator the stress switches slow fluctuators, so the first
    few pulses already move a neighbour by several per cent and more pulses add little (the
    half-moons transfer: 7 % rms after 1-50 pulses, 13 % after 300-600). Drawn as a Gaussian
    of that rms, each tuned device at its target. What that leaves out, measured: the
    transfer's drift is heavy-tailed (kurtosis ~20) and its sign follows the conductance (+6 %
    at 100 uS, -3 % at 400 uS), the repair's own rounds drift their untouched devices less
    (median 1.3 % against the transfer's 4.6 %), and a tuned device that later tunings of its
    tile follow drifts too. Modelled (the transfer's own samples by conductance and pulses;
    the tuned devices' drift), the repairs ended worse (docs/chip-in-the-loop.md)."""

    pulses: np.ndarray
    rms: np.ndarray

    def sigma(self, n) -> np.ndarray:
        return np.interp(n, self.pulses, self.rms)

    def spread(self, plan: ConductancePlan, devices: np.ndarray, pulses: np.ndarray,
               stuck: np.ndarray) -> np.ndarray:
        """Per device of the plan, the relative drift (rms) that tuning `devices` with
        `pulses` (expected) leaves: the other devices of each tile they pulse drift by
        sigma(the tile's pulses); the tuned ones end at their targets, stuck ones stay."""
        rel = np.zeros(plan.n_devices)
        devices = np.asarray(devices, np.int64)
        per_tile = np.bincount(plan.tile[devices], weights=np.asarray(pulses, float),
                               minlength=plan.n_tiles)
        hit = per_tile[plan.tile]
        rel[hit > 0] = self.sigma(hit[hit > 0])
        rel[devices] = 0.0
        rel[stuck] = 0.0
        return rel


def fit_drift(plan: ConductancePlan, g0: np.ndarray, targets: np.ndarray, pulses: np.ndarray,
              stuck: np.ndarray) -> Drift | None:
    """The drift of the transfer: each converged device's read-back before the repair
    relative to its target, against the pulses its tile took after it (the transfer tunes each
    tile's devices in the plan's order, `ConductancePlan.tile_devices`), as the rms per
    factor-of-4 bin of pulses (bins of at least 5 devices), made non-decreasing; None where no
    bin holds enough."""
    after = np.zeros(plan.n_devices)
    for t in range(plan.n_tiles):
        d = plan.tile_devices(t)
        p = np.asarray(pulses, float)[d]
        after[d] = np.cumsum(p[::-1])[::-1] - p
    ok = ~np.asarray(stuck, bool) & (np.asarray(targets) > 0) & (after > 0)
    rel = np.asarray(g0, float)[ok] / np.asarray(targets, float)[ok] - 1.0
    n = after[ok]
    edges = 4.0 ** np.arange(0, 12)
    xs, ys = [0.0], [0.0]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (n >= lo) & (n < hi)
        if m.sum() >= 5:
            xs.append(float(np.sqrt(lo * hi)))
            ys.append(float(np.sqrt(np.mean(rel[m] ** 2))))
    if len(xs) < 2:
        return None
    return Drift(np.array(xs), np.maximum.accumulate(np.array(ys)))


class _Work:
    """What one unit does; everything it returns is committed as that unit's rows."""

    def __init__(self, plan, maps, opener, crossbars, cfg: RepairConfig, sets, budget: int,
                 prior, seed: int | None = None, ledger: Ledger | None = None):
        self.plan, self.maps, self.open, self.crossbars = plan, maps, opener, crossbars
        self.ledger = ledger   # hardware only: the tunings of the unit in progress
        self.cfg, self.sets, self.budget, self.prior = cfg, sets, budget, prior
        self.seed = 0 if seed is None else int(seed)
        self._drift: Drift | None | bool = False   # fitted on first use (needs unit 0)
        self._errors: ProgrammingErrors | None | bool = False   # likewise
        self.n_layers = len(plan.sizes) - 1
        #: devices a round's correction moves at most
        self.step = cfg.retune_devices or max(8, plan.n_devices // 64)
        x, y = sets[REPAIR_SET]
        self.software_accuracy = float(np.mean(plan_forward(plan, plan.target, x) == y))

    # -- measuring ---------------------------------------------------------------------------
    def read_back(self, st: _State, tiles, rnd: int) -> dict:
        devs = []
        for t in sorted(tiles):
            rig = self.open(self.crossbars[t])
            with rig:
                gmap = rig.read_array()
            d = self.plan.tile_devices(t)
            st.g[d] = gmap[self.plan.row[d], self.plan.col[d]]
            devs.append(d)
        d = np.concatenate(devs)
        return {"round": np.full(d.size, rnd), "device": d, "g": st.g[d]}

    def measure(self, st: _State, split: int, rnd: int, rows: dict,
                at: float | None = None) -> float | None:
        """Measure `split` on the chip where it may have changed: every tile the first time in
        a unit (the read-outs since its last measurement moved the chip), then a tile again when
        a device of it moved or its inputs changed since (the other tiles' currents are what
        they were); add the currents, the outputs of the
        layers that changed (a new calibration changes a layer's outputs, and so the next
        layer's inputs) and a measurement row, and return its loss. Nothing (None) when
        nothing changed. `at`: the time of the measurement on `_when`'s scale (default: the
        split's usual time in the round)."""
        x, y = self.sets[split]
        at = _when(rnd, split) if at is None else at
        cur = st.cur.setdefault(split, {})
        when = st.measured.setdefault(split, {})
        zs = st.zs.setdefault(split, {})
        v_in = self.cfg.infer.v_in
        h, upstream = x, False
        for li in range(self.n_layers):
            scale = input_scale(h)
            # the read-out's DC stress moves the chip (slow fluctuators switch under it), so
            # currents measured in an earlier unit are never reused: within a unit they are
            again = [tm for tm in self.maps if tm.layer == li and (
                upstream or tm.tile not in cur or when[tm.tile] < rnd
                or st.changed_at.get(tm.tile, -1.0) > when[tm.tile])]
            for tm in again:
                rig = self.open(self.crossbars[tm.tile])
                with rig:
                    c = measure_tile(rig, tm, drive_levels(tm, h, scale, v_in))
                cur[tm.tile], when[tm.tile] = c, at
                n, nc = c.shape
                _add(rows, "currents", {"round": np.full(n * nc, rnd),
                                        "split": np.full(n * nc, split),
                                        "point": np.repeat(np.arange(n), nc),
                                        "tile": np.full(n * nc, tm.tile),
                                        "col": np.tile(np.arange(nc), n), "current": c.reshape(-1)})
            z = st.cal.apply(li, layer_output(self.plan, li, self.maps, cur, scale, v_in))
            if again or li not in zs or not np.array_equal(z, zs[li]):
                upstream = True
                zs[li] = z
                n, no = z.shape
                _add(rows, "outputs", {"round": np.full(n * no, rnd),
                                       "split": np.full(n * no, split),
                                       "point": np.repeat(np.arange(n), no),
                                       "layer": np.full(n * no, li),
                                       "out": np.tile(np.arange(no), n), "value": z.reshape(-1)})
            h = activation(self.plan, zs[li])
        if not upstream:
            return None
        model = self.model(st, split)
        score = model.score(st.g)
        acc_rb = float(np.mean(plan_forward(self.plan, st.g, x) == y))
        _add(rows, "measurements", {"round": [rnd], "split": [split],
                                    "accuracy": [score.accuracy],
                                    "accuracy_readback": [acc_rb], "loss": [score.loss],
                                    "pulses": [st.used]})
        return score.loss

    def measure_repair(self, st: _State, rnd: int, rows: dict) -> None:
        """The repair set measured again (every tile) before anything is judged on it: the
        read-outs since its last measurement moved the chip (their DC stress switches slow
        fluctuators), so that measurement is of a state that no longer exists."""
        loss = self.measure(st, REPAIR_SET, rnd, rows, at=float(rnd))
        if loss is not None:
            _progress(st, rnd, loss)

    def model(self, st: _State, split: int) -> MeasuredModel:
        x, y = self.sets[split]
        zs = st.zs[split]
        return MeasuredModel(self.plan, x, y, [zs[li] for li in range(self.n_layers)], st.g,
                             st.cal)

    def predictions(self, st: _State, phase: int) -> dict:
        x, y = self.sets[TEST_SET]
        z = st.zs[TEST_SET][self.n_layers - 1]
        return {"phase": np.full(y.size, phase), "point": np.arange(y.size), "label": y,
                "predicted": predict(z), "predicted_readback": plan_forward(self.plan, st.g, x)}

    # -- units -------------------------------------------------------------------------------
    def initial(self, st: _State) -> dict:
        rows: dict = {}
        _add(rows, "readback", self.read_back(st, range(self.plan.n_tiles), 0))
        st.g0 = st.g.copy()
        for split in (REPAIR_SET, TEST_SET, REFIT_SET):
            self.measure(st, split, 0, rows)
        m = rows["measurements"]
        i = m["split"].index(REPAIR_SET)
        _progress(st, 0, m["loss"][i])
        rows["predictions"] = self.predictions(st, 0)
        return rows

    def final(self, st: _State, u: int) -> dict:
        rows: dict = {}
        self.measure_repair(st, u, rows)
        self.calibrate(st, u, rows)   # after the last round's pulses
        st.cur.pop(TEST_SET, None)   # the result: every tile measured again, none reused
        self.measure(st, TEST_SET, u, rows)
        rows["predictions"] = self.predictions(st, 1)
        return rows

    def round(self, st: _State, rnd: int) -> dict:
        rows: dict = {}
        if st.stopped is not None:
            _add(rows, "decisions", _decision(rnd, STOP, 4, -1, 0, 0.0, 0.0, 0.0, NOTHING))
            return rows
        self.measure_repair(st, rnd, rows)
        if self.at_software(st):   # (as measured: a calibration kept may lower it)
            return self._stop(st, rows, rnd, 5)
        self.calibrate(st, rnd, rows)
        cfg, plan = self.cfg, self.plan
        if self.at_software(st):
            return self._stop(st, rows, rnd, 5)
        remaining = self.budget - st.used
        if remaining < cfg.min_cap:
            return self._stop(st, rows, rnd, 1)
        back = self.rollback(st, rnd)
        if back is not None:
            devs, tgts = back
            _add(rows, "decisions", _decision(rnd, ROLLBACK, -1, 0, devs.size,
                                              float(self.cost(st)(st.g[devs], tgts).sum()),
                                              0.0, 0.0, CHOSEN))
            st.expected[rnd] = 0.0
            return self.finish(st, rows, rnd, devs, tgts)
        cands = self.candidates(st, rnd, rows)
        rate = self.disturbance(st) if cfg.price_disturbance else 0.0
        best = choose(cands, rate, cfg.choose_by)
        for c in cands:
            why = CHOSEN if c is best else (NO_GAIN if c["key"] is None else NOT_BEST)
            _add(rows, "decisions", _decision(rnd, c["action"], c["layer"], c["weights"],
                                              c["devices"].size, c["expected_pulses"],
                                              *c["gain"], why, c["disturbance"]))
        if best is None:
            return self._stop(st, rows, rnd, 2)
        st.expected[rnd] = best["gain"][1]
        if best["action"] != RETUNE:
            st.diff[best["pairs"]] = best["diff"]
            _add(rows, "targets", {"round": np.full(best["pairs"].size, rnd),
                                   "pair": best["pairs"], "diff": best["diff"]})
            if best["action"] == COMPENSATE:
                layer_stuck = st.stuck & (plan.layer == best["layer"])
                st.compensated |= set(np.flatnonzero(layer_stuck).tolist())
            if best["action"] in (FLIP, SWAP):   # the periphery's part, before the pulses
                li = best["layer"]
                st.cal = st.cal.flipped(li, best["unit"])
                n = st.cal.gain[li].size
                _add(rows, "calibration", {"round": np.full(n, rnd), "layer": np.full(n, li),
                                           "out": np.arange(n), "gain": st.cal.gain[li],
                                           "offset": st.cal.offset[li]})
        return self.finish(st, rows, rnd, best["devices"], best["targets"])

    def finish(self, st: _State, rows: dict, rnd: int, devices, targets) -> dict:
        """Apply the round's tunings, read the tiles they pulsed back, measure the repair set,
        and book it; stop where the budget, the patience or the rounds are spent."""
        cfg = self.cfg
        st.g_rounds[rnd] = st.g.copy()
        spent = self.apply(st, devices, targets, rnd, rows)
        if "tunings" in rows:
            tiles = set(self.plan.tile[np.asarray(rows["tunings"]["device"])].tolist())
            _add(rows, "readback", self.read_back(st, tiles, rnd))
            self.measure(st, REPAIR_SET, rnd, rows)
            _progress(st, rnd, rows["measurements"]["loss"][-1])
        if not spent:
            return self._stop(st, rows, rnd, 1)
        if st.stale_rounds >= cfg.patience:
            return self._stop(st, rows, rnd, 3)
        if rnd == cfg.max_rounds:
            return self._stop(st, rows, rnd, 0)
        return rows

    def at_software(self, st: _State) -> bool:
        """`stop_at_software` and the repair set's accuracy as last measured is at least the
        software network's."""
        return self.cfg.stop_at_software and \
            self.model(st, REPAIR_SET).score(st.g).accuracy >= self.software_accuracy

    def disturbance(self, st: _State) -> float:
        """The repair-set loss the past rounds lost per pulse beyond their prediction (pooled,
        at least 0). A round measures the repair set before its tunings (the model's base,
        after the round's calibration) and after; the next round re-fits the calibration (no
        pulse) before its own tunings. So a round's loss beyond prediction is the loss the next
        round starts its tunings from (the last round: its measurement after) minus the base
        less the gain the model expected of the chosen correction: the disturbance its write
        pulses caused in the tiles it pulsed (V/3 stress switching slow fluctuators) and the
        tunings' misses, less what a free re-calibration recovers."""
        pulses = {}
        for *_, n, rnd in st.history:
            pulses[rnd] = pulses.get(rnd, 0) + n
        after = {r: max(j for j, (q, _) in enumerate(st.losses) if q == r)
                 for r in pulses if any(q == r for q, _ in st.losses)}
        lost, spent, rounds = 0.0, 0, 0
        for rnd, gain in st.expected.items():
            i = after.get(rnd, 0)
            if not pulses.get(rnd) or i == 0:
                continue
            # the next round's base: the entry before its measurement after tuning, or the last
            # of its calibrations where it tuned nothing; the round's own where none followed
            j = after[rnd + 1] - 1 if rnd + 1 in after else \
                max((k for k, (q, _) in enumerate(st.losses) if q == rnd + 1), default=i)
            lost += st.losses[j][1] - (st.losses[i - 1][1] - gain)
            spent += pulses[rnd]
            rounds += 1
        return max(lost / spent, 0.0) if rounds >= self.cfg.disturbance_rounds else 0.0

    def rollback(self, st: _State, rnd: int):
        """(devices, targets) that undo round rnd - 1 where it left the measured repair-set loss
        higher than before it and was not itself a rollback: every device of the tiles it
        pulsed (the V/3 write disturbs all of them) that is now out of its tuning band around
        its read-back before that round; None otherwise."""
        prev = rnd - 1
        if not self.cfg.rollback or prev not in st.g_rounds or prev in st.rolled_back:
            return None
        after = [loss for r, loss in st.losses if r == prev]
        before = [loss for r, loss in st.losses if r < prev]
        if not after or not before or after[-1] <= before[-1]:
            return None
        g0 = st.g_rounds[prev]
        tol = self.cfg.tune.tolerance
        tiles = {t for t, when in st.changed_at.items() if when == _when(prev, "tuning")}
        devs = np.flatnonzero(np.isin(self.plan.tile, list(tiles)) & ~st.stuck
                              & (np.abs(st.g - g0) > 2.0 * tol * g0))
        if not devs.size:
            return None
        st.rolled_back.add(rnd)
        return devs, g0[devs]

    def calibrate(self, st: _State, rnd: int, rows: dict) -> None:
        """Fit the periphery's calibration (`RepairConfig.calibrate`) layer by layer from the
        first: each layer's on the refit set, measured with the layers before it calibrated,
        towards the pre-activations the wanted weights give on the measured inputs (the last
        layer, with `calibration_target` "labels", on the refit set's labels); kept where
        the model predicts a lower repair-set loss (decision ``calibrate``), and the repair set
        then measured with it. No pulse."""
        cfg, plan = self.cfg, self.plan
        if cfg.calibrate == "off":
            return
        want = plan_weights(plan, self.g_wanted(st))
        x = self.sets[REFIT_SET][0]
        for li in range(self.n_layers):
            self.measure(st, REFIT_SET, rnd, rows)
            zs = st.zs[REFIT_SET]
            h = x if li == 0 else activation(plan, zs[li - 1])
            w, b = want[li]
            if cfg.calibration_target == "joint" or \
                    (li == self.n_layers - 1 and cfg.calibration_target != "software"):
                gain, offset = self.fit_on_labels(self.model(st, REFIT_SET), li, st.g, zs[li])
            else:   # (a flipped unit stays flipped)
                gain, offset = fit_calibration(st.cal.raw(li, zs[li]), h @ w.T + b,
                                               **self.calibration_kw(li), sign=st.cal.gain[li])
            new = st.cal.with_layer(li, gain, offset)
            rep = self.model(st, REPAIR_SET)
            before, after = rep.score(st.g), rep.score(st.g, new)
            keep = after.loss < before.loss
            _add(rows, "decisions", _decision(rnd, CALIBRATE, li, gain.size, 0, 0.0,
                                              after.accuracy - before.accuracy,
                                              before.loss - after.loss,
                                              CHOSEN if keep else NO_GAIN))
            if not keep:
                continue
            st.cal = new
            _add(rows, "calibration", {"round": np.full(gain.size, rnd),
                                       "layer": np.full(gain.size, li),
                                       "out": np.arange(gain.size), "gain": gain,
                                       "offset": offset})
            # before the tunings of this round (or in the final unit, where none follow)
            loss = self.measure(st, REPAIR_SET, rnd, rows, at=float(rnd))
            if loss is not None:
                _progress(st, rnd, loss)

    def _stop(self, st: _State, rows: dict, rnd: int, reason: int) -> dict:
        st.stopped = reason
        _add(rows, "decisions", _decision(rnd, STOP, reason, -1, 0, 0.0, 0.0, 0.0, CHOSEN))
        return rows

    # -- choosing ----------------------------------------------------------------------------
    def candidates(self, st: _State, rnd: int, rows: dict) -> list[dict]:
        plan, cfg = self.plan, self.cfg
        rep = self.model(st, REPAIR_SET)
        base, grad = rep.gradient(st.g)
        tol = cfg.tune.tolerance
        dp, dm = pairs(plan)
        last = self.n_layers - 1
        step = self.step
        out = []
        cost = self.cost(st)
        self.measure(st, REFIT_SET, rnd, rows)   # only what moved since the calibration's
        fit_model = self.model(st, REFIT_SET)
        recal = cfg.recalibrated_candidates and cfg.calibrate != "off" and \
            cfg.calibration_target != "software"
        drift = self.drift(st)
        # the same draws for every candidate of the round (their differences are not chance)
        z = np.random.default_rng([self.seed, rnd]).standard_normal(
            (cfg.disturbance_samples, plan.n_devices)) if drift is not None else None

        def score(g_new, cal, devs, pulses, miss=None):
            """The repair set's expected score at g_new under `cal`; with
            `recalibrated_candidates`, the better of that and `cal` with its last layer re-fitted
            on the refit set at g_new, as the next round's calibration will (a calibration that
            absorbed a broken weight would otherwise make its repair look like a loss); with
            `expected_disturbance`, averaged over the drift the tunings' pulses are expected to
            cause in the other devices of their tiles; `miss` (draws, devices): the tuned
            devices' own relative errors, one row per draw (else they end at their targets)."""
            cal = self.recalibrated(fit_model, rep, g_new, cal) if recal else cal
            if drift is None and miss is None:
                return rep.score(g_new, cal)
            rel = np.zeros(plan.n_devices) if drift is None else \
                drift.spread(plan, devs, pulses, st.stuck)
            draws = z if z is not None else np.zeros((miss.shape[0], plan.n_devices))
            scores = []
            for i, zz in enumerate(draws):
                g_d = np.maximum(g_new * (1.0 + rel * zz), 0.0)
                c = cal
                if miss is not None:
                    g_d[devs] = g_new[devs] * (1.0 + miss[i % miss.shape[0]])
                    # the next round calibrates the chip as the errors left it; they are the
                    # last layer's (a whole candidate pulses no other), so is its calibration
                    c = self.recalibrated(fit_model, rep, g_d, cal, hidden=False) if recal \
                        else cal
                elif recal and cfg.recalibrated_draws:
                    # the next round calibrates the chip as the drift left it: every layer
                    # where the drift reaches a hidden one, else the last
                    c = self.recalibrated(fit_model, rep, g_d, cal,
                                          hidden=bool(np.any(plan.layer[rel > 0] < last)))
                scores.append(rep.score(g_d, c))
            return Score(float(np.mean([q.accuracy for q in scores])),
                         float(np.mean([q.loss for q in scores])))

        def candidate(action, layer, k, want, cal=None, whole=False, atomic=False, **extra):
            """`cal`: the calibration the candidate was fitted under (a flip's, or one with the
            last layer reset), else the current one. `whole`: every move in one round (no
            `step`), judged with the transfer's errors on the devices it tunes, and offered
            only where the budget holds half as much again as it is expected to take (a
            layer left half re-programmed would be neither fit). `atomic`: every move in one
            round and that budget check, judged as the others (a unit negated in the
            periphery with part of its weights negated computes nothing it should)."""
            devs, tgts = pair_moves(plan, st.g, st.stuck, k, want, tol, cost)
            if not devs.size:
                return
            slope = grad if cal is None else rep.with_calibration(cal).gradient(st.g)[1]
            if devs.size > step and not (whole or atomic):
                first = -slope[devs] * (tgts - st.g[devs])
                keep = np.sort(np.argsort(-first, kind="stable")[:step])
                devs, tgts = devs[keep], tgts[keep]
            order = tuning_order(plan, devs, np.abs(slope[devs]) * tgts)
            devs, tgts = devs[order], tgts[order]
            g_new = st.g.copy()
            g_new[devs] = tgts
            pulses = cost(st.g[devs], tgts)
            miss = None
            if (whole or atomic) and 1.5 * pulses.sum() > self.budget - st.used:
                return
            if whole:
                lo, hi = errors.draws(devs.size, cfg.disturbance_samples,
                                      np.random.default_rng([self.seed, rnd, 1]))
                miss = np.where(tgts <= plan.g_min * (1 + 1e-6), lo, hi)
            s = score(g_new, cal or st.cal, devs, pulses, miss)
            out.append({"action": action, "layer": layer, "weights": int(k.size),
                        "devices": devs,
                        "targets": tgts, "gain": (s.accuracy - base.accuracy, base.loss - s.loss),
                        "expected_pulses": float(pulses.sum()), **extra})

        def fitted(action, layer, scope, cal=None, toward=None, **extra):
            """A refit of `scope` under `cal`; with `recalibrated_candidates`, also one under
            `cal` with the last layer's calibration reset (the weights fitted as the software
            network's, the calibration then re-fitted to them: where a calibration absorbed a
            broken weight, the refit under it only works around it)."""
            cal = cal or st.cal
            variants = [cal]
            if recal and not (np.all(cal.gain[last] == 1) and np.all(cal.offset[last] == 0)):
                n = cal.gain[last].size
                variants.append(cal.with_layer(last, np.where(cal.gain[last] < 0, -1.0, 1.0),
                                               np.zeros(n)))
            for c in variants:
                r = refit(fit_model if c is st.cal else fit_model.with_calibration(c),
                          scope_pairs(plan, scope), st.g, st.stuck, l2=cfg.l2, toward=toward)
                candidate(action, layer, r.pair, r.diff, cal=None if c is st.cal else c,
                          pairs=r.pair, diff=r.diff, **extra)

        # retune: the pairs whose difference error costs the most (first order: dL/dG+ times
        # the distance to the wanted difference), among those a tuning can move
        err = st.diff - (st.g[dp] - st.g[dm])
        first = -grad[dp] * err
        movable = ~(st.stuck[dp] & st.stuck[dm]) & (np.abs(err) > 2.0 * tol * plan.g_min)
        k = np.flatnonzero(movable & (first > 0))
        k = k[np.argsort(-first[k], kind="stable")][:step]
        if k.size:
            candidate(RETUNE, -1, np.sort(k), st.diff[np.sort(k)])
        # compensate / refit: fitted on the refit set's measured activations
        for li in range(self.n_layers):
            # the outputs of the layer that hold a stuck device not compensated for yet
            new = [d for d in np.flatnonzero(st.stuck & (plan.layer == li))
                   if int(d) not in st.compensated]
            if new:
                fitted(COMPENSATE, li, {li: sorted({int(plan.out[d]) for d in new})})
        fitted(REFIT, last, {last: range(plan.sizes[-1])})
        if last:   # every layer, jointly
            r = refit(fit_model, scope_pairs(plan, {li: range(plan.sizes[li + 1])
                                                    for li in range(self.n_layers)}),
                      st.g, st.stuck, l2=cfg.l2)
            candidate(REFIT, -1, r.pair, r.diff, pairs=r.pair, diff=r.diff)
        for li, unit in self.flips(st):
            # the unit negated in the periphery, the next layer re-fitted under it with the
            # stuck devices held: the weights from the unit (and the biases) change sign
            fitted(FLIP, li - 1, {li: range(plan.sizes[li + 1])},
                   cal=st.cal.flipped(li - 1, unit),
                   toward=flipped_weights(plan, st.g, li, unit), unit=unit, atomic=True)
        for li, unit in self.swaps(st):
            # the unit negated in the periphery and its own pairs re-fitted negated
            fitted(SWAP, li, {li: [unit]}, cal=st.cal.flipped(li, unit),
                   toward=swapped_weights(plan, self.g_wanted(st), li, unit), unit=unit, atomic=True)
        errors = self.errors(st) if cfg.robust_refit else None
        if errors is not None:   # the last layer, for a programming that misses, all at once
            r = robust_refit(fit_model, scope_pairs(plan, {last: range(plan.sizes[-1])}), st.g,
                             st.stuck, errors, l2=cfg.l2, seed=self.seed + rnd)
            candidate(ROBUST, last, r.pair, r.diff, whole=True, pairs=r.pair, diff=r.diff)
        if cfg.sparse_refit:   # every layer, the first included: few weights at a time
            sizes = [2 ** i for i in range(int(np.log2(step)) + 1)]
            for r in sparse_refits(fit_model, np.arange(dp.size), st.g, st.stuck, sizes=sizes,
                                   l2=cfg.l2):
                candidate(SPARSE, -1, r.pair, r.diff, pairs=r.pair, diff=r.diff)
        return out

    def calibration_kw(self, layer: int) -> dict:
        """The calibration fits' bounds and penalty for `layer` (`RepairConfig`)."""
        cfg = self.cfg
        return {"gain_range": cfg.gain_range, "l2": cfg.calibration_l2,
                "offset_max": cfg.offset_max * float(self.plan.scales[layer]),
                "offset_only": cfg.calibrate == "offset"}

    def fit_on_labels(self, model: MeasuredModel, layer: int, g: np.ndarray,
                      z_last: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """`layer`'s gains and offsets fitted on `model`'s labels at conductances g (its
        calibration's signs kept: a flipped unit stays flipped): the last layer by the loss on
        its pre-activations `z_last` (calibrated), a hidden one jointly with the layers after
        it (`fit_calibration_joint`)."""
        kw = self.calibration_kw(layer)
        if layer == self.n_layers - 1:
            return fit_calibration_loss(model.cal.raw(layer, z_last), model.y, **kw,
                                        sign=model.cal.gain[layer])
        kw["offset_max"] = self.cfg.offset_max * self.plan.scales
        return fit_calibration_joint(model, layer, g, **kw)

    def recalibrated(self, fit_model: MeasuredModel, judge: MeasuredModel, g: np.ndarray,
                     cal: Calibration, hidden: bool = True) -> Calibration:
        """`cal` re-fitted on the refit set at conductances g as the next round's calibration
        would (`calibrate`): layer by layer from the first, the hidden layers only with
        `calibration_target` "joint" (the others fit them towards measured software
        pre-activations the model cannot predict), each layer kept where it predicts a lower
        loss on the repair set (`judge`). `hidden` False: the last layer only."""
        last = self.n_layers - 1
        joint = hidden and self.cfg.calibration_target == "joint"
        for li in [*(range(last) if joint else ()), last]:
            z = fit_model.outputs(g, cal)[-1] if li == last else None
            new = cal.with_layer(li, *self.fit_on_labels(fit_model.with_calibration(cal), li, g,
                                                         z))
            if judge.score(g, new).loss < judge.score(g, cal).loss:
                cal = new
        return cal

    def drift(self, st: _State) -> Drift | None:
        """The chip's write disturbance as its transfer left it (`fit_drift`); None where
        `expected_disturbance` is off or the prior tunings are not the transfer's, one per
        device of the plan. (Scaled by what the repair's own read-backs showed, 0.6-0.75 of
        it, the half-moons repairs ended worse: docs/chip-in-the-loop.md.)"""
        if self._drift is False:
            ok = self.cfg.expected_disturbance and st.g0 is not None and \
                self.prior[0].size == self.plan.n_devices
            # (the stuck devices known before: a resumed repair fits the same drift)
            self._drift = fit_drift(self.plan, st.g0, self.prior[1], self.prior[2],
                                    st.stuck if st.stuck0 is None else st.stuck0) if ok else None
        return self._drift

    def errors(self, st: _State) -> ProgrammingErrors | None:
        """The relative errors the transfer left (`ProgrammingErrors`: the read-back of the
        chip as found against the plan's targets); None before unit 0's read-back."""
        if self._errors is False:
            if st.g0 is None:
                return None
            self._errors = ProgrammingErrors.measured(
                self.plan, st.g0, self.plan.target, st.stuck if st.stuck0 is None else st.stuck0)
        return self._errors

    def flips(self, st: _State) -> list[tuple[int, int]]:
        """(layer, unit of the layer before) of every weight with a stuck device after the
        first layer, where the activation lets the next layer undo a negated unit (sigmoid:
        s(-z) = 1 - s(z); tanh: odd; not ReLU) and the periphery calibrates."""
        plan = self.plan
        if self.cfg.calibrate == "off" or plan.activation not in ("sigmoid", "tanh"):
            return []
        d = np.flatnonzero(st.stuck & (plan.layer >= 1) & (plan.param == WEIGHT))
        return sorted({(int(plan.layer[i]), int(plan.inp[i])) for i in d})

    def g_wanted(self, st: _State) -> np.ndarray:
        """Conductances whose G+ - G- are the wanted ``st.diff`` (G- at 0): what `plan_weights`
        turns into the wanted weights (only the difference counts)."""
        dp, _ = pairs(self.plan)
        g = np.zeros(self.plan.n_devices)
        g[dp] = st.diff
        return g

    def swaps(self, st: _State) -> list[tuple[int, int]]:
        """(layer, unit) of every unit, in any layer, whose stuck devices leave its wanted
        weights (``st.diff``) further out of reach than the negated ones: a stuck device on the
        wrong side of its pair (a G+ stuck low where the weight must be large and positive).
        With the unit negated in the periphery and its own pairs swapped (G- - G+) the stuck
        device is on the right side; the unit computes what it did whatever its activation,
        and the next layer is left as it is. Needs the periphery to calibrate. At most
        `MAX_SWAPS`, those that bring the most out of reach into reach first."""
        plan = self.plan
        if self.cfg.calibrate == "off" or not st.stuck.any():
            return []
        dp, dm = pairs(plan)
        fp, fm = st.stuck[dp], st.stuck[dm]
        k = np.flatnonzero(fp | fm)
        # what G+ - G- can reach with the stuck devices where they are
        lo = np.where(fp[k], st.g[dp[k]], plan.g_min) - np.where(fm[k], st.g[dm[k]], plan.g_max)
        hi = np.where(fp[k], st.g[dp[k]], plan.g_max) - np.where(fm[k], st.g[dm[k]], plan.g_min)
        want = st.diff[k]
        miss = np.maximum(lo - want, 0) + np.maximum(want - hi, 0)
        miss_swapped = np.maximum(lo + want, 0) + np.maximum(-want - hi, 0)
        gaps = []
        for li, unit in sorted({(int(plan.layer[dp[i]]), int(plan.out[dp[i]])) for i in k}):
            mine = (plan.layer[dp[k]] == li) & (plan.out[dp[k]] == unit)
            gap = float(miss[mine].sum() - miss_swapped[mine].sum())
            # by more than a tenth of the range: a swap re-programs the unit's every pair
            if gap > 0.1 * (plan.g_max - plan.g_min):
                gaps.append((-gap, li, unit))
        # the MAX_SWAPS that gain the most reach (each is a refit, judged like every candidate)
        return [(li, unit) for _, li, unit in sorted(gaps)[:MAX_SWAPS]]

    def cost(self, st: _State) -> TuningCost:
        """The pulse-cost model from the prior tunings (the transfer's) and the repair's own."""
        past = [self.prior] + ([np.array(st.history, float).T] if st.history else [])
        g0, t, n = (np.concatenate([p[i] for p in past]) for i in range(3))
        ok = np.isfinite(g0)   # (a tuning cut off by an interruption: its start is unknown)
        g0, t, n = g0[ok], t[ok], n[ok]
        return TuningCost(self.plan.g_min, self.plan.g_max, self.cfg.expected_pulses).fit(g0, t, n)

    # -- applying ----------------------------------------------------------------------------
    def apply(self, st: _State, devices: np.ndarray, targets: np.ndarray, rnd: int,
              rows: dict) -> bool:
        """Tune `devices` to `targets` (tile by tile, each tile's in the order given:
        `tuning_order`) while the budget holds a tuning's worst case; False when the budget ran
        out before the last one."""
        plan, cfg = self.plan, self.cfg
        order = np.argsort(plan.tile[devices], kind="stable")
        for t in sorted(set(plan.tile[devices].tolist())):
            rig = self.open(self.crossbars[t])
            with rig:
                for i in order[plan.tile[devices[order]] == t]:
                    d, target = int(devices[i]), float(targets[i])
                    cap = min(cfg.tune.max_pulses, self.budget - st.used)
                    if cap < cfg.min_cap:
                        return False
                    tc = cfg.tune.model_copy(update={"max_pulses": int(cap)})
                    r, c = int(plan.row[d]), int(plan.col[d])
                    if self.ledger is not None:   # on hardware: written before the pulses
                        self.ledger.reserve(rnd, d, target, cap)
                    res = tune(rig, r, c, target, tc)
                    row = {"round": rnd, "device": d, "tile": t, "row": r, "col": c,
                           "target": target, "g_before": res.g_initial,
                           "g_after": res.g_final, "converged": res.converged,
                           "pulses": res.pulses, "cap": cap, "t_start": res.t_start,
                           "t_end": res.t_end}
                    if self.ledger is not None:
                        self.ledger.done(rnd, row)
                    self._book(st, rows, row)
        return True

    def _book(self, st: _State, rows: dict, row: dict) -> None:
        """Count one tuning (its row's plain values) in the state and the unit's rows."""
        d, rnd = int(row["device"]), int(row["round"])
        st.used += int(row["pulses"])
        st.tunings += 1
        st.history.append((row["g_before"], row["target"], row["pulses"], rnd))
        t = int(self.plan.tile[d])
        st.changed_at[t] = max(st.changed_at.get(t, 0.0), _when(rnd, "tuning"))
        if not row["converged"]:
            st.stuck[d] = True
        _add(rows, "tunings", {k: [v] for k, v in row.items()})

    def recovered(self, st: _State, rnd: int, rec: Recovered) -> dict:
        """The rows of what the interrupted unit `rnd` did on hardware (`protocols.ledger`):
        its tunings that ended, those cut off booked at their cap as failed (their pulses are
        unknown; the device is not tuned again), and the tiles they pulsed read back, so the
        resumed round counts every pulse against the budget and starts from the chip as it
        is."""
        plan, rows = self.plan, {}
        for row in rec.done:
            self._book(st, rows, {**row, "round": rnd})
        for d, target, cap in rec.cut:
            self._book(st, rows, {
                "round": rnd, "device": d, "tile": int(plan.tile[d]), "row": int(plan.row[d]),
                "col": int(plan.col[d]), "target": target, "g_before": np.nan,
                "g_after": np.nan, "converged": False, "pulses": cap, "cap": cap,
                "t_start": np.nan, "t_end": np.nan})
        tiles = {int(plan.tile[d]) for d in rec.devices}
        _add(rows, "readback", self.read_back(st, tiles, rnd))
        return rows


def tuning_order(plan: ConductancePlan, devices: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The order to tune `devices` in: tile by tile, each tile's by increasing `cost` (what
    the device's own relative drift would cost the loss: |dL/dG| G). A tile's later tunings
    drift its earlier ones (the transfer: 0.45 % rms for a tile's last device, 7 % for one
    that 1-50 pulses followed), so the device that can least afford it goes last."""
    return np.lexsort((np.asarray(cost, float), plan.tile[np.asarray(devices, np.int64)]))


def choose(cands: list[dict], rate: float, by: str) -> dict | None:
    """The candidate to apply, None where none is expected to gain. Each candidate (its
    ``gain``: expected (accuracy, loss) gains; ``expected_pulses``) is charged ``rate`` times
    its expected pulses for the disturbance (its ``disturbance``) and given a ``key`` (None: no
    gain). By "loss": the largest loss gain per pulse among those whose loss gain exceeds the
    charge. By "accuracy": the largest accuracy gain per pulse, then, where none gains
    accuracy, the largest loss gain per pulse among those that lose none; with a charge, only
    those whose loss gain exceeds it."""
    best, key = None, None
    for c in cands:
        acc_gain, loss_gain = c["gain"]
        c["disturbance"] = rate * c["expected_pulses"]
        per_pulse = loss_gain / c["expected_pulses"]
        if c["disturbance"] > 0 and loss_gain <= c["disturbance"]:
            k = None
        elif by == "loss":
            k = (0, per_pulse) if loss_gain > 0 else None
        elif acc_gain > 0:
            k = (1, acc_gain / c["expected_pulses"])
        else:
            k = (0, per_pulse) if acc_gain == 0 and loss_gain > 0 else None
        c["key"] = k
        if k is not None and (key is None or k > key):
            best, key = c, k
    return best


def _decision(rnd, action, layer, weights, devices, pulses, acc_gain, loss_gain, why,
              disturbance=0.0) -> dict:
    return {"round": [rnd], "action": [action], "layer": [layer], "weights": [weights],
            "devices": [devices], "expected_pulses": [pulses],
            "expected_accuracy_gain": [acc_gain], "expected_loss_gain": [loss_gain],
            "disturbance": [disturbance], "why": [why]}


def _merged(first: dict, then: dict) -> dict:
    """The rows of two parts of one unit, table by table, `first`'s rows first."""
    out = {t: {c: list(v) for c, v in cols.items()} for t, cols in first.items()}
    for table, cols in then.items():
        _add(out, table, cols)
    return out


def _add(rows: dict, table: str, part: dict) -> None:
    """Append `part` (column -> values) to the rows of `table` in this unit."""
    have = rows.get(table)
    if have is None:
        rows[table] = {k: np.asarray(v).reshape(-1).tolist() for k, v in part.items()}
    else:
        for k, v in part.items():
            have[k].extend(np.asarray(v).reshape(-1).tolist())


# -- reading it back ---------------------------------------------------------------------------

def summarize(plan: ConductancePlan, tables: dict[str, pd.DataFrame], budget: int) -> dict:
    """Accuracies before and after (fractions), pulses, instrument time and why it stopped."""
    me, tu, de, pr = (tables[n] for n in ("measurements", "tunings", "decisions", "predictions"))
    out: dict = {"budget": int(budget), "pulses": int(tu.pulses.sum()), "tunings": int(len(tu)),
                 "failed_tunings": int((~tu.converged).sum()),
                 "rounds": int(len(de[(de.why == CHOSEN) & ~de.action.isin([STOP, CALIBRATE])]))}
    stop = de[de.action == STOP]
    if len(stop):
        out["stopped"] = STOP_REASONS[int(stop.layer.iloc[0])]
    for phase, name in ((0, "before"), (1, "after")):
        p = pr[pr.phase == phase]
        if len(p):
            out[f"accuracy_{name}"] = float((p.predicted == p.label).mean())
            out[f"accuracy_readback_{name}"] = float((p.predicted_readback == p.label).mean())
    rep = me[me.split == REPAIR_SET]
    if len(rep):
        out["repair_set_accuracy_before"] = float(rep.accuracy.iloc[0])
        out["repair_set_accuracy_after"] = float(rep.accuracy.iloc[-1])
    un = tables["units"]
    out["instrument_time_s"] = float(un.seconds.sum())
    out["instrument_time_by_category_s"] = {c: (None if np.isnan(v) else float(v))
                                            for c, v in un[list(TIME_CATEGORIES)].sum().items()}
    out["chosen"] = {ACTIONS[a]: int(n) for a, n in
                     de[(de.why == CHOSEN) & (de.action != STOP)].action.value_counts().items()}
    cal = calibration_of(plan, tables.get("calibration", pd.DataFrame()))
    if cal is not None:
        out["calibration"] = {str(li): {"gain": cal.gain[li].tolist(),
                                        "offset": cal.offset[li].tolist()}
                              for li in range(len(cal.gain))}
    return out


def calibration_of(plan: ConductancePlan, table: pd.DataFrame) -> Calibration | None:
    """The periphery calibration a repair left (its ``calibration`` table: per layer the last
    one kept), None where it fitted none."""
    if not len(table):   # (an empty table, or none: a file from before the calibration)
        return None
    cal = Calibration.identity(plan)
    for li in sorted(set(table.layer.tolist())):
        c = table[table.layer == li].drop_duplicates("out", keep="last").sort_values("out")
        cal = cal.with_layer(li, c.gain.to_numpy(), c.offset.to_numpy())
    return cal


def summary_lines(summary: dict) -> list[str]:
    """The stored summary as lines: the metrics, then the calibration per layer."""
    out = metric_lines({k: v for k, v in summary.items() if k != "calibration"}, SUMMARY)
    for li, cal in (summary.get("calibration") or {}).items():
        out.append(f"calibration, layer {li} (z' = gain z + offset, per output): " + ", ".join(
            f"x{a:.3f}{c:+.3f}" for a, c in zip(cal["gain"], cal["offset"], strict=True)))
    return out


def load_repair(path, run: str | None = None) -> ChipRunResult:
    path = Path(path)
    info, plan, tables = stored_plan_run(path, PROTOCOL, run)
    summary = info.summary if info.complete else summarize(plan, tables, info.config["budget"])
    return ChipRunResult(path, info.name, summary, 0, plan, tables)
