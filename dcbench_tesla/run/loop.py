"""The episode loop: the one place that drives a distiller (``run``, the profiler and ``check_method``).

``run_episode`` resets the (wrapped) distiller, restores a checkpoint when resuming, and steps it
until the distiller's own ``iteration`` reaches the target. A NaN/inf stops it with the last good
state saved; SIGINT/SIGTERM stop it after the current iteration with a checkpoint; a GPU
out-of-memory error becomes a message with the measured peak and the method's advice.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from dcbench_tesla.distiller import Distiller
from dcbench_tesla.errors import DivergenceError, Interrupted, UserError
from dcbench_tesla.wrappers import Checkpoint, unwrap


class StopRequests:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each iteration."""

    def __init__(self, notice: Any = None) -> None:
        self.requested: str | None = None
        self.notice = notice
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        if self.notice is not None:
            self.notice(f"\n{self.requested} received: stopping after this iteration (a checkpoint will be saved)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def out_of_memory_error(env: Distiller, method: str, exc: Exception) -> UserError:
    """A GPU out-of-memory error as a message with the measured peak and what to change."""
    import torch

    peak = ""
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        total_mib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**20
        peak = f" Peak allocated before the failure: {peak_mib:,.0f} MiB of {total_mib:,.0f} MiB."
    advice = [*unwrap(env).oom_advice(), "measure what a setting needs with 'dcbench profile'"]
    return UserError(
        f"{method} ran out of GPU memory at iteration {unwrap(env).iteration + 1}.{peak} "
        f"To fit: {'; '.join(advice)}. ({str(exc).splitlines()[0]})"
    )


def _step(env: Distiller, checkpoint: Checkpoint | None, method: str) -> dict[str, Any]:
    import torch

    before = env.iteration
    try:
        info = env.step()
    except DivergenceError as exc:
        if checkpoint is None:
            raise
        checkpoint.save()
        raise DivergenceError(f"{exc} Last good state saved in {checkpoint.path}.") from None
    except torch.OutOfMemoryError as exc:
        raise out_of_memory_error(env, method, exc) from None
    if env.iteration != before + 1:
        raise UserError(
            f"method {method!r}: step() moved its iteration counter from {before} to {env.iteration}; "
            "every step must add exactly one to self.iteration"
        )
    return info


def run_episode(
    env: Distiller,
    dataset: Any,
    ipc: int,
    seed: int,
    iterations: int,
    *,
    checkpoint: Checkpoint | None = None,
    resume: bool = False,
    method: str = "method",
    notice: Any = None,
) -> dict[str, Any]:
    """Reset (or resume) ``env`` and step it until its ``iteration`` reaches ``iterations``.

    Args:
        env: The distiller, usually wrapped.
        dataset: Training data for ``reset``.
        ipc: Images per class.
        seed: The episode's seed.
        iterations: Target iteration count.
        checkpoint: The :class:`Checkpoint` wrapper inside ``env``, if any: restored from when
            ``resume``, saved on divergence and on SIGINT/SIGTERM.
        resume: Restore the checkpoint after ``reset``.
        method: The method's id (for messages).
        notice: Prints one-line notices (e.g. "stopping after this iteration").

    Returns:
        The last info dict.

    Raises:
        DivergenceError: a NaN/inf (the last good state is saved when there is a checkpoint).
        Interrupted: SIGINT/SIGTERM (after saving the checkpoint).
        UserError: out of GPU memory, or a step that does not advance the iteration by one.
    """
    info = env.reset(dataset, ipc, seed)
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs the episode's Checkpoint wrapper")
        done = checkpoint.restore()
        if notice is not None:
            notice(f"resuming {method} from iteration {done} of {iterations} ({checkpoint.path})")
    with StopRequests(notice) as stop:
        while env.iteration < iterations:
            info = _step(env, checkpoint, method)
            if stop.requested:
                where = ""
                if checkpoint is not None:
                    checkpoint.save()
                    where = " checkpoint saved. Continue with the same command plus --resume."
                raise Interrupted(
                    f"{stop.requested} received: stopped after iteration {env.iteration} of {iterations};{where}"
                )
    return info
