"""The Ray executor: tasks on a Ray cluster (a local instance it starts, or a running cluster it joins).

Ray is an optional extra (``pip install 'dcbench-tesla[ray]'``) imported only here, when this
executor is made. Ray starts on the first task (or :meth:`RayExecutor.share`), so a command that
fails validation, or finds every result already on disk, never starts it.

- Resources: a task asks for ``threads`` CPUs (the command's ``--threads``, else 1) and, on CUDA,
  its ``gpu_fraction`` of a GPU, so it never lands on a node without what it needs; a task that no
  node of the cluster could ever hold is refused before anything is submitted.
- Faults: a task whose worker process dies (killed, out of memory, node lost) is started again up
  to ``max_retries`` times; a task that raises is not (the code is deterministic: it would raise
  again). Either way the failure comes back as an :class:`~dcbench_tesla.executors.base.Outcome`
  and the other tasks go on.
- Output: a task's stdout and stderr go to its log (one header per attempt); worker output is not
  forwarded to this console.
- Data: :meth:`RayExecutor.share` puts an object into Ray's object store once; tasks receive the
  handle and Ray hands them the object.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcbench_tesla.errors import UserError
from dcbench_tesla.executors.base import Executor, Outcome, Task, TaskBar, TaskMeta, _now, run_task

INSTALL_HINT = "pip install 'dcbench-tesla[ray]'"

#: Times a task is started again after its worker process died (not after it raised).
MAX_RETRIES = 2


class RayExecutor(Executor):
    """Tasks as Ray tasks.

    Args:
        address: ``None`` starts a local Ray instance; ``"auto"`` joins the cluster running on this
            machine (``ray start``); ``host:port`` joins that cluster.
        threads: Torch threads (and CPUs asked for) per task [1].
        log_dir: Default log directory (see :class:`~dcbench_tesla.executors.base.Executor`).
        max_retries: Restarts of a task whose worker died.

    Raises:
        UserError: Ray is not installed (the message gives the install command).
    """

    kind = "ray"
    remote = True

    def __init__(
        self,
        address: str | None = None,
        threads: int | None = None,
        log_dir: Path | str | None = None,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        super().__init__(threads=threads, log_dir=log_dir)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
        self.address = address
        self.max_retries = max_retries
        self._started = False
        self._owns = False
        self._remote_fn: Any = None
        self._shared: dict[int, tuple[Any, Any]] = {}

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start a local Ray instance, or join the cluster at ``address`` (once; reuses a running ``ray.init``).

        Raises:
            UserError: Ray cannot start, or the cluster cannot be reached.
        """
        if self._started:
            return
        import ray

        if not ray.is_initialized():
            options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if self.address is None:
                options.update(address="local", include_dashboard=False)
            else:
                options.update(address=self.address)
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"join the Ray cluster at {self.address!r}" if self.address else "start a local Ray instance"
                raise UserError(f"could not {where}: {exc}") from None
            self._owns = True
        self._remote_fn = ray.remote(run_task)
        self._started = True

    def close(self) -> None:
        """Shut Ray down if this executor started or joined it (a ``ray.init`` made by others stays)."""
        if self._owns:
            import ray

            ray.shutdown()
        self._started = self._owns = False
        self._shared.clear()

    def share(self, obj: Any, key: Any = None) -> Any:
        """Put ``obj`` into Ray's object store once per ``key`` and return its reference."""
        import ray

        self.start()
        key = obj if key is None else key
        if id(key) not in self._shared:
            self._shared[id(key)] = (key, ray.put(obj))  # keeping ``key`` alive keeps its id unique
        return self._shared[id(key)][1]

    # -- running ----------------------------------------------------------------------------
    def resources(self, task: Task) -> dict[str, float]:
        """What ``task`` asks Ray for: its threads as CPUs, and its GPU share on CUDA."""
        gpus = float(task.gpu_fraction) if str(task.device).startswith("cuda") else 0.0
        return {"num_cpus": float(self.task_threads(task) or 1), "num_gpus": gpus}

    def _check_feasible(self, tasks: list[Task]) -> None:
        import ray

        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        for need in {tuple(self.resources(task).items()) for task in tasks}:
            cpus, gpus = dict(need)["num_cpus"], dict(need)["num_gpus"]
            if not any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in nodes):
                have = "; ".join(f"{node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU" for node in nodes)
                gpu_part = f" and {gpus:g} GPU" if gpus else ""
                raise UserError(
                    f"no node of the Ray cluster can hold a task needing {cpus:g} CPU{gpu_part} "
                    f"(its nodes: {have or 'none'}); lower --threads, pick another --device, or add such a node"
                )

    def _run(self, tasks: list[Task], logs: list[Path | None], bar: TaskBar) -> Iterator[Outcome]:
        import ray

        from dcbench_tesla.provenance import command_line

        self.start()
        self._check_feasible(tasks)
        origin = {**self.describe(), "command": command_line()}  # a worker's own argv is Ray's
        refs: dict[Any, int] = {}
        for index, (task, log) in enumerate(zip(tasks, logs, strict=True)):
            if task.message:
                bar.write(task.message)
            threads = self.task_threads(task) or 1
            meta = TaskMeta(task.name, str(log) if log else None, threads, capture=True, origin=origin)
            options = {**self.resources(task), "max_retries": self.max_retries, "retry_exceptions": False}
            ref = self._remote_fn.options(name=task.name, **options).remote(task.fn, meta, *task.args, **task.kwargs)
            refs[ref] = index
        bar.started(len(refs))
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    index = refs[ref]
                    yield self._outcome(ref, tasks[index], index, logs[index])
        finally:
            for ref in pending:  # the caller stopped (Ctrl-C, a failure it raises): stop the rest
                ray.cancel(ref, force=True)

    def _outcome(self, ref: Any, task: Task, index: int, log: Path | None) -> Outcome:
        import ray
        from ray.exceptions import RayError, RayTaskError

        try:
            return Outcome(task, index, value=ray.get(ref), log=log)
        except RayTaskError as exc:  # the task raised: its traceback is in its log already
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return Outcome(task, index, error=cause, detail=str(exc), log=log)
        except RayError as exc:  # its worker died on every attempt: say so in its log
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(f"=== task {task.name}: FAILED {_now()} (reported by the driver): {exc}\n")
            return Outcome(task, index, error=exc, detail=str(exc), attempts=1 + self.max_retries, log=log)

    def describe(self) -> dict[str, Any]:
        """Kind, Ray version, address, nodes and cluster resources (once started), threads and retries."""
        import ray

        record: dict[str, Any] = {
            "kind": self.kind,
            "ray_version": ray.__version__,
            "requested_address": self.address or "local instance",
            "task_threads": self.threads or 1,
            "max_retries": self.max_retries,
        }
        if self._started:
            resources = ray.cluster_resources()
            record.update(
                address=ray.get_runtime_context().gcs_address,
                nodes=sum(1 for node in ray.nodes() if node.get("Alive")),
                resources={k: resources[k] for k in ("CPU", "GPU", "memory", "object_store_memory") if k in resources},
            )
        return record
