"""Station safety limits: the envelope every pulse, read and bias must fit before it is sent."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from instruments.errors import SafetyLimitError


class SafetyLimits(BaseModel):
    """Per-station limits in SI units. Defaults are the TiO2 lab envelope (physics.md §1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v_set_max: float = Field(2.1, gt=0, le=10, description="largest positive pulse amplitude [V]")
    v_reset_max: float = Field(
        2.5, gt=0, le=10, description="largest negative pulse magnitude [V] (RESET)"
    )
    v_read_max: float = Field(0.5, gt=0, le=2, description="largest read/bias voltage [V]")
    width_min: float = Field(10e-9, gt=0, le=1, description="shortest pulse width [s]")
    width_max: float = Field(1e-3, gt=0, le=1, description="longest pulse width [s]")
    i_compliance: float = Field(
        10e-3, gt=0, le=0.1, description="current compliance for DC bias [A]"
    )

    @model_validator(mode="after")
    def _ordered(self) -> SafetyLimits:
        if self.width_min > self.width_max:
            raise ValueError("width_min must not exceed width_max")
        return self

    def check_pulse(self, volts: float, seconds: float, *, where: str = "") -> None:
        """Raise SafetyLimitError unless (volts, seconds) is inside the envelope."""
        ctx = f" ({where})" if where else ""
        if not (math.isfinite(volts) and math.isfinite(seconds)):
            raise SafetyLimitError(f"refused non-finite pulse {volts!r} V, {seconds!r} s{ctx}")
        if volts > self.v_set_max:
            raise SafetyLimitError(
                f"refused pulse of {volts:+.3f} V: above the station limit +{self.v_set_max:.3f} V{ctx}"
            )
        if volts < -self.v_reset_max:
            raise SafetyLimitError(
                f"refused pulse of {volts:+.3f} V: below the station limit -{self.v_reset_max:.3f} V{ctx}"
            )
        if not (self.width_min <= seconds <= self.width_max):
            raise SafetyLimitError(
                f"refused pulse width {seconds:.3e} s: outside [{self.width_min:.1e}, "
                f"{self.width_max:.1e}] s{ctx}"
            )

    def check_bias(self, volts: float, *, where: str = "") -> None:
        """Raise SafetyLimitError unless |volts| is an allowed read/DC bias."""
        ctx = f" ({where})" if where else ""
        if not math.isfinite(volts) or abs(volts) > self.v_read_max:
            raise SafetyLimitError(
                f"refused bias of {volts!r} V: beyond the station read limit "
                f"±{self.v_read_max:.3f} V{ctx}"
            )

    def check_level(self, volts: float, *, where: str = "") -> None:
        """Any voltage a source may output (pulse level or bias) must fit the pulse envelope."""
        ctx = f" ({where})" if where else ""
        if not math.isfinite(volts) or volts > self.v_set_max or volts < -self.v_reset_max:
            raise SafetyLimitError(
                f"refused output level {volts!r} V: outside [-{self.v_reset_max:.3f}, "
                f"+{self.v_set_max:.3f}] V{ctx}"
            )

    def check_compliance(self, amps: float, *, where: str = "") -> None:
        ctx = f" ({where})" if where else ""
        if not math.isfinite(amps) or amps <= 0 or amps > self.i_compliance:
            raise SafetyLimitError(
                f"refused compliance {amps!r} A: must be in (0, {self.i_compliance:.3e}] A{ctx}"
            )

    def check_source(self, kind: str, value: float, compliance: float, *,
                     where: str = "") -> None:
        """An SMU forcing a voltage (`kind` "V": the level fits the envelope, the current
        compliance the limit) or a current ("I": within the compliance limit; the output swings
        up to the voltage compliance, with the current's sign, so that must fit the envelope).
        The raw-command guards of both SMU instruments (DV / DI) check through this."""
        ctx = f" ({where})" if where else ""
        if kind == "V":
            self.check_level(value, where=where)
            self.check_compliance(abs(compliance), where=where)
            return
        if not math.isfinite(value) or abs(value) > self.i_compliance:
            raise SafetyLimitError(f"refused forced current {value!r} A: beyond the station "
                                   f"limit {self.i_compliance:.3e} A{ctx}")
        self.check_level(math.copysign(abs(compliance), value), where=where)
