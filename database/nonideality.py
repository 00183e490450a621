"""The non-ideality database: what training needs to know about a crossbar technology.

One HDF5 file, format documented in docs/hdf5-schema.md. In memory it is a plain dataclass of
numpy arrays (SI units) so `training` never touches HDF5 or raw runs.

The file is built in memory and written atomically with plain Python I/O (database.store_io):
a full disk leaves the old file as it was and never reaches HDF5. Damage is detected on read:
HDF5's metadata checksums (libver="latest"), fletcher32 on every array and `meta_crc32`, a CRC-32
over every scalar and text attribute; then every number is range-checked (`validate`).

Disturbance key convention: ``k`` = number of devices programmed *after* the device in its
crossbar. ``k = 0`` (the last programmed device) is never disturbed.
"""

from __future__ import annotations

import errno
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from database.errors import DatabaseError, SchemaError
from database.store_io import atomic_write

KIND = "xbarlab-nonideality"
FORMAT_VERSION = 1
#: no device conducts more than this [S] (1 ohm): a larger conductance is a damaged file
G_CEILING = 1.0
#: largest disturbance key accepted (devices programmed after one device in its crossbar: a
#: 1024 x 1024 array); a larger key is a damaged file, and would size the sampling table
MAX_DISTURBANCE_KEY = 1 << 20
#: no switching voltage lies beyond this [V] (the station limits stop at 10 V)
V_CEILING = 10.0


#: relative drifts outside (-1, MAX_DRIFT_REL] are a damaged file: a conductance cannot fall
#: below 0, and a hundredfold rise is no retention measurement
MAX_DRIFT_REL = 100.0


@dataclass
class RetentionStats:
    """How programmed conductances drift with time since programming (retention runs).

    One entry per cell (time, level): the time is the cell's median age [s] (time since the
    devices' own programming), the level their programmed target [S]; `counts` devices were
    read. Drift = (read - programmed) / programmed. Devices reading more than the run's
    threshold above their programmed value count as drifting up (`up_fraction` of the cell);
    `mean_rel` and `std_rel` describe the others, `up_mean_rel` and `up_std_rel` the ones
    drifting up (NaN where a cell has none). `rule` says how the cells were built."""

    time: np.ndarray
    level: np.ndarray
    mean_rel: np.ndarray
    std_rel: np.ndarray
    counts: np.ndarray
    up_fraction: np.ndarray
    up_mean_rel: np.ndarray
    up_std_rel: np.ndarray
    rule: str = ""

    def __post_init__(self) -> None:
        for name in RETENTION_ARRAYS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=float).reshape(-1))

    def validate(self, fail) -> None:
        n = self.time.size
        for name in RETENTION_ARRAYS:
            if getattr(self, name).size != n:
                fail(f"retention {name}", f"has {getattr(self, name).size} entries, time has {n}")
        if n == 0:
            fail("retention", "holds no cell (leave it out instead)")

        def check(name: str, lo: float, hi: float, lo_open: bool = False,
                  allow_nan: bool = False) -> None:
            v = getattr(self, name)
            if allow_nan:
                v = v[~np.isnan(v)]
            if not np.all(np.isfinite(v)):
                fail(f"retention {name}", "contains NaN or inf")
            out = ((v <= lo) if lo_open else (v < lo)) | (v > hi)
            if out.any():
                fail(f"retention {name}", f"holds {v[out][0]:g}, outside "
                     f"{'(' if lo_open else '['}{lo:g}, {hi:g}]")

        check("time", 0.0, 1e10, lo_open=True)
        check("level", 0.0, G_CEILING, lo_open=True)
        check("counts", 1.0, 1e12)
        check("up_fraction", 0.0, 1.0)
        # a cell of devices all drifting up has no mean of the others
        check("mean_rel", -1.0, MAX_DRIFT_REL, lo_open=True, allow_nan=True)
        check("std_rel", 0.0, MAX_DRIFT_REL, allow_nan=True)
        check("up_mean_rel", -1.0, MAX_DRIFT_REL, lo_open=True, allow_nan=True)
        check("up_std_rel", 0.0, MAX_DRIFT_REL, allow_nan=True)
        if np.any(np.isnan(self.mean_rel) & (self.up_fraction < 1)):
            fail("retention mean_rel", "is NaN in a cell with devices not drifting up")
        if np.any(np.isnan(self.up_mean_rel) & (self.up_fraction > 0)):
            fail("retention up_mean_rel", "is NaN in a cell with devices drifting up")


