"""The Ray executor on a real local Ray instance (2 CPUs, started once for the session).

Through Ray a bench, an expert store, a profile sweep and an evaluation equal the local ones
(bitwise on the CPU at one thread); a task whose worker is killed is retried; a task that always
fails is reported by name and log while the other cells land, and a rerun computes only it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from dcbench_tesla.cli import main
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import evaluate_images, random_real_subset
from dcbench_tesla.executors import Task, TaskFailures, open_executor
from dcbench_tesla.experts import ExpertConfig, ExpertStore, train_experts
from dcbench_tesla.files import read_tensor_file
from dcbench_tesla.profiling.point import execute
from dcbench_tesla.profiling.report import load_csv
from dcbench_tesla.profiling.sweep import CSV_COLUMNS, plan_points, records_to_frame
from dcbench_tesla.protocols import PROTOCOLS
from dcbench_tesla.run import bench as bench_module
from dcbench_tesla.run.bench import run_bench

ray = pytest.importorskip("ray")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the FAKE tasks below travel by value

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray instance, on one worker

TINY = {"num_eval_models": 1, "eval_epochs": 2, "progress": False, "threads": 1}
BENCH_FLAGS = "--methods random,dm --ipc 1 --iterations 2 --num-eval 1 --eval-epochs 2 --threads 1 --no-progress"
REAL_CELL_TASK = bench_module._cell_task


@pytest.fixture(scope="session")
def ray_instance(tmp_path_factory):
    """One real local Ray instance for the session: 2 CPUs, no dashboard, its files under pytest's tmp."""
    temp = tmp_path_factory.mktemp("ray")
    cache = tmp_path_factory.mktemp("ray-workers-cache")
    before = os.environ.get("DCBENCH_CACHE")
    os.environ["DCBENCH_CACHE"] = str(cache)  # what the workers inherit (each task is handed its paths anyway)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("DCBENCH_CACHE", None)
        else:
            os.environ["DCBENCH_CACHE"] = before


def dies_once_at_ipc1(run):
    """FAKE cell task: the IPC-1 cell kills its own worker process on its first attempt; then cells run for real."""
    marker = run.rundir.path.parent.parent / f"{run.rundir.path.name}.killed-once"  # in the bench directory
    if run.request.ipc == 1 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    REAL_CELL_TASK(run)


def fails_at_ipc2(run):
    """FAKE cell task: always raises for the IPC-2 cell; runs every other cell for real."""
    if run.request.ipc == 2:
        raise RuntimeError("FAKE failure of this cell")
    REAL_CELL_TASK(run)


def _cells(bench_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((bench_dir / "cells").glob("*/result.json"))}


