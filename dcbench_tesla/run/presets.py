"""Bench presets: TOML files of ``dcbench bench`` settings.

``dcbench_tesla/presets/*.toml`` ship with the package (``--preset table1-cifar10`` names one;
``--preset path/to/file.toml`` reads any). Explicit flags override a preset; method
hyper-parameters come from the methods' config cards, and a preset's ``[set.<method>]`` tables
only override them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from dcbench_tesla.checks import MAX_EPOCHS, MAX_IPC, MAX_ITERATIONS, MAX_MODELS, MAX_SEED
from dcbench_tesla.errors import UserError


def _ints(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _list_of(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and bool(v) and all(ok(x) for x in v)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


#: Keys a preset may hold: what each must be (in words) and the check of its value.
PRESET_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "description": ("a string", _is_str),
    "methods": ("a non-empty list of method ids (strings)", _list_of(_is_str)),
    "dataset": ("a dataset name (string)", _is_str),
    "ipcs": (f"a non-empty list of integers 1..{MAX_IPC}", _list_of(_ints(1, MAX_IPC))),
    "eval_models": ("a non-empty list of model names (strings)", _list_of(_is_str)),
    "num_eval": (f"an integer 1..{MAX_MODELS}", _ints(1, MAX_MODELS)),
    "eval_epochs": (f"an integer 1..{MAX_EPOCHS}", _ints(1, MAX_EPOCHS)),
    "protocol": ("a protocol name (string)", _is_str),
    "iterations": (f"an integer 0..{MAX_ITERATIONS}", _ints(0, MAX_ITERATIONS)),
    "whole_dataset": ("true or false", lambda v: isinstance(v, bool)),
    "exclude": ("a list of cell names (strings)", lambda v: isinstance(v, list) and all(_is_str(x) for x in v)),
    "seed": (f"an integer 0..{MAX_SEED}", _ints(0, MAX_SEED)),
    "set": ("a table of method options", lambda v: isinstance(v, dict)),
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
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"preset {str(path)!r} cannot be read as TOML text: {exc}") from exc
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
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise UserError(f"preset {where!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(PRESET_KEYS))
    if unknown:
        raise UserError(f"preset {where!r}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(PRESET_KEYS)}")
    for key, value in data.items():
        expected, ok = PRESET_KEYS[key]
        if not ok(value):
            found = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise UserError(f"preset {where!r}: {key} must be {expected}, got {found}")
    if "set" in data:
        data["set"] = _flatten_set(data["set"], f"preset {where!r}")
    return data
