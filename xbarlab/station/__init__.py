"""Station files: which rig, which instruments at which addresses, the matrix wiring, the safety
limits and read/pulse defaults. One YAML file per set-up; `simulated: true` builds the same rig
and drivers over emulated instruments and a virtual chip.

    station = load_station("xbarlab/stations/sim-pmu.yaml")
    with station.open_rig() as rig:
        rig.pulse_and_read(0, 0, 1.2, 200e-9)

A bad file raises StationError with one line naming the field.

The station is built from small parts (`registry`): one module per instrument kind (`k4200`,
`k707b`, `b1500`, `wgfmu`) and per rig kind (`pmu_rig`, `wgfmu_rig`); `config` holds the
file's fields, `resources` the real and the simulated lab behind one interface, `station` the
`Station` that opens rigs and describes what a run is bound to.
"""

from xbarlab.station.station import SHIPPED_STATIONS, Station, load_station, resolve_station

__all__ = ["SHIPPED_STATIONS", "Station", "load_station", "resolve_station"]
