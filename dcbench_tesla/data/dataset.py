"""The in-memory dataset every method and the evaluation share, and its preprocessing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

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


Split = Literal["train", "val", "test"]


@dataclass
class Dataset:
    """Preprocessed training pool, validation and test splits held as float tensors.

    The training pool is what experts, methods, baselines and the whole-dataset bound see. The
    validation split (held out of the training files by a fixed, class-stratified rule, see
    :func:`~dcbench_tesla.data._build.build_dataset`) is what ``--eval-every`` and ``dcbench tune``
    score on. The test split is read only for a run's final report, through :meth:`split`.

    Attributes:
        name: Registry name of the dataset ("digits", "cifar10", ...).
        classes: Class names, index = label.
        train_images: (N, C, H, W) float32 model inputs (after preprocessing): the training pool.
        train_labels: (N,) int64.
        test_images: (M, C, H, W) float32.
        test_labels: (M,) int64.
        preprocessing: Normalisation and optional ZCA state.
        source: Where the data came from (a path or a package), for provenance.
        val_images: (V, C, H, W) float32, or None for a dataset built without a validation split
            (the profiler's random stand-ins).
        val_labels: (V,) int64, or None.
    """

    name: str
    classes: list[str]
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    preprocessing: Preprocessing
    source: str = ""
    val_images: Tensor | None = None
    val_labels: Tensor | None = None
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

    @property
    def has_validation(self) -> bool:
        """Whether the dataset holds a non-empty validation split."""
        return self.val_images is not None and self.val_labels is not None and self.val_labels.numel() > 0

    def indices_of_class(self, label: int) -> Tensor:
        """Indices into the training split of every image with ``label``."""
        if label not in self._class_index:
            self._class_index[label] = torch.nonzero(self.train_labels == label).flatten()
        return self._class_index[label]

    def split(self, name: Split) -> tuple[Tensor, Tensor]:
        """``(images, labels)`` of the training pool, the validation or the test split.

        Raises:
            UserError: an unknown split name, or a validation split that is missing or empty.
        """
        from dcbench_tesla.errors import UserError

        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        if name != "val":
            raise UserError(f"unknown split {name!r}: expected 'train', 'val' or 'test'")
        if not self.has_validation:
            raise UserError(
                f"dataset {self.name!r} has no validation images (its training classes are too small to hold "
                "any out, or it was built without build_dataset)"
            )
        return self.val_images, self.val_labels

    def with_preprocessing(self, preprocessing: Preprocessing) -> Dataset:
        """The same images under another preprocessing (e.g. a synthetic set's ZCA state).

        When both are the same mean/std normalisation the copy shares this dataset's tensors (no
        round-off is added).
        """
        same_meanstd = (preprocessing.mean, preprocessing.std) == (self.preprocessing.mean, self.preprocessing.std)
        if same_meanstd and preprocessing.zca is None and self.preprocessing.zca is None:
            return dataclasses.replace(self, classes=list(self.classes), _class_index={})

        def convert(x: Tensor | None) -> Tensor | None:
            return None if x is None else preprocessing.apply(self.preprocessing.invert(x, clamp=False))

        return Dataset(
            name=self.name,
            classes=list(self.classes),
            train_images=convert(self.train_images),
            train_labels=self.train_labels,
            test_images=convert(self.test_images),
            test_labels=self.test_labels,
            preprocessing=preprocessing,
            source=self.source,
            val_images=convert(self.val_images),
            val_labels=self.val_labels,
        )

    def min_class_size(self) -> int:
        """Images in the smallest class of the training pool (the most a method can draw per class)."""
        return int(torch.bincount(self.train_labels, minlength=self.num_classes).min())
