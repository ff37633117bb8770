"""Wrappers around a Distiller, composed like Gymnasium wrappers.

Each adds keys to the ``info`` dicts and never overwrites one, so the run loop and
method code stay free of logging, limits, progress and periodic evaluation.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dcbench_tesla.data import Dataset
from dcbench_tesla.distiller import Distiller
from dcbench_tesla.synthetic import SyntheticSet


def merge_info(info: dict[str, Any], extra: dict[str, Any], wrapper: str) -> dict[str, Any]:
    """Add ``extra`` to ``info``; a key already present is an error (never overwritten)."""
    clash = set(info) & set(extra)
    if clash:
        raise KeyError(f"{wrapper} would overwrite info keys {sorted(clash)}")
    return {**info, **extra}


class Wrapper(Distiller):
    """Delegates everything to the wrapped distiller."""

    def __init__(self, env: Distiller) -> None:  # noqa: D107
        self.env = env

    def __getattr__(self, name: str) -> Any:
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def unwrapped(self) -> Distiller:
        """The innermost distiller."""
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Reset the wrapped distiller."""
        return self.env.reset(dataset, ipc, seed)

    def step(self) -> dict[str, Any]:
        """Step the wrapped distiller."""
        return self.env.step()

    def synthetic_set(self) -> SyntheticSet:
        """The wrapped distiller's set."""
        return self.env.synthetic_set()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped distiller's state."""
        return self.env.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped distiller."""
        self.env.load_state_dict(state)

    def close(self) -> None:
        """Close the wrapped distiller."""
        self.env.close()


class IterationLimit(Wrapper):
    """Counts iterations, adds ``iteration`` to info, and says when the run is finished."""

    def __init__(self, env: Distiller, max_iterations: int) -> None:  # noqa: D107
        super().__init__(env)
        self.max_iterations = int(max_iterations)
        self.done_iterations = 0

    @property
    def finished(self) -> bool:
        """True once ``max_iterations`` steps were taken."""
        return self.done_iterations >= self.max_iterations

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Reset and zero the counter."""
        self.done_iterations = 0
        return merge_info(self.env.reset(dataset, ipc, seed), {"iteration": 0}, "IterationLimit")

    def step(self) -> dict[str, Any]:
        """Step and count."""
        info = self.env.step()
        self.done_iterations += 1
        return merge_info(info, {"iteration": self.done_iterations}, "IterationLimit")


class FiniteInfo(Wrapper):
    """Stops the run when a step reports a NaN or inf number (any method, plugins included)."""

    def step(self) -> dict[str, Any]:
        """Step, then check every numeric info value."""
        from dcbench_tesla.errors import DivergenceError

        info = self.env.step()
        for key, value in info.items():
            if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                raise DivergenceError(
                    f"the method reported {key}={value} at iteration {getattr(self.unwrapped, 'iteration', '?')}; "
                    "the run is stopped (lower its learning rates, or fix the method if it is a plugin)."
                )
        return info


class MetricsLog(Wrapper):
    """Appends every info dict, with elapsed seconds, as a JSON line to ``path``.

    ``reset`` starts a fresh log unless ``fresh=False`` (a resumed run), and
    :meth:`keep_until` trims it to a checkpoint's iteration.
    """

    def __init__(self, env: Distiller, path: Path | str, fresh: bool = True) -> None:  # noqa: D107
        super().__init__(env)
        self.path = Path(path)
        self.fresh = fresh
        self._start = time.perf_counter()

    def keep_until(self, iteration: int) -> None:
        """Drop logged steps after ``iteration`` (they are redone after a resume)."""
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        kept = [line for line in lines if json.loads(line).get("iteration", 0) <= iteration]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def _write(self, event: str, info: dict[str, Any]) -> dict[str, Any]:
        info = merge_info(info, {"elapsed_s": round(time.perf_counter() - self._start, 4)}, "MetricsLog")
        record = {"event": event, **{k: _jsonable(v) for k, v in info.items()}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return info

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Reset, start a fresh log (unless resuming), and log the reset info."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fresh or not self.path.exists():
            self.path.write_text("", encoding="utf-8")
        self._start = time.perf_counter()
        return self._write("reset", self.env.reset(dataset, ipc, seed))

    def step(self) -> dict[str, Any]:
        """Step and log the info."""
        return self._write("step", self.env.step())


class Checkpoint(Wrapper):
    """Saves the full state atomically every ``every`` steps and on request (:meth:`save`).

    The file holds the iteration, an identity (method, dataset, ipc, seed, options) that
    a resume must match, and the distiller's ``state_dict`` (safetensors, no pickle).
    """

    def __init__(self, env: Distiller, path: Path | str, every: int, identity: dict[str, Any]) -> None:  # noqa: D107
        super().__init__(env)
        self.path = Path(path)
        self.every = int(every)
        self.identity = identity
        self.done_iterations = 0

    def step(self) -> dict[str, Any]:
        """Step; save every ``every`` steps."""
        info = self.env.step()
        self.done_iterations += 1
        if self.every > 0 and self.done_iterations % self.every == 0:
            self.save()
        return info

    def save(self) -> Path:
        """Write the checkpoint now (atomically: a crash keeps the previous one readable)."""
        from dcbench_tesla.state_io import save_state

        state = {
            "iteration": self.done_iterations,
            "identity": self.identity,
            "distiller": self.env.state_dict(),
        }
        return save_state(self.path, state)

    def restore(self) -> int:
        """Load the checkpoint into the (already reset) distiller; return its iteration."""
        from dcbench_tesla.errors import UserError
        from dcbench_tesla.state_io import load_state

        state = load_state(self.path)
        if json.dumps(state.get("identity"), sort_keys=True) != json.dumps(self.identity, sort_keys=True):
            raise UserError(
                f"checkpoint {str(self.path)!r} belongs to another run ({state.get('identity')}); "
                "resume with the same method, dataset, --ipc, --seed and options, or start a new --output"
            )
        self.env.load_state_dict(state["distiller"])
        self.done_iterations = int(state["iteration"])
        return self.done_iterations


class EvaluateEvery(Wrapper):
    """Every ``every`` iterations, evaluates the current set with ``evaluate`` and adds its keys.

    Iterations are counted by the method (``Distiller.iteration``), so a resumed run evaluates
    at the same iterations as an uninterrupted one.
    """

    def __init__(self, env: Distiller, every: int, evaluate: Callable[[SyntheticSet], dict[str, Any]]) -> None:  # noqa: D107
        super().__init__(env)
        self.every = int(every)
        self.evaluate = evaluate

    def step(self) -> dict[str, Any]:
        """Step; on every ``every``-th iteration add the evaluation's keys."""
        info = self.env.step()
        iteration = int(getattr(self.unwrapped, "iteration", 0))
        if self.every > 0 and iteration % self.every == 0:
            info = merge_info(info, self.evaluate(self.env.synthetic_set()), "EvaluateEvery")
        return info


class ProgressBar(Wrapper):
    """A tqdm bar over the iterations, showing the latest loss."""

    def __init__(
        self, env: Distiller, total: int, enabled: bool = True, desc: str = "distil", initial: int = 0
    ) -> None:  # noqa: D107
        super().__init__(env)
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not enabled or total == 0, leave=False)

    def step(self) -> dict[str, Any]:
        """Step and advance the bar."""
        info = self.env.step()
        self.bar.update(1)
        if "loss" in info:
            self.bar.set_postfix(loss=f"{info['loss']:.4g}")
        return info

    def close(self) -> None:
        """Close the bar and the wrapped distiller."""
        self.bar.close()
        self.env.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
