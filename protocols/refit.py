"""The measured network as a model repair can reason with: loss, sensitivities, refits.

Numpy and scipy only (a lab PC needs no torch). The model is the plan's MLP with the weights of
the conductances `g` (plan order, [S]) plus, per data point and layer, the *residual* that the
analog measurement showed and the numpy inference does not explain:

    z_l = h_{l-1} W_l(g)^T + b_l(g) + r_l,     r_l = z_l(measured) - (h_{l-1} W_l(g_est)^T + b_l(g_est))

with h_{l-1} the measured input of layer l (x for the first layer). At g = g_est (the read-back
conductances) the model reproduces the measured pre-activations exactly; for other conductances
it predicts them to first order, keeping each point's analog error (line resistance, sneak
paths, non-linearity) as it was measured. Loss: binary cross-entropy with logits (one output)
or cross-entropy (several), averaged over the points.

With the periphery's digital calibration (`protocols.inference.Calibration`) the model is
``z_l = a_l * (h_{l-1} W_l(g)^T + b_l(g) + r_l) + c_l`` (the residual is of the raw measured
pre-activation), and `fit_calibration` fits a and c per output (bounded least squares).

`Refit` re-optimises the weights of chosen outputs of one layer (scipy L-BFGS-B) with the
devices that cannot move (stuck) held at their measured conductances: a weight whose G+ (or
G-) is stuck is reachable only through its partner, which the bounds express.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear, minimize
from threadpoolctl import threadpool_limits

from protocols.inference import Calibration
from protocols.plan import BIAS, PLUS, WEIGHT, ConductancePlan, activate, plan_weights


def _act_grad(name: str, z: np.ndarray, h: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "relu":
        return (z > 0).astype(float)
    return 1.0 - h * h


def loss_and_dlogits(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss, dloss/dz (N, out), predicted classes) for logits z and labels y."""
    n = z.shape[0]
    if z.shape[1] == 1:
        t = y.astype(float)
        zz = z[:, 0]
        loss = np.mean(np.logaddexp(0.0, zz) - t * zz)
        p = 0.5 * (1.0 + np.tanh(0.5 * zz))
        return float(loss), ((p - t) / n)[:, None], (zz > 0).astype(np.int64)
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    loss = np.mean(lse - z[np.arange(n), y])
    p = np.exp(z - lse[:, None])
    p[np.arange(n), y] -= 1.0
    return float(loss), p / n, z.argmax(1).astype(np.int64)


@dataclass
class Score:
    accuracy: float
    loss: float


