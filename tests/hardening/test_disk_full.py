"""A disk that fills up: a write failing with ENOSPC leaves the previous checkpoint and result intact
and ends in exit 2 with the path and the bytes needed; the same command continues once there is room."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cli_checks import assert_user_error
from hardening_tools import CHEAP_EVAL, FakeFullDisk, invoke

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import atomic_path, write_text_atomic
from dcbench_tesla.state_io import load_state
from dcbench_tesla.synthetic import SyntheticSet


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


DM = ["run", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--iterations", "6", "--set", "batch_real=8",
      "--checkpoint-every", "1", "--no-baseline", *CHEAP_EVAL]  # fmt: skip


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resume_completes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        FakeFullDisk("checkpoint.safetensors", after=4).install(patch)
        result = invoke([*DM, "--output", out])
    assert_user_error(
        result, f"cannot write {str(out / 'checkpoint.safetensors')!r}: no space left on the device", "bytes) needed"
    )
    assert "free there" in result.output and "the previous checkpoint.safetensors, if any, is intact" in result.output
    assert load_state(out / "checkpoint.safetensors")["iteration"] == 3
    assert not temporaries(tmp_path) and not (out / "result.json").exists()

    resumed = invoke([*DM, "--output", out, "--resume"])  # room again: the same command plus --resume
    assert resumed.exit_code == 0, resumed.output
    reference = invoke([*DM, "--output", tmp_path / "reference"])
    assert reference.exit_code == 0, reference.output
    a = SyntheticSet.load(out / "synthetic_set.safetensors")
    b = SyntheticSet.load(tmp_path / "reference" / "synthetic_set.safetensors")
    assert a.images.equal(b.images) and a.iteration == b.iteration == 6


def test_a_full_disk_at_the_result_keeps_the_set_and_resume_completes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["run", "--method", "random", "--dataset", "digits", "--ipc", "1", *CHEAP_EVAL, "--output", out]
    with monkeypatch.context() as patch:
        FakeFullDisk("result.json").install(patch)
        assert_user_error(invoke(args), "result.json", "no space left on the device", "bytes) needed")
    assert (out / "synthetic_set.safetensors").is_file() and not (out / "result.json").exists()
    assert not temporaries(tmp_path)
    assert_user_error(invoke(args), "checkpoint of an unfinished run", "--resume")
    resumed = invoke([*args, "--resume"])  # the finished episode's checkpoint: only the evaluation again
    assert resumed.exit_code == 0, resumed.output
    assert (out / "result.json").is_file() and not (out / "checkpoint.safetensors").exists()


def test_a_full_disk_keeps_the_previous_results_of_a_bench(tmp_path, monkeypatch):
    args = [
        "bench",
        "--methods",
        "random",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        *CHEAP_EVAL,
        "--output",
        tmp_path / "b",
    ]
    assert invoke(args).exit_code == 0
    before = (tmp_path / "b" / "results.csv").read_bytes()
    with monkeypatch.context() as patch:
        FakeFullDisk("results.csv").install(patch)
        assert_user_error(invoke(args), "results.csv", "no space left on the device")
    assert (tmp_path / "b" / "results.csv").read_bytes() == before
    assert not temporaries(tmp_path)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_write_failures_a_user_can_fix_name_the_path_and_size(tmp_path, code, reason):
    (tmp_path / "f.txt").write_text("previous")
    with pytest.raises(UserError, match=f"{reason} \\(12 B \\(12 bytes\\) needed"):
        with atomic_path(tmp_path / "f.txt", size_bytes=12) as tmp:
            tmp.write_text("half")
            raise OSError(code, os.strerror(code))
    assert (tmp_path / "f.txt").read_text() == "previous" and not temporaries(tmp_path)


def test_other_write_failures_are_not_disguised(tmp_path):
    with pytest.raises(OSError, match="Input/output error"):
        with atomic_path(tmp_path / "f.txt"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert not temporaries(tmp_path)


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / f".f.txt.{2**22 + 12345}.abcd.tmp"  # a pid above Linux's pid_max: no such process
    alive = tmp_path / f".f.txt.{os.getpid()}.abcd.tmp"  # a writer of this process, still working
    dead.write_text("half")
    alive.write_text("half")
    write_text_atomic(tmp_path / "f.txt", "new")
    assert not dead.exists() and alive.exists() and (tmp_path / "f.txt").read_text() == "new"
