"""Cast a value from YAML or the command line to a config field's type, or fail in one line naming the key;
build a typed dataclass tree from a raw mapping the same way.

PyYAML reads `1e-3` as a string and MLflow passes float-typed parameters as "5.0": numbers are cast
here rather than trusted. Used by the config tree and by the compare/search sections and CLI flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from pipelines.errors import ConfigError


def coerce(value: Any, kind: Any, key: str, source: str = "config") -> Any:
    """Cast a YAML/CLI value to the field's type, or fail with a one-line message naming the key."""
    bad = ConfigError(f"{source}: {key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) is tuple:  # a YAML list, or "2,3" from the command line
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        return tuple(coerce(v, typing.get_args(kind)[0], f"{key}[{i}]", source) for i, v in enumerate(items))
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).strip())  # MLflow's float-typed params arrive as "5.0"
        except ValueError:
            raise bad from None
        if not number.is_integer():
            raise bad
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if number != number:  # NaN is never a valid setting
            raise bad
        return number
    if kind is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    raise ConfigError(f"{source}: {key} has an unsupported type {kind}")


def build_tree(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """A (nested) dataclass from a raw mapping: unknown keys refused with the closest valid one, each value
    cast to its field's type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.')}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(names)})"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build_tree(kind, raw[name], f"{prefix}{name}.", source)
        else:
            values[name] = coerce(raw[name], kind, f"{prefix}{name}", source)
    return cls(**values)
