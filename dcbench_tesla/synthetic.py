"""The SyntheticSet and its file format (safetensors + JSON metadata).

A file holds tensors ``images`` (N, C, H, W float32, model-input space), ``labels``
((N,) int64 hard labels, or (N, K) float32 soft labels), optionally ``zca_mean`` and
``zca_matrix``, and one metadata entry ``dcbench`` with JSON: format version, dataset,
classes, normalisation, label kind, learned lr, method spec, resolved config, seed,
ipc, iteration and package versions. Everything ``dcbench eval`` needs travels inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcbench_tesla.checks import is_finite
from dcbench_tesla.data import Preprocessing, ZCAState
from dcbench_tesla.errors import UserError
from dcbench_tesla.files import (
    check_format,
    is_int,
    is_names,
    is_number,
    is_object,
    meta_field,
    normalisation_fields,
    note,
    read_tensor_file,
    write_tensor_file,
)

FORMAT = "dcbench-tesla/synthetic-set"
FORMAT_VERSION = 1
#: How far the rows of soft labels may sum from 1 (float16 or bfloat16 files round them).
SOFT_LABEL_SUM_ATOL = 1e-2


@dataclass
class SyntheticSet:
    """A distilled dataset with everything needed to evaluate it elsewhere.

    Attributes:
        images: (N, C, H, W) float tensor in the model-input space (after preprocessing).
        labels: (N,) int64 hard labels or (N, K) float soft labels (probabilities).
        dataset: Dataset registry name.
        classes: Class names (index = label).
        preprocessing: Normalisation and ZCA state of the images.
        lr: Learned evaluation step size, or None (then the protocol's fixed lr is used).
        ipc: Images per class.
        seed: Seed of the run that made it.
        method: The method's spec as a dict.
        config: The resolved run configuration.
        iteration: Outer iterations done when it was taken.
        extra: Free-form metadata (versions, ...).
    """

    images: Tensor
    labels: Tensor
    dataset: str
    classes: list[str]
    preprocessing: Preprocessing
    lr: float | None = None
    ipc: int = 0
    seed: int = 0
    method: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label_kind(self) -> str:
        """``"hard"`` for class indices, ``"soft"`` for probability vectors."""
        return "soft" if self.labels.is_floating_point() else "hard"

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def hard_labels(self) -> Tensor:
        """Class index of every image (argmax for soft labels)."""
        return self.labels.argmax(dim=1) if self.label_kind == "soft" else self.labels

    def validate(self, where: str = "synthetic set") -> None:
        """Check shapes and values; raise UserError on anything inconsistent.

        Images: a finite float (N, C, H, W) tensor. Labels: (N,) int64 class indices below the
        class count, or (N, K) float probabilities (non-negative, each row summing to 1 within
        ``SOFT_LABEL_SUM_ATOL``). Learned lr: positive and finite.

        Args:
            where: How messages name the set (the file, when loading one).
        """
        n = self.images.shape[0] if self.images.ndim else 0
        if self.images.ndim != 4 or not self.images.is_floating_point():
            raise UserError(
                f"{where}: images must be a float (N, C, H, W) tensor, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if n == 0:
            raise UserError(f"{where}: the set holds no images")
        if self.labels.ndim == 0:
            raise UserError(f"{where}: labels must be (N,) or (N, K), got a scalar")
        if self.labels.shape[0] != n:
            raise UserError(f"{where}: {n} images but {self.labels.shape[0]} labels")
        if self.label_kind == "soft":
            if self.labels.ndim != 2 or self.labels.shape[1] != self.num_classes:
                raise UserError(f"{where}: soft labels must be (N, {self.num_classes}), got {tuple(self.labels.shape)}")
        elif self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise UserError(
                f"{where}: hard labels must be an int64 (N,) tensor of class indices, got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )
        elif self.labels.min() < 0 or self.labels.max() >= self.num_classes:
            raise UserError(
                f"{where}: hard labels span {int(self.labels.min())}..{int(self.labels.max())}, "
                f"expected class indices 0..{self.num_classes - 1}"
            )
        if not is_finite(self.images) or not is_finite(self.labels):
            raise UserError(f"{where}: images or labels contain NaN or inf")
        if self.label_kind == "soft":
            sums = self.labels.double().sum(dim=1)
            if bool((self.labels < 0).any()) or float((sums - 1).abs().max()) > SOFT_LABEL_SUM_ATOL:
                raise UserError(
                    f"{where}: soft labels must be probabilities (non-negative, each row summing to 1), "
                    f"got values {float(self.labels.min()):.4g}..{float(self.labels.max()):.4g} and row sums "
                    f"{float(sums.min()):.4g}..{float(sums.max()):.4g}"
                )
        if self.lr is not None and not (self.lr > 0 and is_finite(self.lr)):
            raise UserError(f"{where}: learned lr must be positive and finite, got {self.lr}")

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written into the file."""
        pre = self.preprocessing
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "normalisation": {"kind": pre.kind, "mean": list(pre.mean), "std": list(pre.std)},
            "zca_eps": pre.zca.eps if pre.zca is not None else None,
            "label_kind": self.label_kind,
            "lr": self.lr,
            "ipc": self.ipc,
            "seed": self.seed,
            "method": self.method,
            "config": self.config,
            "iteration": self.iteration,
            "extra": self.extra,
        }

    def save(self, path: Path | str) -> Path:
        """Write the set atomically to ``path`` (safetensors)."""
        self.validate()
        tensors = {"images": self.images.float(), "labels": self.labels}
        if self.preprocessing.zca is not None:
            tensors["zca_mean"] = self.preprocessing.zca.mean.float()
            tensors["zca_matrix"] = self.preprocessing.zca.matrix.float()
        return write_tensor_file(path, tensors, self.metadata())

    @classmethod
    def load(cls, path: Path | str) -> SyntheticSet:
        """Read a set written by :meth:`save`, checking everything it holds.

        Safe conversions are made with a note on stderr: float16/bfloat16/float64 images and soft
        labels become float32, uint8/int8/int16/int32 hard labels become int64.

        Raises:
            UserError: a missing file, a file that is not safetensors (a pickle, a truncated file,
                ...), a safetensors file that is not a dcbench set, or a field (tensor or metadata)
                of the wrong type, shape or value: the message names the file, the field, what was
                found and what was expected.
        """
        path = Path(path)
        tensors, meta = read_tensor_file(path, what="synthetic set")
        check_format(
            meta,
            path,
            "dcbench synthetic set",
            FORMAT,
            FORMAT_VERSION,
            "write sets with 'dcbench run' or SyntheticSet.save",
        )
        where = repr(str(path))
        missing = {"images", "labels"} - set(tensors)
        if missing:
            raise UserError(f"{where} is missing tensors {sorted(missing)}")
        images = _as_float32(tensors["images"], path, "images")
        labels = tensors["labels"]
        if labels.is_floating_point():
            labels = _as_float32(labels, path, "labels")
        elif labels.dtype in _SAFE_LABEL_DTYPES:
            note(f"{str(path)!r}: labels converted from {labels.dtype} to int64")
            labels = labels.to(torch.int64)
        elif labels.dtype != torch.int64:
            raise UserError(
                f"{where}: tensor 'labels' is {labels.dtype}, expected int64 class indices or float32 soft labels"
            )
        classes = meta_field(meta, "classes", "a non-empty list of class names (strings)", is_names, where)
        kind, mean, std = normalisation_fields(meta, where)
        label_kind = meta_field(meta, "label_kind", "'hard' or 'soft'", lambda v: v in ("hard", "soft"), where, None)
        if label_kind is not None and label_kind != ("soft" if labels.is_floating_point() else "hard"):
            raise UserError(f"{where}: field 'label_kind' is {label_kind!r} but tensor 'labels' is {labels.dtype}")
        zca = None
        if kind == "zca":
            eps = meta_field(meta, "zca_eps", "a positive number", lambda v: is_number(v) and v > 0, where, 0.1)
            zca = ZCAState(
                mean=_zca_tensor(tensors, path, "zca_mean"), matrix=_zca_tensor(tensors, path, "zca_matrix"), eps=eps
            )
            dims = math.prod(images.shape[1:]) if images.ndim == 4 else -1
            if tuple(zca.mean.shape) != (dims,) or tuple(zca.matrix.shape) != (dims, dims):
                raise UserError(
                    f"{where}: ZCA tensors of shapes {tuple(zca.mean.shape)} and {tuple(zca.matrix.shape)} "
                    f"do not fit images of {tuple(images.shape[1:])} (expected ({dims},) and ({dims}, {dims}))"
                )
        elif images.ndim == 4 and images.shape[1] != len(mean):
            raise UserError(
                f"{where}, normalisation: {len(mean)} channel means for images of {images.shape[1]} channels"
            )
        is_count = lambda v: is_int(v) and v >= 0  # noqa: E731
        syn = cls(
            images=images,
            labels=labels,
            dataset=meta_field(meta, "dataset", "a dataset name (string)", lambda v: isinstance(v, str), where),
            classes=list(classes),
            preprocessing=Preprocessing(mean=tuple(mean), std=tuple(std), zca=zca),
            lr=meta_field(
                meta, "lr", "a positive finite number or null", lambda v: is_number(v) and v > 0, where, None
            ),
            ipc=meta_field(meta, "ipc", "an integer >= 0", is_count, where, 0),
            seed=meta_field(meta, "seed", "an integer >= 0", is_count, where, 0),
            method=dict(meta_field(meta, "method", "an object", is_object, where, {})),
            config=dict(meta_field(meta, "config", "an object", is_object, where, {})),
            iteration=meta_field(meta, "iteration", "an integer >= 0", is_count, where, 0),
            extra=dict(meta_field(meta, "extra", "an object", is_object, where, {})),
        )
        if syn.lr is not None:
            syn.lr = float(syn.lr)
        syn.validate(where)
        return syn


#: Hard-label dtypes converted to int64 on load (with a note); bool and unsigned wider types are refused.
_SAFE_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


def _as_float32(tensor: Tensor, path: Path, name: str) -> Tensor:
    """A floating tensor as float32 (float16/bfloat16/float64 converted with a note); anything else refused."""
    if tensor.dtype == torch.float32:
        return tensor
    if not tensor.is_floating_point():
        raise UserError(f"{str(path)!r}: tensor {name!r} is {tensor.dtype}, expected float32")
    note(f"{str(path)!r}: {name} converted from {tensor.dtype} to float32")
    return tensor.to(torch.float32)


def _zca_tensor(tensors: dict[str, Tensor], path: Path, name: str) -> Tensor:
    if name not in tensors:
        raise UserError(f"{str(path)!r}: ZCA normalisation but no tensor {name!r}")
    tensor = _as_float32(tensors[name], path, name)
    if not is_finite(tensor):
        raise UserError(f"{str(path)!r}: tensor {name!r} contains NaN or inf")
    return tensor
