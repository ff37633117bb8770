"""The profiler: NVML fallback, measurement branches, the subprocess sweep, OOM handling, reports, CLI."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pandas as pd
import pynvml
import pytest
import torch
from click.testing import CliRunner

from dcbench_tesla.cli.profile import parse_steps, plot_command, profile_command
from dcbench_tesla.profiling import measure as measure_module
from dcbench_tesla.profiling.nvml import NvmlSampler
from dcbench_tesla.profiling.point import FAKE_OOM_ENV, PointSpec, is_out_of_memory
from dcbench_tesla.profiling.report import load_csv
from dcbench_tesla.profiling.standins import RandomExpertEndpoints, random_dataset, student_init
from dcbench_tesla.profiling.sweep import CSV_COLUMNS, run_sweep

METHODS = ("mtt", "tesla", "tesla-exact")
TINY = ["--dataset", "digits", "--batch-syn", "10", "--ipc", "2", "--iterations", "1", "--warmup", "0"]


# -- NVML ---------------------------------------------------------------------------------------
def test_nvml_falls_back_cleanly_without_a_gpu():
    sampler = NvmlSampler()
    if sampler.available:
        sampler.close()
        pytest.skip("NVML works on this machine (a GPU is present)")
    assert sampler.reason and sampler.reason.startswith("NVMLError")
    with sampler:  # start/stop are no-ops
        pass
    sampler.sample()
    sampler.close()
    assert sampler.peak_device_mib is None and sampler.peak_process_mib is None
    assert sampler.info()["available"] is False


def test_nvml_init_error_is_caught(monkeypatch):
    def refuse() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", refuse)
    sampler = NvmlSampler()
    assert not sampler.available
    assert sampler.reason.startswith("NVMLError_DriverNotLoaded")
    sampler.start()
    sampler.stop()
    sampler.close()


def test_nvml_sampler_keeps_peaks_with_a_fake_nvml(monkeypatch):
    """The sampling logic, driven by a FAKE NVML (no GPU needed)."""
    used = iter([1000, 3000, 2000] + [1500] * 10_000)
    fake = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetHandleByIndex": lambda index: f"handle{index}",
        "nvmlDeviceGetName": lambda handle: b"Fake GPU",
        "nvmlSystemGetDriverVersion": lambda: "550.54",
        "nvmlSystemGetCudaDriverVersion": lambda: 12040,
        "nvmlDeviceGetMemoryInfo": lambda handle: SimpleNamespace(used=next(used) * 2**20),
        "nvmlDeviceGetComputeRunningProcesses": lambda handle: [
            SimpleNamespace(pid=1, usedGpuMemory=9 * 2**30),
            SimpleNamespace(pid=os.getpid(), usedGpuMemory=700 * 2**20),
        ],
    }
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    sampler = NvmlSampler(index=0, interval_s=0.001)
    assert sampler.available and sampler.device_name == "Fake GPU"
    assert sampler.cuda_driver_version == "12.4" and sampler.driver_version == "550.54"
    with sampler:
        sampler.sample()
        sampler.sample()
    sampler.close()
    assert sampler.peak_device_mib == 3000 and sampler.start_device_mib == 1000
    assert sampler.peak_process_mib == 700 and sampler.samples >= 3


# -- measurement, in process ----------------------------------------------------------------------
def _tiny_distiller(method: str, steps: int = 2):
    from dcbench_tesla import RunContext, make

    distiller = make(method, RunContext(), syn_steps=steps, batch_syn=10, iterations=3)
    opts = distiller.options
    distiller.context.experts = RandomExpertEndpoints(
        student_init("convnet", "digits", 0), epochs=opts.max_start_epoch + opts.expert_epochs
    )
    return distiller, random_dataset("digits", ipc=2)


def test_random_expert_endpoints_are_lazy_and_deterministic():
    base = torch.zeros(5) + 1.0
    experts = RandomExpertEndpoints(base, epochs=3, num_experts=2, seed=7)
    first = experts.trajectory(1)
    assert first.shape == (4, 5) and first.dtype == torch.float32
    assert experts.trajectory(1) is first  # cached
    assert torch.equal(RandomExpertEndpoints(base, epochs=3, num_experts=2, seed=7).trajectory(1), first)
    assert torch.equal(first[0], base) and not torch.equal(first[3], base)
    with pytest.raises(IndexError):
        experts.trajectory(2)


def test_measure_point_cpu_reports_measures_and_reasons():
    distiller, dataset = _tiny_distiller("tesla-exact")
    result = measure_module.measure_point(distiller, dataset, ipc=2, iterations=1, warmup=1)
    assert result["peak_saved_tensors_mib"] > 0 and result["peak_rss_mib"] > 0
    assert result["snapshot_mib"] == pytest.approx(3 * result["num_params"] * 4 / 2**20)  # (T + 1) P floats
    assert result["engine_time_s"] <= result["step_time_s"]
    assert {"peak_saved_tensors_mib", "snapshot_mib", "peak_rss_mib", "step_time_s"} <= set(result["measures"])
    assert any("not exposed by torch" in m for m in result["missing"])
    assert "peak_alloc_mib" not in result


def test_measure_point_cuda_branch_with_faked_counters(monkeypatch):
    """The CUDA branch's bookkeeping, with torch.cuda's counters FAKED (the model runs on CPU)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 300 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 400 * 2**20)
    monkeypatch.setattr(measure_module, "nvml_index", lambda device: 0)
    distiller, dataset = _tiny_distiller("tesla")
    result = measure_module.measure_point(distiller, dataset, ipc=2, iterations=2, warmup=0, device="cuda")
    assert result["peak_alloc_mib"] == 300 and result["peak_reserved_mib"] == 400
    assert calls.count("reset") == 1 and calls.count("sync") >= 4
    assert result["peak_saved_tensors_mib"] > 0  # the extra, untimed metered iteration
    assert "peak_rss_mib" not in result and len(result["step_times_s"]) == 2
    if not result["nvml"]["available"]:
        assert any(m.startswith("nvml: NVMLError") for m in result["missing"])


