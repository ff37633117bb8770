"""The SyntheticSet and its file format (safetensors + JSON metadata).

A file holds tensors ``images`` (N, C, H, W float32, model-input space), ``labels``
((N,) int64 hard labels, or (N, K) float32 soft labels), optionally ``zca_mean`` and
``zca_matrix``, and one metadata entry ``dcbench`` with JSON: format version, dataset,
classes, normalisation, label kind, learned lr, method spec, resolved config, seed,
ipc, iteration and package versions. Everything ``dcbench eval`` needs travels inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from dcbench_tesla.checks import is_finite
from dcbench_tesla.data import Preprocessing, ZCAState
from dcbench_tesla.errors import UserError
from dcbench_tesla.files import read_tensor_file, write_tensor_file

FORMAT = "dcbench-tesla/synthetic-set"
FORMAT_VERSION = 1


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

    def validate(self) -> None:
        """Check shapes and values; raise UserError on anything inconsistent."""
        n = self.images.shape[0]
        if self.images.ndim != 4 or not self.images.is_floating_point():
            raise UserError(
                f"synthetic set: images must be a float (N, C, H, W) tensor, got {tuple(self.images.shape)}"
            )
        if self.labels.shape[0] != n:
            raise UserError(f"synthetic set: {n} images but {self.labels.shape[0]} labels")
        if self.label_kind == "soft" and (self.labels.ndim != 2 or self.labels.shape[1] != self.num_classes):
            raise UserError(
                f"synthetic set: soft labels must be (N, {self.num_classes}), got {tuple(self.labels.shape)}"
            )
        if self.label_kind == "hard":
            if self.labels.ndim != 1 or (n and (self.labels.min() < 0 or self.labels.max() >= self.num_classes)):
                raise UserError(f"synthetic set: hard labels must be (N,) class indices below {self.num_classes}")
        if not is_finite(self.images) or not is_finite(self.labels):
            raise UserError("synthetic set: images or labels contain NaN or inf")
        if self.lr is not None and not (self.lr > 0 and is_finite(self.lr)):
            raise UserError(f"synthetic set: learned lr must be positive and finite, got {self.lr}")

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
        """Read a set written by :meth:`save`.

        Raises:
            UserError: a missing file, a file that is not safetensors (a pickle, a
                truncated file, ...), or a safetensors file that is not a dcbench set.
        """
        path = Path(path)
        tensors, meta = read_tensor_file(path, what="synthetic set")
        if meta.get("format") != FORMAT:
            raise UserError(
                f"{str(path)!r} is a safetensors file but not a dcbench synthetic set "
                f"(format {meta.get('format')!r}); write sets with 'dcbench run' or SyntheticSet.save"
            )
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise UserError(
                f"{str(path)!r} has format version {meta['format_version']}; upgrade dcbench-tesla to read it"
            )
        missing = {"images", "labels"} - set(tensors)
        if missing:
            raise UserError(f"{str(path)!r} is missing tensors {sorted(missing)}")
        try:
            norm = meta["normalisation"]
            zca = None
            if norm["kind"] == "zca":
                zca = ZCAState(
                    mean=tensors["zca_mean"],
                    matrix=tensors["zca_matrix"],
                    eps=float(meta.get("zca_eps") or 0.1),
                )
            syn = cls(
                images=tensors["images"],
                labels=tensors["labels"],
                dataset=str(meta["dataset"]),
                classes=[str(c) for c in meta["classes"]],
                preprocessing=Preprocessing(mean=tuple(norm["mean"]), std=tuple(norm["std"]), zca=zca),
                lr=None if meta.get("lr") is None else float(meta["lr"]),
                ipc=int(meta.get("ipc", 0)),
                seed=int(meta.get("seed", 0)),
                method=dict(meta.get("method", {})),
                config=dict(meta.get("config", {})),
                iteration=int(meta.get("iteration", 0)),
                extra=dict(meta.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{str(path)!r}: corrupt synthetic-set metadata ({type(exc).__name__}: {exc})") from exc
        syn.validate()
        return syn
