"""The sweep file: its schema, and its expansion into concrete points with stable keys.

Every point is fully resolved before it is keyed: the dataset's network and optimiser
(training.defaults), the tile layout and the mapping fill whatever the file leaves unset, and a
total stuck rate is split into x (HRS) and y (LRS). So two files that mean the same point give
the same key, and a changed default changes the key (the point is recomputed, not mixed up
with results made under the old default).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from protocols.plan import ACTIVATIONS
from training.defaults import DATASETS, DEFAULT_MAPPING, MAPPINGS, NETWORKS
from training.errors import SweepError
from training.tiles import DEFAULT_LAYOUT


class PointParams(BaseModel):
    """One point's settings. Unset values (None) are resolved by :func:`resolve`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: non-ideality database: "reference" (the shipped published data) or an HDF5 path
    db: str = "reference"
    dataset: Literal[tuple(DATASETS)] = "moons"  # type: ignore[valid-type]
    mapping: Literal[MAPPINGS] = DEFAULT_MAPPING  # type: ignore[valid-type]
    seed: int = Field(0, ge=0)
    #: stuck rates per device: x = stuck at HRS, y = stuck at LRS; or a total split evenly.
    #: None = the rates in the non-ideality database.
    stuck_rate: float | None = Field(None, ge=0.0, le=1.0)
    stuck_hrs_rate: float | None = Field(None, ge=0.0, le=1.0)
    stuck_lrs_rate: float | None = Field(None, ge=0.0, le=1.0)
    #: square crossbar tile edge (devices); layers larger than a tile span several tiles
    tile_size: int | None = Field(None, ge=1, le=4096)
    #: a layer's bias on the same tiles as its weights
    share_bias: bool | None = None
    #: multipliers on the tuning-imprecision sigma and on the V/3 disturbance draws
    tuning_sigma_scale: float = Field(1.0, ge=0.0, le=100.0)
    disturbance_scale: float = Field(1.0, ge=0.0, le=100.0)
    #: hidden layer widths and their activation (None: the dataset's network)
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    epochs: int | None = Field(None, ge=1)
    #: early stopping patience in epochs on the validation loss under noise (None = off)
    patience: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)
    batch_size: int | None = Field(None, ge=1)
    #: Monte-Carlo transfers used to evaluate each trained network
    transfers: int = Field(1000, ge=1, le=1_000_000)

    @field_validator("hidden")
    @classmethod
    def _hidden_positive(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) == 0 or any(h < 1 for h in v)):
            raise ValueError("hidden widths must be a non-empty list of integers >= 1")
        return v

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str | None) -> str | None:
        if v is not None and v not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        return v

    @model_validator(mode="after")
    def _resolve_stuck(self) -> PointParams:
        if self.stuck_rate is not None:
            if self.stuck_hrs_rate is not None or self.stuck_lrs_rate is not None:
                raise ValueError("give either stuck_rate (total) or stuck_hrs_rate/stuck_lrs_rate")
            half = self.stuck_rate / 2.0
            # frozen model: set through object.__setattr__; the total splits evenly (x = y)
            object.__setattr__(self, "stuck_hrs_rate", half)
            object.__setattr__(self, "stuck_lrs_rate", half)
        elif (self.stuck_hrs_rate is None) != (self.stuck_lrs_rate is None):
            raise ValueError("stuck_hrs_rate and stuck_lrs_rate must be given together")
        elif self.stuck_hrs_rate is not None:
            object.__setattr__(self, "stuck_rate", self.stuck_hrs_rate + self.stuck_lrs_rate)
        if self.stuck_hrs_rate is not None and self.stuck_hrs_rate + self.stuck_lrs_rate > 1.0:
            raise ValueError("stuck_hrs_rate + stuck_lrs_rate exceeds 1")
        return self


PARAM_NAMES = tuple(PointParams.model_fields)


def resolve(pp: PointParams) -> dict[str, Any]:
    """A point's parameters with every unset training setting filled in: the dataset's network
    and optimiser (training.defaults.DATASETS) and the default tile layout. The stuck rates
    stay None where unset: they are the database's, and the database is part of the key."""
    params = pp.model_dump()
    d = DATASETS[params["dataset"]]
    filled = {"hidden": d.hidden, "activation": d.activation, "epochs": d.epochs, "lr": d.lr,
              "batch_size": d.batch_size, "tile_size": DEFAULT_LAYOUT.rows,
              "share_bias": DEFAULT_LAYOUT.share_bias}
    for name, value in filled.items():
        if params[name] is None:
            params[name] = value
    params["hidden"] = list(params["hidden"])
    return params


