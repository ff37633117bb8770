"""Where fan-out work runs: one seam for expert training, bench cells, profile points and evaluation models.

Exactly four places fan out, and each hands its tasks to the command's executor:

- ``experts/training.py`` ``train_experts``: one task per missing expert;
- ``run/bench.py`` ``run_cells``: one task per cell still to compute (a normal run);
- ``profiling/sweep.py`` ``run_sweep``: one task per point (each still measures in a fresh process);
- ``evaluation.py`` ``evaluate_images``: one task per (architecture, model index), or one per
  architecture where its models train together.

Each builds :class:`Task` objects and iterates ``current_executor().map(tasks)``, which yields an
:class:`Outcome` per task as it completes; the caller writes every result atomically as it
arrives, so the resume rules of each command hold whatever runs the tasks.

Executors: ``local`` (the default; this process, one task after another, exactly as before) and
``ray`` (a Ray cluster, :mod:`dcbench_tesla.executors.ray`; an optional extra). The executor is
ambient: the CLI opens one per command with :func:`open_executor`, the fan-out sites read
:func:`current_executor`, and the run loop and the methods never see it. Inside a task the ambient
executor is the default local one, so a task never fans out again.

Same results: every task carries its seed in its arguments and runs with an explicit thread count
(the command's ``--threads``; 1 in a remote worker when none was given), so on the CPU a result
computed through Ray is bitwise the local one.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcbench_tesla.errors import UserError
from dcbench_tesla.executors.base import (
    EVALUATION_GPU_FRACTION,
    Executor,
    Outcome,
    Task,
    TaskFailures,
    device_here,
    task_context,
)
from dcbench_tesla.executors.local import LocalExecutor

#: Executor names ``--executor`` accepts.
EXECUTORS = ("local", "ray")

_DEFAULT = LocalExecutor()
_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("dcbench_executor", default=None)


def current_executor() -> Executor:
    """The executor of the command running now (the local one unless a command opened another)."""
    return _CURRENT.get() or _DEFAULT


@contextlib.contextmanager
def use_executor(executor: Executor) -> Iterator[Executor]:
    """Make ``executor`` the ambient one inside the ``with`` block."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)


def make_executor(
    kind: str = "local", address: str | None = None, *, threads: int | None = None, log_dir: Path | None = None
) -> Executor:
    """The executor ``--executor KIND --ray-address ADDRESS`` asks for.

    Raises:
        UserError: an unknown kind, an address without Ray, or Ray not installed.
    """
    if kind == "local":
        if address is not None:
            raise UserError("--ray-address applies only with --executor ray")
        return LocalExecutor(threads=threads, log_dir=log_dir)
    if kind == "ray":
        from dcbench_tesla.executors.ray import RayExecutor

        return RayExecutor(address=address, threads=threads, log_dir=log_dir)
    raise UserError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")


@contextlib.contextmanager
def open_executor(
    kind: str = "local", address: str | None = None, *, threads: int | None = None, log_dir: Path | None = None
) -> Iterator[Executor]:
    """Make the executor, make it ambient for the block, and release it (a Ray it started) afterwards."""
    executor = make_executor(kind, address, threads=threads, log_dir=log_dir)
    with executor, use_executor(executor):
        yield executor


def executor_record() -> dict[str, Any]:
    """Provenance: the ambient executor, and where this task ran when it runs inside a remote one."""
    return {**current_executor().describe(), "task": task_context()}


__all__ = [
    "EVALUATION_GPU_FRACTION",
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "Outcome",
    "Task",
    "TaskFailures",
    "current_executor",
    "device_here",
    "executor_record",
    "make_executor",
    "open_executor",
    "task_context",
    "use_executor",
]