class MeasuredModel:
    """The network as measured on a data set: inputs x, labels y, measured pre-activations
    `z_measured` (one (N, out) array per layer, with `calibration` applied), read-back
    conductances `g_est`."""

    def __init__(self, plan: ConductancePlan, x: np.ndarray, y: np.ndarray,
                 z_measured: Sequence[np.ndarray], g_est: np.ndarray,
                 calibration: Calibration | None = None):
        self.plan, self.x, self.y = plan, np.asarray(x, float), np.asarray(y, np.int64)
        self.g_est = np.asarray(g_est, float)
        self.cal = calibration or Calibration.identity(plan)
        self.inputs = [self.x] + [activate(plan.activation, z) for z in z_measured[:-1]]
        est = plan_weights(plan, self.g_est)
        self.residual = [self.cal.raw(li, z) - (h @ w.T + b) for li, (z, h, (w, b))
                         in enumerate(zip(z_measured, self.inputs, est, strict=True))]
        span = plan.g_max - plan.g_min
        self._factor = plan.scales / span       # dw/dg per layer
        self._sign = np.where(plan.sign == PLUS, 1.0, -1.0)

    def with_calibration(self, cal: Calibration) -> MeasuredModel:
        """The same measurement under another calibration: each point's raw residual as
        measured, every later layer's input predicted from the new calibrated outputs (a
        hidden unit's flipped or rescaled activation drives the next layer's rows)."""
        m = copy.copy(self)
        m.cal = cal
        _, m.inputs = m._forward(plan_weights(self.plan, self.g_est))
        return m

    def _forward(self, layers, start: int = 0, h: np.ndarray | None = None,
                 cal: Calibration | None = None):
        """Pre-activations (calibrated: `cal`, else the model's) and activations from layer
        `start` on (h: its input)."""
        zs, hs = [], []
        h = self.inputs[start] if h is None else h
        cal = cal or self.cal
        last = len(layers) - 1
        for li in range(start, len(layers)):
            w, b = layers[li]
            z = cal.apply(li, h @ w.T + b + self.residual[li])
            zs.append(z)
            hs.append(h)
            if li < last:
                h = activate(self.plan.activation, z)
        return zs, hs

    def outputs(self, g: np.ndarray, cal: Calibration | None = None) -> list[np.ndarray]:
        """Every layer's calibrated pre-activations at conductances g (and another
        calibration: `cal`)."""
        return self._forward(plan_weights(self.plan, g), cal=cal)[0]

    def score(self, g: np.ndarray, cal: Calibration | None = None) -> Score:
        """Accuracy and loss at conductances g (and another calibration: `cal`)."""
        loss, _, pred = loss_and_dlogits(self.outputs(g, cal)[-1], self.y)
        return Score(float(np.mean(pred == self.y)), loss)

    def gradient(self, g: np.ndarray) -> tuple[Score, np.ndarray]:
        """Score at g and dloss/dg for every device (plan order) [1/S]."""
        plan = self.plan
        layers = plan_weights(plan, g)
        zs, hs = self._forward(layers)
        loss, dz, pred = loss_and_dlogits(zs[-1], self.y)
        grad = np.zeros(plan.n_devices)
        for li in range(len(layers) - 1, -1, -1):
            dz = dz * self.cal.gain[li]   # d loss / d(raw pre-activation)
            dw = dz.T @ hs[li]
            db = dz.sum(0)
            m = plan.layer == li
            wm = m & (plan.param == WEIGHT)
            bm = m & (plan.param == BIAS)
            grad[wm] = self._sign[wm] * self._factor[li] * dw[plan.out[wm], plan.inp[wm]]
            grad[bm] = self._sign[bm] * self._factor[li] * db[plan.out[bm]]
            if li:
                h = hs[li]
                dz = (dz @ layers[li][0]) * _act_grad(plan.activation, zs[li - 1], h)
        return Score(float(np.mean(pred == self.y)), loss), grad


def pairs(plan: ConductancePlan) -> tuple[np.ndarray, np.ndarray]:
    """Device indices (G+, G-) of every weight and bias of the plan, one pair per entry."""
    key = np.stack([plan.layer, plan.param, plan.out, plan.inp], axis=1)
    order = np.lexsort((plan.sign, *key.T[::-1]))
    both = order.reshape(-1, 2)           # each (layer, param, out, inp) has a G+ and a G-
    if not (np.all(plan.sign[both[:, 0]] == PLUS) and np.all(plan.sign[both[:, 1]] != PLUS)):
        raise ValueError("conductance plan: a weight without exactly one G+ and one G-")
    return both[:, 0], both[:, 1]


@dataclass
class Refit:
    """The wanted conductance difference G+ - G- [S] of every weight and bias of the refitted
    outputs (`pair` indexes `pairs(plan)`), and the fit's objective before and after."""

    pair: np.ndarray
    diff: np.ndarray
    loss_before: float
    loss_after: float


def scope_pairs(plan: ConductancePlan, scope: dict[int, Sequence[int]]) -> np.ndarray:
    """The pairs (indexes of `pairs(plan)`) of the outputs `scope[layer]` of each layer."""
    dp, _ = pairs(plan)
    sel = np.zeros(dp.size, bool)
    for li, outs in scope.items():
        sel |= (plan.layer[dp] == li) & np.isin(plan.out[dp], np.asarray(list(outs), int))
    return np.flatnonzero(sel)


