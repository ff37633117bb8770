"""The CLI end to end on digits, and every bad input ending in exit code 2 without a traceback."""

import json
import pickle

import pytest
from cli_checks import assert_user_error
from click.testing import CliRunner

from dcbench_tesla.cli import main
from dcbench_tesla.run.rundir import RESULT_SCHEMA

FAST = ["--num-eval", "2", "--eval-epochs", "3", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_ls_lists_methods_datasets_models():
    result = invoke("ls")
    assert result.exit_code == 0, result.output
    for name in (
        "random",
        "digits",
        "cifar10",
        "cifar100",
        "tinyimagenet",
        "imagenet64",
        "convnet",
        "resnet18",
        "vit",
    ):
        assert name in result.output
    assert invoke("ls", "datasets").output.startswith("datasets:")


def test_run_random_writes_a_run_directory(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--method", "random", "--dataset", "digits", "--ipc", "2", "--real", "--output", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "±" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "result.json",
        "synthetic_set.safetensors",
    ]
    record = json.loads((out / "result.json").read_text())
    assert set(record) == set(RESULT_SCHEMA)
    accs = record["evaluation"]["by_model"]["convnet"]["accuracies"]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    assert record["baseline"] is None  # the random method is its own baseline ...
    scores = record["scores"]["convnet"]
    assert record["baseline_same_rule"]["label_rule"] == "hard" and scores["ior"] == 0.0  # ... so IOR is 0
    assert scores["hlr"] == pytest.approx(scores["acc_real_hard"] - scores["acc_syn"]) and 0 <= scores["ddrs"] <= 1
    assert record["provenance"]["threads"] >= 1
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["ipc"] == 2


def test_eval_of_a_saved_set_reproduces_the_run(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", "--method", "random", "--ipc", "2", "--real", "--output", out, *FAST).exit_code == 0
    run_acc = json.loads((out / "result.json").read_text())["evaluation"]["by_model"]["convnet"]["accuracies"]
    result = invoke("eval", out / "synthetic_set.safetensors", *FAST[:-1], "--output", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["evaluation"]["by_model"]["convnet"]["accuracies"] == pytest.approx(run_acc)
    run_scores = json.loads((out / "result.json").read_text())["scores"]
    assert evaluated["scores"]["convnet"] == pytest.approx(run_scores["convnet"])  # the whole pool: from the cache
    assert "DDRS" in result.output and "whole dataset" in result.output
    assert evaluated["baseline"] is None  # the baseline method's own set


def test_eval_saves_by_default_beside_the_file_with_the_baseline_and_never_overwrites(tmp_path):
    out = tmp_path / "run"
    dm = ["run", "--method", "dm", "--ipc", "1", "--iterations", "1", "--set", "batch_real=8", "--output", out]
    assert invoke(*dm, *FAST).exit_code == 0
    set_file = out / "synthetic_set.safetensors"
    result = invoke("eval", set_file, *FAST)
    assert result.exit_code == 0, result.output
    saved = out / "synthetic_set.eval-short-seed0.json"
    record = json.loads(saved.read_text())
    assert record["baseline"]["by_model"]["convnet"]["lr"] == pytest.approx(0.01)
    assert "dm on digits, IPC 1" in result.output and "random real subset" in result.output
    assert_user_error(invoke("eval", set_file, *FAST), "exists", "--overwrite")
    assert invoke("eval", set_file, *FAST, "--overwrite").exit_code == 0


def test_existing_run_directory_is_refused_then_overwritten_on_request(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", "--method", "random", "--ipc", "1", "--output", out, *FAST).exit_code == 0
    before = (out / "result.json").read_text()
    assert_user_error(
        invoke("run", "--method", "random", "--ipc", "1", "--output", out, *FAST),
        "already holds files",
        "--overwrite",
    )
    assert (out / "result.json").read_text() == before
    assert invoke("run", "--method", "random", "--ipc", "1", "--output", out, "--overwrite", *FAST).exit_code == 0


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--method", "tesal"], ["unknown method 'tesal'", "Available:"]),
        (
            ["--method", "random", "--dataset", "cifar11"],
            ["unknown dataset 'cifar11'", "Did you mean 'cifar10'"],
        ),
        (
            ["--method", "random", "--eval-models", "convnett"],
            ["unknown model 'convnett'", "Did you mean 'convnet'"],
        ),
        (["--method", "random", "--ipc", "0"], ["'--ipc'", "must be at least 1", "got 0"]),
        (["--method", "random", "--ipc", "-3"], ["'--ipc'", "must be at least 1", "got -3"]),
        (["--method", "random", "--ipc", "100000"], ["--ipc must be between 1 and", "smallest class"]),
        (["--method", "random", "--set", "lr=1"], ["unknown option(s) 'lr'"]),
        (["--method", "random", "--set", "iterations"], ["KEY=VALUE"]),
        (["--method", "random", "--iterations", "x"], ["is not a valid integer"]),
        (["--method", "random", "--num-eval", "0"], ["'--num-eval'", "must be at least 1"]),
        (["--method", "random", "--threads", "0"], ["'--threads'", "must be at least 1"]),
        (["--method", "random", "--device", "cuda:0"], []),
        (["--method", "random", "--protocol", "papr"], ["unknown evaluation protocol 'papr'"]),
    ],
)
def test_bad_run_inputs_end_with_exit_code_2_and_write_nothing(tmp_path, args, fragments):
    out = tmp_path / "run"
    result = invoke("run", *FAST, *args, "--output", out)
    if args[-1] == "cuda:0":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present: --device cuda:0 is valid here")
        fragments = ["no CUDA GPU is available"]
    assert_user_error(result, *fragments)
    assert not out.exists()


def test_missing_dataset_files_name_the_path_the_files_and_how_to_get_them(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "run",
        "--method",
        "random",
        "--dataset",
        "cifar10",
        "--data-root",
        tmp_path / "data",
        "--output",
        out,
        *FAST,
    )
    assert_user_error(result, str(tmp_path / "data"), "data_batch_1", "cifar-10-python.tar.gz")
    assert not out.exists()
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*"))


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_user_error(
        invoke("run", "--method", "random", "--ipc", "1", "--output", blocker / "run", *FAST),
        "cannot write to output directory",
    )


def test_config_file_errors(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{")
    assert_user_error(
        invoke("run", "--method", "random", "--config", bad, "--output", tmp_path / "r", *FAST), "malformed"
    )


@pytest.mark.parametrize("kind", ["missing", "pickle", "foreign", "truncated"])
def test_eval_refuses_bad_files(tmp_path, kind):
    path = tmp_path / "set.safetensors"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"images": [1, 2]}))
    elif kind == "foreign":
        import torch
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path))
    elif kind == "truncated":
        path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a"')
    expected = {
        "missing": "does not exist",
        "pickle": "never unpickles",
        "foreign": "not a dcbench synthetic set",
        "truncated": "not a readable synthetic set",
    }[kind]
    assert_user_error(invoke("eval", path, "--output", tmp_path / "out.json"), expected)
    assert not (tmp_path / "out.json").exists()


def test_eval_every_logs_accuracy_at_those_iterations(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--method", "dm", "--ipc", "1", "--iterations", "4", "--set", "batch_real=16"]
    result = invoke(*args, "--eval-every", "2", "--output", out, *FAST)
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    assert [s["iteration"] for s in steps if "val_acc" in s] == [2, 4]  # scored on the validation split
    assert all(0.0 <= s["val_acc"] <= 1.0 for s in steps if "val_acc" in s)
    assert_user_error(invoke(*args, "--eval-every", "-1", "--output", tmp_path / "x", *FAST), "--eval-every")


def test_help_and_ls_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dcbench_tesla.cli import main\n"
        "for args in (['--help'], ['run', '--help'], ['bench', '--help'], ['profile', '--help'], ['ls'],\n"
        "             ['ls', 'cards'], ['ls', 'presets']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
