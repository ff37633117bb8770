"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

Each iteration samples a fresh randomly initialised network with frozen weights and moves
the synthetic images so that, class by class, the mean embedding (features before the
classifier) of the synthetic images matches the mean embedding of a batch of real images.
Real and synthetic images of a class go through the same Siamese DSA transform.

All randomness (initial images, network seeds, real batches, DSA seeds) comes from one
local ``torch.Generator`` seeded in :meth:`DistributionMatching.reset`; the global RNG is
never touched, so a run is reproducible and a resumed run is bitwise identical on CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from dcbench_tesla import Dataset, Distiller, SyntheticSet, UserError
from dcbench_tesla.checks import MAX_ITERATIONS
from dcbench_tesla.data import DATASETS
from dcbench_tesla.data.augment import DSA
from dcbench_tesla.models import MODELS, build_model
from dcbench_tesla_methods.dm import default_lr_img

_SEED_BOUND = 2**31 - 1


def distribution_matching_loss(
    embed: Callable[[Tensor], Tensor],
    real_by_class: Iterable[Tensor],
    syn_by_class: Iterable[Tensor],
) -> Tensor:
    """Sum over classes of ``||mean_i embed(real_ci) - mean_j embed(syn_cj)||^2``.

    The two iterables are consumed in step, one class at a time, so they may be lazy
    generators (only one class's real batch is alive at once). Real embeddings are
    computed without a graph: gradients flow only into the synthetic images.

    Args:
        embed: Maps a batch (B, ...) to features (B, D).
        real_by_class: One batch of real images per class.
        syn_by_class: The synthetic images of each class, in the same class order.

    Returns:
        The scalar loss.

    Raises:
        ValueError: If the iterables hold different numbers of classes, or none.
    """
    total: Tensor | None = None
    for real, syn in zip(real_by_class, syn_by_class, strict=True):
        with torch.no_grad():
            real_mean = embed(real).mean(dim=0)
        term = (real_mean - embed(syn).mean(dim=0)).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("distribution_matching_loss needs at least one class")
    return total


