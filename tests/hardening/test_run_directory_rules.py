"""Who may work in a run directory: one process at a time (a lock with the owner's pid), a dead
owner's lock taken over, and the directories the same command may start again without --overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from cli_checks import assert_user_error
from hardening_tools import CHEAP_EVAL, invoke

from dcbench_tesla.files import process_alive
from dcbench_tesla.run.rundir import RunDir

RANDOM_RUN = ["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--no-baseline", *CHEAP_EVAL]


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not process_alive(proc.pid)
    return proc.pid


def write_lock(run_dir, pid, host=None, age_s=0.0):
    import socket

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / RunDir.LOCK
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "since": "then", "token": "x"}))
    if age_s:
        os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


@pytest.mark.slow
def test_a_second_run_into_the_same_output_is_refused_naming_the_owner(fork_server, tmp_path):
    out = tmp_path / "run"
    long_dm = ["run", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--iterations", "100000", "--set",
               "batch_real=8", "--no-progress", "--yes", "--output", out]  # fmt: skip
    first = fork_server.start(long_dm, tmp_path, {}, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file():  # the first run holds the lock and works
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = fork_server.start([*long_dm, *extra], tmp_path, {}, tmp_path / "second.log")
            assert fork_server.wait(second) == 2
            message = (tmp_path / "second.log").read_text()
            assert f"in use by another dcbench process (pid {first} on" in message, message
            assert message.count("\n") == 1 and "Traceback" not in message
        assert json.loads((out / RunDir.LOCK).read_text())["pid"] == first
    finally:
        fork_server.kill(first)
        assert fork_server.wait(first) < 0
    result = invoke([*RANDOM_RUN, "--output", out, "--overwrite"])  # the dead owner's lock is taken over
    assert result.exit_code == 0, result.output


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    write_lock(out, dead_pid())
    result = invoke([*RANDOM_RUN, "--output", out])
    assert result.exit_code == 0, result.output
    assert (out / "result.json").is_file()


@pytest.mark.parametrize(
    ("lock", "fragment"),
    [
        (lambda out: write_lock(out, os.getppid()), "in use by another dcbench process (pid"),
        (lambda out: write_lock(out, dead_pid(), host="another-machine"), "on another-machine"),
        (lambda out: (out.mkdir(), (out / RunDir.LOCK).write_text("")), "a process that is starting"),
    ],
)
def test_a_live_or_unknowable_owner_refuses(tmp_path, lock, fragment):
    out = tmp_path / "run"
    lock(out)
    before = sorted(p.name for p in out.iterdir())
    assert_user_error(invoke([*RANDOM_RUN, "--output", out, "--overwrite"]), fragment)
    assert sorted(p.name for p in out.iterdir()) == before


def test_an_old_unreadable_lock_is_stale(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RunDir.LOCK).write_text("")
    os.utime(out / RunDir.LOCK, (time.time() - 60, time.time() - 60))
    assert invoke([*RANDOM_RUN, "--output", out]).exit_code == 0


def test_the_same_command_restarts_a_run_killed_before_its_first_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"event": "reset", "iteratio')  # cut by the kill
    (out / f".synthetic_set.safetensors.{dead_pid()}.abc.tmp").write_bytes(b"half")  # a killed write
    write_lock(out, dead_pid())
    result = invoke([*RANDOM_RUN, "--output", out])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".dcbench")) == [
        "config.json",
        "metrics.jsonl",
        "result.json",
        "synthetic_set.safetensors",
    ]


@pytest.mark.parametrize(
    ("present", "fragments"),
    [
        ({"result.json": "{}", "config.json": "{}"}, ["already holds files", "--overwrite"]),
        ({"checkpoint.safetensors": "x", "config.json": "{}"}, ["checkpoint of an unfinished run", "--resume"]),
        ({"config.json": "{}", "notes.txt": "mine"}, ["already holds files", "--overwrite"]),
    ],
)
def test_results_checkpoints_and_foreign_files_still_need_a_flag(tmp_path, present, fragments):
    out = tmp_path / "run"
    out.mkdir()
    for name, text in present.items():
        (out / name).write_text(text)
    assert_user_error(invoke([*RANDOM_RUN, "--output", out]), *fragments)
    assert {p.name: p.read_text() for p in out.iterdir()} == present


class FakePointRunner:
    """A fake (test only) for ``run_point_subprocess``: an ok point with made-up figures, no process."""

    def __init__(self) -> None:
        self.measured = []

    def __call__(self, spec, workdir, timeout_s=None):
        self.measured.append(spec.steps)
        return {**spec.to_dict(), "status": "ok", "error": "", "num_classes": 10, "peak_rss_mib": 1.0, "wall_s": 0.0}


def test_a_profile_sweep_resumes_with_the_same_command(tmp_path, monkeypatch):
    fake = FakePointRunner()
    monkeypatch.setattr("dcbench_tesla.profiling.sweep.run_point_subprocess", fake)
    args = ["profile", "--methods", "tesla", "--dataset", "digits", "--batch-syn", "10", "--ipc", "1", "--iterations",
            "1", "--warmup", "0", "--device", "cpu", "--output", tmp_path / "p"]  # fmt: skip
    assert invoke([*args, "--steps", "1,2"]).exit_code == 0
    (tmp_path / "p" / "points" / "digits-tesla-b10-ipc1-s2-cpu.json").unlink()  # as if killed before point 2
    again = invoke([*args, "--steps", "1,2"])
    assert again.exit_code == 0, again.output
    assert "resuming the interrupted sweep" in again.output and "measured earlier, read back" in again.output
    assert fake.measured == [1, 2, 2]
    assert_user_error(invoke([*args, "--steps", "1,3"]), "holds a sweep of other settings", "--overwrite")
    assert invoke([*args, "--steps", "1,3", "--overwrite"]).exit_code == 0
    assert fake.measured == [1, 2, 2, 1, 3]
