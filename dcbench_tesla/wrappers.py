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


class MetricsLog(Wrapper):
    """Appends every info dict, with elapsed seconds, as a JSON line to ``path``."""

    def __init__(self, env: Distiller, path: Path | str) -> None:  # noqa: D107
        super().__init__(env)
        self.path = Path(path)
        self._start = time.perf_counter()

    def _write(self, event: str, info: dict[str, Any]) -> dict[str, Any]:
        info = merge_info(info, {"elapsed_s": round(time.perf_counter() - self._start, 4)}, "MetricsLog")
        record = {"event": event, **{k: _jsonable(v) for k, v in info.items()}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return info

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Reset, truncate the log, and log the reset info."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")
        self._start = time.perf_counter()
        return self._write("reset", self.env.reset(dataset, ipc, seed))

    def step(self) -> dict[str, Any]:
        """Step and log the info."""
        return self._write("step", self.env.step())


class EvaluateEvery(Wrapper):
    """Every ``every`` steps, evaluates the current set with ``evaluate`` and adds its keys."""

    def __init__(self, env: Distiller, every: int, evaluate: Callable[[SyntheticSet], dict[str, Any]]) -> None:  # noqa: D107
        super().__init__(env)
        self.every = int(every)
        self.evaluate = evaluate
        self._steps = 0

    def step(self) -> dict[str, Any]:
        """Step; on every ``every``-th step add the evaluation's keys."""
        info = self.env.step()
        self._steps += 1
        if self.every > 0 and self._steps % self.every == 0:
            info = merge_info(info, self.evaluate(self.env.synthetic_set()), "EvaluateEvery")
        return info


class ProgressBar(Wrapper):
    """A tqdm bar over the iterations, showing the latest loss."""

    def __init__(self, env: Distiller, total: int, enabled: bool = True, desc: str = "distil") -> None:  # noqa: D107
        super().__init__(env)
        self.bar = tqdm(total=total, desc=desc, disable=not enabled or total == 0, leave=False)

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