def test_a_bench_through_ray_equals_the_local_bench_cell_for_cell(ray_instance, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    for out, extra in ((local, []), (remote, ["--executor", "ray"])):
        result = CliRunner().invoke(main, ["bench", *BENCH_FLAGS.split(), "--output", str(out), *extra])
        assert result.exit_code == 0, result.output + repr(result.exception)
    local_cells, remote_cells = _cells(local), _cells(remote)
    assert sorted(local_cells) == sorted(remote_cells) == ["dm-ipc1", "random-ipc1"]
    for name, record in local_cells.items():
        twin = remote_cells[name]
        for key in ("evaluation", "baseline", "iterations", "config"):
            assert twin[key] == record[key], (name, key)
        ours, _ = read_tensor_file(local / "cells" / name / "synthetic_set.safetensors", "synthetic set")
        theirs, _ = read_tensor_file(remote / "cells" / name / "synthetic_set.safetensors", "synthetic set")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        where = twin["provenance"]["executor"]["task"]
        assert where["kind"] == "ray" and where["threads"] == 1 and where["resources"]["CPU"] == 2
        assert record["provenance"]["executor"]["task"] is None
        assert twin["provenance"]["command"] == record["provenance"]["command"]  # the driver's, not the worker's
        assert "finished" in (remote / "logs" / f"{name}.log").read_text()
    assert not (local / "logs").exists()  # the local executor logs failures only
    pd.testing.assert_frame_equal(pd.read_csv(local / "results.csv"), pd.read_csv(remote / "results.csv"))


def test_experts_through_ray_are_bitwise_the_local_ones(ray_instance, digits, tmp_path):
    config = ExpertConfig(dataset="digits", model="convnet", num_experts=2, epochs=2, batch_size=32)
    quiet = {"progress": False, "notice": lambda _line: None}
    local = train_experts(digits, config, tmp_path / "local", "cpu", **quiet)
    with open_executor("ray", threads=1):
        train_experts(digits, config, tmp_path / "ray", "cpu", **quiet)
    remote = ExpertStore.open(tmp_path / "ray")
    assert remote.num_experts == local.num_experts == 2
    for index in range(2):
        assert torch.equal(remote.trajectory(index), local.trajectory(index))
    assert remote.val_accuracies() == local.val_accuracies()
    assert sorted(p.name for p in (tmp_path / "ray" / "logs").iterdir()) == ["expert_0000.log", "expert_0001.log"]


def test_evaluation_models_through_ray_equal_the_local_ones(ray_instance, digits):
    images, labels = random_real_subset(digits, 2, seed=3)
    protocol = PROTOCOLS.get("short").replace(num_models=2, epochs=2)
    args = (images, labels, digits, ["convnet"], 0.01, protocol, 3, torch.device("cpu"))
    local = evaluate_images(*args)
    with open_executor("ray", threads=1):
        remote = evaluate_images(*args)
    assert remote.to_dict() == local.to_dict()


def test_a_profile_sweep_through_ray_writes_the_same_csv_and_figures(ray_instance, tmp_path):
    flags = "--methods mtt --dataset digits --steps 1,2 --batch-syn 10 --ipc 2 --iterations 1 --warmup 0 --device cpu"
    out = tmp_path / "ray"
    args = ["profile", *flags.split(), "--threads", "1", "--output", str(out), "--executor", "ray"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "figure2_digits.png").stat().st_size > 0 and (out / "figure3.png").stat().st_size > 0
    remote = load_csv(out / "profile.csv")
    assert list(remote.columns) == list(CSV_COLUMNS) and list(remote["steps"]) == [1, 2]
    assert set(remote["status"]) == {"ok"} and sorted(p.name for p in (out / "logs").iterdir()) == [
        f"digits-mtt-b10-ipc2-s{steps}-cpu.log" for steps in (1, 2)
    ]
    # The local reference: what a local sweep's point process computes (execute), here in this process.
    specs = plan_points(
        ["mtt"], ["digits"], [1, 2], batch_syn=10, ipc=2, iterations=1, warmup=0, device="cpu", threads=1
    )
    local = records_to_frame([execute(spec) for spec in specs])
    for column in ("peak_saved_tensors_mib", "snapshot_mib", "num_params", "threads", "engine", "labels"):
        assert list(remote[column]) == list(local[column]), column
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["executor"]["kind"] == "ray" and "--executor ray" in provenance["command"]


def test_a_task_whose_worker_is_killed_is_retried_and_the_bench_completes(ray_instance, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_module, "_cell_task", dies_once_at_ipc1)
    out = tmp_path / "b"
    with open_executor("ray", threads=1):
        frame = run_bench(["random"], "digits", [1, 2], None, out, **TINY)
    assert sorted(_cells(out)) == ["random-ipc1", "random-ipc2"] and len(frame) == 2
    assert (out / "random-ipc1.killed-once").exists()
    for name, attempts in (("random-ipc1", 2), ("random-ipc2", 1)):
        log = (out / "logs" / f"{name}.log").read_text()
        assert log.count("attempt started") == attempts and "finished in" in log.splitlines()[-1], log


def test_a_task_that_always_fails_is_reported_and_the_other_cells_land(ray_instance, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    with monkeypatch.context() as patched:
        patched.setattr(bench_module, "_cell_task", fails_at_ipc2)
        with open_executor("ray", threads=1), pytest.raises(TaskFailures) as failed:
            run_bench(["random"], "digits", [1, 2, 3], None, out, **TINY)
    message = str(failed.value)
    assert message.startswith("1 of 3 cells failed: random-ipc2: RuntimeError: FAKE failure of this cell")
    assert str(out.absolute() / "logs" / "random-ipc2.log") in message and failed.value.exit_code == 1
    assert "RuntimeError: FAKE failure of this cell" in (out / "logs" / "random-ipc2.log").read_text()
    assert sorted(_cells(out)) == ["random-ipc1", "random-ipc3"]
    assert sorted(pd.read_csv(out / "results.csv")["ipc"]) == [1, 3]  # the cells that landed are tabulated
    landed = {
        name: (out / "cells" / name / "result.json").stat().st_mtime_ns for name in ("random-ipc1", "random-ipc3")
    }

    capsys.readouterr()
    with open_executor("ray", threads=1):
        frame = run_bench(["random"], "digits", [1, 2, 3], None, out, **TINY)
    computing = [line for line in capsys.readouterr().out.splitlines() if "computing" in line]
    assert computing == ["[2/3] random-ipc2: computing"]  # its task failed before its run made a directory
    assert {name: (out / "cells" / name / "result.json").stat().st_mtime_ns for name in landed} == landed
    assert len(frame) == 3


def test_a_task_no_node_can_hold_is_refused_before_anything_is_submitted(ray_instance):
    with open_executor("ray", threads=4) as executor, pytest.raises(UserError, match="needing 4 CPU"):
        list(executor.map([Task("too-wide", os.getpid)]))
    with open_executor("ray", threads=1) as executor, pytest.raises(UserError, match="needing 1 CPU and 1 GPU"):
        list(executor.map([Task("needs-a-gpu", os.getpid, device="cuda")]))


def test_tune_trials_run_side_by_side_through_ray(ray_instance, tmp_path):
    out = tmp_path / "study"
    common = [*"--method tesla --ipc 1 --iterations 2 --num-eval 1 --eval-epochs 2 --threads 1".split()]
    common += [*"--set num_experts=1 --set expert_train_epochs=3 --set max_start_epoch=1 --set expert_epochs=1".split()]
    args = ["tune", *common, "--space", "lr_img=1:1000:log", "--trials", "2", "--parallel", "2", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--output", str(out), "--executor", "ray"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    for number in (0, 1):
        assert "finished" in (out / "logs" / f"trial-{number}.log").read_text()  # each ran as a Ray task
    assert (out / "best.toml").is_file()