def refit(model: MeasuredModel, k: np.ndarray, g: np.ndarray, fixed: np.ndarray, *,
          l2: float = 0.02, l1: float = 0.0, max_iter: int = 300,
          toward: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> Refit:
    """Re-optimise, jointly, the weights and biases of pairs `k` (indexes of `pairs(plan)`,
    e.g. `scope_pairs`) on the model's data, every other weight as it is at conductances g. A
    pair with a fixed (stuck) device can only reach the weights its free partner can make
    within [g_min, g_max]; a pair with both fixed keeps its weight. The objective is the
    model's loss plus l2 * sum ((w - w(g)) / scale)^2 plus l1 * sum |w - w(g)| / scale over
    the refitted weights (scale: the layer's weight per conductance range, so both price a
    change of the whole range the same in every layer and network). With l1 > 0 most weights stay where they are (a
    sparse change: few devices to re-program, few V/3 writes to disturb their neighbours).
    `toward`: per layer (w, b), the weights the fit starts from and the l2 and l1 terms pull
    towards instead of w(g) (a flipped unit's outgoing weights negated: `flipped_weights`)."""
    plan = model.plan
    layers = plan_weights(plan, g)
    dp, dm = pairs(plan)
    k = np.asarray(k, np.int64)
    lay, out = plan.layer[dp[k]], plan.out[dp[k]]
    bias = plan.param[dp[k]] == BIAS
    inp = np.maximum(plan.inp[dp[k]], 0)
    c = model._factor[lay]
    gp, gm, fp, fm = g[dp[k]], g[dm[k]], fixed[dp[k]], fixed[dm[k]]
    lo = (np.where(fp, gp, plan.g_min) - np.where(fm, gm, plan.g_max)) * c
    hi = (np.where(fp, gp, plan.g_max) - np.where(fm, gm, plan.g_min)) * c
    near = layers if toward is None else toward
    ref = np.where(bias, [near[a][1][o] for a, o in zip(lay, out, strict=True)],
                   [near[a][0][o, i] for a, o, i in zip(lay, out, inp, strict=True)])
    start = np.clip(ref, lo, hi)
    first = int(lay.min())
    mine = [(li, np.flatnonzero(lay == li)) for li in sorted(set(lay.tolist()))]

    def objective(p):
        trial = list(layers)
        for li, j in mine:
            w, b = layers[li][0].copy(), layers[li][1].copy()
            jw, jb = j[~bias[j]], j[bias[j]]
            w[out[jw], inp[jw]] = p[jw]
            b[out[jb]] = p[jb]
            trial[li] = (w, b)
        zs, hs = model._forward(trial, start=first)
        loss, dz, _ = loss_and_dlogits(zs[-1], model.y)
        grad = np.zeros(p.size)
        for li in range(len(trial) - 1, first - 1, -1):
            dz = dz * model.cal.gain[li]
            j = np.flatnonzero(lay == li)
            if j.size:
                gw = dz.T @ hs[li - first]
                grad[j] = np.where(bias[j], dz.sum(0)[out[j]], gw[out[j], inp[j]])
            if li > first:
                dz = (dz @ trial[li][0]) * _act_grad(plan.activation, zs[li - first - 1],
                                                      hs[li - first])
        d = p - ref
        return loss + float(ridge @ (d * d)), grad + 2 * ridge * d

    n = k.size
    # both penalties per the layer's weight scale: in the layer's own units a network with
    # weights of ~50 (half-moons) was held 200 times harder than one with ~3 (digits), and
    # could not re-fit a weight that must change sign
    ridge = l2 / plan.scales[lay] ** 2
    if l1 > 0:
        # the change from `start` as u - v with u, v >= 0: |change| = u + v at the optimum,
        # so the l1 term is smooth, and bounds on u and v keep start + u - v in [lo, hi]
        weight = l1 / plan.scales[lay]

        def fun(q):
            value, grad = objective(start + q[:n] - q[n:])
            return (value + float(weight @ (q[:n] + q[n:])),
                    np.concatenate([grad + weight, -grad + weight]))

        x0, bounds = np.zeros(2 * n), list(zip(np.zeros(2 * n), np.r_[hi - start, start - lo],
                                               strict=True))
    else:
        fun, x0, bounds = objective, start, list(zip(lo, hi, strict=True))
    # small matrices: threaded BLAS only adds contention (10x slower on a loaded 2-core PC)
    with threadpool_limits(1, user_api="blas"):
        before = fun(x0)[0]
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_iter})
    p = start + res.x[:n] - res.x[n:] if l1 > 0 else res.x
    return Refit(k, p / c, float(before), float(res.fun))


