"""The first hour of a new user: Ctrl-C in expert training resumes, no silent jump in cost,
the random baseline uses the protocol's lr, and a cardless IPC derives from the nearest card."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import assert_user_error
from click.testing import CliRunner

from dcbench_tesla.cli import main
from dcbench_tesla.run.request import RunRequest, resolve

FAST = ["--num-eval", "1", "--eval-epochs", "1", "--no-progress", "--threads", "1"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_cardless_ipc_derives_from_the_nearest_card_not_from_paper_scale_defaults():
    run = resolve(RunRequest(method="tesla", dataset="digits", ipc=50))
    assert run.card.ipc == 10 and run.layers["config_card"]["derived"] is True
    digits_card = run.spec.card_for("digits", 10).options
    for key in ("num_experts", "expert_train_epochs", "expert_batch_size", "iterations", "syn_steps"):
        assert getattr(run.options, key) == digits_card[key]
    assert resolve(RunRequest(method="tesla", dataset="digits", ipc=3)).card.ipc == 1  # 3 is nearer 1 than 10


def test_a_run_far_above_the_cards_refuses_without_yes_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "--method", "tesla", "--ipc", "50", "--output", tmp_path / "run", *FAST)
    assert_user_error(result, "far more than the config cards of digits", "distillation", "pass --yes")
    assert not (tmp_path / "run").exists()
    assert not list(Path(os.environ["DCBENCH_CACHE"]).rglob("expert_*.safetensors"))


def test_experts_default_to_what_the_cards_read_and_far_more_asks_for_yes(digits, tmp_path):
    from dcbench_tesla.experts.command import card_expert_config, experts_command

    config, where = card_expert_config(digits)
    card = resolve(RunRequest(method="mtt", dataset="digits", ipc=1)).options
    assert (config.num_experts, config.epochs, config.batch_size, config.lr) == (
        card.num_experts,
        card.expert_train_epochs,
        card.expert_batch_size,
        card.lr_teacher,
    )
    assert "digits IPC 1" in where
    with pytest.raises(Exception, match="pass --yes"):
        experts_command(dataset="digits", num_experts=100, epochs=50, output=tmp_path / "e", notice=lambda _m: None)
    assert not (tmp_path / "e").exists()


def test_the_random_baseline_is_trained_with_the_protocols_lr(tmp_path):
    out = tmp_path / "run"
    tiny = ["--set", "num_experts=1", "--set", "expert_train_epochs=2", "--set", "max_start_epoch=1"]
    tiny += ["--set", "expert_epochs=1", "--set", "syn_steps=2", "--iterations", "2"]
    result = invoke("run", "--method", "tesla", "--ipc", "1", *tiny, "--output", out, *FAST)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "result.json").read_text())
    learned = record["evaluation"]["by_model"]["convnet"]["lr"]
    assert learned != pytest.approx(0.01)  # the set's learned step size
    assert record["baseline"]["by_model"]["convnet"]["lr"] == pytest.approx(0.01)
    assert "random real subset" in result.output and "(lr 0.01)" in result.output
    assert "time: load" in result.output and "estimated time:" in result.output  # header and phase summary
    assert not (out / "checkpoint.safetensors").exists()  # a finished run keeps its result and set


def test_the_estimate_times_each_evaluation_architecture_at_its_own_speed(digits, tmp_path):
    from dcbench_tesla.run import estimate

    models = ["convnet", "resnet18"]
    run = resolve(
        RunRequest(method="dm", dataset="digits", ipc=1, eval_models=models, num_eval_models=2, eval_epochs=3)
    )
    work = estimate.evaluation_work(run, digits, real=False)
    per_model = 2 * 3 * 10 * 3  # K models x epochs x images, for the set and the random subset under two rules
    assert work == {"evaluation": {"convnet": per_model, "resnet18": per_model}}
    speeds = {"convnet": 1e-3, "resnet18": 1e-2}  # stand-in calibrations: a ResNet step at ten ConvNet steps
    seconds = estimate.phase_seconds({"distillation": 500.0}, work, speeds, "convnet")
    assert seconds == {"distillation": 0.5, "evaluation": pytest.approx(per_model * 1e-3 + per_model * 1e-2)}
    assert set(estimate.calibrate(["convnet", *models], digits, run.device)) == {"convnet", "resnet18"}

    result = invoke(
        "run", "--method", "random", "--ipc", "1", "--eval-models", ",".join(models), "--output", tmp_path / "r", *FAST
    )
    assert result.exit_code == 0, result.output
    assert "ms per image-step: convnet " in result.output and ", resnet18 " in result.output  # each one calibrated


def _default_ctrl_c():
    """In the child: Python's default SIGINT handler (an xdist worker ignores SIGINT, and a child inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _experts_done(cache):
    return len(list(cache.rglob("expert_*.safetensors")))


@pytest.mark.slow
def test_ctrl_c_during_expert_training_then_resume_continues_the_experts_and_the_run(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = [sys.executable, "-m", "dcbench_tesla", "run", "--method", "tesla", "--ipc", "1", "--output", str(out)]
    args += ["--set", "num_experts=3", "--set", "expert_train_epochs=3", "--set", "max_start_epoch=1"]
    args += ["--set", "expert_epochs=1", "--set", "syn_steps=2", "--iterations", "2", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DCBENCH_CACHE": str(cache)}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_ctrl_c
    )
    deadline = time.monotonic() + 240
    while _experts_done(cache) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no expert was trained"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted during set-up" in stderr and "--resume" in stderr and "Traceback" not in stderr
    finished = _experts_done(cache)
    assert 1 <= finished < 3 and not (out / "result.json").exists()

    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"training {3 - finished} more expert trajectories" in resumed.stdout
    assert (out / "result.json").is_file() and _experts_done(cache) == 3
