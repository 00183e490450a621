"""The emulated B1500 reads DV range codes as the instrument does (dc-commands.md §2.3):
11/12 are the legacy forms of 20/200 (2 V, 20 V); 5 and 50 are 0.5 V and 5 V; every output
range code is "limited auto" (the smallest range of the module that holds the value, never
below the one named), and only a value beyond the module's largest range is refused."""

import pytest

from simulator.emulators import B1500Emulator


@pytest.fixture
def smu():
    emu = B1500Emulator(None)          # slots: 1 WGFMU, 2-3 B1517A
    assert emu.handle("CN 2") is None and emu.errors == []
    return emu


@pytest.mark.parametrize("command,volts,full_scale", [
    ("DV 2,11,1.5,0.001", 1.5, 2.0),       # legacy 11 = 2 V (not 0.5 V)
    ("DV 2,20,1.5,0.001", 1.5, 2.0),
    ("DV 2,12,15,0.001", 15.0, 20.0),      # legacy 12 = 20 V (not 5 V)
    ("DV 2,5,0.3,0.001", 0.3, 0.5),
    ("DV 2,50,3,0.001", 3.0, 5.0),
    ("DV 2,5,1.5,0.001", 1.5, 2.0),        # limited auto: up from 0.5 V to 2 V
    ("DV 2,20,15,0.001", 15.0, 20.0),      # ... and from 2 V to 20 V
    ("DV 2,0,0.3,0.001", 0.3, 0.5),        # auto: the smallest range of a B1517A
    ("DV 2,13,-30,0.001", -30.0, 40.0),
])
def test_dv_range_codes(smu, command, volts, full_scale):
    assert smu.handle(command) is None
    assert smu.errors == [], smu.errors
    assert smu.levels[2] == volts and smu.vranges[2] == full_scale
    assert smu.handle("ERRX?") == '+0,"No Error."'


@pytest.mark.parametrize("command", [
    "DV 2,14,150,0.001",     # beyond the B1517A's largest range (100 V)
    "DV 2,2,0.1,0.001",      # 0.2 V range: not on a B1517A
    "DV 2,15,1,0.001",       # 200 V range: not on a B1517A
    "DV 2,7,1,0.001",        # not a voltage range code
])
def test_dv_refused_when_no_range_of_the_module_fits(smu, command):
    assert smu.handle(command) is None
    assert smu.levels.get(2, 0.0) == 0.0
    assert smu.handle("ERRX?").startswith("120,")