RETENTION_ARRAYS = ("time", "level", "mean_rel", "std_rel", "counts", "up_fraction",
                    "up_mean_rel", "up_std_rel")


@dataclass
class NonIdealityDB:
    """Everything training samples from, in SI units (S, fractions of target)."""

    #: conductance range usable for weights [S] (the mapping's Gmin, Gmax)
    g_min: float
    g_max: float
    #: tuning imprecision per level: targets [S], relative error std and mean (fractions)
    tuning_levels: np.ndarray
    tuning_sigma_rel: np.ndarray
    tuning_offset_rel: np.ndarray
    tuning_counts: np.ndarray
    #: linear fit sigma_rel(G) = slope * G + intercept (G in S, result a fraction)
    sigma_fit_slope: float
    sigma_fit_intercept: float
    #: per-device relative offset distribution N(mean, std) (fractions)
    offset_mean_rel: float
    offset_std_rel: float
    #: disturbance samples: key k (devices programmed after) and conductance change [S]
    disturbance_keys: np.ndarray
    disturbance_delta: np.ndarray
    #: stuck devices: rates per device and measured samples [S]
    stuck_hrs_rate: float
    stuck_lrs_rate: float
    stuck_hrs_samples: np.ndarray
    stuck_lrs_samples: np.ndarray
    #: parametric stuck models used for sampling: HRS ~ U(lo, hi), LRS ~ N(mean, std) [S]
    stuck_hrs_range: tuple[float, float] = (10e-6, 100e-6)
    stuck_lrs_mean: float = 573e-6
    stuck_lrs_std: float = 99e-6
    #: disturbance outlier rule applied when building (documented text) and per-key stats [S]
    disturbance_rule: str = ""
    disturbance_key_mu: np.ndarray = field(default_factory=lambda: np.zeros(0))
    disturbance_key_sigma: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: DC I-V switching voltages [V], one per cycle that switched (empty: no I-V runs)
    iv_set_volts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    iv_reset_volts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: where each part came from: {"tuning": "...", "disturbance": "...", "stuck": "..."}
    provenance: dict = field(default_factory=dict)
    #: retention statistics (from retention runs), None when the database has none
    retention: RetentionStats | None = None

    def __post_init__(self) -> None:
        for name in ("tuning_levels", "tuning_sigma_rel", "tuning_offset_rel", "tuning_counts",
                     "disturbance_delta", "stuck_hrs_samples", "stuck_lrs_samples",
                     "disturbance_key_mu", "disturbance_key_sigma", "iv_set_volts",
                     "iv_reset_volts"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=float))
        self.disturbance_keys = np.asarray(self.disturbance_keys, dtype=np.int64)
        self.stuck_hrs_range = (float(self.stuck_hrs_range[0]), float(self.stuck_hrs_range[1]))

    # -- derived views -------------------------------------------------------------------------
    @property
    def max_key(self) -> int:
        return int(self.disturbance_keys.max()) if self.disturbance_keys.size else 0

    def disturbance_for(self, k: int) -> np.ndarray:
        """Samples [S] for devices with k devices programmed after them (empty if none)."""
        return self.disturbance_delta[self.disturbance_keys == k]

    def sigma_rel(self, g: np.ndarray | float) -> np.ndarray:
        """Tuning std as a fraction of G from the linear fit, floored at 0."""
        return np.maximum(self.sigma_fit_slope * np.asarray(g, float) + self.sigma_fit_intercept, 0.0)

    def validate(self) -> None:
        """Raise SchemaError naming the first field that is inconsistent or outside its range.

        Every number training consumes is checked here, once, for the loader and the builder
        alike: NaN, inf or an impossible value (a negative spread, a conductance of 5 S, a
        disturbance key no crossbar has) is a damaged or mis-built file, never a measurement.
        """
        def fail(name: str, why: str) -> None:
            raise SchemaError(f"non-ideality DB: {name} {why}")

        def check(name: str, lo: float = -np.inf, hi: float = np.inf, *, lo_open: bool = False,
                  allow_nan: bool = False) -> None:
            raw = getattr(self, name)
            v = np.asarray(raw, dtype=float).ravel()
            if allow_nan:
                v = v[~np.isnan(v)]
            if not np.all(np.isfinite(v)):
                fail(name, "contains NaN or inf" if np.ndim(raw) else "is not a finite number")
            out = ((v <= lo) if lo_open else (v < lo)) | (v > hi)
            if out.any():
                fail(name, f"holds {v[out][0]:g}, outside {'(' if lo_open else '['}{lo:g}, {hi:g}]")

        check("g_min", 0.0, G_CEILING, lo_open=True)
        check("g_max", 0.0, G_CEILING, lo_open=True)
        if not self.g_min < self.g_max:
            fail("g_min", f"must be below g_max, got {self.g_min}, {self.g_max}")
        n = self.tuning_levels.size
        for name in ("tuning_sigma_rel", "tuning_offset_rel", "tuning_counts"):
            if getattr(self, name).size != n:
                fail(name, f"has {getattr(self, name).size} entries, tuning_levels has {n}")
        if n == 0:
            raise SchemaError("non-ideality DB: the tuning sub-database is empty")
        check("tuning_levels", 0.0, G_CEILING, lo_open=True)
        check("tuning_sigma_rel", 0.0)
        check("tuning_offset_rel", -1.0, 1.0, lo_open=True)  # G (1 + offset) stays positive
        check("tuning_counts", 0.0)
        check("sigma_fit_slope")
        check("sigma_fit_intercept")
        check("offset_mean_rel", -1.0, 1.0, lo_open=True)
        check("offset_std_rel", 0.0, 1.0)
        if self.disturbance_keys.shape != self.disturbance_delta.shape:
            raise SchemaError("non-ideality DB: disturbance keys and samples differ in length")
        if self.disturbance_delta.size == 0:
            raise SchemaError("non-ideality DB: the disturbance sub-database is empty")
        check("disturbance_delta", -G_CEILING, G_CEILING)
        check("disturbance_keys", 0, MAX_DISTURBANCE_KEY)
        # per-key statistics: NaN where a key has none (the published data)
        check("disturbance_key_mu", -G_CEILING, G_CEILING, allow_nan=True)
        check("disturbance_key_sigma", 0.0, G_CEILING, allow_nan=True)
        check("stuck_hrs_rate", 0.0, 1.0)
        check("stuck_lrs_rate", 0.0, 1.0)
        mu, sd = self.disturbance_key_mu, self.disturbance_key_sigma
        if mu.size != sd.size:
            raise SchemaError("non-ideality DB: key_mu and key_sigma differ in length")
        if mu.size and self.max_key >= mu.size:
            raise SchemaError(f"non-ideality DB: disturbance key {self.max_key} has no per-key "
                              f"statistics (keys 0..{mu.size - 1})")
        if self.stuck_hrs_rate + self.stuck_lrs_rate > 1:
            raise SchemaError("non-ideality DB: stuck rates add up to more than 1")
        # measured reads (a nearly open device may read a little below 0 S)
        check("stuck_hrs_samples", -G_CEILING, G_CEILING)
        check("stuck_lrs_samples", -G_CEILING, G_CEILING)
        # the sampling models: HRS ~ U(lo, hi), LRS ~ N(mean, std)
        check("stuck_hrs_range", 0.0, G_CEILING)
        if self.stuck_hrs_range[0] > self.stuck_hrs_range[1]:
            fail("stuck_hrs_range", f"is reversed: {self.stuck_hrs_range}")
        check("stuck_lrs_mean", 0.0, G_CEILING, lo_open=True)
        check("stuck_lrs_std", 0.0, G_CEILING)
        # switching voltages: SET positive, RESET negative, inside any source's reach
        check("iv_set_volts", 0.0, V_CEILING, lo_open=True)
        check("iv_reset_volts", -V_CEILING, 0.0)
        if (self.iv_reset_volts == 0).any():
            fail("iv_reset_volts", "holds 0 V (a RESET voltage is negative)")
        if self.retention is not None:
            self.retention.validate(fail)


