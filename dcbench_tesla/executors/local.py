"""The local executor: every task in this process, one after another (the behaviour before the seam)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dcbench_tesla.executors.base import Executor, Outcome, Task, TaskBar, TaskMeta, run_task


class LocalExecutor(Executor):
    """Runs tasks in order in this process; a task's exception propagates at once.

    Nothing is captured: a task prints to the console as it always did. A task that fails writes
    its traceback to its log (when :meth:`map` names a log directory) before the error propagates.
    """

    kind = "local"
    remote = False

    def _run(self, tasks: list[Task], logs: list[Path | None], bar: TaskBar) -> Iterator[Outcome]:
        for index, (task, log) in enumerate(zip(tasks, logs, strict=True)):
            if task.message:
                bar.write(task.message)
            bar.started(name=task.name)
            meta = TaskMeta(task.name, str(log) if log else None, self.task_threads(task), capture=False)
            kwargs = {**task.kwargs, task.on_unit: bar.advance(index)} if task.on_unit else task.kwargs
            value = run_task(task.fn, meta, *task.args, **kwargs)
            yield Outcome(task, index, value=value, log=log)
