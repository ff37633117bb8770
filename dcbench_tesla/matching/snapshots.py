"""Parameter snapshots for the reverse sweep of the exact engine, under three memory policies.

The ``adjoint`` engine needs ``theta_0 .. theta_{T-1}`` again, in reverse order. A snapshot store
receives each ``theta_i`` once during the forward loop (:meth:`SnapshotStore.keep`, in increasing
``i``) and hands them back during the reverse sweep (:meth:`SnapshotStore.get`, in decreasing
``i``). Byte counts are deterministic (they depend on ``T``, ``P`` and the dtype only):

- :class:`DeviceSnapshots` (``device``): every snapshot on the problem's device, ``T`` vectors.
- :class:`HostSnapshots` (``host``): one CPU buffer of ``T`` rows (pinned on CUDA, filled by
  asynchronous copies on a side stream); on CUDA the sweep gets each snapshot copied back one step
  ahead, so the device holds at most two of them (one on a CPU device).
- :class:`CheckpointSnapshots` (``checkpoint``): every ``k``-th snapshot (``k = ceil(sqrt(T))``)
  and the last segment are kept; the reverse sweep rebuilds each earlier segment from its
  checkpoint with first-order steps (the same computation as the forward loop, so the same
  values), holding about ``2 sqrt(T)`` vectors at its peak.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CheckpointSnapshots", "DeviceSnapshots", "HostSnapshots", "SnapshotStore", "make_snapshot_store"]

#: ``advance(theta_i, i) -> theta_{i+1}``: one first-order inner step (used to rebuild snapshots).
Advance = Callable[[Tensor, int], Tensor]


class SnapshotStore:
    """Keeps ``theta_0 .. theta_{T-1}`` for the reverse sweep; subclasses decide where.

    Args:
        like: A parameter vector with the dtype and device of the snapshots.
        num_steps: ``T``.

    Attributes:
        policy: The policy name.
        recomputed_steps: First-order steps run again to rebuild snapshots.
    """

    policy = ""

    def __init__(self, like: Tensor, num_steps: int) -> None:
        self.num_steps = num_steps
        self.vector_bytes = like.numel() * like.element_size()
        self.recomputed_steps = 0
        self._device_vectors = 0
        self._peak_device_vectors = 0

    def keep(self, step: int, theta: Tensor) -> None:
        """Receive ``theta_step`` (called for ``step = 0 .. T-1`` in order)."""
        raise NotImplementedError

    def get(self, step: int) -> Tensor:
        """``theta_step`` on the problem's device (called for decreasing ``step``)."""
        raise NotImplementedError

    def _count(self, device_vectors: int) -> None:
        self._device_vectors = device_vectors
        self._peak_device_vectors = max(self._peak_device_vectors, device_vectors)

    @property
    def device_bytes(self) -> int:
        """Peak bytes of snapshots held in device memory."""
        return self._peak_device_vectors * self.vector_bytes

    @property
    def host_bytes(self) -> int:
        """Bytes of snapshots held in host memory."""
        return 0


class DeviceSnapshots(SnapshotStore):
    """Every snapshot on the device (the ``device`` policy)."""

    policy = "device"

    def __init__(self, like: Tensor, num_steps: int) -> None:
        super().__init__(like, num_steps)
        self._kept: list[Tensor] = []

    def keep(self, step: int, theta: Tensor) -> None:  # noqa: D102
        self._kept.append(theta)
        self._count(len(self._kept))

    def get(self, step: int) -> Tensor:  # noqa: D102
        return self._kept[step]