_ARRAYS = {
    "tuning/levels": ("tuning_levels", "S"),
    "tuning/sigma_rel": ("tuning_sigma_rel", "1"),
    "tuning/offset_rel": ("tuning_offset_rel", "1"),
    "tuning/counts": ("tuning_counts", "1"),
    "disturbance/keys": ("disturbance_keys", "1"),
    "disturbance/delta": ("disturbance_delta", "S"),
    "disturbance/key_mu": ("disturbance_key_mu", "S"),
    "disturbance/key_sigma": ("disturbance_key_sigma", "S"),
    "stuck/hrs_samples": ("stuck_hrs_samples", "S"),
    "stuck/lrs_samples": ("stuck_lrs_samples", "S"),
}
#: arrays added later: a file without them reads as empty
_LATE_ARRAYS = {
    "iv/set_volts": ("iv_set_volts", "V"),
    "iv/reset_volts": ("iv_reset_volts", "V"),
}
_SCALARS = {
    "": ("g_min", "g_max"),
    "tuning": ("sigma_fit_slope", "sigma_fit_intercept", "offset_mean_rel", "offset_std_rel"),
    "stuck": ("stuck_hrs_rate", "stuck_lrs_rate", "stuck_lrs_mean", "stuck_lrs_std"),
}


_RETENTION_UNITS = ("s", "S", "1", "1", "1", "1", "1", "1")


