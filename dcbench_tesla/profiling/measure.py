"""One profile point: reset a distiller, warm up, then measure memory and time of N iterations.

What is measured depends on the device (every key carries its unit):

- CUDA: ``peak_alloc_mib`` / ``peak_reserved_mib`` (``torch.cuda.max_memory_allocated`` /
  ``max_memory_reserved`` after ``reset_peak_memory_stats`` just before the measured iterations),
  ``peak_device_mib`` / ``peak_process_mib`` (NVML, sampled by :class:`NvmlSampler`), and
  ``peak_saved_tensors_mib`` from ONE extra iteration run after the timed ones under the
  saved-tensor meter (its Python hooks would otherwise slow the timed iterations).
- CPU: ``peak_saved_tensors_mib`` (:class:`SavedTensorMeter` around the measured iterations) and
  ``peak_rss_mib`` (``ru_maxrss`` of the process: run each point in a fresh process). Torch
  exposes no peak counter for its CPU allocator.
- Both: ``snapshot_mib`` (parameter snapshots the method reports with
  ``context.probe.record("snapshot_bytes", n)``: the adjoint engine's ``(T + 1) P`` floats),
  ``step_time_s`` (mean seconds per measured iteration, CUDA-synchronised on CUDA),
  ``engine_time_s`` (the share of the method's ``"engine"`` phase: inner steps + gradient pass) and
  ``other_time_s`` (the rest of the step: expert segment, soft labels, optimiser step, guards),
  ``threads`` (``torch.get_num_threads()``).

``measures`` lists the keys a point has and ``missing`` says why the others are absent.

The distiller is driven by the one episode loop (:func:`~dcbench_tesla.run.loop.run_episode`)
through the :class:`MeasureSteps` wrapper, and its phases are timed by the :class:`TimingProbe`
it reports to (``RunContext.probe``); the method's code and results are unchanged.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from dcbench_tesla.data import Dataset
from dcbench_tesla.distiller import Distiller, Probe
from dcbench_tesla.profiling.nvml import NvmlSampler
from dcbench_tesla.profiling.saved_tensors import SavedTensorMeter
from dcbench_tesla.run.loop import run_episode
from dcbench_tesla.wrappers import Wrapper, unwrap

__all__ = ["MeasureSteps", "TimingProbe", "measure_point", "nvml_index", "peak_rss_mib"]

_MIB = 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def nvml_index(device: torch.device) -> int:
    """NVML index of a CUDA device, honouring ``CUDA_VISIBLE_DEVICES`` where torch can map it."""
    try:
        return int(torch.cuda._get_nvml_device_index(device))  # private helper of torch.cuda
    except Exception:  # older torch, or an unparsable CUDA_VISIBLE_DEVICES: assume the identity
        return device.index if device.index is not None else torch.cuda.current_device()


class TimingProbe(Probe):
    """Times the phases a method reports (CUDA-synchronised) and keeps the largest recorded figures.

    Args:
        sync: Called around each phase (``torch.cuda.synchronize`` on CUDA) so a phase's time
            covers the kernels it launched.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.clear()

    def clear(self) -> None:
        """Forget what was seen so far."""
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.figures: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name``."""
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.calls[name] = self.calls.get(name, 0) + 1

    def record(self, name: str, value: float) -> None:
        """Keep the largest value reported as ``name``."""
        self.figures[name] = max(self.figures.get(name, 0.0), float(value))


class MeasureSteps(Wrapper):
    """Leaves ``warmup`` steps alone, then measures ``iterations`` steps (and one extra metered step on CUDA).

    Args:
        env: The distiller.
        warmup: Steps excluded from the measure.
        iterations: Measured steps.
        device: The distiller's device.
        before_measure: Called just before the first measured step (a test hook).
    """

    def __init__(
        self,
        env: Distiller,
        warmup: int,
        iterations: int,
        device: torch.device,
        before_measure: Callable[[], None] | None = None,
    ) -> None:  # noqa: D107
        super().__init__(env)
        self.warmup, self.measured, self.device = warmup, iterations, device
        self.cuda = device.type == "cuda"
        self.before_measure = before_measure
        self.times: list[float] = []
        self.sampler: NvmlSampler | None = None
        self.meter: SavedTensorMeter | None = None
        self.extra_saved_mib: float | None = None
        self.extra_error: str | None = None
        self.rss_before_mib: float | None = None
        self.reset_info: dict[str, Any] = {}
        self._measuring = False
        self.probe = TimingProbe(self.sync)
        unwrap(env).context.probe = self.probe

    @property
    def total_steps(self) -> int:
        """Steps the episode needs: warm-up, measured, and the extra metered step on CUDA."""
        return self.warmup + self.measured + (1 if self.cuda else 0)

    def sync(self) -> None:
        """Wait for the device's queued kernels (CUDA only)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Reset, keeping the reset info (parameter and image counts)."""
        self.reset_info = self.env.reset(dataset, ipc, seed)
        return self.reset_info

    def _start(self) -> None:
        if self.before_measure is not None:
            self.before_measure()
        self.probe.clear()
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.sampler = NvmlSampler(nvml_index(self.device))
            self.sampler.start()
        else:
            self.meter = SavedTensorMeter().__enter__()
        self.rss_before_mib = peak_rss_mib()
        self._measuring = True

    def stop(self) -> None:
        """End the measurement (idempotent; also called on errors)."""
        if not self._measuring:
            return
        self._measuring = False
        if self.sampler is not None:
            self.sampler.stop()
        if self.meter is not None:
            self.meter.__exit__(None, None, None)

    def _extra_metered_step(self) -> dict[str, Any]:
        try:
            with SavedTensorMeter() as extra:  # one more iteration, untimed, for the device-free count
                info = self.env.step()
            self.extra_saved_mib = extra.peak_mib
            return info
        except Exception as exc:  # the timed measures stand on their own
            self.extra_error = f"{type(exc).__name__}: {exc}"
            unwrap(self.env).iteration += 1  # keep the loop's count; nothing else depends on this step
            return {}

    def step(self) -> dict[str, Any]:
        """Run one step, measuring it when it is one of the measured ones."""
        index = self.iteration
        if index < self.warmup:
            return self.env.step()
        if index >= self.warmup + self.measured:
            return self._extra_metered_step()
        if index == self.warmup:
            self._start()
        self.sync()
        start = time.perf_counter()
        info = self.env.step()
        self.sync()
        self.times.append(time.perf_counter() - start)
        if index == self.warmup + self.measured - 1:
            self.stop()
        return info


