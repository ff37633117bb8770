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
        val_fraction: The validation split's rule for small sets: this fraction of each training class
            (rounded) is held out of the training pool.
        val_per_class: The rule for large sets: this many images of each training class (overrides
            ``val_fraction``). Either way at least one image of a class with two or more goes to
            validation, and at least one stays in the pool (see :meth:`val_size`).
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
    val_fraction: float = 0.1
    val_per_class: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"DatasetSpec {self.name!r}: val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_per_class is not None and self.val_per_class < 0:
            raise ValueError(f"DatasetSpec {self.name!r}: val_per_class must be >= 0, got {self.val_per_class}")

    def val_size(self, class_size: int) -> int:
        """Images of a training class of ``class_size`` images that go to the validation split.

        ``val_per_class`` when set, else ``round(val_fraction * class_size)``; then at least 1 when the
        class has two or more images (every class is validated) and at most ``class_size - 1`` (every
        class keeps a training image). A rule of 0 (``val_fraction=0``) holds nothing out.
        """
        if self.val_per_class is not None:
            rule, wanted = self.val_per_class, self.val_per_class
        else:
            rule, wanted = self.val_fraction, round(self.val_fraction * class_size)
        if rule == 0 or class_size < 2:
            return 0
        return min(max(int(wanted), 1), class_size - 1)

    @property
    def fixed_shape(self) -> bool:
        """True when the image shape and class count are known without reading files."""
        return self.image_shape is not None and self.num_classes is not None