@dataclass
class DMConfig:
    """Options of DM.

    Attributes:
        iterations: Outer iterations (the paper's 20000).
        lr_img: Step size of SGD on the images; ``None`` means 1.0 below IPC 100 and
            10.0 from IPC 100 (the reference code's rule).
        momentum: SGD momentum on the images.
        batch_real: Real images per class per iteration (all of a smaller class).
        model: Embedding network (model registry name); ``None``: the dataset's default.
        dsa_strategy: DSA families shared by real and synthetic batches ("none" to disable).
        init: "real" (random real images per class) or "noise" (standard Gaussian).
    """

    iterations: int = 20000
    lr_img: float | None = None
    momentum: float = 0.5
    batch_real: int = 256
    model: str | None = None
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    init: Literal["real", "noise"] = "real"

    def __post_init__(self) -> None:
        if not 0 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be within 0..{MAX_ITERATIONS}, got {self.iterations}")
        if self.lr_img is not None and not (self.lr_img > 0 and math.isfinite(self.lr_img)):
            raise ValueError(f"lr_img must be positive and finite, got {self.lr_img}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.batch_real < 1:
            raise ValueError(f"batch_real must be >= 1, got {self.batch_real}")
        DSA(self.dsa_strategy)  # an unknown family is a ValueError naming the families
        if self.model is not None:
            MODELS.get(self.model)  # an unknown model is a UserError with suggestions


class DistributionMatching(Distiller):
    """Distribution matching with a fresh frozen random network per iteration.

    The network is kept in train mode, as in the reference code. With the default
    instance norm this is the same as eval mode (no running statistics); with batch
    norm each class's batch is normalised by its own statistics, as upstream.
    """

    Config = DMConfig
    info_keys = ("loss", "lr_img")

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Draw the initial synthetic set and the optimiser from ``seed``."""
        self.begin(dataset, ipc, seed)
        opts = self.options
        device = self.context.device
        self._generator = torch.Generator().manual_seed(self.seed)
        self._model_name = opts.model or DATASETS.get(dataset.name).default_model
        self._dsa = DSA(opts.dsa_strategy, siamese=True)
        self._lr_img = float(opts.lr_img) if opts.lr_img is not None else default_lr_img(self.ipc)
        num_classes = dataset.num_classes
        if opts.init == "real":
            picked = [self._draw_real(c, self.ipc) for c in range(num_classes)]
            images = torch.cat([dataset.train_images[index] for index in picked])
        else:
            shape = (num_classes * self.ipc, *dataset.image_shape)
            images = torch.randn(shape, generator=self._generator, dtype=dataset.train_images.dtype)
        self._images = images.to(device).clone().requires_grad_(True)
        self._labels = torch.arange(num_classes).repeat_interleave(self.ipc)
        self._optimizer = torch.optim.SGD([self._images], lr=self._lr_img, momentum=opts.momentum)
        return {"lr_img": self._lr_img}

    def estimate_work(self, dataset: Dataset, ipc: int, *, cached: bool = True) -> dict[str, float]:
        """Work per iteration: a real batch per class (forward only: a third of a step) and the synthetic images.

        The synthetic images go forward and backward (one image-step each).
        """
        del cached
        real = min(self.options.batch_real, dataset.min_class_size())
        per_iteration = dataset.num_classes * (real / 3.0 + ipc)
        return {"distillation": float(self.options.iterations * per_iteration)}

    def _draw_real(self, label: int, count: int) -> Tensor:
        pool = self.dataset.indices_of_class(label)
        return pool[torch.randperm(pool.numel(), generator=self._generator)[:count]]

    def _draw_seed(self) -> int:
        return int(torch.randint(0, _SEED_BOUND, (1,), generator=self._generator))

    def _frozen_model(self) -> torch.nn.Module:
        channels, size, _ = self.dataset.image_shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._draw_seed())
            model = build_model(self._model_name, channels, self.dataset.num_classes, size)
        if not hasattr(model, "embed"):
            raise UserError(f"DM needs a model with an embed() method; {self._model_name!r} has none")
        model.to(self.context.device).train()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

    def step(self) -> dict[str, Any]:
        """One iteration: a new frozen network, per-class mean-embedding matching, one SGD step.

        Returns:
            ``loss``: the matching loss summed over classes (before the step); ``lr_img``.
        """
        model = self._frozen_model()
        device = self.context.device
        ipc, images = self.ipc, self._images
        classes = range(self.dataset.num_classes)
        draws = [(self._draw_real(c, self.options.batch_real), self._draw_seed()) for c in classes]
        real = (self._dsa(self.dataset.train_images[index].to(device), seed) for index, seed in draws)
        syn = (self._dsa(images[c * ipc : (c + 1) * ipc], seed) for c, (_, seed) in enumerate(draws))
        loss = distribution_matching_loss(model.embed, real, syn)
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer.step()
        self.iteration += 1
        return {"loss": float(loss.detach()), "lr_img": self._lr_img}

    def synthetic_set(self) -> SyntheticSet:
        """The current images with hard labels; evaluated with the fixed lr of the spec."""
        return self.package(self._images, self._labels, lr=None)

    def state_dict(self) -> dict[str, Any]:
        """Images, optimiser state, generator state, iteration and seed (a deep copy)."""
        return {
            "images": self._images.detach().cpu().clone(),
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),
            "generator": self._generator.get_state(),
            "iteration": self.iteration,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into an episode already ``reset`` on the same dataset and IPC."""
        images = state["images"]
        if tuple(images.shape) != tuple(self._images.shape):
            raise UserError(
                f"DM state holds images of shape {tuple(images.shape)}, this episode has "
                f"{tuple(self._images.shape)}; reset with the same dataset and IPC first"
            )
        with torch.no_grad():
            self._images.copy_(images)
        self._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.seed = int(state["seed"])