def _meta(kw: dict) -> dict:
    """The scalar and text fields, as checksummed by `meta_crc32` (a retention part
    contributes its rule)."""
    arrays = {a for a, _u in (*_ARRAYS.values(), *_LATE_ARRAYS.values())}
    out = {n: kw[n] for n in sorted(kw) if n not in arrays and n != "retention"}
    if kw.get("retention") is not None:
        out["retention_rule"] = kw["retention"].rule
    return out


def _crc(meta: dict) -> int:
    return zlib.crc32(json.dumps(meta, sort_keys=True, default=list).encode())


def save_nonideality(db: NonIdealityDB, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `db` atomically (built in memory, then temp file + rename). Refuses to overwrite
    unless asked."""
    db.validate()
    path = Path(path)
    if path.exists() and not overwrite:
        raise SchemaError(f"{path} exists; refusing to overwrite (pass overwrite=True / --force)")
    meta = {n: getattr(db, n) for grp in _SCALARS.values() for n in grp}
    meta.update(stuck_hrs_range=list(db.stuck_hrs_range), disturbance_rule=db.disturbance_rule,
                provenance=db.provenance)
    if db.retention is not None:
        meta["retention_rule"] = db.retention.rule
    meta = json.loads(json.dumps(meta, sort_keys=True, default=float))
    bio = io.BytesIO()
    with h5py.File(bio, "w", libver="latest") as f:
        f.attrs["kind"] = KIND
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["provenance"] = json.dumps(db.provenance, sort_keys=True)
        for grp in ("tuning", "disturbance", "stuck", "iv"):
            f.create_group(grp)
        for h5name, (attr, unit) in (_ARRAYS | _LATE_ARRAYS).items():
            a = getattr(db, attr)
            ds = f.create_dataset(h5name, data=a, chunks=(max(1, min(a.size, 65536)),),
                                  maxshape=(None,), fletcher32=True, track_times=False)
            ds.attrs["units"] = unit
        for grp, names in _SCALARS.items():
            g = f[grp] if grp else f
            for n in names:
                g.attrs[n] = float(getattr(db, n))
        f["stuck"].attrs["hrs_range"] = np.asarray(db.stuck_hrs_range, float)
        f["disturbance"].attrs["rule"] = db.disturbance_rule
        if db.retention is not None:  # optional: absent in files without retention data
            g = f.create_group("retention")
            for name, unit in zip(RETENTION_ARRAYS, _RETENTION_UNITS, strict=True):
                a = getattr(db.retention, name)
                g.create_dataset(name, data=a, chunks=(max(1, min(a.size, 65536)),),
                                 maxshape=(None,), fletcher32=True,
                                 track_times=False).attrs["units"] = unit
            g.attrs["rule"] = db.retention.rule
        f.attrs["meta_crc32"] = _crc(meta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, bio.getbuffer())
    except OSError as e:
        why = "disk full" if e.errno == errno.ENOSPC else _line(e)
        raise DatabaseError(f"{path}: cannot write the database ({why}); nothing was "
                            "changed") from None
    return path


def load_nonideality(path: str | os.PathLike) -> NonIdealityDB:
    """Read a non-ideality database; SchemaError with one clear line if it is not usable."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: no such non-ideality database")
    try:
        with h5py.File(path, "r", locking=False) as f:
            kw = _read(f, path)
    except SchemaError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise SchemaError(f"{path}: truncated or malformed non-ideality database "
                          f"({_line(e)})") from None
    except Exception as e:  # whatever a damaged file makes h5py or numpy raise
        raise SchemaError(f"{path}: not a readable non-ideality database ({_line(e)})") from None
    db = NonIdealityDB(**kw)
    try:
        db.validate()
    except SchemaError as e:
        raise SchemaError(f"{path}: {e}") from None
    return db


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read(f: h5py.File, path: Path) -> dict:
    kind = f.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind != KIND:
        raise SchemaError(f"{path}: not an xbarlab non-ideality database (kind={kind!r})")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise SchemaError(f"{path}: format version {version} is newer than this xbarlab "
                          f"reads ({FORMAT_VERSION}); upgrade xbarlab")
    if version < 1:
        raise SchemaError(f"{path}: missing or invalid format_version")
    kw: dict = {}
    for h5name, (attr, _unit) in _ARRAYS.items():
        kw[attr] = f[h5name][()]
    for h5name, (attr, _unit) in _LATE_ARRAYS.items():
        if h5name in f:
            kw[attr] = f[h5name][()]
    for grp, names in _SCALARS.items():
        g = f[grp] if grp else f
        for n in names:
            kw[n] = float(g.attrs[n])
    kw["stuck_hrs_range"] = tuple(f["stuck"].attrs["hrs_range"])
    rule = f["disturbance"].attrs.get("rule", "")
    kw["disturbance_rule"] = rule.decode() if isinstance(rule, bytes) else str(rule)
    kw["provenance"] = json.loads(f.attrs.get("provenance", "{}"))
    if "retention" in f:
        g = f["retention"]
        rule = g.attrs.get("rule", "")
        kw["retention"] = RetentionStats(
            *(g[name][()] for name in RETENTION_ARRAYS),
            rule=rule.decode() if isinstance(rule, bytes) else str(rule))
    crc = f.attrs.get("meta_crc32")   # absent in files written before it existed
    if crc is not None:
        meta = json.loads(json.dumps(_meta(kw), sort_keys=True, default=list))
        if _crc(meta) != int(crc):
            raise SchemaError(f"{path}: attributes damaged (checksum mismatch)")
    return kw
