"""The non-ideality model as torch tensors, built once from a NonIdealityDB.

Random variates do not depend on the weights, only their effect does. So every draw is made up
front for a whole block of forward passes (T transfers or T training steps) in a handful of
whole-tensor calls, as a :class:`Draws` of shape (T, K, D, P): T draws, K networks, D = 2 devices
per weight (G+, G-), P parameters. The mapping (training.mapping) then turns weights and draws
into noisy weights with a few element-wise operations. No Python loop over weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from database.nonideality import NonIdealityDB, RetentionStats
from training.errors import TrainingError

#: keys without any sample borrow the samples of the highest key holding at least this many
MIN_SAMPLES_FALLBACK = 20


@dataclass
class NoiseConfig:
    """Which non-idealities are sampled, and how strongly. Each switch works alone."""

    tuning: bool = True  # write-verify spread: G += sigma_rel(G) * G * eps
    offset: bool = True  # per-device relative offset G *= 1 + N(mean, std)
    disturbance: bool = True  # V/3 half-select drift by programming position (key k)
    stuck: bool = True  # stuck-HRS / stuck-LRS substitution
    tuning_scale: float = 1.0  # multiplies eps
    disturbance_scale: float = 1.0  # multiplies every disturbance draw
    stuck_hrs_rate: float | None = None  # None: the database's rate
    stuck_lrs_rate: float | None = None
    # time since programming [s] at which the network is used: the database's retention
    # statistics move every device by their drift at that time (None: off, as before)
    retention_s: float | None = None

    def __post_init__(self) -> None:
        t = self.retention_s
        if t is not None and not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
            raise TrainingError(f"retention_s must be a time > 0 s (or None: off), got {t!r}")

    @classmethod
    def off(cls) -> NoiseConfig:
        return cls(tuning=False, offset=False, disturbance=False, stuck=False)

    def any(self) -> bool:
        return (self.tuning or self.offset or self.disturbance or self.stuck
                or self.retention_s is not None)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_DRAW_FIELDS = ("gain", "quad", "shift", "stuck_mask", "stuck_value")


@dataclass
class Draws:
    """Pre-drawn variates of T draws, folded into per-device coefficients (T, K, D, P).

    With the published noise order (offset o = 1 + off, then spread sigma_rel(G) = a G + b on the
    offset conductance times eps, then disturbance d) the noisy conductance of a device is

        G' = G o (1 + (a G o + b) eps) + d = G (gain + quad G) + shift,
        gain = o (1 + b eps),  quad = a o^2 eps,  shift = d,

    so applying a draw costs two fused multiply-adds. Retention (time since programming) adds
    the device's drift G r, r = r0 + r1 G relative to its programmed conductance (taken as the
    clean G: the difference is the drift times the tuning error, second order), i.e.
    gain += r0 and quad += r1. Then stuck devices (stuck_mask) take stuck_value. A field is None
    when its source is off. (sigma_rel is not floored at 0 here: the fit stays positive below
    intercept/|slope| = 1.1 mS, above every mapped conductance.)
    """

    gain: torch.Tensor | None
    quad: torch.Tensor | None
    shift: torch.Tensor | None  # conductance changes [S]
    stuck_mask: torch.Tensor | None  # bool
    stuck_value: torch.Tensor | None  # substituted conductance [S]
    t: int = 1  # number of draws (also when every source is off)

    def __getitem__(self, sl: slice) -> Draws:
        return Draws(*(None if t is None else t[sl] for t in
                       (self.gain, self.quad, self.shift, self.stuck_mask, self.stuck_value)),
                     t=len(range(self.t)[sl]))

    @property
    def n(self) -> int:
        return self.t

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        """Noisy conductances (T, K, D, P) from clean ones g (K, D, P)."""
        h = self.gain
        if self.quad is not None:
            h = torch.addcmul(h, self.quad, g)
        if h is not None:
            g = g * h if self.shift is None else torch.addcmul(self.shift, g, h)
        elif self.shift is not None:
            g = g + self.shift
        if self.stuck_mask is not None:
            g = torch.where(self.stuck_mask, self.stuck_value, g)
        return g if g.dim() == 4 else g.unsqueeze(0).expand(self.t, *g.shape)


@dataclass(frozen=True)
class RetentionAt:
    """The database's retention statistics at one time since programming, as sampled.

    A device of conductance G drifts up with probability `up` by a relative
    N(up_mean, up_std); otherwise by N(mean0 + mean1 G, |std0 + std1 G|): straight lines over
    the measured levels (count-weighted least squares, constant with one level)."""

    mean0: float
    mean1: float
    std0: float
    std1: float
    up: float
    up_mean: float
    up_std: float


def retention_at(stats: RetentionStats, t: float) -> RetentionAt:
    """Interpolate `stats` to `t` seconds after programming, linearly in log(time) between a
    level's cells; levels whose cells do not reach `t` are left out, and a `t` no level covers
    is refused (no extrapolation)."""
    lv, mean, std, w, up, up_m, up_s, up_w = [], [], [], [], [], [], [], []
    lt = math.log(t)
    for level in np.unique(stats.level):
        sel = stats.level == level
        times = stats.time[sel]
        if not times.min() <= t <= times.max():
            continue
        order = np.argsort(times)
        x = np.log(times[order])

        def at(v, x=x, order=order, sel=sel):
            v = v[sel][order]
            ok = ~np.isnan(v)
            return float(np.interp(lt, x[ok], v[ok])) if ok.any() else math.nan

        n = at(stats.counts)
        f = at(stats.up_fraction)
        if f < 1:
            lv.append(float(level))
            mean.append(at(stats.mean_rel))
            std.append(at(stats.std_rel))
            w.append(n * (1 - f))
        up.append((f, n))
        if f > 0:
            up_m.append(at(stats.up_mean_rel))
            up_s.append(at(stats.up_std_rel))
            up_w.append(n * f)
    if not up:
        raise TrainingError(f"retention_s = {t:g} s is outside the database's retention data "
                            f"({stats.time.min():g} to {stats.time.max():g} s after "
                            "programming)")
    if len(lv) >= 2:
        mean1, mean0 = np.polyfit(lv, mean, 1, w=np.sqrt(w))
        std1, std0 = np.polyfit(lv, std, 1, w=np.sqrt(w))
    else:
        mean1, std1 = 0.0, 0.0
        mean0, std0 = (mean[0], std[0]) if lv else (0.0, 0.0)
    n_all = sum(n for _f, n in up)
    p_up = sum(f * n for f, n in up) / n_all
    up_mean = float(np.average(up_m, weights=up_w)) if up_w else 0.0
    up_std = float(np.average(up_s, weights=up_w)) if up_w else 0.0
    return RetentionAt(float(mean0), float(mean1), float(std0), float(std1), float(p_up),
                       up_mean, up_std)


class NoiseModel:
    """Tensors of one NonIdealityDB on one device, ready for fast sampling."""

    def __init__(self, db: NonIdealityDB, *, device: torch.device | str = "cpu",
                 max_key: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        db.validate()
        self.device = torch.device(device)
        self.dtype = dtype
        self.g_min, self.g_max = float(db.g_min), float(db.g_max)
        self.sigma_slope = float(db.sigma_fit_slope)
        self.sigma_intercept = float(db.sigma_fit_intercept)
        self.offset_mean = float(db.offset_mean_rel)
        self.offset_std = float(db.offset_std_rel)
        self.stuck_hrs_rate = float(db.stuck_hrs_rate)
        self.stuck_lrs_rate = float(db.stuck_lrs_rate)
        self.stuck_hrs_range = tuple(db.stuck_hrs_range)
        self.stuck_lrs_mean = float(db.stuck_lrs_mean)
        self.stuck_lrs_std = float(db.stuck_lrs_std)

        self._db = db
        self._retention: dict[float, RetentionAt] = {}
        self._build_table(max(db.max_key, max_key or 0))

    def retention(self, t: float) -> RetentionAt:
        """The database's retention statistics at `t` s after programming (cached)."""
        if t not in self._retention:
            if self._db.retention is None:
                raise TrainingError("this non-ideality database has no retention statistics: "
                                    "build it with a retention run to use retention_s")
            self._retention[t] = retention_at(self._db.retention, t)
        return self._retention[t]

    def ensure_max_key(self, max_key: int) -> None:
        """Grow the key table so keys up to max_key can be drawn (missing keys borrow)."""
        if max_key > self.max_key:
            self._build_table(max_key)

    def _build_table(self, max_key: int) -> None:
        db, dtype = self._db, self.dtype
        # padded per-key sample table: row k holds the samples of key k (row 0: a single 0)
        n_keys = max_key + 1
        per_key = [db.disturbance_for(k) for k in range(n_keys)]
        per_key[0] = np.zeros(1)
        counts = np.array([len(s) for s in per_key])
        rich = [k for k in range(1, n_keys) if counts[k] >= MIN_SAMPLES_FALLBACK]
        if not rich:
            raise TrainingError("disturbance database has no key with enough samples")
        self.fallback_key = max(rich)
        self.borrowed_keys = [k for k in range(1, n_keys) if counts[k] == 0]
        for k in self.borrowed_keys:
            per_key[k] = per_key[self.fallback_key]
        counts = np.array([len(s) for s in per_key])
        table = np.zeros((n_keys, int(counts.max())))
        for k, s in enumerate(per_key):
            table[k, : len(s)] = s
        self.max_key = n_keys - 1
        self.table = torch.as_tensor(table, dtype=dtype, device=self.device)
        self.counts = torch.as_tensor(counts, dtype=dtype, device=self.device)
        # stored per-key sigma for the reference code's 4-sigma rule (inf: rule never fires)
        ks = np.full(n_keys, np.inf)
        stored = db.disturbance_key_sigma
        m = min(n_keys, stored.size)
        ks[:m] = np.where(np.isfinite(stored[:m]), stored[:m], np.inf)
        for k in self.borrowed_keys:
            ks[k] = ks[self.fallback_key]
        self.key_sigma = torch.as_tensor(ks, dtype=dtype, device=self.device)

    def sigma_rel(self, g: torch.Tensor) -> torch.Tensor:
        return (self.sigma_slope * g + self.sigma_intercept).clamp_min(0.0)

    def draw(self, keys: torch.Tensor, t: int, k: int, cfg: NoiseConfig,
             generator: torch.Generator | Sequence[torch.Generator] | None, *,
             four_sigma: torch.Tensor | None = None, four_sigma_value: float = 60e-6,
             offset_sign: torch.Tensor | None = None) -> Draws:
        """Variates for T draws of K networks; keys is (D, P) int64 (0 = never disturbed).

        generator: one generator for all K networks, or a sequence of K generators, one per
        network: network j's variates then come from generator j alone, so they do not depend
        on K or on the other networks (a batched ensemble draws what K separate runs would).
        four_sigma: optional (D, P) bool; where set, a disturbance draw with |d| > 4 x the key's
        stored sigma is replaced by +four_sigma_value (the published code's rule).
        offset_sign: optional (D,) +-1 per device (the published single-column path subtracts
        the offset).
        """
        if generator is not None and not isinstance(generator, torch.Generator):
            gens = list(generator)
            if len(gens) != k:
                raise TrainingError(f"{len(gens)} generators for {k} networks")
            parts = [self.draw(keys, t, 1, cfg, g, four_sigma=four_sigma,
                               four_sigma_value=four_sigma_value, offset_sign=offset_sign)
                     for g in gens]
            if k == 1:
                return parts[0]
            return Draws(*(None if getattr(parts[0], f) is None else
                           torch.cat([getattr(q, f) for q in parts], 1) for f in _DRAW_FIELDS),
                         t=t)
        d, p = keys.shape
        shape = (t, k, d, p)
        dev, dt, g = self.device, self.dtype, generator
        if int(keys.max()) > self.max_key:
            raise TrainingError(f"disturbance key {int(keys.max())} beyond the table "
                                f"({self.max_key}); build NoiseModel with max_key")
        gain = quad = dist = smask = sval = None
        if cfg.offset:
            gain = torch.randn(shape, generator=g, device=dev, dtype=dt)
            gain.mul_(self.offset_std).add_(self.offset_mean)
            if offset_sign is not None:
                gain.mul_(offset_sign.view(1, 1, d, 1))
            gain.add_(1.0)
        if cfg.tuning:
            eps = torch.randn(shape, generator=g, device=dev, dtype=dt)
            if cfg.tuning_scale != 1.0:
                eps.mul_(cfg.tuning_scale)
            o = gain if gain is not None else torch.ones((), device=dev, dtype=dt)
            quad = (o * o) * (self.sigma_slope * eps)
            gain = o * (1.0 + self.sigma_intercept * eps)
        if cfg.disturbance:
            u = torch.rand(shape, generator=g, device=dev, dtype=dt)
            cnt = self.counts[keys]  # (D, P)
            idx = (u * cnt).long().minimum((cnt - 1).long())
            dist = self.table[keys.expand(shape), idx]
            if four_sigma is not None and bool(four_sigma.any()):
                big = dist.abs() > 4.0 * self.key_sigma[keys]
                big &= four_sigma
                dist = torch.where(big, torch.full_like(dist, four_sigma_value), dist)
            if cfg.disturbance_scale != 1.0:
                dist.mul_(cfg.disturbance_scale)
        if cfg.stuck:
            p_h = self.stuck_hrs_rate if cfg.stuck_hrs_rate is None else cfg.stuck_hrs_rate
            p_l = self.stuck_lrs_rate if cfg.stuck_lrs_rate is None else cfg.stuck_lrs_rate
            u = torch.rand(shape, generator=g, device=dev, dtype=dt)
            lrs = u < p_l
            smask = u < (p_l + p_h)
            lo, hi = self.stuck_hrs_range
            g_lrs = torch.randn(shape, generator=g, device=dev, dtype=dt)
            g_lrs.mul_(self.stuck_lrs_std).add_(self.stuck_lrs_mean)
            g_hrs = torch.rand(shape, generator=g, device=dev, dtype=dt)
            g_hrs.mul_(hi - lo).add_(lo)
            sval = torch.where(lrs, g_lrs, g_hrs)
        if cfg.retention_s is not None:
            # drawn last: switching retention on leaves every other source's variates as they
            # were (a paired comparison)
            ra = self.retention(float(cfg.retention_s))
            z = torch.randn(shape, generator=g, device=dev, dtype=dt)
            r0 = z * ra.std0 + ra.mean0
            r1 = z * ra.std1 + ra.mean1
            if ra.up > 0:
                up = torch.rand(shape, generator=g, device=dev, dtype=dt) < ra.up
                zu = torch.randn(shape, generator=g, device=dev, dtype=dt)
                r0 = torch.where(up, zu * ra.up_std + ra.up_mean, r0)
                r1 = torch.where(up, torch.zeros((), device=dev, dtype=dt), r1)
            gain = 1.0 + r0 if gain is None else gain + r0
            quad = r1 if quad is None else quad + r1
        return Draws(gain, quad, dist, smask, sval, t=t)
