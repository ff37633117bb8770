"""Mutations of valid files, drawn by hypothesis: what a corrupted disk, a bad export or a hostile
user produces. Every function takes hypothesis's ``draw`` and returns the mutated file's bytes (or
writes it).

- bytes: truncation, bit flips, overwritten ranges, appended garbage;
- safetensors: a tensor in another dtype or shape, NaN/inf/negative/huge values, a tensor removed
  or added, a metadata field set to any JSON value or removed, metadata that is not JSON;
- pickles (CIFAR batches) and npz archives: entries of another type, dtype or shape;
- text files: lines replaced, truncated, garbled.
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from safetensors.torch import save_file

METADATA_KEY = "dcbench"
DTYPES = [
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
]  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["abc", "1", "zca", "meanstd", "hard", "soft", "", "dcbench-tesla/state"]),
)
#: Any JSON value (small).
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8,
)


def mutate_bytes(draw, data: bytes) -> bytes:
    """Truncate, flip bits in, overwrite a range of, or append garbage to ``data``."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "append"]))
    size = len(data)
    if kind == "truncate":
        return data[: draw(st.integers(0, max(size - 1, 0)))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, size - 1))
            out[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "overwrite":
        start = draw(st.integers(0, size - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        return data[:start] + junk + data[start + len(junk) :]
    return data + draw(st.binary(min_size=1, max_size=64))


def read_safetensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the parsed ``dcbench`` metadata of a safetensors file's bytes."""
    from safetensors.torch import load

    tensors = load(data)
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    meta = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))
    return tensors, meta


def write_safetensors(tensors: dict[str, torch.Tensor], meta: Any, raw: str | None = None) -> bytes:
    """A safetensors file's bytes with ``meta`` (JSON-encoded, or ``raw`` text) as the ``dcbench`` metadata."""
    import os
    import tempfile

    text = raw if raw is not None else json.dumps(meta, allow_nan=True)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={METADATA_KEY: text})
        with open(path, "rb") as handle:
            return handle.read()


