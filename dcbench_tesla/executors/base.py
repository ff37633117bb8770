"""Tasks, their outcomes, the executor interface and what runs around every task.

A :class:`Task` is a module-level callable and its arguments (everything picklable by reference
or small), the device it computes on and the line to print when it starts. An executor's
:meth:`Executor.map` yields one :class:`Outcome` per task as it completes, so the caller writes
each result atomically as it arrives. :func:`run_task` runs one task where it lands: it sets the
task's torch thread count, names the task in :func:`task_context` and writes the task's log.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from dcbench_tesla.errors import UserError
from dcbench_tesla.progress import progress_bar

#: Share of one GPU an evaluation-model task asks for on CUDA: four small models train side by side.
EVALUATION_GPU_FRACTION = 0.25


@dataclass(frozen=True)
class Task:
    """One unit of fan-out work: ``fn(*args, **kwargs)``.

    Attributes:
        name: Unique within one :meth:`Executor.map`; names the log ``<log_dir>/<name>.log`` and reports.
        fn: A module-level callable (pickled by reference, so a worker imports it).
        args: Positional arguments. A handle from :meth:`Executor.share` is the shared object in the task.
        kwargs: Keyword arguments (the same holds).
        device: The torch device the task computes on; a CUDA device asks the executor for a GPU.
        gpu_fraction: Share of one GPU asked for on CUDA (1.0: a whole GPU of its own).
        threads: Torch intra-op threads of the task [the executor's, see :class:`Executor`].
        message: A line printed when the task starts (locally) or is submitted (to a cluster).
        units: Work units the task counts on the progress bar (epochs, say) [1: the task itself].
        on_unit: Keyword argument of ``fn`` through which it reports one unit done. The local
            executor passes the bar's callback there, so the bar moves (and its ETA holds) within a
            task; a remote executor passes nothing and counts the task's units when it completes.
    """

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    gpu_fraction: float = 1.0
    threads: int | None = None
    message: str = ""
    units: int = 1
    on_unit: str | None = None


@dataclass
class Outcome:
    """What became of one task.

    Attributes:
        task: The task.
        index: Its position in the submitted sequence.
        value: What ``fn`` returned (None on failure).
        error: The exception the task ended with (the task's own one where it could travel back).
        detail: The traceback or the system error, as text.
        attempts: How many times the task was started.
        log: The task's log file, if it has one.
    """

    task: Task
    index: int
    value: Any = None
    error: BaseException | None = None
    detail: str = ""
    attempts: int = 1
    log: Path | None = None

    @property
    def ok(self) -> bool:
        """True when the task returned."""
        return self.error is None

    def summary(self) -> str:
        """``"<name>: <error> after N attempts (log: <path>)"``: one line for a failure report."""
        lines = [line for line in str(self.error).strip().splitlines() if line.strip()]
        message = lines[-1].strip() if lines else ""
        what = f"{type(self.error).__name__}: {message}" if message else type(self.error).__name__
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        where = f" (log: {self.log})" if self.log is not None else ""
        return f"{self.task.name}: {what}{tries}{where}"

    def result(self) -> Any:
        """The value; a failure raises (a task's UserError as itself, anything else as :class:`TaskFailures`)."""
        if self.error is None:
            return self.value
        if isinstance(self.error, UserError):
            raise self.error
        raise TaskFailures([self], total=1, what="task")


class TaskFailures(UserError):
    """Tasks that failed on an executor that goes on past failures; the message names each with its log.

    The exit code is 2 when every failure is a user mistake (a UserError raised by the task), else 1.
    """

    def __init__(self, failures: Sequence[Outcome], total: int, what: str = "tasks", advice: str = "") -> None:
        self.failures = list(failures)
        self.exit_code = 2 if all(isinstance(f.error, UserError) for f in self.failures) else 1
        listing = "; ".join(f.summary() for f in self.failures)
        super().__init__(f"{len(self.failures)} of {total} {what} failed: {listing}{advice}")


@dataclass(frozen=True)
class TaskMeta:
    """How :func:`run_task` runs one task (built by the executor, travels with the task).

    Attributes:
        name: The task's name.
        log: Its log file (None: no log).
        threads: Torch intra-op threads to set (None: leave the process's setting).
        capture: Send the task's stdout and stderr into the log, and log every attempt (remote
            executors); otherwise the log is written only when the task fails.
        origin: The executor's description, recorded in :func:`task_context` (remote executors).
    """

    name: str
    log: str | None
    threads: int | None
    capture: bool
    origin: dict[str, Any] | None = None


_TASK: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("dcbench_task", default=None)


def task_context() -> dict[str, Any] | None:
    """Where the current task runs, inside a remote task (executor, node, pid, threads, GPU ids); else None."""
    return _TASK.get()


def device_here(device: Any) -> Any:
    """``device`` as this process sees it: inside a remote task holding GPUs, ``cuda:0``.

    A cluster scheduler hands a task its GPUs through ``CUDA_VISIBLE_DEVICES``, so the first
    visible GPU is the one it was given, whatever index the driver named.
    """
    import torch

    device = torch.device(device)
    context = _TASK.get()
    if device.type == "cuda" and context is not None and context.get("gpu_ids"):
        return torch.device("cuda", 0)
    return device


def run_task(fn: Callable[..., Any], meta: TaskMeta, /, *args: Any, **kwargs: Any) -> Any:
    """Run one task in this process: its threads, its context, its log. Returns what ``fn`` returns."""
    if meta.threads is not None:
        import torch

        torch.set_num_threads(int(meta.threads))
    token = _TASK.set(_context(meta) if meta.origin is not None else None)
    try:
        with _task_log(meta) as log, _redirected(log):
            return fn(*args, **kwargs)
    finally:
        _TASK.reset(token)


def _context(meta: TaskMeta) -> dict[str, Any]:
    import torch

    gpu_ids: list[Any] = []
    if (meta.origin or {}).get("kind") == "ray":
        import ray

        gpu_ids = list(ray.get_gpu_ids())
    return {
        **(meta.origin or {}),
        "task": meta.name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "gpu_ids": gpu_ids,
    }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _header(meta: TaskMeta) -> str:
    context = _TASK.get() or {}
    threads = context.get("threads", meta.threads)
    where = f"{socket.gethostname()} pid {os.getpid()}, threads {threads}"
    return f"=== task {meta.name}: attempt started {_now()} on {where}\n"


@contextlib.contextmanager
def _task_log(meta: TaskMeta) -> Iterator[TextIO | None]:
    """The task's open log (capturing executors) or None; a failure's traceback is written either way."""
    if meta.log is None:
        yield None
        return
    path = Path(meta.log)
    handle = None
    if meta.capture:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
        handle.write(_header(meta))
    start = time.perf_counter()
    try:
        yield handle
    except BaseException:
        text = traceback.format_exc()
        if handle is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
            handle.write(_header(meta))
        handle.write(f"{text}=== task {meta.name}: FAILED after {time.perf_counter() - start:.1f} s\n")
        raise
    else:
        if handle is not None:
            handle.write(f"=== task {meta.name}: finished in {time.perf_counter() - start:.1f} s\n")
    finally:
        if handle is not None:
            handle.close()


@contextlib.contextmanager
def _redirected(log: TextIO | None) -> Iterator[None]:
    if log is None:
        yield
        return
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


class TaskBar:
    """One progress bar over tasks (in their work units): done of total, with running and failed counts.

    Uses :func:`~dcbench_tesla.progress.progress_bar`: on stderr, and only on a terminal.
    """

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, unit: str) -> None:
        self.bar = progress_bar(total, desc, enabled, unit=unit, initial=initial)
        self.running = self.failed = 0
        self.current = ""
        self._advanced: dict[int, int] = {}

    def started(self, count: int = 1, name: str = "") -> None:
        """``count`` more tasks are running (or queued on a cluster); ``name``: the one running here."""
        self.running += count
        self.current = name
        self._show()

    def advance(self, index: int) -> Callable[[], None]:
        """The callback task ``index`` calls after each of its units."""

        def one_unit() -> None:
            self._advanced[index] = self._advanced.get(index, 0) + 1
            self.bar.update(1)

        return one_unit

    def finished(self, outcome: Outcome) -> None:
        """A task completed (done, or failed): its units not yet counted are counted now."""
        self.running -= 1
        self.failed += not outcome.ok
        self.current = ""
        self._show()
        self.bar.update(max(0, outcome.task.units - self._advanced.pop(outcome.index, 0)))

    def write(self, line: str) -> None:
        """Print ``line`` (to stdout, above the bar when there is one)."""
        tqdm.write(line, file=sys.stdout)

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()

    def _show(self) -> None:
        now = f"{self.current}; " if self.current else ""
        self.bar.set_postfix_str(f"{now}running {self.running}, failed {self.failed}", refresh=False)


class Executor:
    """Runs tasks and yields their outcomes as they complete (see :mod:`dcbench_tesla.executors`).

    Args:
        threads: Torch intra-op threads of every task (the command's ``--threads``); None: the
            local executor leaves them as they are, a remote one uses 1.
        log_dir: Where task logs go when :meth:`map` names no directory (None: no logs).
    """

    kind = "base"
    #: True when tasks run outside this process (their paths must be absolute, their output is captured).
    remote = False

    def __init__(self, threads: int | None = None, log_dir: Path | str | None = None) -> None:
        self.threads = threads
        self.log_dir = Path(log_dir) if log_dir is not None else None

    def share(self, obj: Any, key: Any = None) -> Any:
        """A handle to pass ``obj`` to many tasks without copying it for each (the object itself, locally).

        Args:
            obj: The object.
            key: What identifies it for reuse within this executor's life [``obj`` itself].
        """
        return obj

    def map(
        self,
        tasks: Sequence[Task],
        *,
        desc: str = "tasks",
        progress: bool = False,
        log_dir: Path | str | None = None,
        unit: str = "task",
        initial: int = 0,
    ) -> Iterator[Outcome]:
        """Run ``tasks``; yield each one's :class:`Outcome` as it completes.

        Args:
            tasks: The tasks (names unique).
            desc: Label of the progress bar.
            progress: Show the progress bar (done / running / failed; on a terminal only).
            log_dir: Where ``<name>.log`` of each task goes [the executor's ``log_dir``].
            unit: What the tasks' ``units`` count, for the bar.
            initial: Units done before this call (the bar starts there).

        Raises:
            ValueError: two tasks share a name.
        """
        tasks = list(tasks)
        if not tasks:
            return
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        directory = Path(log_dir) if log_dir is not None else self.log_dir
        logs = [directory.absolute() / f"{task.name}.log" if directory is not None else None for task in tasks]
        bar = TaskBar(sum(task.units for task in tasks) + initial, initial, desc, progress, unit)
        try:
            for outcome in self._run(tasks, logs, bar):
                bar.finished(outcome)
                yield outcome
        finally:
            bar.close()

    def _run(self, tasks: list[Task], logs: list[Path | None], bar: TaskBar) -> Iterator[Outcome]:
        raise NotImplementedError

    def task_threads(self, task: Task) -> int | None:
        """The thread count ``task`` runs with (None: leave the process's setting)."""
        return task.threads if task.threads is not None else self.threads

    def describe(self) -> dict[str, Any]:
        """Provenance: the executor's kind and settings (a cluster's address and resources)."""
        return {"kind": self.kind, "task_threads": self.threads}

    def close(self) -> None:
        """Release what the executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
