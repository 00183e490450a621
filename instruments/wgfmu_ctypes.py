"""`WgfmuLibrary` over Keysight's WGFMU instrument library (wgfmu.dll) via ctypes.

Keysight ships the library for Windows with the B1530A software. On a machine without it,
constructing `CtypesWgfmuLibrary` raises InstrumentError saying so; simulated stations use the
emulated library instead. Not exercised against hardware here (no library on this machine):
the signatures follow wgfmu.h as quoted in instruments.md §3.2.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from instruments.errors import InstrumentError

_c = ctypes
_D = _c.c_double
_I = _c.c_int
_S = _c.c_char_p


def _find(path: str | None) -> str:
    if path:
        return path
    env = os.environ.get("XBARLAB_WGFMU_LIBRARY")
    if env:
        return env
    found = ctypes.util.find_library("wgfmu")
    if found:
        return found
    raise InstrumentError(
        "Keysight WGFMU instrument library (wgfmu.dll) not found: install the B1530A "
        "software on this PC or set XBARLAB_WGFMU_LIBRARY to the library path "
        f"(platform {sys.platform}); use a simulated station to run without it",
        instrument="WGFMU")


class CtypesWgfmuLibrary:
    """Thin ctypes binding; each method returns the same tuples as the `WgfmuLibrary` protocol."""

    _SIGS: dict[str, tuple] = {
        "openSession": (_S,), "closeSession": (), "initialize": (), "setTimeout": (_D,),
        "getErrorSize": (_c.POINTER(_I),), "clear": (), "createPattern": (_S, _D),
        "addVector": (_S, _D, _D), "setMeasureEvent": (_S, _S, _D, _I, _D, _D, _I),
        "addSequence": (_I, _S, _D), "setOperationMode": (_I, _I),
        "setForceVoltageRange": (_I, _I), "setMeasureMode": (_I, _I),
        "setMeasureCurrentRange": (_I, _I), "connect": (_I,), "disconnect": (_I,),
        "update": (), "execute": (), "abort": (), "waitUntilCompleted": (),
    }

    def __init__(self, path: str | None = None):
        where = _find(path)
        try:
            loader = ctypes.WinDLL if sys.platform == "win32" else ctypes.CDLL  # type: ignore[attr-defined]
            self._dll = loader(where)
        except OSError as e:
            raise InstrumentError(f"cannot load the WGFMU library {where}: {e}",
                                  instrument="WGFMU") from e
        for name, args in self._SIGS.items():
            fn = getattr(self._dll, f"WGFMU_{name}")
            fn.argtypes = list(args)
            fn.restype = _I

    def _fn(self, name: str):
        return getattr(self._dll, f"WGFMU_{name}")

    def __getattr__(self, name: str):
        # plain int-returning calls: strings are encoded, everything else passes through
        if name.startswith("_") or name not in self._SIGS:
            raise AttributeError(name)
        fn = self._fn(name)

        def call(*args):
            return fn(*[a.encode() if isinstance(a, str) else a for a in args])
        return call

    def getErrorSize(self) -> tuple[int, int]:
        n = _I(0)
        return self._fn("getErrorSize")(_c.byref(n)), n.value

    def getError(self) -> tuple[int, str]:
        rc, size = self.getErrorSize()
        buf = _c.create_string_buffer(max(size, 1) + 1)
        n = _I(len(buf))
        rc = self._fn("getError")(buf, _c.byref(n))
        return rc, buf.value.decode(errors="replace")

    def getStatus(self) -> tuple[int, int, float, float]:
        st, el, tot = _I(0), _D(0), _D(0)
        rc = self._fn("getStatus")(_c.byref(st), _c.byref(el), _c.byref(tot))
        return rc, st.value, el.value, tot.value

    def getMeasureValueSize(self, channel: int) -> tuple[int, int, int]:
        m, t = _I(0), _I(0)
        rc = self._fn("getMeasureValueSize")(_I(channel), _c.byref(m), _c.byref(t))
        return rc, m.value, t.value

    def getMeasureValues(self, channel: int, offset: int, size: int):
        n = _I(size)
        ts, vs = (_D * size)(), (_D * size)()
        rc = self._fn("getMeasureValues")(_I(channel), _I(offset), _c.byref(n), ts, vs)
        return rc, list(ts[: n.value]), list(vs[: n.value])

    def getInterpolatedForceValue(self, channel: int, time: float) -> tuple[int, float]:
        v = _D(0)
        rc = self._fn("getInterpolatedForceValue")(_I(channel), _D(time), _c.byref(v))
        return rc, v.value
