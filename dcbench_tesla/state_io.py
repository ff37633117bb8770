"""Nested training state (tensors, numbers, strings, lists, dicts) in safetensors, never pickle.

Optimiser states, RNG states and counters are flattened: every tensor becomes one
safetensors entry, and the structure, with tensors replaced by references, is JSON
in the file's metadata. Loading rebuilds the structure without executing anything.

The metadata also holds a SHA-256 of the structure and of every tensor (name, dtype, shape,
bytes): a damaged or edited file is refused on load instead of resuming a run from a state its
code cannot use (a momentum buffer of another shape fails only later, deep inside a step).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import check_format, read_tensor_file, write_tensor_file

FORMAT = "dcbench-tesla/state"
#: 2: with the ``sha256`` of the contents (version 1 files, without it, are read unchecked).
FORMAT_VERSION = 2
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
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "structure": structure}
    return write_tensor_file(path, tensors, {**meta, "sha256": _digest(structure, tensors)})


def _digest(structure: Any, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the structure (as sorted JSON) and of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(structure, sort_keys=True, default=str).encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_state(path: Path | str, what: str = "checkpoint") -> dict[str, Any]:
    """Read a file written by :func:`save_state`.

    Raises:
        UserError: missing, truncated, foreign or pickled file.
    """
    path = Path(path)
    tensors, meta = read_tensor_file(path, what=what)
    version = check_format(meta, path, f"dcbench {what}", FORMAT, FORMAT_VERSION)
    structure = meta.get("structure")
    if not isinstance(structure, dict):
        raise UserError(f"{str(path)!r}: field 'structure' is {type(structure).__name__}, expected an object")
    if ("sha256" in meta or version >= 2) and meta.get("sha256") != _digest(structure, tensors):
        raise UserError(
            f"{str(path)!r} is damaged or was edited: its contents do not match the checksum written with it "
            f"(found {str(meta.get('sha256'))[:16]!r}...). Start the run again without --resume (--overwrite)."
        )
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
