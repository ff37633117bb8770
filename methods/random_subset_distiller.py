"""The random baseline: IPC random real images per class, drawn from the seed."""

from __future__ import annotations

from typing import Any

from dcbench_tesla import Dataset, Distiller, SyntheticSet
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
