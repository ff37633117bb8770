"""Typed method options: validation, coercion of CLI strings, and precedence.

Precedence, lowest first: the distiller's ``Config`` defaults < the spec's kwargs <
the method's config card for (dataset, ipc) < ``--config FILE`` < explicit flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from dcbench_tesla.errors import UserError

#: Largest integer option value (int64): a method's own Config bounds its counts further.
_MAX_INT = 2**63 - 1
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, annotation: Any, key: str, owner: str) -> Any:
    """Coerce ``value`` (often a CLI string) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        if len(args) == 1:  # Optional[X]: X's own message
            return _coerce(value, args[0], key, owner)
        for arg in args:
            try:
                return _coerce(value, arg, key, owner)
            except UserError:
                continue
        names = ", ".join(getattr(a, "__name__", str(a)) for a in args)
        raise UserError(f"{owner}: option {key!r} got {value!r}, expected one of: {names} or none")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise UserError(f"{owner}: option {key!r} must be one of {list(choices)}, got {value!r}")
        return value
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            number = int(value)
            if abs(number) > _MAX_INT:
                raise ValueError(value)
            return number
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError, OverflowError) as exc:
        name = {int: f"int (at most {_MAX_INT} in size)", float: "float (finite)"}.get(
            annotation, getattr(annotation, "__name__", str(annotation))
        )
        raise UserError(f"{owner}: option {key!r} must be {name}, got {value!r}") from exc
    return value


def build_options(config_cls: type, values: dict[str, Any], owner: str) -> Any:
    """Validate ``values`` against the dataclass ``config_cls`` and build it.

    Raises:
        UserError: an unknown key (listing the valid ones) or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(
            f"{owner}: unknown option(s) {', '.join(repr(u) for u in unknown)}. "
            f"Valid options: {', '.join(sorted(fields)) or '(none)'}."
        )
    hints = typing.get_type_hints(config_cls)
    coerced = {key: _coerce(val, hints[key], key, owner) for key, val in values.items()}
    try:
        return config_cls(**coerced)
    except (TypeError, ValueError, UserError) as exc:  # the Config's own checks (ranges, names)
        raise UserError(f"{owner}: {exc}") from exc


def read_config_file(path: Path | str) -> dict[str, Any]:
    """Read a flat mapping of options from a ``.json`` or ``.toml`` file.

    Raises:
        UserError: missing, unreadable or malformed file, or not a flat mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    if path.suffix.lower() not in (".toml", ".json"):
        raise UserError(f"config file {str(path)!r}: use a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except OSError as exc:
        raise UserError(f"config file {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise UserError(f"config file {str(path)!r} is malformed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or any(isinstance(v, dict) for v in data.values()):
        raise UserError(f"config file {str(path)!r} must hold a flat mapping of option = value")
    return data
