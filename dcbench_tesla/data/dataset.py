"""The in-memory dataset every method and the evaluation share, and its preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ZCAState:
    """A fitted ZCA whitening: ``white = (x01.flatten() - mean) @ matrix``.

    Fitted on the training split's images in [0, 1] (no mean/std normalisation first,
    as in MTT). ``inverse`` undoes it (for showing images); it may be recomputed.
    """

    mean: Tensor  # (d,)
    matrix: Tensor  # (d, d)
    eps: float = 0.1
    inverse: Tensor | None = None  # (d, d), optional


@dataclass
class Preprocessing:
    """How raw pixels in [0, 1] become model inputs.

    Without ZCA: ``(x - mean) / std`` per channel. With ZCA: the whitening of ``x``
    (MTT's convention, no mean/std first). Travels with experts and synthetic sets.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca: ZCAState | None = None

    @property
    def kind(self) -> str:
        """``"zca"`` or ``"meanstd"``."""
        return "zca" if self.zca is not None else "meanstd"

    def apply(self, x01: Tensor) -> Tensor:
        """Map images in [0, 1] of shape (N, C, H, W) to model inputs."""
        if self.zca is None:
            mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
            return (x01 - mean) / std
        flat = x01.reshape(x01.shape[0], -1)
        zca_mean = self.zca.mean.to(x01)
        return ((flat - zca_mean) @ self.zca.matrix.to(x01)).reshape(x01.shape)

    def invert(self, x: Tensor, clamp: bool = True) -> Tensor:
        """Map model inputs back to images in [0, 1] (clamped unless ``clamp=False``)."""
        if self.zca is None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            out = x * std + mean
            return out.clamp(0, 1) if clamp else out
        inverse = self.zca.inverse
        if inverse is None:
            inverse = torch.linalg.pinv(self.zca.matrix.double()).to(self.zca.matrix.dtype)
        flat = x.reshape(x.shape[0], -1) @ inverse.to(x) + self.zca.mean.to(x)
        out = flat.reshape(x.shape)
        return out.clamp(0, 1) if clamp else out


@dataclass
class Dataset:
    """Preprocessed train and test splits held as float tensors.

    Attributes:
        name: Registry name of the dataset ("digits", "cifar10", ...).
        classes: Class names, index = label.
        train_images: (N, C, H, W) float32 model inputs (after preprocessing).
        train_labels: (N,) int64.
        test_images: (M, C, H, W) float32.
        test_labels: (M,) int64.
        preprocessing: Normalisation and optional ZCA state.
        source: Where the data came from (a path or a package), for provenance.
    """

    name: str
    classes: list[str]
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    preprocessing: Preprocessing
    source: str = ""
    _class_index: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)

    def indices_of_class(self, label: int) -> Tensor:
        """Indices into the training split of every image with ``label``."""
        if label not in self._class_index:
            self._class_index[label] = torch.nonzero(self.train_labels == label).flatten()
        return self._class_index[label]

    def with_preprocessing(self, preprocessing: Preprocessing) -> Dataset:
        """The same images under another preprocessing (e.g. a synthetic set's ZCA state)."""

        def convert(x: Tensor) -> Tensor:
            return preprocessing.apply(self.preprocessing.invert(x, clamp=False))

        return Dataset(
            name=self.name,
            classes=list(self.classes),
            train_images=convert(self.train_images),
            train_labels=self.train_labels,
            test_images=convert(self.test_images),
            test_labels=self.test_labels,
            preprocessing=preprocessing,
            source=self.source,
        )

    def min_class_size(self) -> int:
        """Images in the smallest class of the training split."""
        return int(torch.bincount(self.train_labels, minlength=self.num_classes).min())