def measure_point(
    distiller: Any,
    dataset: Dataset,
    *,
    ipc: int,
    seed: int = 0,
    iterations: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    before_measure: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Reset ``distiller``, run ``warmup`` iterations, then measure ``iterations`` more.

    Args:
        distiller: A distiller built for ``device`` (not yet reset).
        dataset: Training data for ``reset``.
        ipc: Images per class.
        seed: Seed of ``reset``.
        iterations: Measured iterations (at least 1).
        warmup: Iterations run first and excluded (allocator warm-up, cuDNN autotuning).
        device: The distiller's device.
        before_measure: Called after warm-up, just before the measured iterations (a test hook).

    Returns:
        A dict of unit-suffixed measures plus ``measures``, ``missing``, ``notes``, ``num_params``,
        ``num_images``, ``step_times_s`` and (CUDA) ``nvml``.
    """
    if iterations < 1 or warmup < 0:
        raise ValueError("iterations must be >= 1 and warmup >= 0")
    env = MeasureSteps(distiller, warmup, iterations, torch.device(device), before_measure)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "measures": [], "missing": [], "notes": []}
    try:
        run_episode(env, dataset, ipc, seed, env.total_steps, method=getattr(distiller.spec, "id", "method"))
    finally:
        env.stop()
        if env.sampler is not None:
            env.sampler.close()
    result["num_params"] = env.reset_info.get("num_params")
    result["num_images"] = env.reset_info.get("num_images")
    _timing(result, env)
    if env.cuda:
        _cuda_memory(result, env)
    else:
        _cpu_memory(result, env)
    if "snapshot_mib" in result and "peak_saved_tensors_mib" in result:
        result["peak_saved_plus_snapshots_mib"] = result["peak_saved_tensors_mib"] + result["snapshot_mib"]
    result["measures"] = [key for key in MEASURE_KEYS if result.get(key) is not None]
    return result


def _timing(result: dict[str, Any], env: MeasureSteps) -> None:
    times = env.times
    result["step_times_s"] = times
    result["step_time_s"] = sum(times) / len(times)
    result["step_time_min_s"], result["step_time_max_s"] = min(times), max(times)
    result["total_time_s"] = sum(times)
    result["peak_rss_before_steps_mib"] = env.rss_before_mib
    probe = env.probe
    if probe.calls.get("engine"):
        result["engine_time_s"] = probe.seconds["engine"] / probe.calls["engine"]
        result["other_time_s"] = result["step_time_s"] - result["engine_time_s"]
        result["snapshot_mib"] = probe.figures.get("snapshot_bytes", 0.0) / _MIB
    else:
        result["missing"].append("engine_time_s/other_time_s/snapshot_mib: the method reports no 'engine' phase")


def _cuda_memory(result: dict[str, Any], env: MeasureSteps) -> None:
    missing = result["missing"]
    result["peak_alloc_mib"] = torch.cuda.max_memory_allocated(env.device) / _MIB
    result["peak_reserved_mib"] = torch.cuda.max_memory_reserved(env.device) / _MIB
    sampler = env.sampler
    assert sampler is not None
    result["nvml"] = sampler.info()
    if sampler.available:
        result["peak_device_mib"] = sampler.peak_device_mib
        result["device_used_before_mib"] = sampler.start_device_mib
        result["nvml_samples"] = sampler.samples
        if sampler.peak_process_mib is not None:
            result["peak_process_mib"] = sampler.peak_process_mib
        else:
            missing.append(f"peak_process_mib: {sampler.process_reason}")
        result["notes"].append("step times include the NVML sampler thread (one poll every 5 ms)")
    else:
        missing.append(f"nvml: {sampler.reason}")
    if env.extra_saved_mib is not None:
        result["peak_saved_tensors_mib"] = env.extra_saved_mib
    else:
        missing.append(f"peak_saved_tensors_mib: the extra metered iteration failed ({env.extra_error})")
    missing.append("peak_rss_mib: host memory is not the GPU peak (not recorded on CUDA)")


def _cpu_memory(result: dict[str, Any], env: MeasureSteps) -> None:
    assert env.meter is not None
    result["peak_saved_tensors_mib"] = env.meter.peak_mib
    result["peak_rss_mib"] = peak_rss_mib()
    result["missing"].append(
        "peak_alloc_mib/peak_reserved_mib: CPU point (the CPU allocator's peak is not exposed by torch)"
    )
    result["missing"].append("peak_device_mib/peak_process_mib: CPU point (NVML reads GPU memory)")
    result["notes"].append("CPU step times include the saved-tensor meter's hooks (a Python call per saved tensor)")


#: Scalar measures a point can have, in the order of the CSV columns.
MEASURE_KEYS = (
    "peak_alloc_mib",
    "peak_reserved_mib",
    "peak_device_mib",
    "peak_process_mib",
    "device_used_before_mib",
    "peak_saved_tensors_mib",
    "snapshot_mib",
    "peak_saved_plus_snapshots_mib",
    "peak_rss_mib",
    "peak_rss_before_steps_mib",
    "step_time_s",
    "step_time_min_s",
    "step_time_max_s",
    "total_time_s",
    "engine_time_s",
    "other_time_s",
)
