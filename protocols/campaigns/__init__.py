"""Characterisation campaigns: resumable loops over devices writing raw-run HDF5 files.

Each module exposes ``run(rig, config, store, *, seed, station, resume, overwrite, progress)``
(rig: a `protocols.rig.CrossbarRig`) and a pydantic config class. ``CAMPAIGNS`` maps the CLI
names to (module, config class).
"""

from __future__ import annotations

from protocols.campaigns import (
    bringup,
    disturbance,
    forming,
    iv,
    iv_pulsed,
    retention,
    stuck,
    tuning_untuning,
)

CAMPAIGNS = {
    tuning_untuning.PROTOCOL: (tuning_untuning, tuning_untuning.TuningUntuningConfig),
    disturbance.PROTOCOL: (disturbance, disturbance.DisturbanceConfig),
    stuck.PROTOCOL: (stuck, stuck.StuckConfig),
    iv.PROTOCOL: (iv, iv.IVConfig),
    iv_pulsed.PROTOCOL: (iv_pulsed, iv_pulsed.PulsedIVConfig),
    bringup.PROTOCOL: (bringup, bringup.BringupConfig),
    forming.PROTOCOL: (forming, forming.FormingConfig),
    retention.PROTOCOL: (retention, retention.RetentionConfig),
}

__all__ = ["CAMPAIGNS"]
