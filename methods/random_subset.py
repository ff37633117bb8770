"""The random baseline: IPC random real images per class, drawn from the seed."""

from __future__ import annotations

from typing import Any

from dcbench_tesla import Dataset, Distiller, MethodSpec, SyntheticSet
from dcbench_tesla.evaluation import random_real_subset


class RandomSubset(Distiller):
    """Picks ``ipc`` real training images per class; ``step`` changes nothing."""

    info_keys = ("num_images",)

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Draw the subset from ``seed``."""
        self.begin(dataset, ipc, seed)
        self._images, self._labels = random_real_subset(dataset, ipc, seed)
        return {"num_images": int(self._images.shape[0])}

    def step(self) -> dict[str, Any]:
        """Nothing to optimise."""
        self.iteration += 1
        return {"num_images": int(self._images.shape[0])}

    def synthetic_set(self) -> SyntheticSet:
        """The chosen real images with hard labels."""
        return self.package(self._images, self._labels, lr=None)


SPEC = MethodSpec(
    id="random",
    entry_point="dcbench_tesla_methods.random_subset:RandomSubset",
    description="random real images per class (the baseline every result is reported beside)",
    paper="baseline of every dataset-distillation paper",
    reference_accuracy={
        "cifar10": {1: 15.4, 10: 31.0, 50: 50.6},
        "cifar100": {1: 5.3, 10: 18.6, 50: 34.7},
        "imagenet64": {1: 0.5, 2: 0.9, 10: 3.6, 50: 15.3},
    },
    eval_lr=0.01,
    role="baseline",
)
