"""NVML sampling: the GPU's used memory and this process's share of it, peak kept.

``torch.cuda.max_memory_allocated`` sees only tensors of PyTorch's caching allocator. NVML sees
what ``nvidia-smi`` sees: the whole device (CUDA context, cuDNN workspaces, other processes) and
each process's total. :class:`NvmlSampler` polls both from a background thread every few
milliseconds and keeps the peaks. A peak shorter than the interval can be missed, so the NVML peak
is a lower bound of the true one; the allocator's counters are exact for its own allocations.

Without a GPU (or without the NVIDIA driver) ``pynvml.nvmlInit()`` raises ``pynvml.NVMLError``
(``NVMLError_LibraryNotFound``, ``NVMLError_DriverNotLoaded``, ...) at once. The sampler then sets
``available = False`` and ``reason`` to the error's name and text, and every method becomes a
no-op: it never raises. Process memory is matched by ``os.getpid()``; inside a container with its
own PID namespace NVML reports host PIDs, and ``peak_process_mib`` stays None with a reason.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Any

import pynvml

__all__ = ["NvmlSampler", "nvml_error_reason"]

_MIB = 2**20


def nvml_error_reason(exc: BaseException) -> str:
    """``"NVMLError_LibraryNotFound: NVML Shared Library Not Found"`` for an NVML error."""
    return f"{type(exc).__name__}: {exc}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSampler:
    """Polls NVML for device and process memory in a background thread, keeping the peaks.

    Example:
        >>> sampler = NvmlSampler(index=0)
        >>> with sampler:
        ...     run_the_workload()
        >>> sampler.peak_device_mib, sampler.peak_process_mib  # None when NVML is unavailable

    Args:
        index: NVML device index (not necessarily the CUDA index: see ``CUDA_VISIBLE_DEVICES``).
        interval_s: Seconds between samples.
        pid: Process whose GPU memory is tracked (default: this one).

    Attributes:
        available: Whether NVML initialised and the device handle was obtained.
        reason: Why NVML is unavailable (None when available).
        process_reason: Why ``peak_process_mib`` is None although NVML is available.
        device_name: GPU name, driver_version: driver, cuda_driver_version: e.g. ``"12.4"``.
        peak_device_mib: Largest device used memory sampled (MiB), None before a sample.
        peak_process_mib: Largest memory of ``pid`` on the device (MiB), None if never seen.
        start_device_mib: Device used memory at :meth:`start` (MiB).
        samples: Number of samples taken.
    """

    def __init__(self, index: int = 0, interval_s: float = 0.005, pid: int | None = None) -> None:
        self.index = int(index)
        self.interval_s = float(interval_s)
        self.pid = os.getpid() if pid is None else int(pid)
        self.available = False
        self.reason: str | None = None
        self.process_reason: str | None = None
        self.device_name: str | None = None
        self.driver_version: str | None = None
        self.cuda_driver_version: str | None = None
        self.peak_device_mib: float | None = None
        self.peak_process_mib: float | None = None
        self.start_device_mib: float | None = None
        self.samples = 0
        self._handle: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._initialised = False
        self._init()

    # -- set-up -----------------------------------------------------------------------------
    def _init(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = nvml_error_reason(exc)
            return
        except OSError as exc:  # a broken driver install can surface as a loader error
            self.reason = f"{type(exc).__name__}: {exc}"
            return
        self._initialised = True
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.device_name = _text(pynvml.nvmlDeviceGetName(self._handle))
        except pynvml.NVMLError as exc:
            self.reason = f"device {self.index}: {nvml_error_reason(exc)}"
            self.close()
            return
        self.available = True
        try:
            self.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
            version = int(pynvml.nvmlSystemGetCudaDriverVersion())
            self.cuda_driver_version = f"{version // 1000}.{(version % 1000) // 10}"
        except pynvml.NVMLError:
            pass  # versions are informative only

    def info(self) -> dict[str, Any]:
        """Availability, reason, device name and driver/CUDA versions as a JSON-ready dict."""
        return {
            "available": self.available,
            "reason": self.reason,
            "index": self.index,
            "device_name": self.device_name,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
        }

    # -- sampling ---------------------------------------------------------------------------
    def sample(self) -> None:
        """Take one sample now (also called by the background thread); never raises."""
        if not self.available:
            return
        try:
            used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / _MIB
        except pynvml.NVMLError as exc:
            self.process_reason = self.process_reason or f"memory info: {nvml_error_reason(exc)}"
            return
        process = self._process_mib()
        with self._lock:
            self.samples += 1
            self.peak_device_mib = used if self.peak_device_mib is None else max(self.peak_device_mib, used)
            if process is not None:
                current = self.peak_process_mib
                self.peak_process_mib = process if current is None else max(current, process)

    def _process_mib(self) -> float | None:
        try:
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except pynvml.NVMLError as exc:
            self.process_reason = f"process list: {nvml_error_reason(exc)}"
            return None
        for proc in processes:
            if int(proc.pid) == self.pid:
                if proc.usedGpuMemory is None:
                    self.process_reason = "NVML does not report per-process memory on this system"
                    return None
                return proc.usedGpuMemory / _MIB
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> NvmlSampler:
        """Reset the peaks, take a first sample and start the background thread."""
        if not self.available:
            return self
        if self._thread is not None:
            raise RuntimeError("the sampler is already running")
        with self._lock:
            self.peak_device_mib = self.peak_process_mib = None
            self.samples = 0
        self.sample()
        self.start_device_mib = self.peak_device_mib
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dcbench-nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take a last sample (a no-op when not running or unavailable)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()
        if self.peak_process_mib is None and self.process_reason is None:
            self.process_reason = (
                f"pid {self.pid} not in NVML's process list (a container PID namespace hides host PIDs)"
            )

    def close(self) -> None:
        """Stop sampling and release NVML."""
        self.stop()
        if self._initialised:
            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    def __enter__(self) -> NvmlSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
