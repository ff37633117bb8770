"""What the hardening tests share: invoking the CLI, checking the outcome property, tree snapshots.

The property every attack must satisfy: exit code 0, or exit code 2 with exactly one ``Error: ...``
line (the last line on stderr) and no traceback; and no file outside the output directory changed.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import safetensors.torch
from attack_tally import record
from click.testing import CliRunner, Result

from dcbench_tesla.cli import main

#: Evaluation flags that keep a run that passes validation cheap.
CHEAP_EVAL = ["--num-eval", "1", "--eval-epochs", "1", "--no-progress"]


def invoke(args: Iterable[object], cwd: Path | None = None) -> Result:
    """``dcbench ARGS`` in this process (CliRunner), optionally from ``cwd``."""
    argv = [str(a) for a in args]
    if cwd is None:
        return CliRunner().invoke(main, argv)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, argv)
    finally:
        os.chdir(old)


def check_outcome(result: Result, surface: str) -> None:
    """Assert the property (exit 0, or exit 2 with one ``Error:`` line and no traceback) and tally it."""
    text = result.output + (result.stderr or "")
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {text[-3000:]}\n{result.exception!r}"
    assert "Traceback" not in text, text[-3000:]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 2:
        lines = [line for line in (result.stderr or "").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("Error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    record(surface, f"exit {result.exit_code}")


def snapshot(root: Path, skip: Iterable[Path] = ()) -> dict[str, tuple[int, str]]:
    """``{relative path: (size, sha1)}`` of every file under ``root`` outside the ``skip`` folders."""
    skipped = [Path(s).resolve() for s in skip]
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(Path(root).rglob("*")):
        resolved = path.resolve()
        if any(resolved == s or s in resolved.parents for s in skipped) or not path.is_file():
            continue
        data = path.read_bytes()
        found[str(path.relative_to(root))] = (len(data), hashlib.sha1(data).hexdigest())
    return found


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
