"""``check_method``: the conformance checker plugin authors run on their own method.

Like Gymnasium's ``check_env``, it runs short episodes of a method on a small dataset and checks
the Distiller contract the harness relies on:

- ``reset`` / ``step`` return dicts holding the declared ``info_keys``, with finite numbers;
- every ``step`` adds exactly one to ``iteration`` (the episode's only counter);
- ``synthetic_set()`` returns a valid :class:`SyntheticSet` of the dataset's shape;
- the same seed reproduces the same set, and a different seed gives a different one;
- ``state_dict`` survives a checkpoint file and ``load_state_dict`` into a fresh episode gives
  the same next step (what ``--resume`` relies on).

Every failed check is reported at once, each with what to fix.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from dcbench_tesla.checks import non_finite
from dcbench_tesla.data import DEFAULT_DATASET, Dataset, load_dataset
from dcbench_tesla.distiller import Distiller, RunContext
from dcbench_tesla.errors import UserError
from dcbench_tesla.method import make
from dcbench_tesla.run.loop import run_episode
from dcbench_tesla.synthetic import SyntheticSet
from dcbench_tesla.wrappers import Wrapper, episode_state, restore_episode


class ConformanceError(UserError):
    """A method broke the Distiller contract (the message lists every failed check)."""


class _Failure(Exception):
    """One failed check (collected, then reported together)."""


class _RecordSteps(Wrapper):
    """Checks every reset/step info as it comes (keys, finite values); the loop checks the counter."""

    def __init__(self, env: Distiller, required: tuple[str, ...]) -> None:  # noqa: D107
        super().__init__(env)
        self.required = required

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:  # noqa: D102
        return _checked_info(self.env.reset(dataset, ipc, seed), (), "reset()")

    def step(self) -> dict[str, Any]:  # noqa: D102
        return _checked_info(self.env.step(), self.required, f"step() at iteration {self.iteration + 1}")


def _checked_info(info: Any, required: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise _Failure(f"{where} must return a dict, got {type(info).__name__}")
    missing = [k for k in required if k not in info]
    if missing:
        raise _Failure(f"{where} info lacks required keys {missing} (declared in info_keys)")
    bad = non_finite(info)
    if bad:
        key = next(iter(bad))
        raise _Failure(f"{where} info[{key!r}] is not finite ({bad[key]}); report finite numbers")
    return info


def _checked_set(syn: Any, dataset: Dataset, ipc: int) -> SyntheticSet:
    if not isinstance(syn, SyntheticSet):
        raise _Failure(f"synthetic_set() must return a SyntheticSet, got {type(syn).__name__} (use self.package(...))")
    expected = (dataset.num_classes * ipc, *dataset.image_shape)
    if tuple(syn.images.shape) != expected:
        raise _Failure(f"synthetic images have shape {tuple(syn.images.shape)}, expected {expected}")
    try:
        syn.validate()
    except UserError as exc:
        raise _Failure(str(exc)) from None
    if syn.dataset != dataset.name:
        raise _Failure(f"synthetic set names dataset {syn.dataset!r}, expected {dataset.name!r}")
    return syn


def _same(a: SyntheticSet, b: SyntheticSet) -> bool:
    same_lr = (a.lr is None and b.lr is None) or (a.lr is not None and b.lr is not None and a.lr == b.lr)
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and same_lr


class _Episodes:
    """Fresh distillers of one method (an id, or copies of an instance) run for a few steps."""

    def __init__(self, method: str | Distiller, dataset: Dataset, ipc: int, overrides: dict[str, Any]) -> None:
        self.method, self.dataset, self.ipc, self.overrides = method, dataset, ipc, overrides
        self.name = method if isinstance(method, str) else type(method).__name__

    def fresh(self) -> Distiller:
        if isinstance(self.method, str):
            return make(self.method, RunContext(), **self.overrides)
        distiller = type(self.method)(copy.deepcopy(self.method.options), self.method.context)
        distiller.spec = self.method.spec
        return distiller

    def run(self, seed: int, steps: int) -> tuple[Distiller, SyntheticSet]:
        """Run an episode of ``steps`` steps; the distiller is left open (the caller closes it)."""
        distiller = self.fresh()
        env = _RecordSteps(distiller, tuple(getattr(distiller, "info_keys", ())))
        try:
            run_episode(env, self.dataset, self.ipc, seed, steps, method=self.name)
        except UserError as exc:
            raise _Failure(str(exc)) from None
        return distiller, _checked_set(distiller.synthetic_set(), self.dataset, self.ipc)

    def closed(self, seed: int, steps: int) -> SyntheticSet:
        distiller, syn = self.run(seed, steps)
        distiller.close()
        return syn


def _check_reproducible(episodes: _Episodes, first: SyntheticSet, seed: int, steps: int) -> None:
    if not _same(first, episodes.closed(seed, steps)):
        raise _Failure(
            "two episodes with the same seed produced different synthetic sets: draw every random number "
            "from generators seeded in reset() (never the global RNG or the time)"
        )


def _check_seed_matters(episodes: _Episodes, first: SyntheticSet, seed: int, steps: int) -> None:
    if _same(first, episodes.closed(seed + 1, steps)):
        raise _Failure(
            f"seeds {seed} and {seed + 1} produced the same synthetic set: reset() must seed its random draws "
            "from its seed argument"
        )


def _check_resume(episodes: _Episodes, seed: int, steps: int) -> None:
    """Stop after ``steps - 1`` steps, go through a checkpoint file, and compare the next step."""
    from dcbench_tesla.state_io import load_state, save_state

    distiller, _ = episodes.run(seed, steps - 1)
    try:
        with tempfile.TemporaryDirectory(prefix="dcbench-check-") as tmp:
            path = Path(tmp) / "checkpoint.safetensors"
            try:
                save_state(path, episode_state(distiller))
            except (TypeError, ValueError) as exc:
                raise _Failure(f"state_dict() cannot be stored in a checkpoint: {exc}") from None
            state = load_state(path)
        distiller.step()
        uninterrupted = _checked_set(distiller.synthetic_set(), episodes.dataset, episodes.ipc)
    finally:
        distiller.close()
    resumed = episodes.fresh()
    try:
        resumed.reset(episodes.dataset, episodes.ipc, seed)
        restore_episode(resumed, state)
        if resumed.iteration != steps - 1:
            raise _Failure(f"after load_state_dict the iteration is {resumed.iteration}, expected {steps - 1}")
        resumed.step()
        after = _checked_set(resumed.synthetic_set(), episodes.dataset, episodes.ipc)
    finally:
        resumed.close()
    if not _same(uninterrupted, after):
        raise _Failure(
            "a step after state_dict() / load_state_dict() differs from the uninterrupted step: state_dict must "
            "hold everything the next step uses (images, labels, optimiser state, RNG/generator state, samplers)"
        )


def check_method(
    method: str | Distiller,
    dataset: Dataset | None = None,
    ipc: int = 1,
    seed: int = 0,
    steps: int = 2,
    **overrides: Any,
) -> None:
    """Raise ConformanceError unless ``method`` honours the Distiller contract.

    Args:
        method: A registered method id, or a distiller instance (not yet reset; fresh copies are
            built from its class, options and context).
        dataset: Dataset to run on (default: the embedded default dataset).
        ipc: Images per class.
        seed: Seed of the episodes (``seed + 1`` is the "different seed").
        steps: Outer iterations per episode (at least 2, so the resume check has a step to redo).
        **overrides: Method options when ``method`` is an id (keep the method small and fast here).

    Raises:
        ConformanceError: listing every failed check with what to fix.
    """
    dataset = dataset if dataset is not None else load_dataset(DEFAULT_DATASET)
    steps = max(2, int(steps))
    episodes = _Episodes(method, dataset, ipc, overrides)
    failures: list[str] = []
    try:
        first = episodes.closed(seed, steps)
    except _Failure as exc:
        raise ConformanceError(f"method {episodes.name!r} fails the Distiller contract:\n  - episode: {exc}") from None
    checks = {
        "same seed": lambda: _check_reproducible(episodes, first, seed, steps),
        "different seed": lambda: _check_seed_matters(episodes, first, seed, steps),
        "state_dict round trip": lambda: _check_resume(episodes, seed, steps),
    }
    for name, check in checks.items():
        try:
            check()
        except _Failure as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        listed = "\n".join(f"  - {f}" for f in failures)
        raise ConformanceError(f"method {episodes.name!r} fails the Distiller contract:\n{listed}")
