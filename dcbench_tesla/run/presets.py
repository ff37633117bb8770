"""Bench presets: TOML files of ``dcbench bench`` settings.

``dcbench_tesla/presets/*.toml`` ship with the package (``--preset table1-cifar10`` names one;
``--preset path/to/file.toml`` reads any). Explicit flags override a preset; method
hyper-parameters come from the methods' config cards, and a preset's ``[set.<method>]`` tables
only override them.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from dcbench_tesla.errors import UserError

#: Keys a preset may hold, with the Python type each must have.
PRESET_KEYS: dict[str, type | tuple[type, ...]] = {
    "description": str,
    "methods": list,
    "dataset": str,
    "ipcs": list,
    "eval_models": list,
    "num_eval": int,
    "eval_epochs": int,
    "protocol": str,
    "iterations": int,
    "whole_dataset": bool,
    "exclude": list,
    "seed": int,
    "set": dict,
}


def preset_names() -> list[str]:
    """Names of the presets shipped in ``dcbench_tesla/presets``."""
    folder = resources.files("dcbench_tesla").joinpath("presets")
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_text(name_or_path: str) -> tuple[str, str]:
    """The TOML text of a shipped preset or a file, and where it came from."""
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    name = name_or_path[: -len(".toml")] if name_or_path.endswith(".toml") else name_or_path
    if name in preset_names():
        return resources.files("dcbench_tesla").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8"), name
    raise UserError(
        f"--preset {name_or_path!r} is neither a file nor a shipped preset; "
        f"presets: {', '.join(preset_names()) or '(none)'}"
    )


def _flatten_set(table: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"mtt": {"lr_img": 1}, "iterations": 5}`` -> ``{"mtt.lr_img": 1, "iterations": 5}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                if isinstance(sub_value, dict):
                    raise UserError(f"{where}: [set.{key}.{sub}] nests too deep; use [set.<method>] key = value")
                flat[f"{key}.{sub}"] = sub_value
        else:
            flat[key] = value
    return flat


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read and check a preset (a shipped name or a TOML file path).

    Raises:
        UserError: missing, malformed, unknown keys or values of the wrong type.
    """
    text, where = preset_text(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"preset {where!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(PRESET_KEYS))
    if unknown:
        raise UserError(f"preset {where!r}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(PRESET_KEYS)}")
    for key, value in data.items():
        expected = PRESET_KEYS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise UserError(f"preset {where!r}: {key} must be {getattr(expected, '__name__', expected)}, got {value!r}")
    if "set" in data:
        data["set"] = _flatten_set(data["set"], f"preset {where!r}")
    return data
