"""What the registry knows about a dataset without loading it (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, shape, defaults and where its files come from.

    Attributes:
        name: Registry name.
        loader: ``"module:function"`` target, called as ``loader(root, zca=..., cache_dir=..., **options)``
            with the options named in ``loader_options``; returns a
            :class:`~dcbench_tesla.data.dataset.Dataset`.
        image_shape: (C, H, W), or None when it depends on the files (``imagefolder``, ``npz``).
        num_classes: Number of classes, or None when it depends on the files.
        mean: Per-channel mean of the training pixels in [0, 1] (empty: computed from the files).
        std: Per-channel standard deviation (empty: computed from the files).
        default_model: Model registry name used for distillation and evaluation.
        needs_root: Whether files on disk are needed (False for packaged data).
        expected_files: Human description of the files expected under the data root.
        how_to_get: How to obtain the files.
        description: One line for ``dcbench ls``.
        default_protocol: Evaluation protocol used when a run names none.
        num_experts: Expert trajectories ``dcbench experts`` trains when ``--num-experts`` is not given.
        loader_options: Extra keyword options the loader takes (e.g. ``("image_size",)``).
    """

    name: str
    loader: str
    image_shape: tuple[int, int, int] | None
    num_classes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_model: str
    needs_root: bool
    expected_files: str
    how_to_get: str
    description: str
    default_protocol: str = "paper"
    num_experts: int = 100
    loader_options: tuple[str, ...] = ()

    @property
    def fixed_shape(self) -> bool:
        """True when the image shape and class count are known without reading files."""
        return self.image_shape is not None and self.num_classes is not None
