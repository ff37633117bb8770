"""The Distiller protocol: a distillation method as a Gymnasium-style environment.

d = make("tesla")
info = d.reset(dataset=ds, ipc=10, seed=0)   # the ONLY place randomness is seeded
for _ in range(iterations):
    info = d.step()                           # {"loss": ..., "syn_lr": ..., ...}
syn = d.synthetic_set()
d.close()
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from dcbench_tesla.data import Dataset, default_cache_dir

if TYPE_CHECKING:
    from dcbench_tesla.method import MethodSpec
    from dcbench_tesla.synthetic import SyntheticSet


def _notice(message: str) -> None:
    print(message)


class Probe:
    """Where a method reports what its phases cost; this default records nothing.

    A method wraps a phase worth measuring in ``with self.context.probe.phase("engine"):`` and
    reports a figure with ``self.context.probe.record("snapshot_bytes", n)``. The profiler installs
    a probe that times the phases and keeps the figures; the method's code is the same either way.
    """

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark the code inside the ``with`` block as phase ``name``."""
        del name
        yield

    def record(self, name: str, value: float) -> None:
        """Report a figure (bytes, counts) of the current step."""
        del name, value


@dataclass
class RunContext:
    """Runtime settings a distiller needs but that are not method options.

    Attributes:
        device: Torch device to compute on.
        cache_dir: Where experts and other reusable artefacts are cached.
        progress: Whether to show progress bars.
        notice: Callback printing a one-line notice to the user.
        experts: Optional expert source injected instead of trained/cached experts (the
            profiler passes random endpoints); needs ``num_experts``, ``epochs`` and
            ``trajectory(i) -> Tensor (epochs + 1, P)``.
        probe: Receives the cost of the method's phases (see :class:`Probe`).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: Path = field(default_factory=default_cache_dir)
    progress: bool = False
    notice: Any = _notice
    experts: Any = None
    probe: Probe = field(default_factory=Probe)


@dataclass
class NoOptions:
    """Options of a method that has none but the iteration count."""

    iterations: int = 0


class Distiller(abc.ABC):
    """Base class of every method. Subclasses set ``Config`` to an options dataclass.

    ``Config`` must have an ``iterations: int`` field: the number of ``step`` calls
    the run loop makes by default. ``iteration`` is the one iteration counter of an episode:
    :meth:`begin` sets it to 0, every ``step`` adds one, and every wrapper, the checkpoint and
    the run loop read it (a resumed episode gets it back from the checkpoint).
    """

    Config: ClassVar[type] = NoOptions
    #: Keys every ``step`` info dict must hold (checked by ``check_method``).
    info_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any, context: RunContext) -> None:
        self.options = options
        self.context = context
        self.spec: MethodSpec | None = None
        self.iteration = 0

    @property
    def iterations(self) -> int:
        """Number of outer iterations the options ask for."""
        return int(getattr(self.options, "iterations", 0))

    @abc.abstractmethod
    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Build the initial synthetic set; seed every random draw from ``seed``."""

    @abc.abstractmethod
    def step(self) -> dict[str, Any]:
        """Run one outer iteration; return an info dict of floats/ints."""

    @abc.abstractmethod
    def synthetic_set(self) -> SyntheticSet:
        """The current synthetic set (a detached copy)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (override in methods with state)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def close(self) -> None:
        """Release resources."""

    def relabel(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The labels this method's label rule gives other images (optional hook; default: hard labels).

        The runner evaluates a random real subset with these labels beside the synthetic set (the
        same-rule baseline of DD-Ranking's IOR), so that a method whose labels come from a teacher is
        compared with real images labelled by the same teacher and rule. Called once after the
        episode, before :meth:`close`.

        Args:
            images: (N, C, H, W) real training images (model inputs, on the CPU).
            labels: (N,) their classes.

        Returns:
            (N,) classes, or (N, K) probabilities (soft labels). The default returns ``labels``.
        """
        del images
        return labels

    def oom_advice(self) -> list[str]:
        """What to change when this method runs out of GPU memory (shown with the measured peak)."""
        return []

    def estimate_work(self, dataset: Dataset, ipc: int, *, cached: bool = True) -> dict[str, float]:
        """The work of each phase of an episode, in image-steps.

        An image-step is one forward + backward of one image through the dataset's default model. The
        run header turns these into time estimates, and a phase far above the dataset's config cards
        asks for ``--yes``. ``cached=True`` counts work already done and cached (e.g. trained experts)
        as zero. Called after construction, before ``reset``.

        Returns:
            ``{phase name: image-steps}``; empty when the method does not say.
        """
        del dataset, ipc, cached
        return {}

    def expert_config(self, dataset: Dataset) -> Any:
        """The expert trajectories these options train or read (an ExpertConfig), or None if the method uses none.

        ``dcbench experts --dataset D`` defaults to what the config cards of ``D`` read through this.
        """
        del dataset
        return None

    def options_dict(self) -> dict[str, Any]:
        """The resolved options as a dict."""
        return dataclasses.asdict(self.options)

    # -- helpers for subclasses ------------------------------------------------------
    def begin(self, dataset: Dataset, ipc: int, seed: int) -> None:
        """Validate ``ipc`` against ``dataset`` and remember the episode's settings."""
        check_ipc(dataset, ipc)
        self.dataset, self.ipc, self.seed = dataset, int(ipc), int(seed)
        self.iteration = 0

    def package(self, images: torch.Tensor, labels: torch.Tensor, lr: float | None = None) -> SyntheticSet:
        """Wrap tensors of the current episode as a :class:`SyntheticSet`."""
        from dcbench_tesla.synthetic import SyntheticSet

        return SyntheticSet(
            images=images.detach().cpu().clone(),
            labels=labels.detach().cpu().clone(),
            dataset=self.dataset.name,
            classes=list(self.dataset.classes),
            preprocessing=self.dataset.preprocessing,
            lr=lr,
            ipc=self.ipc,
            seed=self.seed,
            method=self.spec.to_dict() if self.spec is not None else {},
            config=self.options_dict(),
            iteration=self.iteration,
        )


def check_ipc(dataset: Dataset, ipc: int) -> None:
    """Raise a UserError unless 1 <= ipc <= the images in the smallest class."""
    from dcbench_tesla.errors import UserError

    largest = dataset.min_class_size()
    if not isinstance(ipc, int) or ipc <= 0 or ipc > largest:
        raise UserError(
            f"--ipc must be between 1 and {largest} for {dataset.name!r} "
            f"(its smallest class has {largest} training images), got {ipc}"
        )
