"""A disk that fills up: a write failing with ENOSPC leaves the previous checkpoint and result intact
and ends in exit 2 with the path and the bytes needed; the same command continues once there is room."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import safetensors.torch
from cli_checks import assert_user_error
from hardening_tools import CHEAP_EVAL, invoke

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import atomic_path, write_text_atomic
from dcbench_tesla.state_io import load_state
from dcbench_tesla.synthetic import SyntheticSet


class FakeFullDisk:
    """A fake (test only): writes of ``name`` fail with ENOSPC (after a partial write) from the ``after``-th on.

    It replaces the two writers every file goes through: safetensors' ``save_file`` and ``Path.write_bytes``.
    """

    def __init__(self, name: str, after: int = 1) -> None:
        self.name, self.after, self.calls = name, after, 0

    def full(self, filename) -> bool:
        if not Path(filename).name.startswith(f".{self.name}."):
            return False
        self.calls += 1
        return self.calls >= self.after

    def fail(self, filename) -> None:
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 64)  # what fitted before the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    def install(self, monkeypatch) -> FakeFullDisk:
        real_save, real_write = safetensors.torch.save_file, Path.write_bytes

        def save_file(tensors, filename, metadata=None):
            return self.fail(filename) if self.full(filename) else real_save(tensors, filename, metadata=metadata)

        def write_bytes(path, data):
            return self.fail(path) if self.full(path) else real_write(path, data)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
        monkeypatch.setattr(Path, "write_bytes", write_bytes)
        return self


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


def test_a_full_disk_at_the_result_keeps_the_set_and_the_same_command_completes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["run", "--method", "random", "--dataset", "digits", "--ipc", "1", *CHEAP_EVAL, "--output", out]
    with monkeypatch.context() as patch:
        FakeFullDisk("result.json").install(patch)
        assert_user_error(invoke(args), "result.json", "no space left on the device", "bytes) needed")
    assert (out / "synthetic_set.safetensors").is_file() and not (out / "result.json").exists()
    assert not temporaries(tmp_path)
    assert invoke(args).exit_code == 0  # no checkpoint, no result: the same command starts it again


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
