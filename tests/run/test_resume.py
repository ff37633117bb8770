"""Long runs that survive: SIGKILL + --resume is bitwise identical, SIGTERM saves, NaN stops cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dcbench_tesla.synthetic import SyntheticSet

TINY_TESLA = [
    "run", "--method", "tesla", "--dataset", "digits", "--ipc", "1", "--seed", "3",
    "--set", "num_experts=1", "--set", "expert_train_epochs=3", "--set", "max_start_epoch=2",
    "--set", "expert_epochs=1", "--set", "syn_steps=3", "--set", "lr_img=100",
    "--num-eval", "1", "--eval-epochs", "1", "--no-baseline", "--no-progress", "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def shared_expert_cache(tmp_path_factory):
    """One expert cache for the module: the tiny expert is trained once, not per test."""
    global _CACHE
    _CACHE = str(tmp_path_factory.mktemp("resume-cache"))
    return _CACHE


_CACHE = None


def dcbench(*args, wait=True):
    command = [sys.executable, "-m", "dcbench_tesla", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DCBENCH_CACHE": _CACHE}
    if wait:
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def logged_iterations(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return max((line.get("iteration", 0) for line in lines), default=0)


def wait_for_iteration(proc, run_dir, iteration, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while logged_iterations(run_dir) < iteration:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "run made no progress"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    reference = dcbench(*TINY_TESLA, "--iterations", "12", "--output", tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr

    killed_dir = tmp_path / "killed"
    proc = dcbench(*TINY_TESLA, "--iterations", "12", "--checkpoint-every", "1", "--output", killed_dir, wait=False)
    wait_for_iteration(proc, killed_dir, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "result.json").exists()

    resumed = dcbench(*TINY_TESLA, "--iterations", "12", "--checkpoint-every", "1", "--output", killed_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming tesla from iteration" in resumed.stdout
    a = SyntheticSet.load(tmp_path / "ref" / "synthetic_set.safetensors")
    b = SyntheticSet.load(killed_dir / "synthetic_set.safetensors")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
    assert a.iteration == b.iteration == 12
    steps = [json.loads(x) for x in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in steps if s["event"] == "step"] == list(range(1, 13))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    args = ("--iterations", "100000", "--yes", "--checkpoint-every", "0", "--output", run_dir)
    proc = dcbench(*TINY_TESLA, *args, wait=False)
    wait_for_iteration(proc, run_dir, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "SIGTERM received" in err and "--resume" in err and "Traceback" not in err
    assert (run_dir / "checkpoint.safetensors").exists()


def test_resume_errors(tmp_path):
    nothing = dcbench(*TINY_TESLA, "--output", tmp_path / "empty", "--resume")
    assert nothing.returncode == 2 and "nothing to resume" in nothing.stderr
    both = dcbench(*TINY_TESLA, "--output", tmp_path / "x", "--resume", "--overwrite")
    assert both.returncode == 2 and "contradict" in both.stderr


def test_resume_with_another_seed_is_refused(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dcbench_tesla.cli import main
    from dcbench_tesla.run import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C once distillation has finished: the checkpoint stays

    run_dir = tmp_path / "run"
    monkeypatch.setenv("DCBENCH_CACHE", _CACHE)
    monkeypatch.setattr(runner, "evaluate", interrupted)
    first = CliRunner().invoke(main, [*TINY_TESLA, "--iterations", "2", "--output", str(run_dir)])
    assert first.exit_code == 130, first.output
    assert (run_dir / "checkpoint.safetensors").exists()
    other = [a if a != "3" else "4" for a in TINY_TESLA]
    result = CliRunner().invoke(main, [*other, "--iterations", "2", "--output", str(run_dir), "--resume"])
    assert result.exit_code == 2 and "belongs to another run" in result.output


@pytest.mark.slow
def test_divergence_stops_with_a_message_and_keeps_the_last_good_state(tmp_path):
    run_dir = tmp_path / "run"
    args = [a if a != "lr_img=100" else "lr_img=1e38" for a in TINY_TESLA]
    result = dcbench(*args, "--iterations", "20", "--output", run_dir)
    assert result.returncode == 2, result.stderr
    assert "became NaN or inf at iteration" in result.stderr and "lr_img" in result.stderr
    assert "Traceback" not in result.stderr
    from dcbench_tesla.state_io import load_state

    state = load_state(run_dir / "checkpoint.safetensors")
    assert torch.isfinite(state["distiller"]["images"]).all()
