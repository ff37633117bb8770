"""Wrappers around a Distiller, composed like Gymnasium wrappers.

Each adds keys to the ``info`` dicts and never overwrites one, so the run loop and method code
stay free of logging, checkpoints, progress and periodic evaluation. Every wrapper reads the one
iteration counter of the episode, the distiller's ``iteration``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dcbench_tesla.checks import non_finite
from dcbench_tesla.data import Dataset
from dcbench_tesla.distiller import Distiller
from dcbench_tesla.errors import DivergenceError, UserError
from dcbench_tesla.files import append_line
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

    @property
    def iteration(self) -> int:  # type: ignore[override]
        """The distiller's iteration counter (the only one)."""
        return int(getattr(self.unwrapped, "iteration", 0))

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


def unwrap(env: Distiller) -> Distiller:
    """The innermost distiller of ``env`` (``env`` itself when it is not wrapped)."""
    return env.unwrapped if isinstance(env, Wrapper) else env


def episode_state(env: Distiller) -> dict[str, Any]:
    """What a checkpoint holds of an episode: the iteration and the distiller's ``state_dict``."""
    inner = unwrap(env)
    return {"iteration": int(inner.iteration), "distiller": inner.state_dict()}


def restore_episode(env: Distiller, state: dict[str, Any]) -> int:
    """Load :func:`episode_state` output into an episode already reset the same way; return its iteration."""
    inner = unwrap(env)
    inner.load_state_dict(state["distiller"])
    inner.iteration = int(state["iteration"])
    return inner.iteration


class FiniteInfo(Wrapper):
    """Stops the run when a step reports a NaN or inf number (any method, plugins included)."""

    def step(self) -> dict[str, Any]:
        """Step, then check every numeric info value."""
        info = self.env.step()
        bad = non_finite(info)
        if bad:
            key, value = next(iter(bad.items()))
            raise DivergenceError(
                f"the method reported {key}={value} at iteration {self.iteration}; "
                "the run is stopped (lower its learning rates, or fix the method if it is a plugin)."
            )
        return info


class MetricsLog(Wrapper):
    """Appends every info dict, with the iteration and elapsed seconds, as a JSON line to ``path``.

    ``reset`` starts a fresh log unless ``fresh=False`` (a resumed run); then the first step trims
    the log to the iteration the episode resumed from, so redone iterations are logged once, and
    ``elapsed_s`` continues from the last kept line. The clock starts after ``reset``: set-up
    (expert training and the like) is not distillation time.
    """

    def __init__(self, env: Distiller, path: Path | str, fresh: bool = True) -> None:  # noqa: D107
        super().__init__(env)
        self.path = Path(path)
        self.fresh = fresh
        self._trim = False
        self._start = time.perf_counter()

    def keep_until(self, iteration: int) -> None:
        """Drop logged steps after ``iteration`` (they are redone after a resume); the clock goes on from there."""
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        kept = [line for line in lines if _logged_iteration(line) <= iteration]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        elapsed = max((_logged(line, "elapsed_s") for line in kept), default=0.0)
        self._start = time.perf_counter() - elapsed

    def _write(self, event: str, info: dict[str, Any]) -> dict[str, Any]:
        extra = {"iteration": self.iteration, "elapsed_s": round(time.perf_counter() - self._start, 4)}
        info = merge_info(info, extra, "MetricsLog")
        record = {"event": event, **{k: _jsonable(v) for k, v in info.items()}}
        append_line(self.path, json.dumps(record))
        return info

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Reset, start a fresh log (unless resuming), and log the reset info."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = self.env.reset(dataset, ipc, seed)
        if self.fresh or not self.path.exists():
            self.path.write_text("", encoding="utf-8")
            self._start = time.perf_counter()
            return self._write("reset", info)
        self._start = time.perf_counter()
        self._trim = True
        return info

    def step(self) -> dict[str, Any]:
        """Step and log the info."""
        if self._trim:
            self._trim = False
            self.keep_until(self.iteration)
        return self._write("step", self.env.step())


class Checkpoint(Wrapper):
    """Saves the episode atomically every ``every`` iterations and on request (:meth:`save`).

    The file holds the iteration, an identity (method, dataset, ipc, seed, options) that a resume
    must match, and the distiller's ``state_dict`` (safetensors, no pickle).
    """

    def __init__(self, env: Distiller, path: Path | str, every: int, identity: dict[str, Any]) -> None:  # noqa: D107
        super().__init__(env)
        self.path = Path(path)
        self.every = int(every)
        self.identity = identity

    def step(self) -> dict[str, Any]:
        """Step; save every ``every`` iterations."""
        info = self.env.step()
        if self.every > 0 and self.iteration % self.every == 0:
            self.save()
        return info

    def save(self) -> Path:
        """Write the checkpoint now (atomically: a crash keeps the previous one readable)."""
        from dcbench_tesla.state_io import save_state

        return save_state(self.path, {**episode_state(self.env), "identity": self.identity})

    def restore(self) -> int:
        """Load the checkpoint into the (already reset) distiller; return its iteration."""
        from dcbench_tesla.state_io import load_state

        state = load_state(self.path)
        if json.dumps(state.get("identity"), sort_keys=True, default=str) != json.dumps(self.identity, sort_keys=True):
            raise UserError(
                f"checkpoint {str(self.path)!r} belongs to another run ({state.get('identity')}); "
                "resume with the same method, dataset, --ipc, --seed and options, or start a new --output"
            )
        try:
            return restore_episode(self.env, state)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise UserError(
                f"checkpoint {str(self.path)!r} is corrupt or does not fit this run ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); start again without --resume (pass --overwrite)"
            ) from exc


class EvaluateEvery(Wrapper):
    """Every ``every`` iterations, evaluates the current set with ``evaluate`` and adds its keys.

    Iterations are the distiller's, so a resumed run evaluates at the same iterations as an
    uninterrupted one.
    """

    def __init__(self, env: Distiller, every: int, evaluate: Callable[[SyntheticSet], dict[str, Any]]) -> None:  # noqa: D107
        super().__init__(env)
        self.every = int(every)
        self.evaluate = evaluate

    def step(self) -> dict[str, Any]:
        """Step; on every ``every``-th iteration add the evaluation's keys."""
        info = self.env.step()
        if self.every > 0 and self.iteration % self.every == 0:
            info = merge_info(info, self.evaluate(self.env.synthetic_set()), "EvaluateEvery")
        return info


class ProgressBar(Wrapper):
    """A tqdm bar over the iterations, showing the latest loss."""

    def __init__(self, env: Distiller, total: int, enabled: bool = True, desc: str = "distil") -> None:  # noqa: D107
        from dcbench_tesla.progress import progress_bar

        super().__init__(env)
        self.bar = progress_bar(total=total, desc=desc, enabled=enabled, unit="iteration")
        self._started = False

    def step(self) -> dict[str, Any]:
        """Step and advance the bar (a resumed episode's bar starts at the checkpoint's iteration)."""
        if not self._started:
            self._started = True
            self.bar.initial = self.bar.n = self.bar.last_print_n = self.iteration
        info = self.env.step()
        self.bar.update(self.iteration - self.bar.n)
        if "loss" in info:
            self.bar.set_postfix(loss=f"{info['loss']:.4g}")
        return info

    def close(self) -> None:
        """Close the bar and the wrapped distiller."""
        self.bar.close()
        self.env.close()


def _logged(line: str, key: str) -> float:
    try:
        return float(json.loads(line).get(key, 0))
    except (ValueError, AttributeError, TypeError):
        return 0.0


def _logged_iteration(line: str) -> int:
    return int(_logged(line, "iteration"))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