class SweepSpec(BaseModel):
    """A sweep file. ``points`` x ``grid``: every listed point is combined with every grid
    combination (with only one of them, that one alone); ``base`` fills the rest."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    kinds: list[Literal[NETWORKS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(NETWORKS))
    #: train points that differ only by seed as one batched model of K networks
    #: (training.sweep.units.group_points); results are the same either way
    batch_seeds: bool = True
    #: folder of the sweep file, against which a relative ``db`` path is resolved
    _source_dir: Path | None = PrivateAttr(None)

    @field_validator("base", "grid")
    @classmethod
    def _known_names(cls, v: dict) -> dict:
        for name in v:
            if name not in PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r} (known: {', '.join(PARAM_NAMES)})")
        return v

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, v: dict[str, list]) -> dict[str, list]:
        for name, values in v.items():
            if not values:
                raise ValueError(f"grid axis {name!r} has no values")
        return v

    @field_validator("points")
    @classmethod
    def _known_point_names(cls, v: list[dict]) -> list[dict]:
        for i, p in enumerate(v):
            for name in p:
                if name not in PARAM_NAMES:
                    raise ValueError(f"points[{i}]: unknown parameter {name!r}")
        return v

    @field_validator("kinds")
    @classmethod
    def _kinds_non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"kinds must name at least one of {', '.join(NETWORKS)}")
        return list(dict.fromkeys(v))


def _one_line(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(file)"
    extra = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where}: {loc}: {err['msg']}{extra}"


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file; SweepError naming the field on any problem.

    A relative ``db`` path is resolved against the sweep file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (name, base, grid, points, kinds)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SweepError(_one_line(e, str(path))) from None
    spec._source_dir = path.parent.resolve()
    return spec


@dataclass(frozen=True)
class Point:
    """A concrete sweep point: resolved parameters and the key they hash to."""

    key: str
    params: dict[str, Any]


def _resolve_db(db: str, source_dir: Path | None) -> str:
    if db == "reference":
        return db
    p = Path(db).expanduser()
    if not p.is_absolute() and source_dir is not None:
        p = source_dir / p
    return str(p.resolve())


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise SweepError(f"non-ideality database {path}: {e.strerror or e}") from None
    return h.hexdigest()[:16]


def _data_digest(dataset: str) -> str:
    """Digest of the training and test sets a point of `dataset` uses
    (`database.datasets.load_dataset`)."""
    from database.datasets import load_dataset

    sets = load_dataset(dataset)
    h = hashlib.sha256()
    for role in ("train", "test"):
        for a in sets[role]:
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def point_key(params: dict[str, Any]) -> str:
    """Stable key of a resolved parameter set: sha256 of its canonical JSON (sorted keys)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand(spec: SweepSpec) -> list[Point]:
    """All points of a sweep, in file order, duplicates (same key) removed.

    Every parameter is resolved (:func:`resolve`), so two files that mean the same point give
    the same key. A DB given as a file also contributes the file's content digest to the key,
    so a rebuilt database is not mistaken for the old one, and so do the dataset's training and
    test sets (a changed split is not mistaken for the old one either).
    """
    source_dir = spec._source_dir
    names = list(spec.grid)
    combos = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*spec.grid.values())]
    listed = spec.points or [{}]
    digests: dict[str, str] = {}
    data_digests: dict[str, str] = {}
    out: dict[str, Point] = {}
    for i, listed_point in enumerate(listed):
        clash = set(listed_point) & set(names)
        if clash:
            raise SweepError(f"points[{i}] sets {sorted(clash)[0]!r}, which is also a grid axis")
        for combo in combos:
            raw = {**spec.base, **listed_point, **combo}
            # a point's stuck rates replace the base's, whichever form (total or x/y) each uses
            override = {**listed_point, **combo}
            if "stuck_rate" in override:
                for name in ("stuck_hrs_rate", "stuck_lrs_rate"):
                    if name not in override:
                        raw.pop(name, None)
            elif {"stuck_hrs_rate", "stuck_lrs_rate"} & override.keys():
                raw.pop("stuck_rate", None)
            try:
                pp = PointParams.model_validate(raw)
            except ValidationError as e:
                where = f"points[{i}]" if spec.points else "grid"
                raise SweepError(_one_line(e, where) + f" in {_short(raw)}") from None
            params = resolve(pp)
            params["db"] = _resolve_db(params["db"], source_dir)
            keyed = dict(params)
            if params["db"] != "reference":
                if params["db"] not in digests:
                    digests[params["db"]] = _file_digest(params["db"])
                keyed["db_digest"] = digests[params["db"]]
            if params["dataset"] not in data_digests:
                data_digests[params["dataset"]] = _data_digest(params["dataset"])
            keyed["data_digest"] = data_digests[params["dataset"]]
            keyed["kinds"] = sorted(spec.kinds)
            key = point_key(keyed)
            out.setdefault(key, Point(key=key, params=params))
    return list(out.values())


def _short(d: dict) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in d.items()) + "}"
