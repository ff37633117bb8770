"""`dcbench tune`: a study on validation only, its card, its resumption after a kill, and bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import spy_data
from cli_checks import assert_user_error
from click.testing import CliRunner

from dcbench_tesla.cli import main
from dcbench_tesla.config import read_config_file
from dcbench_tesla.errors import UserError
from dcbench_tesla.run.tune import Dimension, default_space, parse_space
from dcbench_tesla_methods.trajectory_matching_distiller import TrajectoryMatchingConfig

COMMON = [  # the fixed part of the trials below (syn_steps is searched)
    *("--method", "tesla", "--ipc", "1", "--iterations", "2", "--num-eval", "1", "--eval-epochs", "2"),
    *("--set", "num_experts=1", "--set", "expert_train_epochs=3", "--set", "max_start_epoch=1"),
    *("--set", "expert_epochs=1", "--no-progress", "--threads", "1"),
]
FIXED = [*COMMON, "--set", "syn_steps=2"]
SPACE = ["--space", "lr_img=1:1000:log", "--space", "syn_steps=1:3"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def finished_trials(study_dir: Path) -> pd.DataFrame:
    trials = pd.read_csv(study_dir / "trials.csv")
    return trials[trials["state"].isin(["COMPLETE", "PRUNED"])]


@pytest.mark.slow
def test_three_trials_on_validation_write_a_card_that_run_accepts(tmp_path, monkeypatch):
    log: list = []
    spy_data.install(monkeypatch, log)
    out = tmp_path / "study"
    fixed = COMMON
    result = invoke("tune", *fixed, *SPACE, "--trials", "3", "--output", out)
    assert result.exit_code == 0, result.output
    assert spy_data.test_reads(log) == []  # a tune never reads the test split
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "best.toml",
        "history.png",
        "study.db",
        "trials",
        "trials.csv",
        "tune.json",
    ]
    trials = finished_trials(out)
    assert len(trials) == 3 and (trials["val_acc"].between(0, 1) | trials["state"].eq("PRUNED")).all()
    for number in trials["number"]:
        record = json.loads((out / "trials" / str(number) / "result.json").read_text())
        assert record["eval_split"] == "val" and record["evaluation"]["split"] == "val"
        assert record["baseline"] is None and record["real_hard"] is None
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = read_config_file(out / "best.toml")
    manifest = json.loads((out / "tune.json").read_text())
    best = manifest["result"]["best"]
    assert (
        card["lr_img"] == pytest.approx(best["params"]["lr_img"]) and card["syn_steps"] == best["params"]["syn_steps"]
    )
    assert card["num_experts"] == 1 and card["iterations"] == 2 and 1 <= card["syn_steps"] <= 3
    # the card is a config file dcbench run takes, and it gives the best trial's options
    run_out = tmp_path / "from-card"
    ran = invoke("run", "--method", "tesla", "--ipc", "1", "--config", out / "best.toml", "--output", run_out,
                 "--num-eval", "1", "--eval-epochs", "2", "--no-progress", "--no-real")  # fmt: skip
    assert ran.exit_code == 0, ran.output
    options = json.loads((run_out / "config.json").read_text())["options"]
    trial = json.loads((out / "trials" / str(best["number"]) / "config.json").read_text())["options"]
    assert options == trial
    # the same command again: the study holds its 3 trials, nothing is run
    again = invoke("tune", *fixed, *SPACE, "--trials", "3", "--output", out)
    assert again.exit_code == 0 and "[trial" not in again.output
    # another request into the same study directory is refused
    other = invoke("tune", *fixed, "--space", "lr_img=1:10", "--trials", "3", "--output", out)
    assert_user_error(other, "holds a study of another request")


@pytest.mark.slow
def test_a_killed_study_resumes_without_repeating_finished_trials(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dcbench_tesla", "tune", *COMMON, *SPACE, "--trials", "3", "--output", str(out)]
    command[command.index("--iterations") + 1] = "6"
    command += ["--checkpoint-every", "1", "--eval-every", "6"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "trials" / "1" / "checkpoint.safetensors"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # mid-trial 1, after trial 0 finished
    process.wait()
    assert checkpoint.exists(), "trial 1 never checkpointed"
    first = out / "trials" / "0" / "result.json"
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    assert "trials 1 were interrupted" in finished.stdout
    trials = pd.read_csv(out / "trials.csv").set_index("number")
    assert len(finished_trials(out)) == 3
    assert trials.loc[1, "state"] == "FAIL"  # the killed trial ...
    redo = trials[trials["redo_of"] == 1]  # ... ran again with its parameters, resuming its directory
    assert len(redo) == 1 and redo.iloc[0]["param_lr_img"] == trials.loc[1, "param_lr_img"]
    assert redo.iloc[0]["run_dir"] == str(out / "trials" / "1")
    assert "resuming tesla from iteration" in finished.stdout
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime  # trial 0 not redone
    assert list(trials.index) == [0, 1, 2, 3]


def test_space_entries_parse_and_bad_ones_are_refused():
    space = parse_space(["lr_img=10:1000:log", "syn_steps=2:8", "labels=hard,sla"], TrajectoryMatchingConfig, "m")
    assert space["lr_img"] == Dimension("lr_img", "float", low=10.0, high=1000.0, log=True)
    assert space["syn_steps"] == Dimension("syn_steps", "int", low=2, high=8)
    assert space["labels"].choices == ("hard", "sla")
    for entry, fragment in [
        ("lr_img", "KEY=LOW:HIGH"),
        ("nope=1:2", "has no option 'nope'"),
        ("lr_img=5:1", "LOW must be below HIGH"),
        ("lr_img=0:1:log", "LOW > 0"),
        ("syn_steps=1.5:4", "must be ints"),
        ("labels=hard", "KEY=LOW:HIGH"),
        ("labels=sla,sla", "at least two choices"),
        ("labels=1:2", "not a number"),
    ]:
        with pytest.raises(UserError, match=fragment):
            parse_space([entry], TrajectoryMatchingConfig, "m")


def test_default_space_is_around_the_resolved_options_and_leaves_set_keys_alone():
    options = TrajectoryMatchingConfig(lr_img=100.0, syn_steps=20, max_start_epoch=10, expert_epochs=2)
    space = default_space(options, fixed={"lr_lr"})
    assert set(space) == {"lr_img", "lr_teacher", "syn_steps", "max_start_epoch", "expert_epochs"}
    assert (space["lr_img"].low, space["lr_img"].high, space["lr_img"].log) == (10.0, 1000.0, True)
    assert space["lr_teacher"].choices == (0.005, 0.01, 0.02)
    assert (space["max_start_epoch"].low, space["max_start_epoch"].high) == (5, 10)
    assert (space["expert_epochs"].low, space["expert_epochs"].high) == (1, 3)
    with_batch = default_space(TrajectoryMatchingConfig(batch_syn=100), fixed=set())
    assert (with_batch["batch_syn"].low, with_batch["batch_syn"].high) == (50, 200)


def test_bad_tune_inputs_end_in_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "s"
    assert_user_error(invoke("tune", "--method", "random", "--output", out), "nothing to search")
    assert_user_error(invoke("tune", *FIXED, "--space", "syn_steps=1:3", "--output", out), "syn_steps")
    assert_user_error(invoke("tune", *FIXED, "--space", "bogus=1:2", "--output", out), "no option 'bogus'")
    assert_user_error(invoke("tune", *FIXED, *SPACE[:2], "--trials", "0", "--output", out), "--trials")
    assert not out.exists()


def test_tune_without_optuna_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    result = invoke("tune", *FIXED, *SPACE[:2], "--output", tmp_path / "s")
    assert_user_error(result, "pip install 'dcbench-tesla[tune]'")
    assert not (tmp_path / "s").exists()