def test_out_of_memory_classification():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


# -- the sweep, through the CLI -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A CPU sweep of all three methods at 1 and 2 steps on the digits shape (one process each)."""
    output = tmp_path_factory.mktemp("profile") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(FAKE_OOM_ENV, raising=False)
        result = CliRunner().invoke(
            profile_command,
            [*TINY, "--steps", "1,2", "--device", "cpu", "--threads", "1", "--output", str(output)],
        )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return output


@pytest.mark.slow
def test_sweep_writes_csv_markdown_and_figures(tiny_sweep):
    for name in ("profile.csv", "profile.md", "provenance.json", "figure2_digits.png", "figure3.png"):
        assert (tiny_sweep / name).stat().st_size > 0, name
    frame = load_csv(tiny_sweep / "profile.csv")
    assert list(frame.columns) == list(CSV_COLUMNS)
    assert len(frame) == 6 and set(frame["status"]) == {"ok"}
    pairs = sorted(zip(frame["method"], frame["steps"], strict=True))
    assert pairs == sorted((m, s) for m in METHODS for s in (1, 2))
    markdown = (tiny_sweep / "profile.md").read_text()
    assert "random stand-ins" in markdown and "Table 4" in markdown and "Table 5" in markdown
    assert "NVML:" in markdown and "Threads" in markdown


