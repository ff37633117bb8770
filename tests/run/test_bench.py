"""`dcbench bench`: cells, resuming after a kill, the manifest check, tables and presets."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from cli_checks import assert_user_error
from click.testing import CliRunner

from dcbench_tesla.cli.bench import bench_command as bench
from dcbench_tesla.cli.bench import request_from_flags
from dcbench_tesla.data import DATASETS
from dcbench_tesla.errors import Interrupted
from dcbench_tesla.method import METHODS, ConfigCard, MethodSpec, register_method
from dcbench_tesla.models import MODELS
from dcbench_tesla.run import runner
from dcbench_tesla.run.bench import BenchRequest, plan, run_bench
from dcbench_tesla.run.presets import load_preset, preset_names
from dcbench_tesla.run.rundir import RunDir

STUB = "bench-stub"  # random real images under another id, so the runner evaluates a baseline beside it
TINY = {"num_eval_models": 1, "eval_epochs": 2, "progress": False, "threads": 1}
TINY_FLAGS = ["--num-eval", "1", "--eval-epochs", "2", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def stub_method():
    if STUB not in METHODS:
        register_method(
            MethodSpec(
                id=STUB,
                entry_point="dcbench_tesla_methods.random_subset_distiller:RandomSubset",
                description="test stub",
                reference_accuracy={"digits": {1: 50.0}},
            )
        )
    yield STUB
    METHODS.unregister(STUB)  # keep the registry as other test modules expect it


@pytest.fixture(scope="module")
def finished_bench(tmp_path_factory, stub_method):
    out = tmp_path_factory.mktemp("bench") / "b"
    frame = run_bench(["random", STUB], "digits", [1, 2], ["convnet", "convnet4"], out, whole_dataset=True, **TINY)
    return out, frame


def test_bench_writes_tidy_results_and_table1(finished_bench):
    out, frame = finished_bench
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == [f"{STUB}-ipc1", f"{STUB}-ipc2", "random-ipc1", "random-ipc2", "whole-dataset"]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == len(frame) == 2 * 2 * 2 + 2  # methods x ipcs x models + whole dataset x models
    assert set(results.columns) >= {
        "dataset",
        "ipc",
        "method",
        "eval_model",
        "mean_pct",
        "std_pct",
        "n_models",
        "baseline_mean_pct",
        "reference_pct",
        "run_dir",
    }
    stub1 = results[(results.method == STUB) & (results.ipc == 1) & (results.eval_model == "convnet")].iloc[0]
    assert stub1.run_dir == f"cells/{STUB}-ipc1" and stub1.n_models == 1
    assert 0 <= stub1.mean_pct <= 100 and not pd.isna(stub1.baseline_mean_pct)
    assert stub1.reference_pct == 50.0  # from the spec, on the Table-1 architecture only
    assert results[(results.method == "random")].baseline_mean_pct.isna().all()

    table1 = pd.read_csv(out / "table1.csv", dtype=str)
    assert list(table1.columns) == ["Dataset", "IPC", "random", STUB, "whole dataset"]
    assert list(table1.IPC) == ["1", "2"]
    assert all("±" in v for v in table1[["random", STUB, "whole dataset"]].to_numpy().ravel())

    md = (out / "table1.md").read_text()
    head = md.splitlines()[:8]
    for key in ("- command:", "- versions:", "torch", "- device:", "- threads: 1"):
        assert any(key in line for line in head), head
    assert "](cells/random-ipc1/)" in md and f"](cells/{STUB}-ipc2/)" in md and "](cells/whole-dataset/)" in md
    assert "| digits | 1 |" in md and "| digits | 2 |" in md
    assert "papers' numbers" in md and "50.0" in md
    manifest = json.loads((out / "bench.json").read_text())
    assert manifest["request"]["ipcs"] == [1, 2] and len(manifest["cells"]) == 5


def test_table2_rows_are_method_ipc_and_columns_architectures(finished_bench):
    out, _ = finished_bench
    table2 = pd.read_csv(out / "table2.csv", dtype=str, keep_default_na=False)
    assert list(table2.columns) == ["Method", "IPC", "convnet", "convnet4"]
    assert list(zip(table2.Method, table2.IPC, strict=True)) == [
        ("random", "1"),
        ("random", "2"),
        (STUB, "1"),
        (STUB, "2"),
        ("whole dataset", "–"),
    ]
    md = (out / "table2.md").read_text()
    assert md.startswith("# Table 2") and "- versions:" in md and f"](cells/{STUB}-ipc1/)" in md


def test_rerun_reads_every_finished_cell_back(finished_bench, monkeypatch):
    out, frame = finished_bench
    monkeypatch.setattr(runner, "run", lambda run: pytest.fail(f"recomputed {run.rundir}"))
    again = run_bench(["random", STUB], "digits", [1, 2], ["convnet", "convnet4"], out, whole_dataset=True, **TINY)
    pd.testing.assert_frame_equal(again, frame)


def test_kill_and_rerun_computes_only_the_missing_cell(tmp_path, monkeypatch):
    out = tmp_path / "b"
    real_run, real_evaluate = runner.run, runner.evaluate
    computed = []

    def counting_run(run):
        computed.append(run.rundir.path.name)
        return real_run(run)

    def evaluate_then_die(*args, **kwargs):
        if len(computed) == 2:  # the second cell is killed after distilling, mid-evaluation
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "run", counting_run)
    monkeypatch.setattr(runner, "evaluate", evaluate_then_die)
    with pytest.raises(Interrupted, match="interrupted during evaluation"):  # Ctrl-C mid-evaluation
        run_bench([STUB], "digits", [1, 2], None, out, **TINY)
    first = out / "cells" / f"{STUB}-ipc1" / "result.json"
    killed = out / "cells" / f"{STUB}-ipc2"
    assert first.is_file() and killed.is_dir() and not (killed / "result.json").exists()
    assert (killed / "synthetic_set.safetensors").exists()  # a half-done cell, as a kill leaves it
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns

    computed.clear()
    monkeypatch.setattr(runner, "evaluate", real_evaluate)
    frame = run_bench([STUB], "digits", [1, 2], None, out, **TINY)
    assert computed == [f"{STUB}-ipc2"]
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    assert (killed / "result.json").is_file() and len(frame) == 2
    table1 = pd.read_csv(out / "table1.csv", dtype=str)
    assert list(table1.columns) == ["Dataset", "IPC", "random", STUB]  # random from the baselines
    assert f"beside {STUB}" in (out / "table1.md").read_text()


def test_an_interrupted_cell_with_a_checkpoint_is_resumed_not_restarted(tmp_path, monkeypatch):
    out = tmp_path / "b"
    run_bench([STUB], "digits", [1], None, out, **TINY)
    cell = out / "cells" / f"{STUB}-ipc1"
    (cell / "result.json").unlink()  # as if killed after its last checkpoint
    (cell / RunDir.CHECKPOINT).write_bytes(b"placeholder: only its presence matters here")
    seen = []

    class Stop(Exception):
        """Raised by the fake run once it has recorded its request."""

    def fake_run(run):
        seen.append((run.request.resume, run.request.overwrite))
        raise Stop

    monkeypatch.setattr(runner, "run", fake_run)
    with pytest.raises(Stop):
        run_bench([STUB], "digits", [1], None, out, **TINY)
    assert seen == [(True, False)]


def test_overwrite_discards_a_cells_checkpoint_instead_of_resuming_it(tmp_path, monkeypatch):
    out = tmp_path / "b"
    run_bench([STUB], "digits", [1], None, out, **TINY)
    cell = out / "cells" / f"{STUB}-ipc1"
    (cell / RunDir.CHECKPOINT).write_bytes(b"placeholder: a checkpoint of what the cell ran before")
    seen = []

    class Stop(Exception):
        """Raised by the fake run once it has recorded its request."""

    def fake_run(run):
        seen.append((run.resumes, sorted(p.name for p in cell.iterdir())))
        raise Stop

    monkeypatch.setattr(runner, "run", fake_run)
    with pytest.raises(Stop):
        run_bench([STUB], "digits", [1], None, out, overwrite=True, **TINY)
    assert seen == [(False, [])]  # nothing of the old cell is left to resume or to read back


KILLABLE = """
import sys
from dcbench_tesla.cli.bench import bench_command
bench_command(sys.argv[1:], prog_name="dcbench bench")
"""


@pytest.mark.slow
def test_a_bench_killed_with_sigkill_resumes_where_it_stopped(tmp_path, capsys):
    out = tmp_path / "b"
    args = "--methods random --ipc 1,2,3 --num-eval 1 --eval-epochs 50 --no-progress --threads 1 --no-real".split()
    args += ["--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first = out / "cells" / "random-ipc1" / "result.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert first.is_file(), proc.stderr.read().decode()
    finished = {p.parent.name: p.read_bytes() for p in (out / "cells").glob("*/result.json")}

    frame = run_bench(["random"], "digits", [1, 2, 3], None, out, **{**TINY, "eval_epochs": 50, "real": False})
    computed = [
        line.split(":")[0].split("] ")[1] for line in capsys.readouterr().out.splitlines() if "computing" in line
    ]
    assert sorted(computed) == sorted({"random-ipc1", "random-ipc2", "random-ipc3"} - set(finished))
    assert {name: (out / "cells" / name / "result.json").read_bytes() for name in finished} == finished
    assert len(frame) == 3


def invoke(*args):
    return CliRunner().invoke(bench, [str(a) for a in args])


def test_a_different_request_into_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "b"
    assert invoke("--methods", "random", "--ipc", "1", "--output", out, *TINY_FLAGS).exit_code == 0
    result = invoke("--methods", "random", "--ipc", "2", "--output", out, *TINY_FLAGS)
    assert_user_error(result, "different request", "ipcs", "--overwrite")
    assert not (out / "cells" / "random-ipc2").exists()
    replaced = invoke("--methods", "random", "--ipc", "2", "--output", out, "--overwrite", *TINY_FLAGS)
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "bench.json").read_text())["request"]["ipcs"] == [2]
    assert (out / "cells" / "random-ipc2" / "result.json").is_file()


def _register_dm_with_card(method_id, lr_img):
    """A DM plugin whose only digits card sets ``lr_img`` (re-registered to stand for an edited card)."""
    if method_id in METHODS:
        METHODS.unregister(method_id)
    register_method(
        MethodSpec(
            id=method_id,
            entry_point="dcbench_tesla_methods.dm_distiller:DistributionMatching",
            description="test stub: DM with an editable card",
            config_cards=(ConfigCard("digits", 1, {"iterations": 1, "batch_real": 16, "lr_img": lr_img}),),
        )
    )


def test_a_cell_computed_with_another_card_is_refused_not_read_back(tmp_path):
    method_id, out = "bench-card-stub", tmp_path / "b"
    try:
        _register_dm_with_card(method_id, 1.0)
        assert invoke("--methods", method_id, "--ipc", "1", "--output", out, *TINY_FLAGS).exit_code == 0
        result_file = out / "cells" / f"{method_id}-ipc1" / "result.json"
        before = result_file.read_bytes()
        _register_dm_with_card(method_id, 2.0)  # the card changed; the bench's flags did not
        result = invoke("--methods", method_id, "--ipc", "1", "--output", out, *TINY_FLAGS)
        assert_user_error(result, "answers another request", "option lr_img: 1.0 there, 2.0 now", "--overwrite")
        assert result_file.read_bytes() == before  # nothing recomputed or rewritten
        replaced = invoke("--methods", method_id, "--ipc", "1", "--output", out, "--overwrite", *TINY_FLAGS)
        assert replaced.exit_code == 0, replaced.output
        assert json.loads(result_file.read_text())["config"]["options"]["lr_img"] == 2.0
    finally:
        METHODS.unregister(method_id)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--methods", "randm", "--ipc", "1"], "Did you mean 'random'"),
        (["--methods", "random", "--ipc", "1,x"], "positive integers"),
        (["--methods", "random", "--ipc", "0"], "positive integers"),
        (["--methods", "random", "--ipc", "1", "--dataset", "cifar11"], "Did you mean 'cifar10'"),
        (["--methods", "random", "--ipc", "1", "--eval-models", "convnt"], "Did you mean 'convnet'"),
        (["--methods", "random", "--ipc", "1", "--protocol", "papr"], "Did you mean 'paper'"),
        (["--methods", "random", "--ipc", "1", "--num-eval", "0"], "--num-eval"),
        (["--methods", "random,mtt", "--ipc", "1", "--set", "lr_imgg=3"], "Did you mean 'lr_img'"),
        (["--methods", "random,mtt", "--ipc", "1", "--set", "mtt.lr_img=abc"], "lr_img"),
        (["--methods", "random", "--ipc", "1", "--set", "dm.lr_img=3"], "not one of the bench's methods"),
        (["--methods", "random", "--ipc", "1", "--exclude", "random-ipc3"], "not a cell"),
        (["--methods", "random", "--ipc", "1", "--threads", "0"], "--threads"),
        (["--preset", "no-such-preset"], "table1-cifar10"),
        (["--ipc", "1"], "--methods is required"),
    ],
)
def test_bad_inputs_exit_2_before_any_cell_runs(tmp_path, args, fragment):
    out = tmp_path / "b"
    assert_user_error(invoke(*args, "--output", out), fragment)
    assert not out.exists()


def test_a_folder_that_is_not_a_bench_is_never_cleared(tmp_path):
    (tmp_path / "results.csv").write_text("mine\n")
    result = invoke("--methods", "random", "--ipc", "1", "--output", tmp_path, "--overwrite", *TINY_FLAGS)
    assert_user_error(result, "not a bench directory")
    assert (tmp_path / "results.csv").read_text() == "mine\n"


def test_options_go_to_the_methods_that_have_them():
    bench_plan = plan(
        BenchRequest(
            methods=["random", "mtt"],
            dataset="cifar10",
            ipcs=[1, 10],
            output=Path("unused"),
            iterations=7,
            options={"lr_img": "5", "mtt.syn_steps": "3"},
            exclude=["random-ipc10"],
        )
    )
    cells = {c.name: c.run.request for c in bench_plan.cells}
    assert sorted(cells) == ["mtt-ipc1", "mtt-ipc10", "random-ipc1"]
    assert cells["random-ipc1"].options == {} and cells["random-ipc1"].iterations is None  # random never optimises
    assert cells["mtt-ipc10"].options == {"lr_img": "5", "syn_steps": "3"} and cells["mtt-ipc10"].iterations == 7
    assert bench_plan.identity["options"]["mtt"] == {"lr_img": 5.0, "syn_steps": 3}
    assert bench_plan.identity["protocol"] == {"name": "paper", "num_models": 5, "epochs": 1000}


@pytest.mark.parametrize("name", ["table1-cifar10", "table1-cifar100", "table1-imagenet64", "table2-cifar10"])
def test_presets_parse_and_name_only_registered_things(name):
    assert name in preset_names()
    preset = load_preset(name)
    assert preset["protocol"] == "paper" and preset["num_eval"] == 5
    for method in preset["methods"]:
        assert method in METHODS
    assert preset["dataset"] in DATASETS
    for model in preset["eval_models"]:
        assert model in MODELS
    kw = {key: None for key in ("methods", "dataset", "ipc", "eval_models", "num_eval", "eval_epochs", "protocol")}
    kw.update(
        {
            "iterations": None,
            "exclude": None,
            "whole_dataset": None,
            "seed": None,
            "data_root": None,
            "device": "cpu",
        }
    )
    kw.update(
        {
            "preset": name,
            "set_pairs": (),
            "output": Path("unused"),
            "overwrite": False,
            "threads": None,
            "no_progress": True,
            "real": None,
            "ddrs_weight": 0.5,
        }
    )
    bench_plan = plan(request_from_flags(kw))  # every cell validates against the methods' config cards
    assert bench_plan.identity["dataset"] == preset["dataset"] and bench_plan.cells
    text = (Path(__import__("dcbench_tesla").__file__).parent / "presets" / f"{name}.toml").read_text()
    assert "ESTIMATES" in text and "GPU-hours" in text


def test_flags_override_the_preset(tmp_path):
    custom = tmp_path / "mine.toml"
    custom.write_text('methods = ["random"]\ndataset = "digits"\nipcs = [1, 2]\nnum_eval = 3\n[set.mtt]\nlr_img = 10\n')
    kw = {
        key: None for key in ("methods", "dataset", "eval_models", "num_eval", "eval_epochs", "protocol", "iterations")
    }
    kw.update(
        {
            "exclude": None,
            "whole_dataset": None,
            "seed": None,
            "data_root": None,
            "device": None,
            "threads": None,
        }
    )
    kw.update(
        {
            "preset": str(custom),
            "ipc": "2",
            "set_pairs": ("mtt.lr_img=20",),
            "output": tmp_path,
            "overwrite": False,
            "no_progress": True,
            "real": False,
            "ddrs_weight": 0.25,
        }
    )
    request = request_from_flags(kw)
    assert request.methods == ["random"] and request.ipcs == [2] and request.num_eval_models == 3
    assert request.options == {"mtt.lr_img": "20"}
    assert request.real is False and request.ddrs_weight == 0.25
    custom.write_text('methods = ["random"]\nipc = [1]\n')
    with pytest.raises(Exception, match="unknown key"):
        load_preset(str(custom))


def test_ranking_orders_the_methods_by_ddrs_beside_their_accuracy(finished_bench):
    out, frame = finished_bench
    ranking = pd.read_csv(out / "ranking.csv", dtype=str)
    assert list(ranking.columns) == [
        "IPC",
        "Rank",
        "Method",
        "DDRS",
        "Accuracy",
        "Hard labels",
        "Random, same rule",
        "Whole dataset",
        "HLR (pts)",
        "IOR (pts)",
    ]
    for _, rows in ranking.groupby("IPC"):
        assert sorted(rows["Method"]) == sorted(["random", STUB])
        assert list(rows["Rank"]) == ["1", "2"] and list(rows["DDRS"].astype(float)) == sorted(
            rows["DDRS"].astype(float), reverse=True
        )
    on_model = frame[(frame["eval_model"] == "convnet") & (frame["method"] != "whole-dataset")]
    assert on_model["ddrs"].between(0, 1).all() and (on_model["ior_pts"] == 0).all()  # random images: IOR 0
    text = (out / "ranking.md").read_text()
    assert "DD-Ranking" in text and "w = 0.5" in text and "](cells/" in text
