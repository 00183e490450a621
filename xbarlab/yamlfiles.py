"""The YAML files users write (stations, campaign configs): reading them with one-line errors,
and writing a config's defaults with their documentation (`--print-config`)."""

from __future__ import annotations

import math
import textwrap
import typing
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_mapping(path: str | Path, what: str, error: type[Exception]) -> dict:
    """The YAML mapping in `path`; `error` with one line if missing, malformed or not a mapping."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text file in UTF-8 (byte {e.start}: "
                    f"{e.object[e.start:e.start + 1]!r})") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: a {what} is a mapping of fields")
    return raw


def validate(model: type[M], raw: dict, where: str, error: type[Exception]) -> M:
    """`model` from `raw`; `error` naming the first bad field and why, in one line."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(file)"
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise error(f"{where}: {loc}: {err['msg']}{more}") from None


# -- writing a config with its documentation ---------------------------------------------------

def config_yaml(model: type[BaseModel], header: str = "") -> str:
    """Every field of `model` with its default, as YAML that loads back to the defaults; before
    each field a comment from the pydantic field: its description (with the unit), the range or
    the choices it allows, and a conductance default in uS. Nested models become nested
    mappings, commented the same way."""
    lines = [f"# {ln}".rstrip() for ln in header.splitlines()]
    _fields(model, model(), 0, lines)
    return "\n".join(lines) + "\n"


def _fields(model: type[BaseModel], value: BaseModel, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for name, field in model.model_fields.items():
        v = getattr(value, name)
        for ln in textwrap.wrap(_comment(field, v), 96 - indent - 2):
            out.append(f"{pad}# {ln}")
        if isinstance(v, BaseModel):
            out.append(f"{pad}{name}:")
            _fields(type(v), v, indent + 2, out)
        else:
            out.append(f"{pad}{name}: {_scalar(v)}")


def _comment(field, value) -> str:
    parts = [field.description or ""]
    rng = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                rng.append(f"{sym} {getattr(m, attr):g}")
        if getattr(m, "min_length", None) is not None:
            rng.append(f"at least {m.min_length} item{'s' if m.min_length != 1 else ''}")
    choices = [a for a in typing.get_args(field.annotation) if a is not type(None)]
    if typing.get_origin(field.annotation) is typing.Literal:
        rng.append("one of " + ", ".join(str(a) for a in typing.get_args(field.annotation)))
    elif choices and all(typing.get_origin(a) is typing.Literal for a in choices):
        rng.append("one of " + ", ".join(str(x) for a in choices for x in typing.get_args(a)))
    if rng:
        parts.append("; ".join(rng))
    if "[S]" in (field.description or "") and isinstance(value, float):
        parts.append(f"default {value * 1e6:g} uS")
    return "; ".join(p for p in parts if p)


def _scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_scalar(x)}" for k, x in v.items()) + "}"
    return yaml.safe_dump(str(v)).splitlines()[0]


def _float(v: float) -> str:
    """Engineering notation with a decimal point (YAML 1.1 reads 1e-6 as a string):
    100.0e-6, 0.6, 3600.0."""
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        s = repr(v)
        return s if "." in s or "e" in s or "n" in s else s + ".0"
    exp = 3 * math.floor(math.log10(abs(v)) / 3)
    mant = f"{v / 10 ** exp:.12g}"
    return f"{mant if '.' in mant else mant + '.0'}e{exp:+d}"