class HostSnapshots(SnapshotStore):
    """Snapshots in one CPU buffer (the ``host`` policy): pinned and copied asynchronously on CUDA.

    On CUDA, :meth:`keep` copies on a side stream (ordered after the computation that produced the
    vector, which is kept alive for the copy with ``record_stream``), and :meth:`get` returns the
    snapshot prefetched during the previous call while it starts copying the next one, so copies
    overlap with the sweep's computation. On the CPU each row is returned as a copy (one vector in
    use at a time), so the graph of a step never holds the whole buffer.
    """

    policy = "host"

    def __init__(self, like: Tensor, num_steps: int) -> None:
        super().__init__(like, num_steps)
        self.device = like.device
        self.cuda = like.is_cuda
        self._buffer = torch.empty((num_steps, like.numel()), dtype=like.dtype, device="cpu", pin_memory=self.cuda)
        self._stream = torch.cuda.Stream(device=like.device) if self.cuda else None
        self._prefetched: dict[int, Tensor] = {}

    @property
    def host_bytes(self) -> int:  # noqa: D102
        return self._buffer.numel() * self._buffer.element_size()

    def keep(self, step: int, theta: Tensor) -> None:  # noqa: D102
        if self._stream is None:
            self._buffer[step].copy_(theta)
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            self._buffer[step].copy_(theta, non_blocking=True)
        theta.record_stream(self._stream)

    def _fetch(self, step: int) -> Tensor:
        assert self._stream is not None
        with torch.cuda.stream(self._stream):
            return self._buffer[step].to(self.device, non_blocking=True)

    def get(self, step: int) -> Tensor:  # noqa: D102
        if self._stream is None:  # a copy: a view would make autograd hold the whole buffer
            self._count(1)
            return self._buffer[step].clone()
        theta = self._prefetched.pop(step, None)
        if theta is None:
            theta = self._fetch(step)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        theta.record_stream(current)
        if step > 0:
            self._prefetched[step - 1] = self._fetch(step - 1)
        self._count(1 + len(self._prefetched))
        return theta


class CheckpointSnapshots(SnapshotStore):
    """Every ``k``-th snapshot and the last segment on the device; the rest rebuilt on demand.

    Args:
        like: A parameter vector with the dtype and device of the snapshots.
        num_steps: ``T``.
        advance: One first-order inner step, ``advance(theta_i, i) -> theta_{i+1}``: the same
            function the forward loop used, so rebuilt snapshots equal the originals.
        interval: ``k``; default ``ceil(sqrt(T))``.
    """

    policy = "checkpoint"

    def __init__(self, like: Tensor, num_steps: int, advance: Advance, interval: int | None = None) -> None:
        super().__init__(like, num_steps)
        self.interval = max(1, interval or math.ceil(math.sqrt(num_steps)))
        self.advance = advance
        self._last_segment = ((num_steps - 1) // self.interval) * self.interval
        self._kept: dict[int, Tensor] = {}

    def keep(self, step: int, theta: Tensor) -> None:  # noqa: D102
        if step % self.interval == 0 or step >= self._last_segment:
            self._kept[step] = theta
            self._count(len(self._kept))

    def get(self, step: int) -> Tensor:  # noqa: D102
        if step not in self._kept:
            start = (step // self.interval) * self.interval
            theta = self._kept[start]
            for i in range(start, step):
                theta = self.advance(theta, i)
                self.recomputed_steps += 1
                self._kept[i + 1] = theta
            self._count(len(self._kept))
        theta = self._kept[step]
        # Later steps are done with: drop them (the sweep runs in decreasing order).
        for later in [i for i in self._kept if i > step]:
            del self._kept[later]
        return theta


def make_snapshot_store(policy: str, like: Tensor, num_steps: int, advance: Advance) -> SnapshotStore:
    """The store of ``policy`` (``"device"``, ``"host"`` or ``"checkpoint"``) for ``T = num_steps``."""
    if policy == "device":
        return DeviceSnapshots(like, num_steps)
    if policy == "host":
        return HostSnapshots(like, num_steps)
    if policy == "checkpoint":
        return CheckpointSnapshots(like, num_steps, advance)
    raise ValueError(f"unknown snapshot policy {policy!r}")
