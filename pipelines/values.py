"""Cast a value from YAML or the command line to a config field's type, or fail in one line naming the key;
build a typed dataclass tree from a raw mapping the same way.

PyYAML reads `1e-3` as a string and MLflow passes float-typed parameters as "5.0": numbers are cast
here rather than trusted. Used by the config tree and by the compare/search sections and CLI flags; also
the experiment file's reading, and compare.lr's learning rates as values and as names write them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

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


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{part}' is not a section")
    node[leaf] = value


def lr_text(lr: float) -> str:
    """3e-4 rather than 0.0003: a learning rate as experiment files and papers write it (names, the lr tag)."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def learning_rates(value: Any, source: str) -> list[float]:
    """compare.lr: a non-empty list of distinct numbers > 0."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: compare.lr must be a non-empty list of learning rates, e.g. [1e-4, 3e-4, 1e-3], "
                          f"got {value!r}")
    lrs = [coerce(v, float, f"compare.lr[{i}]", source) for i, v in enumerate(value)]
    for lr in lrs:
        if not 0 < lr < math.inf:
            raise ConfigError(f"{source}: compare.lr values must be numbers > 0, got {lr}")
        if lrs.count(lr) > 1:
            raise ConfigError(f"{source}: compare.lr lists {lr_text(lr)} twice")
    return lrs
