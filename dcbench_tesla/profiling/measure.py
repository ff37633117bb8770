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
- Both: ``snapshot_mib`` (parameter snapshots the gradient engine keeps outside autograd, from
  ``MatchingGradients.snapshot_bytes``: the adjoint engine's ``(T + 1) P`` floats),
  ``step_time_s`` (mean seconds per measured iteration, CUDA-synchronised on CUDA),
  ``engine_time_s`` (the gradient engine's share: inner steps + gradient pass) and
  ``other_time_s`` (the rest of the step: expert segment, SLA soft labels, optimiser step,
  guards), ``threads`` (``torch.get_num_threads()``).

``measures`` lists the keys a point has and ``missing`` says why the others are absent.

The engine split comes from an :class:`EngineProbe` put in place of the distiller's ``engine``
attribute after ``reset`` (trajectory-matching distillers call ``self.engine(problem)``): it
times each call, synchronising CUDA around it, and reads ``snapshot_bytes`` from the result. The
method's code is untouched and its results are unchanged (the probe returns what the engine does).
A distiller without an ``engine`` attribute gets no split and no snapshot figure.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from dcbench_tesla.data import Dataset
from dcbench_tesla.profiling.nvml import NvmlSampler
from dcbench_tesla.profiling.saved_tensors import SavedTensorMeter

__all__ = ["EngineProbe", "install_engine_probe", "measure_point", "nvml_index", "peak_rss_mib"]

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


class EngineProbe:
    """Wraps a gradient engine: times each call and records the engine's parameter snapshots.

    Args:
        engine: The engine (``engine(problem) -> MatchingGradients``).
        sync: Called before and after the engine (``torch.cuda.synchronize`` on CUDA) so the time
            covers the kernels the engine launched.
    """

    def __init__(self, engine: Callable[[Any], Any], sync: Callable[[], None]) -> None:
        self.engine = engine
        self.sync = sync
        self.exact = getattr(engine, "exact", None)
        self.constant_memory = getattr(engine, "constant_memory", None)
        self.clear()

    def clear(self) -> None:
        """Forget the calls seen so far."""
        self.seconds = 0.0
        self.calls = 0
        self.snapshot_bytes = 0

    def __call__(self, problem: Any) -> Any:
        """Run the engine on ``problem`` and return its result unchanged."""
        self.sync()
        start = time.perf_counter()
        out = self.engine(problem)
        self.sync()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.snapshot_bytes = max(self.snapshot_bytes, int(getattr(out, "snapshot_bytes", 0) or 0))
        return out


def install_engine_probe(distiller: Any, sync: Callable[[], None]) -> EngineProbe | None:
    """Put an :class:`EngineProbe` in place of the (unwrapped) distiller's ``engine``; None if it has none."""
    target = getattr(distiller, "unwrapped", distiller)
    engine = getattr(target, "engine", None)
    if engine is None or not callable(engine):
        return None
    if isinstance(engine, EngineProbe):
        return engine
    probe = EngineProbe(engine, sync)
    target.engine = probe
    return probe


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
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    result: dict[str, Any] = {"threads": torch.get_num_threads(), "measures": [], "missing": [], "notes": []}
    missing: list[str] = result["missing"]
    reset_info = distiller.reset(dataset, ipc, seed)
    result["num_params"] = reset_info.get("num_params")
    result["num_images"] = reset_info.get("num_images")
    probe = install_engine_probe(distiller, sync)
    for _ in range(warmup):
        distiller.step()
    if probe is not None:
        probe.clear()
    if before_measure is not None:
        before_measure()

    sampler: NvmlSampler | None = None
    meter: SavedTensorMeter | None = None
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        sampler = NvmlSampler(nvml_index(device))
        sampler.start()
    else:
        meter = SavedTensorMeter().__enter__()
    result["peak_rss_before_steps_mib"] = peak_rss_mib()
    times: list[float] = []
    try:
        for _ in range(iterations):
            sync()
            start = time.perf_counter()
            distiller.step()
            sync()
            times.append(time.perf_counter() - start)
    finally:
        if sampler is not None:
            sampler.stop()
        if meter is not None:
            meter.__exit__(None, None, None)

    result["step_times_s"] = times
    result["step_time_s"] = sum(times) / len(times)
    result["total_time_s"] = sum(times)
    if probe is not None and probe.calls:
        result["engine_time_s"] = probe.seconds / probe.calls
        result["other_time_s"] = result["step_time_s"] - result["engine_time_s"]
        result["snapshot_mib"] = probe.snapshot_bytes / _MIB
    else:
        missing.append("engine_time_s/other_time_s/snapshot_mib: the distiller has no gradient engine attribute")

    if cuda:
        result["peak_alloc_mib"] = torch.cuda.max_memory_allocated(device) / _MIB
        result["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / _MIB
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
        sampler.close()
        try:
            with SavedTensorMeter() as extra:  # one more iteration, untimed, for the device-free count
                distiller.step()
            result["peak_saved_tensors_mib"] = extra.peak_mib
        except Exception as exc:  # the timed measures above stand on their own
            missing.append(f"peak_saved_tensors_mib: the extra metered iteration failed ({type(exc).__name__}: {exc})")
        missing.append("peak_rss_mib: host memory is not the GPU peak (not recorded on CUDA)")
    else:
        assert meter is not None
        result["peak_saved_tensors_mib"] = meter.peak_mib
        result["peak_rss_mib"] = peak_rss_mib()
        missing.append("peak_alloc_mib/peak_reserved_mib: CPU point (the CPU allocator's peak is not exposed by torch)")
        missing.append("peak_device_mib/peak_process_mib: CPU point (NVML reads GPU memory)")
        result["notes"].append("CPU step times include the saved-tensor meter's hooks (a Python call per saved tensor)")
    if "snapshot_mib" in result and "peak_saved_tensors_mib" in result:
        result["peak_saved_plus_snapshots_mib"] = result["peak_saved_tensors_mib"] + result["snapshot_mib"]
    result["measures"] = [key for key in MEASURE_KEYS if result.get(key) is not None]
    return result


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
    "total_time_s",
    "engine_time_s",
    "other_time_s",
)