def flipped_weights(plan: ConductancePlan, g: np.ndarray, layer: int, unit: int
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The weights at g with unit `unit` of layer `layer - 1` negated (`Calibration.flipped`)
    and layer `layer` changed so that the network computes what it did: the unit's outgoing
    weights negated, and under a sigmoid (s(-z) = 1 - s(z)) those weights added to the biases.
    A flip's refit starts from them and is pulled towards them, not towards w(g)."""
    layers = [(w.copy(), b.copy()) for w, b in plan_weights(plan, g)]
    w, b = layers[layer]
    if plan.activation == "sigmoid":
        b += w[:, unit]
    w[:, unit] = -w[:, unit]
    return layers


def swapped_weights(plan: ConductancePlan, g: np.ndarray, layer: int, unit: int
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The weights at g with unit `unit` of layer `layer` negated in the periphery
    (`Calibration.flipped`) and its own weights and bias negated on the crossbar, so that the
    unit computes what it did whatever its activation: its column pair swapped, G- - G+. A
    swap's refit starts from them and is pulled towards them."""
    layers = [(w.copy(), b.copy()) for w, b in plan_weights(plan, g)]
    w, b = layers[layer]
    w[unit] = -w[unit]
    b[unit] = -b[unit]
    return layers


def sparse_refits(model: MeasuredModel, k: np.ndarray, g: np.ndarray, fixed: np.ndarray, *,
                  sizes: Sequence[int], l2: float = 0.02) -> list[Refit]:
    """Refits of pairs `k` that change few weights, one per entry of `sizes`: an l1-penalised
    `refit` whose penalty lets about `size` pairs move at first (the size-th largest of the
    loss's sensitivity to a whole-range change of each pair), then, on the pairs it moved, a
    `refit` without the l1 term (the l1 term shrinks what it keeps). Where one device of a
    pair is fixed only the other moves (`refit`'s bounds). Distinct supports only."""
    plan = model.plan
    dp, dm = pairs(plan)
    k = np.asarray(k, np.int64)
    k = k[~(fixed[dp[k]] & fixed[dm[k]])]
    if not k.size:
        return []
    _, grad = model.gradient(g)
    sens = np.sort(np.abs(grad[dp[k]]) * (plan.g_max - plan.g_min))[::-1]
    out, seen = [], set()
    for size in sorted(set(sizes)):
        if size >= k.size:
            break
        r = refit(model, k, g, fixed, l2=l2, l1=float(sens[size]))
        now = g[dp[r.pair]] - g[dm[r.pair]]
        moved = r.pair[np.abs(r.diff - now) > 1e-6 * (plan.g_max - plan.g_min)]
        key = tuple(moved.tolist())
        if not moved.size or key in seen:
            continue
        seen.add(key)
        out.append(refit(model, moved, g, fixed, l2=l2))
    return out


@dataclass
class ProgrammingErrors:
    """The relative errors a programming left (read-back / target - 1 of the converged
    devices), apart for the devices programmed at g_min (the idle side of a pair: the slow
    fluctuators' relative amplitude falls with the conductance, so theirs are the largest, a
    p90 of 30-40 % against 13-16 % above 120 uS on the digits transfer) and the others."""

    at_min: np.ndarray
    above: np.ndarray

    @classmethod
    def measured(cls, plan: ConductancePlan, g: np.ndarray, target: np.ndarray,
                 stuck: np.ndarray, least: int = 5) -> ProgrammingErrors | None:
        """From read-back `g` against `target`; None where a side has fewer than `least`."""
        g, target = np.asarray(g, float), np.asarray(target, float)
        ok = ~np.asarray(stuck, bool) & (target > 0)
        rel = g[ok] / target[ok] - 1.0
        low = _at_min(plan, target[ok])
        if low.sum() < least or (~low).sum() < least:
            return None
        return cls(np.sort(rel[low]), np.sort(rel[~low]))

    def draws(self, n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """`count` draws for `n` devices, each of both kinds: (at_min, above), (count, n)."""
        return (self.at_min[rng.integers(self.at_min.size, size=(count, n))],
                self.above[rng.integers(self.above.size, size=(count, n))])


def _at_min(plan: ConductancePlan, g: np.ndarray) -> np.ndarray:
    return np.asarray(g) <= plan.g_min * (1.0 + 1e-6)


def robust_refit(model: MeasuredModel, k: np.ndarray, g: np.ndarray, fixed: np.ndarray,
                 errors: ProgrammingErrors, *, l2: float = 0.02, draws: int = 8,
                 steps: int = 400, rate: float = 0.01, seed: int = 0) -> Refit:
    """Re-fit pairs `k` of the last layer for a programming that misses: the refit set's
    loss averaged over draws of the errors the transfer left (`errors`: each free device of a
    pair at its new conductance times 1 + a relative error of its kind), plus `refit`'s l2
    term, minimised by `steps` steps of Adam (step `rate` of the layer's weight scale, falling
    to 0), each on `draws` fresh draws. Weights that survive their re-programming: the plain
    refit's are exact and sit where a relative error costs most. A free pair's idle device
    sits at g_min; one with a fixed device moves its partner (`refit`'s bounds).
    ``loss_before`` / ``loss_after``: the objective at the start and the end on the same
    4 * `draws` draws."""
    plan = model.plan
    last = len(plan.sizes) - 2
    dp, dm = pairs(plan)
    k = np.asarray(k, np.int64)
    if np.any(plan.layer[dp[k]] != last):
        raise ValueError("robust_refit: only pairs of the last layer")
    w0, b0 = plan_weights(plan, g)[last]
    out, bias = plan.out[dp[k]], plan.param[dp[k]] == BIAS
    inp = np.maximum(plan.inp[dp[k]], 0)
    c = float(model._factor[last])
    gp, gm, fp, fm = g[dp[k]], g[dm[k]], fixed[dp[k]], fixed[dm[k]]
    lo = (np.where(fp, gp, plan.g_min) - np.where(fm, gm, plan.g_max)) * c
    hi = (np.where(fp, gp, plan.g_max) - np.where(fm, gm, plan.g_min)) * c
    ref = np.where(bias, b0[out], w0[out, inp])
    rng = np.random.default_rng(seed)
    h, y = model.inputs[last], model.y
    gain, offset = model.cal.gain[last], model.cal.offset[last]
    base = h @ w0.T + b0 + model.residual[last]          # (N, out) at g
    jw, jb = np.flatnonzero(~bias), np.flatnonzero(bias)

    def conductances(p):
        """G+, G- of each pair for weights p, and their derivatives."""
        d = p / c
        gpl = np.where(fp, gp, np.where(fm, gm + d, plan.g_min + np.maximum(d, 0.0)))
        gmi = np.where(fm, gm, np.where(fp, gp - d, plan.g_min + np.maximum(-d, 0.0)))
        dgp = np.where(fp, 0.0, np.where(fm, 1.0, (d > 0).astype(float))) / c
        dgm = np.where(fm, 0.0, np.where(fp, -1.0, -(d < 0).astype(float))) / c
        return gpl, gmi, dgp, dgm

    def objective(p, ep, em):
        """The loss over the draws `ep`, `em` (each device's error if at g_min, else)."""
        gpl, gmi, dgp, dgm = conductances(p)
        e_p = np.where(fp, 0.0, np.where(_at_min(plan, gpl), ep[0], ep[1]))   # (draws, n)
        e_m = np.where(fm, 0.0, np.where(_at_min(plan, gmi), em[0], em[1]))
        vals = c * (gpl * (1 + e_p) - gmi * (1 + e_m))
        slope = c * (dgp * (1 + e_p) - dgm * (1 + e_m))
        loss, grad = 0.0, np.zeros(p.size)
        n = vals.shape[0]
        for i in range(n):
            dw = np.zeros_like(w0)
            dw[out[jw], inp[jw]] = vals[i, jw] - ref[jw]
            db = np.zeros_like(b0)
            np.add.at(db, out[jb], vals[i, jb] - ref[jb])
            z = gain * (base + h @ dw.T + db) + offset
            li, dz, _ = loss_and_dlogits(z, y)
            dz = dz * gain
            gw = dz.T @ h
            loss += li / n
            grad += np.where(bias, dz.sum(0)[out], gw[out, inp]) * slope[i] / n
        dd = p - ref
        return loss + float(ridge @ (dd * dd)), grad + 2 * ridge * dd

    ridge = np.full(k.size, l2 / plan.scales[last] ** 2)
    # Adam with fresh draws each step (a fit to a few fixed draws learns those draws: on
    # digits chip 1003, 32 fixed draws gave 93.2 %, fresh ones 94.4 %, calibrated after),
    # projected onto the bounds
    p = np.clip(ref, lo, hi)
    m1, m2 = np.zeros(p.size), np.zeros(p.size)
    step = rate * plan.scales[last]
    check = (errors.draws(k.size, 4 * draws, np.random.default_rng([seed, 1])),
             errors.draws(k.size, 4 * draws, np.random.default_rng([seed, 2])))
    with threadpool_limits(1, user_api="blas"):
        before = objective(p, *check)[0]
        for i in range(1, steps + 1):
            _, grad = objective(p, errors.draws(k.size, draws, rng),
                                errors.draws(k.size, draws, rng))
            m1 = 0.9 * m1 + 0.1 * grad
            m2 = 0.999 * m2 + 0.001 * grad * grad
            # the step falls to 0 by the end: a fixed one ends wherever the last draws threw it
            size = step * (1.0 - (i - 1) / steps)
            p = np.clip(p - size * (m1 / (1 - 0.9 ** i)) / (np.sqrt(m2 / (1 - 0.999 ** i))
                                                              + 1e-12), lo, hi)
        after = objective(p, *check)[0]
    return Refit(k, p / c, float(before), float(after))


def _gain_bounds(sign: np.ndarray, gain_range: tuple[float, float], offset_only: bool
                 ) -> list[tuple[float, float]]:
    """Per output, the gains allowed: `gain_range`, mirrored for a flipped output (sign < 0:
    its periphery subtracts its column pair the other way round, `Calibration.flipped`), which a fit
    never turns back; exactly the sign with `offset_only`."""
    lo, hi = gain_range
    return [(s, s) if offset_only else ((lo, hi) if s > 0 else (-hi, -lo)) for s in sign]


def _signs(sign, k: int) -> np.ndarray:
    return np.ones(k) if sign is None else np.where(np.asarray(sign, float) < 0, -1.0, 1.0)


def fit_calibration(z: np.ndarray, target: np.ndarray, *, gain_range: tuple[float, float],
                    offset_max: float, l2: float, offset_only: bool = False,
                    sign: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per output (column) o, the gain a and offset c that minimise
    ``mean((a z + c - target)^2) + l2 ((a - s)^2 var(z) + c^2)`` with a in `gain_range` (s = 1;
    for an output whose `sign` is negative, a flipped one, s = -1 and a in minus that range) and
    |c| <= `offset_max` (a = s with `offset_only`): the regularisation pulls towards no
    correction, the bounds keep a few hundred points from fitting anything wild."""
    z, target = np.asarray(z, float), np.asarray(target, float)
    n, k = z.shape
    sgn = _signs(sign, k)
    gain, offset = sgn.copy(), np.zeros(k)
    if offset_only:
        offset = np.clip(np.mean(target - sgn * z, 0) / (1.0 + l2), -offset_max, offset_max)
        return gain, offset
    r = np.sqrt(l2)
    for o, (glo, ghi) in enumerate(_gain_bounds(sgn, gain_range, False)):
        sd = float(np.std(z[:, o]))
        a = np.vstack([np.column_stack([z[:, o], np.ones(n)]) / np.sqrt(n),
                       [[r * sd, 0.0], [0.0, r]]])
        b = np.concatenate([target[:, o] / np.sqrt(n), [r * sd * sgn[o], 0.0]])
        gain[o], offset[o] = lsq_linear(a, b, bounds=([glo, -offset_max],
                                                      [ghi, offset_max])).x
    return gain, offset


def fit_calibration_loss(z: np.ndarray, y: np.ndarray, *, gain_range: tuple[float, float],
                         offset_max: float, l2: float, offset_only: bool = False,
                         sign: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The last layer's gains and offsets that minimise the loss on labels y,
    ``loss(a z + c) + l2 (sum (a - s)^2 + sum (c / std z)^2)``, within the same bounds (s and
    the flipped outputs' bounds as in `fit_calibration`)."""
    z = np.asarray(z, float)
    k = z.shape[1]
    sd = np.maximum(z.std(0), 1e-12)
    sgn = _signs(sign, k)

    def fun(p):
        a, c = p[:k], p[k:]
        loss, dz, _ = loss_and_dlogits(z * a + c, y)
        pen = l2 * (np.sum((a - sgn) ** 2) + np.sum((c / sd) ** 2))
        return loss + pen, np.concatenate([(dz * z).sum(0) + 2 * l2 * (a - sgn),
                                           dz.sum(0) + 2 * l2 * c / sd ** 2])

    bounds = _gain_bounds(sgn, gain_range, offset_only) + [(-offset_max, offset_max)] * k
    res = minimize(fun, np.r_[sgn, np.zeros(k)], jac=True, method="L-BFGS-B",
                   bounds=bounds)
    return res.x[:k], res.x[k:]


def fit_calibration_joint(model: MeasuredModel, layer: int, g: np.ndarray, *,
                          gain_range: tuple[float, float], offset_max: Sequence[float],
                          l2: float, offset_only: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The gains and offsets of `layer` that, fitted jointly with those of every later layer,
    minimise the model's loss on its labels at conductances g (the later layers' inputs
    predicted by the model: linear in the new hidden activations plus each point's measured
    residual), ``loss + l2 (sum (a - s)^2 + sum (c / std z)^2)`` over those layers, a in
    `gain_range` (s and a flipped output's bounds as in `fit_calibration`),
    |c| <= `offset_max[layer]`. A hidden layer has no labels of its own; this
    lets the labels decide its correction too, not only how near its outputs come to the
    software network's. Only `layer`'s part is returned: the caller measures the later layers
    with it applied and fits them again on what it measured."""
    plan = model.plan
    layers = plan_weights(plan, g)
    n_layers = len(layers)
    last = n_layers - 1
    sizes = [layers[li][0].shape[0] for li in range(layer, n_layers)]
    raw0 = model.inputs[layer] @ layers[layer][0].T + layers[layer][1] + model.residual[layer]
    sd = [np.maximum(raw0.std(0), 1e-12)]
    h = activate(plan.activation, model.cal.apply(layer, raw0))
    for li in range(layer + 1, n_layers):   # penalty scales from the current raw outputs
        raw = h @ layers[li][0].T + layers[li][1] + model.residual[li]
        sd.append(np.maximum(raw.std(0), 1e-12))
        if li < last:
            h = activate(plan.activation, model.cal.apply(li, raw))
    cuts = np.cumsum([0, *sizes])
    # a flipped output (negative gain, `Calibration.flipped`) stays flipped: its bounds are mirrored and
    # the penalty pulls it towards -1
    sgn = np.concatenate([_signs(model.cal.gain[li], sizes[i])
                          for i, li in enumerate(range(layer, n_layers))])
    sg = [sgn[cuts[i]:cuts[i + 1]] for i in range(len(sizes))]

    def fun(q):
        a = [q[cuts[i]:cuts[i + 1]] for i in range(len(sizes))]
        c = [q[cuts[-1] + cuts[i]:cuts[-1] + cuts[i + 1]] for i in range(len(sizes))]
        h, raws, zs, hs = model.inputs[layer], [], [], []
        for i, li in enumerate(range(layer, n_layers)):
            w, b = layers[li]
            raw = h @ w.T + b + model.residual[li]
            z = a[i] * raw + c[i]
            raws.append(raw)
            zs.append(z)
            hs.append(h)
            if li < last:
                h = activate(plan.activation, z)
        loss, dz, _ = loss_and_dlogits(zs[-1], model.y)
        ga, gc = [None] * len(sizes), [None] * len(sizes)
        pen = 0.0
        for i in range(len(sizes) - 1, -1, -1):
            ga[i] = (dz * raws[i]).sum(0) + 2 * l2 * (a[i] - sg[i])
            gc[i] = dz.sum(0) + 2 * l2 * c[i] / sd[i] ** 2
            pen += l2 * (np.sum((a[i] - sg[i]) ** 2) + np.sum((c[i] / sd[i]) ** 2))
            if i:
                li = layer + i
                dz = ((dz * a[i]) @ layers[li][0]) * _act_grad(plan.activation, zs[i - 1],
                                                               hs[i])
        return loss + pen, np.concatenate(ga + gc)

    gains = _gain_bounds(sgn, gain_range, offset_only)
    offs = [(-offset_max[li], offset_max[li]) for li in range(layer, n_layers)
            for _ in range(sizes[li - layer])]
    x0 = np.concatenate([np.concatenate([model.cal.gain[li] for li in range(layer, n_layers)]),
                         np.concatenate([model.cal.offset[li] for li in range(layer, n_layers)])])
    x0 = np.clip(x0, [b[0] for b in gains + offs], [b[1] for b in gains + offs])
    with threadpool_limits(1, user_api="blas"):
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=gains + offs)
    k = sizes[0]
    return res.x[:k], res.x[cuts[-1]:cuts[-1] + k]


def pair_moves(plan: ConductancePlan, g: np.ndarray, fixed: np.ndarray, k: np.ndarray,
               diff: np.ndarray, tolerance: float,
               cost: Callable[[np.ndarray, np.ndarray], np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """The tunings that give pairs `k` (indexes of `pairs(plan)`) the differences `diff` [S]:
    (devices, targets). Per pair the cheapest of: raising one device, lowering the other, or
    both on the physical mapping (the unused device at g_min), by `cost(g_from, target)`
    (expected pulses), among the moves that keep every target in [g_min, g_max]; a stuck
    device never moves (its partner goes as far as the range lets it). A move already within
    twice the tuning band of where the device is is not made."""
    dp, dm = pairs(plan)
    lo, hi = plan.g_min, plan.g_max
    devs, tgts = [], []

    def needed(moves):
        return [(d, t) for d, t in moves if abs(t - g[d]) > 2.0 * tolerance * t]

    def price(moves):
        if not moves:
            return 0.0
        d = np.array([m[0] for m in moves])
        return float(np.sum(cost(g[d], np.array([m[1] for m in moves]))))

    for kk, want in zip(np.asarray(k).tolist(), np.asarray(diff).tolist(), strict=True):
        p, m = int(dp[kk]), int(dm[kk])
        if fixed[p] and fixed[m]:
            continue
        delta = want - (g[p] - g[m])
        if fixed[p] or fixed[m]:   # only the partner can move: as far as the range lets it
            d = m if fixed[p] else p
            t = g[p] - want if d == m else g[m] + want
            options = [[(d, float(np.clip(t, lo, hi)))]]
        else:
            options = [[(p, g[p] + delta)], [(m, g[m] - delta)],
                       [(p, min(lo + max(want, 0.0), hi)), (m, min(lo + max(-want, 0.0), hi))]]
            options = [o for o in options if all(lo <= t <= hi for _, t in o)]
        options = [needed(o) for o in options]
        best = min(options, key=price)
        for d, t in best:
            devs.append(d)
            tgts.append(t)
    return np.asarray(devs, np.int64), np.asarray(tgts, float)


class TuningCost:
    """Expected pulses of a tuning from g_from to target [S]: the median pulses of past tunings
    that went the same way (up or down) to a target in the same bin of [g_min, g_max] (8 bins);
    the median of all past tunings where a bin has none, `prior` where there are none at all.
    Moving a device costs mostly the ramp from the start amplitude to its threshold, which
    depends on where it goes and in which direction (physics.md §3.3), hence the bins. At
    least one pulse: past tunings of devices found in band took none, but a correction moves a
    device out of its band."""

    BINS = 8

    def __init__(self, g_min: float, g_max: float, prior: float):
        self.edges = np.linspace(g_min, g_max, self.BINS + 1)[1:-1]
        self.prior = float(prior)
        self.table = np.full((2, self.BINS), np.nan)
        self.overall = self.prior

    def fit(self, g_from: np.ndarray, target: np.ndarray, pulses: np.ndarray) -> TuningCost:
        g_from, target, pulses = (np.asarray(a, float).reshape(-1) for a in
                                  (g_from, target, pulses))
        self.table[:] = np.nan
        if pulses.size:
            self.overall = float(np.median(pulses))
            up = (target > g_from).astype(int)
            b = np.searchsorted(self.edges, target)
            for direction in (0, 1):
                for k in range(self.BINS):
                    sel = (up == direction) & (b == k)
                    if sel.any():
                        self.table[direction, k] = np.median(pulses[sel])
        return self

    def __call__(self, g_from: np.ndarray, target: np.ndarray) -> np.ndarray:
        up = (np.asarray(target) > np.asarray(g_from)).astype(int)
        v = self.table[up, np.searchsorted(self.edges, target)]
        return np.maximum(np.where(np.isnan(v), self.overall, v), 1.0)