def _retyped(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return tensor != 0
    if not dtype.is_floating_point and tensor.is_floating_point():
        info = torch.iinfo(dtype)
        return tensor.clamp(info.min, info.max).to(dtype)
    return tensor.to(dtype)


def _reshaped(draw, tensor: torch.Tensor) -> torch.Tensor:
    kind = draw(st.sampled_from(["flatten", "unsqueeze", "drop_rows", "transpose", "scalar", "random"]))
    if kind == "flatten":
        return tensor.reshape(-1)
    if kind == "unsqueeze":
        return tensor.unsqueeze(0)
    if kind == "drop_rows" and tensor.ndim and tensor.shape[0] > 0:
        return tensor[: draw(st.integers(0, tensor.shape[0] - 1))].clone()
    if kind == "transpose" and tensor.ndim >= 2:
        return tensor.transpose(0, tensor.ndim - 1).contiguous()
    if kind == "scalar":
        return tensor.reshape(-1)[:1].reshape(())
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    return torch.zeros(shape, dtype=tensor.dtype)


def _revalued(draw, tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    if out.numel() == 0:
        return out
    value = draw(st.sampled_from([float("nan"), float("inf"), -1.0, 1e30, 255.0, 1e4, -1e4, 0.5]))
    flat = out.reshape(-1)
    position = draw(st.integers(0, flat.numel() - 1))
    if out.is_floating_point():
        flat[position] = value
    elif out.dtype == torch.bool:
        flat[position] = not bool(flat[position])
    else:
        info = torch.iinfo(out.dtype)
        flat[position] = int(
            max(info.min, min(info.max, value if value == value and abs(value) != float("inf") else -1))
        )
    return out


def _edit_json(draw, meta: Any) -> Any:
    """Set a field (at depth 1 or 2) to any JSON value, or remove it."""
    if not isinstance(meta, dict) or not meta:
        return draw(JSON)
    meta = json.loads(json.dumps(meta))
    key = draw(st.sampled_from(sorted(meta)))
    target = meta
    if isinstance(meta[key], dict) and meta[key] and draw(st.booleans()):
        target, key = meta[key], draw(st.sampled_from(sorted(meta[key])))
    if draw(st.booleans()):
        del target[key]
    else:
        target[key] = draw(JSON)
    return meta


def mutate_safetensors(draw, data: bytes) -> bytes:
    """One mutation of a dcbench safetensors file (bytes, a tensor's dtype/shape/values, its metadata)."""
    kind = draw(st.sampled_from(["bytes", "dtype", "shape", "values", "drop", "add", "metadata", "raw"]))
    if kind == "bytes":
        return mutate_bytes(draw, data)
    tensors, meta = read_safetensors(data)
    names = sorted(tensors)
    if kind in ("dtype", "shape", "values", "drop") and names:
        name = draw(st.sampled_from(names))
        if kind == "dtype":
            tensors[name] = _retyped(tensors[name], draw(st.sampled_from(DTYPES)))
        elif kind == "shape":
            tensors[name] = _reshaped(draw, tensors[name])
        elif kind == "values":
            tensors[name] = _revalued(draw, tensors[name])
        else:
            del tensors[name]
    elif kind == "add":
        tensors[draw(st.sampled_from(["extra", "t999", "zca_mean", "images"]))] = torch.zeros(
            draw(st.lists(st.integers(0, 3), max_size=3))
        )
    elif kind == "metadata":
        meta = _edit_json(draw, meta)
    else:
        return write_safetensors(tensors, None, raw=draw(st.sampled_from(["", "{", "[]", "null", "1", '"x"'])))
    return write_safetensors(tensors, meta)


def mutate_pickled_batch(draw, data: bytes) -> bytes:
    """One mutation of a CIFAR batch: its bytes, or an entry of another type, dtype or shape."""
    if draw(st.booleans()):
        return mutate_bytes(draw, data)
    batch = pickle.loads(data)  # the test's own valid file, never a file from elsewhere
    key = draw(st.sampled_from(sorted(batch)))
    value = batch[key]
    choices = [
        None,
        "a",
        [],
        [["x"]],
        [1.5] * 3,
        [True] * 3,
        [2**70] * 3,
        [-1] * 3,
        {"k": 1},
    ]
    if isinstance(value, np.ndarray):
        choices += [value.astype(np.float64), value.reshape(-1), value[:1], value.astype(np.int64)]
    if isinstance(value, list):
        choices += [value[:-1], [str(v) for v in value], [float(v) + 0.5 for v in value if isinstance(v, int)]]
    mutated = draw(st.sampled_from(range(len(choices) + 1)))
    if mutated == len(choices):
        del batch[key]
    else:
        batch[key] = choices[mutated]
    return pickle.dumps(batch, protocol=2)


def mutate_npz(draw, data: bytes) -> bytes:
    """One mutation of an npz archive: its bytes, or an array of another dtype or shape."""
    if draw(st.booleans()):
        return mutate_bytes(draw, data)
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    key = draw(st.sampled_from(sorted(arrays)))
    value = arrays[key]
    choices = [
        value.astype(np.float64) + 0.5,
        value.astype(np.bool_),
        value.astype(np.int8),
        value.reshape(-1),
        value[:0],
        value[:1],
        np.array(["a"] * max(len(value), 1)),
        value.astype(np.float32) * np.nan,
    ]
    mutated = draw(st.sampled_from(range(len(choices) + 1)))
    if mutated == len(choices):
        del arrays[key]
    else:
        arrays[key] = choices[mutated]
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def mutate_text(draw, text: str) -> str:
    """Replace, remove or garble a line of ``text``, or truncate it."""
    lines = text.splitlines()
    kind = draw(st.sampled_from(["replace", "remove", "truncate", "garble"]))
    if kind == "truncate" or not lines:
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    index = draw(st.integers(0, len(lines) - 1))
    if kind == "replace":
        lines[index] = draw(st.text(max_size=30))
    elif kind == "remove":
        del lines[index]
    else:
        lines[index] = lines[index].replace("\t", " ", 1)[::-1]
    return "\n".join(lines) + "\n"
