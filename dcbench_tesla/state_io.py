"""Nested training state (tensors, numbers, strings, lists, dicts) in safetensors, never pickle.

Optimiser states, RNG states and counters are flattened: every tensor becomes one
safetensors entry, and the structure, with tensors replaced by references, is JSON
in the file's metadata. Loading rebuilds the structure without executing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import read_tensor_file, write_tensor_file

FORMAT = "dcbench-tesla/state"
_TENSOR = "__tensor__"
_INT_KEYS = "__int_keys__"


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {_TENSOR: name}
    if isinstance(obj, dict):
        int_keys = all(isinstance(k, int) for k in obj) and bool(obj)
        if not int_keys and not all(isinstance(k, str) for k in obj):
            raise TypeError(f"state dict keys must be all str or all int, got {list(obj)[:3]}")
        flat = {str(k): _flatten(v, tensors) for k, v in obj.items()}
        return {_INT_KEYS: flat} if int_keys else flat
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a state file")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[str(obj[_TENSOR])]
        if set(obj) == {_INT_KEYS}:
            return {int(k): _unflatten(v, tensors) for k, v in obj[_INT_KEYS].items()}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` (safetensors + JSON structure)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors)
    return write_tensor_file(path, tensors, {"format": FORMAT, "structure": structure})


def load_state(path: Path | str, what: str = "checkpoint") -> dict[str, Any]:
    """Read a file written by :func:`save_state`.

    Raises:
        UserError: missing, truncated, foreign or pickled file.
    """
    path = Path(path)
    tensors, meta = read_tensor_file(path, what=what)
    if meta.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a dcbench {what} (format {meta.get('format')!r})")
    structure = meta.get("structure")
    if not isinstance(structure, dict):
        raise UserError(f"{str(path)!r}: field 'structure' is {type(structure).__name__}, expected an object")
    try:
        state = _unflatten(structure, tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise UserError(f"{str(path)!r}: corrupt {what} structure ({type(exc).__name__}: {exc})") from exc
    unused = set(tensors) - _referenced(structure)
    if unused:
        raise UserError(f"{str(path)!r}: corrupt {what}: tensors {sorted(unused)[:3]} are not in its structure")
    return state


def _referenced(obj: Any) -> set[str]:
    """Names of the tensors a flattened structure refers to."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return {str(obj[_TENSOR])}
        return set().union(*(_referenced(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_referenced(v) for v in obj)) if obj else set()
    return set()
