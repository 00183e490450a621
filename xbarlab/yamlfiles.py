"""Reading the YAML files users write (stations, campaign configs) with one-line errors."""

from __future__ import annotations

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
