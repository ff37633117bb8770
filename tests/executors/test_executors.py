"""The executor seam without Ray: the local executor, failure reports, the CLI flags and a missing Ray."""

from __future__ import annotations

import sys

import pytest
from cli_checks import assert_user_error
from click.testing import CliRunner

from dcbench_tesla.cli import main
from dcbench_tesla.errors import UserError
from dcbench_tesla.executors import (
    LocalExecutor,
    Outcome,
    Task,
    TaskFailures,
    current_executor,
    executor_record,
    make_executor,
    open_executor,
    task_context,
)


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise RuntimeError(message)


def test_local_executor_runs_in_order_and_prints_each_start(capsys):
    tasks = [Task(f"t{i}", square, (i,), message=f"start {i}") for i in range(3)]
    outcomes = list(LocalExecutor().map(tasks))
    assert [o.index for o in outcomes] == [0, 1, 2] and [o.value for o in outcomes] == [0, 1, 4]
    assert all(o.ok and o.attempts == 1 and task_context() is None for o in outcomes)
    assert capsys.readouterr().out.splitlines() == ["start 0", "start 1", "start 2"]


def test_a_local_failure_propagates_at_once_with_its_traceback_in_its_log(tmp_path):
    ran = []
    tasks = [Task("bad", fail, ("FAKE failure",)), Task("never", ran.append, (1,))]
    with pytest.raises(RuntimeError, match="FAKE failure"):
        list(LocalExecutor().map(tasks, log_dir=tmp_path / "logs"))
    assert not ran
    log = (tmp_path / "logs" / "bad.log").read_text()
    assert "Traceback" in log and "RuntimeError: FAKE failure" in log and "FAILED" in log
    assert not (tmp_path / "logs" / "never.log").exists()


def test_task_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        list(LocalExecutor().map([Task("a", square, (1,)), Task("a", square, (2,))]))


def test_failure_reports_name_each_task_and_its_log(tmp_path):
    crash = Outcome(Task("cell-a", square), 0, error=RuntimeError("worker died\nSIGKILL"), attempts=3, log=tmp_path)
    mistake = Outcome(Task("cell-b", square), 1, error=UserError("diverged"))
    report = TaskFailures([crash, mistake], total=4, what="cells")
    assert str(report).startswith("2 of 4 cells failed: cell-a: RuntimeError: SIGKILL after 3 attempts (log: ")
    assert "cell-b: UserError: diverged" in str(report) and report.exit_code == 1
    assert TaskFailures([mistake], total=1).exit_code == 2
    with pytest.raises(UserError, match="diverged"):
        mistake.result()
    with pytest.raises(TaskFailures, match="cell-a"):
        crash.result()


def test_the_ambient_executor_is_local_unless_a_command_opens_another():
    assert isinstance(current_executor(), LocalExecutor)
    with open_executor("local", threads=3) as executor:
        assert current_executor() is executor and executor_record() == {
            "kind": "local",
            "task_threads": 3,
            "task": None,
        }
    assert current_executor() is not executor


def test_make_executor_refuses_an_unknown_kind_and_an_address_without_ray():
    with pytest.raises(UserError, match="local, ray"):
        make_executor("dask")
    with pytest.raises(UserError, match="--ray-address applies only with --executor ray"):
        make_executor("local", "auto")


@pytest.mark.parametrize("command", ["bench", "experts", "profile", "run", "eval"])
def test_every_fanning_out_command_takes_the_executor_flags(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--executor [local|ray]" in result.output and "--ray-address ADDR" in result.output
    assert "DCBENCH_EXECUTOR" in result.output


def test_executor_ray_without_ray_installed_is_exit_2_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # a FAKE absence: importing ray now raises ImportError
    out = tmp_path / "b"
    args = ["bench", "--methods", "random", "--ipc", "1", "--output", str(out), "--executor", "ray"]
    assert_user_error(CliRunner().invoke(main, args), "pip install 'dcbench-tesla[ray]'")
    assert not out.exists()
    monkeypatch.setenv("DCBENCH_EXECUTOR", "ray")
    assert_user_error(CliRunner().invoke(main, args[:-2]), "pip install 'dcbench-tesla[ray]'")


def test_bad_executor_flags_are_exit_2(tmp_path, monkeypatch):
    out = tmp_path / "b"
    base = ["bench", "--methods", "random", "--ipc", "1", "--output", str(out)]
    assert_user_error(CliRunner().invoke(main, [*base, "--ray-address", "auto"]), "--ray-address applies only")
    monkeypatch.setenv("DCBENCH_EXECUTOR", "dask")
    assert_user_error(CliRunner().invoke(main, base), "'dask' is not one of 'local', 'ray'")
    assert not out.exists()