@pytest.mark.slow
def test_sweep_memory_shows_linear_vs_constant(tiny_sweep):
    frame = load_csv(tiny_sweep / "profile.csv").set_index(["method", "steps"])
    saved = frame["peak_saved_tensors_mib"]
    assert saved["mtt", 2] > 1.7 * saved["mtt", 1]  # one more graph: nearly twice the saved tensors
    assert saved["tesla", 2] == pytest.approx(saved["tesla", 1], rel=0.01)  # DSA families differ by < 1%
    assert saved["tesla-exact", 2] == pytest.approx(saved["tesla-exact", 1], rel=0.01)
    snapshots = frame["snapshot_mib"]
    assert snapshots["tesla-exact", 2] == pytest.approx(3 / 2 * snapshots["tesla-exact", 1])  # (T + 1) P
    assert snapshots["mtt", 2] == 0 and snapshots["tesla", 2] == 0
    assert (frame["threads"] == 1).all()


@pytest.mark.slow
def test_plot_redraws_from_the_csv(tiny_sweep, tmp_path):
    for name in ("figure2_digits.png", "figure3.png", "profile.md"):
        (tiny_sweep / name).unlink()
    result = CliRunner().invoke(plot_command, [str(tiny_sweep)])
    assert result.exit_code == 0, result.output
    assert (tiny_sweep / "figure2_digits.png").exists() and (tiny_sweep / "profile.md").exists()
    elsewhere = tmp_path / "redrawn"
    result = CliRunner().invoke(plot_command, ["--csv", str(tiny_sweep / "profile.csv"), "--output", str(elsewhere)])
    assert result.exit_code == 0, result.output
    assert (elsewhere / "figure3.png").exists() and "Table 4" in (elsewhere / "profile.md").read_text()


@pytest.mark.slow
def test_fake_oom_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv(FAKE_OOM_ENV, "1")
    points = [
        PointSpec("mtt", "digits", steps=2, batch_syn=10, ipc=2, iterations=1, warmup=0, threads=1),
        PointSpec("tesla", "digits", steps=1, batch_syn=10, ipc=2, iterations=1, warmup=0, threads=1),
    ]
    frame = run_sweep(points, tmp_path / "out", echo=lambda _line: None)
    assert list(frame["status"]) == ["oom", "ok"]
    assert "FAKE out of memory" in frame["error"].iloc[0]
    assert frame["image_shape"].iloc[0] == "1x8x8"  # failed points still say what they were
    assert pd.isna(frame["peak_saved_tensors_mib"].iloc[0]) and frame["peak_saved_tensors_mib"].iloc[1] > 0
    markdown = (tmp_path / "out" / "profile.md").read_text()
    assert "OOM" in markdown and (tmp_path / "out" / "figure2_digits.png").exists()


# -- CLI input checks -------------------------------------------------------------------------------
def test_parse_steps():
    assert parse_steps("1,10:30:10") == [1, 10, 20, 30]
    assert parse_steps("4, 2,2") == [2, 4]
    assert parse_steps("3:5") == [3, 4, 5]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "mttt"], "mtt"),
        (["--methods", "dm"], "syn_steps"),
        (["--dataset", "cifar1000"], "cifar100"),
        (["--steps", "0,1"], "positive"),
        (["--steps", "a"], "--steps"),
        (["--steps", "5:1"], "start <= stop"),
        (["--batch-syn", "500"], "larger than the synthetic set"),
        (["--iterations", "0"], "--iterations"),
        (["--dataset", "digits", "--datasets", "digits"], "not both"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_profile_rejects_bad_input_with_exit_code_2(tmp_path, args, message):
    base = ["--dataset", "digits", "--ipc", "2", "--batch-syn", "10", "--device", "cpu"]
    if "--dataset" in args or "--datasets" in args:
        base = base[2:]
    result = CliRunner().invoke(profile_command, [*base, *args, "--output", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_profile_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(profile_command, [*TINY, "--steps", "1", "--device", "cpu", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "--overwrite" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_profile_cuda_without_cuda_is_a_user_error(tmp_path):
    result = CliRunner().invoke(profile_command, [*TINY, "--device", "cuda", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--device cpu" in result.output


def test_plot_without_a_csv_is_a_user_error(tmp_path):
    result = CliRunner().invoke(plot_command, [str(tmp_path)])
    assert result.exit_code == 2 and "no profile CSV" in result.output
