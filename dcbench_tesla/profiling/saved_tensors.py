"""A deterministic meter of the bytes autograd holds in saved tensors.

Device allocators round, cache and fragment, so their peaks move with unrelated allocations. The
memory that distinguishes MTT from TESLA is what autograd saves for the backward pass, and that can
be counted exactly through ``torch.autograd.graph.saved_tensors_hooks``: every tensor an operation
saves passes through the pack hook, and its packed form lives exactly as long as the graph needs it.

Counting rule: bytes are counted per underlying storage, once while any saved reference to it is
alive (keyed by device and storage data pointer, with a reference count). So ``x * x`` counts ``x``
once, views of one buffer count the whole buffer once, and a saved leaf (a parameter, an input)
counts although it would be alive anyway: the meter measures what the graph keeps reachable, not
what it allocates on top. Storage-less tensors (some tensor subclasses) count ``numel * itemsize``
per save. The count is a pure function of the graph, hence identical from run to run and device to
device.
"""

from __future__ import annotations

import weakref
from types import TracebackType

import torch
from torch import Tensor

__all__ = ["SavedTensorMeter"]

_Key = tuple[str, int]


class _Packed:
    """What the graph holds in place of a saved tensor; its finaliser releases the bytes."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class SavedTensorMeter:
    """Context manager counting the bytes of autograd's saved tensors (current and peak).

    Tensors saved while the context is active are counted until the graph releases them, even after
    the context exits (so ``current_bytes`` falls back as late graphs are freed). Hooks do not nest:
    inside a nested meter only the innermost one counts.

    Example:
        >>> with SavedTensorMeter() as meter:
        ...     loss = engine(problem)
        >>> meter.peak_bytes

    Attributes:
        current_bytes: Bytes of saved storages alive now.
        peak_bytes: Largest ``current_bytes`` seen since entry (or the last :meth:`reset_peak`).
        saves: Number of tensors packed (each save counts, whether or not its storage was new).
    """

    def __init__(self) -> None:
        self.current_bytes = 0
        self.peak_bytes = 0
        self.saves = 0
        self._refs: dict[_Key, list[int]] = {}  # key -> [reference count, bytes]
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(exc_type, exc, tb)
        self._hooks = None

    @property
    def peak_mib(self) -> float:
        """``peak_bytes`` in MiB."""
        return self.peak_bytes / 2**20

    def reset_peak(self) -> None:
        """Set ``peak_bytes`` to ``current_bytes``."""
        self.peak_bytes = self.current_bytes

    # -- hooks ----------------------------------------------------------------------------
    def _pack(self, tensor: Tensor) -> _Packed:
        self.saves += 1
        # Hold a detached alias (same storage): holding the tensor itself would make a reference
        # cycle (tensor -> grad_fn -> packed -> tensor) whenever an op saves its own output, and
        # the bytes would then only be released by the cyclic garbage collector.
        packed = _Packed(tensor.detach())
        key, nbytes = _storage_key(tensor, packed)
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = [1, nbytes]
            self._add(nbytes)
        else:
            entry[0] += 1
        weakref.finalize(packed, self._release, key)
        return packed

    @staticmethod
    def _unpack(packed: _Packed) -> Tensor:
        return packed.tensor

    def _add(self, nbytes: int) -> None:
        self.current_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def _release(self, key: _Key) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._refs[key]
            self.current_bytes -= entry[1]


def _storage_key(tensor: Tensor, packed: _Packed) -> tuple[_Key, int]:
    """The key identifying ``tensor``'s storage while it is alive, and that storage's size in bytes."""
    try:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        nbytes = storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return ("object", id(packed)), tensor.numel() * tensor.element_size()
    if ptr == 0:  # empty storages all sit at address 0; count them separately (0 bytes anyway)
        return ("object", id(packed)), nbytes
    return (str(tensor.device), ptr), nbytes
