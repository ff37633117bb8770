"""Dataset registry, loaders, preprocessing (mean/std, ZCA) and DSA augmentation.

Datasets register as :class:`DatasetSpec` objects: the built-in ones below, third-party ones
through the entry-point group ``dcbench_tesla.datasets`` (read lazily; a broken plugin is named,
never a crash). Importing this module does not import torch; :func:`load_dataset` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcbench_tesla.data.spec import DatasetSpec
from dcbench_tesla.errors import UserError
from dcbench_tesla.registry import ENTRY_POINT_GROUPS, Registry, load_target

if TYPE_CHECKING:
    from dcbench_tesla.data.dataset import Dataset, Preprocessing, ZCAState

DATASETS: Registry[DatasetSpec] = Registry("dataset", entry_point_group=ENTRY_POINT_GROUPS["dataset"])

#: The dataset every command uses when none is named: real data that ships inside a package.
DEFAULT_DATASET = "digits"

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Measured on the digits training split (pixels scaled to [0, 1]); see data/digits.py.
DIGITS_MEAN = (0.3059,)
DIGITS_STD = (0.3765,)

for _spec in (
    DatasetSpec(
        name=DEFAULT_DATASET,
        loader="dcbench_tesla.data.digits:load_digits",
        image_shape=(1, 8, 8),
        num_classes=10,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        default_model="convnet",
        needs_root=False,
        expected_files="(none: ships inside scikit-learn)",
        how_to_get="pip install scikit-learn",
        description="scikit-learn handwritten digits, 8x8 grey, 10 classes, offline (embedded default)",
        default_protocol="short",
        num_experts=5,
    ),
    DatasetSpec(
        name="cifar10",
        loader="dcbench_tesla.data.cifar:load_cifar10",
        image_shape=(3, 32, 32),
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        default_model="convnet",
        needs_root=True,
        expected_files="cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
        how_to_get="download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        description="CIFAR-10, 32x32 colour, 10 classes (python pickle batches)",
        val_per_class=500,
    ),
    DatasetSpec(
        name="cifar100",
        loader="dcbench_tesla.data.cifar:load_cifar100",
        image_shape=(3, 32, 32),
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        default_model="convnet",
        needs_root=True,
        expected_files="cifar-100-python/{train, test, meta}",
        how_to_get="download and extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        description="CIFAR-100, 32x32 colour, 100 classes (python pickle batches)",
        val_per_class=50,
    ),
    DatasetSpec(
        name="tinyimagenet",
        loader="dcbench_tesla.data.tinyimagenet:load_tinyimagenet",
        image_shape=(3, 64, 64),
        num_classes=200,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_model="convnet4",
        needs_root=True,
        expected_files="tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
        "val/images/*.JPEG, val/val_annotations.txt}",
        how_to_get="download and extract http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        description="Tiny ImageNet, 64x64 colour, 200 classes (its folder layout)",
        val_per_class=50,
    ),
    DatasetSpec(
        name="imagenet64",
        loader="dcbench_tesla.data.imagenet64:load_imagenet64",
        image_shape=(3, 64, 64),
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_model="convnet4",
        needs_root=True,
        expected_files="imagenet64/{train_data_batch_1..10.npz, val_data.npz} or imagenet64/{train,val}/<class>/*.png",
        how_to_get="request 'Downsampled ImageNet 64x64' (npz) from https://image-net.org/download-images",
        description="ImageNet-1K downsampled to 64x64 (npz batches or an image folder)",
        val_per_class=10,
        num_experts=50,
    ),
    DatasetSpec(
        name="imagefolder",
        loader="dcbench_tesla.data.imagefolder:load_imagefolder",
        image_shape=None,
        num_classes=None,
        mean=(),
        std=(),
        default_model="convnet",
        needs_root=True,
        expected_files="train/<class>/*.png|jpg and test/<class>/*.png|jpg (the same class folders in both)",
        how_to_get="arrange your own images in that layout and pass --data-root DIR (and --image-size N)",
        description="your own images: DIR/train/<class>/*, DIR/test/<class>/*, resized to --image-size (RGB)",
        loader_options=("image_size",),
    ),
    DatasetSpec(
        name="npz",
        loader="dcbench_tesla.data.npz:load_npz",
        image_shape=None,
        num_classes=None,
        mean=(),
        std=(),
        default_model="convnet",
        needs_root=True,
        expected_files="one .npz with arrays x_train, y_train, x_test, y_test (images NCHW or NHWC, uint8 or "
        "floats in [0, 1]; optional 'classes')",
        how_to_get="np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) and pass --data-root path.npz",
        description="your own arrays in one .npz (x_train, y_train, x_test, y_test)",
    ),
):
    DATASETS.register(_spec.name, _spec)


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name``.

    Raises:
        UserError: unknown name (with suggestions), or a plugin that does not provide a DatasetSpec.
    """
    return DATASETS.get_as(name, DatasetSpec)


def default_data_root() -> Path:
    """``$DCBENCH_DATA`` or ``~/.cache/dcbench/data``."""
    return Path(os.environ.get("DCBENCH_DATA", Path.home() / ".cache" / "dcbench" / "data"))


def default_cache_dir() -> Path:
    """``$DCBENCH_CACHE`` or ``~/.cache/dcbench`` (fitted ZCA, experts)."""
    return Path(os.environ.get("DCBENCH_CACHE", Path.home() / ".cache" / "dcbench"))


def load_dataset(
    name: str,
    data_root: Path | None = None,
    *,
    zca: bool = False,
    cache_dir: Path | None = None,
    **options: Any,
) -> Dataset:
    """Load a registered dataset, preprocessed (mean/std, or ZCA when ``zca``).

    Args:
        name: Registry name ("digits", "cifar10", ...).
        data_root: Directory holding the dataset folders (default: ``default_data_root()``).
        zca: Whiten with ZCA fitted on the training split (cached under ``cache_dir``).
        cache_dir: Where fitted ZCA states are cached (default: ``default_cache_dir()``).
        **options: Loader options the dataset declares in ``loader_options`` (e.g. ``image_size``);
            None values are ignored.

    Raises:
        UserError: unknown dataset, an option it does not take, or files missing/corrupt (the
            message names the expected location and files and how to obtain them).
    """
    spec = dataset_spec(name)
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(spec.loader_options))
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        raise UserError(
            f"{flags} does not apply to dataset {name!r} (it takes: {', '.join(spec.loader_options) or 'none'})"
        )
    loader = load_target(spec.loader)
    dataset = loader(
        Path(data_root).expanduser() if data_root is not None else default_data_root(),
        zca=zca,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        **given,
    )
    return dataset


_LAZY = {
    "build_dataset": "dcbench_tesla.data._build:build_dataset",
    "Dataset": "dcbench_tesla.data.dataset:Dataset",
    "Preprocessing": "dcbench_tesla.data.dataset:Preprocessing",
    "ZCAState": "dcbench_tesla.data.dataset:ZCAState",
}


def __getattr__(name: str) -> Any:
    """The tensor-holding classes, imported (with torch) on first use."""
    if name in _LAZY:
        return load_target(_LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "build_dataset",
    "DEFAULT_DATASET",
    "Dataset",
    "DatasetSpec",
    "Preprocessing",
    "ZCAState",
    "dataset_spec",
    "default_cache_dir",
    "default_data_root",
    "load_dataset",
]
