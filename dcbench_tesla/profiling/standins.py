"""Random stand-ins for a dataset and its experts, so a profile point needs no dataset or trained experts.

The memory and time of one distillation iteration depend on tensor shapes (image shape, class
count, synthetic set size, batch, model, number of inner steps), never on pixel or parameter
values. A profile point therefore runs on random tensors of the dataset's image shape and class
count and on random expert trajectories of the model's parameter count
(:class:`RandomExpertEndpoints`), written by :func:`write_standin_experts` to a real on-disk expert
store in a temporary directory, so a step reads its expert rows through the same path as a real run
(:meth:`dcbench_tesla.experts.ExpertStore.rows`). Every output of the profiler carries
:data:`RANDOM_STANDIN_NOTE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dcbench_tesla.data import DATASETS, Dataset, Preprocessing
from dcbench_tesla.models import build_model
from dcbench_tesla.models.flat import FlatParams

if TYPE_CHECKING:
    from dcbench_tesla.experts import ExpertStore

__all__ = [
    "RANDOM_STANDIN_NOTE",
    "RandomExpertEndpoints",
    "random_dataset",
    "student_init",
    "write_standin_experts",
]

RANDOM_STANDIN_NOTE = (
    "Data and experts are random stand-ins: random tensors of each dataset's image shape and class "
    "count (ipc images per class) and random expert trajectories of the model's parameter count "
    "(RandomExpertEndpoints), read from an on-disk expert store in a temporary directory. Memory and "
    "time do not depend on pixel or parameter values; no accuracy can be read from these runs."
)


def random_dataset(name: str, ipc: int, seed: int = 0, test_images: int = 10) -> Dataset:
    """A :class:`Dataset` of random tensors shaped like the registered dataset ``name``.

    Args:
        name: Dataset registry name (its image shape, class count, mean and std are used).
        ipc: Training images per class (the synthetic set is initialised from these).
        seed: Seed of the random pixels.
        test_images: Size of the (unused, random) test split.

    Returns:
        A dataset with ``num_classes * ipc`` class-major training images drawn from N(0, 1)
        (already "preprocessed") and a small random test split; ``source`` says it is random.
    """
    spec = DATASETS.get(name)
    c, h, w = spec.image_shape
    generator = torch.Generator().manual_seed(seed)
    n = spec.num_classes * ipc
    return Dataset(
        name=spec.name,
        classes=[f"class_{i}" for i in range(spec.num_classes)],
        train_images=torch.randn(n, c, h, w, generator=generator),
        train_labels=torch.arange(spec.num_classes).repeat_interleave(ipc),
        test_images=torch.randn(test_images, c, h, w, generator=generator),
        test_labels=torch.arange(test_images) % spec.num_classes,
        preprocessing=Preprocessing(mean=spec.mean, std=spec.std),
        source=f"random stand-in for {spec.name} (profiler)",
    )


def student_init(model: str, dataset: str, seed: int) -> Tensor:
    """The flat initial parameters of ``model`` for ``dataset``'s shape, built from ``seed``.

    Used as the starting point of :class:`RandomExpertEndpoints` so the random trajectories have
    the scale of real network weights (the matching loss then stays finite for a few iterations).
    """
    spec = DATASETS.get(dataset)
    c, h, _ = spec.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, channels=c, num_classes=spec.num_classes, image_size=h)
    return FlatParams(net).flatten()


class RandomExpertEndpoints:
    """Random expert trajectories (float32, CPU) of the right parameter count, made lazily.

    A stand-in for an expert store (``num_experts``, ``epochs``, ``trajectory(i)``): trajectory
    ``i`` is ``base + e * drift * d_i`` for epochs ``e = 0 .. epochs``, ``d_i`` a standard normal
    vector drawn from ``seed + i`` and scaled by the mean absolute value of ``base``. Only the most
    recently requested trajectory is kept, so memory stays at ``(epochs + 1) * P`` floats; keep
    ``epochs`` to ``max_start_epoch + expert_epochs`` (not the 51 snapshots of real experts).

    Args:
        base: Flat start parameters ``(P,)`` (e.g. :func:`student_init`).
        epochs: Epochs per trajectory (it has ``epochs + 1`` snapshots).
        num_experts: Number of distinct random trajectories.
        seed: Seed of the random directions.
        drift: Per-epoch step relative to the mean absolute parameter value.
    """

    def __init__(self, base: Tensor, epochs: int, num_experts: int = 1, seed: int = 0, drift: float = 0.01) -> None:
        if base.dim() != 1:
            raise ValueError(f"base must be a flat parameter vector, got shape {tuple(base.shape)}")
        if epochs < 1 or num_experts < 1:
            raise ValueError("epochs and num_experts must be at least 1")
        self.base = base.detach().to(device="cpu", dtype=torch.float32)
        self.epochs = int(epochs)
        self.num_experts = int(num_experts)
        self.seed = int(seed)
        self.drift = float(drift)
        self._cached: tuple[int, Tensor] | None = None

    @property
    def num_params(self) -> int:
        """Parameter count ``P`` of every trajectory."""
        return self.base.numel()

    def trajectory(self, index: int) -> Tensor:
        """Snapshots ``(epochs + 1, P)`` of random expert ``index`` (float32, CPU)."""
        if not 0 <= index < self.num_experts:
            raise IndexError(f"expert {index} out of range (0 .. {self.num_experts - 1})")
        if self._cached is None or self._cached[0] != index:
            generator = torch.Generator().manual_seed(self.seed + index)
            direction = torch.randn(self.num_params, generator=generator) * self.base.abs().mean()
            epochs = torch.arange(self.epochs + 1, dtype=torch.float32).unsqueeze(1)
            self._cached = (index, self.base + epochs * self.drift * direction)
        return self._cached[1]

    def rows(self, index: int, epochs: Sequence[int]) -> Tensor:
        """Snapshots ``epochs`` of random expert ``index``, ``(len(epochs), P)`` (a copy)."""
        return self.trajectory(index)[list(epochs)].clone()


def write_standin_experts(
    directory: Path | str,
    model: str,
    dataset: str,
    epochs: int,
    num_experts: int = 1,
    seed: int = 0,
    drift: float = 0.01,
) -> ExpertStore:
    """Write :class:`RandomExpertEndpoints` trajectories as an expert store and open it.

    The store has the format of trained experts (manifest plus one safetensors file per expert),
    so a distiller reads its rows exactly as in a real run.

    Args:
        directory: Where to write (created; use a temporary directory).
        model: Model registry name (its parameter count and layout for ``dataset``'s shape).
        dataset: Dataset registry name.
        epochs: Epochs per trajectory (``epochs + 1`` snapshots per file).
        num_experts: Number of expert files.
        seed: Seed of the initialisation and of the random directions.
        drift: See :class:`RandomExpertEndpoints`.

    Returns:
        The opened :class:`~dcbench_tesla.experts.ExpertStore`.
    """
    from dcbench_tesla.experts import ExpertConfig, ExpertStore
    from dcbench_tesla.experts.store import manifest_metadata, write_expert, write_manifest

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = random_dataset(dataset, ipc=1, seed=seed, test_images=1)
    spec = DATASETS.get(dataset)
    c, h, _ = spec.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, channels=c, num_classes=spec.num_classes, image_size=h)
    flat = FlatParams(net)
    layout = flat.to_dict()
    config = ExpertConfig(dataset=data.name, model=model, num_experts=num_experts, epochs=epochs, seed=seed)
    meta = manifest_metadata(config, data, layout, origin={"kind": "standin", "note": "random stand-in (profiler)"})
    write_manifest(directory, meta, data.preprocessing)
    source = RandomExpertEndpoints(flat.flatten(), epochs=epochs, num_experts=num_experts, seed=seed, drift=drift)
    for i in range(num_experts):
        write_expert(directory, i, source.trajectory(i), {"key": meta["key"], "seed": seed + i, "standin": True})
    return ExpertStore.open(directory)
